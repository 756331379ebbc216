//! Cluster mode: the control plane in NATS JetStream, so that several hosts on one JetStream
//! behave as one system.
//!
//! - The **manifest** lives in the KV bucket [`MANIFEST_BUCKET`], one key per aggregate type
//!   whose value is the type's [`TypeEntry`] as JSON (active component, version, limits,
//!   isolation, snapshot interval and policy, history). The bucket is the source of truth; each
//!   host's `manifest.yaml` is a cache, and a seed the first host imports into an empty bucket.
//! - **Component blobs** live in the Object Store [`COMPONENT_STORE`], named by their hash
//!   (`sha256:<hex>`), written once. A host's blob directory and precompiled artifacts are
//!   caches: a fetched blob is checked against its name before use, and a missing or damaged
//!   local copy is fetched again.
//! - Every host **watches** the manifest bucket (resuming from the last revision it saw, with
//!   backoff) and **reconciles** against it periodically, installing each change with the
//!   registry's atomic swap: commands in flight finish on the entry they resolved.
//! - A **deploy is two-phase**: the receiving host checks and compiles the component, puts the
//!   blob, asks every live host on [`PREPARE_SUBJECT`] to fetch and precompile it and to check
//!   the entry's limits, waits for their acknowledgements (at most `deploy_ack_timeout`), then
//!   activates it with a compare-and-set on the type's key — so concurrent deploys of one type
//!   end in one history with no version number used twice. Activation policy: a host that
//!   answers with an error refuses the change (nothing is activated, the answer names it and
//!   why); hosts that do not answer in time are named in the answer and catch up from the
//!   watch (a host that is down must not block deploys). Rollbacks and limits changes go
//!   through the same prepare phase.
//! - **Membership**: each host puts a [`Member`] record under its id in [`HOSTS_BUCKET`] every
//!   heartbeat; a record older than `host_ttl` is not live (the bucket's `max_age` removes it),
//!   and a clean shutdown deletes it at once.
//!
//! Facts this builds on, from the async-nats 0.51 sources: KV watches are ordered push consumers
//! that async-nats re-creates after missed heartbeats and that end on errors (their server-side
//! consumer expires 30 s after its subscriber is gone); an empty bucket never signals "caught
//! up", so catching up is a read of every key, not a wait for the watch; the Object Store checks
//! an object's digest only at the end of a read. Liveness compares each host's heartbeat time
//! with the reader's clock: hosts need synchronised clocks (NTP) within `host_ttl`.

mod forward;
pub mod placement;

pub use self::forward::{FORWARDED_HEADER, NOT_OWNER_HEADER};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv, object_store, stream};
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::registry::{Deployed, Manifest, Registry, RegistryError, TypeEntry};
use crate::runtime::Limits;
use crate::store::jetstream::check_server_for_replicas;
use crate::types::{AggregateType, ComponentHash};

/// KV bucket of the manifest: key = aggregate type, value = [`TypeEntry`] as JSON.
pub const MANIFEST_BUCKET: &str = "AGGREGATE_MANIFEST";
/// Object Store of component blobs, named `sha256:<hex>`.
pub const COMPONENT_STORE: &str = "AGGREGATE_COMPONENTS";
/// KV bucket of membership: key = host id, value = [`Member`] as JSON.
pub const HOSTS_BUCKET: &str = "AGGREGATE_HOSTS";
/// Core NATS subject of the prepare phase of a deploy ([`Prepare`] → [`PrepareAck`]).
pub const PREPARE_SUBJECT: &str = "aggregate.cluster.prepare";
/// KV bucket of explicit placements: key = tenant token (`_` for the single tenant), value =
/// the host id the tenant is pinned to.
pub const PLACEMENT_BUCKET: &str = "TENANT_PLACEMENT";
/// The key of the single (unnamed) tenant in [`PLACEMENT_BUCKET`].
pub const SINGLE_TENANT_KEY: &str = crate::types::RESERVED_TENANT;

/// The subject on which host `host_id` answers requests forwarded by other hosts.
pub fn forward_subject(host_id: &str) -> String {
    format!("aggregate.host.{host_id}.forward")
}

/// Revisions of each key the manifest bucket keeps (the type's own history of components is in
/// its entry).
const MANIFEST_HISTORY: i64 = 16;
/// Attempts of a compare-and-set on a manifest key before a deploy gives up.
const CAS_ATTEMPTS: usize = 32;
/// Longest pause between two attempts to (re)open the buckets or (re)start the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of cluster mode (from [`crate::config::Config`]).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This host's id (the membership key).
    pub host_id: String,
    /// Replicas of the buckets and the object store when they are created.
    pub replicas: usize,
    /// Longest wait for other hosts' acknowledgements of a deploy.
    pub deploy_ack_timeout: Duration,
    /// How often membership is renewed.
    pub heartbeat_interval: Duration,
    /// Age past which a membership record is not live.
    pub host_ttl: Duration,
    /// How often the manifest bucket is checked for changes the watch missed.
    pub reconcile_interval: Duration,
    /// Deadline of each NATS request.
    pub request_timeout: Duration,
    /// This host's gateway URL, as others should use it.
    pub gateway_url: String,
    /// This host's admin URL.
    pub admin_url: String,
    /// Largest component blob fetched, in bytes.
    pub max_component_bytes: usize,
    /// The tenants this host may own (`None`: any).
    pub tenant_range: Option<placement::TenantRange>,
}

/// Errors of cluster operations.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS or a bucket cannot be reached now (retry later).
    #[error("cluster control plane unavailable: {0}")]
    Unavailable(String),
    /// The registry refused (bad component, unknown type, no earlier version…).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A manifest entry in the bucket cannot be read.
    #[error("manifest bucket entry `{key}`: {reason}")]
    BadEntry {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A component the manifest names is not in the component store.
    #[error("component {0} is not in the component store {COMPONENT_STORE}")]
    MissingBlob(ComponentHash),
    /// Live hosts refused the change (their answers name why); nothing was activated.
    #[error("not activated: {} refused it ({})", .0.keys().cloned().collect::<Vec<_>>().join(", "), .0.values().cloned().collect::<Vec<_>>().join("; "))]
    Refused(BTreeMap<String, String>),
    /// The entry changed while the operation ran (e.g. two rollbacks at once); nothing was
    /// activated, retry.
    #[error("the manifest entry of `{0}` changed meanwhile; nothing was activated, retry")]
    Conflict(AggregateType),
    /// This host has released as many tenants as it may; resume some first.
    #[error("this host has released {0} tenants, the most it may; resume one first")]
    TooManyReleased(usize),
}

fn unavailable<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> ClusterError + '_ {
    move |e| ClusterError::Unavailable(format!("{what}: {e}"))
}

/// A host's membership record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The host id.
    pub host_id: String,
    /// Gateway URL.
    pub gateway: String,
    /// Admin URL.
    pub admin: String,
    /// The host's software version.
    pub version: String,
    /// When the record was written, in milliseconds since the Unix epoch (the writer's clock).
    pub heartbeat_at_ms: u64,
    /// When the host started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Highest manifest bucket revision the host has applied.
    pub manifest_revision: u64,
    /// Whether the host has caught up with the manifest bucket since it started.
    pub caught_up: bool,
    /// Aggregate type → the component the host serves for it.
    pub components: BTreeMap<AggregateType, ComponentHash>,
    /// Manifest keys this host could not install, and why.
    #[serde(default)]
    pub install_errors: BTreeMap<String, String>,
    /// Random per process start: tells two processes that use one host id apart.
    #[serde(default)]
    pub instance: String,
    /// The tenants the host may own (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_range: Option<placement::TenantRange>,
    /// A draining host owns no tenant (it is handing its tenants over before a restart).
    #[serde(default)]
    pub draining: bool,
    /// Tenants (their [`PLACEMENT_BUCKET`] keys) this host has handed over with a drain of one
    /// tenant: it owns none of them, whatever the hash or a pin says. At most
    /// [`MAX_RELEASED_TENANTS`].
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub released: BTreeSet<String>,
}

/// How many tenants one host may have released at once (`POST /admin/drain` of one tenant in
/// cluster mode): the set travels in every heartbeat, so it is bounded.
pub const MAX_RELEASED_TENANTS: usize = 1024;

