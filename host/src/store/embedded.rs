//! The embedded event log: one fjall database on the local disk, group commit, fsync before ack.
//!
//! # Layout
//!
//! Keyspaces of one fjall [`Database`] (keys as in `keys.rs`, tenant first):
//!
//! | keyspace   | key                                   | value                                  |
//! | ---------- | ------------------------------------- | -------------------------------------- |
//! | `events`   | `tenant 0 type 0 id(16) version(BE8)` | the [`Event`] as JSON                  |
//! | `heads`    | `tenant 0 type 0 id(16)`              | the aggregate's version (BE8)          |
//! | `commands` | `tenant 0 command-id(16)`             | aggregate, versions before/after, position (JSON) |
//! | `meta`     | `position`                            | the last commit position (BE8)         |
//! | `feed`     | `tenant 0 position(BE8)`              | from(BE8) to(BE8) aggregate key        |
//! | `positions`| `position(BE8)`                       | from(BE8) to(BE8) aggregate key        |
//!
//! (`feed` only has commits with events; `positions` has every commit.)
//!
//! A commit writes its events, the aggregate's head, its command record, its feed entries (only
//! when it has events) and the log position in one atomic fjall batch, so after a crash either
//! all of a command is there or none of it. `feed` (one tenant's commits in position order) and
//! `positions` (every tenant's) let [`EventLog::subscribe`] replay from a position: an entry names
//! the aggregate and the versions the commit wrote, whose events are then read from `events`.
//! A database written before these two keyspaces existed gets them filled from `commands` when
//! it is first opened (`meta/feed` marks that done).
//!
//! # Group commit
//!
//! [`EventLog::append`] sends the commit over a channel to **one committer thread** and waits on a
//! oneshot. The committer takes everything queued (up to [`EmbeddedConfig::max_batch`]), and for
//! each commit in order: a command id seen before (on disk or earlier in this batch) answers with
//! the original result (`duplicate: true`); an aggregate not at `expected` (checked against the
//! committer's in-memory head cache, which includes the earlier commits of the same batch) answers
//! [`StoreError::Conflict`] for that commit only; everything else goes into **one** write batch,
//! which is written and persisted with one fsync ([`PersistMode::SyncAll`] by default). Only then
//! are the waiters answered and subscribers fed. This is the shape measured at 68–98k acks/s on two
//! cores (shared/MEASURED.md); having the tasks insert themselves while one thread persists is
//! slower and unstable because `persist` holds the journal lock during the fsync.
//!
//! Reads (`read`, `version`, `find_command`, `list_aggregates`) are prefix/point reads on the
//! database in `spawn_blocking`; they see a commit once it is persisted (a fjall batch becomes
//! visible after its journal write), so a read after an acknowledged append always sees it.
//!
//! The database directory is locked: one process, one [`EmbeddedLog`] per path at a time.
//! Dropping the log stops the committer (after finishing what was queued) and releases the lock.
//!
//! # Write failures (a full disk)
//!
//! fjall treats a failed journal write or fsync as fatal and refuses every later write of that
//! database ("poisoned"). When a batch fails, the committer marks the log failed
//! ([`EventLog::health`] names the error, so `/ready` answers 503 and commands are refused at once)
//! and from then on, at most every [`EmbeddedConfig::recovery_interval`], probes whether the disk
//! takes writes again (a 1 MiB file written, fsynced and removed next to the database). When it
//! does, it closes the database, opens it again (fjall's journal recovery keeps every persisted
//! batch and drops a torn one), reloads the log position and its head cache from disk, and
//! resumes. Nothing acknowledged is lost: a commit is acknowledged only after its batch was
//! persisted. A batch whose persist failed was answered `Unavailable`; if its bytes reached the
//! disk anyway, a retry with the same command id finds it and returns the original result.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

use super::keys::{aggregate_key, command_key, decode_aggregate_key, event_key, tenant_prefix};
use super::{Appended, Commit, EventLog, Feed, FeedFilter, FeedItem, Result, StoreError};
use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, Event, TenantId, Version};

const POSITION_KEY: &[u8] = b"position";
/// Present once `feed` and `positions` cover every commit (see the module docs).
const FEED_MARKER_KEY: &[u8] = b"feed";
/// Commits read from the log per step while a feed catches up.
const FEED_READ_BATCH: usize = 256;

