//! Snapshots: fjall, `(tenant, type, id) → Snapshot`.
//!
//! Keys are the aggregate keys of `keys.rs` (`tenant 0 type 0 id(16)`), so tenants' ranges never
//! overlap. Values are the [`Snapshot`] as JSON.
//!
//! The calls are **blocking** (fjall point reads and writes, microseconds when cached): the service
//! calls them inside `spawn_blocking` (or directly from a blocking context). Writes are flushed to
//! the OS but not fsynced: a snapshot is only an accelerator — losing the newest one on power loss
//! means a longer replay from the event log, never lost data. [`SnapshotStore::persist`] syncs on
//! demand (e.g. at shutdown).
//!
//! The store uses its own fjall database (its own directory), not the event log's: a shared
//! journal would make snapshot writes wait behind the event log's group-commit fsyncs.
//!
//! fjall refuses every write of a database after one failed journal write (a full disk). A
//! snapshot write that fails that way makes the store reopen its database (at most every
//! [`REOPEN_INTERVAL`]), so snapshots work again once the disk takes writes, without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use parking_lot::{Mutex, RwLock};

use super::keys::{aggregate_key, decode_aggregate_key, tenant_prefix};
use super::{Result, StoreError};
use crate::types::{AggregateRef, Snapshot, TenantId};

/// Least time between two attempts to reopen the database after failed writes.
pub const REOPEN_INTERVAL: Duration = Duration::from_millis(500);

/// The snapshot store. Cheap to clone (handles to one database).
#[derive(Clone)]
pub struct SnapshotStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Absent only while a reopen failed.
    open: RwLock<Option<Open>>,
    last_reopen: Mutex<Option<Instant>>,
}

struct Open {
    db: Database,
    snapshots: Keyspace,
}

impl Open {
    fn new(path: &Path) -> Result<Self> {
        let db = Database::builder(path).open().map_err(fjall_err)?;
        let snapshots = db
            .keyspace("snapshots", KeyspaceCreateOptions::default)
            .map_err(fjall_err)?;
        Ok(Self { db, snapshots })
    }
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn fjall_err(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("fjall: {e}"))
}

