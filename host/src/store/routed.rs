//! Per-tenant storage routing: tenants named by a route (`storage_routes`) get their own event
//! log — a JetStream stream of their own, or an embedded log in a directory of their own — and
//! every other tenant stays on the shared log.
//!
//! A route's log is opened on the first operation of one of its tenants ("created" in the log),
//! kept and reused ("cache hit", at debug level), and closed once unused for `idle`
//! ("closed idle") — never while an operation or an event stream still holds it — and at
//! shutdown ([`EventLog::flush`]). The same configuration routes the same way after a restart.
//!
//! What stays on the shared log: the host-wide feed ([`FeedFilter::all`]) and [`EventLog::position`]
//! — so the state index (filtered queries) covers the shared log's tenants only; a routed
//! tenant's event stream and command positions are its own log's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;

use super::{Appended, Commit, EventLog, Feed, FeedFilter, LogHealth, Result, StoreError};
use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, Event, TenantId, Version};

/// Where a route's tenants are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A JetStream stream of this name (subjects `<name>.tenant.>`, command bucket
    /// `<name>_COMMANDS`), on the host's NATS or on `url`.
    Stream {
        /// The stream.
        stream: String,
        /// Another NATS (`nats://host:port`, several separated by commas); `None`: the host's.
        url: Option<String>,
    },
    /// An embedded log in this directory.
    Embedded(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Stream { stream, url: None } => write!(f, "stream {stream}"),
            Target::Stream {
                stream,
                url: Some(url),
            } => write!(f, "stream {stream} at {url}"),
            Target::Embedded(d) => write!(f, "embedded log {}", d.display()),
        }
    }
}

/// Tenant ids, or prefixes ending in `*`, that a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Exact ids, or `prefix*`.
    pub tenants: Vec<String>,
    /// Where they are stored.
    pub target: Target,
}

impl Route {
    fn takes(&self, tenant: &TenantId) -> bool {
        let t = tenant.as_str();
        !tenant.is_single()
            && self.tenants.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => t.starts_with(prefix),
                None => p == t,
            })
    }
}

/// Which route (if any) takes a tenant: the first that names it.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    routes: Vec<Route>,
    strict: bool,
}

impl Routing {
    /// Routes in order (the first match wins); `strict`: tenants no route names are refused.
    pub fn new(routes: Vec<Route>, strict: bool) -> Self {
        Self { routes, strict }
    }

    /// The index of the route that takes `tenant`.
    pub fn route_of(&self, tenant: &TenantId) -> Option<usize> {
        self.routes.iter().position(|r| r.takes(tenant))
    }

    /// Whether `tenant` has a log of its own (its data is not in the shared log).
    pub fn is_routed(&self, tenant: &TenantId) -> bool {
        self.route_of(tenant).is_some()
    }

    /// Whether `tenant` may be served: a route names it, or routing is not strict.
    pub fn admits(&self, tenant: &TenantId) -> bool {
        !self.strict || self.is_routed(tenant)
    }

    /// The routes.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// Opens a route's log.
pub type Opener =
    Arc<dyn Fn(Target) -> BoxFuture<'static, Result<Arc<dyn EventLog>>> + Send + Sync>;

struct Open {
    log: Arc<dyn EventLog>,
    last_used: Instant,
}

/// The event log of a host with storage routes. See the module docs.
pub struct RoutedLog {
    shared: Arc<dyn EventLog>,
    routing: Arc<Routing>,
    opener: Opener,
    open: tokio::sync::Mutex<HashMap<usize, Open>>,
    idle: Duration,
}

impl RoutedLog {
    /// The shared log, the routes, how to open a route's log, and how long an unused one stays
    /// open. Spawns the task that closes idle logs (it ends when the `RoutedLog` is dropped).
    pub fn new(
        shared: Arc<dyn EventLog>,
        routing: Arc<Routing>,
        opener: Opener,
        idle: Duration,
    ) -> Arc<Self> {
        let log = Arc::new(Self {
            shared,
            routing,
            opener,
            open: tokio::sync::Mutex::new(HashMap::new()),
            idle,
        });
        let weak = Arc::downgrade(&log);
        let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(log) = weak.upgrade() else { return };
                log.close_idle(log.idle).await;
            }
        });
        log
    }

    /// Close the route logs unused for `idle` and held by nothing else; returns how many.
    pub async fn close_idle(&self, idle: Duration) -> usize {
        let closing: Vec<(usize, Open)> = {
            let mut open = self.open.lock().await;
            let ids: Vec<usize> = open
                .iter()
                .filter(|(_, o)| o.last_used.elapsed() >= idle && Arc::strong_count(&o.log) == 1)
                .map(|(i, _)| *i)
                .collect();
            ids.into_iter()
                .filter_map(|i| open.remove(&i).map(|o| (i, o)))
                .collect()
        };
        // Flushed and dropped outside the map's lock: other tenants are not held up. An
        // embedded log reopened meanwhile waits for its directory's lock (see the opener).
        let n = closing.len();
        for (i, o) in closing {
            if let Err(e) = o.log.flush().await {
                tracing::warn!(target_log = %self.routing.routes[i].target, error = %e, "flush of an idle tenant log failed");
            }
            tracing::info!(target_log = %self.routing.routes[i].target, idle_ms = o.last_used.elapsed().as_millis() as u64, "tenant log closed idle");
        }
        n
    }

    /// The routes.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// Route logs open now.
    pub async fn open_logs(&self) -> usize {
        self.open.lock().await.len()
    }

    /// The log that stores `tenant`'s data.
    async fn log_for(&self, tenant: &TenantId) -> Result<Arc<dyn EventLog>> {
        let Some(i) = self.routing.route_of(tenant) else {
            return Ok(self.shared.clone());
        };
        let mut open = self.open.lock().await;
        if let Some(o) = open.get_mut(&i) {
            o.last_used = Instant::now();
            tracing::debug!(tenant_id = tenant.as_str(), target_log = %self.routing.routes[i].target, "tenant log cache hit");
            return Ok(o.log.clone());
        }
        let target = self.routing.routes[i].target.clone();
        let log = (self.opener)(target.clone()).await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open the {target} of tenant `{}`: {e}",
                tenant.as_str()
            ))
        })?;
        tracing::info!(tenant_id = tenant.as_str(), target_log = %target, "tenant log created");
        open.insert(
            i,
            Open {
                log: log.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(log)
    }
}