/// Knobs of the embedded log. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Most commits written in one batch (one fsync). Default 4096.
    pub max_batch: usize,
    /// Most aggregate heads the committer keeps in memory; when full the cache is cleared and
    /// refilled from disk on demand. Default 1,000,000.
    pub head_cache_capacity: usize,
    /// Commits buffered per subscriber before a slow subscriber sees a "lagged" error. Default 4096.
    pub subscriber_buffer: usize,
    /// Persist with `fdatasync` instead of `fsync` (fine on ext4/xfs for an append-only journal).
    /// Default false (`fsync`).
    pub fdatasync: bool,
    /// fjall block cache in bytes; `None` keeps fjall's default.
    pub cache_bytes: Option<u64>,
    /// After a failed write, how often the committer probes the disk and tries to reopen the
    /// database. Default 500 ms.
    pub recovery_interval: std::time::Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            max_batch: 4096,
            head_cache_capacity: 1_000_000,
            subscriber_buffer: 4096,
            fdatasync: false,
            cache_bytes: None,
            recovery_interval: std::time::Duration::from_millis(500),
        }
    }
}

/// The embedded (single machine) event log. See the module docs.
pub struct EmbeddedLog {
    current: Arc<Current>,
    requests: mpsc::Sender<Request>,
    committer: parking_lot::Mutex<Option<JoinHandle<()>>>,
    published: broadcast::Sender<FeedItem>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Counters of the committer, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// Write batches persisted (one fsync each).
    pub batches: u64,
    /// Commits written (not counting duplicates and conflicts).
    pub commits: u64,
    /// Time the committer spent validating and preparing batches, in microseconds.
    pub prepare_micros: u64,
    /// Time the committer spent writing and persisting batches, in microseconds.
    pub persist_micros: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    commits: AtomicU64,
    prepare_micros: AtomicU64,
    persist_micros: AtomicU64,
}

/// The open database (absent while the committer reopens it) and the log's health, shared by the
/// log's handle and its committer.
struct Current {
    shared: parking_lot::RwLock<Option<Arc<Shared>>>,
    health: parking_lot::Mutex<super::LogHealth>,
    counters: Counters,
    /// The last persisted commit position (set before the commit is published to subscribers).
    position: AtomicU64,
}

impl Current {
    fn get(&self) -> Result<Arc<Shared>> {
        self.shared.read().clone().ok_or_else(|| {
            StoreError::Unavailable(
                "the embedded event log is being reopened after a write failure".into(),
            )
        })
    }

    fn set_health(&self, health: super::LogHealth) {
        *self.health.lock() = health;
    }
}

struct Shared {
    db: Database,
    events: Keyspace,
    heads: Keyspace,
    commands: Keyspace,
    meta: Keyspace,
    feed: Keyspace,
    positions: Keyspace,
}

enum Request {
    /// The commit, its events already serialized (by the caller's task, off the committer thread).
    Append(Commit, Vec<Vec<u8>>, oneshot::Sender<Result<Appended>>),
    Flush(oneshot::Sender<Result<()>>),
    /// Remove a tenant's data, in order with the appends around it.
    DeleteTenant(TenantId, oneshot::Sender<Result<u64>>),
    Shutdown,
}

/// What the `commands` keyspace holds per command id.
#[derive(Debug, Serialize, Deserialize)]
struct CommandRecord {
    aggregate: AggregateRef,
    /// Version before the command.
    from: Version,
    /// Version after the command.
    version: Version,
    position: u64,
}

fn fjall_err(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("fjall: {e}"))
}

fn closed() -> StoreError {
    StoreError::Unavailable("the embedded event log is closed".into())
}