/// A host as the cluster view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    /// The record.
    #[serde(flatten)]
    pub member: Member,
    /// Whether its record is younger than `host_ttl`.
    pub live: bool,
    /// Milliseconds since its last heartbeat (by this host's clock).
    pub last_seen_ms: u64,
}

/// The prepare message of a deploy: fetch and precompile this component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepare {
    /// The host that received the deploy (it does not answer itself).
    pub from_host: String,
    /// The aggregate type.
    pub aggregate_type: AggregateType,
    /// The component to fetch and precompile.
    pub component: ComponentHash,
    /// The limits the entry will have: the host checks it can honour them.
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// A host's answer to [`Prepare`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareAck {
    /// Who answers.
    pub host_id: String,
    /// True when the component is fetched and compiled.
    pub ok: bool,
    /// Why not, when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Which hosts acknowledged a deploy's prepare phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Acks {
    /// Live hosts when the deploy started, this one included.
    pub hosts: Vec<String>,
    /// Hosts that fetched and compiled the component (this one included).
    pub acknowledged: Vec<String>,
    /// Hosts that did not answer within the timeout.
    pub not_acknowledged: Vec<String>,
    /// Hosts that answered with an error, and the error.
    pub refused: BTreeMap<String, String>,
}

/// The outcome of a deploy, rollback or limits change in cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterDeployed {
    /// What the registry reports.
    pub deployed: Deployed,
    /// Revision of the manifest key after the change (or the current one when unchanged).
    pub revision: u64,
    /// The prepare phase's acknowledgements (empty when nothing had to be prepared).
    pub acks: Acks,
}

/// Where the control plane stands, for `/ready`, `/admin/cluster` and the heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHealth {
    /// True when the buckets are open, the host has caught up with the manifest, and no other
    /// process uses its host id. Entries it could not install are listed, not counted.
    pub ok: bool,
    /// `connecting`, `catching-up`, `caught-up`.
    pub state: &'static str,
    /// Why not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Highest manifest revision applied.
    pub manifest_revision: u64,
    /// Aggregate types whose bucket entry could not be installed here, and why.
    pub install_errors: BTreeMap<String, String>,
}

/// The opened buckets.
struct Parts {
    manifest: kv::Store,
    hosts: kv::Store,
    components: object_store::ObjectStore,
    placement: kv::Store,
}

/// What placement is computed from: the live hosts and the pins, as of the last heartbeat.
#[derive(Debug, Default)]
struct View {
    /// Live hosts' records.
    live: Vec<Member>,
    /// Tenant key → pinned host id.
    pins: HashMap<String, String>,
    /// Whether this host's own record was among the live ones.
    includes_me: bool,
}

/// (host id, draining, range, released tenants) of every live host, sorted, and the pins.
type PlacementInputs<'a> = (
    Vec<(&'a str, bool, Option<String>, &'a BTreeSet<String>)>,
    BTreeMap<&'a str, &'a str>,
);

impl View {
    /// The owner of `tenant` under this view.
    fn owner_of(&self, tenant: &crate::types::TenantId) -> Option<String> {
        let key = Cluster::placement_key(tenant);
        // A host that released this tenant counts as draining for it.
        let candidates: Vec<placement::Candidate<'_>> = self
            .live
            .iter()
            .map(|m| placement::Candidate {
                host_id: &m.host_id,
                draining: m.draining || m.released.contains(&key),
                range: m.tenant_range.as_ref(),
            })
            .collect();
        placement::owner(
            tenant.as_str(),
            &candidates,
            self.pins.get(&key).map(String::as_str),
        )
        .map(str::to_string)
    }

    /// What placement depends on: host ids, whether they drain, their ranges, and the pins.
    fn placement_inputs(&self) -> PlacementInputs<'_> {
        let mut hosts: Vec<(&str, bool, Option<String>, &BTreeSet<String>)> = self
            .live
            .iter()
            .map(|m| {
                (
                    m.host_id.as_str(),
                    m.draining,
                    m.tenant_range.map(|r| r.to_string()),
                    &m.released,
                )
            })
            .collect();
        hosts.sort();
        let pins = self
            .pins
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        (hosts, pins)
    }
}

#[derive(Default)]
struct Progress {
    /// Revision applied per key (including deletes).
    applied: HashMap<String, u64>,
    /// Highest revision processed (the watch resumes after it).
    revision: u64,
    /// The bucket's last sequence at the last full reconciliation.
    reconciled_at: u64,
    caught_up: bool,
    last_error: Option<String>,
    install_errors: BTreeMap<String, String>,
    /// Set when another process heart-beats under this host id.
    duplicate: Option<String>,
}

/// The cluster control plane of one host. Cheap to share (`Arc`).
pub struct Cluster {
    config: ClusterConfig,
    registry: Arc<Registry>,
    client: async_nats::Client,
    parts: tokio::sync::OnceCell<Parts>,
    progress: Mutex<Progress>,
    /// Serialises installs so that a key's revisions are applied in order.
    apply_lock: tokio::sync::Mutex<()>,
    started_at_ms: u64,
    instance: String,
    view: parking_lot::RwLock<Arc<View>>,
    /// Views that placed tenants differently, oldest first, with when each became current.
    history: Mutex<std::collections::VecDeque<(std::time::Instant, Arc<View>)>>,
    /// When this host's last heartbeat was stored (its membership lease starts there).
    last_heartbeat: Mutex<Option<std::time::Instant>>,
    draining: std::sync::atomic::AtomicBool,
    /// Placement keys of the tenants this host has released (see [`Member::released`]).
    released: Mutex<BTreeSet<String>>,
    /// Largest linear memory this host allows a guest (limits above it are refused).
    max_memory_bytes: usize,
    shutdown: tokio::sync::watch::Sender<bool>,
    changed: tokio::sync::watch::Sender<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn object_name(hash: &ComponentHash) -> String {
    hash.to_string()
}

/// Create (or open) a KV bucket with the layout of `create_key_value`, through stream calls that
/// nats-server 2.9 answers (async-nats' `create_key_value` queries account info in a shape 2.9
/// does not).
async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let mut created = js
        .get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.into()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            max_age,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(unavailable(bucket))?;
    let info = created
        .info()
        .await
        .map_err(unavailable(bucket))?
        .config
        .clone();
    check_replicas(&info.name, info.num_replicas, replicas)?;
    if info.max_age != max_age {
        tracing::warn!(
            bucket,
            existing = ?info.max_age,
            configured = ?max_age,
            "the bucket exists with another max_age; the existing one applies"
        );
    }
    js.get_key_value(bucket).await.map_err(unavailable(bucket))
}

/// The keys of a KV bucket and its stream's last sequence, from one stream-info request with a
/// subject filter (no consumer, unlike `kv::Store::keys`).
async fn bucket_keys(store: &kv::Store, what: &str) -> Result<(u64, Vec<String>), ClusterError> {
    let prefix = format!("$KV.{}.", store.name);
    let mut subjects = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(unavailable(what))?;
    let last = subjects.info.state.last_sequence;
    let mut keys = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(unavailable(what))?;
        if let Some(key) = subject.strip_prefix(&prefix) {
            keys.push(key.to_string());
        }
    }
    Ok((last, keys))
}

/// An existing stream must have the replicas configured: otherwise an operator who set
/// `nats_replicas: 3` would believe in copies that do not exist.
fn check_replicas(stream: &str, existing: usize, configured: usize) -> Result<(), ClusterError> {
    if existing.max(1) == configured.max(1) {
        return Ok(());
    }
    Err(ClusterError::Unavailable(format!(
        "stream {stream} has {existing} replica(s) but nats_replicas is {configured}: change the \
         stream's replicas (e.g. `nats stream edit {stream} --replicas {configured}`) or the setting"
    )))
}

