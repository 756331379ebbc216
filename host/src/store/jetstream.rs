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
//! # Outages
//!
//! NATS is reached through a [`Breaker`]. The client's connection events arrive the moment they
//! happen: a lost connection opens the breaker, and every operation is then refused at once with
//! [`StoreError::Unavailable`] (no request is queued in the client to be sent later), and
//! [`EventLog::health`] says so; a reconnect makes it half-open, a background task probes (a
//! direct get on the stream and one on the command bucket) and success closes it. Consecutive
//! NATS failures or timeouts ([`BreakerConfig::failure_threshold`]) open it too, and it probes
//! again after [`BreakerConfig::cooldown`]. Each operation, with all its requests, runs under
//! [`JetStreamConfig::request_timeout`]: an operation caught by an outage answers `Unavailable`
//! within that deadline. A publish it had already handed to the client may still reach the server
//! after a reconnect; the intent and the dedup window make the caller's retry with the same
//! command id return that result instead of writing twice.
//!
//! With [`ConnectMode::Retry`] the log opens lazily: [`JetStreamLog::connect_with`] returns at
//! once, the client connects with backoff (at most 1 s between attempts), and the
//! background task creates or checks the stream and the bucket once connected, retrying with
//! backoff; until then operations are refused with "NATS not connected yet (…)".
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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::consumer::{pull, push, DeliverPolicy};
use async_nats::jetstream::context::{Context, PublishErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind, RetentionPolicy, StorageType};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::breaker::{Breaker, BreakerConfig, BreakerState};
use super::{
    Appended, Commit, EventLog, Feed, FeedFilter, FeedItem, LogHealth, Result, StoreError,
};
use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, Event, TenantId, Version};

/// The subject/KV token standing for the single-tenant (empty) tenant id.
pub const SINGLE_TENANT_TOKEN: &str = "=single";

/// The subjects the stream must capture (and nothing else).
pub const STREAM_SUBJECTS: &str = "tenant.>";

/// A subject inside the stream that is never written (`=probe` is not a tenant id): the breaker's
/// probe reads it.
const PROBE_SUBJECT: &str = "tenant.=probe.aggregate.probe.probe";
/// A command-bucket key that is never written, read by the probe.
const PROBE_KEY: &str = "=probe";
/// Longest wait between two attempts to reach NATS (the client's reconnects, and opening the
/// stream and bucket on a lazy start).
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often the supervisor looks at the connection when nothing woke it.
const SUPERVISOR_TICK: Duration = Duration::from_millis(250);

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
    /// Deadline of each operation (all its NATS requests together); past it the operation fails
    /// with [`StoreError::Unavailable`] and counts as a failure for the breaker. Default 2 s.
    pub request_timeout: Duration,
    /// When the breaker opens and probes.
    pub breaker: BreakerConfig,
    /// A first subject token before `tenant.`, so that a second log on the same server (a
    /// tenant's own stream, see [`crate::store::routed`]) does not overlap the shared stream's
    /// `tenant.>`. Default none.
    pub subject_prefix: Option<String>,
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
            request_timeout: Duration::from_secs(2),
            subject_prefix: None,
            breaker: BreakerConfig::default(),
        }
    }
}

/// The opened log: the stream and the command bucket exist and were checked. Every operation of
/// [`JetStreamLog`] runs on it, under a deadline and behind the breaker.
struct Core {
    client: async_nats::Client,
    js: Context,
    stream: stream::Stream,
    commands: kv::Store,
    config: JetStreamConfig,
    heads: parking_lot::Mutex<HashMap<AggregateRef, Head>>,
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

/// Whether a KV write or publish failed because another writer wrote the key first: JetStream's "wrong
/// last sequence". async-nats 0.51 maps only error code 10071 to
/// `UpdateErrorKind::WrongLastRevision`; nats-server 2.12+ also answers 10164
/// (`JSStreamWrongLastSequenceConstantErr`, nats-server `server/errors.json`), which arrives
/// as an `Other` error, so the error text is checked as well.
pub(crate) fn wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.to_string().contains("wrong last sequence") {
            return true;
        }
        next = err.source();
    }
    false
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

/// The subject of an aggregate: `tenant.<tenant>.aggregate.<type>.<id>` (on the shared stream).
pub fn subject_of(aggregate: &AggregateRef) -> String {
    format!(
        "tenant.{}.aggregate.{}.{}",
        tenant_token(&aggregate.tenant),
        aggregate.aggregate_type,
        aggregate.aggregate_id
    )
}

