//! The JetStream event log (cluster mode): one stream, one subject per aggregate, one message per
//! command.
//!
//! # Layout
//!
//! - Stream [`JetStreamConfig::stream`] (default `AGGREGATES`), subjects `tenant.>`, file storage,
//!   limits retention with no limits, `allow_direct`, dedup window
//!   [`JetStreamConfig::duplicate_window`].
//! - Subject of an aggregate: `tenant.<tenant>.aggregate.<type>.<id>`. The single-tenant (empty)
//!   tenant is written as the token [`SINGLE_TENANT_TOKEN`] (`=single`): tenant ids are made only of
//!   `[A-Za-z0-9_-]`, so no tenant can ever be `=single`, and `=` (unlike `~`) is also valid in a KV
//!   key, where the same token is used.
//! - One message per command: the body is the JSON array of the command's events (possibly
//!   empty), with headers `Nats-Msg-Id` = `<tenant-token>.<command-id>` (tenant-scoped: the dedup
//!   window is stream-wide and two tenants may use the same command id),
//!   `Nats-Expected-Last-Subject-Sequence` = the aggregate subject's last stream sequence as this
//!   writer saw it, `Agg-From` = the version before and `Agg-Version` = the version after the
//!   command, `Agg-Prev` = the stream sequence of the subject's previous message (0 for the
//!   first). The message is stored whole or not at all, so a commit is atomic.
//!
//! # Versions and sequences
//!
//! Optimistic concurrency uses the subject's last **stream sequence**, the aggregate's **version**
//! is carried in the `Agg-Version` header, so the last message of a subject (one
//! `direct_get_last_for_subject`, ~0.2 ms) tells both. A bounded in-memory cache keeps
//! `aggregate → (version, last subject sequence)` for aggregates this host appended to or read;
//! an append whose `expected` equals the cached version publishes straight away with the cached
//! sequence (no read at all), anything else refreshes the entry from the stream first. A stale
//! entry (another host appended) makes the server refuse the publish with error 10071 ("wrong last
//! sequence"), which becomes [`StoreError::Conflict`] and evicts the entry. `version()` always asks
//! the stream (authoritative across hosts).
//!
//! # Idempotency across restarts
//!
//! JetStream's dedup window alone only covers [`JetStreamConfig::duplicate_window`]. For command
//! lookups that work at any time and after restarts of the host or the server, every append first
//! records an **intent** in the KV bucket [`JetStreamConfig::command_bucket`] under the key
//! `<tenant-token>.<command-id>`: the aggregate's subject and the subject sequence `S` the publish
//! will expect. Because the publish carries `Nats-Expected-Last-Subject-Sequence: S`, if that
//! command was stored at all it is **exactly the first message of the subject after `S`**. So:
//!
//! - `find_command` reads the intent, fetches the subject's next message after `S` (one direct
//!   get) and compares its `Nats-Msg-Id`: same id → the original result; another id or none → the
//!   command was never stored.
//! - `append` creates the intent with a KV `create`; if it already exists the command was seen
//!   before: resolved as committed → the original result with `duplicate: true` (nothing written);
//!   not committed (an earlier attempt hit a conflict or died before publishing) → the intent is
//!   replaced (compare-and-set on its revision) by the new `S` and the publish goes ahead.
//! - A publish racing with another attempt of the same command (two hosts, or a retry while the
//!   first attempt is still in flight) is caught by the dedup window: the duplicate ack names the
//!   original's sequence, and the original message is returned with `duplicate: true`.
//!
//! The price is one more JetStream write (the intent) before each append; the intent is never
//! rewritten after a successful publish. Without the intent written first there would be a gap:
//! a host crash between the publish ack and an index write would leave a stored command that a
//! retry after the dedup window runs again.
//!
//! # Durability
//!
//! An `Ok` from `append` means JetStream acknowledged the message. nats-server 2.9 acknowledges
//! before any fsync: on a single node that is page-cache durability (safe across a process crash,
//! not a power loss); power-loss durability in JetStream mode comes from replication (R3,
//! [`JetStreamConfig::replicas`]).
//!
//! # Reads
//!
//! `read` fetches the subject's last message first (one direct get); when that message alone
//! covers the requested range (the common "events after my snapshot" case) it is the only request.
//! Otherwise it walks back along the `Agg-Prev` header (each message names the stream sequence of
//! the subject's previous message, which the writer knew: it is the expected last subject
//! sequence) with direct gets by sequence (~0.2 ms each), so reading the k newest commits costs
//! k requests. After [`JetStreamConfig::direct_read_limit`] messages it reads the older part with
//! an ordered pull consumer from the start (one `filter_subject` — 2.9 ignores `filter_subjects`),
//! whose fixed cost (10–60 ms) is worth paying only for long histories. `subscribe` is an ordered
//! push consumer (deliver policy `new`) filtered to `tenant.<t>.aggregate.<type or *>.*`: only
//! stored messages are delivered, never publishes the stream refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::{pull, push, DeliverPolicy};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, RetentionPolicy, StorageType};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::{Appended, Commit, EventLog, EventStream, Result, StoreError};
use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, Event, TenantId, Version};

