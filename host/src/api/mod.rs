//! The HTTP API: the gateway (commands and queries) and the admin API (deploy, health, metrics),
//! each an axum [`Router`] on its own listener. Errors become RFC 7807 problems in exactly one
//! place ([`error`]); the OpenAPI document (`openapi.yaml`) is served at `/openapi.json` and a
//! test keeps it equal to the routes below.
//!
//! # Examples
//!
//! Tests call a router without a socket:
//!
//! ```no_run
//! # async fn f(state: aggregate_host::api::AppState) {
//! use tower::ServiceExt;
//! let response = aggregate_host::api::gateway(state)
//!     .oneshot(axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap())
//!     .await
//!     .unwrap();
//! assert!(response.status().is_success());
//! # }
//! ```

mod admin;
pub mod auth;
mod body;
pub mod error;
mod forward;
mod gateway;
pub mod ingress;
mod lifecycle;
pub mod quota;
mod server;
pub mod tenants;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use tracing::Instrument;

pub use self::error::{ApiError, ProblemType, PROBLEM_JSON};
pub use self::server::{serve, Bound};
use self::tenants::{Tenants, TENANT_HEADER};
use crate::app::Host;
use crate::config::Config;
use crate::registry::Registry;
use crate::runtime::Runtime;
use crate::service::CommandService;
use crate::telemetry::Metrics;

/// Filtered queries evaluated at once on one host (each on its own thread); more wait.
const MAX_CONCURRENT_QUERIES: usize = 8;

/// The OpenAPI document of both APIs (YAML source).
pub const OPENAPI_YAML: &str = include_str!("openapi.yaml");

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    config: Config,
    service: Arc<CommandService>,
    registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
    index: Option<Arc<crate::query::index::StateIndex>>,
    /// Filtered queries running now (each on its own filter thread).
    queries: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
    tenants: Tenants,
    /// JWT authentication of the gateway (when configured).
    auth: Option<Arc<auth::Authenticator>>,
    /// The routed event log (with `storage_routes`).
    routed: Option<Arc<crate::store::routed::RoutedLog>>,
    quotas: quota::Quotas,
    shutdown: tokio::sync::watch::Sender<bool>,
    listeners_closed: tokio::sync::watch::Sender<bool>,
    openapi: bytes::Bytes,
    started: Instant,
}