impl Cluster {
    /// Connect to NATS (`url`: one or more comma-separated server URLs) and start the control
    /// plane in the background: open the buckets (with backoff until NATS answers), import
    /// `seed` into an empty manifest bucket, catch up with the manifest, then watch it, renew
    /// membership and answer prepare requests. Waits up to `request_timeout` for the first
    /// catch-up so a host whose NATS is up is ready when it listens.
    ///
    /// # Errors
    ///
    /// Only a URL the NATS client refuses; an unreachable server is retried in the background.
    pub async fn start(
        url: &str,
        config: ClusterConfig,
        registry: Arc<Registry>,
        seed: Manifest,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("aggregate-host cluster {}", config.host_id))
            .request_timeout(Some(config.request_timeout))
            .retry_on_initial_connect()
            .connect(crate::store::jetstream::server_urls(url))
            .await
            .map_err(unavailable("connect"))?;
        let max_memory_bytes = registry.max_memory_bytes();
        let cluster = Arc::new(Self {
            config,
            registry,
            client,
            parts: tokio::sync::OnceCell::new(),
            progress: Mutex::new(Progress::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            started_at_ms: now_ms(),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            view: parking_lot::RwLock::new(Arc::new(View::default())),
            history: Mutex::new(std::collections::VecDeque::new()),
            last_heartbeat: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            released: Mutex::new(BTreeSet::new()),
            max_memory_bytes,
            shutdown: tokio::sync::watch::channel(false).0,
            changed: tokio::sync::watch::channel(0).0,
        });
        tokio::spawn(cluster.clone().run(seed));
        let mut changed = cluster.changed.subscribe();
        let deadline = tokio::time::Instant::now() + cluster.config.request_timeout;
        while !cluster.progress.lock().caught_up {
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        Ok(cluster)
    }

    /// This host's id.
    pub fn host_id(&self) -> &str {
        &self.config.host_id
    }

    /// Where the control plane stands (no I/O).
    pub fn health(&self) -> ClusterHealth {
        let p = self.progress.lock();
        let (state, reason) = if self.parts.get().is_none() {
            (
                "connecting",
                Some(p.last_error.clone().unwrap_or_else(|| {
                    "the cluster buckets are not open yet (NATS not reachable?)".into()
                })),
            )
        } else if !self.view.read().includes_me {
            (
                "announcing",
                Some("this host is not in the membership view yet".into()),
            )
        } else if !p.caught_up {
            (
                "catching-up",
                Some("not caught up with the manifest bucket yet".into()),
            )
        } else {
            ("caught-up", None)
        };
        // An entry this host cannot install is reported (here, in `/admin/cluster` and in the
        // membership record) but does not make the host unready: it still serves every other
        // type, and one bad entry must not take every host of the cluster out of service.
        let reason = reason.or_else(|| p.duplicate.clone());
        ClusterHealth {
            ok: reason.is_none(),
            state,
            reason,
            manifest_revision: p.revision,
            install_errors: p.install_errors.clone(),
        }
    }

    /// Stop the background tasks and remove this host's membership record (a clean shutdown
    /// leaves the view at once).
    pub async fn leave(&self) {
        self.shutdown.send_replace(true);
        if let Some(parts) = self.parts.get() {
            let purge = async {
                // Remove the record only while it is this process's (not a namesake's).
                let entry = parts.hosts.entry(self.config.host_id.as_str()).await?;
                let ours = entry.as_ref().is_some_and(|e| {
                    serde_json::from_slice::<Member>(&e.value)
                        .is_ok_and(|m| m.instance == self.instance)
                });
                if ours {
                    parts.hosts.purge(&self.config.host_id).await?;
                }
                Ok::<_, async_nats::Error>(())
            };
            match tokio::time::timeout(self.config.request_timeout, purge).await {
                Ok(Ok(())) => tracing::info!(host_id = %self.config.host_id, "left the cluster"),
                Ok(Err(e)) => tracing::warn!(error = %e, "could not remove the membership record"),
                Err(_) => tracing::warn!("removing the membership record timed out"),
            }
        }
        let _ = self.client.flush().await;
    }

    fn parts(&self) -> Result<&Parts, ClusterError> {
        self.parts.get().ok_or_else(|| {
            ClusterError::Unavailable(
                self.health()
                    .reason
                    .unwrap_or_else(|| "the cluster buckets are not open".into()),
            )
        })
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Sleep `d`, or less when shutting down; false when shutting down.
    async fn pause(&self, d: Duration) -> bool {
        let mut stop = self.shutdown.subscribe();
        if *stop.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.stopping(),
            _ = stop.changed() => false,
        }
    }

    async fn run(self: Arc<Self>, seed: Manifest) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.open().await {
                Ok(parts) => {
                    let _ = self.parts.set(parts);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster buckets not open yet; retrying");
                    self.progress.lock().last_error = Some(e.to_string());
                    self.changed.send_modify(|n| *n += 1);
                    if !self.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if let Err(e) = self.import_seed(&seed).await {
            tracing::warn!(error = %e, "could not import the manifest seed");
        }
        tokio::spawn(self.clone().heartbeats());
        tokio::spawn(self.clone().answer_prepares());
        // The first reconciliation is the catch-up; then the watch carries changes, and the
        // periodic reconciliation catches what it missed.
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = self.reconcile(true).await {
            tracing::warn!(error = %e, "catching up with the manifest bucket failed; retrying");
            self.progress.lock().last_error = Some(e.to_string());
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        {
            let mut p = self.progress.lock();
            p.caught_up = true;
            p.last_error = None;
        }
        self.changed.send_modify(|n| *n += 1);
        tracing::info!(host_id = %self.config.host_id, revision = self.progress.lock().revision, "caught up with the cluster manifest");
        tokio::spawn(self.clone().reconcile_periodically());
        self.watch().await;
    }

    async fn open(&self) -> Result<Parts, ClusterError> {
        // The client connects in the background (`retry_on_initial_connect`): wait for it a
        // moment rather than fail and back off while it is about to be up.
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        while self.client.connection_state() != async_nats::connection::State::Connected
            && tokio::time::Instant::now() < deadline
            && !self.stopping()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let info = self.client.server_info();
        if info.server_id.is_empty() {
            return Err(ClusterError::Unavailable("NATS not connected yet".into()));
        }
        check_server_for_replicas(&info.version, self.config.replicas)
            .map_err(ClusterError::Unavailable)?;
        let mut js = jetstream::new(self.client.clone());
        js.set_timeout(self.config.request_timeout);
        let manifest = kv_bucket(
            &js,
            MANIFEST_BUCKET,
            "aggregate host: the cluster manifest (one key per aggregate type)",
            MANIFEST_HISTORY,
            Duration::ZERO,
            self.config.replicas,
        )
        .await?;
        let hosts = kv_bucket(
            &js,
            HOSTS_BUCKET,
            "aggregate host: cluster membership (heartbeats)",
            1,
            self.config.host_ttl,
            self.config.replicas,
        )
        .await?;
        let placement = kv_bucket(
            &js,
            PLACEMENT_BUCKET,
            "aggregate host: tenant pins (tenant -> host id)",
            1,
            Duration::ZERO,
            self.config.replicas,
        )
        .await?;
        let components = match js.get_object_store(COMPONENT_STORE).await {
            Ok(s) => s,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: COMPONENT_STORE.into(),
                    description: Some("aggregate host: component blobs by SHA-256".into()),
                    storage: stream::StorageType::File,
                    num_replicas: self.config.replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(unavailable(COMPONENT_STORE))?,
        };
        {
            let name = format!("OBJ_{COMPONENT_STORE}");
            let info = js
                .get_stream(&name)
                .await
                .map_err(unavailable(COMPONENT_STORE))?
                .get_info()
                .await
                .map_err(unavailable(COMPONENT_STORE))?;
            check_replicas(&name, info.config.num_replicas, self.config.replicas)?;
        }
        tracing::info!(
            host_id = %self.config.host_id,
            server = %info.version,
            replicas = self.config.replicas,
            "cluster buckets open"
        );
        Ok(Parts {
            manifest,
            hosts,
            components,
            placement,
        })
    }

    /// Import the local manifest file into an empty bucket (the first host of a cluster that
    /// ran alone before). Entries whose blob is not here are skipped with a warning.
    async fn import_seed(&self, seed: &Manifest) -> Result<(), ClusterError> {
        if seed.aggregates.is_empty() {
            return Ok(());
        }
        let parts = self.parts()?;
        let info = parts
            .manifest
            .stream
            .get_info()
            .await
            .map_err(unavailable("manifest bucket info"))?;
        if info.state.messages > 0 {
            return Ok(());
        }
        for (ty, entry) in &seed.aggregates {
            let mut blobs_ok = true;
            for hash in entry.history.iter().chain([&entry.component]) {
                match self.registry.blobs().get(hash) {
                    Ok(bytes) => self.put_blob(hash, bytes).await?,
                    Err(e) => {
                        tracing::warn!(aggregate_type = %ty, component = %hash, error = %e, "seed blob missing");
                        blobs_ok &= hash != &entry.component;
                    }
                }
            }
            if !blobs_ok {
                continue;
            }
            let value = serde_json::to_vec(entry).expect("entry serializes");
            match parts.manifest.create(ty.as_str(), value.into()).await {
                Ok(_) => {
                    tracing::info!(aggregate_type = %ty, component = %entry.component, "imported from the manifest seed")
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable("import seed")(&e)),
            }
        }
        Ok(())
    }

    /// Put a blob into the object store unless it is there.
    async fn put_blob(&self, hash: &ComponentHash, bytes: Vec<u8>) -> Result<(), ClusterError> {
        let parts = self.parts()?;
        let name = object_name(hash);
        match parts.components.info(&name).await {
            Ok(info) if !info.deleted => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {}
            Err(e) => return Err(unavailable("component store info")(&e)),
        }
        let mut reader = std::io::Cursor::new(bytes);
        parts
            .components
            .put(name.as_str(), &mut reader)
            .await
            .map_err(unavailable("component store put"))?;
        Ok(())
    }

    /// Fetch a blob from the object store, check it against its name, and write it over the
    /// local copy.
    async fn fetch_blob(&self, hash: &ComponentHash) -> Result<(), ClusterError> {
        let parts = self.parts()?;
        let mut object = match parts.components.get(object_name(hash)).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => {
                return Err(ClusterError::MissingBlob(*hash))
            }
            Err(e) => return Err(unavailable("component store get")(e)),
        };
        if object.info.size > self.config.max_component_bytes {
            return Err(RegistryError::TooLarge {
                size: object.info.size,
                limit: self.config.max_component_bytes,
            }
            .into());
        }
        let mut bytes = Vec::new();
        // Read to the end: the store checks its digest only there.
        (&mut object)
            .take(self.config.max_component_bytes as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(unavailable("component store read"))?;
        if bytes.len() > self.config.max_component_bytes {
            return Err(RegistryError::TooLarge {
                size: bytes.len(),
                limit: self.config.max_component_bytes,
            }
            .into());
        }
        let registry = self.registry.clone();
        let hash = *hash;
        tokio::task::spawn_blocking(move || registry.blobs().repair(&hash, &bytes))
            .await
            .map_err(|e| ClusterError::Unavailable(format!("worker task: {e}")))??;
        tracing::info!(component = %hash, "fetched from the component store");
        Ok(())
    }

    /// Make `hash` loaded in the runtime: from the local blob when it is sound, else fetched.
    async fn ensure_loaded(
        &self,
        ty: &AggregateType,
        hash: &ComponentHash,
    ) -> Result<(), ClusterError> {
        let load = |registry: Arc<Registry>, ty: AggregateType, hash: ComponentHash| async move {
            tokio::task::spawn_blocking(move || registry.load_component(&ty, &hash))
                .await
                .map_err(|e| ClusterError::Unavailable(format!("worker task: {e}")))
        };
        match load(self.registry.clone(), ty.clone(), *hash).await? {
            Ok(()) => Ok(()),
            Err(e @ (RegistryError::UnknownComponent(_) | RegistryError::CorruptBlob { .. })) => {
                if matches!(e, RegistryError::CorruptBlob { .. }) {
                    tracing::warn!(aggregate_type = %ty, component = %hash, error = %e, "local blob damaged; fetching it again");
                } else {
                    tracing::info!(aggregate_type = %ty, component = %hash, "component not in the local cache; fetching it");
                }
                self.fetch_blob(hash).await?;
                Ok(load(self.registry.clone(), ty.clone(), *hash).await??)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Install one manifest bucket entry unless an equal or newer revision of its key was;
    /// true when it was installed now.
    async fn apply(&self, entry: kv::Entry) -> bool {
        let _guard = self.apply_lock.lock().await;
        let key = entry.key.clone();
        {
            let mut p = self.progress.lock();
            p.revision = p.revision.max(entry.revision);
            if p.applied.get(&key).is_some_and(|r| *r >= entry.revision) {
                return false;
            }
        }
        let outcome = self.install(&entry).await;
        let mut p = self.progress.lock();
        let installed = match outcome {
            Ok(()) => {
                p.applied.insert(key.clone(), entry.revision);
                p.install_errors.remove(&key);
                true
            }
            Err(e) => {
                if p.install_errors.get(&key) != Some(&e.to_string()) {
                    tracing::warn!(key, revision = entry.revision, error = %e, "could not install a manifest entry");
                }
                p.install_errors.insert(key, e.to_string());
                false
            }
        };
        drop(p);
        self.changed.send_modify(|n| *n += 1);
        installed
    }

    async fn install(&self, entry: &kv::Entry) -> Result<(), ClusterError> {
        let bad = |reason: String| ClusterError::BadEntry {
            key: entry.key.clone(),
            reason,
        };
        let ty = AggregateType::new(&entry.key).map_err(|e| bad(e.to_string()))?;
        let value = match entry.operation {
            kv::Operation::Put => {
                let e: TypeEntry =
                    serde_json::from_slice(&entry.value).map_err(|e| bad(e.to_string()))?;
                self.ensure_loaded(&ty, &e.component).await?;
                Some(e)
            }
            kv::Operation::Delete | kv::Operation::Purge => None,
        };
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.install(&ty, value))
            .await
            .map_err(|e| ClusterError::Unavailable(format!("worker task: {e}")))??;
        Ok(())
    }

    /// Read every key of the manifest bucket and install what is newer than what was applied.
    /// Without `force`, nothing is read when the bucket's last sequence has not moved since the
    /// last reconciliation (one stream-info request, no consumer).
    async fn reconcile(&self, force: bool) -> Result<usize, ClusterError> {
        let parts = self.parts()?;
        let (last, keys) = bucket_keys(&parts.manifest, "manifest bucket").await?;
        let settled = {
            let p = self.progress.lock();
            last == p.reconciled_at && p.install_errors.is_empty()
        };
        if !force && settled {
            return Ok(0);
        }
        let mut installed = 0;
        for key in keys {
            let entry = parts
                .manifest
                .entry(key.as_str())
                .await
                .map_err(unavailable("manifest bucket entry"))?;
            if let Some(entry) = entry {
                let newer = self
                    .progress
                    .lock()
                    .applied
                    .get(&key)
                    .is_none_or(|r| *r < entry.revision);
                if newer && self.apply(entry).await {
                    installed += 1;
                }
            }
        }
        let mut p = self.progress.lock();
        p.reconciled_at = last;
        p.revision = p.revision.max(last);
        Ok(installed)
    }

    /// `POST /admin/reload` in cluster mode: read the whole manifest bucket again. Returns the
    /// number of entries installed.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`].
    pub async fn reload(&self) -> Result<usize, ClusterError> {
        self.reconcile(true).await
    }

    async fn reconcile_periodically(self: Arc<Self>) {
        while self.pause(self.config.reconcile_interval).await {
            match self.reconcile(false).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    installed = n,
                    "reconciliation installed changes the watch had not delivered"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation with the manifest bucket failed")
                }
            }
        }
    }

    /// Watch the manifest bucket from the last revision seen; on an error or the end of the
    /// watch, start again after a pause that doubles up to [`MAX_BACKOFF`] (one watch at a time:
    /// a dropped watch's consumer is removed by the server).
    async fn watch(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut stop = self.shutdown.subscribe();
        loop {
            let Ok(parts) = self.parts() else { return };
            let from = self.progress.lock().revision + 1;
            match parts.manifest.watch_all_from_revision(from).await {
                Ok(mut watch) => {
                    tracing::debug!(from, "watching the manifest bucket");
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            item = watch.next() => match item {
                                Some(Ok(entry)) => {
                                    backoff = Duration::from_millis(100);
                                    self.apply(entry).await;
                                }
                                Some(Err(e)) => {
                                    tracing::warn!(error = %e, "the manifest watch failed; resuming");
                                    break;
                                }
                                None => {
                                    tracing::warn!("the manifest watch ended; resuming");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not watch the manifest bucket"),
            }
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn member(&self) -> Member {
        let p = self.progress.lock();
        Member {
            host_id: self.config.host_id.clone(),
            gateway: self.config.gateway_url.clone(),
            admin: self.config.admin_url.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            heartbeat_at_ms: now_ms(),
            started_at_ms: self.started_at_ms,
            manifest_revision: p.revision,
            caught_up: p.caught_up,
            components: self
                .registry
                .manifest()
                .aggregates
                .iter()
                .map(|(t, e)| (t.clone(), e.component))
                .collect(),
            install_errors: p.install_errors.clone(),
            instance: self.instance.clone(),
            tenant_range: self.config.tenant_range,
            draining: self.draining.load(std::sync::atomic::Ordering::Relaxed),
            released: self.released.lock().clone(),
        }
    }

    async fn heartbeats(self: Arc<Self>) {
        // Revision of our last put: a later record of another instance under our id means a
        // second process uses this host id.
        let mut last_put = 0;
        loop {
            if let Ok(parts) = self.parts() {
                if last_put > 0 {
                    if let Ok(Some(entry)) = parts.hosts.entry(self.config.host_id.as_str()).await {
                        let other = serde_json::from_slice::<Member>(&entry.value)
                            .ok()
                            .filter(|m| m.instance != self.instance);
                        if let (true, Some(other)) = (entry.revision > last_put, other) {
                            let reason = format!(
                                "host id `{}` is also used by another process (admin {}); give every host its own host_id",
                                self.config.host_id, other.admin
                            );
                            tracing::error!("{reason}");
                            self.progress.lock().duplicate = Some(reason);
                        }
                    }
                }
                if self.lease().is_err() {
                    // The lease ran out (a long pause, NATS away): other hosts may own this
                    // host's tenants now. Forget the view, so that rejoining hands tenants over
                    // like a host joining.
                    self.set_view(View::default());
                }
                let value = serde_json::to_vec(&self.member()).expect("member serializes");
                match parts
                    .hosts
                    .put(self.config.host_id.as_str(), value.into())
                    .await
                {
                    Ok(revision) => {
                        last_put = revision;
                        *self.last_heartbeat.lock() = Some(std::time::Instant::now());
                    }
                    Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                }
                if let Err(e) = self.refresh_view().await {
                    tracing::warn!(error = %e, "could not read membership and placement");
                }
            }
            // The view is read twice per heartbeat, so a host that left is noticed at most half
            // an interval after its record expired.
            if !self.pause(self.config.heartbeat_interval / 2).await {
                return;
            }
            if let Err(e) = self.refresh_view().await {
                tracing::debug!(error = %e, "could not read membership and placement");
            }
            if !self.pause(self.config.heartbeat_interval / 2).await {
                return;
            }
        }
    }

    /// Read the live hosts and the pins again (every heartbeat).
    async fn refresh_view(&self) -> Result<(), ClusterError> {
        let parts = self.parts()?;
        let live: Vec<Member> = self
            .members()
            .await?
            .into_iter()
            .filter(|m| m.live)
            .map(|m| m.member)
            .collect();
        let (_, keys) = bucket_keys(&parts.placement, "placement bucket").await?;
        let mut pins = HashMap::new();
        for key in keys {
            if let Some(host) = parts
                .placement
                .get(key.as_str())
                .await
                .map_err(unavailable("placement entry"))?
            {
                pins.insert(key, String::from_utf8_lossy(&host).trim().to_string());
            }
        }
        let includes_me = live.iter().any(|m| m.instance == self.instance);
        self.set_view(View {
            live,
            pins,
            includes_me,
        });
        Ok(())
    }

    /// Make `view` current; when it places tenants differently from the current one, keep the
    /// current one in the recent history [`Cluster::may_write`] looks at.
    fn set_view(&self, view: View) {
        let view = Arc::new(view);
        let now = std::time::Instant::now();
        let mut history = self.history.lock();
        let differs = history
            .back()
            .is_none_or(|(_, last)| last.placement_inputs() != view.placement_inputs());
        if differs {
            history.push_back((now, view.clone()));
            // Keep the views that were current within the hand-over delay, and the one before.
            let delay = self.handover_delay();
            while history.len() > 1 && history[1].0 + delay < now {
                history.pop_front();
            }
        } else if let Some(last) = history.back_mut() {
            last.1 = view.clone();
        }
        *self.view.write() = view;
    }

    /// How long a host waits before it writes for a tenant it newly owns while the previous
    /// owner is alive (a pin, a drain, a host joining): the previous owner notices at its next
    /// view refresh (at most a heartbeat interval later, plus one for the refresh times not
    /// being aligned) and its commands in flight end within the event log's request deadline.
    pub fn handover_delay(&self) -> Duration {
        self.config.heartbeat_interval * 2 + self.config.request_timeout
    }

    /// Whether this host may write for `tenant` now: its membership lease holds, it owns the
    /// tenant, and it owned it under every view of the last [`Cluster::handover_delay`] — or
    /// the owner it took the tenant over from is gone (its lease has run out, so it cannot
    /// write). Checked when a command arrives and again right before its events are appended.
    ///
    /// # Errors
    ///
    /// Why not (for the log and the 503 answer).
    pub fn may_write(&self, tenant: &crate::types::TenantId) -> Result<(), String> {
        self.lease()?;
        let me = self.config.host_id.as_str();
        let current = self.view.read().clone();
        let owner = current.owner_of(tenant);
        if owner.as_deref() != Some(me) {
            return Err(match owner {
                Some(o) => format!("tenant `{tenant}` is owned by host `{o}`"),
                None => format!("no live host can own tenant `{tenant}` now"),
            });
        }
        let now = std::time::Instant::now();
        let delay = self.handover_delay();
        let history = self.history.lock();
        for (i, (since, view)) in history.iter().enumerate() {
            // Only views current at some time within the last `delay`.
            let until = history.get(i + 1).map(|(t, _)| *t);
            if until.is_some_and(|u| u + delay < now) {
                continue;
            }
            let before = view.owner_of(tenant);
            let handed_over_by_a_live_host = match &before {
                Some(o) if o == me => false,
                Some(o) => current.live.iter().any(|m| &m.host_id == o),
                // Unknown (this host was not in the view): assume a live previous owner.
                None => true,
            };
            if handed_over_by_a_live_host {
                let ready_at = until.unwrap_or(*since) + delay;
                let wait = ready_at.saturating_duration_since(now);
                return Err(format!(
                    "tenant `{tenant}` is being handed over to this host from {}; it may write in {} ms",
                    before.as_deref().unwrap_or("an unknown owner"),
                    wait.as_millis()
                ));
            }
        }
        Ok(())
    }

    /// Read the live hosts and the pins again now (`POST /admin/reload`), rather than at the
    /// next heartbeat.
    ///
    /// # Errors
    ///
    /// Unavailable.
    pub async fn reload_placement(&self) -> Result<(), ClusterError> {
        self.refresh_view().await
    }

    /// The key of `tenant` in [`PLACEMENT_BUCKET`].
    pub fn placement_key(tenant: &crate::types::TenantId) -> String {
        if tenant.is_single() {
            SINGLE_TENANT_KEY.to_string()
        } else {
            tenant.as_str().to_string()
        }
    }

    /// The host that owns `tenant` now, by this host's view (live, non-draining hosts whose
    /// range holds the tenant; a pin wins; rendezvous hashing otherwise). `None` when no host
    /// can own it (or the view is not read yet).
    pub fn owner_of(&self, tenant: &crate::types::TenantId) -> Option<String> {
        self.view.read().owner_of(tenant)
    }

    /// Whether this host may write now: its last stored heartbeat is recent enough that no
    /// other host can have taken its tenants over before a command started now ends. Other
    /// hosts treat it as gone `host_ttl` after that heartbeat; it stops `request_timeout +
    /// heartbeat_interval` before that, the longest a command's append may take plus one
    /// missed heartbeat of margin.
    ///
    /// # Errors
    ///
    /// Why not, for the log and the 503 answer.
    pub fn lease(&self) -> Result<(), String> {
        let Some(at) = *self.last_heartbeat.lock() else {
            return Err("this host has not announced itself yet".into());
        };
        let margin = self.config.request_timeout + self.config.heartbeat_interval;
        let lease = self.config.host_ttl.saturating_sub(margin);
        let age = at.elapsed();
        if age < lease {
            Ok(())
        } else {
            Err(format!(
                "this host's membership is {} ms old (lease {} ms): it may no longer write",
                age.as_millis(),
                lease.as_millis()
            ))
        }
    }

    /// Drain (or undrain) the whole host: it owns no tenant while draining, so the others take
    /// its tenants over. The change is announced at once.
    pub async fn set_draining(&self, draining: bool) -> Result<(), ClusterError> {
        self.draining
            .store(draining, std::sync::atomic::Ordering::Relaxed);
        self.announce().await
    }

    /// Release `tenant` (`release: false`: take it back): while released this host owns it
    /// under no hash or pin, so the next owner takes it over; the change is announced at once.
    /// Returns whether it was released before. Not kept across a restart, like a host drain.
    ///
    /// # Errors
    ///
    /// [`ClusterError::TooManyReleased`] beyond [`MAX_RELEASED_TENANTS`] (nothing changes);
    /// [`ClusterError::Unavailable`] when the membership record cannot be written (the release
    /// still holds here and is announced with the next heartbeat).
    pub async fn release(
        &self,
        tenant: &crate::types::TenantId,
        release: bool,
    ) -> Result<bool, ClusterError> {
        let key = Self::placement_key(tenant);
        let was = {
            let mut released = self.released.lock();
            let was = released.contains(&key);
            if release && !was && released.len() >= MAX_RELEASED_TENANTS {
                return Err(ClusterError::TooManyReleased(MAX_RELEASED_TENANTS));
            }
            if release {
                released.insert(key);
            } else {
                released.remove(&key);
            }
            was
        };
        self.announce().await?;
        Ok(was)
    }

    /// Whether this host has released `tenant` ([`Cluster::release`]).
    pub fn is_released(&self, tenant: &crate::types::TenantId) -> bool {
        self.released.lock().contains(&Self::placement_key(tenant))
    }

    /// Write this host's membership record now and read the view again.
    async fn announce(&self) -> Result<(), ClusterError> {
        let parts = self.parts()?;
        let value = serde_json::to_vec(&self.member()).expect("member serializes");
        parts
            .hosts
            .put(self.config.host_id.as_str(), value.into())
            .await
            .map_err(unavailable("membership put"))?;
        self.refresh_view().await
    }

    /// Whether the whole host is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pin `tenant` to `host_id` (`None`: remove the pin). Every host sees it at its next
    /// heartbeat; this one at once.
    ///
    /// # Errors
    ///
    /// Unavailable.
    pub async fn pin(
        &self,
        tenant: &crate::types::TenantId,
        host_id: Option<&str>,
    ) -> Result<(), ClusterError> {
        let parts = self.parts()?;
        let key = Self::placement_key(tenant);
        match host_id {
            Some(h) => {
                parts
                    .placement
                    .put(key.as_str(), h.to_string().into())
                    .await
                    .map_err(unavailable("placement put"))?;
            }
            None => parts
                .placement
                .purge(key.as_str())
                .await
                .map_err(unavailable("placement purge"))?,
        }
        self.refresh_view().await
    }

    /// The pins as this host read them last: tenant key → host id.
    pub fn pins(&self) -> BTreeMap<String, String> {
        self.view
            .read()
            .pins
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every membership record, live or not (the bucket's `max_age` removes old ones).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`].
    pub async fn members(&self) -> Result<Vec<MemberView>, ClusterError> {
        let parts = self.parts()?;
        let (_, keys) = bucket_keys(&parts.hosts, "membership bucket").await?;
        let now = now_ms();
        let ttl = self.config.host_ttl.as_millis() as u64;
        let mut out = Vec::new();
        for key in keys {
            let Some(value) = parts
                .hosts
                .get(key.as_str())
                .await
                .map_err(unavailable("membership entry"))?
            else {
                continue;
            };
            match serde_json::from_slice::<Member>(&value) {
                Ok(member) if member.host_id != key => {
                    tracing::warn!(
                        key,
                        host_id = member.host_id,
                        "membership record under another host's key; ignored"
                    )
                }
                Ok(member) => {
                    let last_seen_ms = now.saturating_sub(member.heartbeat_at_ms);
                    out.push(MemberView {
                        live: last_seen_ms <= ttl,
                        last_seen_ms,
                        member,
                    });
                }
                Err(e) => tracing::warn!(key, error = %e, "unreadable membership record"),
            }
        }
        out.sort_by(|a, b| a.member.host_id.cmp(&b.member.host_id));
        Ok(out)
    }

    async fn answer_prepares(self: Arc<Self>) {
        let mut stop = self.shutdown.subscribe();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.client.subscribe(PREPARE_SUBJECT).await {
                Ok(mut sub) => loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        msg = sub.next() => match msg {
                            Some(msg) => {
                                tokio::spawn(self.clone().answer_prepare(msg));
                            }
                            None => break,
                        }
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to prepare requests"),
            }
            if !self.pause(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn answer_prepare(self: Arc<Self>, msg: async_nats::Message) {
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let prepare: Prepare = match serde_json::from_slice(&msg.payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable prepare request");
                return;
            }
        };
        if prepare.from_host == self.config.host_id {
            return;
        }
        let outcome = match prepare
            .limits
            .as_ref()
            .map(|l| l.validate(self.max_memory_bytes))
        {
            Some(Err(reason)) => Err(ClusterError::Registry(RegistryError::InvalidEntry {
                aggregate_type: prepare.aggregate_type.clone(),
                reason: format!("limits: {reason} (on host {})", self.config.host_id),
            })),
            _ => {
                self.ensure_loaded(&prepare.aggregate_type, &prepare.component)
                    .await
            }
        };
        let ack = PrepareAck {
            host_id: self.config.host_id.clone(),
            ok: outcome.is_ok(),
            error: outcome.err().map(|e| e.to_string()),
        };
        tracing::info!(aggregate_type = %prepare.aggregate_type, component = %prepare.component, ok = ack.ok, "prepared a deploy");
        let body = serde_json::to_vec(&ack).expect("ack serializes");
        if let Err(e) = self.client.publish(reply, body.into()).await {
            tracing::warn!(error = %e, "could not answer a prepare request");
        }
    }

    /// Ask every other live host to fetch and precompile `hash`; wait for their answers up to
    /// `deploy_ack_timeout`.
    /// Hosts that answer with an error refuse the change: [`ClusterError::Refused`] (nothing
    /// is activated). Hosts that do not answer in time are named in
    /// [`Acks::not_acknowledged`] and catch up from the watch.
    async fn gather_acks(
        &self,
        ty: &AggregateType,
        hash: &ComponentHash,
        limits: &Limits,
    ) -> Result<Acks, ClusterError> {
        let me = self.config.host_id.clone();
        let mut waiting: Vec<String> = self
            .members()
            .await?
            .into_iter()
            .filter(|m| m.live && m.member.host_id != me)
            .map(|m| m.member.host_id)
            .collect();
        let mut acks = Acks {
            hosts: std::iter::once(me.clone())
                .chain(waiting.iter().cloned())
                .collect(),
            acknowledged: vec![me.clone()],
            ..Acks::default()
        };
        if waiting.is_empty() {
            return Ok(acks);
        }
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(unavailable("subscribe for acknowledgements"))?;
        let prepare = Prepare {
            from_host: me,
            aggregate_type: ty.clone(),
            component: *hash,
            limits: Some(limits.clone()),
        };
        self.client
            .publish_with_reply(
                PREPARE_SUBJECT,
                inbox,
                serde_json::to_vec(&prepare).expect("serializes").into(),
            )
            .await
            .map_err(unavailable("publish prepare"))?;
        let deadline = tokio::time::Instant::now() + self.config.deploy_ack_timeout;
        while !waiting.is_empty() {
            let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                break;
            };
            let Ok(ack) = serde_json::from_slice::<PrepareAck>(&msg.payload) else {
                continue;
            };
            // Answers from hosts that were not live when the deploy started still count.
            waiting.retain(|h| *h != ack.host_id);
            if !acks.hosts.contains(&ack.host_id) {
                acks.hosts.push(ack.host_id.clone());
            }
            if ack.ok {
                acks.acknowledged.push(ack.host_id);
            } else {
                acks.refused
                    .insert(ack.host_id, ack.error.unwrap_or_default());
            }
        }
        let _ = sub.unsubscribe().await;
        acks.not_acknowledged = waiting;
        if !acks.refused.is_empty() {
            tracing::warn!(aggregate_type = %ty, component = %hash, refused = ?acks.refused, "hosts refused the change; not activated");
            return Err(ClusterError::Refused(acks.refused));
        }
        Ok(acks)
    }

    /// The type's entry in the bucket and the key's revision (`None` revision: never written).
    ///
    /// # Errors
    ///
    /// [`ClusterError::BadEntry`] when the value is not an entry (the revision is in it).
    async fn read_entry(
        &self,
        ty: &AggregateType,
    ) -> Result<(Option<TypeEntry>, Option<u64>), ClusterError> {
        let parts = self.parts()?;
        let Some(entry) = parts
            .manifest
            .entry(ty.as_str())
            .await
            .map_err(unavailable("manifest bucket entry"))?
        else {
            return Ok((None, None));
        };
        match entry.operation {
            kv::Operation::Put => {
                let e =
                    serde_json::from_slice(&entry.value).map_err(|e| ClusterError::BadEntry {
                        key: ty.to_string(),
                        reason: format!("{e} (revision {})", entry.revision),
                    })?;
                Ok((Some(e), Some(entry.revision)))
            }
            _ => Ok((None, Some(entry.revision))),
        }
    }

    /// The revision of the type's key, whatever its value.
    async fn revision_of(&self, ty: &AggregateType) -> Result<Option<u64>, ClusterError> {
        Ok(self
            .parts()?
            .manifest
            .entry(ty.as_str())
            .await
            .map_err(unavailable("manifest bucket entry"))?
            .map(|e| e.revision))
    }

    /// Compare-and-set the type's key: read it, let `change` compute the next entry, write it
    /// only if nobody wrote in between (else read again). Installs the result here at once.
    /// With `replace_unreadable`, an entry that cannot be read counts as none (a deploy
    /// replaces it); otherwise it is an error.
    async fn change_entry(
        &self,
        ty: &AggregateType,
        replace_unreadable: bool,
        change: impl Fn(&mut Manifest) -> Result<Deployed, ClusterError>,
    ) -> Result<(Deployed, u64), ClusterError> {
        let parts = self.parts()?;
        for attempt in 0..CAS_ATTEMPTS {
            let (current, revision) = match self.read_entry(ty).await {
                Ok(read) => read,
                Err(ClusterError::BadEntry { key, reason }) if replace_unreadable => {
                    tracing::warn!(key, reason, "replacing an unreadable manifest entry");
                    (None, self.revision_of(ty).await?)
                }
                Err(e) => return Err(e),
            };
            let mut m = Manifest::default();
            if let Some(e) = current {
                m.aggregates.insert(ty.clone(), e);
            }
            let outcome = change(&mut m)?;
            if !outcome.changed {
                return Ok((outcome, revision.unwrap_or(0)));
            }
            let value: bytes::Bytes = serde_json::to_vec(&m.aggregates[ty])
                .expect("entry serializes")
                .into();
            let written = match revision {
                Some(r) => match parts.manifest.update(ty.as_str(), value, r).await {
                    Ok(rev) => Some(rev),
                    Err(e)
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision
                            || crate::store::jetstream::wrong_last_sequence(&e) =>
                    {
                        None
                    }
                    Err(e) => return Err(unavailable("manifest update")(&e)),
                },
                None => match parts.manifest.create(ty.as_str(), value).await {
                    Ok(rev) => Some(rev),
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
                    // async-nats 0.51 reports a create that lost a race to another writer as an
                    // `Other` error ("wrong last sequence") when its read-back of the key finds
                    // nothing: the bucket allows direct gets, which a replica that has not yet
                    // applied the other writer's create answers with "not found". Either way
                    // another host created the key first: read it again (after a short pause, so
                    // the replica catches up).
                    Err(e) => match self.revision_of(ty).await? {
                        Some(_) => None,
                        None if crate::store::jetstream::wrong_last_sequence(&e) => {
                            tokio::time::sleep(Duration::from_millis(5 * (attempt as u64 + 1)))
                                .await;
                            None
                        }
                        None => return Err(unavailable("manifest create")(&e)),
                    },
                },
            };
            if let Some(rev) = written {
                if let Some(entry) = parts
                    .manifest
                    .entry(ty.as_str())
                    .await
                    .map_err(unavailable("manifest bucket entry"))?
                {
                    self.apply(entry).await;
                }
                return Ok((outcome, rev));
            }
            tracing::info!(aggregate_type = %ty, "another host changed the entry first; reading it again");
        }
        Err(ClusterError::Unavailable(format!(
            "the manifest entry of `{ty}` kept changing ({CAS_ATTEMPTS} attempts)"
        )))
    }

    /// Deploy `bytes` for `ty` across the cluster: check and compile here, put the blob, have
    /// every live host fetch and precompile it, then activate it in the manifest bucket.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Registry`] when the component or limits are refused (nothing changes),
    /// [`ClusterError::Refused`] when a live host refuses it, [`ClusterError::Unavailable`]
    /// when NATS cannot be reached.
    pub async fn deploy(
        &self,
        ty: &AggregateType,
        bytes: Vec<u8>,
        limits: Option<Limits>,
    ) -> Result<ClusterDeployed, ClusterError> {
        self.parts()?;
        let registry = self.registry.clone();
        let (prepare_ty, prepare_limits) = (ty.clone(), limits.clone());
        let (hash, bytes) = tokio::task::spawn_blocking(move || {
            registry
                .prepare(&prepare_ty, &bytes, prepare_limits.as_ref())
                .map(|h| (h, bytes))
        })
        .await
        .map_err(|e| ClusterError::Unavailable(format!("worker task: {e}")))??;
        // Always make sure the blob is in the store, also when nothing else changes: this
        // repairs an entry whose blob went missing.
        self.put_blob(&hash, bytes).await?;
        let current = match self.read_entry(ty).await {
            Ok((current, revision)) => current.map(|e| (e, revision.unwrap_or(0))),
            Err(ClusterError::BadEntry { .. }) => None,
            Err(e) => return Err(e),
        };
        if let Some((e, revision)) = &current {
            if e.component == hash && limits.as_ref().is_none_or(|l| *l == e.limits) {
                return Ok(ClusterDeployed {
                    deployed: Deployed {
                        component: hash,
                        version: e.version,
                        changed: false,
                    },
                    revision: *revision,
                    acks: Acks::default(),
                });
            }
        }
        let target_limits = limits
            .clone()
            .or_else(|| current.as_ref().map(|(e, _)| e.limits.clone()))
            .unwrap_or_default();
        let acks = self.gather_acks(ty, &hash, &target_limits).await?;
        let every = self.registry.default_snapshot_every();
        let (deployed, revision) = self
            .change_entry(ty, true, |m| {
                Ok(m.activate(ty, hash, limits.clone(), every))
            })
            .await?;
        tracing::info!(aggregate_type = %ty, component = %hash, version = deployed.version, revision, acknowledged = acks.acknowledged.len(), not_acknowledged = ?acks.not_acknowledged, "deployed across the cluster");
        Ok(ClusterDeployed {
            deployed,
            revision,
            acks,
        })
    }

    /// Roll `ty` back to its previous component across the cluster (prepared on every live host
    /// first, like a deploy).
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownType`], [`RegistryError::NoEarlierVersion`],
    /// [`ClusterError::Conflict`] when the entry changed during the rollback (e.g. a second
    /// rollback: only one of them rolls back), [`ClusterError::Refused`], or unavailable.
    pub async fn rollback(&self, ty: &AggregateType) -> Result<ClusterDeployed, ClusterError> {
        let (current, _) = self.read_entry(ty).await?;
        let mut m = Manifest::default();
        let limits = current
            .as_ref()
            .map(|e| e.limits.clone())
            .unwrap_or_default();
        if let Some(e) = current {
            m.aggregates.insert(ty.clone(), e);
        }
        let previous = m.previous(ty)?;
        self.ensure_loaded(ty, &previous).await?;
        let acks = self.gather_acks(ty, &previous, &limits).await?;
        let (deployed, revision) = self
            .change_entry(ty, false, |m| {
                // What was prepared must be what is activated: a second rollback that ran
                // meanwhile must not make this one undo another version.
                if m.previous(ty).is_ok_and(|p| p == previous) {
                    Ok(m.roll_back(ty)?)
                } else {
                    Err(ClusterError::Conflict(ty.clone()))
                }
            })
            .await?;
        tracing::info!(aggregate_type = %ty, component = %deployed.component, version = deployed.version, "rolled back across the cluster");
        Ok(ClusterDeployed {
            deployed,
            revision,
            acks,
        })
    }

    /// Change `ty`'s limits across the cluster: `change` (a JSON object of the limits to
    /// change) is merged into the entry's limits in the bucket, every live host checks it can
    /// honour them, then the entry is compare-and-set (the component and version stay).
    /// Returns the limits and the key's revision.
    ///
    /// # Errors
    ///
    /// [`RegistryError::UnknownType`], [`RegistryError::InvalidEntry`] (bad or out-of-range
    /// limits, naming the field), [`ClusterError::Refused`] when a live host cannot honour
    /// them, [`ClusterError::BadEntry`], or unavailable.
    pub async fn change_limits(
        &self,
        ty: &AggregateType,
        change: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(Limits, u64), ClusterError> {
        let (current, _) = self.read_entry(ty).await?;
        let current = current.ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
        let limits = merge_limits(ty, &current.limits, change, self.max_memory_bytes)?;
        self.gather_acks(ty, &current.component, &limits).await?;
        let (_, revision) = self
            .change_entry(ty, false, |m| {
                let e = m
                    .aggregates
                    .get_mut(ty)
                    .ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
                let changed = e.limits != limits;
                e.limits = limits.clone();
                Ok(Deployed {
                    component: e.component,
                    version: e.version,
                    changed,
                })
            })
            .await?;
        Ok((limits, revision))
    }
}

/// `current` with the fields of `change` (a JSON object of limits) replaced, checked against
/// `max_memory_bytes`.
///
/// # Errors
///
/// [`RegistryError::InvalidEntry`] naming the field.
pub fn merge_limits(
    ty: &AggregateType,
    current: &Limits,
    change: &serde_json::Map<String, serde_json::Value>,
    max_memory_bytes: usize,
) -> Result<Limits, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidEntry {
        aggregate_type: ty.clone(),
        reason: format!("limits: {reason}"),
    };
    let mut merged = serde_json::to_value(current).expect("limits serialize");
    merged
        .as_object_mut()
        .expect("limits serialize as an object")
        .extend(change.clone());
    let limits: Limits = serde_json::from_value(merged).map_err(|e| invalid(e.to_string()))?;
    limits.validate(max_memory_bytes).map_err(invalid)?;
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let ty = AggregateType::new("bank-account").unwrap();
        let p = Prepare {
            from_host: "a".into(),
            aggregate_type: ty.clone(),
            component: ComponentHash::of(b"x"),
            limits: Some(Limits::default()),
        };
        let back: Prepare = serde_json::from_slice(&serde_json::to_vec(&p).unwrap()).unwrap();
        assert_eq!(
            (back.from_host, back.aggregate_type, back.component),
            (p.from_host, ty.clone(), p.component)
        );
        let m = Member {
            host_id: "a".into(),
            gateway: "http://a:8080".into(),
            admin: "http://a:8081".into(),
            version: "0.1.0".into(),
            heartbeat_at_ms: 5,
            started_at_ms: 1,
            manifest_revision: 3,
            caught_up: true,
            components: [(ty.clone(), ComponentHash::of(b"x"))]
                .into_iter()
                .collect(),
            install_errors: BTreeMap::new(),
            instance: "i".into(),
            tenant_range: Some("a-m".parse().unwrap()),
            draining: false,
            released: ["acme".to_string()].into_iter().collect(),
        };
        let back: Member = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            object_name(&ComponentHash::of(b"x")),
            ComponentHash::of(b"x").to_string()
        );
        // A record of an older host (no instance, no install errors) still reads.
        let mut old = serde_json::to_value(&m).unwrap();
        old.as_object_mut().unwrap().remove("instance");
        old.as_object_mut().unwrap().remove("install_errors");
        assert!(serde_json::from_value::<Member>(old).is_ok());
    }

    fn member(host_id: &str) -> Member {
        Member {
            host_id: host_id.into(),
            gateway: String::new(),
            admin: String::new(),
            version: String::new(),
            heartbeat_at_ms: 0,
            started_at_ms: 0,
            manifest_revision: 0,
            caught_up: true,
            components: BTreeMap::new(),
            install_errors: BTreeMap::new(),
            instance: String::new(),
            tenant_range: None,
            draining: false,
            released: BTreeSet::new(),
        }
    }

    #[test]
    fn a_released_tenant_goes_to_the_next_owner_and_only_it_moves() {
        use crate::types::TenantId;
        let mut view = View {
            live: ["h1", "h2", "h3"].map(member).to_vec(),
            pins: HashMap::new(),
            includes_me: true,
        };
        let tenants: Vec<TenantId> = (0..300)
            .map(|n| TenantId::new(format!("t{n}")).unwrap())
            .collect();
        let before: Vec<String> = tenants.iter().map(|t| view.owner_of(t).unwrap()).collect();
        let moved = &tenants[0];
        let owner = before[0].clone();
        let i = view.live.iter().position(|m| m.host_id == owner).unwrap();
        view.live[i].released.insert(Cluster::placement_key(moved));
        let after: Vec<String> = tenants.iter().map(|t| view.owner_of(t).unwrap()).collect();
        assert_ne!(after[0], owner, "the releasing host still owns the tenant");
        assert_eq!(after[1..], before[1..], "other tenants moved");
        // A pin to the releasing host does not bring the tenant back; one to another host wins.
        view.pins
            .insert(Cluster::placement_key(moved), owner.clone());
        assert_ne!(view.owner_of(moved).unwrap(), owner);
        let third = ["h1", "h2", "h3"]
            .into_iter()
            .find(|h| *h != owner && *h != after[0])
            .unwrap();
        view.pins
            .insert(Cluster::placement_key(moved), third.into());
        assert_eq!(view.owner_of(moved).unwrap(), third);
        // The released set is part of what placement depends on.
        let mut unreleased = View {
            live: ["h1", "h2", "h3"].map(member).to_vec(),
            pins: view.pins.clone(),
            includes_me: true,
        };
        assert_ne!(unreleased.placement_inputs(), view.placement_inputs());
        unreleased.live[i]
            .released
            .insert(Cluster::placement_key(moved));
        assert_eq!(unreleased.placement_inputs(), view.placement_inputs());
    }

    #[test]
    fn limits_changes_are_merged_and_checked() {
        let ty = AggregateType::new("bank-account").unwrap();
        let change = |v: serde_json::Value| v.as_object().unwrap().clone();
        let l = merge_limits(
            &ty,
            &Limits::default(),
            &change(serde_json::json!({"fuel": 1000})),
            64 << 20,
        )
        .unwrap();
        assert_eq!(l.fuel, 1000);
        assert_eq!(l.timeout_ms, Limits::default().timeout_ms);
        let e = merge_limits(
            &ty,
            &Limits::default(),
            &change(serde_json::json!({"max_memory_bytes": 128u64 << 20})),
            64 << 20,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bank-account") && e.contains("limits"), "{e}");
        let e = merge_limits(
            &ty,
            &Limits::default(),
            &change(serde_json::json!({"fuels": 1})),
            64 << 20,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("fuels"), "{e}");
    }

    #[test]
    fn an_existing_stream_must_have_the_configured_replicas() {
        assert!(check_replicas("KV_AGGREGATE_MANIFEST", 3, 3).is_ok());
        assert!(check_replicas("KV_AGGREGATE_MANIFEST", 1, 1).is_ok());
        let e = check_replicas("KV_AGGREGATE_MANIFEST", 1, 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KV_AGGREGATE_MANIFEST") && e.contains("1 replica") && e.contains("3"),
            "{e}"
        );
    }
}