/// The subject/KV token standing for the single-tenant (empty) tenant id.
pub const SINGLE_TENANT_TOKEN: &str = "=single";

/// The subjects the stream must capture (and nothing else).
pub const STREAM_SUBJECTS: &str = "tenant.>";

const HEADER_VERSION: &str = "Agg-Version";
const HEADER_FROM: &str = "Agg-From";
const HEADER_PREV: &str = "Agg-Prev";

/// Knobs of the JetStream log. `Default` is what production uses.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// Name of the events stream. Default `AGGREGATES`.
    pub stream: String,
    /// Name of the KV bucket holding command intents (idempotency). Default `AGGREGATE_COMMANDS`.
    pub command_bucket: String,
    /// JetStream dedup window of the stream (used when creating it). Default 2 minutes.
    pub duplicate_window: Duration,
    /// Replicas of the stream and the bucket when they are created (3 in a cluster). Default 1.
    pub replicas: usize,
    /// Most messages `read` fetches one by one before switching to a consumer. Default 32.
    pub direct_read_limit: usize,
    /// Most aggregates whose `(version, last sequence)` is cached; cleared when full.
    /// Default 100,000.
    pub head_cache_capacity: usize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            stream: "AGGREGATES".into(),
            command_bucket: "AGGREGATE_COMMANDS".into(),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            direct_read_limit: 32,
            head_cache_capacity: 100_000,
        }
    }
}

/// The JetStream event log. See the module docs.
pub struct JetStreamLog {
    client: async_nats::Client,
    js: Context,
    stream: stream::Stream,
    commands: kv::Store,
    config: JetStreamConfig,
    heads: parking_lot::Mutex<HashMap<AggregateRef, Head>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

/// Where an aggregate's subject stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    version: u64,
    /// Stream sequence of the subject's last message (0: no message).
    seq: u64,
}

/// What the command bucket holds per command: where its message must be if it was stored.
#[derive(Debug, Serialize, Deserialize)]
struct Intent {
    subject: String,
    /// The subject's last sequence the publish expected; the command's message, if stored, is the
    /// subject's first message after it.
    after: u64,
}

fn nats_err(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |e| StoreError::Unavailable(format!("nats: {what}: {e}"))
}

macro_rules! unavailable {
    ($what:literal) => {
        |e| nats_err($what)(&e)
    };
}

/// The subject token of a tenant.
pub fn tenant_token(tenant: &TenantId) -> &str {
    if tenant.is_single() {
        SINGLE_TENANT_TOKEN
    } else {
        tenant.as_str()
    }
}

/// The subject of an aggregate: `tenant.<tenant>.aggregate.<type>.<id>`.
pub fn subject_of(aggregate: &AggregateRef) -> String {
    format!(
        "tenant.{}.aggregate.{}.{}",
        tenant_token(&aggregate.tenant),
        aggregate.aggregate_type,
        aggregate.aggregate_id
    )
}

fn command_key(tenant: &TenantId, command_id: &CommandId) -> String {
    format!("{}.{}", tenant_token(tenant), command_id)
}

