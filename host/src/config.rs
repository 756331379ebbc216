//! Host configuration: defaults → YAML file → `AGGREGATE_*` environment variables, validated at
//! start with messages that name the bad field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::TenantId;

/// A configuration problem, naming the field (or variable) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {field}: {reason}")]
pub struct ConfigError {
    /// `data_dir`, `AGGREGATE_MAX_ATTEMPTS`, the file's path…
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Everything the host reads at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where blobs, artifacts, the manifest, snapshots and the embedded log live.
    pub data_dir: PathBuf,
    /// NATS server URL; when set, events go to JetStream instead of the embedded log.
    pub nats_url: Option<String>,
    /// What the host does when NATS cannot be reached at start: `retry` (default: start, serve
    /// `/health` and `/ready` — not ready, naming NATS — and connect in the background with
    /// backoff) or `fail-fast` (exit with an error).
    pub nats_connect: NatsConnect,
    /// Deadline of each event-log operation on NATS (all its requests together), in
    /// milliseconds; past it the command answers 503 `unavailable`. Default 2000.
    pub nats_request_timeout_ms: u64,
    /// Consecutive NATS failures or timeouts that open the breaker (commands are then refused at
    /// once until a probe succeeds). Default 3.
    pub nats_breaker_failures: u32,
    /// How long the breaker, opened by failures while the connection is up, waits before it
    /// probes NATS again, in milliseconds. A reconnect probes at once. Default 1000.
    pub nats_breaker_cooldown_ms: u64,
    /// JetStream stream name.
    pub stream: String,
    /// Default snapshot interval for newly deployed aggregate types (events; 0 = never).
    pub snapshot_every: u64,
    /// Attempts for a command that meets version conflicts.
    pub max_attempts: u32,
    /// Aggregates whose state is kept in memory.
    pub hot_cache_capacity: usize,
    /// Warm instances kept across all tenants and types.
    pub max_warm_instances: usize,
    /// Largest linear memory any guest may have, in MiB.
    pub max_memory_mb: usize,
    /// Largest component upload, in MiB.
    pub max_component_mb: usize,
    /// Component compiles that may run at once (uploads, reloads, rollbacks); more wait. A
    /// compile already uses every core, so the default 1 keeps CPU and memory for commands.
    pub max_concurrent_compiles: usize,
    /// Where the gateway API (commands, queries) listens.
    pub gateway_listen: SocketAddr,
    /// Where the admin API (deploy, health, metrics) listens.
    pub admin_listen: SocketAddr,
    /// Bearer token of the admin API. Required unless `admin_listen` is a loopback address.
    pub admin_token: Option<String>,
    /// When true, every gateway request must name its tenant in `x-tenant-id`; when false the
    /// header may be absent (the single tenant).
    pub multi_tenant: bool,
    /// Tenants this host serves; empty serves every tenant. Others are refused (403).
    pub tenants: Vec<TenantId>,
    /// Largest command body the gateway accepts, in bytes.
    pub max_command_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests, in seconds.
    pub shutdown_grace_secs: u64,
    /// After SIGTERM, how long the listeners stay open answering new requests `503
    /// shutting-down` with `Connection: close` (so a request racing the signal on a keep-alive
    /// connection gets an answer, not a dropped connection), in milliseconds. Default 500.
    pub shutdown_linger_ms: u64,
    /// Log format: `text` or `json`.
    pub log_format: LogFormat,
    /// Cluster mode (needs `nats_url`): the manifest lives in the JetStream KV bucket
    /// `AGGREGATE_MANIFEST`, component blobs in the Object Store `AGGREGATE_COMPONENTS`, every
    /// host watches the manifest, and deploys are acknowledged by every live host. The local
    /// manifest file and blob directory become caches. Default false.
    pub cluster: bool,
    /// This host's id in the cluster (ASCII letters, digits, `-`, `_`; at most 64). Default: the
    /// id stored in `<data_dir>/host-id`, created at first start as `host-<8 hex digits>`.
    pub host_id: Option<String>,
    /// Replicas of every stream and bucket the host creates (event stream, command bucket and,
    /// in cluster mode, the manifest and membership buckets and the component store): 1 on a
    /// single nats-server, 3 on a 3-node cluster. More than 1 needs nats-server 2.9.21 or newer
    /// (older servers let concurrent writers through on replicated streams: nats-server #4320).
    /// Default 1.
    pub nats_replicas: usize,
    /// URL other hosts and operators use to reach this host's gateway, shown in
    /// `GET /admin/cluster`. Default `http://<gateway_listen>`.
    pub advertise_gateway: Option<String>,
    /// URL of this host's admin API as shown in `GET /admin/cluster`. Default
    /// `http://<admin_listen>`.
    pub advertise_admin: Option<String>,
    /// How long a deploy in cluster mode waits for every live host to fetch, precompile and
    /// acknowledge the component before it activates it anyway (hosts that did not answer are
    /// named in the answer and catch up from the manifest watch), in milliseconds. Default 10000.
    pub deploy_ack_timeout_ms: u64,
    /// How often a host renews its membership entry, in milliseconds. Default 500.
    pub heartbeat_interval_ms: u64,
    /// A host whose membership entry is older than this is not live (it disappears from the
    /// view), in milliseconds; at least twice `heartbeat_interval_ms`, and in cluster mode more
    /// than `nats_request_timeout_ms` plus twice `heartbeat_interval_ms`. Default 4000: a dead
    /// host's tenants are owned elsewhere about 4 s after its last heartbeat (the 5 s failover
    /// target with a margin, measured in BENCHMARKS.md).
    pub host_ttl_ms: u64,
    /// How often a host checks the manifest bucket for changes its watch missed, in
    /// milliseconds. Default 5000.
    pub reconcile_interval_ms: u64,
    /// Cluster mode: the tenants this host may own, by the first character of the tenant id
    /// (e.g. `a-m`); others are owned by other hosts. Default: any tenant.
    pub tenant_range: Option<crate::cluster::placement::TenantRange>,
    /// Cluster mode: how long a host that does not own a tenant keeps trying to forward a
    /// command or state read to its owner (while ownership moves), in milliseconds; then it
    /// answers 503. Longer than a failover (`host_ttl_ms` plus two heartbeats) so that a
    /// command forwarded while its owner dies is answered by the next owner. Default 8000.
    pub forward_retry_ms: u64,
    /// How often an idle event stream sends a heartbeat (an SSE comment, an empty NDJSON line) so
    /// that proxies keep it open, in milliseconds. Default 15000.
    pub stream_heartbeat_ms: u64,
    /// Most event streams one tenant may have open on this host at once; more are answered 429.
    /// Default 64.
    pub max_streams_per_tenant: usize,
    /// Most event streams open on this host at once, all tenants together; more are answered
    /// 429. Default 4096.
    pub max_streams: usize,
    /// Keep the state index that filtered queries read (`GET /aggregates/{type}?filter=`).
    /// Default true; without it those queries answer 404.
    pub state_index: bool,
    /// How long a query waits for the state index to reach the log position it must reflect,
    /// in milliseconds; then it answers 503. Default 5000.
    pub query_wait_ms: u64,
    /// Storage routes: tenants with an event log of their own (see [`crate::store::routed`]).
    /// File only.
    pub storage_routes: Vec<StorageRoute>,
    /// Refuse (403) tenants no route names, instead of keeping them on the shared log.
    /// `AGGREGATE_STORAGE_STRICT`. Default false.
    pub storage_strict: bool,
    /// How long a route's log stays open unused, in seconds. `AGGREGATE_STORAGE_IDLE_SECS`.
    /// Default 300.
    pub storage_idle_secs: u64,
    /// Largest tenant import body (`POST /admin/tenants/{tenant}/import`), in MiB; it is held in
    /// memory while checked (about three times its size). Default 256.
    pub max_import_mb: usize,
    /// Subject prefix of the NATS command endpoint (see [`crate::api::ingress`]); served when the
    /// host uses NATS. Default `aggregate.cmd`; empty (or `AGGREGATE_NATS_INGRESS_SUBJECT=`)
    /// turns it off.
    pub nats_ingress_subject: Option<String>,
    /// JWT authentication of the gateway (off when absent). Set in the file as a `jwt:` map,
    /// or by any `AGGREGATE_JWT_*` variable.
    pub jwt: Option<JwtConfig>,
    /// Per-tenant quotas (none by default).
    pub quotas: QuotaConfig,
}

