//! The command lifecycle: validate tenant → load snapshot → read later events → rehydrate with one
//! `apply` → `decide` → append with the expected version → `apply` the new events → maybe snapshot.
//!
//! Commands for one aggregate are serialised inside the process (a striped lock), so conflicts
//! come only from other hosts or stale caches; those are retried a bounded number of times, with
//! backoff, after reloading.

mod cache;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use self::cache::{Cached, HotCache};
use crate::registry::{ActiveComponent, Registry, RegistryError, SnapshotPolicy};
use crate::runtime::{Decision, InstanceKey, Runtime, RuntimeError};
use crate::store::{snapshots::SnapshotStore, Commit, EventLog, StoreError};
use crate::types::{
    AggregateRef, Command, CommandId, CommandMetadata, ComponentHash, Event, InvalidValue, Json,
    Snapshot, TenantId, Version,
};

/// A check made right before each append (see [`CommandService::set_fence`]).
pub type Fence = Arc<dyn Fn(&TenantId) -> Result<(), String> + Send + Sync>;

/// Told of every command this host committed with events, with the state it left: the
/// aggregate, its new version, the state and the component that built it (see
/// [`CommandService::set_commit_listener`]). Called on the command's path: keep it cheap.
pub type CommitListener = Arc<dyn Fn(&AggregateRef, Version, &Json, ComponentHash) + Send + Sync>;

/// Errors of the command service. Each documents the HTTP status the API maps it to.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A malformed id, tenant or payload (400).
    #[error(transparent)]
    InvalidInput(#[from] InvalidValue),
    /// The command's envelope names another tenant than the caller's (403).
    #[error("tenant `{caller}` may not act on aggregates of tenant `{target}`")]
    TenantAccessDenied {
        /// The tenant of the request.
        caller: TenantId,
        /// The tenant in the command's envelope.
        target: TenantId,
    },
    /// No component is deployed for the aggregate type (404).
    #[error("aggregate type `{0}` is not deployed")]
    UnknownAggregateType(crate::types::AggregateType),
    /// The aggregate has no events (404, for reads).
    #[error("aggregate {0} does not exist")]
    UnknownAggregate(AggregateRef),
    /// A read of a past state named a version the aggregate never had, or a time before its
    /// first event (404).
    #[error("{0}")]
    UnknownVersion(String),
    /// A business rule refused the command (422).
    #[error("command rejected: {0}")]
    Rejected(String),
    /// The guest found the command malformed (400).
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    /// The caller expected the aggregate at another version (409).
    #[error("version conflict on {aggregate}: expected version {expected}, the aggregate is at {actual}")]
    VersionMismatch {
        /// The aggregate.
        aggregate: AggregateRef,
        /// The version the caller expected.
        expected: Version,
        /// The aggregate's version.
        actual: Version,
    },
    /// The command id was already used for a command on another aggregate (409). The same id on
    /// the same aggregate returns the original result instead.
    #[error("command id {command_id} was already used on aggregate {first}, not {requested}")]
    CommandIdReused {
        /// The command id.
        command_id: CommandId,
        /// The aggregate the id was first used on (boxed: keeps the error small).
        first: Box<AggregateRef>,
        /// The aggregate this request named.
        requested: Box<AggregateRef>,
    },
    /// Every retry met a newer version (409).
    #[error("version conflict on {aggregate}: gave up after {attempts} attempts")]
    Conflict {
        /// The aggregate.
        aggregate: AggregateRef,
        /// How many times it was tried.
        attempts: u32,
    },
    /// The guest breached a limit, trapped or broke the contract (422 for limit breaches, 500
    /// otherwise).
    #[error(transparent)]
    Guest(#[from] RuntimeError),
    /// Storage failed (503).
    #[error(transparent)]
    Store(StoreError),
    /// Cluster mode: this host may not write for the tenant now (another host owns it, or
    /// this host's membership lease ran out); nothing was appended, so the command may be sent
    /// again — to the owner (503).
    #[error("not written here: {0}")]
    NotOwner(String),
    /// The registry failed (500).
    #[error(transparent)]
    Registry(RegistryError),
    /// A worker thread failed (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Store(e)
    }
}

