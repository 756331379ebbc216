//! Content-addressed component blobs and the manifest (aggregate type → component + limits).
//!
//! A deploy validates and compiles first, then stores the blob, then swaps the manifest entry:
//! a component that fails any check changes nothing.

mod blobs;
mod manifest;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use self::blobs::ComponentStore;
pub use self::manifest::{Manifest, SnapshotPolicy, TypeEntry};
use crate::runtime::{Isolation, Limits, Runtime, RuntimeError};
use crate::types::{AggregateType, ComponentHash};

/// Errors of the registry; each names the aggregate type or file involved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The manifest file could not be read or written.
    #[error("manifest {path}: {source}")]
    ManifestIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid YAML of the expected shape.
    #[error("manifest {path}: {reason}")]
    ManifestSyntax {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// An entry of the manifest is wrong.
    #[error("manifest entry for aggregate type `{aggregate_type}`: {reason}")]
    InvalidEntry {
        /// The aggregate type whose entry is wrong.
        aggregate_type: AggregateType,
        /// What is wrong.
        reason: String,
    },
    /// The blob store could not be read or written.
    #[error("component store {path}: {source}")]
    BlobIo {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blob's bytes do not hash to its name.
    #[error("component store: blob {hash} is corrupted (its bytes hash to {actual})")]
    CorruptBlob {
        /// The name.
        hash: ComponentHash,
        /// What the bytes hash to.
        actual: ComponentHash,
    },
    /// No blob with that hash.
    #[error("component {0} is not in the component store")]
    UnknownComponent(ComponentHash),
    /// No manifest entry for that aggregate type.
    #[error("aggregate type `{0}` is not deployed")]
    UnknownType(AggregateType),
    /// An upload is larger than allowed.
    #[error("the component is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nothing to roll back to.
    #[error("aggregate type `{0}` has no earlier version to roll back to")]
    NoEarlierVersion(AggregateType),
    /// The runtime refused the component.
    #[error("aggregate type `{aggregate_type}`: {source}")]
    Component {
        /// The aggregate type being loaded or deployed.
        aggregate_type: AggregateType,
        /// Why the runtime refused it.
        source: RuntimeError,
    },
}

/// Result alias for this module.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// What a command needs to know about its aggregate type: which component runs it and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveComponent {
    /// The component's hash.
    pub component: ComponentHash,
    /// Version number of this deploy for the type (1 for the first, +1 per change).
    pub version: u64,
    /// Per-call limits.
    pub limits: Limits,
    /// Instance reuse.
    pub isolation: Isolation,
    /// A snapshot is written every this many events (0 = never).
    pub snapshot_every: u64,
    /// What to do with a snapshot built by another component.
    pub snapshot_policy: SnapshotPolicy,
}

/// The outcome of a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The component's hash.
    pub component: ComponentHash,
    /// The type's version number after the deploy.
    pub version: u64,
    /// False when the same bytes were already active (nothing changed).
    pub changed: bool,
}

/// Blob store + manifest + runtime, kept consistent.
pub struct Registry {
    blobs: ComponentStore,
    manifest_path: PathBuf,
    manifest: RwLock<Arc<Manifest>>,
    /// Serialises deploys so two uploads cannot interleave their read-modify-write.
    deploy_lock: Mutex<()>,
    runtime: Arc<Runtime>,
    max_component_bytes: usize,
    default_snapshot_every: u64,
}

impl Registry {
    /// Open the blob store in `dir/components`, read the manifest (an absent file is an empty
    /// manifest), and load every active component into the runtime.
    ///
    /// # Errors
    ///
    /// Any manifest problem, a referenced blob that is missing or corrupted, or a component the
    /// runtime refuses — each naming the aggregate type.
    pub fn open(
        dir: &Path,
        manifest_path: &Path,
        runtime: Arc<Runtime>,
        max_component_bytes: usize,
    ) -> Result<Self> {
        let blobs = ComponentStore::open(&dir.join("components"))?;
        let manifest = Manifest::load(manifest_path)?;
        load_active(&manifest, &blobs, &runtime)?;
        Ok(Self {
            blobs,
            manifest_path: manifest_path.to_path_buf(),
            manifest: RwLock::new(Arc::new(manifest)),
            deploy_lock: Mutex::new(()),
            runtime,
            max_component_bytes,
            default_snapshot_every: manifest::DEFAULT_SNAPSHOT_EVERY,
        })
    }

    /// The snapshot interval given to aggregate types deployed for the first time.
    pub fn with_default_snapshot_every(mut self, n: u64) -> Self {
        self.default_snapshot_every = n;
        self
    }

    /// The blob store.
    pub fn blobs(&self) -> &ComponentStore {
        &self.blobs
    }

    /// The current manifest (a consistent snapshot; deploys swap it atomically).
    pub fn manifest(&self) -> Arc<Manifest> {
        self.manifest.read().clone()
    }

