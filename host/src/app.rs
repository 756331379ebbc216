//! Wiring: build the runtime, registry, event log, snapshot store and command service from a
//! [`Config`]. The embedded log is the default; a NATS URL selects JetStream.

use std::sync::Arc;

use std::time::Duration;

use crate::cluster::{Cluster, ClusterConfig};
use crate::config::{Config, NatsConnect};
use crate::query::index::StateIndex;
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::service::{CommandService, ServiceConfig};
use crate::store::breaker::{Breaker, BreakerConfig};
use crate::store::embedded::EmbeddedLog;
use crate::store::jetstream::{ConnectMode, JetStreamConfig, JetStreamLog};
use crate::store::routed::{Opener, RoutedLog, Routing, Target};
use crate::store::snapshots::SnapshotStore;
use crate::store::EventLog;

/// A running host's parts.
pub struct Host {
    /// The configuration it was built from.
    pub config: Config,
    /// The sandbox.
    pub runtime: Arc<Runtime>,
    /// Blobs and manifest.
    pub registry: Arc<Registry>,
    /// The command service.
    pub service: Arc<CommandService>,
    /// The breaker in front of NATS (JetStream mode only), for metrics.
    pub breaker: Option<Arc<Breaker>>,
    /// The cluster control plane (cluster mode only).
    pub cluster: Option<Arc<Cluster>>,
    /// The state index filtered queries read (absent with `state_index: false`); its follower
    /// task runs until the host is dropped.
    pub index: Option<Arc<StateIndex>>,
    /// The NATS client of the JetStream log (JetStream mode only).
    pub nats: Option<async_nats::Client>,
    /// The routed event log (when `storage_routes` is configured): which tenants have a log of
    /// their own, and those logs.
    pub routed: Option<Arc<RoutedLog>>,
    /// JWT authentication of the gateway (when `jwt` is configured), keys loaded.
    pub auth: Option<Arc<crate::api::auth::Authenticator>>,
    /// Dropping it stops the index follower.
    _stop: tokio::sync::watch::Sender<()>,
}

impl Host {
    /// Open everything under `config.data_dir`, and connect to NATS when configured.
    ///
    /// With `nats_connect: retry` (the default) a NATS server that cannot be reached is no
    /// error: the host opens with the event log not ready ([`EventLog::health`] names NATS),
    /// and the log connects and opens in the background. It waits up to
    /// `nats_request_timeout_ms` for the log to open, and less when the first attempt fails, so
    /// a host whose NATS is up is ready as soon as it listens.
    ///
    /// # Errors
    ///
    /// Any component that fails to open, with the path or URL in the message (with
    /// `nats_connect: fail-fast`, also NATS).
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let auth = config
            .jwt
            .as_ref()
            .map(crate::api::auth::Authenticator::load)
            .transpose()?
            .map(Arc::new);
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create data_dir {}", dir.display()))?;
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            artifact_dir: Some(dir.join("artifacts")),
            max_memory_bytes: config.max_memory_mb << 20,
            max_warm_instances: config.max_warm_instances,
            max_concurrent_compiles: config.max_concurrent_compiles,
            ..RuntimeConfig::default()
        })?);
        let (registry, seed) = {
            let (runtime, dir, max) = (runtime.clone(), dir.clone(), config.max_component_mb << 20);
            let cluster = config.cluster;
            tokio::task::spawn_blocking(move || {
                let manifest = dir.join("manifest.yaml");
                if cluster {
                    Registry::open_cache(&dir, &manifest, runtime, max).map(|(r, s)| (r, Some(s)))
                } else {
                    Registry::open(&dir, &manifest, runtime, max).map(|r| (r, None))
                }
            })
            .await??
        };
        let registry = Arc::new(registry.with_default_snapshot_every(config.snapshot_every));
        let mut breaker = None;
        let mut nats = None;
        let log: Arc<dyn EventLog> = match &config.nats_url {
            Some(url) => {
                let request_timeout =
                    std::time::Duration::from_millis(config.nats_request_timeout_ms);
                let js = JetStreamConfig {
                    stream: config.stream.clone(),
                    request_timeout,
                    replicas: config.nats_replicas,
                    breaker: BreakerConfig {
                        failure_threshold: config.nats_breaker_failures,
                        cooldown: std::time::Duration::from_millis(config.nats_breaker_cooldown_ms),
                    },
                    ..JetStreamConfig::default()
                };
                let mode = match config.nats_connect {
                    NatsConnect::Retry => ConnectMode::Retry,
                    NatsConnect::FailFast => ConnectMode::FailFast,
                };
                let log = JetStreamLog::connect_with(url, js, mode)
                    .await
                    .with_context(|| format!("JetStream at {url}"))?;
                if !log.wait_open(request_timeout).await {
                    tracing::warn!(
                        url,
                        reason = log.health().reason.unwrap_or_default(),
                        "NATS is not reachable yet; serving, not ready, connecting in the background (nats_connect: retry)"
                    );
                }
                breaker = Some(log.breaker().clone());
                nats = Some(log.client());
                Arc::new(log)
            }
            None => {
                let path = dir.join("events");
                Arc::new(
                    EmbeddedLog::open(&path)
                        .with_context(|| format!("event log at {}", path.display()))?,
                )
            }
        };
        let (log, routed): (Arc<dyn EventLog>, Option<Arc<RoutedLog>>) =
            if config.storage_routes.is_empty() {
                (log, None)
            } else {
                let routing = Arc::new(Routing::new(
                    config
                        .storage_routes
                        .iter()
                        .map(|r| r.route(&dir))
                        .collect(),
                    config.storage_strict,
                ));
                let opener = route_opener(&config);
                let routed = RoutedLog::new(
                    log,
                    routing.clone(),
                    opener,
                    Duration::from_secs(config.storage_idle_secs),
                );
                (routed.clone() as Arc<dyn EventLog>, Some(routed))
            };
        let cluster = match (seed, &config.nats_url) {
            (Some(seed), Some(url)) => {
                let host_id = match &config.host_id {
                    Some(id) => id.clone(),
                    None => host_id_in(&dir)?,
                };
                let cluster_config = ClusterConfig {
                    host_id,
                    replicas: config.nats_replicas,
                    deploy_ack_timeout: Duration::from_millis(config.deploy_ack_timeout_ms),
                    heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
                    host_ttl: Duration::from_millis(config.host_ttl_ms),
                    reconcile_interval: Duration::from_millis(config.reconcile_interval_ms),
                    request_timeout: Duration::from_millis(config.nats_request_timeout_ms),
                    gateway_url: config
                        .advertise_gateway
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", config.gateway_listen)),
                    admin_url: config
                        .advertise_admin
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", config.admin_listen)),
                    max_component_bytes: config.max_component_mb << 20,
                    tenant_range: config.tenant_range,
                };
                Some(
                    Cluster::start(url, cluster_config, registry.clone(), seed)
                        .await
                        .with_context(|| format!("cluster control plane at {url}"))?,
                )
            }
            _ => None,
        };
        let snapshots = SnapshotStore::open(dir.join("snapshots")).context("snapshot store")?;
        let service = Arc::new(CommandService::new(
            registry.clone(),
            runtime.clone(),
            log,
            snapshots,
            ServiceConfig {
                max_attempts: config.max_attempts,
                hot_cache_capacity: config.hot_cache_capacity,
                ..ServiceConfig::default()
            },
        ));
        if let Some(cluster) = &cluster {
            // One writer per tenant: append only for owned tenants, while the lease holds.
            let cluster = cluster.clone();
            service.set_fence(Arc::new(move |tenant| cluster.may_write(tenant)));
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(());
        let index = if config.state_index {
            let path = dir.join("index");
            let index = Arc::new(
                tokio::task::spawn_blocking({
                    let path = path.clone();
                    move || StateIndex::open(&path)
                })
                .await?
                .with_context(|| format!("state index at {}", path.display()))?,
            );
            let handover = index.clone();
            // The index follows the shared log only: a routed tenant's states are not handed over.
            let routing = routed.as_ref().map(|r| r.routing().clone());
            service.set_commit_listener(Arc::new(move |aggregate, version, state, component| {
                if !routing
                    .as_ref()
                    .is_some_and(|r| r.is_routed(&aggregate.tenant))
                {
                    handover.handover(aggregate, version, state, component)
                }
            }));
            let until_dropped = async move {
                // Resolves when the host (the sender) is dropped.
                while stopped.changed().await.is_ok() {}
            };
            tokio::spawn(index.clone().run(service.clone(), until_dropped));
            Some(index)
        } else {
            None
        };
        Ok(Self {
            config,
            runtime,
            registry,
            service,
            breaker,
            cluster,
            index,
            nats,
            routed,
            auth,
            _stop: stop,
        })
    }
}