impl SnapshotStore {
    /// Open (or create) the store in directory `path` (blocking).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the directory cannot be opened or is locked.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open = Open::new(&path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                open: RwLock::new(Some(open)),
                last_reopen: Mutex::new(None),
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Open) -> Result<T>) -> Result<T> {
        let open = self.inner.open.read();
        match open.as_ref() {
            Some(o) => f(o),
            None => Err(StoreError::Unavailable(
                "the snapshot store is being reopened after a write failure".into(),
            )),
        }
    }

    /// A write failed: reopen the database (rate-limited), since fjall refuses every later write
    /// of a database whose journal write failed.
    fn recover(&self) {
        {
            let mut last = self.inner.last_reopen.lock();
            if last.is_some_and(|t| t.elapsed() < REOPEN_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut open = self.inner.open.write();
        drop(open.take());
        match Open::new(&self.inner.path) {
            Ok(o) => {
                *open = Some(o);
                tracing::info!(path = %self.inner.path.display(), "snapshot store reopened after a write failure");
            }
            Err(e) => {
                tracing::warn!(path = %self.inner.path.display(), error = %e, "snapshot store could not be reopened; retrying on the next write");
            }
        }
    }

    /// Run a write; on failure reopen the database once (rate-limited) and try again.
    fn write(&self, f: impl Fn(&Open) -> Result<()>) -> Result<()> {
        match self.with(&f) {
            Ok(()) => Ok(()),
            Err(StoreError::Unavailable(_)) => {
                self.recover();
                self.with(&f)
            }
            Err(e) => Err(e),
        }
    }

    /// The latest snapshot of an aggregate, if any.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] on I/O; [`StoreError::Corrupted`] when the stored value does not
    /// decode or belongs to another aggregate.
    pub fn get(&self, aggregate: &AggregateRef) -> Result<Option<Snapshot>> {
        let key = aggregate_key(aggregate);
        let Some(raw) = self.with(|o| o.snapshots.get(&key).map_err(fjall_err))? else {
            return Ok(None);
        };
        let snapshot: Snapshot =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupted {
                location: format!("snapshot {aggregate}"),
                reason: e.to_string(),
            })?;
        if snapshot.aggregate != *aggregate {
            return Err(StoreError::Corrupted {
                location: format!("snapshot {aggregate}"),
                reason: format!("holds the snapshot of {}", snapshot.aggregate),
            });
        }
        Ok(Some(snapshot))
    }

    /// Store a snapshot, replacing the aggregate's previous one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] on I/O.
    pub fn insert(&self, snapshot: &Snapshot) -> Result<()> {
        let value = serde_json::to_vec(snapshot).map_err(|e| {
            StoreError::InvalidCommit(format!("snapshot cannot be serialized: {e}"))
        })?;
        let key = aggregate_key(&snapshot.aggregate);
        self.write(|o| {
            o.snapshots
                .insert(key.clone(), value.clone())
                .map_err(fjall_err)
        })
    }

    /// Delete an aggregate's snapshot (no error when there is none).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] on I/O.
    pub fn remove(&self, aggregate: &AggregateRef) -> Result<()> {
        let key = aggregate_key(aggregate);
        self.write(|o| o.snapshots.remove(key.clone()).map_err(fjall_err))
    }

    /// The aggregates of a tenant that have a snapshot.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] on I/O; [`StoreError::Corrupted`] for an undecodable key.
    pub fn list(&self, tenant: &TenantId) -> Result<Vec<AggregateRef>> {
        self.with(|o| {
            let mut out = Vec::new();
            for guard in o.snapshots.prefix(tenant_prefix(tenant)) {
                let key = guard.key().map_err(fjall_err)?;
                out.push(decode_aggregate_key(&key)?);
            }
            Ok(out)
        })
    }

    /// Delete every snapshot of `tenant`; returns how many there were.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] on I/O.
    pub fn delete_tenant(&self, tenant: &TenantId) -> Result<u64> {
        let removed = std::sync::atomic::AtomicU64::new(0);
        self.write(|o| {
            let keys = o
                .snapshots
                .prefix(tenant_prefix(tenant))
                .map(|g| g.key().map_err(fjall_err))
                .collect::<Result<Vec<_>>>()?;
            removed.store(keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for key in keys {
                o.snapshots.remove(key).map_err(fjall_err)?;
            }
            o.db.persist(PersistMode::SyncAll).map_err(fjall_err)
        })?;
        Ok(removed.into_inner())
    }

    /// Sync everything written so far to disk.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] on I/O.
    pub fn persist(&self) -> Result<()> {
        self.write(|o| o.db.persist(PersistMode::SyncAll).map_err(fjall_err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{AggregateId, AggregateType, ComponentHash, Json, Version};

    fn snapshot(tenant: &str, id: AggregateId, version: u64) -> Snapshot {
        Snapshot {
            aggregate: AggregateRef {
                tenant: TenantId::new(tenant).unwrap(),
                aggregate_type: AggregateType::new("acct").unwrap(),
                aggregate_id: id,
            },
            version: Version(version),
            state: Json::parse(format!(r#"{{"v":{version}}}"#)).unwrap(),
            component: ComponentHash::of(b"c"),
            log_position: version * 10,
        }
    }

    #[test]
    fn snapshots_are_tenant_scoped_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = AggregateId::generate();
        {
            let store = SnapshotStore::open(dir.path()).unwrap();
            let a = snapshot("t1", id, 3);
            let b = snapshot("t2", id, 7);
            let single = snapshot("", id, 9);
            assert_eq!(store.get(&a.aggregate).unwrap(), None);
            store.insert(&a).unwrap();
            store.insert(&b).unwrap();
            store.insert(&single).unwrap();
            assert_eq!(store.get(&a.aggregate).unwrap(), Some(a.clone()));
            assert_eq!(store.get(&b.aggregate).unwrap(), Some(b.clone()));
            assert_eq!(
                store.list(&a.aggregate.tenant).unwrap(),
                vec![a.aggregate.clone()]
            );
            assert_eq!(
                store.list(&TenantId::single()).unwrap(),
                vec![single.aggregate.clone()]
            );
            let a2 = snapshot("t1", id, 5);
            store.insert(&a2).unwrap();
            assert_eq!(store.get(&a.aggregate).unwrap(), Some(a2));
            store.remove(&b.aggregate).unwrap();
            store.remove(&b.aggregate).unwrap();
            assert_eq!(store.get(&b.aggregate).unwrap(), None);
            store.persist().unwrap();
        }
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(
            store
                .get(&snapshot("t1", id, 0).aggregate)
                .unwrap()
                .unwrap()
                .version,
            Version(5)
        );
        assert_eq!(store.get(&snapshot("t2", id, 0).aggregate).unwrap(), None);
    }
}