impl From<RegistryError> for ServiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownType(t) => ServiceError::UnknownAggregateType(t),
            other => ServiceError::Registry(other),
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Tuning of the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Attempts for a command that meets version conflicts (at least 1).
    pub max_attempts: u32,
    /// First backoff after a conflict; doubles each retry.
    pub retry_backoff: Duration,
    /// Aggregates whose state is kept in memory.
    pub hot_cache_capacity: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            retry_backoff: Duration::from_millis(2),
            hot_cache_capacity: 10_000,
        }
    }
}

/// A command as the gateway hands it over.
#[derive(Debug, Clone)]
pub struct Submit {
    /// Idempotency key; a new one is generated when absent.
    pub command_id: Option<CommandId>,
    /// The aggregate.
    pub target: AggregateRef,
    /// The command's name.
    pub command_type: String,
    /// The command's body.
    pub payload: Json,
    /// Correlation id and trace parent.
    pub metadata: CommandMetadata,
}

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// The command.
    pub command_id: CommandId,
    /// The aggregate.
    pub aggregate: AggregateRef,
    /// The aggregate's version after the command.
    pub version: Version,
    /// The events it produced (possibly none).
    pub events: Vec<Event>,
    /// The component that decided it (absent for a duplicate of a command with no events).
    pub component: Option<ComponentHash>,
    /// True when the command id was seen before and this is the original result.
    pub duplicate: bool,
    /// How many times `decide` ran (1 unless conflicts forced retries; 0 for a duplicate).
    pub attempts: u32,
    /// The log position of the command's commit: a state query with `min_position` at least
    /// this reflects the command.
    pub position: u64,
}

/// An aggregate's current state.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateState {
    /// Its version.
    pub version: Version,
    /// Its state.
    pub state: Json,
    /// The component that built the state: the active one when it folded any event into it,
    /// else the one that built the snapshot or cached state it came from (snapshot policy
    /// `trust` across a deploy).
    pub component: ComponentHash,
}

/// A point in an aggregate's past (see [`CommandService::state_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastPoint {
    /// Right after the event with this version.
    Version(Version),
    /// As it was at this time: after the last event recorded at or before it.
    At(chrono::DateTime<chrono::Utc>),
}

/// An aggregate's state at a past point.
#[derive(Debug, Clone, PartialEq)]
pub struct PastState {
    /// The version the state is at.
    pub version: Version,
    /// The state, folded from `init` and the events up to `version`.
    pub state: Json,
    /// The component that folded it: the one active now (not necessarily the one that was
    /// active then).
    pub component: ComponentHash,
    /// When the last folded event was recorded.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    /// The aggregate's current version.
    pub current_version: Version,
}

/// What the service reports as it works, for metrics. Every method has an empty default; the
/// telemetry module implements it. Calls happen on the command's path, so keep them cheap.
pub trait ServiceObserver: Send + Sync + 'static {
    /// `decide` ran for `aggregate` and burned `fuel`.
    fn decided(&self, aggregate: &AggregateRef, fuel: u64) {
        let _ = (aggregate, fuel);
    }
    /// The hot cache was asked for `aggregate`.
    fn hot_cache(&self, aggregate: &AggregateRef, hit: bool) {
        let _ = (aggregate, hit);
    }
    /// `aggregate` was rebuilt from a snapshot and/or events, folding `events` events.
    fn rehydrated(&self, aggregate: &AggregateRef, elapsed: Duration, events: usize) {
        let _ = (aggregate, elapsed, events);
    }
    /// An append of `aggregate` met a newer version (one per attempt).
    fn conflict(&self, aggregate: &AggregateRef) {
        let _ = aggregate;
    }
    /// A state of `aggregate` built by another component (a snapshot or the hot cache) made the
    /// active component fail, and the state was rebuilt from the events instead.
    fn foreign_state_rebuilt(&self, aggregate: &AggregateRef) {
        let _ = aggregate;
    }
}