impl AppState {
    /// The state of a host's APIs; reports the service's work to `metrics`.
    ///
    /// # Panics
    ///
    /// If the embedded OpenAPI document is not valid YAML (a test guards this).
    pub fn new(host: &Host, metrics: Arc<Metrics>) -> Self {
        host.service.set_observer(metrics.clone());
        if let Some(breaker) = &host.breaker {
            breaker.set_observer(metrics.clone());
        }
        let doc: serde_json::Value =
            serde_yaml::from_str(OPENAPI_YAML).expect("openapi.yaml is valid YAML");
        let config = host.config.clone();
        for t in &config.tenants {
            metrics.know_tenant(t);
        }
        Self(Arc::new(Shared {
            tenants: Tenants::new(config.multi_tenant, config.tenants.clone())
                .with_routing(host.routed.as_ref().map(|r| r.routing().clone())),
            auth: host.auth.clone(),
            routed: host.routed.clone(),
            quotas: quota::Quotas::new(config.quotas.clone(), !config.cluster),
            config,
            service: host.service.clone(),
            registry: host.registry.clone(),
            runtime: host.runtime.clone(),
            cluster: host.cluster.clone(),
            index: host.index.clone(),
            queries: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_QUERIES)),
            metrics,
            shutdown: tokio::sync::watch::channel(false).0,
            listeners_closed: tokio::sync::watch::channel(false).0,
            openapi: serde_json::to_vec(&doc).expect("JSON").into(),
            started: Instant::now(),
        }))
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// Tenant gates (drain, in-flight counts).
    pub fn tenants(&self) -> &Tenants {
        &self.0.tenants
    }

    /// `tenant` has accepted work here: list it in the tenants table and use it as a metric label.
    fn tenant_accepted(&self, tenant: &crate::types::TenantId) {
        self.0.metrics.know_tenant(tenant);
        self.0.tenants.accepted(tenant);
    }

    /// A quota refused a command of `target`: count it (metrics, usage) and build the answer.
    fn quota_refused(
        &self,
        target: &crate::types::AggregateRef,
        started: Instant,
        quota: quota::Quota,
        retry_after: Option<std::time::Duration>,
    ) -> ApiError {
        let tenant = &target.tenant;
        self.0.quotas.refused(tenant);
        self.0.metrics.quota_refusal(tenant, quota.as_str());
        self.0.metrics.command(
            self.type_label(&target.aggregate_type),
            tenant,
            crate::telemetry::CommandOutcomeLabel::Refused,
            started.elapsed(),
        );
        let limits = self.0.quotas.limits(tenant);
        let limit = match quota {
            quota::Quota::Rate => serde_json::json!(limits.commands_per_sec),
            quota::Quota::Aggregates => serde_json::json!(limits.max_aggregates),
        };
        tracing::info!(tenant_id = tenant.as_str(), quota = quota.as_str(), %limit, "command refused by a quota");
        ApiError::QuotaExceeded {
            tenant: tenant.clone(),
            quota,
            limit,
            retry_after,
        }
    }

    /// For a command that would create an aggregate of a tenant with an aggregate bound: a place
    /// under the bound, held while the command runs (`None`: the aggregate exists).
    ///
    /// # Errors
    ///
    /// [`ApiError::QuotaExceeded`] at the bound; [`ApiError::Service`] when the log fails.
    async fn reserve_aggregate(
        &self,
        target: &crate::types::AggregateRef,
        started: Instant,
    ) -> Result<Option<quota::Reservation>, ApiError> {
        use crate::service::ServiceError;
        let tenant = &target.tenant;
        let log = self.0.service.log();
        if log.version(target).await.map_err(ServiceError::from)?.0 > 0 {
            return Ok(None);
        }
        let view = self.0.quotas.count_view(tenant);
        let listed = match view.count {
            Some(n) => n,
            None => log
                .list_aggregates(tenant)
                .await
                .map_err(ServiceError::from)?
                .len() as u64,
        };
        match self.0.quotas.reserve(tenant, view, listed) {
            Ok(r) => Ok(Some(r)),
            Err(_) => Err(self.quota_refused(target, started, quota::Quota::Aggregates, None)),
        }
    }

    /// Count an accepted command of `tenant` (`created`: it created its aggregate); the
    /// tenant's aggregates are counted from the log once, in the background.
    fn count_accepted(&self, tenant: &crate::types::TenantId, created: bool) {
        if !self.0.quotas.accepted(tenant, created) {
            return;
        }
        let (st, tenant) = (self.clone(), tenant.clone());
        tokio::spawn(async move {
            match st.0.service.log().list_aggregates(&tenant).await {
                Ok(list) => st.0.quotas.record_count(&tenant, list.len() as u64),
                Err(e) => {
                    tracing::debug!(tenant_id = tenant.as_str(), error = %e, "aggregates not counted; retried on the next command");
                    st.0.quotas.count_failed(&tenant);
                }
            }
        });
    }

    /// The `aggregate_type` label of `ty`: itself when deployed, else a fixed marker.
    fn type_label<'a>(&self, ty: &'a crate::types::AggregateType) -> &'a str {
        if self.0.registry.resolve(ty).is_ok() {
            ty.as_str()
        } else {
            crate::telemetry::UNKNOWN_TYPE_LABEL
        }
    }

    /// Stop accepting commands and end every event stream (the first step of a graceful
    /// shutdown).
    pub fn begin_shutdown(&self) {
        self.0.tenants.begin_shutdown();
        self.0.shutdown.send_replace(true);
    }

    /// Resolves once [`AppState::begin_shutdown`] was called.
    pub fn shutdown_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.shutdown.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Stop the HTTP listeners (graceful: requests in flight finish). Also begins the shutdown.
    pub fn close_listeners(&self) {
        self.begin_shutdown();
        self.0.listeners_closed.send_replace(true);
    }

    /// Resolves once [`AppState::close_listeners`] was called.
    pub fn listeners_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.listeners_closed.subscribe();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
        }
    }
}

/// One route of the API, as recorded while the routers are built (and compared with the OpenAPI
/// document by a test).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Operation {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path template, e.g. `/aggregates/{aggregate_type}/{aggregate_id}`.
    pub path: String,
}

/// A router that remembers which operations it has.
struct Routes {
    router: Router<AppState>,
    operations: Vec<Operation>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            operations: Vec::new(),
        }
    }

    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("standard method");
        self.router = self.router.route(path, on(filter, handler));
        self.operations.push(Operation {
            method: method.to_string(),
            path: path.to_string(),
        });
        self
    }

    fn merge(mut self, other: Routes) -> Self {
        self.router = self.router.merge(other.router);
        self.operations.extend(other.operations);
        self
    }
}

/// The operations of the gateway and of the admin API, in that order.
pub fn operations() -> (Vec<Operation>, Vec<Operation>) {
    let (a, b) = admin::routes();
    (gateway::routes().operations, a.merge(b).operations)
}