/// Parse `tenant.<tenant>.aggregate.<type>.<id>`.
fn parse_subject(subject: &str) -> Result<AggregateRef> {
    let corrupted = |reason: &str| StoreError::Corrupted {
        location: format!("subject {subject}"),
        reason: reason.into(),
    };
    let parts: Vec<&str> = subject.split('.').collect();
    let [p_tenant, tenant, p_aggregate, ty, id] = parts[..] else {
        return Err(corrupted("expected tenant.<tenant>.aggregate.<type>.<id>"));
    };
    if p_tenant != "tenant" || p_aggregate != "aggregate" {
        return Err(corrupted("expected tenant.<tenant>.aggregate.<type>.<id>"));
    }
    let tenant = if tenant == SINGLE_TENANT_TOKEN {
        TenantId::single()
    } else {
        TenantId::new(tenant).map_err(|e| corrupted(&e.to_string()))?
    };
    Ok(AggregateRef {
        tenant,
        aggregate_type: AggregateType::new(ty).map_err(|e| corrupted(&e.to_string()))?,
        aggregate_id: id
            .parse()
            .map_err(|e: crate::types::InvalidValue| corrupted(&e.to_string()))?,
    })
}

fn header_u64(
    headers: Option<&HeaderMap>,
    name: &str,
    location: impl Fn() -> String,
) -> Result<u64> {
    let value = headers
        .and_then(|h| h.get(name))
        .ok_or_else(|| StoreError::Corrupted {
            location: location(),
            reason: format!("header {name} is missing"),
        })?;
    value.as_str().parse().map_err(|_| StoreError::Corrupted {
        location: location(),
        reason: format!("header {name} is not a number: {:?}", value.as_str()),
    })
}

/// One stored command message, decoded.
struct Stored {
    aggregate: AggregateRef,
    seq: u64,
    from: u64,
    version: u64,
    /// Stream sequence of the subject's previous message (0: none).
    prev: u64,
    msg_id: Option<String>,
    payload: bytes::Bytes,
}

impl Stored {
    fn new(
        subject: &str,
        seq: u64,
        headers: Option<&HeaderMap>,
        payload: bytes::Bytes,
    ) -> Result<Self> {
        let location = || format!("stream sequence {seq} ({subject})");
        Ok(Self {
            aggregate: parse_subject(subject)?,
            seq,
            from: header_u64(headers, HEADER_FROM, location)?,
            prev: header_u64(headers, HEADER_PREV, location)?,
            version: header_u64(headers, HEADER_VERSION, location)?,
            msg_id: headers
                .and_then(|h| h.get(NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_string()),
            payload,
        })
    }

    fn from_stream_message(m: async_nats::jetstream::message::StreamMessage) -> Result<Self> {
        Self::new(m.subject.as_str(), m.sequence, Some(&m.headers), m.payload)
    }

    fn events(&self) -> Result<Vec<Event>> {
        let location = || format!("stream sequence {} ({})", self.seq, self.aggregate);
        let events: Vec<Event> =
            serde_json::from_slice(&self.payload).map_err(|e| StoreError::Corrupted {
                location: location(),
                reason: e.to_string(),
            })?;
        let consistent = events.len() as u64 == self.version.saturating_sub(self.from)
            && events.iter().enumerate().all(|(i, e)| {
                e.version.0 == self.from + 1 + i as u64 && e.aggregate == self.aggregate
            });
        if !consistent {
            return Err(StoreError::Corrupted {
                location: location(),
                reason: format!(
                    "events do not match versions {}..={}",
                    self.from + 1,
                    self.version
                ),
            });
        }
        Ok(events)
    }

    fn appended(&self, duplicate: bool) -> Result<Appended> {
        Ok(Appended {
            aggregate: self.aggregate.clone(),
            version: Version(self.version),
            events: self.events()?,
            position: self.seq,
            duplicate,
        })
    }
}

/// A check of an existing stream's configuration against what the log needs.
fn check_stream(config: &stream::Config, name: &str) -> Result<()> {
    let incompatible = |reason: String| {
        Err(StoreError::IncompatibleStream {
            stream: name.to_string(),
            reason,
        })
    };
    if config.subjects != [STREAM_SUBJECTS] {
        return incompatible(format!(
            "field `subjects`: expected [\"{STREAM_SUBJECTS}\"], found {:?}",
            config.subjects
        ));
    }
    if config.storage != StorageType::File {
        return incompatible(format!(
            "field `storage`: expected file, found {:?}",
            config.storage
        ));
    }
    if config.retention != RetentionPolicy::Limits {
        return incompatible(format!(
            "field `retention`: expected limits (events are never removed), found {:?}",
            config.retention
        ));
    }
    for (field, value) in [
        ("max_msgs", config.max_messages),
        ("max_bytes", config.max_bytes),
        ("max_msgs_per_subject", config.max_messages_per_subject),
    ] {
        if value > 0 {
            return incompatible(format!(
                "field `{field}`: expected unlimited (-1), found {value}: events would be dropped"
            ));
        }
    }
    if !config.max_age.is_zero() {
        return incompatible(format!(
            "field `max_age`: expected unlimited (0), found {:?}: events would expire",
            config.max_age
        ));
    }
    if !config.allow_direct {
        return incompatible(
            "field `allow_direct`: expected true (direct gets), found false".into(),
        );
    }
    if config.duplicate_window.is_zero() {
        return incompatible("field `duplicate_window`: expected a dedup window, found 0".into());
    }
    if config.sealed {
        return incompatible("field `sealed`: the stream is sealed".into());
    }
    if config.mirror.is_some() {
        return incompatible("field `mirror`: the stream is a mirror and cannot be written".into());
    }
    Ok(())
}

impl JetStreamLog {
    /// Connect to `url` and open the log (see [`JetStreamLog::open`]).
    ///
    /// # Errors
    ///
    /// As [`JetStreamLog::open`], plus [`StoreError::Unavailable`] when the server cannot be reached.
    pub async fn connect(url: &str, config: JetStreamConfig) -> Result<Self> {
        let client = async_nats::connect(url)
            .await
            .map_err(unavailable!("connect"))?;
        Self::open(client, config).await
    }