/// A loaded state, and whether its base came from another component than the active one.
struct Loaded {
    state: AggregateState,
    /// The base (a snapshot or the hot cache) was built by another component: if the active
    /// component fails on it, rebuild from the events.
    foreign: bool,
}

const LOCK_STRIPES: usize = 1024;

/// How current a loaded state must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    /// The hot cache may be used as it is.
    Cached,
    /// Check the log's version first.
    Latest,
}

/// The command service. Cheap to share (`Arc`).
pub struct CommandService {
    registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    log: Arc<dyn EventLog>,
    snapshots: SnapshotStore,
    cache: HotCache,
    locks: Vec<tokio::sync::Mutex<()>>,
    config: ServiceConfig,
    observer: std::sync::OnceLock<Arc<dyn ServiceObserver>>,
    fence: std::sync::OnceLock<Fence>,
    commit_listener: std::sync::OnceLock<CommitListener>,
}

impl CommandService {
    /// Wire the service.
    pub fn new(
        registry: Arc<Registry>,
        runtime: Arc<Runtime>,
        log: Arc<dyn EventLog>,
        snapshots: SnapshotStore,
        config: ServiceConfig,
    ) -> Self {
        Self {
            registry,
            runtime,
            log,
            snapshots,
            cache: HotCache::new(config.hot_cache_capacity),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            config: ServiceConfig {
                max_attempts: config.max_attempts.max(1),
                ..config
            },
            observer: std::sync::OnceLock::new(),
            fence: std::sync::OnceLock::new(),
            commit_listener: std::sync::OnceLock::new(),
        }
    }

    /// Check `fence` (given the command's tenant) right before every append: an append it
    /// refuses fails with [`ServiceError::NotOwner`] naming the reason (cluster mode: this host
    /// does not own the tenant, or its membership lease ran out). Only the first call has an
    /// effect.
    pub fn set_fence(&self, fence: Fence) {
        let _ = self.fence.set(fence);
    }

    /// Tell `listener` of every command committed with events from now on (the state index
    /// takes the new state from here instead of folding the events again). Only the first call
    /// has an effect.
    pub fn set_commit_listener(&self, listener: CommitListener) {
        let _ = self.commit_listener.set(listener);
    }

