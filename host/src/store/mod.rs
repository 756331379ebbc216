//! Storage: the event log (one trait, two implementations) and snapshots, all tenant-scoped.
//!
//! - [`embedded`]: the default on one machine — a fjall keyspace, group commit, fsync before ack.
//! - [`jetstream`]: a NATS JetStream stream, one message per command (all its events), with
//!   `Nats-Msg-Id` = command id and `Nats-Expected-Last-Subject-Sequence` for concurrency.
//! - [`snapshots`]: fjall, `(tenant, type, id) → snapshot`.
//!
//! Every key and subject is built from validated newtypes ([`TenantId`], [`AggregateType`],
//! [`AggregateId`]), tenant first, so one tenant's range can never overlap another's.

use std::sync::Arc;

use futures::stream::BoxStream;

use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, Event, TenantId, Version};

pub mod breaker;
pub mod embedded;
pub mod jetstream;
pub(crate) mod keys;
pub mod routed;
pub mod snapshots;

pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use embedded::{EmbeddedConfig, EmbeddedLog, EmbeddedStats};
pub use jetstream::{ConnectMode, JetStreamConfig, JetStreamLog};
pub use snapshots::SnapshotStore;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended first: the aggregate is not at the expected version.
    #[error("version conflict on {aggregate}: expected version {expected}, log is at {actual}")]
    Conflict {
        /// The aggregate.
        aggregate: AggregateRef,
        /// The version the writer expected.
        expected: Version,
        /// The version found (when known; otherwise the same as `expected`).
        actual: Version,
    },
    /// The backing store failed (disk, fjall, NATS); the operation may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupted at {location}: {reason}")]
    Corrupted {
        /// Which key or message.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A JetStream stream exists with a configuration the host cannot use.
    #[error("stream `{stream}` is incompatible: {reason}")]
    IncompatibleStream {
        /// The stream name.
        stream: String,
        /// What differs.
        reason: String,
    },
    /// The command id is bound to another aggregate: a command with this id was appended (or is
    /// being appended) there. The service answers it as a reused command id.
    #[error("command id {command_id} is already used on aggregate {first}")]
    CommandIdInUse {
        /// The command id.
        command_id: CommandId,
        /// The aggregate the id was first used on (boxed: keeps the error small).
        first: Box<AggregateRef>,
    },
    /// The commit itself is malformed (caller bug).
    #[error("invalid commit: {0}")]
    InvalidCommit(String),
}

/// Result alias for this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything one command produced, appended all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The aggregate the events belong to.
    pub aggregate: AggregateRef,
    /// The version the writer saw; the append fails with [`StoreError::Conflict`] otherwise.
    pub expected: Version,
    /// The command (idempotency key).
    pub command_id: CommandId,
    /// The events, with versions `expected+1 ..= expected+n` already assigned. May be empty: the
    /// command is then recorded for idempotency only.
    pub events: Vec<Event>,
}

impl Commit {
    /// Check the commit's shape: every event belongs to `aggregate` and the versions run
    /// `expected+1 ..= expected+n` without gaps. Both logs call this before writing.
    ///
    /// # Errors
    ///
    /// [`StoreError::InvalidCommit`] naming the first offending event.
    pub fn validate(&self) -> Result<()> {
        for (i, event) in self.events.iter().enumerate() {
            if event.aggregate != self.aggregate {
                return Err(StoreError::InvalidCommit(format!(
                    "event {i} belongs to {}, the commit to {}",
                    event.aggregate, self.aggregate
                )));
            }
            let want = self.expected.advance(i as u64 + 1);
            if event.version != want {
                return Err(StoreError::InvalidCommit(format!(
                    "event {i} has version {}, expected {want} (commit expects version {})",
                    event.version, self.expected
                )));
            }
        }
        Ok(())
    }

    /// The aggregate's version after this commit.
    pub fn next_version(&self) -> Version {
        self.expected.advance(self.events.len() as u64)
    }
}

/// What an append or a command lookup reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Appended {
    /// The aggregate.
    pub aggregate: AggregateRef,
    /// The aggregate's version after this command's events (equal to the version before when the
    /// command produced no events).
    pub version: Version,
    /// The events of the command, as stored.
    pub events: Vec<Event>,
    /// Log position of the commit (embedded: a global sequence; JetStream: the stream sequence).
    pub position: u64,
    /// True when this command id had already been appended and this is the original result.
    pub duplicate: bool,
}

/// What an event log knows about its own health, without doing any I/O (readiness and the
/// fail-fast check before each command read this).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogHealth {
    /// True when the log is expected to take writes now.
    pub ok: bool,
    /// A short state name for readiness and metrics, e.g. `ok`, `open` (a breaker refusing
    /// calls), `half-open` (probing), `connecting`, `storage-failed`.
    pub state: &'static str,
    /// Why the log is not ok (absent when ok).
    pub reason: Option<String>,
}

impl LogHealth {
    /// A healthy log.
    pub fn healthy() -> Self {
        Self {
            ok: true,
            state: "ok",
            reason: None,
        }
    }

    /// An unhealthy log in `state`, because of `reason`.
    pub fn failing(state: &'static str, reason: impl Into<String>) -> Self {
        Self {
            ok: false,
            state,
            reason: Some(reason.into()),
        }
    }
}