    /// Open the log on a connected client: create the stream and the command bucket if missing,
    /// check them if present.
    ///
    /// # Errors
    ///
    /// [`StoreError::IncompatibleStream`] naming the field when the stream (or the bucket's stream)
    /// exists with a configuration the log cannot use; [`StoreError::Unavailable`] otherwise.
    pub async fn open(client: async_nats::Client, config: JetStreamConfig) -> Result<Self> {
        let js = async_nats::jetstream::new(client.clone());
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![STREAM_SUBJECTS.to_string()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            duplicate_window: config.duplicate_window,
            allow_direct: true,
            num_replicas: config.replicas.max(1),
            ..Default::default()
        };
        let stream = js
            .get_or_create_stream(wanted)
            .await
            .map_err(unavailable!("create stream"))?;
        check_stream(&stream.cached_info().config, &config.stream)?;

        // The command bucket's stream is created here rather than with `create_key_value`, which
        // queries account info in a shape nats-server 2.9 does not answer. Same layout as a KV
        // bucket with history 1.
        let bucket_stream_name = format!("KV_{}", config.command_bucket);
        js.get_or_create_stream(stream::Config {
            name: bucket_stream_name.clone(),
            description: Some("aggregate host: command intents (idempotency)".into()),
            subjects: vec![format!("$KV.{}.>", config.command_bucket)],
            max_messages_per_subject: 1,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: config.replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(unavailable!("create command bucket"))?;
        let commands = js
            .get_key_value(&config.command_bucket)
            .await
            .map_err(unavailable!("open command bucket"))?;
        let bucket_stream = js
            .get_stream(&bucket_stream_name)
            .await
            .map_err(unavailable!("command bucket info"))?;
        let bucket_config = &bucket_stream.cached_info().config;
        if bucket_config.storage != StorageType::File {
            return Err(StoreError::IncompatibleStream {
                stream: bucket_stream_name,
                reason: format!(
                    "field `storage`: expected file, found {:?}",
                    bucket_config.storage
                ),
            });
        }
        if bucket_config.max_age != Duration::ZERO {
            return Err(StoreError::IncompatibleStream {
                stream: bucket_stream_name,
                reason: format!(
                    "field `max_age`: expected unlimited (0), found {:?}",
                    bucket_config.max_age
                ),
            });
        }

        Ok(Self {
            client,
            js,
            stream,
            commands,
            config,
            heads: parking_lot::Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        })
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.config
    }

    fn remember(&self, aggregate: &AggregateRef, head: Head) {
        let mut heads = self.heads.lock();
        if heads.len() >= self.config.head_cache_capacity.max(1) && !heads.contains_key(aggregate) {
            heads.clear();
        }
        heads.insert(aggregate.clone(), head);
    }

    fn forget(&self, aggregate: &AggregateRef) {
        self.heads.lock().remove(aggregate);
    }

    /// The subject's last message, if any.
    async fn last_message(&self, subject: &str) -> Result<Option<Stored>> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Stored::from_stream_message(m).map(Some),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats_err("direct get last")(&e)),
        }
    }