/// JWT authentication of gateway requests (see [`crate::api::auth`]). Exactly one key source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// A file holding the HS256 shared secret (at least 32 bytes; surrounding whitespace is
    /// ignored). `AGGREGATE_JWT_HS256_SECRET_FILE`.
    pub hs256_secret_file: Option<PathBuf>,
    /// A PEM public key: RSA (RS256/384/512) or EC P-256 (ES256) / P-384 (ES384).
    /// `AGGREGATE_JWT_PUBLIC_KEY_FILE`.
    pub public_key_file: Option<PathBuf>,
    /// A JWKS file (RFC 7517) of RSA and EC keys; a token's `kid` picks the key.
    /// `AGGREGATE_JWT_JWKS_FILE`.
    pub jwks_file: Option<PathBuf>,
    /// The required `iss`. `AGGREGATE_JWT_ISSUER`.
    pub issuer: Option<String>,
    /// The required `aud` (one of the token's audiences). `AGGREGATE_JWT_AUDIENCE`.
    pub audience: Option<String>,
    /// The claim naming the tenant; default `tenant_id`. `AGGREGATE_JWT_TENANT_CLAIM`.
    pub tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds; default 30.
    /// `AGGREGATE_JWT_LEEWAY_SECS`.
    pub leeway_secs: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret_file: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            tenant_claim: "tenant_id".into(),
            leeway_secs: 30,
        }
    }
}

/// Per-tenant quotas: a default for every tenant and overrides per tenant. 0 means unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Commands a tenant may send per second, on average (a token bucket's refill rate);
    /// 0 = unlimited (the default). `AGGREGATE_QUOTA_COMMANDS_PER_SEC`.
    pub commands_per_sec: f64,
    /// Commands a tenant may send at once (the bucket's size); 0 = `commands_per_sec` rounded
    /// up. `AGGREGATE_QUOTA_BURST`.
    pub burst: u32,
    /// Aggregates a tenant may have (each created by its first command); 0 = unlimited.
    /// `AGGREGATE_QUOTA_MAX_AGGREGATES`.
    pub max_aggregates: u64,
    /// Overrides per tenant (file only); a field left out takes the default above.
    pub tenants: BTreeMap<TenantId, TenantQuota>,
}

/// A storage route: these tenants' events go to their own log. Exactly one of `stream` and
/// `embedded_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageRoute {
    /// Tenant ids, or prefixes ending in `*` (`big-*`).
    pub tenants: Vec<String>,
    /// A JetStream stream of its own on `nats_url` (subjects `<stream>.tenant.>`, command bucket
    /// `<stream>_COMMANDS`).
    pub stream: Option<String>,
    /// With `stream`: another NATS for it (default `nats_url`).
    pub nats_url: Option<String>,
    /// An embedded log in this directory (relative: under `data_dir`). Not in cluster mode.
    pub embedded_dir: Option<PathBuf>,
}

impl StorageRoute {
    /// The route as [`crate::store::routed`] takes it (after [`Config::validate`]).
    pub fn route(&self, data_dir: &Path) -> crate::store::routed::Route {
        use crate::store::routed::Target;
        let target = match (&self.stream, &self.embedded_dir) {
            (Some(s), _) => Target::Stream {
                stream: s.clone(),
                url: self.nats_url.clone(),
            },
            (None, Some(d)) if d.is_relative() => Target::Embedded(data_dir.join(d)),
            (None, Some(d)) => Target::Embedded(d.clone()),
            (None, None) => Target::Embedded(data_dir.join("tenants")),
        };
        crate::store::routed::Route {
            tenants: self.tenants.clone(),
            target,
        }
    }
}