    /// The component and limits for an aggregate type.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownType`] when the type is not deployed.
    pub fn resolve(&self, ty: &AggregateType) -> Result<ActiveComponent> {
        let m = self.manifest.read();
        let e = m
            .aggregates
            .get(ty)
            .ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
        Ok(ActiveComponent {
            component: e.component,
            version: e.version,
            limits: e.limits.clone(),
            isolation: e.isolation,
            snapshot_every: e.snapshot_every,
            snapshot_policy: e.snapshot_policy,
        })
    }

    /// Validate, compile, store and activate a component for `ty`. Uploading the active bytes
    /// again changes nothing. Commands already running keep the old component; the next one
    /// resolves the new.
    ///
    /// # Errors
    ///
    /// [`RegistryError::TooLarge`], [`RegistryError::Component`] (not wasm, not a component,
    /// forbidden import, wrong world, compile error), or an I/O error. In every error case the
    /// manifest and the active component are unchanged.
    pub fn deploy(
        &self,
        ty: &AggregateType,
        bytes: &[u8],
        limits: Option<Limits>,
    ) -> Result<Deployed> {
        let hash = self.prepare(ty, bytes, limits.as_ref())?;
        let _guard = self.deploy_lock.lock();
        let mut next = (*self.manifest()).clone();
        let outcome = next.activate(ty, hash, limits, self.default_snapshot_every);
        if outcome.changed {
            next.save(&self.manifest_path)?;
            *self.manifest.write() = Arc::new(next);
            tracing::info!(aggregate_type = %ty, component = %hash, version = outcome.version, "deployed");
        }
        Ok(outcome)
    }

    /// The first half of a deploy: check the size and the limits, check and compile the
    /// component, and keep its blob in the local store. Nothing is activated.
    ///
    /// # Errors
    ///
    /// As [`Registry::deploy`]; nothing changes on error.
    pub fn prepare(
        &self,
        ty: &AggregateType,
        bytes: &[u8],
        limits: Option<&Limits>,
    ) -> Result<ComponentHash> {
        if bytes.len() > self.max_component_bytes {
            return Err(RegistryError::TooLarge {
                size: bytes.len(),
                limit: self.max_component_bytes,
            });
        }
        if let Some(l) = limits {
            l.validate(self.runtime.config().max_memory_bytes)
                .map_err(|reason| RegistryError::InvalidEntry {
                    aggregate_type: ty.clone(),
                    reason: format!("limits: {reason}"),
                })?;
        }
        let (hash, _) = self
            .runtime
            .load(bytes)
            .map_err(|source| RegistryError::Component {
                aggregate_type: ty.clone(),
                source,
            })?;
        self.blobs.insert_with_hash(&hash, bytes)?;
        Ok(hash)
    }

