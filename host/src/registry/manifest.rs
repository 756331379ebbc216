//! The manifest: which component runs each aggregate type, with its limits and history.
//!
//! ```yaml
//! aggregates:
//!   bank-account:
//!     component: sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae
//!     isolation: pooled          # or per-command
//!     snapshot_every: 100
//!     limits: { fuel: 500000000, max_memory_bytes: 67108864, timeout_ms: 1000 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Deployed, RegistryError, Result};
use crate::runtime::{Isolation, Limits};
use crate::types::{AggregateType, ComponentHash};

/// What to do with a snapshot that a different component built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotPolicy {
    /// Use it: the new component understands the old state.
    #[default]
    Trust,
    /// Ignore it and fold all events with the new component.
    Rebuild,
}

/// Earlier components an entry keeps for rollback; older ones are dropped (oldest first), so an
/// entry stays small however often a type is deployed (a cluster's manifest entry must fit in
/// one NATS message).
pub const MAX_HISTORY: usize = 64;

/// Snapshot interval of an entry that does not set one.
pub(crate) const DEFAULT_SNAPSHOT_EVERY: u64 = 100;

fn default_snapshot_every() -> u64 {
    DEFAULT_SNAPSHOT_EVERY
}

fn default_version() -> u64 {
    1
}

/// One aggregate type's entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeEntry {
    /// The active component.
    pub component: ComponentHash,
    /// Deploy number of the active component (1 for the first deploy).
    #[serde(default = "default_version")]
    pub version: u64,
    /// Per-call limits (missing fields take the defaults).
    #[serde(default)]
    pub limits: Limits,
    /// Instance reuse.
    #[serde(default)]
    pub isolation: Isolation,
    /// Snapshot every this many events (0 = never).
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
    /// What to do with a snapshot another component built.
    #[serde(default)]
    pub snapshot_policy: SnapshotPolicy,
    /// Components that were active before, oldest first (for rollback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ComponentHash>,
}

/// All aggregate types.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Aggregate type → entry.
    #[serde(default)]
    pub aggregates: BTreeMap<AggregateType, TypeEntry>,
}

impl Manifest {
    /// Parse YAML.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ManifestSyntax`] naming the line, column and field.
    pub fn from_yaml(path: &Path, text: &str) -> Result<Self> {
        serde_yaml::from_str(text).map_err(|e| RegistryError::ManifestSyntax {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Read a manifest file; a missing file is an empty manifest.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ManifestIo`] or [`RegistryError::ManifestSyntax`].
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_yaml(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(RegistryError::ManifestIo {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Write atomically (temp file, fsync, rename).
    ///
    /// # Errors
    ///
    /// [`RegistryError::ManifestIo`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| RegistryError::ManifestIo {
            path: path.to_path_buf(),
            source,
        };
        let text = serde_yaml::to_string(self).expect("manifest serializes");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Make `hash` the active component of `ty` (keeping the old one in the history).
    pub(crate) fn activate(
        &mut self,
        ty: &AggregateType,
        hash: ComponentHash,
        limits: Option<Limits>,
        snapshot_every: u64,
    ) -> Deployed {
        match self.aggregates.get_mut(ty) {
            Some(e) if e.component == hash && limits.as_ref().is_none_or(|l| *l == e.limits) => {
                Deployed {
                    component: hash,
                    version: e.version,
                    changed: false,
                }
            }
            Some(e) => {
                if e.component != hash {
                    e.history.push(e.component);
                    if e.history.len() > MAX_HISTORY {
                        let excess = e.history.len() - MAX_HISTORY;
                        e.history.drain(..excess);
                    }
                    e.component = hash;
                }
                e.version += 1;
                if let Some(l) = limits {
                    e.limits = l;
                }
                Deployed {
                    component: hash,
                    version: e.version,
                    changed: true,
                }
            }
            None => {
                self.aggregates.insert(
                    ty.clone(),
                    TypeEntry {
                        component: hash,
                        version: 1,
                        limits: limits.unwrap_or_default(),
                        isolation: Isolation::default(),
                        snapshot_every,
                        snapshot_policy: SnapshotPolicy::default(),
                        history: Vec::new(),
                    },
                );
                Deployed {
                    component: hash,
                    version: 1,
                    changed: true,
                }
            }
        }
    }

    pub(crate) fn previous(&self, ty: &AggregateType) -> Result<ComponentHash> {
        let e = self
            .aggregates
            .get(ty)
            .ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
        e.history
            .last()
            .copied()
            .ok_or_else(|| RegistryError::NoEarlierVersion(ty.clone()))
    }

    pub(crate) fn roll_back(&mut self, ty: &AggregateType) -> Result<Deployed> {
        let e = self
            .aggregates
            .get_mut(ty)
            .ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
        let prev = e
            .history
            .pop()
            .ok_or_else(|| RegistryError::NoEarlierVersion(ty.clone()))?;
        e.component = prev;
        e.version += 1;
        Ok(Deployed {
            component: prev,
            version: e.version,
            changed: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_is_named() {
        let text = "aggregates:\n  bank-account:\n    component: sha256:00\n";
        let e = Manifest::from_yaml(Path::new("m.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("component hash"), "{e}");
        let text = format!(
            "aggregates:\n  bank-account:\n    component: sha256:{}\n    limits: {{ fuel: 1, memory: 3 }}\n",
            "0".repeat(64)
        );
        let e = Manifest::from_yaml(Path::new("m.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `memory`"), "{e}");
        let e = Manifest::from_yaml(
            Path::new("m.yaml"),
            "aggregates:\n  bad.type:\n    component: x\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("aggregate type"), "{e}");
    }

    #[test]
    fn activate_keeps_history_and_rollback_restores() {
        let ty = AggregateType::new("t").unwrap();
        let (a, b) = (ComponentHash::of(b"a"), ComponentHash::of(b"b"));
        let mut m = Manifest::default();
        assert_eq!(
            m.activate(&ty, a, None, 100),
            Deployed {
                component: a,
                version: 1,
                changed: true
            }
        );
        assert!(!m.activate(&ty, a, None, 100).changed);
        assert_eq!(m.activate(&ty, b, None, 100).version, 2);
        assert_eq!(m.aggregates[&ty].history, vec![a]);
        let r = m.roll_back(&ty).unwrap();
        assert_eq!((r.component, r.version), (a, 3));
        assert!(matches!(
            m.roll_back(&ty),
            Err(RegistryError::NoEarlierVersion(_))
        ));
        // The history is bounded: the oldest components are dropped.
        for i in 0..(MAX_HISTORY + 10) {
            m.activate(&ty, ComponentHash::of(&i.to_le_bytes()), None, 100);
        }
        let e = &m.aggregates[&ty];
        assert_eq!(e.history.len(), MAX_HISTORY);
        assert_eq!(
            e.history.last(),
            Some(&ComponentHash::of(&(MAX_HISTORY + 8).to_le_bytes()))
        );
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.yaml");
        let mut m = Manifest::default();
        m.activate(
            &AggregateType::new("t").unwrap(),
            ComponentHash::of(b"x"),
            None,
            100,
        );
        m.save(&path).unwrap();
        assert_eq!(Manifest::load(&path).unwrap(), m);
        assert_eq!(
            Manifest::load(&dir.path().join("absent.yaml")).unwrap(),
            Manifest::default()
        );
    }
}