fn decode_u64(location: &str, raw: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| StoreError::Corrupted {
        location: location.to_string(),
        reason: format!("expected 8 bytes, found {}", raw.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl EmbeddedLog {
    /// Open (or create) the log in directory `path` with the default configuration. Blocking:
    /// recovers the journal; call it at startup or in `spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the directory cannot be opened or is locked by another
    /// open log; [`StoreError::Corrupted`] when its metadata cannot be decoded.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, EmbeddedConfig::default())
    }

    /// [`EmbeddedLog::open`], waiting (at most `timeout`, polling every 20 ms) while another
    /// handle of the same directory, just dropped, still lets go of its lock — a tenant log
    /// closed as idle and opened again at once. Blocking.
    ///
    /// # Errors
    ///
    /// As [`EmbeddedLog::open`]; still locked after `timeout` is [`StoreError::Unavailable`].
    pub fn open_waiting(path: impl AsRef<Path>, timeout: std::time::Duration) -> Result<Self> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match Self::open(path.as_ref()) {
                Err(e)
                    if e.to_string().contains("Locked") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    /// Open (or create) the log in directory `path`.
    ///
    /// # Errors
    ///
    /// As [`EmbeddedLog::open`].
    pub fn open_with(path: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let shared = Arc::new(Shared::open(&path, &config)?);
        shared.fill_feed()?;
        let position = shared.position()?;
        let current = Arc::new(Current {
            shared: parking_lot::RwLock::new(Some(shared)),
            health: parking_lot::Mutex::new(super::LogHealth::healthy()),
            counters: Counters::default(),
            position: AtomicU64::new(position),
        });
        let (published, _) = broadcast::channel(config.subscriber_buffer.max(1));
        let (requests, rx) = mpsc::channel();
        let committer = Committer {
            current: current.clone(),
            path: path.clone(),
            config: config.clone(),
            failed_since: None,
            last_probe: None,
            heads: HashMap::new(),
            head_cache_capacity: config.head_cache_capacity.max(1),
            position,
            max_batch: config.max_batch.max(1),
            mode: if config.fdatasync {
                PersistMode::SyncData
            } else {
                PersistMode::SyncAll
            },
            published: published.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("event-log-committer".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the committer thread: {e}"))
            })?;
        Ok(Self {
            current,
            requests,
            committer: parking_lot::Mutex::new(Some(handle)),
            published,
            path,
        })
    }

    /// The committer's counters since the log was opened.
    pub fn stats(&self) -> EmbeddedStats {
        let c = &self.current.counters;
        EmbeddedStats {
            batches: c.batches.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            prepare_micros: c.prepare_micros.load(Ordering::Relaxed),
            persist_micros: c.persist_micros.load(Ordering::Relaxed),
        }
    }

    /// The directory the log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.current.get()?;
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task failed: {e}")))?
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Shutdown);
        if let Some(handle) = self.committer.lock().take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn open(path: &Path, config: &EmbeddedConfig) -> Result<Self> {
        let mut builder = Database::builder(path);
        if let Some(bytes) = config.cache_bytes {
            builder = builder.cache_size(bytes);
        }
        let db = builder.open().map_err(fjall_err)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(fjall_err)
        };
        Ok(Shared {
            events: ks("events")?,
            heads: ks("heads")?,
            commands: ks("commands")?,
            meta: ks("meta")?,
            feed: ks("feed")?,
            positions: ks("positions")?,
            db,
        })
    }

    /// Fill `feed` and `positions` from `commands` once, for a database written before they
    /// existed (see the module docs).
    fn fill_feed(&self) -> Result<()> {
        if self.meta.get(FEED_MARKER_KEY).map_err(fjall_err)?.is_some() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut filled = 0u64;
        for guard in self.commands.iter() {
            let (key, raw) = guard.into_inner().map_err(fjall_err)?;
            let rec: CommandRecord =
                serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupted {
                    location: format!("command {}", hex::encode(&key)),
                    reason: e.to_string(),
                })?;
            let akey = aggregate_key(&rec.aggregate);
            let (fkey, pkey, value) = feed_entry(
                &rec.aggregate.tenant,
                &akey,
                rec.position,
                rec.from,
                rec.version,
            );
            if rec.version.0 > rec.from.0 {
                wb.insert(&self.feed, fkey, value.clone());
            }
            wb.insert(&self.positions, pkey, value);
            filled += 1;
        }
        wb.insert(&self.meta, FEED_MARKER_KEY, b"1");
        wb.commit().map_err(fjall_err)?;
        if filled > 0 {
            tracing::info!(
                commits = filled,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "event log: filled the position feed from the command records"
            );
        }
        Ok(())
    }

    /// Up to `limit` commits passing `filter` with a position greater than `after`, in order.
    fn read_feed(&self, filter: &FeedFilter, after: u64, limit: usize) -> Result<Vec<FeedItem>> {
        let start = after.saturating_add(1);
        let entries: Box<dyn Iterator<Item = fjall::Guard>> = match &filter.tenant {
            Some(tenant) => {
                let prefix = tenant_prefix(tenant);
                let mut from = prefix.clone();
                from.extend_from_slice(&start.to_be_bytes());
                let mut to = prefix;
                to.extend_from_slice(&u64::MAX.to_be_bytes());
                Box::new(self.feed.range(from..=to))
            }
            None => Box::new(self.positions.range(start.to_be_bytes()..)),
        };
        let mut out = Vec::new();
        for guard in entries {
            let (key, value) = guard.into_inner().map_err(fjall_err)?;
            let location = || format!("feed entry {}", hex::encode(&key));
            let position = decode_u64(&location(), &key[key.len().saturating_sub(8)..])?;
            if value.len() < 16 {
                return Err(StoreError::Corrupted {
                    location: location(),
                    reason: format!("value of {} bytes", value.len()),
                });
            }
            let from = decode_u64(&location(), &value[..8])?;
            let to = decode_u64(&location(), &value[8..16])?;
            let aggregate = decode_aggregate_key(&value[16..])?;
            if !filter.admits(&aggregate, to.saturating_sub(from) as usize) {
                continue;
            }
            let events = self.read_events(&aggregate, from, to)?;
            if events.len() as u64 != to.saturating_sub(from) {
                return Err(StoreError::Corrupted {
                    location: location(),
                    reason: format!(
                        "commit at position {position} wrote versions {}..={to} of {aggregate}, found {} events",
                        from + 1,
                        events.len()
                    ),
                });
            }
            out.push(FeedItem {
                position,
                aggregate,
                events: events.into(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn position(&self) -> Result<u64> {
        match self.meta.get(POSITION_KEY).map_err(fjall_err)? {
            Some(raw) => decode_u64("meta/position", &raw),
            None => Ok(0),
        }
    }

    /// Events of `aggregate` with `after < version <= upto`, checked to be gap-free.
    fn read_events(&self, aggregate: &AggregateRef, after: u64, upto: u64) -> Result<Vec<Event>> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let akey = aggregate_key(aggregate);
        let start = event_key(&akey, after + 1);
        let end = event_key(&akey, upto);
        let mut out = Vec::new();
        for guard in self.events.range(start..=end) {
            let (key, value) = guard.into_inner().map_err(fjall_err)?;
            let want = after + 1 + out.len() as u64;
            let location = || format!("event {aggregate}@{want}");
            let version = decode_u64(&location(), &key[akey.len()..])?;
            if version != want {
                return Err(StoreError::Corrupted {
                    location: location(),
                    reason: format!(
                        "found version {version} where {want} was expected (gap in the log)"
                    ),
                });
            }
            let event: Event =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupted {
                    location: location(),
                    reason: e.to_string(),
                })?;
            out.push(event);
        }
        Ok(out)
    }

    fn head(&self, akey: &[u8]) -> Result<u64> {
        match self.heads.get(akey).map_err(fjall_err)? {
            Some(raw) => decode_u64("heads", &raw),
            None => Ok(0),
        }
    }

    fn find_command(&self, ckey: &[u8]) -> Result<Option<Appended>> {
        let Some(raw) = self.commands.get(ckey).map_err(fjall_err)? else {
            return Ok(None);
        };
        let rec: CommandRecord =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupted {
                location: format!("command {}", hex::encode(ckey)),
                reason: e.to_string(),
            })?;
        let events = self.read_events(&rec.aggregate, rec.from.0, rec.version.0)?;
        if events.len() as u64 != rec.version.0 - rec.from.0 {
            return Err(StoreError::Corrupted {
                location: format!("command {}", hex::encode(ckey)),
                reason: format!(
                    "recorded versions {}..={} but found {} events",
                    rec.from.0 + 1,
                    rec.version,
                    events.len()
                ),
            });
        }
        Ok(Some(Appended {
            aggregate: rec.aggregate,
            version: rec.version,
            events,
            position: rec.position,
            duplicate: true,
        }))
    }
}

struct Committer {
    current: Arc<Current>,
    path: PathBuf,
    config: EmbeddedConfig,
    /// Set while writes fail: when the first failure happened.
    failed_since: Option<std::time::Instant>,
    /// When the disk was last probed for recovery.
    last_probe: Option<std::time::Instant>,
    /// aggregate key → version, for every aggregate touched recently.
    heads: HashMap<Vec<u8>, u64>,
    head_cache_capacity: usize,
    position: u64,
    max_batch: usize,
    mode: PersistMode,
    published: broadcast::Sender<FeedItem>,
}

type Waiter = oneshot::Sender<Result<Appended>>;

enum Outcome {
    /// Answered without writing (duplicate of an earlier batch, conflict, error).
    Done(Result<Appended>),
    /// Written in this batch; answered after the persist.
    Written(Appended),
    /// Same command id as the commit at this index of the batch.
    SameAs(usize),
}

impl Committer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut batch: Vec<(Commit, Vec<Vec<u8>>, Waiter)> = Vec::with_capacity(self.max_batch);
        loop {
            let first = if self.failed_since.is_some() {
                // Failed: wake up on our own to probe, so readiness recovers without traffic.
                match rx.recv_timeout(self.config.recovery_interval) {
                    Ok(req) => req,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.try_recover();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                let Ok(first) = rx.recv() else { return };
                first
            };
            // `Some(_)` once a flush or shutdown was seen: finish what came before it, then stop.
            let mut stop: Option<Option<oneshot::Sender<Result<()>>>> = None;
            // A tenant removal ends the batch: it runs after the appends before it.
            let mut delete: Option<(TenantId, oneshot::Sender<Result<u64>>)> = None;
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append(commit, encoded, tx) => batch.push((commit, encoded, tx)),
                    Request::Flush(tx) => stop = Some(Some(tx)),
                    Request::DeleteTenant(tenant, tx) => delete = Some((tenant, tx)),
                    Request::Shutdown => stop = Some(None),
                }
                if batch.len() < self.max_batch && stop.is_none() && delete.is_none() {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                if self.failed_since.is_some() {
                    self.try_recover();
                }
                if let Some(since) = self.failed_since {
                    let reason = self
                        .current
                        .health
                        .lock()
                        .reason
                        .clone()
                        .unwrap_or_default();
                    for (_, _, waiter) in batch.drain(..) {
                        let _ = waiter.send(Err(StoreError::Unavailable(format!(
                            "{reason} (failing for {} ms; the log recovers by itself once the disk takes writes)",
                            since.elapsed().as_millis()
                        ))));
                    }
                } else {
                    self.commit_batch(&mut batch);
                }
            }
            if let Some((tenant, tx)) = delete {
                let _ = tx.send(self.delete_tenant(&tenant));
            }
            if let Some(flush) = stop {
                let res = self
                    .current
                    .get()
                    .and_then(|shared| shared.db.persist(PersistMode::SyncAll).map_err(fjall_err));
                if let Some(tx) = flush {
                    let _ = tx.send(res);
                }
                // Refuse whatever was queued behind the flush; later sends fail (receiver dropped).
                while let Ok(req) = rx.try_recv() {
                    match req {
                        Request::Append(_, _, tx) => {
                            let _ = tx.send(Err(closed()));
                        }
                        Request::Flush(tx) => {
                            let _ = tx.send(Ok(()));
                        }
                        Request::DeleteTenant(_, tx) => {
                            let _ = tx.send(Err(closed()));
                        }
                        Request::Shutdown => {}
                    }
                }
                return;
            }
        }
    }

    /// Writes failed: probe the disk (rate-limited) and, when it takes writes again, reopen the
    /// database and reload the position and heads from it.
    fn try_recover(&mut self) {
        let now = std::time::Instant::now();
        if self
            .last_probe
            .is_some_and(|t| now.duration_since(t) < self.config.recovery_interval)
        {
            return;
        }
        self.last_probe = Some(now);
        if let Err(e) = probe_disk(&self.path) {
            self.current.set_health(super::LogHealth::failing(
                "storage-failed",
                format!("event log writes fail: the disk does not take writes: {e}"),
            ));
            return;
        }
        // Close the poisoned database: take it out (reads answer "being reopened" meanwhile) and
        // wait, briefly, for reads in progress to let go of it.
        let old = self.current.shared.write().take();
        if let Some(old) = old {
            let deadline = now + std::time::Duration::from_secs(2);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if Arc::strong_count(&old) > 1 {
                *self.current.shared.write() = Some(old);
                return; // a long read still holds it; try again next time
            }
            drop(old);
        }
        let reopened = Shared::open(&self.path, &self.config)
            .and_then(|shared| shared.position().map(|p| (shared, p)));
        match reopened {
            Ok((shared, position)) => {
                let failed_for = self.failed_since.map(|t| t.elapsed()).unwrap_or_default();
                *self.current.shared.write() = Some(Arc::new(shared));
                self.position = position;
                self.current.position.store(position, Ordering::Release);
                self.heads.clear();
                self.failed_since = None;
                self.current.set_health(super::LogHealth::healthy());
                tracing::info!(
                    path = %self.path.display(),
                    position,
                    failed_ms = failed_for.as_millis() as u64,
                    "event log writable again: reopened the database"
                );
            }
            Err(e) => {
                self.current.set_health(super::LogHealth::failing(
                    "storage-failed",
                    format!("event log writes fail; reopening the database failed: {e}"),
                ));
            }
        }
    }

    /// Remove every key of `tenant` in one persisted batch (see [`EventLog::delete_tenant`]);
    /// its `positions` entries are found through its command records.
    fn delete_tenant(&mut self, tenant: &TenantId) -> Result<u64> {
        if self.failed_since.is_some() {
            return Err(StoreError::Unavailable(
                "the event log is failing; try again once it recovered".into(),
            ));
        }
        let shared = self.current.get()?;
        let prefix = tenant_prefix(tenant);
        let mut wb = shared.db.batch().durability(Some(self.mode));
        let mut aggregates = 0u64;
        for (keyspace, heads) in [
            (&shared.heads, true),
            (&shared.events, false),
            (&shared.feed, false),
        ] {
            for guard in keyspace.prefix(&prefix) {
                let key = guard.key().map_err(fjall_err)?;
                aggregates += u64::from(heads);
                wb.remove(keyspace, key);
            }
        }
        for guard in shared.commands.prefix(&prefix) {
            let (key, value) = guard.into_inner().map_err(fjall_err)?;
            if let Ok(record) = serde_json::from_slice::<CommandRecord>(&value) {
                wb.remove(&shared.positions, record.position.to_be_bytes());
            }
            wb.remove(&shared.commands, key);
        }
        wb.commit().map_err(fjall_err)?;
        shared.db.persist(self.mode).map_err(fjall_err)?;
        self.heads.retain(|key, _| !key.starts_with(&prefix));
        Ok(aggregates)
    }

    fn cached_head(&mut self, akey: &[u8]) -> Result<u64> {
        if let Some(v) = self.heads.get(akey) {
            return Ok(*v);
        }
        let v = self.current.get()?.head(akey)?;
        self.remember_head(akey.to_vec(), v);
        Ok(v)
    }

    fn remember_head(&mut self, akey: Vec<u8>, version: u64) {
        if self.heads.len() >= self.head_cache_capacity && !self.heads.contains_key(&akey) {
            self.heads.clear();
        }
        self.heads.insert(akey, version);
    }

    fn commit_batch(&mut self, batch: &mut Vec<(Commit, Vec<Vec<u8>>, Waiter)>) {
        let shared = match self.current.get() {
            Ok(shared) => shared,
            Err(e) => {
                for (_, _, waiter) in batch.drain(..) {
                    let _ = waiter.send(Err(StoreError::Unavailable(e.to_string())));
                }
                return;
            }
        };
        let mut wb = shared.db.batch().durability(Some(self.mode));
        let start_position = self.position;
        let started = std::time::Instant::now();
        // Heads written by this batch (applied to the cache only once it is persisted).
        let mut overlay: HashMap<Vec<u8>, u64> = HashMap::new();
        // Command keys written by this batch → index.
        let mut in_batch: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut outcomes: Vec<(Waiter, Outcome)> = Vec::with_capacity(batch.len());

        for (i, (commit, encoded, waiter)) in batch.drain(..).enumerate() {
            let ckey = command_key(&commit.aggregate.tenant, &commit.command_id);
            if let Some(&j) = in_batch.get(&ckey) {
                outcomes.push((waiter, Outcome::SameAs(j)));
                continue;
            }
            match shared.find_command(&ckey) {
                Ok(None) => {}
                Ok(Some(original)) => {
                    outcomes.push((waiter, Outcome::Done(Ok(original))));
                    continue;
                }
                Err(e) => {
                    outcomes.push((waiter, Outcome::Done(Err(e))));
                    continue;
                }
            }
            let akey = aggregate_key(&commit.aggregate);
            let head = match overlay.get(&akey) {
                Some(v) => Ok(*v),
                None => self.cached_head(&akey),
            };
            let head = match head {
                Ok(v) => v,
                Err(e) => {
                    outcomes.push((waiter, Outcome::Done(Err(e))));
                    continue;
                }
            };
            if head != commit.expected.0 {
                let err = StoreError::Conflict {
                    aggregate: commit.aggregate,
                    expected: commit.expected,
                    actual: Version(head),
                };
                outcomes.push((waiter, Outcome::Done(Err(err))));
                continue;
            }
            let version = commit.next_version();
            let record = CommandRecord {
                aggregate: commit.aggregate.clone(),
                from: commit.expected,
                version,
                position: self.position + 1,
            };
            let record = match serde_json::to_vec(&record) {
                Ok(r) => r,
                Err(e) => {
                    outcomes.push((
                        waiter,
                        Outcome::Done(Err(StoreError::InvalidCommit(e.to_string()))),
                    ));
                    continue;
                }
            };
            self.position += 1;
            for (event, bytes) in commit.events.iter().zip(encoded) {
                wb.insert(&shared.events, event_key(&akey, event.version.0), bytes);
            }
            let (fkey, pkey, value) = feed_entry(
                &commit.aggregate.tenant,
                &akey,
                self.position,
                commit.expected,
                version,
            );
            if !commit.events.is_empty() {
                wb.insert(&shared.feed, fkey, value.clone());
            }
            wb.insert(&shared.positions, pkey, value);
            wb.insert(&shared.heads, akey.clone(), version.0.to_be_bytes());
            wb.insert(&shared.commands, ckey.clone(), record);
            overlay.insert(akey, version.0);
            in_batch.insert(ckey, i);
            outcomes.push((
                waiter,
                Outcome::Written(Appended {
                    aggregate: commit.aggregate,
                    version,
                    events: commit.events,
                    position: self.position,
                    duplicate: false,
                }),
            ));
        }

        let prepared = std::time::Instant::now();
        let persisted = if self.position == start_position {
            Ok(())
        } else {
            wb.insert(&shared.meta, POSITION_KEY, self.position.to_be_bytes());
            wb.commit().map_err(fjall_err)
        };
        let c = &self.current.counters;
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        c.prepare_micros
            .fetch_add(micros(prepared - started), Ordering::Relaxed);
        c.persist_micros
            .fetch_add(micros(prepared.elapsed()), Ordering::Relaxed);
        if persisted.is_ok() && self.position != start_position {
            c.batches.fetch_add(1, Ordering::Relaxed);
            c.commits
                .fetch_add(self.position - start_position, Ordering::Relaxed);
        }

        if let Err(e) = &persisted {
            tracing::error!(error = %e, "event log batch failed; every commit in it is refused; the log refuses writes until the disk takes them again");
            self.position = start_position;
            self.failed_since
                .get_or_insert_with(std::time::Instant::now);
            self.last_probe = Some(std::time::Instant::now());
            self.current.set_health(super::LogHealth::failing(
                "storage-failed",
                format!("event log writes fail: {e}"),
            ));
        } else {
            for (akey, v) in overlay {
                self.remember_head(akey, v);
            }
            self.current
                .position
                .store(self.position, Ordering::Release);
        }

        // Results of written commits that a later commit of the same batch duplicated (outcome
        // index == batch index).
        let referenced: HashSet<usize> = outcomes
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::SameAs(j) => Some(*j),
                _ => None,
            })
            .collect();
        let written: HashMap<usize, Appended> = outcomes
            .iter()
            .enumerate()
            .filter(|(i, _)| persisted.is_ok() && referenced.contains(i))
            .filter_map(|(i, (_, o))| match o {
                Outcome::Written(a) => Some((i, a.clone())),
                _ => None,
            })
            .collect();
        let subscribers = self.published.receiver_count() > 0;
        for (waiter, outcome) in outcomes {
            let answer = match (outcome, &persisted) {
                (Outcome::Done(r), _) => r,
                (Outcome::Written(a), Ok(())) => {
                    if subscribers {
                        let _ = self.published.send(FeedItem {
                            position: a.position,
                            aggregate: a.aggregate.clone(),
                            events: Arc::from(a.events.clone()),
                        });
                    }
                    Ok(a)
                }
                (Outcome::SameAs(j), Ok(())) => match written.get(&j) {
                    Some(a) => Ok(Appended {
                        duplicate: true,
                        ..a.clone()
                    }),
                    None => Err(StoreError::Unavailable(
                        "duplicate of a failed commit".into(),
                    )),
                },
                (Outcome::Written(_) | Outcome::SameAs(_), Err(e)) => {
                    Err(StoreError::Unavailable(e.to_string()))
                }
            };
            let _ = waiter.send(answer);
        }
    }
}