    /// Open for cluster mode: the blob directory and the manifest file are caches. Nothing is
    /// loaded (the cluster installs the entries of the manifest bucket); the manifest file's
    /// content is returned as the seed a first host may import. An unreadable manifest file is
    /// an empty seed (with a warning), not an error.
    ///
    /// # Errors
    ///
    /// [`RegistryError::BlobIo`] when the blob directory cannot be created.
    pub fn open_cache(
        dir: &Path,
        manifest_path: &Path,
        runtime: Arc<Runtime>,
        max_component_bytes: usize,
    ) -> Result<(Self, Manifest)> {
        let blobs = ComponentStore::open(&dir.join("components"))?;
        let seed = Manifest::load(manifest_path).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the cached manifest file is unreadable; no seed");
            Manifest::default()
        });
        Ok((
            Self {
                blobs,
                manifest_path: manifest_path.to_path_buf(),
                manifest: RwLock::new(Arc::new(Manifest::default())),
                deploy_lock: Mutex::new(()),
                runtime,
                max_component_bytes,
                default_snapshot_every: manifest::DEFAULT_SNAPSHOT_EVERY,
            },
            seed,
        ))
    }

    /// The largest linear memory this host lets a guest have, in bytes (limits above it are
    /// refused).
    pub fn max_memory_bytes(&self) -> usize {
        self.runtime.config().max_memory_bytes
    }

    /// The snapshot interval new aggregate types get.
    pub fn default_snapshot_every(&self) -> u64 {
        self.default_snapshot_every
    }

    /// Load the component `hash` from the local blob store into the runtime (compiling it, or
    /// reading its precompiled artifact) unless it is loaded already.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownComponent`] or [`RegistryError::CorruptBlob`] when the local copy
    /// is missing or damaged (the caller fetches it again), or the runtime's refusal.
    pub fn load_component(&self, ty: &AggregateType, hash: &ComponentHash) -> Result<()> {
        if self.runtime.is_loaded(hash) {
            return Ok(());
        }
        let bytes = self.blobs.get(hash)?;
        self.runtime
            .load(&bytes)
            .map_err(|source| RegistryError::Component {
                aggregate_type: ty.clone(),
                source,
            })?;
        Ok(())
    }

    /// Install an entry decided elsewhere (the cluster's manifest bucket): check its limits,
    /// load its component from the local blob store, swap it in and save the manifest file (a
    /// cache in cluster mode). `None` removes the type. Commands in flight finish on the entry
    /// they resolved. Returns whether the entry changed.
    ///
    /// # Errors
    ///
    /// As [`Registry::load_component`], or [`RegistryError::InvalidEntry`] for limits this
    /// host refuses; the current entry stays active.
    pub fn install(&self, ty: &AggregateType, entry: Option<TypeEntry>) -> Result<bool> {
        if let Some(e) = &entry {
            e.limits
                .validate(self.runtime.config().max_memory_bytes)
                .map_err(|reason| RegistryError::InvalidEntry {
                    aggregate_type: ty.clone(),
                    reason: format!("limits: {reason}"),
                })?;
            self.load_component(ty, &e.component)?;
        }
        let _guard = self.deploy_lock.lock();
        let current = self.manifest();
        if current.aggregates.get(ty) == entry.as_ref() {
            return Ok(false);
        }
        let mut next = (*current).clone();
        match entry {
            Some(e) => {
                tracing::info!(aggregate_type = %ty, component = %e.component, version = e.version, "installed from the cluster manifest");
                next.aggregates.insert(ty.clone(), e);
            }
            None => {
                tracing::info!(aggregate_type = %ty, "removed by the cluster manifest");
                next.aggregates.remove(ty);
            }
        }
        *self.manifest.write() = Arc::new(next.clone());
        if let Err(e) = next.save(&self.manifest_path) {
            // A cache: the bucket stays the source of truth.
            tracing::warn!(error = %e, "could not write the manifest cache file");
        }
        Ok(true)
    }

    /// Change an aggregate type's settings (limits, isolation, snapshot interval or policy) and
    /// persist the manifest. The component stays the same.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownType`]; [`RegistryError::InvalidEntry`] when `change` refuses or the
    /// limits do not validate; an I/O error.
    pub fn update(
        &self,
        ty: &AggregateType,
        change: impl FnOnce(&mut TypeEntry) -> Result<(), String>,
    ) -> Result<()> {
        let _guard = self.deploy_lock.lock();
        let mut next = (*self.manifest()).clone();
        let entry = next
            .aggregates
            .get_mut(ty)
            .ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
        let invalid = |reason| RegistryError::InvalidEntry {
            aggregate_type: ty.clone(),
            reason,
        };
        change(entry).map_err(invalid)?;
        entry
            .limits
            .validate(self.runtime.config().max_memory_bytes)
            .map_err(|r| invalid(format!("limits: {r}")))?;
        next.save(&self.manifest_path)?;
        *self.manifest.write() = Arc::new(next);
        Ok(())
    }

    /// Read the manifest file again (an operator edited it, or another host wrote it), load every
    /// active component it names, and swap it in. Returns the aggregate types whose entry changed.
    ///
    /// # Errors
    ///
    /// As [`Registry::open`]; on any error the current manifest stays active.
    pub fn reload(&self) -> Result<Vec<AggregateType>> {
        let _guard = self.deploy_lock.lock();
        let next = Manifest::load(&self.manifest_path)?;
        load_active(&next, &self.blobs, &self.runtime)?;
        let current = self.manifest();
        let mut changed: Vec<AggregateType> = next
            .aggregates
            .iter()
            .filter(|(ty, e)| current.aggregates.get(*ty) != Some(*e))
            .map(|(ty, _)| ty.clone())
            .collect();
        changed.extend(
            current
                .aggregates
                .keys()
                .filter(|ty| !next.aggregates.contains_key(*ty))
                .cloned(),
        );
        *self.manifest.write() = Arc::new(next);
        tracing::info!(changed = changed.len(), "manifest reloaded");
        Ok(changed)
    }

    /// Re-activate the component that was active before the current one.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownType`], [`RegistryError::NoEarlierVersion`], or a load error.
    pub fn rollback(&self, ty: &AggregateType) -> Result<Deployed> {
        let _guard = self.deploy_lock.lock();
        let mut next = (*self.manifest()).clone();
        let previous = next.previous(ty)?;
        self.load_component(ty, &previous)?;
        let outcome = next.roll_back(ty)?;
        next.save(&self.manifest_path)?;
        *self.manifest.write() = Arc::new(next);
        tracing::info!(aggregate_type = %ty, component = %outcome.component, "rolled back");
        Ok(outcome)
    }
}

/// Validate every entry's limits and load its component into the runtime.
fn load_active(manifest: &Manifest, blobs: &ComponentStore, runtime: &Runtime) -> Result<()> {
    let engine_max = runtime.config().max_memory_bytes;
    for (ty, entry) in &manifest.aggregates {
        entry
            .limits
            .validate(engine_max)
            .map_err(|reason| RegistryError::InvalidEntry {
                aggregate_type: ty.clone(),
                reason: format!("limits: {reason}"),
            })?;
        if runtime.is_loaded(&entry.component) {
            continue;
        }
        let bytes = blobs
            .get(&entry.component)
            .map_err(|e| RegistryError::InvalidEntry {
                aggregate_type: ty.clone(),
                reason: e.to_string(),
            })?;
        runtime
            .load(&bytes)
            .map_err(|source| RegistryError::Component {
                aggregate_type: ty.clone(),
                source,
            })?;
    }
    Ok(())
}