/// `subject` under `prefix` (`<prefix>.<subject>`), or itself without one.
fn prefixed(prefix: Option<&str>, subject: &str) -> String {
    match prefix {
        Some(p) => format!("{p}.{subject}"),
        None => subject.to_string(),
    }
}

fn command_key(tenant: &TenantId, command_id: &CommandId) -> String {
    format!("{}.{}", tenant_token(tenant), command_id)
}

/// Whether `msg_id` is the message id of the command with key `key`: the key itself, or the key,
/// a dot and a suffix (published again after the tenant was deleted: the dedup window still holds
/// the key then, naming a message that is gone). No key is a prefix of another key plus a dot:
/// keys are `<tenant-token>.<uuid>` and neither part contains a dot.
fn is_message_id_of(msg_id: &str, key: &str) -> bool {
    msg_id
        .strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Parse `[<prefix>.]tenant.<tenant>.aggregate.<type>.<id>`.
fn parse_subject(subject: &str) -> Result<AggregateRef> {
    let corrupted = |reason: &str| StoreError::Corrupted {
        location: format!("subject {subject}"),
        reason: reason.into(),
    };
    let mut parts: Vec<&str> = subject.split('.').collect();
    if parts.len() == 6 {
        parts.remove(0); // a log's subject prefix (JetStreamConfig::subject_prefix)
    }
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

/// The servers of a `nats_url`: one URL or several separated by commas (async-nats reads a
/// single string as one URL, so the list is split here).
pub fn server_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect()
}

/// The first nats-server release whose replicated streams stop concurrent writers: before it the
/// `Nats-Expected-Last-Subject-Sequence` check ran before the Raft proposal, not when applying
/// it, so two writers on different nodes could both be acknowledged (nats-server #4320, fixed in
/// 2.9.21; measured on a 3-node loopback cluster with 2.9.10: both writers acknowledged in 120
/// of 200 races on R3, none on R1).
pub const MIN_SERVER_FOR_REPLICAS: (u64, u64, u64) = (2, 9, 21);

/// Parse the leading `major.minor.patch` of a nats-server version (`"2.10.4"`, `"v2.9.10"`,
/// `"2.11.0-beta.1"`).
pub fn parse_server_version(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.trim().trim_start_matches('v').splitn(3, '.');
    let mut next = |last: bool| {
        let p = parts.next()?;
        let digits: String = if last {
            p.chars().take_while(char::is_ascii_digit).collect()
        } else {
            p.to_string()
        };
        digits.parse::<u64>().ok()
    };
    Some((next(false)?, next(false)?, next(true)?))
}

/// Whether streams and buckets with `replicas` replicas are safe on a server of `version`.
///
/// # Errors
///
/// Why not, as a sentence for the operator: more than one replica on a server older than
/// [`MIN_SERVER_FOR_REPLICAS`] (or whose version cannot be read).
pub fn check_server_for_replicas(
    version: &str,
    replicas: usize,
) -> std::result::Result<(), String> {
    if replicas <= 1 {
        return Ok(());
    }
    let (a, b, c) = MIN_SERVER_FOR_REPLICAS;
    match parse_server_version(version) {
        Some(v) if v >= MIN_SERVER_FOR_REPLICAS => Ok(()),
        Some(_) => Err(format!(
            "{replicas} replicas need nats-server {a}.{b}.{c} or newer; this server is {version}: \
             on older servers a replicated stream does not stop concurrent writers \
             (nats-server #4320), so acknowledged events could fork. Upgrade the server, or use \
             nats_replicas: 1 on a single node"
        )),
        None => Err(format!(
            "{replicas} replicas need nats-server {a}.{b}.{c} or newer; the server's version \
             {version:?} cannot be read"
        )),
    }
}

/// An existing stream must have the configured replicas: an operator who set `nats_replicas: 3`
/// must not believe in copies that do not exist.
fn check_replicas(config: &stream::Config, replicas: usize) -> Result<()> {
    if config.num_replicas.max(1) == replicas.max(1) {
        return Ok(());
    }
    Err(StoreError::IncompatibleStream {
        stream: config.name.clone(),
        reason: format!(
            "field `num_replicas`: the stream has {} but nats_replicas is {}; change the \
             stream's replicas (e.g. `nats stream edit {} --replicas {}`) or the setting",
            config.num_replicas,
            replicas.max(1),
            config.name,
            replicas.max(1)
        ),
    })
}

/// A check of an existing stream's configuration against what the log needs.
fn check_stream(config: &stream::Config, name: &str, subjects: &str) -> Result<()> {
    let incompatible = |reason: String| {
        Err(StoreError::IncompatibleStream {
            stream: name.to_string(),
            reason,
        })
    };
    if config.subjects != [subjects] {
        return incompatible(format!(
            "field `subjects`: expected [\"{subjects}\"], found {:?}",
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

/// The event stream's consumer limit: every open event stream (and each host's state index)
/// holds one ordered consumer. nats-server 2.15 gives a stream without its own limit a default of
/// 1000 consumers (and treats -1 as that default; nats.net PR 1256), fewer than one host's
/// `max_streams` (4096 by default). A dropped stream's consumer is removed by the server 30 s
/// later (async-nats 0.51 gives ordered push consumers that inactivity threshold).
pub const EVENT_STREAM_MAX_CONSUMERS: i32 = 65_536;

impl Core {
    /// Create the stream and the command bucket if missing, check them if present.
    async fn open(client: async_nats::Client, config: JetStreamConfig) -> Result<Self> {
        check_server_for_replicas(&client.server_info().version, config.replicas).map_err(
            |reason| StoreError::IncompatibleStream {
                stream: config.stream.clone(),
                reason,
            },
        )?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![prefixed(config.subject_prefix.as_deref(), STREAM_SUBJECTS)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            duplicate_window: config.duplicate_window,
            allow_direct: true,
            num_replicas: config.replicas.max(1),
            max_consumers: EVENT_STREAM_MAX_CONSUMERS,
            ..Default::default()
        };
        let mut stream = js
            .get_or_create_stream(wanted.clone())
            .await
            .map_err(unavailable!("create stream"))?;
        check_stream(
            &stream.cached_info().config,
            &config.stream,
            &prefixed(config.subject_prefix.as_deref(), STREAM_SUBJECTS),
        )?;
        check_replicas(&stream.cached_info().config, config.replicas)?;
        let found = stream.cached_info().config.max_consumers;
        if found < EVENT_STREAM_MAX_CONSUMERS {
            // A stream created before with a lower limit, or with none (-1 or 0, which
            // nats-server since 2.15 reads as its default of 1000), would refuse event streams
            // beyond that many. Servers since 2.12 let the limit be changed.
            let mut raised = stream.cached_info().config.clone();
            raised.max_consumers = EVENT_STREAM_MAX_CONSUMERS;
            match js.update_stream(raised).await {
                Ok(_) => {
                    stream = js
                        .get_stream(&config.stream)
                        .await
                        .map_err(unavailable!("stream info"))?;
                    tracing::info!(stream = %config.stream, from = found, to = EVENT_STREAM_MAX_CONSUMERS, "raised the stream's consumer limit");
                }
                Err(e) => tracing::warn!(
                    stream = %config.stream, max_consumers = found, error = %e,
                    "cannot raise the stream's consumer limit; event streams beyond it answer 503"
                ),
            }
        }

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
        check_replicas(bucket_config, config.replicas)?;
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
        })
    }

    /// One cheap round trip to each stream the log writes to (a direct get of a subject that is
    /// never written, and of a key that is never written): both answer only when their stream
    /// leader is reachable.
    async fn probe(&self) -> Result<()> {
        self.last_message(&self.prefixed(PROBE_SUBJECT)).await?;
        self.commands
            .entry(PROBE_KEY)
            .await
            .map_err(unavailable!("probe command bucket"))?;
        Ok(())
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
            Some(m)
                if m.msg_id
                    .as_deref()
                    .is_some_and(|id| is_message_id_of(id, key)) =>
            {
                m.appended(true).map(Some)
            }
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
            // Lost a race to another writer of the same command id, and the direct get that
            // async-nats reads back with was answered by a replica that has not applied it yet.
            Err(e) if wrong_last_sequence(&e) => {}
            Err(e) => return Err(nats_err("record command intent")(&e)),
        }
        let Some((previous, revision)) = self.intent(key).await? else {
            return Ok(IntentOutcome::Retry); // deleted in between
        };
        if let Some(original) = self.resolve(&previous, key).await? {
            return Ok(IntentOutcome::Stored(original));
        }
        if previous.subject != subject {
            // The id was first used on another aggregate and its publish is not (yet) stored:
            // it may still land there (a publish delayed in the client or on the wire). Binding
            // the intent to this aggregate would hide that message from every later lookup, and a
            // retry on the first aggregate after the dedup window would run it twice.
            return Ok(IntentOutcome::OtherAggregate(parse_subject(
                &previous.subject,
            )?));
        }
        match self.commands.update(key, value, revision).await {
            Ok(_) => Ok(IntentOutcome::Recorded),
            Err(e)
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision
                    || wrong_last_sequence(&e) =>
            {
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
    /// The command id is bound to this other aggregate (its intent names it).
    OtherAggregate(AggregateRef),
}

impl Core {
    /// `subject` under this log's subject prefix.
    fn prefixed(&self, subject: &str) -> String {
        prefixed(self.config.subject_prefix.as_deref(), subject)
    }

    /// The subject of an aggregate in this log's stream.
    fn subject_of(&self, aggregate: &AggregateRef) -> String {
        self.prefixed(&subject_of(aggregate))
    }
}

/// The operations, without deadline or breaker (see [`JetStreamLog`]).
impl Core {
    async fn append(&self, commit: Commit) -> Result<Appended> {
        let subject = self.subject_of(&commit.aggregate);
        let key = command_key(&commit.aggregate.tenant, &commit.command_id);
        let version = commit.next_version();
        let body: bytes::Bytes = serde_json::to_vec(&commit.events)
            .map_err(|e| StoreError::InvalidCommit(format!("events cannot be serialized: {e}")))?
            .into();
        // The key, unless the dedup window holds it for a purged message (see below).
        let mut msg_id = key.clone();
        for attempt in 0..8u64 {
            if attempt > 0 {
                // Another writer of this command id moved first; let replicas catch up.
                tokio::time::sleep(Duration::from_millis(attempt)).await;
            }
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
                IntentOutcome::OtherAggregate(first) => {
                    return Err(StoreError::CommandIdInUse {
                        command_id: commit.command_id,
                        first: Box::new(first),
                    })
                }
            }
            let message = PublishMessage::build()
                .payload(body.clone())
                .message_id(&msg_id)
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
                    match self.stream.direct_get(ack.sequence).await {
                        Ok(original) => Stored::from_stream_message(original)?.appended(true),
                        Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                            // The original was purged (its tenant was deleted) while the dedup
                            // window still remembers its id: publish under a fresh id.
                            msg_id = format!("{key}.{}", uuid::Uuid::now_v7().simple());
                            continue;
                        }
                        Err(e) => Err(nats_err("direct get")(&e)),
                    }
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
        let subject = self.subject_of(aggregate);
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
        let head = self
            .fetch_head(aggregate, &self.subject_of(aggregate))
            .await?;
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

    /// Purge the tenant's subjects from the stream and its intents from the command bucket
    /// (both by subject filter, one request each), and forget its cached heads.
    async fn delete_tenant(&self, tenant: &TenantId) -> Result<u64> {
        let aggregates = self.list_aggregates(tenant).await?.len() as u64;
        let token = tenant_token(tenant);
        self.stream
            .purge()
            .filter(self.prefixed(&format!("tenant.{token}.>")))
            .await
            .map_err(unavailable!("purge the tenant's events"))?;
        let bucket = &self.config.command_bucket;
        self.js
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(unavailable!("command bucket info"))?
            .purge()
            .filter(format!("$KV.{bucket}.{token}.>"))
            .await
            .map_err(unavailable!("purge the tenant's command records"))?;
        self.heads.lock().retain(|a, _| a.tenant != *tenant);
        Ok(aggregates)
    }

    async fn list_aggregates(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(AggregateType, AggregateId)>> {
        let filter = self.prefixed(&format!("tenant.{}.>", tenant_token(tenant)));
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

    async fn subscribe(&self, filter: FeedFilter, after: Option<u64>) -> Result<Feed> {
        let subject = match &filter.tenant {
            Some(t) => format!(
                "tenant.{}.aggregate.{}.*",
                tenant_token(t),
                filter.aggregate_type.as_ref().map_or("*", |t| t.as_str())
            ),
            None => format!(
                "tenant.*.aggregate.{}.*",
                filter.aggregate_type.as_ref().map_or("*", |t| t.as_str())
            ),
        };
        let subject = self.prefixed(&subject);
        // An ordered consumer delivers in stream order and recreates itself after a gap, so the
        // stored commits and the new ones come through one subscription without a seam.
        let consumer = self
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: subject,
                deliver_policy: match after {
                    Some(p) => DeliverPolicy::ByStartSequence {
                        start_sequence: p.saturating_add(1),
                    },
                    None => DeliverPolicy::New,
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable!("create subscription"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(unavailable!("subscription"))?;
        let every_commit = filter.tenant.is_none();
        let stream = messages
            .map(move |message| -> Result<Option<FeedItem>> {
                let message = message.map_err(unavailable!("subscription"))?;
                let position = message
                    .info()
                    .map_err(unavailable!("message info"))?
                    .stream_sequence;
                let stored = Stored::new(
                    message.subject.as_str(),
                    position,
                    message.headers.as_ref(),
                    message.payload.clone(),
                )?;
                let events = stored.events()?;
                Ok((every_commit || !events.is_empty()).then(|| FeedItem {
                    position,
                    aggregate: stored.aggregate,
                    events: events.into(),
                }))
            })
            .filter_map(|item| std::future::ready(item.transpose()))
            // The first error ends the feed: the caller subscribes again after its last position.
            .scan(false, |failed, item| {
                if *failed {
                    return std::future::ready(None);
                }
                *failed = item.is_err();
                std::future::ready(Some(item))
            });
        Ok(stream.boxed())
    }

    async fn position(&self) -> Result<u64> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(unavailable!("stream info"))?;
        Ok(info.state.last_sequence)
    }
}

/// How [`JetStreamLog::connect_with`] treats a server that cannot be reached at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectMode {
    /// Return at once; connect, then create or check the stream and bucket, in the background
    /// with backoff. Operations are refused ([`StoreError::Unavailable`], "NATS not connected
    /// yet (…)") and [`EventLog::health`] is not ok until the log is open.
    #[default]
    Retry,
    /// Connect and open before returning, and fail if either fails.
    FailFast,
}

/// The JetStream event log. See the module docs.
///
/// Every operation runs under [`JetStreamConfig::request_timeout`] and behind a [`Breaker`]: the
/// client reports a lost connection at once and the breaker opens, so operations are refused
/// without touching NATS until a reconnect and a successful probe close it again. Consecutive
/// failures or timeouts open it too. A background task (stopped when the log is dropped) opens
/// the log on a lazy start and runs the probes.
pub struct JetStreamLog {
    shared: Arc<Shared>,
    supervisor: tokio::task::AbortHandle,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("url", &self.shared.url)
            .field("stream", &self.shared.config.stream)
            .field("breaker", &self.shared.breaker.state())
            .finish_non_exhaustive()
    }
}

impl JetStreamLog {
    /// The NATS client the log uses (it reconnects by itself); for other NATS work of the host.
    pub fn client(&self) -> async_nats::Client {
        self.shared.client.clone()
    }
}

impl Drop for JetStreamLog {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// What the log, its supervisor task and the client's event callback share.
struct Shared {
    client: async_nats::Client,
    /// The server URL (messages only).
    url: String,
    config: JetStreamConfig,
    /// Set once the stream and the bucket exist and were checked.
    core: OnceLock<Arc<Core>>,
    breaker: Arc<Breaker>,
    /// Set by `flush`: appends are refused from then on.
    closed: AtomicBool,
    /// The client's last connection error, or why opening the stream or bucket failed.
    last_error: Arc<parking_lot::Mutex<Option<String>>>,
    /// Wakes the supervisor (a reconnect).
    wake: Arc<tokio::sync::Notify>,
    /// Bumped when the log opens and when an attempt to connect or open fails
    /// ([`JetStreamLog::wait_open`] waits on it).
    progress: Arc<tokio::sync::watch::Sender<()>>,
}

/// The delay before the client's `attempt`-th consecutive reconnect: 0, then 50 ms doubling up
/// to [`MAX_RETRY_DELAY`].
fn retry_delay(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempt - 2).unwrap_or(u32::MAX).min(10);
    (Duration::from_millis(50) * 2u32.pow(exp)).min(MAX_RETRY_DELAY)
}

impl JetStreamLog {
    /// Connect to `url` and open the log, failing if either fails (see
    /// [`JetStreamLog::connect_with`] with [`ConnectMode::FailFast`]).
    ///
    /// # Errors
    ///
    /// As [`JetStreamLog::open`], plus [`StoreError::Unavailable`] when the server cannot be
    /// reached.
    pub async fn connect(url: &str, config: JetStreamConfig) -> Result<Self> {
        Self::connect_with(url, config, ConnectMode::FailFast).await
    }

    /// Connect to `url` and open the log, now ([`ConnectMode::FailFast`]) or in the background
    /// ([`ConnectMode::Retry`]). Either way the client reconnects by itself after an outage, and
    /// the log reports connection changes to its breaker the moment the client sees them.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] for a URL the client cannot parse; with
    /// [`ConnectMode::FailFast`] also as [`JetStreamLog::open`], and when the server cannot be
    /// reached.
    pub async fn connect_with(
        url: &str,
        config: JetStreamConfig,
        mode: ConnectMode,
    ) -> Result<Self> {
        let breaker = Arc::new(match mode {
            ConnectMode::FailFast => Breaker::closed(config.breaker),
            ConnectMode::Retry => {
                Breaker::open(config.breaker, format!("NATS not connected yet ({url})"))
            }
        });
        let signals = Signals::default();
        let options = {
            let (breaker, signals) = (breaker.clone(), signals.clone());
            let server = url.to_string();
            let mut options = async_nats::ConnectOptions::new()
                .request_timeout(Some(config.request_timeout))
                .reconnect_delay_callback(retry_delay)
                .event_callback(move |event| {
                    on_connection_event(&event, &server, &breaker, &signals);
                    async {}
                });
            if mode == ConnectMode::Retry {
                options = options.retry_on_initial_connect();
            }
            options
        };
        let client = options
            .connect(server_urls(url))
            .await
            .map_err(unavailable!("connect"))?;
        let core = match mode {
            ConnectMode::FailFast => Some(Core::open(client.clone(), config.clone()).await?),
            ConnectMode::Retry => None,
        };
        Ok(Self::assemble(
            client,
            url.to_string(),
            config,
            core,
            breaker,
            signals,
        ))
    }

    /// Open the log on a connected client: create the stream and the command bucket if missing,
    /// check them if present. The log does not see this client's connection events; its
    /// supervisor notices a lost connection within a quarter of a second, and failures open the
    /// breaker as usual.
    ///
    /// # Errors
    ///
    /// [`StoreError::IncompatibleStream`] naming the field when the stream (or the bucket's stream)
    /// exists with a configuration the log cannot use; [`StoreError::Unavailable`] otherwise.
    pub async fn open(client: async_nats::Client, config: JetStreamConfig) -> Result<Self> {
        let core = Core::open(client.clone(), config.clone()).await?;
        let info = client.server_info();
        let url = format!("nats://{}:{}", info.host, info.port);
        let breaker = Arc::new(Breaker::closed(config.breaker));
        Ok(Self::assemble(
            client,
            url,
            config,
            Some(core),
            breaker,
            Signals::default(),
        ))
    }

    fn assemble(
        client: async_nats::Client,
        url: String,
        config: JetStreamConfig,
        core: Option<Core>,
        breaker: Arc<Breaker>,
        signals: Signals,
    ) -> Self {
        let cell = OnceLock::new();
        if let Some(core) = core {
            let _ = cell.set(Arc::new(core));
        }
        let shared = Arc::new(Shared {
            client,
            url,
            config,
            core: cell,
            breaker,
            closed: AtomicBool::new(false),
            last_error: signals.last_error,
            wake: signals.wake,
            progress: signals.progress,
        });
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&shared))).abort_handle();
        Self { shared, supervisor }
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &JetStreamConfig {
        &self.shared.config
    }

    /// The breaker in front of NATS (to observe its transitions).
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.shared.breaker
    }

    /// True once the stream and the command bucket exist and were checked.
    pub fn is_open(&self) -> bool {
        self.shared.core.get().is_some()
    }

    /// Wait until the log is open, an attempt to connect or open has failed, or `timeout`
    /// passed; true when open. A lazy start uses it so that a host whose NATS is up is ready
    /// when it starts listening, and one whose NATS is down starts at once.
    pub async fn wait_open(&self, timeout: Duration) -> bool {
        let mut progress = self.shared.progress.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.is_open() {
                return true;
            }
            if self.shared.last_error.lock().is_some() {
                return false;
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.is_open(),
            }
        }
    }

    /// The opened log, if operations may run now; otherwise why not.
    fn core(&self) -> Result<Arc<Core>> {
        let health = self.health();
        if !health.ok {
            return Err(StoreError::Unavailable(health.reason.unwrap_or_default()));
        }
        self.shared
            .core
            .get()
            .cloned()
            .ok_or_else(|| StoreError::Unavailable("the JetStream event log is not open".into()))
    }

    /// Run one operation under the deadline and report its outcome to the breaker. Only NATS
    /// errors and timeouts count as failures: a conflict or a missing message is an answer.
    async fn guarded<T>(
        &self,
        what: &'static str,
        operation: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let breaker = &self.shared.breaker;
        let epoch = breaker.epoch();
        let deadline = self.shared.config.request_timeout;
        let result = match tokio::time::timeout(deadline, operation).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "nats: {what}: no answer within {} ms",
                deadline.as_millis()
            ))),
        };
        match &result {
            // NATS failed or did not answer (every such error says `nats: …`); the log's own
            // refusals (e.g. too many concurrent attempts at one command) are not NATS failures.
            Err(StoreError::Unavailable(reason)) if reason.starts_with("nats: ") => {
                breaker.failure(reason.as_str(), epoch, Instant::now());
            }
            Err(StoreError::Unavailable(_)) => {}
            _ => breaker.success(),
        }
        result
    }
}