/// The gateway router: commands, queries, the event stream, the OpenAPI document.
pub fn gateway(state: AppState) -> Router {
    let limit = state.0.config.max_command_bytes;
    gateway::routes()
        .router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            forward::route_to_owner,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            log_requests::<true>,
        ))
        .with_state(state)
}

/// The admin router: components, tenants, drain, reload, `/health`, `/ready`, `/metrics`. Every
/// route but `/health`, `/ready` and `/openapi.json` needs the bearer token (when one is
/// configured).
pub fn admin(state: AppState) -> Router {
    let limit = state.0.config.max_component_mb << 20;
    let (protected, open) = admin::routes();
    let protected = protected.router.route_layer(middleware::from_fn_with_state(
        state.clone(),
        admin::require_token,
    ));
    protected
        .merge(open.router)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            log_requests::<false>,
        ))
        .with_state(state)
}

/// The most bytes of a request body that no route took which are read (and dropped) after the
/// answer; a longer body loses its connection.
const UNROUTED_BODY_DRAIN: usize = 1 << 20;

/// Read a refused request's body to the end after the answer, so that a keep-alive client still
/// sending it keeps its connection (hyper closes one whose body was dropped unread).
pub(crate) fn drain_after_answer(request: Request) {
    tokio::spawn(body::discard(request.into_body(), UNROUTED_BODY_DRAIN));
}

async fn no_route(request: Request) -> ApiError {
    let e = ApiError::NoRoute(format!("{} {}", request.method(), request.uri().path()));
    drain_after_answer(request);
    e
}

async fn wrong_method(request: Request) -> ApiError {
    let e = ApiError::MethodNotAllowed(request.method().to_string());
    drain_after_answer(request);
    e
}

async fn openapi(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        state.0.openapi.clone(),
    )
        .into_response()
}

/// A request span carrying tenant, correlation id and trace id; logs 5xx answers with their hidden
/// detail at `error`, 4xx at `debug`; counts gateway errors per tenant.
async fn log_requests<const GATEWAY: bool>(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let tenant = text(TENANT_HEADER);
    let correlation_id = text(gateway::CORRELATION_HEADER);
    let traceparent = text("traceparent");
    let trace_id = traceparent
        .as_deref()
        .and_then(crate::telemetry::trace_id)
        .map(str::to_owned);
    let listener = if GATEWAY { "gateway" } else { "admin" };
    let span = tracing::info_span!(
        "request",
        listener,
        method = %request.method(),
        path = %request.uri().path(),
        tenant_id = tenant.as_deref().unwrap_or(""),
        correlation_id = correlation_id.as_deref().unwrap_or(""),
        trace_id = trace_id.as_deref().unwrap_or(""),
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    if state.0.tenants.is_shutting_down() {
        // Ask the client to close its keep-alive connection: the listener goes away soon.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status();
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let problem = response
        .extensions()
        .get::<error::ProblemMarker>()
        .map(|p| p.0.slug());
    let expected_refusal = response
        .extensions()
        .get::<error::ProblemMarker>()
        .is_some_and(|p| p.0.is_expected_refusal());
    if let Some(detail) = response.extensions().get::<error::HiddenDetail>() {
        if expected_refusal {
            // Shutting down, draining, not ready: the host is doing what it was asked to.
            tracing::info!(parent: &span, status = status.as_u16(), ms, problem, reason = %detail.0, "request refused");
        } else if problem == Some(ProblemType::Unavailable.slug()) {
            tracing::warn!(parent: &span, status = status.as_u16(), ms, problem, error = %detail.0, "request failed: dependency unavailable");
        } else {
            tracing::error!(parent: &span, status = status.as_u16(), ms, problem, error = %detail.0, "request failed");
        }
    } else if status.is_client_error() {
        tracing::debug!(parent: &span, status = status.as_u16(), ms, problem, "request refused");
    } else {
        tracing::debug!(parent: &span, status = status.as_u16(), ms, "request served");
    }
    if let (true, Some(problem)) = (GATEWAY, problem) {
        // With JWT on, the tenant the request ran as (a header may be the token's claim); a
        // refused token's header is nobody's.
        let label = match response.extensions().get::<auth::AuthTenant>() {
            Some(auth::AuthTenant(None)) => crate::telemetry::OTHER_TENANT_LABEL,
            Some(auth::AuthTenant(Some(t))) => state.0.metrics.raw_tenant_label(t.as_deref()),
            None => state.0.metrics.raw_tenant_label(tenant.as_deref()),
        };
        state.0.metrics.tenant_error(label, problem);
    }
    response
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