/// One tenant's quota overrides.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantQuota {
    /// See [`QuotaConfig::commands_per_sec`].
    pub commands_per_sec: Option<f64>,
    /// See [`QuotaConfig::burst`].
    pub burst: Option<u32>,
    /// See [`QuotaConfig::max_aggregates`].
    pub max_aggregates: Option<u64>,
}

/// What the host does when NATS cannot be reached at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatsConnect {
    /// Start anyway, not ready until NATS answers; connect in the background with backoff.
    #[default]
    Retry,
    /// Exit with an error (the behaviour before the breaker).
    FailFast,
}

/// How the host writes its log (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            nats_url: None,
            nats_connect: NatsConnect::Retry,
            nats_request_timeout_ms: 2000,
            nats_breaker_failures: 3,
            nats_breaker_cooldown_ms: 1000,
            stream: "AGGREGATES".into(),
            snapshot_every: 100,
            max_attempts: 8,
            hot_cache_capacity: 10_000,
            max_warm_instances: 256,
            max_memory_mb: 256,
            max_component_mb: 64,
            max_concurrent_compiles: crate::runtime::DEFAULT_MAX_CONCURRENT_COMPILES,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token: None,
            multi_tenant: false,
            tenants: Vec::new(),
            max_command_bytes: 1 << 20,
            shutdown_grace_secs: 30,
            shutdown_linger_ms: 500,
            log_format: LogFormat::Text,
            cluster: false,
            host_id: None,
            nats_replicas: 1,
            advertise_gateway: None,
            advertise_admin: None,
            deploy_ack_timeout_ms: 10_000,
            heartbeat_interval_ms: 500,
            host_ttl_ms: 4000,
            reconcile_interval_ms: 5000,
            tenant_range: None,
            forward_retry_ms: 8000,
            stream_heartbeat_ms: 15_000,
            max_streams_per_tenant: 64,
            max_streams: 4096,
            state_index: true,
            query_wait_ms: 5000,
            max_import_mb: 256,
            storage_routes: Vec::new(),
            storage_strict: false,
            storage_idle_secs: 300,
            nats_ingress_subject: Some(crate::api::ingress::DEFAULT_SUBJECT_PREFIX.into()),
            jwt: None,
            quotas: QuotaConfig::default(),
        }
    }
}

/// Whether `id` is a valid host id: 1 to 64 ASCII letters, digits, `-` and `_` (it is a KV key
/// and part of log lines).
pub fn valid_host_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Slowest non-zero quota rate, in commands per second (one command every 1000 s).
pub const MIN_QUOTA_RATE: f64 = 0.001;