/// What the client's event callback shares with the log.
#[derive(Clone)]
struct Signals {
    last_error: Arc<parking_lot::Mutex<Option<String>>>,
    wake: Arc<tokio::sync::Notify>,
    progress: Arc<tokio::sync::watch::Sender<()>>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            last_error: Arc::new(parking_lot::Mutex::new(None)),
            wake: Arc::new(tokio::sync::Notify::new()),
            progress: Arc::new(tokio::sync::watch::channel(()).0),
        }
    }
}

/// The client's connection events, as they happen: the breaker opens on a lost connection and
/// goes half-open on a reconnect (the supervisor then probes).
fn on_connection_event(event: &async_nats::Event, url: &str, breaker: &Breaker, signals: &Signals) {
    use async_nats::Event;
    match event {
        Event::Disconnected => {
            breaker.disconnected(format!("NATS connection lost ({url})"), Instant::now());
            tracing::warn!(
                url,
                "NATS connection lost; refusing commands until it is back"
            );
        }
        Event::Closed => {
            breaker.disconnected(format!("NATS connection closed ({url})"), Instant::now());
        }
        Event::Connected => {
            *signals.last_error.lock() = None;
            breaker.reconnected(Instant::now());
            signals.wake.notify_one();
        }
        Event::ClientError(e) => {
            let message = e.to_string();
            let message = message.strip_prefix("nats: ").unwrap_or(&message);
            *signals.last_error.lock() = Some(format!("{url}: {message}"));
            signals.progress.send_replace(());
        }
        _ => {}
    }
}

