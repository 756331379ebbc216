//! The state index: every aggregate's current state, kept per host in a local fjall database and
//! read by filtered queries (`GET /aggregates/{type}?filter=`).
//!
//! # How it is kept current
//!
//! The index is a **checkpointed follower of the event log**: one task reads the feed of every
//! tenant ([`FeedFilter::all`]) from the index's checkpoint, folds each commit's events into the
//! aggregate's indexed state with the component active now, and writes the new entries together
//! with the new checkpoint in one fjall batch. After a crash or restart it continues from the
//! checkpoint, so the index never misses a commit and never applies one twice (an entry whose
//! version is already at or past a commit's events is left alone). In cluster mode every host
//! follows the whole JetStream stream, so every host has every tenant's states — a query is
//! answered the same whichever host receives it, also right after a tenant moved.
//!
//! Commands this host runs hand their new state over ([`StateIndex::handover`]): when the follower
//! reaches such a commit it writes that state instead of folding the events again, so on one host
//! the index costs a point read and a write per command, not a second guest call.
//!
//! # Layout
//!
//! | keyspace  | key                                    | value                                    |
//! | --------- | -------------------------------------- | ---------------------------------------- |
//! | `states`  | `tenant 0 type 0 id(16)` (as the log)  | [`Entry`] as JSON                        |
//! | `meta`    | `checkpoint`                           | the last log position applied (BE8)      |
//! | `meta`    | `built_by/<type>`                      | the component that built the type's states |
//!
//! # Consistency a reader gets
//!
//! A query first waits until the index has applied the log position it must reflect: the
//! `min_position` it names (a command's answer carries its `position`), and by default the log's
//! position when the query arrived — so a query sees every command acknowledged before it was
//! sent, on any host (read-your-writes and monotonic reads). It waits at most `query_wait_ms`.
//!
//! # Rebuilds
//!
//! When the component of a type changes and its snapshot policy is `rebuild` (the new component
//! does not read the old states), the type's entries are rebuilt in the background: each
//! aggregate's events are folded from `init` with the new component. Progress is in
//! [`StateIndex::status`] (`GET /admin/index`); queries keep answering meanwhile, from states that
//! may still be the old component's until their aggregate is reached.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::filter::{Filter, FilterError, FilterErrorKind, Row};
use crate::registry::SnapshotPolicy;
use crate::service::{CommandService, ServiceError};
use crate::store::keys::{aggregate_key, decode_aggregate_key, type_prefix};
use crate::store::{FeedFilter, FeedItem, StoreError};
use crate::types::{
    AggregateId, AggregateRef, AggregateType, ComponentHash, Event, Json, TenantId, Version,
};

const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const BUILT_BY_PREFIX: &str = "built_by/";
/// Most states handed over by commands and not yet reached by the follower; beyond it the map is
/// cleared (the follower then folds those commits itself).
const MAX_HANDOVER: usize = 65_536;
/// Most commits applied in one batch (one fjall write).
const MAX_BATCH: usize = 1024;
/// How long the follower waits, after a commit arrives, for more before it writes them together.
/// Queries wait that much longer for a command just answered.
const GATHER: Duration = Duration::from_millis(2);
/// How often the follower checks the registry for component changes (rebuilds).
const REGISTRY_CHECK: Duration = Duration::from_secs(1);

/// Errors of the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// fjall failed, or a stored entry could not be decoded.
    #[error("state index: {0}")]
    Storage(String),
    /// The index did not reach the position a query must reflect in time.
    #[error("the state index is at log position {applied}, the query needs {wanted}; it did not catch up within {waited_ms} ms")]
    Behind {
        /// Applied so far.
        applied: u64,
        /// Needed.
        wanted: u64,
        /// How long the query waited.
        waited_ms: u64,
    },
    /// The filter is unusable or failed on a row in a way that concerns every row.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// The page token is not one this query produced.
    #[error("page_token: {0}")]
    BadPageToken(String),
}