/// The host id kept in `<dir>/host-id`, created as `host-<8 hex digits>` at first start.
fn host_id_in(dir: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = dir.join("host-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if crate::config::valid_host_id(id.trim()) => Ok(id.trim().to_string()),
        Ok(id) => anyhow::bail!(
            "{}: {:?} is not a host id (1 to 64 ASCII letters, digits, '-' and '_')",
            path.display(),
            id.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The last digits of a v7 UUID are random (the first are the time).
            let uuid = uuid::Uuid::now_v7().simple().to_string();
            let id = format!("host-{}", &uuid[uuid.len() - 8..]);
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("write {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// How a host opens a storage route's log: an embedded log in its directory, or a JetStream
/// stream of its own on the host's NATS (refusing at once when NATS cannot be reached: the
/// operation answers 503 and the next one tries again).
fn route_opener(config: &Config) -> Opener {
    let url = config.nats_url.clone();
    let request_timeout = Duration::from_millis(config.nats_request_timeout_ms);
    let replicas = config.nats_replicas;
    let breaker = BreakerConfig {
        failure_threshold: config.nats_breaker_failures,
        cooldown: Duration::from_millis(config.nats_breaker_cooldown_ms),
    };
    Arc::new(move |target| {
        let url = url.clone();
        Box::pin(async move {
            match target {
                Target::Embedded(path) => {
                    // A handle closed as idle a moment ago may still be letting go of the
                    // directory's lock.
                    let log = tokio::task::spawn_blocking(move || {
                        EmbeddedLog::open_waiting(&path, Duration::from_secs(5))
                    })
                    .await
                    .map_err(|e| crate::store::StoreError::Unavailable(e.to_string()))??;
                    Ok(Arc::new(log) as Arc<dyn EventLog>)
                }
                Target::Stream {
                    stream,
                    url: route_url,
                } => {
                    let url = route_url.or(url).ok_or_else(|| {
                        crate::store::StoreError::Unavailable(
                            "no nats_url for a stream route".into(),
                        )
                    })?;
                    let js = JetStreamConfig {
                        command_bucket: format!("{stream}_COMMANDS"),
                        subject_prefix: Some(stream.clone()),
                        stream,
                        request_timeout,
                        replicas,
                        breaker,
                        ..JetStreamConfig::default()
                    };
                    let log = JetStreamLog::connect_with(&url, js, ConnectMode::FailFast).await?;
                    Ok(Arc::new(log) as Arc<dyn EventLog>)
                }
            }
        })
    })
}