/// Shortest admin token accepted: a guessable token is no protection.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl Config {
    /// Defaults, then the YAML file (if given), then the environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, field or variable.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut c = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| err(p.display().to_string(), e.to_string()))?;
                serde_yaml::from_str(&text)
                    .map_err(|e| err(p.display().to_string(), e.to_string()))?
            }
            None => Config::default(),
        };
        for (k, v) in env {
            c.set_env(&k, v)?;
        }
        c.validate()?;
        Ok(c)
    }

    fn set_env(&mut self, key: &str, v: String) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError> {
            v.trim()
                .parse()
                .map_err(|_| err(key, format!("{v:?} is not a valid number")))
        }
        fn addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
            v.trim()
                .parse()
                .map_err(|_| err(key, format!("{v:?} is not an address like 127.0.0.1:8080")))
        }
        fn flag(key: &str, v: &str) -> Result<bool, ConfigError> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" | "" => Ok(false),
                _ => Err(err(key, format!("{v:?} is not true or false"))),
            }
        }
        let Some(name) = key.strip_prefix("AGGREGATE_") else {
            return Ok(());
        };
        match name {
            "DATA_DIR" => self.data_dir = PathBuf::from(v),
            "NATS_URL" => self.nats_url = (!v.trim().is_empty()).then_some(v),
            "NATS_CONNECT" => {
                self.nats_connect = match v.trim().to_ascii_lowercase().as_str() {
                    "retry" => NatsConnect::Retry,
                    "fail-fast" => NatsConnect::FailFast,
                    _ => return Err(err(key, format!("{v:?}: use `retry` or `fail-fast`"))),
                }
            }
            "NATS_REQUEST_TIMEOUT_MS" => self.nats_request_timeout_ms = num(key, &v)?,
            "NATS_BREAKER_FAILURES" => self.nats_breaker_failures = num(key, &v)?,
            "NATS_BREAKER_COOLDOWN_MS" => self.nats_breaker_cooldown_ms = num(key, &v)?,
            "STREAM" => self.stream = v,
            "SNAPSHOT_EVERY" => self.snapshot_every = num(key, &v)?,
            "MAX_ATTEMPTS" => self.max_attempts = num(key, &v)?,
            "HOT_CACHE_CAPACITY" => self.hot_cache_capacity = num(key, &v)?,
            "MAX_WARM_INSTANCES" => self.max_warm_instances = num(key, &v)?,
            "MAX_MEMORY_MB" => self.max_memory_mb = num(key, &v)?,
            "MAX_COMPONENT_MB" => self.max_component_mb = num(key, &v)?,
            "MAX_CONCURRENT_COMPILES" => self.max_concurrent_compiles = num(key, &v)?,
            "GATEWAY_LISTEN" => self.gateway_listen = addr(key, &v)?,
            "ADMIN_LISTEN" => self.admin_listen = addr(key, &v)?,
            "ADMIN_TOKEN" => self.admin_token = (!v.is_empty()).then_some(v),
            "MULTI_TENANT" => self.multi_tenant = flag(key, &v)?,
            "TENANTS" => {
                self.tenants = v
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| TenantId::new(t).map_err(|e| err(key, e.to_string())))
                    .collect::<Result<_, _>>()?
            }
            "MAX_COMMAND_BYTES" => self.max_command_bytes = num(key, &v)?,
            "SHUTDOWN_GRACE_SECS" => self.shutdown_grace_secs = num(key, &v)?,
            "SHUTDOWN_LINGER_MS" => self.shutdown_linger_ms = num(key, &v)?,
            "LOG_FORMAT" => {
                self.log_format = match v.trim().to_ascii_lowercase().as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(err(key, format!("{v:?}: use `text` or `json`"))),
                }
            }
            "CLUSTER" => self.cluster = flag(key, &v)?,
            "HOST_ID" => self.host_id = (!v.trim().is_empty()).then(|| v.trim().to_string()),
            "NATS_REPLICAS" => self.nats_replicas = num(key, &v)?,
            "ADVERTISE_GATEWAY" => {
                self.advertise_gateway = (!v.trim().is_empty()).then(|| v.trim().to_string())
            }
            "ADVERTISE_ADMIN" => {
                self.advertise_admin = (!v.trim().is_empty()).then(|| v.trim().to_string())
            }
            "DEPLOY_ACK_TIMEOUT_MS" => self.deploy_ack_timeout_ms = num(key, &v)?,
            "HEARTBEAT_INTERVAL_MS" => self.heartbeat_interval_ms = num(key, &v)?,
            "HOST_TTL_MS" => self.host_ttl_ms = num(key, &v)?,
            "RECONCILE_INTERVAL_MS" => self.reconcile_interval_ms = num(key, &v)?,
            "TENANT_RANGE" => {
                self.tenant_range = if v.trim().is_empty() {
                    None
                } else {
                    Some(
                        v.trim()
                            .parse()
                            .map_err(|e: crate::types::InvalidValue| err(key, e.to_string()))?,
                    )
                }
            }
            "FORWARD_RETRY_MS" => self.forward_retry_ms = num(key, &v)?,
            "STREAM_HEARTBEAT_MS" => self.stream_heartbeat_ms = num(key, &v)?,
            "MAX_STREAMS_PER_TENANT" => self.max_streams_per_tenant = num(key, &v)?,
            "MAX_STREAMS" => self.max_streams = num(key, &v)?,
            "STATE_INDEX" => self.state_index = flag(key, &v)?,
            "QUERY_WAIT_MS" => self.query_wait_ms = num(key, &v)?,
            "MAX_IMPORT_MB" => self.max_import_mb = num(key, &v)?,
            "STORAGE_STRICT" => self.storage_strict = flag(key, &v)?,
            "STORAGE_IDLE_SECS" => self.storage_idle_secs = num(key, &v)?,
            "NATS_INGRESS_SUBJECT" => {
                self.nats_ingress_subject = (!v.trim().is_empty()).then(|| v.trim().to_string())
            }
            "QUOTA_COMMANDS_PER_SEC" => self.quotas.commands_per_sec = num(key, &v)?,
            "QUOTA_BURST" => self.quotas.burst = num(key, &v)?,
            "QUOTA_MAX_AGGREGATES" => self.quotas.max_aggregates = num(key, &v)?,
            jwt if jwt.starts_with("JWT_") => {
                let path = || (!v.trim().is_empty()).then(|| PathBuf::from(v.trim()));
                let text = || (!v.trim().is_empty()).then(|| v.trim().to_string());
                let j = self.jwt.get_or_insert_with(JwtConfig::default);
                match &jwt[4..] {
                    "HS256_SECRET_FILE" => j.hs256_secret_file = path(),
                    "PUBLIC_KEY_FILE" => j.public_key_file = path(),
                    "JWKS_FILE" => j.jwks_file = path(),
                    "ISSUER" => j.issuer = text(),
                    "AUDIENCE" => j.audience = text(),
                    "TENANT_CLAIM" => j.tenant_claim = v.trim().to_string(),
                    "LEEWAY_SECS" => j.leeway_secs = num(key, &v)?,
                    _ => return Err(err(key, "unknown JWT setting")),
                }
            }
            // Variables of later features and of the logging setup are not ours to refuse.
            _ => {}
        }
        Ok(())
    }

    /// Check every field.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "must not be empty"));
        }
        if let Some(url) = &self.nats_url {
            // One URL, or several separated by commas (the nodes of a cluster).
            let bad = url.split(',').map(str::trim).find(|u| {
                let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                    .iter()
                    .any(|p| u.starts_with(p))
                    || !u.contains("://");
                u.is_empty() || !scheme_ok || u.contains(char::is_whitespace)
            });
            if let Some(u) = bad {
                return Err(err(
                    "nats_url",
                    format!(
                        "{u:?} is not a NATS URL (nats://host:port, or several separated by commas)"
                    ),
                ));
            }
        }
        if !(10..=60_000).contains(&self.nats_request_timeout_ms) {
            return Err(err(
                "nats_request_timeout_ms",
                format!("{} is outside 10..=60000", self.nats_request_timeout_ms),
            ));
        }
        if self.nats_breaker_failures == 0 {
            return Err(err("nats_breaker_failures", "must be at least 1"));
        }
        if !(10..=600_000).contains(&self.nats_breaker_cooldown_ms) {
            return Err(err(
                "nats_breaker_cooldown_ms",
                format!("{} is outside 10..=600000", self.nats_breaker_cooldown_ms),
            ));
        }
        if self.stream.is_empty()
            || !self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(
                "stream",
                format!("{:?}: use ASCII letters, digits, '-' and '_'", self.stream),
            ));
        }
        if self.max_attempts == 0 {
            return Err(err("max_attempts", "must be at least 1"));
        }
        if self.max_memory_mb == 0 || self.max_memory_mb > 4096 {
            return Err(err(
                "max_memory_mb",
                format!("{} is outside 1..=4096", self.max_memory_mb),
            ));
        }
        if self.max_component_mb == 0 {
            return Err(err("max_component_mb", "must be at least 1"));
        }
        if self.max_concurrent_compiles == 0 {
            return Err(err("max_concurrent_compiles", "must be at least 1"));
        }
        match &self.admin_token {
            None if !self.admin_listen.ip().is_loopback() => {
                return Err(err(
                    "admin_token",
                    format!(
                        "required because admin_listen {} is not a loopback address (set AGGREGATE_ADMIN_TOKEN)",
                        self.admin_listen
                    ),
                ));
            }
            Some(t)
                if t.len() < MIN_ADMIN_TOKEN_LEN
                    || t.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                return Err(err(
                    "admin_token",
                    format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters without whitespace"),
                ));
            }
            _ => {}
        }
        if self.gateway_listen == self.admin_listen && self.gateway_listen.port() != 0 {
            return Err(err(
                "admin_listen",
                format!(
                    "{} is also gateway_listen; use two ports",
                    self.admin_listen
                ),
            ));
        }
        if self.tenants.iter().any(TenantId::is_single) {
            return Err(err(
                "tenants",
                "must not contain the empty (single-tenant) id",
            ));
        }
        if self.cluster && self.nats_url.is_none() {
            return Err(err(
                "cluster",
                "cluster mode needs nats_url (set AGGREGATE_NATS_URL)",
            ));
        }
        if let Some(id) = &self.host_id {
            if !valid_host_id(id) {
                return Err(err(
                    "host_id",
                    format!("{id:?}: use 1 to 64 ASCII letters, digits, '-' and '_'"),
                ));
            }
        }
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(err(
                "nats_replicas",
                format!("{} is outside 1..=5", self.nats_replicas),
            ));
        }
        for (field, url) in [
            ("advertise_gateway", &self.advertise_gateway),
            ("advertise_admin", &self.advertise_admin),
        ] {
            if let Some(u) = url {
                if !(u.starts_with("http://") || u.starts_with("https://"))
                    || u.contains(char::is_whitespace)
                {
                    return Err(err(field, format!("{u:?} is not an http(s) URL")));
                }
            }
        }
        if !(100..=600_000).contains(&self.deploy_ack_timeout_ms) {
            return Err(err(
                "deploy_ack_timeout_ms",
                format!("{} is outside 100..=600000", self.deploy_ack_timeout_ms),
            ));
        }
        if !(50..=60_000).contains(&self.heartbeat_interval_ms) {
            return Err(err(
                "heartbeat_interval_ms",
                format!("{} is outside 50..=60000", self.heartbeat_interval_ms),
            ));
        }
        if self.host_ttl_ms < 2 * self.heartbeat_interval_ms || self.host_ttl_ms > 600_000 {
            return Err(err(
                "host_ttl_ms",
                format!(
                    "{} must be at least twice heartbeat_interval_ms ({}) and at most 600000",
                    self.host_ttl_ms, self.heartbeat_interval_ms
                ),
            ));
        }
        if self.cluster
            && self.host_ttl_ms <= self.nats_request_timeout_ms + 2 * self.heartbeat_interval_ms
        {
            // A host writes only while its lease holds: host_ttl_ms after its last heartbeat,
            // less the longest append (nats_request_timeout_ms) and one heartbeat of margin; that
            // must outlast the next heartbeat.
            return Err(err(
                "host_ttl_ms",
                format!(
                    "{} must exceed nats_request_timeout_ms ({}) plus twice heartbeat_interval_ms ({}) in cluster mode",
                    self.host_ttl_ms, self.nats_request_timeout_ms, self.heartbeat_interval_ms
                ),
            ));
        }
        if !(100..=3_600_000).contains(&self.reconcile_interval_ms) {
            return Err(err(
                "reconcile_interval_ms",
                format!("{} is outside 100..=3600000", self.reconcile_interval_ms),
            ));
        }
        if !(100..=600_000).contains(&self.forward_retry_ms) {
            return Err(err(
                "forward_retry_ms",
                format!("{} is outside 100..=600000", self.forward_retry_ms),
            ));
        }
        if !(100..=3_600_000).contains(&self.stream_heartbeat_ms) {
            return Err(err(
                "stream_heartbeat_ms",
                format!("{} is outside 100..=3600000", self.stream_heartbeat_ms),
            ));
        }
        if self.max_streams_per_tenant == 0 || self.max_streams == 0 {
            let field = if self.max_streams == 0 {
                "max_streams"
            } else {
                "max_streams_per_tenant"
            };
            return Err(err(
                field,
                "0 would refuse every event stream; use at least 1",
            ));
        }
        if !(1..=600_000).contains(&self.query_wait_ms) {
            return Err(err(
                "query_wait_ms",
                format!("{} is outside 1..=600000", self.query_wait_ms),
            ));
        }
        let mut streams = std::collections::HashSet::new();
        let mut dirs = std::collections::HashSet::new();
        for (i, r) in self.storage_routes.iter().enumerate() {
            let field = |f: &str| format!("storage_routes[{i}].{f}");
            if r.tenants.is_empty() {
                return Err(err(
                    field("tenants"),
                    "name at least one tenant (or `prefix*`)",
                ));
            }
            for t in &r.tenants {
                let id = t.strip_suffix('*').unwrap_or(t);
                if id.is_empty() && t != "*" || TenantId::new(id).is_err() && !id.is_empty() {
                    return Err(err(
                        field("tenants"),
                        format!("{t:?} is not a tenant id or a `prefix*`"),
                    ));
                }
            }
            match (&r.stream, &r.embedded_dir) {
                (Some(s), None) => {
                    if self.nats_url.is_none() && r.nats_url.is_none() {
                        return Err(err(field("stream"), "a stream needs nats_url"));
                    }
                    if let Some(u) = &r.nats_url {
                        if u.split(',').map(str::trim).any(|u| {
                            u.is_empty()
                                || u.contains(char::is_whitespace)
                                || (u.contains("://")
                                    && !["nats://", "tls://", "ws://", "wss://"]
                                        .iter()
                                        .any(|p| u.starts_with(p)))
                        }) {
                            return Err(err(field("nats_url"), format!("{u:?} is not a NATS URL")));
                        }
                    }
                    let ok = !s.is_empty()
                        && s.len() <= 32
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
                    // Its command bucket is `<s>_COMMANDS` (its stream `KV_<s>_COMMANDS`): neither
                    // may be the shared log's.
                    let clashes = *s == self.stream
                        || format!("{s}_COMMANDS") == "AGGREGATE_COMMANDS"
                        || s.starts_with("KV_")
                        || s.starts_with("OBJ_");
                    if !ok || clashes || !streams.insert(s.clone()) {
                        return Err(err(
                            field("stream"),
                            format!("{s:?}: use 1 to 32 ASCII letters, digits, '-' and '_', not the shared stream's name and not another route's"),
                        ));
                    }
                }
                (None, Some(_)) if r.nats_url.is_some() => {
                    return Err(err(field("nats_url"), "only with `stream`"));
                }
                (None, Some(d)) => {
                    if self.cluster {
                        return Err(err(
                            field("embedded_dir"),
                            "a directory of one host cannot hold a tenant in cluster mode; use `stream`",
                        ));
                    }
                    // A plain path below data_dir (or absolute), not one of the host's own
                    // directories, not inside another route's.
                    use std::path::Component;
                    let plain = d
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir));
                    let own = d.is_relative()
                        && d.components().next().is_some_and(|c| {
                            [
                                "events",
                                "index",
                                "snapshots",
                                "artifacts",
                                "components",
                                "manifest.yaml",
                            ]
                            .iter()
                            .any(|n| c.as_os_str() == *n)
                        });
                    let nested = dirs
                        .iter()
                        .any(|o: &PathBuf| o.starts_with(d) || d.starts_with(o));
                    if d.as_os_str().is_empty() || !plain || own || nested {
                        return Err(err(
                            field("embedded_dir"),
                            format!(
                                "{}: use a plain path (no `.` or `..`), not one of the host's own directories (events, index, snapshots, artifacts, components) and not inside another route's",
                                d.display()
                            ),
                        ));
                    }
                    dirs.insert(d.clone());
                }
                _ => {
                    return Err(err(
                        format!("storage_routes[{i}]"),
                        "set exactly one of `stream` and `embedded_dir`",
                    ))
                }
            }
        }
        if self.storage_strict && (self.storage_routes.is_empty() || !self.multi_tenant) {
            return Err(err(
                "storage_strict",
                "needs storage_routes and multi_tenant (the single tenant has no route)",
            ));
        }
        if !(1..=86_400).contains(&self.storage_idle_secs) {
            return Err(err(
                "storage_idle_secs",
                format!("{} is outside 1..=86400", self.storage_idle_secs),
            ));
        }
        if !(1..=65_536).contains(&self.max_import_mb) {
            return Err(err(
                "max_import_mb",
                format!("{} is outside 1..=65536", self.max_import_mb),
            ));
        }
        if let Some(prefix) = self.nats_ingress_subject.as_ref().filter(|p| !p.is_empty()) {
            let ok = prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
            if !ok {
                return Err(err(
                    "nats_ingress_subject",
                    format!(
                        "{prefix:?}: use dot-separated tokens of ASCII letters, digits, '-' and '_' (no wildcards)"
                    ),
                ));
            }
        }
        if let Some(j) = &self.jwt {
            let sources = [&j.hs256_secret_file, &j.public_key_file, &j.jwks_file]
                .iter()
                .filter(|s| s.is_some())
                .count();
            if sources != 1 {
                return Err(err(
                    "jwt",
                    format!(
                        "set exactly one of hs256_secret_file, public_key_file, jwks_file (found {sources})"
                    ),
                ));
            }
            for (field, value) in [("jwt.issuer", &j.issuer), ("jwt.audience", &j.audience)] {
                if value.as_deref().is_none_or(str::is_empty) {
                    return Err(err(field, "required when JWT authentication is on"));
                }
            }
            if j.tenant_claim.is_empty() || j.tenant_claim.len() > 128 {
                return Err(err("jwt.tenant_claim", "must be 1 to 128 characters"));
            }
            if j.leeway_secs > 600 {
                return Err(err(
                    "jwt.leeway_secs",
                    format!("{} is above 600", j.leeway_secs),
                ));
            }
        }
        let rates = std::iter::once((
            "quotas.commands_per_sec".to_string(),
            self.quotas.commands_per_sec,
        ))
        .chain(self.quotas.tenants.iter().filter_map(|(t, q)| {
            q.commands_per_sec
                .map(|r| (format!("quotas.tenants.{}.commands_per_sec", t.as_str()), r))
        }));
        for (field, rate) in rates {
            if !rate.is_finite() || !(rate == 0.0 || (MIN_QUOTA_RATE..=1_000_000.0).contains(&rate))
            {
                return Err(err(
                    field,
                    format!("{rate}: use 0 (unlimited) or {MIN_QUOTA_RATE} to 1000000"),
                ));
            }
        }
        if self.quotas.tenants.keys().any(TenantId::is_single) {
            return Err(err(
                "quotas.tenants",
                "must not contain the empty (single-tenant) id",
            ));
        }
        if self.max_command_bytes < 64 {
            return Err(err(
                "max_command_bytes",
                format!("{} is below 64", self.max_command_bytes),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("host.yaml");
        std::fs::write(
            &f,
            "data_dir: /var/lib/agg\nmax_attempts: 3\nsnapshot_every: 10\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            env(&[("AGGREGATE_MAX_ATTEMPTS", "5"), ("HOME", "/x")]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/agg"));
        assert_eq!((c.max_attempts, c.snapshot_every), (5, 10));
        assert_eq!(c.stream, "AGGREGATES");
        assert_eq!(c.nats_connect, NatsConnect::Retry);
        assert_eq!(c.nats_request_timeout_ms, 2000);
        let c = Config::load(
            None,
            env(&[
                ("AGGREGATE_NATS_CONNECT", "fail-fast"),
                ("AGGREGATE_NATS_REQUEST_TIMEOUT_MS", "500"),
                ("AGGREGATE_NATS_BREAKER_FAILURES", "5"),
                ("AGGREGATE_NATS_BREAKER_COOLDOWN_MS", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats_connect, NatsConnect::FailFast);
        assert_eq!(
            (
                c.nats_request_timeout_ms,
                c.nats_breaker_failures,
                c.nats_breaker_cooldown_ms
            ),
            (500, 5, 250)
        );
        let f = dir.path().join("nats.yaml");
        std::fs::write(&f, "nats_connect: fail-fast\n").unwrap();
        assert_eq!(
            Config::load(Some(&f), env(&[])).unwrap().nats_connect,
            NatsConnect::FailFast
        );
    }

    #[test]
    fn compile_concurrency_defaults_to_one_and_must_be_positive() {
        assert_eq!(Config::default().max_concurrent_compiles, 1);
        let c = Config::load(None, env(&[("AGGREGATE_MAX_CONCURRENT_COMPILES", "2")])).unwrap();
        assert_eq!(c.max_concurrent_compiles, 2);
        let e = Config::load(None, env(&[("AGGREGATE_MAX_CONCURRENT_COMPILES", "0")])).unwrap_err();
        assert_eq!(e.field, "max_concurrent_compiles");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::load(None, env(&[("AGGREGATE_MAX_ATTEMPTS", "many")])).unwrap_err();
        assert_eq!(e.field, "AGGREGATE_MAX_ATTEMPTS");
        let e = Config::load(None, env(&[("AGGREGATE_MAX_ATTEMPTS", "0")])).unwrap_err();
        assert_eq!(e.field, "max_attempts");
        let e = Config::load(None, env(&[("AGGREGATE_STREAM", "a.b")])).unwrap_err();
        assert_eq!(e.field, "stream");
        let e = Config::load(None, env(&[("AGGREGATE_NATS_URL", "http://x:4222")])).unwrap_err();
        assert_eq!(e.field, "nats_url");
        let e = Config::load(
            None,
            env(&[("AGGREGATE_NATS_URL", "nats://a:4222,http://b:4222")]),
        )
        .unwrap_err();
        assert!(e.reason.contains("http://b:4222"), "{e}");
        let e = Config::load(None, env(&[("AGGREGATE_NATS_CONNECT", "eventually")])).unwrap_err();
        assert_eq!(e.field, "AGGREGATE_NATS_CONNECT");
        let e = Config::load(None, env(&[("AGGREGATE_NATS_REQUEST_TIMEOUT_MS", "0")])).unwrap_err();
        assert_eq!(e.field, "nats_request_timeout_ms");
        let e = Config::load(None, env(&[("AGGREGATE_NATS_BREAKER_FAILURES", "0")])).unwrap_err();
        assert_eq!(e.field, "nats_breaker_failures");
        let e = Config::load(None, env(&[("AGGREGATE_GATEWAY_LISTEN", "localhost")])).unwrap_err();
        assert_eq!(e.field, "AGGREGATE_GATEWAY_LISTEN");
        let e = Config::load(None, env(&[("AGGREGATE_MULTI_TENANT", "maybe")])).unwrap_err();
        assert_eq!(e.field, "AGGREGATE_MULTI_TENANT");
        let e = Config::load(None, env(&[("AGGREGATE_TENANTS", "a,b.c")])).unwrap_err();
        assert!(
            e.field == "AGGREGATE_TENANTS" && e.reason.contains("tenant id"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("host.yaml");
        std::fs::write(&f, "max_attempt: 3\n").unwrap();
        let e = Config::load(Some(&f), env(&[])).unwrap_err();
        assert!(e.reason.contains("unknown field `max_attempt`"), "{e}");
    }

    #[test]
    fn cluster_settings_are_read_and_checked() {
        let c = Config::load(
            None,
            env(&[
                ("AGGREGATE_NATS_URL", "nats://a:4222,nats://b:4222"),
                ("AGGREGATE_CLUSTER", "true"),
                ("AGGREGATE_HOST_ID", "host-1"),
                ("AGGREGATE_NATS_REPLICAS", "3"),
                ("AGGREGATE_ADVERTISE_GATEWAY", "http://host-1:8080"),
                ("AGGREGATE_DEPLOY_ACK_TIMEOUT_MS", "2500"),
            ]),
        )
        .unwrap();
        assert!(c.cluster);
        assert_eq!(c.host_id.as_deref(), Some("host-1"));
        assert_eq!((c.nats_replicas, c.deploy_ack_timeout_ms), (3, 2500));
        assert_eq!(c.advertise_gateway.as_deref(), Some("http://host-1:8080"));
        let e = Config::load(None, env(&[("AGGREGATE_CLUSTER", "true")])).unwrap_err();
        assert_eq!(e.field, "cluster");
        let e = Config::load(None, env(&[("AGGREGATE_HOST_ID", "a.b")])).unwrap_err();
        assert_eq!(e.field, "host_id");
        let e = Config::load(None, env(&[("AGGREGATE_NATS_REPLICAS", "0")])).unwrap_err();
        assert_eq!(e.field, "nats_replicas");
        let e = Config::load(None, env(&[("AGGREGATE_HOST_TTL_MS", "900")])).unwrap_err();
        assert_eq!(e.field, "host_ttl_ms");
        let e = Config::load(None, env(&[("AGGREGATE_ADVERTISE_ADMIN", "host:9090")])).unwrap_err();
        assert_eq!(e.field, "advertise_admin");
    }

    #[test]
    fn jwt_and_quota_settings_are_read_and_checked() {
        let c = Config::load(
            None,
            env(&[
                ("AGGREGATE_JWT_PUBLIC_KEY_FILE", "/keys/pub.pem"),
                ("AGGREGATE_JWT_ISSUER", "https://issuer"),
                ("AGGREGATE_JWT_AUDIENCE", "orders"),
                ("AGGREGATE_QUOTA_COMMANDS_PER_SEC", "2.5"),
                ("AGGREGATE_QUOTA_MAX_AGGREGATES", "100"),
            ]),
        )
        .unwrap();
        let j = c.jwt.unwrap();
        assert_eq!(j.public_key_file, Some(PathBuf::from("/keys/pub.pem")));
        assert_eq!((j.tenant_claim.as_str(), j.leeway_secs), ("tenant_id", 30));
        assert_eq!(
            (c.quotas.commands_per_sec, c.quotas.max_aggregates),
            (2.5, 100)
        );
        let e = Config::load(None, env(&[("AGGREGATE_JWT_ISSUER", "x")])).unwrap_err();
        assert!(e.field == "jwt" && e.reason.contains("found 0"), "{e}");
        let e = Config::load(
            None,
            env(&[
                ("AGGREGATE_JWT_JWKS_FILE", "/k.json"),
                ("AGGREGATE_JWT_ISSUER", "x"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.field, "jwt.audience");
        let e = Config::load(None, env(&[("AGGREGATE_JWT_SECRET", "x")])).unwrap_err();
        assert_eq!(e.field, "AGGREGATE_JWT_SECRET");
        for bad in ["NaN", "0.0000001", "-1", "inf"] {
            let e =
                Config::load(None, env(&[("AGGREGATE_QUOTA_COMMANDS_PER_SEC", bad)])).unwrap_err();
            assert_eq!(e.field, "quotas.commands_per_sec", "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("host.yaml");
        std::fs::write(
            &f,
            "quotas:\n  tenants:\n    acme:\n      commands_per_sec: -1\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), env(&[])).unwrap_err();
        assert_eq!(e.field, "quotas.tenants.acme.commands_per_sec");
        std::fs::write(&f, "quotas:\n  tenants:\n    acme:\n      rate: 1\n").unwrap();
        let e = Config::load(Some(&f), env(&[])).unwrap_err();
        assert!(e.reason.contains("unknown field `rate`"), "{e}");
    }

    #[test]
    fn storage_routes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("host.yaml");
        let load = |yaml: &str, vars: &[(&str, &str)]| {
            std::fs::write(&f, yaml).unwrap();
            Config::load(Some(&f), env(vars))
        };
        let nats = [("AGGREGATE_NATS_URL", "nats://127.0.0.1:4222")];
        let c = load(
            "storage_routes:\n  - tenants: [acme, \"big-*\"]\n    stream: ACME\n  - tenants: [x]\n    embedded_dir: tenants/x\n",
            &nats,
        )
        .unwrap();
        assert_eq!(c.storage_routes.len(), 2);
        assert_eq!(c.storage_idle_secs, 300);
        let bad = [
            ("storage_routes:\n  - tenants: []\n    stream: A\n", "storage_routes[0].tenants"),
            ("storage_routes:\n  - tenants: [a.b]\n    stream: A\n", "storage_routes[0].tenants"),
            ("storage_routes:\n  - tenants: [a]\n", "storage_routes[0]"),
            ("storage_routes:\n  - tenants: [a]\n    stream: A\n    embedded_dir: d\n", "storage_routes[0]"),
            ("storage_routes:\n  - tenants: [a]\n    stream: AGGREGATES\n", "storage_routes[0].stream"),
            ("storage_routes:\n  - tenants: [a]\n    stream: A.B\n", "storage_routes[0].stream"),
            ("storage_routes:\n  - tenants: [a]\n    stream: A\n  - tenants: [b]\n    stream: A\n", "storage_routes[1].stream"),
        ];
        let more = [
            ("storage_routes:\n  - tenants: [a]\n    stream: AGGREGATE\n", "storage_routes[0].stream"),
            ("storage_routes:\n  - tenants: [a]\n    stream: KV_X\n", "storage_routes[0].stream"),
            ("storage_routes:\n  - tenants: [a]\n    embedded_dir: events\n", "storage_routes[0].embedded_dir"),
            ("storage_routes:\n  - tenants: [a]\n    embedded_dir: ../x\n", "storage_routes[0].embedded_dir"),
            ("storage_routes:\n  - tenants: [a]\n    embedded_dir: t\n  - tenants: [b]\n    embedded_dir: t/b\n", "storage_routes[1].embedded_dir"),
            ("storage_routes:\n  - tenants: [a]\n    embedded_dir: t\n    nats_url: nats://x:4222\n", "storage_routes[0].nats_url"),
            ("storage_strict: true\n", "storage_strict"),
            ("storage_strict: true\nstorage_routes:\n  - tenants: [a]\n    stream: A\n", "storage_strict"),
        ];
        for (yaml, field) in bad.into_iter().chain(more) {
            assert_eq!(load(yaml, &nats).unwrap_err().field, field, "{yaml}");
        }
        let e = load("storage_routes:\n  - tenants: [a]\n    stream: A\n", &[]).unwrap_err();
        assert_eq!(e.field, "storage_routes[0].stream");
        let e = load(
            "cluster: true\nstorage_routes:\n  - tenants: [a]\n    embedded_dir: d\n",
            &nats,
        )
        .unwrap_err();
        assert_eq!(e.field, "storage_routes[0].embedded_dir");
    }

    #[test]
    fn admin_api_off_loopback_needs_a_token() {
        let e = Config::load(None, env(&[("AGGREGATE_ADMIN_LISTEN", "0.0.0.0:8081")])).unwrap_err();
        assert_eq!(e.field, "admin_token");
        assert!(e.reason.contains("0.0.0.0:8081"), "{e}");
        let e = Config::load(
            None,
            env(&[
                ("AGGREGATE_ADMIN_LISTEN", "0.0.0.0:8081"),
                ("AGGREGATE_ADMIN_TOKEN", "short"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e.field, "admin_token");
        let c = Config::load(
            None,
            env(&[
                ("AGGREGATE_ADMIN_LISTEN", "0.0.0.0:8081"),
                ("AGGREGATE_ADMIN_TOKEN", "0123456789abcdef"),
                ("AGGREGATE_MULTI_TENANT", "true"),
                ("AGGREGATE_TENANTS", "acme, globex"),
                ("AGGREGATE_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();
        assert!(c.multi_tenant);
        assert_eq!(
            c.tenants,
            vec![
                TenantId::new("acme").unwrap(),
                TenantId::new("globex").unwrap()
            ]
        );
        assert_eq!(c.log_format, LogFormat::Json);
        // Loopback needs no token.
        assert!(Config::load(None, env(&[])).unwrap().admin_token.is_none());
    }
}
