//! Wiring: build the runtime, registry, event log, snapshot store and command service from a
//! [`Config`]. The embedded log is the default; a NATS URL selects JetStream.

use std::sync::Arc;

use crate::config::Config;
use crate::registry::Registry;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::service::{CommandService, ServiceConfig};
use crate::store::embedded::EmbeddedLog;
use crate::store::jetstream::{JetStreamConfig, JetStreamLog};
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
}

impl Host {
    /// Open everything under `config.data_dir`, and connect to NATS when configured.
    ///
    /// # Errors
    ///
    /// Any component that fails to open, with the path or URL in the message.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create data_dir {}", dir.display()))?;
        let runtime = Arc::new(Runtime::new(RuntimeConfig {
            artifact_dir: Some(dir.join("artifacts")),
            max_memory_bytes: config.max_memory_mb << 20,
            max_warm_instances: config.max_warm_instances,
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
        let log: Arc<dyn EventLog> = match &config.nats_url {
            Some(url) => {
                let js = JetStreamConfig {
                    stream: config.stream.clone(),
                    ..JetStreamConfig::default()
                };
                Arc::new(
                    JetStreamLog::connect(url, js)
                        .await
                        .with_context(|| format!("JetStream at {url}"))?,
                )
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
        })
    }
}