/// The `feed` key, the `positions` key and their shared value for a commit at `position` that
/// wrote versions `from+1 ..= to` of the aggregate with key `akey`.
fn feed_entry(
    tenant: &TenantId,
    akey: &[u8],
    position: u64,
    from: Version,
    to: Version,
) -> (Vec<u8>, [u8; 8], Vec<u8>) {
    let mut fkey = tenant_prefix(tenant);
    fkey.extend_from_slice(&position.to_be_bytes());
    let mut value = Vec::with_capacity(16 + akey.len());
    value.extend_from_slice(&from.0.to_be_bytes());
    value.extend_from_slice(&to.0.to_be_bytes());
    value.extend_from_slice(akey);
    (fkey, position.to_be_bytes(), value)
}

/// A subscription's progress: commits up to `last` were delivered (or skipped by the filter).
struct FeedState {
    rx: broadcast::Receiver<FeedItem>,
    current: Arc<Current>,
    filter: FeedFilter,
    last: u64,
    /// Reading stored commits (from the start, or after falling behind the broadcast).
    catching_up: bool,
    backlog: std::collections::VecDeque<FeedItem>,
}

impl FeedState {
    async fn next(&mut self) -> Option<Result<FeedItem>> {
        loop {
            if let Some(item) = self.backlog.pop_front() {
                self.last = item.position;
                return Some(Ok(item));
            }
            if self.catching_up {
                let shared = match self.current.get() {
                    Ok(s) => s,
                    Err(e) => return Some(Err(e)),
                };
                let (filter, after) = (self.filter.clone(), self.last);
                let read = tokio::task::spawn_blocking(move || {
                    shared.read_feed(&filter, after, FEED_READ_BATCH)
                })
                .await
                .map_err(|e| StoreError::Unavailable(format!("feed read task failed: {e}")));
                match read.and_then(|r| r) {
                    Ok(items) if items.is_empty() => self.catching_up = false,
                    Ok(items) => self.backlog.extend(items),
                    Err(e) => return Some(Err(e)),
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(item) => {
                    if item.position <= self.last {
                        continue; // already read from the log
                    }
                    if self.filter.admits(&item.aggregate, item.events.len()) {
                        self.last = item.position;
                        return Some(Ok(item));
                    }
                }
                // Fell behind: the skipped commits are in the log; read them from there.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Whether the disk under `dir` takes a 1 MiB write and an fsync now.
fn probe_disk(dir: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let probe = dir.join(".write-probe");
    let result = (|| {
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&probe);
    result
}

#[async_trait::async_trait]
impl EventLog for EmbeddedLog {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn health(&self) -> super::LogHealth {
        self.current.health.lock().clone()
    }

    async fn append(&self, commit: Commit) -> Result<Appended> {
        commit.validate()?;
        let encoded = commit
            .events
            .iter()
            .map(serde_json::to_vec)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| StoreError::InvalidCommit(format!("event cannot be serialized: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Append(commit, encoded, tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    async fn read(&self, aggregate: &AggregateRef, after: Version) -> Result<Vec<Event>> {
        let aggregate = aggregate.clone();
        self.blocking(move |s| s.read_events(&aggregate, after.0, u64::MAX))
            .await
    }

    async fn version(&self, aggregate: &AggregateRef) -> Result<Version> {
        let akey = aggregate_key(aggregate);
        self.blocking(move |s| s.head(&akey).map(Version)).await
    }

    async fn find_command(
        &self,
        tenant: &TenantId,
        command_id: &CommandId,
    ) -> Result<Option<Appended>> {
        let ckey = command_key(tenant, command_id);
        self.blocking(move |s| s.find_command(&ckey)).await
    }

    async fn list_aggregates(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(AggregateType, AggregateId)>> {
        let prefix = tenant_prefix(tenant);
        self.blocking(move |s| {
            let mut out = Vec::new();
            for guard in s.heads.prefix(&prefix) {
                let key = guard.key().map_err(fjall_err)?;
                let r = decode_aggregate_key(&key)?;
                out.push((r.aggregate_type, r.aggregate_id));
            }
            Ok(out)
        })
        .await
    }

    async fn subscribe(&self, filter: FeedFilter, after: Option<u64>) -> Result<Feed> {
        // Subscribe before reading the log: a commit persisted after the read is then in `rx`,
        // one persisted before it is in the read (it becomes visible before it is published).
        let rx = self.published.subscribe();
        let last = match after {
            Some(p) => p,
            None => self.current.position.load(Ordering::Acquire),
        };
        let state = FeedState {
            rx,
            current: self.current.clone(),
            filter,
            last,
            catching_up: after.is_some(),
            backlog: std::collections::VecDeque::new(),
        };
        Ok(futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            match state.next().await {
                Some(Ok(item)) => Some((Ok(item), Some(state))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        })
        .boxed())
    }

    async fn position(&self) -> Result<u64> {
        Ok(self.current.position.load(Ordering::Acquire))
    }

    async fn flush(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Flush(tx)).is_err() {
            return Ok(()); // already flushed and closed
        }
        rx.await.unwrap_or(Ok(()))
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::DeleteTenant(tenant.clone(), tx))
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}