    /// The subject's first message with sequence `>= seq`, if any.
    async fn next_message(&self, subject: &str, seq: u64) -> Result<Option<Stored>> {
        match self
            .stream
            .direct_get_next_for_subject(subject, Some(seq.max(1)))
            .await
        {
            Ok(m) => Stored::from_stream_message(m).map(Some),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(nats_err("direct get next")(&e)),
        }
    }

    /// Ask the stream where the aggregate stands, and cache it.
    async fn fetch_head(&self, aggregate: &AggregateRef, subject: &str) -> Result<Head> {
        let head = match self.last_message(subject).await? {
            Some(m) => Head {
                version: m.version,
                seq: m.seq,
            },
            None => Head { version: 0, seq: 0 },
        };
        self.remember(aggregate, head);
        Ok(head)
    }

    /// Where the aggregate stands: the cached head when it matches `expected`, else the stream's.
    async fn head_for(
        &self,
        aggregate: &AggregateRef,
        subject: &str,
        expected: Version,
    ) -> Result<Head> {
        let cached = self.heads.lock().get(aggregate).copied();
        match cached {
            Some(h) if h.version == expected.0 => Ok(h),
            _ => self.fetch_head(aggregate, subject).await,
        }
    }

    /// Was the command of this intent stored? Then its original result.
    async fn resolve(&self, intent: &Intent, key: &str) -> Result<Option<Appended>> {
        match self.next_message(&intent.subject, intent.after + 1).await? {
            Some(m) if m.msg_id.as_deref() == Some(key) => m.appended(true).map(Some),
            _ => Ok(None),
        }
    }