/// The background task of a [`JetStreamLog`]: opens the log once NATS is reachable (retrying with
/// backoff), keeps the breaker in step with the client's connection state, and runs the breaker's
/// probes. Ends when the log is dropped.
async fn supervise(shared: std::sync::Weak<Shared>) {
    let mut open_backoff = Duration::from_millis(100);
    loop {
        let Some(s) = shared.upgrade() else { return };
        let wake = s.wake.clone();
        let mut pause = SUPERVISOR_TICK;
        let connected = s.client.connection_state() == async_nats::connection::State::Connected;
        let now = Instant::now();
        // The event callback is the fast path; this catches clients opened without it.
        match (connected, s.breaker.connected()) {
            (false, true) => s
                .breaker
                .disconnected(format!("NATS connection lost ({})", s.url), now),
            (true, false) => s.breaker.reconnected(now),
            _ => {}
        }
        if s.core.get().is_none() {
            if connected {
                let config = s.config.clone();
                let deadline = config.request_timeout;
                let opened = match tokio::time::timeout(
                    deadline,
                    Core::open(s.client.clone(), config),
                )
                .await
                {
                    Ok(opened) => opened,
                    Err(_) => Err(StoreError::Unavailable(format!(
                        "nats: open: no answer within {} ms",
                        deadline.as_millis()
                    ))),
                };
                match opened {
                    Ok(core) => {
                        let _ = s.core.set(Arc::new(core));
                        *s.last_error.lock() = None;
                        s.progress.send_replace(());
                        s.breaker.reconnected(Instant::now());
                        s.breaker.probe_succeeded(Instant::now());
                        tracing::info!(
                            url = s.url,
                            stream = s.config.stream,
                            "JetStream event log open"
                        );
                        open_backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(url = s.url, error = %e, retry_in_ms = open_backoff.as_millis() as u64, "cannot open the JetStream event log yet");
                        *s.last_error.lock() = Some(e.to_string());
                        s.progress.send_replace(());
                        pause = open_backoff;
                        open_backoff = (open_backoff * 2).min(MAX_RETRY_DELAY * 5);
                    }
                }
            }
        } else if s.breaker.probe_due(Instant::now()) {
            let core = s.core.get().cloned().expect("open");
            let deadline = s.config.request_timeout;
            let probed = match tokio::time::timeout(deadline, core.probe()).await {
                Ok(probed) => probed,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "nats: probe: no answer within {} ms",
                    deadline.as_millis()
                ))),
            };
            match probed {
                Ok(()) => {
                    s.breaker.probe_succeeded(Instant::now());
                    tracing::info!(url = s.url, "NATS is back; taking commands again");
                }
                Err(e) => {
                    tracing::warn!(url = s.url, error = %e, "NATS probe failed; breaker stays open");
                    s.breaker.probe_failed(e.to_string(), Instant::now());
                }
            }
        }
        drop(s);
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[async_trait::async_trait]
impl EventLog for JetStreamLog {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    fn health(&self) -> LogHealth {
        let s = &self.shared;
        if s.core.get().is_none() {
            let detail = s
                .last_error
                .lock()
                .clone()
                .unwrap_or_else(|| format!("connecting to {}", s.url));
            let reason = if s.breaker.connected() {
                format!("NATS connected, JetStream event log not open yet ({detail})")
            } else {
                format!("NATS not connected yet ({detail})")
            };
            return LogHealth::failing("connecting", reason);
        }
        match s.breaker.state() {
            BreakerState::Closed => LogHealth::healthy(),
            BreakerState::Open => LogHealth::failing(
                "open",
                s.breaker
                    .reason()
                    .unwrap_or_else(|| format!("NATS unavailable ({})", s.url)),
            ),
            BreakerState::HalfOpen => LogHealth::failing(
                "half-open",
                format!(
                    "NATS reconnected ({}); probing before taking commands",
                    s.url
                ),
            ),
        }
    }