/// One commit as a feed carries it: its log position, its aggregate and its events. A commit
/// with no events (a command recorded for idempotency only) is carried only by feeds of every
/// tenant ([`FeedFilter::all`]), so that a reader of the whole log can count it as read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedItem {
    /// The commit's log position (embedded: the global commit sequence; JetStream: the stream
    /// sequence). Positions only grow; a feed carries them in ascending order.
    pub position: u64,
    /// The aggregate the commit wrote to.
    pub aggregate: AggregateRef,
    /// The commit's events, in version order.
    pub events: Arc<[Event]>,
}

/// A feed of commits in position order, see [`EventLog::subscribe`].
pub type Feed = BoxStream<'static, Result<FeedItem>>;

/// Which commits a feed carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    /// Only this tenant's commits (`None`: every tenant's — the host's own readers only, e.g. the
    /// state index; never a client).
    pub tenant: Option<TenantId>,
    /// Only commits of this aggregate type.
    pub aggregate_type: Option<AggregateType>,
}

impl FeedFilter {
    /// One tenant's commits, optionally of one aggregate type.
    pub fn tenant(tenant: &TenantId, aggregate_type: Option<&AggregateType>) -> Self {
        Self {
            tenant: Some(tenant.clone()),
            aggregate_type: aggregate_type.cloned(),
        }
    }

    /// Every commit of every tenant.
    pub fn all() -> Self {
        Self::default()
    }

    /// Whether a commit of `aggregate` with `events` events passes.
    pub fn admits(&self, aggregate: &AggregateRef, events: usize) -> bool {
        (events > 0 || self.tenant.is_none())
            && self.tenant.as_ref().is_none_or(|t| *t == aggregate.tenant)
            && self
                .aggregate_type
                .as_ref()
                .is_none_or(|t| *t == aggregate.aggregate_type)
    }
}

/// The event log. Both implementations pass the same conformance suite (`tests/` of the host).
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// A short name for logs and metrics (`embedded`, `jetstream`).
    fn kind(&self) -> &'static str;

    /// The log's health as tracked from its own operations and connection events, answered at
    /// once without I/O. When not `ok`, the command service refuses commands with
    /// [`StoreError::Unavailable`] before touching the log. Default: always healthy.
    fn health(&self) -> LogHealth {
        LogHealth::healthy()
    }

    /// The health of the log that holds `tenant`'s data (see [`EventLog::position_of`]).
    /// Default: [`EventLog::health`].
    fn health_of(&self, tenant: &TenantId) -> LogHealth {
        let _ = tenant;
        self.health()
    }

    /// Append a command's events atomically, if the aggregate is still at `commit.expected`.
    /// A command id appended before returns the original result with `duplicate: true` and
    /// writes nothing, also across restarts.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when the aggregate moved on; [`StoreError::Unavailable`] on I/O.
    /// An `Ok` means the events are durable (embedded: fsynced; JetStream: acknowledged).
    async fn append(&self, commit: Commit) -> Result<Appended>;

    /// The aggregate's events with version greater than `after`, in order.
    async fn read(&self, aggregate: &AggregateRef, after: Version) -> Result<Vec<Event>>;

    /// The aggregate's current version (0 when it has no events).
    async fn version(&self, aggregate: &AggregateRef) -> Result<Version>;

    /// The result of a command appended before, if any (idempotency lookup).
    async fn find_command(
        &self,
        tenant: &TenantId,
        command_id: &CommandId,
    ) -> Result<Option<Appended>>;

    /// The aggregates a tenant has events for, or has recorded a command for (a command that
    /// produced no events is still recorded, for idempotency).
    async fn list_aggregates(&self, tenant: &TenantId)
        -> Result<Vec<(AggregateType, AggregateId)>>;

    /// The commits that pass `filter`, in position order: with `after: Some(p)` every commit with
    /// a position greater than `p` (those already in the log first, then new ones as they are
    /// appended), with `None` only commits appended from now on. No commit is skipped or repeated,
    /// also across the switch from stored to new commits; a subscriber that falls behind is
    /// caught up from the log rather than failed. The feed ends with an error item when the log
    /// fails; a new subscription after the last position seen continues exactly there.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the log cannot be reached.
    async fn subscribe(&self, filter: FeedFilter, after: Option<u64>) -> Result<Feed>;

    /// The position of the last commit in the log (0 when empty): a reader that has seen every
    /// commit up to it has seen everything acknowledged before this call.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the log cannot be reached.
    async fn position(&self) -> Result<u64>;

    /// The position of the last commit of the log that holds `tenant`'s data: [`EventLog::position`]
    /// unless the tenant has a log of its own ([`routed`]). A tenant's event stream positions
    /// are compared with this one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the log cannot be reached.
    async fn position_of(&self, tenant: &TenantId) -> Result<u64> {
        let _ = tenant;
        self.position().await
    }

    /// Make everything acknowledged so far durable and stop accepting appends (graceful shutdown).
    async fn flush(&self) -> Result<()>;

    /// Remove everything of `tenant`: its events, aggregate heads, command records (so its
    /// command ids may be used again) and feed entries. Returns how many aggregates it had. The
    /// caller makes sure no command of the tenant runs meanwhile (a commit of the tenant racing
    /// the removal may survive it).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the log cannot be reached or written; part of the
    /// tenant's data may then be gone, and the call may be repeated.
    async fn delete_tenant(&self, tenant: &TenantId) -> Result<u64>;
}