    async fn intent(&self, key: &str) -> Result<Option<(Intent, u64)>> {
        let entry = self
            .commands
            .entry(key)
            .await
            .map_err(unavailable!("command lookup"))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let intent: Intent =
                    serde_json::from_slice(&e.value).map_err(|err| StoreError::Corrupted {
                        location: format!("{} key {key}", self.config.command_bucket),
                        reason: err.to_string(),
                    })?;
                Ok(Some((intent, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Record the intent to publish after `after`; `Some` when the command was stored before.
    async fn record_intent(&self, key: &str, subject: &str, after: u64) -> Result<IntentOutcome> {
        let value: bytes::Bytes = serde_json::to_vec(&Intent {
            subject: subject.to_string(),
            after,
        })
        .expect("intent serializes")
        .into();
        match self.commands.create(key, value.clone()).await {
            Ok(_) => return Ok(IntentOutcome::Recorded),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats_err("record command intent")(&e)),
        }
        let Some((previous, revision)) = self.intent(key).await? else {
            return Ok(IntentOutcome::Retry); // deleted in between
        };
        if let Some(original) = self.resolve(&previous, key).await? {
            return Ok(IntentOutcome::Stored(original));
        }
        match self.commands.update(key, value, revision).await {
            Ok(_) => Ok(IntentOutcome::Recorded),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Ok(IntentOutcome::Retry)
            }
            Err(e) => Err(nats_err("update command intent")(&e)),
        }
    }

    /// A conflict, unless the command was stored before (then its original result).
    async fn conflict(&self, commit: &Commit, key: &str, actual: u64) -> Result<Appended> {
        if let Some((intent, _)) = self.intent(key).await? {
            if let Some(original) = self.resolve(&intent, key).await? {
                return Ok(original);
            }
        }
        Err(StoreError::Conflict {
            aggregate: commit.aggregate.clone(),
            expected: commit.expected,
            actual: Version(actual),
        })
    }

    async fn read_with_consumer(
        &self,
        subject: &str,
        start: u64,
        last_seq: u64,
        mut visit: impl FnMut(Stored) -> Result<()>,
    ) -> Result<()> {
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable!("create read consumer"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(unavailable!("read consumer"))?;
        while let Some(message) = messages.next().await {
            let message = message.map_err(unavailable!("read consumer"))?;
            let seq = message
                .info()
                .map_err(unavailable!("message info"))?
                .stream_sequence;
            let stored = Stored::new(
                message.subject.as_str(),
                seq,
                message.headers.as_ref(),
                message.payload.clone(),
            )?;
            visit(stored)?;
            if seq >= last_seq {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!(
            "read consumer on {subject} ended before sequence {last_seq}"
        )))
    }
}

enum IntentOutcome {
    Recorded,
    Stored(Appended),
    Retry,
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    async fn append(&self, commit: Commit) -> Result<Appended> {
        commit.validate()?;
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the JetStream event log is closed".into(),
            ));
        }
        let subject = subject_of(&commit.aggregate);
        let key = command_key(&commit.aggregate.tenant, &commit.command_id);
        let version = commit.next_version();
        let body: bytes::Bytes = serde_json::to_vec(&commit.events)
            .map_err(|e| StoreError::InvalidCommit(format!("events cannot be serialized: {e}")))?
            .into();

        for _ in 0..8 {
            let head = self
                .head_for(&commit.aggregate, &subject, commit.expected)
                .await?;
            if head.version != commit.expected.0 {
                return self.conflict(&commit, &key, head.version).await;
            }
            match self.record_intent(&key, &subject, head.seq).await? {
                IntentOutcome::Recorded => {}
                IntentOutcome::Stored(original) => return Ok(original),
                IntentOutcome::Retry => continue,
            }
            let message = PublishMessage::build()
                .payload(body.clone())
                .message_id(&key)
                .expected_last_subject_sequence(head.seq)
                .header(HEADER_FROM, commit.expected.0.to_string().as_str())
                .header(HEADER_PREV, head.seq.to_string().as_str())
                .header(HEADER_VERSION, version.0.to_string().as_str());
            let ack = match self.js.send_publish(subject.clone(), message).await {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            return match ack {
                Ok(ack) if ack.duplicate => {
                    // Another attempt of this command got there first; the ack names the original.
                    let original = self
                        .stream
                        .direct_get(ack.sequence)
                        .await
                        .map_err(unavailable!("direct get"))?;
                    Stored::from_stream_message(original)?.appended(true)
                }
                Ok(ack) => {
                    self.remember(
                        &commit.aggregate,
                        Head {
                            version: version.0,
                            seq: ack.sequence,
                        },
                    );
                    Ok(Appended {
                        aggregate: commit.aggregate,
                        version,
                        events: commit.events,
                        position: ack.sequence,
                        duplicate: false,
                    })
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    self.forget(&commit.aggregate);
                    let actual = self.fetch_head(&commit.aggregate, &subject).await?;
                    self.conflict(&commit, &key, actual.version).await
                }
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    Err(StoreError::InvalidCommit(format!(
                        "commit is too large for one NATS message: {e}"
                    )))
                }
                Err(e) => {
                    self.forget(&commit.aggregate);
                    Err(nats_err("publish")(&e))
                }
            };
        }
        Err(StoreError::Unavailable(format!(
            "command {} is being appended concurrently by other writers; retry",
            commit.command_id
        )))
    }

