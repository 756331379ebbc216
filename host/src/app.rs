//! Wiring: build the runtime, registry, event log, snapshot store and command service from a
//! [`Config`]. The embedded log is the default; a NATS URL selects JetStream.

use std::sync::Arc;

use crate::config::{Config, NatsConnect};
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::service::{CommandService, ServiceConfig};
use crate::store::breaker::{Breaker, BreakerConfig};
use crate::store::embedded::EmbeddedLog;
use crate::store::jetstream::{ConnectMode, JetStreamConfig, JetStreamLog};
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
        let registry = {
            let (runtime, dir, max) = (runtime.clone(), dir.clone(), config.max_component_mb << 20);
            tokio::task::spawn_blocking(move || {
                Registry::open(&dir, &dir.join("manifest.yaml"), runtime, max)
            })
            .await??
        };
        let registry = Arc::new(registry.with_default_snapshot_every(config.snapshot_every));
        let mut breaker = None;
        let log: Arc<dyn EventLog> = match &config.nats_url {
            Some(url) => {
                let request_timeout =
                    std::time::Duration::from_millis(config.nats_request_timeout_ms);
                let js = JetStreamConfig {
                    stream: config.stream.clone(),
                    request_timeout,
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
        Ok(Self {
            config,
            runtime,
            registry,
            service,
            breaker,
        })
    }
}