fn storage(e: impl std::fmt::Display) -> IndexError {
    IndexError::Storage(e.to_string())
}

/// One aggregate's indexed state (the `states` value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The aggregate's version (its number of events).
    pub version: Version,
    /// When its last event was recorded.
    pub last_event_at: DateTime<Utc>,
    /// The component that built the state.
    pub component: ComponentHash,
    /// The state.
    pub state: Json,
}

/// A background rebuild of one type's entries, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildStatus {
    /// The component the entries are rebuilt with.
    pub component: ComponentHash,
    /// Entries of the type when the rebuild started.
    pub total: u64,
    /// Entries rebuilt so far.
    pub done: u64,
    /// Entries that could not be rebuilt (the component failed on their events; logged).
    pub failed: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished (absent while running).
    pub finished_at: Option<DateTime<Utc>>,
    /// How long it took, in milliseconds (absent while running).
    pub elapsed_ms: Option<u64>,
}

/// What [`StateIndex::status`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStatus {
    /// The last log position applied.
    pub position: u64,
    /// Rebuilds per aggregate type (running and finished since the host started).
    pub rebuilds: BTreeMap<String, RebuildStatus>,
}

/// One aggregate a query matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Match {
    /// The aggregate id.
    pub aggregate_id: AggregateId,
    /// Its version.
    pub version: Version,
    /// Its state.
    pub state: Json,
    /// When its last event was recorded.
    pub last_event_at: DateTime<Utc>,
}

/// One page of a query's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// The matching aggregates, in aggregate id order.
    pub items: Vec<Match>,
    /// Pass as `page_token` for the next page; absent on the last page.
    pub next_page_token: Option<String>,
    /// Entries examined for this page.
    pub scanned: u64,
    /// Entries on which the filter failed (counted as not matching), and the first such error.
    pub errors: u64,
    /// The first evaluation error, when any.
    pub first_error: Option<String>,
    /// The log position the answer reflects (at least).
    pub position: u64,
}

/// A query of one tenant's aggregates of one type.
#[derive(Debug, Clone)]
pub struct Query {
    /// The tenant.
    pub tenant: TenantId,
    /// The aggregate type.
    pub aggregate_type: AggregateType,
    /// The filter (`None`: every aggregate).
    pub filter: Option<Filter>,
    /// Most items per page.
    pub limit: usize,
    /// Where the previous page stopped.
    pub page_token: Option<String>,
    /// Stop scanning (and return a page with a token) after this long.
    pub budget: Duration,
}

/// The state index. See the module docs.
pub struct StateIndex {
    db: Database,
    states: Keyspace,
    meta: Keyspace,
    applied: tokio::sync::watch::Sender<u64>,
    handover: Mutex<HashMap<AggregateRef, (Version, Json, ComponentHash)>>,
    rebuilds: Mutex<BTreeMap<String, RebuildStatus>>,
    /// Serialises writes of the follower and of rebuilds.
    writes: tokio::sync::Mutex<()>,
    /// Aggregate types whose `built_by/<type>` is known to be recorded.
    built_by_recorded: Mutex<std::collections::HashSet<AggregateType>>,
}

impl std::fmt::Debug for StateIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateIndex")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