    async fn read(&self, aggregate: &AggregateRef, after: Version) -> Result<Vec<Event>> {
        let subject = subject_of(aggregate);
        let Some(last) = self.last_message(&subject).await? else {
            return Ok(Vec::new());
        };
        self.remember(
            aggregate,
            Head {
                version: last.version,
                seq: last.seq,
            },
        );
        if last.version <= after.0 {
            return Ok(Vec::new());
        }
        // Walk back from the last message along `Agg-Prev` (one direct get each) until a message
        // starts at or before `after`; long histories continue with a consumer from the start.
        let mut chain = vec![last];
        loop {
            let earliest = chain.last().expect("non-empty");
            if earliest.from <= after.0 || earliest.prev == 0 {
                break;
            }
            if chain.len() >= self.config.direct_read_limit.max(1) {
                break;
            }
            let prev = self
                .stream
                .direct_get(earliest.prev)
                .await
                .map_err(unavailable!("direct get"))?;
            let prev = Stored::from_stream_message(prev)?;
            if prev.aggregate != *aggregate {
                return Err(StoreError::Corrupted {
                    location: format!("stream sequence {}", earliest.seq),
                    reason: format!("{HEADER_PREV} points at a message of {}", prev.aggregate),
                });
            }
            chain.push(prev);
        }
        let mut out: Vec<Event> = Vec::new();
        let earliest = chain.last().expect("non-empty");
        if earliest.from > after.0 && earliest.prev != 0 {
            let until = earliest.prev;
            let mut visit = |m: Stored| -> Result<()> {
                if m.version > after.0 {
                    out.extend(m.events()?.into_iter().filter(|e| e.version > after));
                }
                Ok(())
            };
            self.read_with_consumer(&subject, 1, until, &mut visit)
                .await?;
        }
        for m in chain.iter().rev() {
            if m.version > after.0 {
                out.extend(m.events()?.into_iter().filter(|e| e.version > after));
            }
        }
        for (i, e) in out.iter().enumerate() {
            let want = after.0 + 1 + i as u64;
            if e.version.0 != want {
                return Err(StoreError::Corrupted {
                    location: format!("subject {subject}"),
                    reason: format!(
                        "found version {} where {want} was expected (gap in the log)",
                        e.version
                    ),
                });
            }
        }
        Ok(out)
    }

    async fn version(&self, aggregate: &AggregateRef) -> Result<Version> {
        let head = self.fetch_head(aggregate, &subject_of(aggregate)).await?;
        Ok(Version(head.version))
    }

    async fn find_command(
        &self,
        tenant: &TenantId,
        command_id: &CommandId,
    ) -> Result<Option<Appended>> {
        let key = command_key(tenant, command_id);
        match self.intent(&key).await? {
            Some((intent, _)) => self.resolve(&intent, &key).await,
            None => Ok(None),
        }
    }

    async fn list_aggregates(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(AggregateType, AggregateId)>> {
        let filter = format!("tenant.{}.>", tenant_token(tenant));
        let mut subjects = self
            .stream
            .info_with_subjects(&filter)
            .await
            .map_err(unavailable!("stream subjects"))?;
        let mut out = Vec::new();
        while let Some((subject, _count)) = subjects
            .try_next()
            .await
            .map_err(unavailable!("stream subjects"))?
        {
            let r = parse_subject(&subject)?;
            if r.tenant == *tenant {
                out.push((r.aggregate_type, r.aggregate_id));
            }
        }
        out.sort();
        Ok(out)
    }

    async fn subscribe(
        &self,
        tenant: &TenantId,
        aggregate_type: Option<&AggregateType>,
    ) -> Result<EventStream> {
        let filter = format!(
            "tenant.{}.aggregate.{}.*",
            tenant_token(tenant),
            aggregate_type.map_or("*", |t| t.as_str())
        );
        let consumer = self
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: filter,
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(unavailable!("create subscription"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(unavailable!("subscription"))?;
        let stream = messages
            .map(|message| -> Vec<Result<Event>> {
                let decoded = message
                    .map_err(unavailable!("subscription"))
                    .and_then(|message| {
                        let seq = message
                            .info()
                            .map_err(unavailable!("message info"))?
                            .stream_sequence;
                        Stored::new(
                            message.subject.as_str(),
                            seq,
                            message.headers.as_ref(),
                            message.payload.clone(),
                        )?
                        .events()
                    });
                match decoded {
                    Ok(events) => events.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                }
            })
            .flat_map(futures::stream::iter);
        Ok(stream.boxed())
    }

    async fn flush(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        self.client.flush().await.map_err(unavailable!("flush"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_single_tenant_has_its_own_token() {
        let id = AggregateId::generate();
        for tenant in ["", "t1", "a_b-c"] {
            let r = AggregateRef {
                tenant: TenantId::new(tenant).unwrap(),
                aggregate_type: AggregateType::new("bank-account").unwrap(),
                aggregate_id: id,
            };
            let s = subject_of(&r);
            assert_eq!(parse_subject(&s).unwrap(), r);
            assert!(s.starts_with(&format!("tenant.{}.aggregate.", tenant_token(&r.tenant))));
        }
        assert!(TenantId::new(SINGLE_TENANT_TOKEN).is_err());
        assert!(parse_subject("tenant.t1.aggregate.x").is_err());
        assert!(parse_subject("tenant.t.1.aggregate.x.y").is_err());
    }
}