#[async_trait::async_trait]
impl EventLog for RoutedLog {
    fn kind(&self) -> &'static str {
        self.shared.kind()
    }

    fn health(&self) -> LogHealth {
        self.shared.health()
    }

    fn health_of(&self, tenant: &TenantId) -> LogHealth {
        let Some(i) = self.routing.route_of(tenant) else {
            return self.shared.health();
        };
        // Not open (or being opened): the next operation opens it and says if it cannot.
        match self.open.try_lock() {
            Ok(open) => open
                .get(&i)
                .map_or_else(LogHealth::healthy, |o| o.log.health()),
            Err(_) => LogHealth::healthy(),
        }
    }

    async fn append(&self, commit: Commit) -> Result<Appended> {
        self.log_for(&commit.aggregate.tenant)
            .await?
            .append(commit)
            .await
    }

    async fn read(&self, aggregate: &AggregateRef, after: Version) -> Result<Vec<Event>> {
        self.log_for(&aggregate.tenant)
            .await?
            .read(aggregate, after)
            .await
    }

    async fn version(&self, aggregate: &AggregateRef) -> Result<Version> {
        self.log_for(&aggregate.tenant)
            .await?
            .version(aggregate)
            .await
    }

    async fn find_command(
        &self,
        tenant: &TenantId,
        command_id: &CommandId,
    ) -> Result<Option<Appended>> {
        self.log_for(tenant)
            .await?
            .find_command(tenant, command_id)
            .await
    }

    async fn list_aggregates(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<(AggregateType, AggregateId)>> {
        self.log_for(tenant).await?.list_aggregates(tenant).await
    }

    async fn subscribe(&self, filter: FeedFilter, after: Option<u64>) -> Result<Feed> {
        match &filter.tenant {
            Some(t) => {
                let log = self.log_for(t).await?;
                let feed = log.subscribe(filter, after).await?;
                // The feed holds the route's log, so it is not closed as idle under the stream.
                Ok(feed
                    .map(move |item| {
                        let _held = &log;
                        item
                    })
                    .boxed())
            }
            None => self.shared.subscribe(filter, after).await,
        }
    }

    async fn position(&self) -> Result<u64> {
        self.shared.position().await
    }

    async fn position_of(&self, tenant: &TenantId) -> Result<u64> {
        self.log_for(tenant).await?.position().await
    }

    async fn flush(&self) -> Result<()> {
        let mut open = self.open.lock().await;
        for (i, o) in open.drain() {
            if let Err(e) = o.log.flush().await {
                tracing::warn!(target_log = %self.routing.routes[i].target, error = %e, "flush of a tenant log at shutdown failed");
            }
            tracing::info!(target_log = %self.routing.routes[i].target, "tenant log closed");
        }
        self.shared.flush().await
    }

    async fn delete_tenant(&self, tenant: &TenantId) -> Result<u64> {
        self.log_for(tenant).await?.delete_tenant(tenant).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_route_naming_a_tenant_takes_it() {
        let r = Routing::new(
            vec![
                Route {
                    tenants: vec!["acme".into(), "big-*".into()],
                    target: Target::Stream {
                        stream: "A".into(),
                        url: None,
                    },
                },
                Route {
                    tenants: vec!["big-two".into()],
                    target: Target::Embedded("b".into()),
                },
            ],
            true,
        );
        let t = |s: &str| TenantId::new(s).unwrap();
        assert_eq!(r.route_of(&t("acme")), Some(0));
        assert_eq!(r.route_of(&t("big-two")), Some(0));
        assert_eq!(r.route_of(&t("acme-2")), None);
        assert_eq!(r.route_of(&TenantId::single()), None);
        assert!(!r.admits(&t("other")));
        assert!(Routing::new(Vec::new(), false).admits(&t("other")));
    }
}