fn decode_u64(raw: &[u8]) -> Result<u64, IndexError> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| storage(format!("expected 8 bytes, found {}", raw.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

impl StateIndex {
    /// Open (or create) the index in directory `path`. Blocking.
    ///
    /// # Errors
    ///
    /// [`IndexError::Storage`] when fjall cannot open it.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let db = Database::builder(path).open().map_err(storage)?;
        let states = db
            .keyspace("states", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(storage)?;
        let checkpoint = match meta.get(CHECKPOINT_KEY).map_err(storage)? {
            Some(raw) => decode_u64(&raw)?,
            None => 0,
        };
        Ok(Self {
            db,
            states,
            meta,
            applied: tokio::sync::watch::channel(checkpoint).0,
            handover: Mutex::new(HashMap::new()),
            rebuilds: Mutex::new(BTreeMap::new()),
            writes: tokio::sync::Mutex::new(()),
            built_by_recorded: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The last log position applied.
    pub fn position(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Progress and rebuilds.
    pub fn status(&self) -> IndexStatus {
        IndexStatus {
            position: self.position(),
            rebuilds: self.rebuilds.lock().clone(),
        }
    }

    /// A command of this host left `aggregate` at `version` with `state`: the follower writes it
    /// when it reaches that commit instead of folding the events again.
    pub fn handover(
        &self,
        aggregate: &AggregateRef,
        version: Version,
        state: &Json,
        component: ComponentHash,
    ) {
        let mut map = self.handover.lock();
        if map.len() >= MAX_HANDOVER {
            map.clear();
        }
        map.insert(aggregate.clone(), (version, state.clone(), component));
    }

    /// Wait until the index has applied `position` (at most `timeout`).
    ///
    /// # Errors
    ///
    /// [`IndexError::Behind`] when it did not in time.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), IndexError> {
        let started = Instant::now();
        let mut rx = self.applied.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(IndexError::Behind {
                applied: self.position(),
                wanted: position,
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    fn get(&self, aggregate: &AggregateRef) -> Result<Option<Entry>, IndexError> {
        match self.states.get(aggregate_key(aggregate)).map_err(storage)? {
            Some(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| storage(format!("entry of {aggregate}: {e}"))),
            None => Ok(None),
        }
    }

    /// Remove every entry of `tenant` (its data was deleted from the log); returns how many.
    /// Waits for the follower's write in progress.
    ///
    /// # Errors
    ///
    /// [`IndexError::Storage`].
    pub async fn delete_tenant(&self, tenant: &crate::types::TenantId) -> Result<u64, IndexError> {
        let _writes = self.writes.lock().await;
        self.handover.lock().retain(|a, _| a.tenant != *tenant);
        let prefix = crate::store::keys::tenant_prefix(tenant);
        let mut wb = self.db.batch().durability(Some(PersistMode::SyncAll));
        let mut n = 0u64;
        for guard in self.states.prefix(&prefix) {
            wb.remove(&self.states, guard.key().map_err(storage)?);
            n += 1;
        }
        wb.commit().map_err(storage)?;
        Ok(n)
    }

    /// The indexed entry of one aggregate (tests and diagnostics).
    ///
    /// # Errors
    ///
    /// [`IndexError::Storage`].
    pub fn entry(&self, aggregate: &AggregateRef) -> Result<Option<Entry>, IndexError> {
        self.get(aggregate)
    }

    /// Follow the log until `shutdown` resolves: apply commits from the checkpoint on, and
    /// rebuild a type's entries when its component changes under snapshot policy `rebuild`.
    pub async fn run(
        self: Arc<Self>,
        service: Arc<CommandService>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Duration::from_millis(50);
        let mut next_check = Instant::now();
        loop {
            let after = self.position();
            let feed = service
                .log()
                .subscribe(FeedFilter::all(), Some(after))
                .await;
            let mut feed = match feed {
                Ok(f) => f.ready_chunks(MAX_BATCH),
                Err(e) => {
                    tracing::warn!(error = %e, "state index: cannot follow the event log; retrying");
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                if Instant::now() >= next_check {
                    next_check = Instant::now() + REGISTRY_CHECK;
                    self.check_components(&service);
                }
                let batch = tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(REGISTRY_CHECK) => continue,
                    batch = feed.next() => batch,
                };
                let Some(mut batch) = batch else { break };
                if batch.len() < MAX_BATCH {
                    // Let a few more commits arrive: one write and one wake-up for many commits
                    // instead of one per commit (what the index costs the command path).
                    tokio::time::sleep(GATHER).await;
                    while batch.len() < MAX_BATCH {
                        match futures::FutureExt::now_or_never(feed.next()) {
                            Some(Some(more)) => batch.extend(more),
                            _ => break,
                        }
                    }
                }
                let mut items = Vec::with_capacity(batch.len());
                let mut failed = None;
                for item in batch {
                    match item {
                        Ok(i) => items.push(i),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Err(e) = self.apply(&service, items).await {
                    tracing::warn!(error = %e, "state index: applying commits failed; retrying");
                    failed.get_or_insert(StoreError::Unavailable(e.to_string()));
                }
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "state index: the feed failed; following again from the checkpoint");
                    break;
                }
                backoff = Duration::from_millis(50);
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Apply commits (in position order) and move the checkpoint past the last one.
    async fn apply(
        &self,
        service: &CommandService,
        items: Vec<FeedItem>,
    ) -> Result<(), IndexError> {
        let Some(last_position) = items.last().map(|i| i.position) else {
            return Ok(());
        };
        let _writes = self.writes.lock().await;
        // Only an aggregate's last commit in the batch needs a state (the batch is written
        // atomically with the checkpoint): group the commits per aggregate, in order. A follower
        // that fell behind then folds nothing for the commits the command path handed over, not
        // once per commit.
        let mut order: Vec<(AggregateRef, Vec<Arc<[Event]>>)> = Vec::new();
        let mut slot: HashMap<AggregateRef, usize> = HashMap::new();
        for item in items {
            if item.events.is_empty() {
                continue;
            }
            let n = *slot.entry(item.aggregate.clone()).or_insert_with(|| {
                order.push((item.aggregate.clone(), Vec::new()));
                order.len() - 1
            });
            order[n].1.push(item.events);
        }
        let mut pending: HashMap<AggregateRef, Entry> = HashMap::new();
        for (aggregate, commits) in order {
            let aggregate = &aggregate;
            let last = commits
                .last()
                .and_then(|c| c.last())
                .expect("commits with events")
                .clone();
            let handed = {
                let mut map = self.handover.lock();
                match map.get(aggregate) {
                    Some((v, _, _)) if *v <= last.version => map.remove(aggregate),
                    _ => None,
                }
            };
            // The command path handed over this very state: write it without reading the entry,
            // unless a rebuild of the type runs (it may have written a later version).
            let rebuilding = || {
                self.rebuilds
                    .lock()
                    .get(aggregate.aggregate_type.as_str())
                    .is_some_and(|r| r.finished_at.is_none())
            };
            let handed = match handed {
                Some((v, state, component)) if v == last.version && !rebuilding() => {
                    let entry = Entry {
                        version: v,
                        last_event_at: last.recorded_at,
                        component,
                        state,
                    };
                    pending.insert(aggregate.clone(), entry);
                    continue;
                }
                other => other,
            };
            let base = self.get(aggregate)?;
            let base_version = base.as_ref().map_or(Version::INITIAL, |e| e.version);
            if base_version >= last.version {
                continue; // already applied (a rebuild got there first)
            }
            // During a rebuild, a state handed over by a command that ran the previous component
            // is folded again instead (the rebuild may have passed this aggregate already).
            let current = |c: &ComponentHash| {
                service
                    .registry()
                    .resolve(&aggregate.aggregate_type)
                    .is_ok_and(|a| a.component == *c)
            };
            let entry = match handed {
                Some((v, state, component)) if v == last.version && current(&component) => Entry {
                    version: v,
                    last_event_at: last.recorded_at,
                    component,
                    state,
                },
                _ => {
                    // Fold the events after the base; read them from the log when the batch's
                    // do not start right after it (the index missed some, e.g. a skipped failure).
                    let mut events: Vec<Event> = commits
                        .iter()
                        .flat_map(|c| c.iter())
                        .filter(|e| e.version > base_version)
                        .cloned()
                        .collect();
                    if events.first().map(|e| e.version) != Some(base_version.advance(1)) {
                        events = service
                            .log()
                            .read(aggregate, base_version)
                            .await
                            .map_err(storage)?;
                        events.retain(|e| e.version <= last.version);
                    }
                    let had_base = base.is_some();
                    let mut folded = service
                        .fold_events(aggregate, base.map(|b| b.state), events)
                        .await;
                    if had_base && folded.is_err() {
                        // The indexed state may be one the active component cannot read (a new
                        // component under `trust`): fold every event from `init`, as the
                        // command path does.
                        let mut all = service
                            .log()
                            .read(aggregate, Version::INITIAL)
                            .await
                            .map_err(storage)?;
                        all.retain(|e| e.version <= last.version);
                        folded = service.fold_events(aggregate, None, all).await;
                    }
                    match folded {
                        Ok((state, component)) => Entry {
                            version: last.version,
                            last_event_at: last.recorded_at,
                            component,
                            state,
                        },
                        Err(e) => {
                            tracing::warn!(aggregate = %aggregate, version = %last.version, error = %e, "state index: cannot fold the aggregate's events; its entry stays at its last good version");
                            continue;
                        }
                    }
                }
            };
            pending.insert(aggregate.clone(), entry);
        }
        let mut wb = self.db.batch().durability(Some(PersistMode::Buffer));
        let mut recorded = Vec::new();
        for (aggregate, entry) in &pending {
            let value = serde_json::to_vec(entry).map_err(storage)?;
            wb.insert(&self.states, aggregate_key(aggregate), value);
            // The first entry of a type records the component that built it, in the same
            // batch: a later deploy with policy `rebuild` is compared with it.
            let ty = &aggregate.aggregate_type;
            if !recorded.contains(ty) && !self.built_by_recorded.lock().contains(ty) {
                let key = format!("{BUILT_BY_PREFIX}{}", ty.as_str());
                if self.meta.get(&key).map_err(storage)?.is_none() {
                    wb.insert(&self.meta, key, entry.component.to_hex());
                }
                recorded.push(ty.clone());
            }
        }
        wb.insert(&self.meta, CHECKPOINT_KEY, last_position.to_be_bytes());
        wb.commit().map_err(storage)?;
        self.built_by_recorded.lock().extend(recorded);
        self.applied.send_replace(last_position);
        Ok(())
    }

    /// Start a rebuild for every type whose active component differs from the one that built
    /// its entries and whose snapshot policy is `rebuild`; record the builder otherwise.
    fn check_components(self: &Arc<Self>, service: &Arc<CommandService>) {
        let manifest = service.registry().manifest();
        for ty in manifest.aggregates.keys() {
            let Ok(active) = service.registry().resolve(ty) else {
                continue;
            };
            let key = format!("{BUILT_BY_PREFIX}{}", ty.as_str());
            let built_by = self
                .meta
                .get(&key)
                .ok()
                .flatten()
                .map(|raw| String::from_utf8_lossy(&raw).into_owned());
            if built_by.as_deref() == Some(active.component.to_hex().as_str()) {
                continue;
            }
            let running = self
                .rebuilds
                .lock()
                .get(ty.as_str())
                .is_some_and(|r| r.finished_at.is_none());
            if running {
                continue;
            }
            if built_by.is_none() {
                // No entry of the type yet (its first one records its builder).
                continue;
            }
            if active.snapshot_policy != SnapshotPolicy::Rebuild {
                // The new component reads the old states.
                let _ = self.meta.insert(&key, active.component.to_hex());
                continue;
            }
            // Mark it running now: the scan of the type's keys may outlast the next check.
            self.rebuilds.lock().insert(
                ty.as_str().to_string(),
                RebuildStatus {
                    component: active.component,
                    total: 0,
                    done: 0,
                    failed: 0,
                    started_at: Utc::now(),
                    finished_at: None,
                    elapsed_ms: None,
                },
            );
            let (index, service, ty) = (self.clone(), service.clone(), ty.clone());
            tokio::spawn(async move {
                index.rebuild(&service, &ty, active.component).await;
            });
        }
    }

    /// Rebuild every entry of `ty` with `component` (the active one), then record it as the
    /// type's builder.
    async fn rebuild(
        &self,
        service: &CommandService,
        ty: &AggregateType,
        component: ComponentHash,
    ) {
        let started = Instant::now();
        let keys: Vec<AggregateRef> = {
            let mut out = Vec::new();
            for guard in self.states.iter() {
                let Ok(key) = guard.key() else { continue };
                if let Ok(a) = decode_aggregate_key(&key) {
                    if a.aggregate_type == *ty {
                        out.push(a);
                    }
                }
            }
            out
        };
        let total = keys.len() as u64;
        tracing::info!(aggregate_type = %ty, component = %component, total, "state index: rebuilding the type's states with its new component");
        self.rebuilds.lock().insert(
            ty.as_str().to_string(),
            RebuildStatus {
                component,
                total,
                done: 0,
                failed: 0,
                started_at: Utc::now(),
                finished_at: None,
                elapsed_ms: None,
            },
        );
        let mut last_log = Instant::now();
        for (n, aggregate) in keys.iter().enumerate() {
            let ok = self.rebuild_one(service, aggregate).await;
            {
                let mut r = self.rebuilds.lock();
                if let Some(r) = r.get_mut(ty.as_str()) {
                    r.done += 1;
                    r.failed += u64::from(!ok);
                }
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(aggregate_type = %ty, done = n + 1, total, "state index: rebuild progress");
            }
        }
        let key = format!("{BUILT_BY_PREFIX}{}", ty.as_str());
        let _ = self.meta.insert(&key, component.to_hex());
        let elapsed = started.elapsed();
        if let Some(r) = self.rebuilds.lock().get_mut(ty.as_str()) {
            r.finished_at = Some(Utc::now());
            r.elapsed_ms = Some(elapsed.as_millis() as u64);
        }
        tracing::info!(aggregate_type = %ty, total, elapsed_ms = elapsed.as_millis() as u64, "state index: rebuild finished");
    }

    /// Fold one aggregate from `init` with the active component; write it unless the follower
    /// moved it on meanwhile (then fold again, a few times).
    async fn rebuild_one(&self, service: &CommandService, aggregate: &AggregateRef) -> bool {
        for _ in 0..3 {
            let Ok(events) = service.log().read(aggregate, Version::INITIAL).await else {
                return false;
            };
            let Some(last) = events.last() else {
                return true;
            };
            let (version, at) = (last.version, last.recorded_at);
            let folded = match service.fold_events(aggregate, None, events).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(aggregate = %aggregate, error = %e, "state index: rebuild of an aggregate failed");
                    return false;
                }
            };
            let _writes = self.writes.lock().await;
            let current = self.get(aggregate).ok().flatten();
            if current.as_ref().is_some_and(|c| c.version > version) {
                continue; // moved on while folding: fold again
            }
            let entry = Entry {
                version,
                last_event_at: at,
                component: folded.1,
                state: folded.0,
            };
            let Ok(value) = serde_json::to_vec(&entry) else {
                return false;
            };
            return self.states.insert(aggregate_key(aggregate), value).is_ok();
        }
        false
    }

    /// Run one page of `query` (blocking: call it on a filter thread).
    ///
    /// # Errors
    ///
    /// [`IndexError::BadPageToken`]; [`IndexError::Filter`] when the filter returns a non-bool
    /// on a row; [`IndexError::Storage`].
    pub fn query_page(&self, query: &Query) -> Result<Page, IndexError> {
        let started = Instant::now();
        let position = self.position();
        let prefix = type_prefix(&query.tenant, &query.aggregate_type);
        let fingerprint = fingerprint(query);
        let start = match &query.page_token {
            Some(token) => {
                let id = decode_token(token, &fingerprint)?;
                let mut k = prefix.clone();
                k.extend_from_slice(id.as_uuid().as_bytes());
                k.push(0); // just after that id
                k
            }
            None => prefix.clone(),
        };
        let mut end = prefix.clone();
        end.extend_from_slice(&[0xff; 17]);
        let mut page = Page {
            items: Vec::new(),
            next_page_token: None,
            scanned: 0,
            errors: 0,
            first_error: None,
            position,
        };
        let mut last_id = None;
        for guard in self.states.range(start..end) {
            // The budget ends a page only after one entry was scanned, so that every page moves on.
            if page.items.len() >= query.limit
                || (last_id.is_some() && started.elapsed() >= query.budget)
            {
                page.next_page_token = last_id.map(|id| encode_token(id, &fingerprint));
                return Ok(page);
            }
            let (key, raw) = guard.into_inner().map_err(storage)?;
            let aggregate = decode_aggregate_key(&key).map_err(storage)?;
            last_id = Some(aggregate.aggregate_id);
            page.scanned += 1;
            let entry: Entry = serde_json::from_slice(&raw)
                .map_err(|e| storage(format!("entry of {aggregate}: {e}")))?;
            let matched = match &query.filter {
                None => true,
                Some(filter) => {
                    let state = entry.state.to_value();
                    let id = aggregate.aggregate_id.to_string();
                    let row = Row {
                        id: &id,
                        version: entry.version.0,
                        state: &state,
                        last_event_at: entry.last_event_at,
                    };
                    match filter.matches(&row) {
                        Ok(m) => m,
                        Err(e) if e.kind == FilterErrorKind::NotBoolean => return Err(e.into()),
                        Err(e) => {
                            page.errors += 1;
                            page.first_error.get_or_insert_with(|| {
                                format!("aggregate {}: {e}", aggregate.aggregate_id)
                            });
                            false
                        }
                    }
                }
            };
            if matched {
                page.items.push(Match {
                    aggregate_id: aggregate.aggregate_id,
                    version: entry.version,
                    state: entry.state,
                    last_event_at: entry.last_event_at,
                });
            }
        }
        Ok(page)
    }
}

/// What a page token is bound to: the tenant, type and filter of the query (a token of another
/// query is refused, not misread).
fn fingerprint(query: &Query) -> [u8; 8] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(query.tenant.as_str());
    h.update([0]);
    h.update(query.aggregate_type.as_str());
    h.update([0]);
    h.update(query.filter.as_ref().map_or("", |f| f.source()));
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn encode_token(id: AggregateId, fingerprint: &[u8; 8]) -> String {
    let mut raw = Vec::with_capacity(24);
    raw.extend_from_slice(id.as_uuid().as_bytes());
    raw.extend_from_slice(fingerprint);
    hex::encode(raw)
}

fn decode_token(token: &str, fingerprint: &[u8; 8]) -> Result<AggregateId, IndexError> {
    let raw = hex::decode(token.trim())
        .ok()
        .filter(|r| r.len() == 24)
        .ok_or_else(|| IndexError::BadPageToken("not a token this host produced".into()))?;
    if raw[16..] != fingerprint[..] {
        return Err(IndexError::BadPageToken(
            "the token belongs to another query (tenant, type or filter differ)".into(),
        ));
    }
    let uuid = uuid::Uuid::from_slice(&raw[..16])
        .map_err(|_| IndexError::BadPageToken("malformed".into()))?;
    AggregateId::from_uuid(uuid).map_err(|e| IndexError::BadPageToken(e.to_string()))
}

impl From<IndexError> for ServiceError {
    fn from(e: IndexError) -> Self {
        ServiceError::Internal(e.to_string())
    }
}