    async fn append(&self, commit: Commit) -> Result<Appended> {
        commit.validate()?;
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the JetStream event log is closed".into(),
            ));
        }
        let core = self.core()?;
        self.guarded("append", core.append(commit)).await
    }

    async fn read(&self, aggregate: &AggregateRef, after: Version) -> Result<Vec<Event>> {
        let core = self.core()?;
        self.guarded("read", core.read(aggregate, after)).await
    }

    async fn version(&self, aggregate: &AggregateRef) -> Result<Version> {
        let core = self.core()?;
        self.guarded("version", core.version(aggregate)).await
    }

    async fn find_command(
        &self,
        tenant: &TenantId,
        command_id: &CommandId,
    ) -> Result<Option<Appended>> {
        let core = self.core()?;
        self.guarded("command lookup", core.find_command(tenant, command_id))
            .await
    }

    async fn list_aggregates(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(AggregateType, AggregateId)>> {
        let core = self.core()?;
        self.guarded("list aggregates", core.list_aggregates(tenant))
            .await
    }

    async fn subscribe(&self, filter: FeedFilter, after: Option<u64>) -> Result<Feed> {
        let core = self.core()?;
        self.guarded("subscribe", core.subscribe(filter, after))
            .await
    }

    async fn position(&self) -> Result<u64> {
        let core = self.core()?;
        self.guarded("log position", core.position()).await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<u64> {
        let core = self.core()?;
        self.guarded("delete tenant", core.delete_tenant(tenant))
            .await
    }

    async fn flush(&self) -> Result<()> {
        self.shared.closed.store(true, Ordering::Release);
        if self.shared.core.get().is_none() || !self.shared.breaker.allows() {
            // Every append that returned Ok was acknowledged by the server; what the client may
            // still buffer was answered as unavailable, so nothing acknowledged depends on it.
            tracing::warn!(
                url = self.shared.url,
                "NATS unavailable at shutdown; nothing to flush that was acknowledged"
            );
            return Ok(());
        }
        let deadline = self.shared.config.request_timeout;
        match tokio::time::timeout(deadline, self.shared.client.flush()).await {
            Ok(flushed) => flushed.map_err(unavailable!("flush")),
            Err(_) => Err(StoreError::Unavailable(format!(
                "nats: flush: no answer within {} ms",
                deadline.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_belongs_to_its_command_key_only() {
        let key = "acme.0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert!(is_message_id_of(key, key));
        assert!(is_message_id_of(&format!("{key}.0190a1b2c3d47e5f"), key));
        assert!(!is_message_id_of(&format!("{key}x"), key));
        assert!(!is_message_id_of("acme.0190a1b2", key));
        assert!(!is_message_id_of(
            "acme-2.0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            key
        ));
    }

    #[test]
    fn a_nats_url_may_list_several_servers() {
        assert_eq!(server_urls("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            server_urls("nats://a:4222, nats://b:4222,,nats://c:4222"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
    }

    #[test]
    fn replicated_streams_are_refused_on_servers_older_than_2_9_21() {
        assert_eq!(parse_server_version("2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_server_version("v2.11.0-beta.1"), Some((2, 11, 0)));
        assert_eq!(parse_server_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_server_version("nightly"), None);
        // One replica is safe everywhere (measured: 0 forks in 200 races on R1 with 2.9.10).
        assert!(check_server_for_replicas("2.9.10", 1).is_ok());
        let e = check_server_for_replicas("2.9.10", 3).unwrap_err();
        assert!(e.contains("2.9.21") && e.contains("#4320"), "{e}");
        assert!(check_server_for_replicas("2.9.20", 3).is_err());
        assert!(check_server_for_replicas("2.9.21", 3).is_ok());
        assert!(check_server_for_replicas("2.10.0", 3).is_ok());
        assert!(check_server_for_replicas("2.15.1", 5).is_ok());
        assert!(check_server_for_replicas("", 3)
            .unwrap_err()
            .contains("cannot be read"));
    }

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