    /// Fold `events` (in version order, all of `aggregate`) into `base`, or into `init` when
    /// `base` is `None`, with the component active now for the aggregate's type. Nothing is
    /// cached. Returns the state and the component that folded it.
    ///
    /// # Errors
    ///
    /// [`ServiceError::UnknownAggregateType`] when the type is not deployed; guest errors.
    pub async fn fold_events(
        &self,
        aggregate: &AggregateRef,
        base: Option<Json>,
        events: Vec<Event>,
    ) -> Result<(Json, ComponentHash)> {
        let active = self.registry.resolve(&aggregate.aggregate_type)?;
        let runtime = self.runtime.clone();
        let instance = self.instance_key(aggregate, &active);
        let limits = active.limits.clone();
        let isolation = active.isolation;
        let state = tokio::task::spawn_blocking(move || {
            runtime.with_instance(&instance, &limits, isolation, |g| {
                let base = match base {
                    Some(b) => b,
                    None => g.init()?,
                };
                if events.is_empty() {
                    Ok(base)
                } else {
                    g.apply(&base, events.iter().map(Event::data))
                }
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("fold task: {e}")))??;
        Ok((state, active.component))
    }

    /// Report to `observer` from now on (metrics). Only the first call has an effect.
    pub fn set_observer(&self, observer: Arc<dyn ServiceObserver>) {
        let _ = self.observer.set(observer);
    }

    fn observe(&self, f: impl FnOnce(&dyn ServiceObserver)) {
        if let Some(o) = self.observer.get() {
            f(o.as_ref());
        }
    }

    /// Make everything acknowledged so far durable: flush the event log and persist snapshots
    /// (graceful shutdown).
    ///
    /// # Errors
    ///
    /// [`ServiceError::Store`] when the event log fails to flush (a snapshot persist failure is only
    /// logged: snapshots are accelerators).
    pub async fn flush(&self) -> Result<()> {
        self.log.flush().await?;
        let snapshots = self.snapshots.clone();
        // Snapshots only accelerate rehydration; failing to persist them loses no data.
        match tokio::task::spawn_blocking(move || snapshots.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "snapshots not persisted at shutdown"),
            Err(e) => tracing::warn!(error = %e, "snapshot persist task failed"),
        }
        Ok(())
    }

    /// The event log.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Remove everything of `tenant` this service keeps: its events and command records (the
    /// event log), its snapshots and its hot-cache entries. Returns the number of aggregates the
    /// log had. The caller keeps the tenant's commands out meanwhile.
    ///
    /// # Errors
    ///
    /// [`ServiceError::Store`] when the log or the snapshot store fails (then call it again).
    pub async fn delete_tenant(&self, tenant: &TenantId) -> Result<u64, ServiceError> {
        self.cache.remove_tenant(tenant);
        let aggregates = self.log.delete_tenant(tenant).await?;
        let (snapshots, t) = (self.snapshots.clone(), tenant.clone());
        tokio::task::spawn_blocking(move || snapshots.delete_tenant(&t))
            .await
            .map_err(|e| {
                ServiceError::Store(StoreError::Unavailable(format!("snapshot task: {e}")))
            })??;
        // A command that filled the cache while the log was being cleared is forgotten too.
        self.cache.remove_tenant(tenant);
        Ok(aggregates)
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn lock_for(&self, aggregate: &AggregateRef) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        aggregate.hash(&mut h);
        &self.locks[(h.finish() as usize) % LOCK_STRIPES]
    }

    /// Run a command for `caller`.
    ///
    /// # Errors
    ///
    /// [`ServiceError::TenantAccessDenied`] when the envelope names another tenant;
    /// [`ServiceError::UnknownAggregateType`]; [`ServiceError::Rejected`] /
    /// [`ServiceError::InvalidCommand`] from the guest; [`ServiceError::Conflict`] after the
    /// retries; [`ServiceError::Guest`] for limit breaches and traps; [`ServiceError::Store`].
    pub async fn submit(&self, caller: &TenantId, submit: Submit) -> Result<CommandOutcome> {
        self.submit_expecting(caller, submit, None).await
    }

    /// [`submit`](Self::submit), but only if the aggregate is at version `expected` when the
    /// command runs (optimistic concurrency for clients that decided on a state they read). A
    /// command id seen before still returns the original result.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), and [`ServiceError::VersionMismatch`] when the aggregate is at
    /// another version.
    pub async fn submit_expecting(
        &self,
        caller: &TenantId,
        submit: Submit,
        expected: Option<Version>,
    ) -> Result<CommandOutcome> {
        if &submit.target.tenant != caller {
            return Err(ServiceError::TenantAccessDenied {
                caller: caller.clone(),
                target: submit.target.tenant.clone(),
            });
        }
        // Fail fast while the log is known to be down (a breaker open, a failed disk): no call
        // to it would succeed, and each would wait for its own timeout.
        let health = self.log.health_of(caller);
        if !health.ok {
            return Err(ServiceError::Store(StoreError::Unavailable(
                health
                    .reason
                    .unwrap_or_else(|| format!("event log {}", health.state)),
            )));
        }
        // Only a caller-supplied id can repeat; a generated one is new by construction, so the
        // lookup (a round trip on JetStream) is skipped. The append deduplicates regardless.
        let command_id = match submit.command_id {
            Some(id) => {
                if let Some(done) = self.log.find_command(caller, &id).await? {
                    return duplicate(id, &submit.target, done);
                }
                id
            }
            None => CommandId::generate(),
        };
        let active = self.registry.resolve(&submit.target.aggregate_type)?;
        let command = Command {
            command_id,
            target: submit.target,
            command_type: submit.command_type,
            payload: submit.payload,
            metadata: submit.metadata,
            received_at: chrono::Utc::now(),
        };
        let _serial = self.lock_for(&command.target).lock().await;
        let mut backoff = self.config.retry_backoff;
        for attempt in 1..=self.config.max_attempts {
            let loaded = self
                .load(&command.target, &active, Freshness::Cached)
                .await?;
            let mut current = loaded.state;
            if let Some(expected) = expected.filter(|e| *e != current.version) {
                return Err(ServiceError::VersionMismatch {
                    aggregate: command.target.clone(),
                    expected,
                    actual: current.version,
                });
            }
            let (decision, next_state) = match self.decide(&command, &active, &current).await {
                Err(ServiceError::Guest(e)) if loaded.foreign => {
                    // The active component cannot read a state another component built: rebuild
                    // it from the events with the active component, once, and decide again.
                    self.foreign_failed(&command.target, &active, &e);
                    current = self.rebuild(&command.target, &active).await?;
                    self.decide(&command, &active, &current).await?
                }
                other => other?,
            };
            let new_events = match decision {
                Decision::Accepted(events) => events,
                Decision::Rejected(m) => return Err(ServiceError::Rejected(m)),
                Decision::Invalid(m) => return Err(ServiceError::InvalidCommand(m)),
            };
            let recorded_at = chrono::Utc::now();
            let events: Vec<Event> = new_events
                .into_iter()
                .enumerate()
                .map(|(i, e)| Event {
                    aggregate: command.target.clone(),
                    version: current.version.advance(i as u64 + 1),
                    event_type: e.event_type,
                    schema_version: e.schema_version,
                    payload: e.payload,
                    causation_id: command.command_id,
                    metadata: command.metadata.clone(),
                    component: active.component,
                    recorded_at,
                })
                .collect();
            let commit = Commit {
                aggregate: command.target.clone(),
                expected: current.version,
                command_id,
                events,
            };
            if let Some(Err(reason)) = self.fence.get().map(|f| f(&command.target.tenant)) {
                return Err(ServiceError::NotOwner(reason));
            }
            match self.log.append(commit).await {
                Ok(appended) if appended.duplicate => {
                    self.cache.remove(&command.target);
                    return duplicate(command_id, &command.target, appended);
                }
                Ok(appended) => {
                    let version = appended.version;
                    if let Some(listen) = self.commit_listener.get() {
                        if !appended.events.is_empty() {
                            listen(&command.target, version, &next_state, active.component);
                        }
                    }
                    self.cache.put(
                        command.target.clone(),
                        Cached {
                            version,
                            state: next_state.clone(),
                            component: active.component,
                        },
                    );
                    self.maybe_snapshot(
                        &active,
                        &command.target,
                        current.version,
                        version,
                        next_state,
                        appended.position,
                    )
                    .await;
                    return Ok(CommandOutcome {
                        command_id,
                        aggregate: command.target.clone(),
                        version,
                        events: appended.events,
                        component: Some(active.component),
                        duplicate: false,
                        attempts: attempt,
                        position: appended.position,
                    });
                }
                Err(StoreError::CommandIdInUse { command_id, first }) => {
                    return Err(ServiceError::CommandIdReused {
                        command_id,
                        first,
                        requested: Box::new(command.target.clone()),
                    });
                }
                Err(StoreError::Conflict { .. }) => {
                    self.cache.remove(&command.target);
                    self.observe(|o| o.conflict(&command.target));
                    tracing::debug!(aggregate = %command.target, attempt, "version conflict; reloading");
                    if attempt < self.config.max_attempts {
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Conflict {
            aggregate: command.target.clone(),
            attempts: self.config.max_attempts,
        })
    }

    /// The current state of an aggregate.
    ///
    /// # Errors
    ///
    /// [`ServiceError::UnknownAggregate`] when it has no events; guest and storage errors.
    pub async fn state(
        &self,
        caller: &TenantId,
        aggregate: &AggregateRef,
    ) -> Result<AggregateState> {
        if &aggregate.tenant != caller {
            return Err(ServiceError::TenantAccessDenied {
                caller: caller.clone(),
                target: aggregate.tenant.clone(),
            });
        }
        let active = self.registry.resolve(&aggregate.aggregate_type)?;
        let current = self
            .load(aggregate, &active, Freshness::Latest)
            .await?
            .state;
        if current.version == Version::INITIAL {
            return Err(ServiceError::UnknownAggregate(aggregate.clone()));
        }
        Ok(current)
    }

    /// The state of an aggregate as it was at a past point: `init` and the events up to that
    /// point, folded with the component active now (no snapshot or cache is read or written).
    ///
    /// # Errors
    ///
    /// [`ServiceError::UnknownAggregate`] when it has no events; [`ServiceError::UnknownVersion`]
    /// for version 0, a version above the current one, or a time before the first event; guest
    /// and storage errors.
    pub async fn state_at(
        &self,
        caller: &TenantId,
        aggregate: &AggregateRef,
        point: PastPoint,
    ) -> Result<PastState> {
        if &aggregate.tenant != caller {
            return Err(ServiceError::TenantAccessDenied {
                caller: caller.clone(),
                target: aggregate.tenant.clone(),
            });
        }
        let active = self.registry.resolve(&aggregate.aggregate_type)?;
        let mut events = self.log.read(aggregate, Version::INITIAL).await?;
        let current_version = match events.last() {
            Some(e) => e.version,
            None => return Err(ServiceError::UnknownAggregate(aggregate.clone())),
        };
        let keep = match point {
            PastPoint::Version(v) => {
                if v == Version::INITIAL || v > current_version {
                    return Err(ServiceError::UnknownVersion(format!(
                        "aggregate {aggregate} has versions 1 to {current_version}, not {v}"
                    )));
                }
                events.iter().take_while(|e| e.version <= v).count()
            }
            PastPoint::At(t) => {
                let n = events.iter().take_while(|e| e.recorded_at <= t).count();
                if n == 0 {
                    return Err(ServiceError::UnknownVersion(format!(
                        "aggregate {aggregate} had no events at {}; its first was recorded at {}",
                        t.to_rfc3339(),
                        events[0].recorded_at.to_rfc3339()
                    )));
                }
                n
            }
        };
        events.truncate(keep);
        let last = events.last().expect("at least one event kept");
        let (version, recorded_at) = (last.version, last.recorded_at);
        let runtime = self.runtime.clone();
        let instance = self.instance_key(aggregate, &active);
        let limits = active.limits.clone();
        let isolation = active.isolation;
        let state = tokio::task::spawn_blocking(move || {
            runtime.with_instance(&instance, &limits, isolation, |g| {
                let init = g.init()?;
                g.apply(&init, events.iter().map(Event::data))
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("rehydration task: {e}")))??;
        Ok(PastState {
            version,
            state,
            component: active.component,
            recorded_at,
            current_version,
        })
    }

    /// Events of an aggregate after a version, at most `limit`.
    ///
    /// # Errors
    ///
    /// [`ServiceError::TenantAccessDenied`], storage errors.
    pub async fn events(
        &self,
        caller: &TenantId,
        aggregate: &AggregateRef,
        after: Version,
        limit: usize,
    ) -> Result<Vec<Event>> {
        if &aggregate.tenant != caller {
            return Err(ServiceError::TenantAccessDenied {
                caller: caller.clone(),
                target: aggregate.tenant.clone(),
            });
        }
        let mut events = self.log.read(aggregate, after).await?;
        events.truncate(limit);
        Ok(events)
    }

    /// The aggregate's state: hot cache, else snapshot + later events folded in one `apply` call,
    /// else `init` + all events.
    ///
    /// With [`Freshness::Latest`] a cached state is first checked against the log's version and
    /// the missing events folded in (another host may have appended). Commands use
    /// [`Freshness::Cached`]: the append's expected version catches a stale cache anyway.
    ///
    /// A base built by another component (snapshot policy `trust`) is used only as long as the
    /// active component accepts it: when folding the later events into it fails, the state is
    /// rebuilt from all events with the active component (logged, counted).
    async fn load(
        &self,
        aggregate: &AggregateRef,
        active: &ActiveComponent,
        freshness: Freshness,
    ) -> Result<Loaded> {
        let trust_other = active.snapshot_policy == SnapshotPolicy::Trust;
        let cached = self
            .cache
            .get(aggregate)
            .filter(|c| c.component == active.component || trust_other);
        self.observe(|o| o.hot_cache(aggregate, cached.is_some()));
        let started = std::time::Instant::now();
        let base = match cached {
            Some(c) => {
                if freshness == Freshness::Cached || self.log.version(aggregate).await? == c.version
                {
                    return Ok(Loaded {
                        foreign: c.component != active.component,
                        state: AggregateState {
                            version: c.version,
                            state: c.state,
                            component: c.component,
                        },
                    });
                }
                Some((c.version, c.state, c.component))
            }
            None => {
                let snapshots = self.snapshots.clone();
                let key = aggregate.clone();
                let snapshot = match tokio::task::spawn_blocking(move || snapshots.get(&key))
                    .await
                    .map_err(|e| ServiceError::Internal(format!("snapshot read task: {e}")))?
                {
                    Ok(s) => s,
                    // A snapshot only saves folding events: without it, fold them all.
                    Err(e) => {
                        tracing::warn!(aggregate = %aggregate, error = %e, "snapshot unreadable; rebuilding from the events");
                        None
                    }
                };
                snapshot
                    .filter(|s| s.component == active.component || trust_other)
                    .map(|s| (s.version, s.state, s.component))
            }
        };
        let foreign = base
            .as_ref()
            .is_some_and(|(_, _, c)| *c != active.component);
        let loaded = match self.fold(aggregate, active, base).await {
            Err(ServiceError::Guest(e)) if foreign => {
                self.foreign_failed(aggregate, active, &e);
                return Ok(Loaded {
                    state: self.rebuild(aggregate, active).await?,
                    foreign: false,
                });
            }
            other => other?,
        };
        self.observe(|o| o.rehydrated(aggregate, started.elapsed(), loaded.1));
        Ok(Loaded {
            state: loaded.0,
            foreign,
        })
    }

    /// `init` + every event with the active component, ignoring snapshots and the hot cache.
    async fn rebuild(
        &self,
        aggregate: &AggregateRef,
        active: &ActiveComponent,
    ) -> Result<AggregateState> {
        let started = std::time::Instant::now();
        let (state, folded) = self.fold(aggregate, active, None).await?;
        self.observe(|o| o.rehydrated(aggregate, started.elapsed(), folded));
        Ok(state)
    }

    fn foreign_failed(&self, aggregate: &AggregateRef, active: &ActiveComponent, e: &RuntimeError) {
        tracing::warn!(
            aggregate = %aggregate,
            component = %active.component,
            error = %e,
            "the active component failed on a state another component built; rebuilding it from the events"
        );
        self.cache.remove(aggregate);
        self.observe(|o| o.foreign_state_rebuilt(aggregate));
    }

    /// Fold the events after `base` (or all, from `init`) with the active component, and cache
    /// the result. Returns the state and how many events were folded.
    async fn fold(
        &self,
        aggregate: &AggregateRef,
        active: &ActiveComponent,
        base: Option<(Version, Json, ComponentHash)>,
    ) -> Result<(AggregateState, usize)> {
        let after = base.as_ref().map_or(Version::INITIAL, |(v, _, _)| *v);
        let events = self.log.read(aggregate, after).await?;
        let runtime = self.runtime.clone();
        let instance = self.instance_key(aggregate, active);
        let limits = active.limits.clone();
        let isolation = active.isolation;
        let version = events.last().map_or(after, |e| e.version);
        let folded = events.len();
        // Who built what is returned: the active component once it folded anything.
        let component = match &base {
            Some((_, _, c)) if folded == 0 => *c,
            _ => active.component,
        };
        let state = tokio::task::spawn_blocking(move || {
            runtime.with_instance(&instance, &limits, isolation, |g| {
                let base = match base {
                    Some((_, state, _)) => state,
                    None => g.init()?,
                };
                if events.is_empty() {
                    Ok(base)
                } else {
                    g.apply(&base, events.iter().map(Event::data))
                }
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("rehydration task: {e}")))??;
        self.cache.put(
            aggregate.clone(),
            Cached {
                version,
                state: state.clone(),
                component,
            },
        );
        Ok((
            AggregateState {
                version,
                state,
                component,
            },
            folded,
        ))
    }

    fn instance_key(&self, aggregate: &AggregateRef, active: &ActiveComponent) -> InstanceKey {
        InstanceKey {
            tenant: aggregate.tenant.clone(),
            aggregate_type: aggregate.aggregate_type.clone(),
            component: active.component,
        }
    }

    /// `decide`, then `apply` of the accepted events, on one instance.
    async fn decide(
        &self,
        command: &Command,
        active: &ActiveComponent,
        current: &AggregateState,
    ) -> Result<(Decision, Json)> {
        let runtime = self.runtime.clone();
        let instance = self.instance_key(&command.target, active);
        let limits = active.limits.clone();
        let isolation = active.isolation;
        let command = command.clone();
        let command_target = command.target.clone();
        let state = current.state.clone();
        let (decision, next, fuel) = tokio::task::spawn_blocking(move || {
            runtime.with_instance(&instance, &limits, isolation, |g| {
                let d = g.decide(&state, &command)?;
                let fuel = g.fuel_used();
                let next = match &d {
                    Decision::Accepted(events) if !events.is_empty() => {
                        g.apply(&state, events.iter().map(|e| e.data()))?
                    }
                    _ => state.clone(),
                };
                Ok((d, next, fuel))
            })
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("decide task: {e}")))??;
        self.observe(|o| o.decided(&command_target, fuel));
        Ok((decision, next))
    }

    async fn maybe_snapshot(
        &self,
        active: &ActiveComponent,
        aggregate: &AggregateRef,
        before: Version,
        after: Version,
        state: Json,
        position: u64,
    ) {
        let n = active.snapshot_every;
        if n == 0 || after.0 / n == before.0 / n {
            return;
        }
        let snapshot = Snapshot {
            aggregate: aggregate.clone(),
            version: after,
            state,
            component: active.component,
            log_position: position,
        };
        let snapshots = self.snapshots.clone();
        // A failed snapshot costs only rehydration time later; the events are already durable.
        match tokio::task::spawn_blocking(move || snapshots.insert(&snapshot)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(aggregate = %aggregate, error = %e, "snapshot not written")
            }
            Err(e) => tracing::warn!(aggregate = %aggregate, error = %e, "snapshot task failed"),
        }
    }
}

/// The original result of a command id seen before — if it was seen on `requested`. An id is
/// bound to the aggregate it was first used on: answering a command for another aggregate with
/// the first one's result would tell the client that something happened that did not.
fn duplicate(
    command_id: CommandId,
    requested: &AggregateRef,
    done: crate::store::Appended,
) -> Result<CommandOutcome> {
    if &done.aggregate != requested {
        return Err(ServiceError::CommandIdReused {
            command_id,
            first: Box::new(done.aggregate),
            requested: Box::new(requested.clone()),
        });
    }
    Ok(CommandOutcome {
        command_id,
        aggregate: done.aggregate,
        version: done.version,
        component: done.events.first().map(|e| e.component),
        events: done.events,
        duplicate: true,
        attempts: 0,
        position: done.position,
    })
}
