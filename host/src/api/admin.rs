//! Admin handlers: components (upload, list, versions, rollback, limits), tenants, drain, reload,
//! health, readiness and metrics.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json as AxumJson;
use serde::Deserialize;
use serde_json::{json, Value};

use super::gateway::path_error;
use super::{ApiError, AppState, Routes};
use crate::registry::RegistryError;
use crate::runtime::Limits;
use crate::types::{AggregateType, TenantId};

const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit of the JSON bodies of admin requests other than uploads.
const SMALL_BODY: usize = 64 << 10;

/// The token-protected routes and the open ones (probes and the API document).
pub(super) fn routes() -> (Routes, Routes) {
    let protected = Routes::new()
        .add(
            Method::PUT,
            "/admin/aggregates/{aggregate_type}/component",
            upload,
        )
        .add(Method::GET, "/admin/aggregates", list)
        .add(
            Method::GET,
            "/admin/aggregates/{aggregate_type}/versions",
            versions,
        )
        .add(
            Method::POST,
            "/admin/aggregates/{aggregate_type}/rollback",
            rollback,
        )
        .add(
            Method::PUT,
            "/admin/aggregates/{aggregate_type}/limits",
            limits,
        )
        .add(Method::GET, "/admin/tenants", tenants)
        .add(
            Method::GET,
            "/admin/tenants/{tenant}/export",
            super::lifecycle::export,
        )
        .add(
            Method::POST,
            "/admin/tenants/{tenant}/import",
            super::lifecycle::import,
        )
        .add(Method::GET, "/admin/tenants/{tenant}", tenant)
        .add(
            Method::DELETE,
            "/admin/tenants/{tenant}",
            super::lifecycle::delete,
        )
        .add(Method::POST, "/admin/drain", drain)
        .add(Method::POST, "/admin/resume", resume)
        .add(Method::POST, "/admin/reload", reload)
        .add(Method::GET, "/admin/cluster", cluster)
        .add(Method::GET, "/admin/placement", placement)
        .add(Method::PUT, "/admin/placement/pins/{tenant_id}", pin)
        .add(Method::DELETE, "/admin/placement/pins/{tenant_id}", unpin)
        .add(Method::GET, "/admin/index", index)
        .add(Method::POST, "/admin/cache/clear", cache_clear)
        .add(Method::GET, "/metrics", metrics);
    let open = Routes::new()
        .add(Method::GET, "/health", health)
        .add(Method::GET, "/ready", ready)
        .add(Method::GET, "/openapi.json", super::openapi);
    (protected, open)
}

/// Byte-wise comparison whose time does not depend on where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `Authorization: Bearer <admin_token>` on every protected route (no token configured: the
/// admin API is on loopback and open).
pub(super) async fn require_token(
    State(st): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &st.0.config.admin_token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let refusal = match given.and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) {
        Some(t) if same_secret(t.trim().as_bytes(), expected.as_bytes()) => {
            return next.run(request).await
        }
        None => ApiError::Unauthorized(
            "missing bearer token: send `Authorization: Bearer <admin token>`",
        ),
        Some(_) => ApiError::Unauthorized("the bearer token is wrong"),
    };
    // Answer at once; read the refused upload to its end in the background (bounded in bytes and
    // time) so the client sees the 401 and not a reset connection.
    tokio::spawn(super::body::discard(
        request.into_body(),
        st.0.config.max_component_mb << 20,
    ));
    refusal.into_response()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("worker task: {e}")))
}

fn aggregate_type(path: Result<Path<String>, PathRejection>) -> Result<AggregateType, ApiError> {
    let Path(ty) = path.map_err(path_error)?;
    Ok(AggregateType::new(ty)?)
}

/// `PUT /admin/aggregates/{aggregate_type}/component` with the raw wasm as body.
async fn upload(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = st.0.config.max_component_mb << 20;
    let ty = match aggregate_type(path) {
        Ok(ty) => ty,
        Err(e) => {
            super::body::discard(body, limit).await;
            return Err(e);
        }
    };
    let bytes = match super::body::read(body, limit, "component").await {
        Ok(b) => b,
        Err(e) => {
            st.0.metrics.deploy(&ty, e.problem_type().slug());
            return Err(e);
        }
    };
    let size = bytes.len();
    let compiles_before = st.0.runtime.stats().compiles;
    let started = Instant::now();
    let mut cluster_answer = Value::Null;
    let result = match &st.0.cluster {
        Some(cluster) => match cluster.deploy(&ty, bytes.to_vec(), None).await {
            Ok(d) => {
                cluster_answer = cluster_json(&d);
                Ok(d.deployed)
            }
            Err(crate::cluster::ClusterError::Registry(e)) => Err(e),
            Err(e) => {
                let e = ApiError::from(e);
                st.0.metrics.deploy(&ty, e.problem_type().slug());
                return Err(e);
            }
        },
        None => {
            let registry = st.0.registry.clone();
            let deploy_ty = ty.clone();
            blocking(move || registry.deploy(&deploy_ty, &bytes, None)).await?
        }
    };
    // Compiling dominates a deploy that compiled; the registry validates, then compiles, then swaps.
    if st.0.runtime.stats().compiles > compiles_before {
        st.0.metrics.compiled(started.elapsed());
    }
    match result {
        Ok(d) => {
            st.0.metrics
                .deploy(&ty, if d.changed { "deployed" } else { "unchanged" });
            let status = if d.changed {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut body = json!({
                "aggregate_type": ty,
                "component": d.component,
                "version": d.version,
                "changed": d.changed,
                "bytes": size,
            });
            if !cluster_answer.is_null() {
                body["cluster"] = cluster_answer;
            }
            Ok((status, AxumJson(body)).into_response())
        }
        Err(e) => {
            let e = ApiError::Registry(e);
            st.0.metrics.deploy(&ty, e.problem_type().slug());
            Err(e)
        }
    }
}

/// `GET /admin/aggregates`
async fn list(State(st): State<AppState>) -> Result<Response, ApiError> {
    let manifest = st.0.registry.manifest();
    let aggregates: Vec<Value> = manifest
        .aggregates
        .iter()
        .map(|(ty, e)| {
            json!({
                "aggregate_type": ty,
                "component": e.component,
                "version": e.version,
                "limits": e.limits,
                "isolation": e.isolation,
                "snapshot_every": e.snapshot_every,
                "snapshot_policy": e.snapshot_policy,
                "earlier_components": e.history.len(),
            })
        })
        .collect();
    Ok(AxumJson(json!({ "aggregates": aggregates })).into_response())
}

/// `GET /admin/aggregates/{aggregate_type}/versions`: earlier components, oldest first, then the
/// active one.
async fn versions(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let ty = aggregate_type(path)?;
    let manifest = st.0.registry.manifest();
    let entry = manifest
        .aggregates
        .get(&ty)
        .ok_or_else(|| RegistryError::UnknownType(ty.clone()))?;
    let blobs = st.0.registry.blobs();
    let size = |h| std::fs::metadata(blobs.path(h)).map(|m| m.len()).ok();
    let mut versions: Vec<Value> = entry
        .history
        .iter()
        .map(|h| json!({ "component": h, "active": false, "bytes": size(h) }))
        .collect();
    versions.push(
        json!({ "component": entry.component, "active": true, "bytes": size(&entry.component) }),
    );
    Ok(AxumJson(json!({
        "aggregate_type": ty,
        "component": entry.component,
        "version": entry.version,
        "versions": versions,
    }))
    .into_response())
}

/// `POST /admin/aggregates/{aggregate_type}/rollback`
async fn rollback(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let ty = aggregate_type(path)?;
    if let Some(cluster) = &st.0.cluster {
        let d = cluster.rollback(&ty).await?;
        return Ok(AxumJson(json!({
            "aggregate_type": ty,
            "component": d.deployed.component,
            "version": d.deployed.version,
            "changed": d.deployed.changed,
            "cluster": cluster_json(&d),
        }))
        .into_response());
    }
    let registry = st.0.registry.clone();
    let rollback_ty = ty.clone();
    let d = blocking(move || registry.rollback(&rollback_ty)).await??;
    Ok(AxumJson(json!({ "aggregate_type": ty, "component": d.component, "version": d.version, "changed": d.changed }))
        .into_response())
}

/// The `cluster` member of a deploy or rollback answer in cluster mode.
fn cluster_json(d: &crate::cluster::ClusterDeployed) -> Value {
    json!({
        "revision": d.revision,
        "hosts": d.acks.hosts.len(),
        "acknowledged": d.acks.acknowledged.len(),
        "acknowledged_by": d.acks.acknowledged,
        "not_acknowledged": d.acks.not_acknowledged,
        "refused": d.acks.refused,
    })
}

fn cluster_mode<'a>(
    st: &'a AppState,
    what: &str,
) -> Result<&'a std::sync::Arc<crate::cluster::Cluster>, ApiError> {
    st.0.cluster.as_ref().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "{what} needs cluster mode (cluster: true); this host runs alone"
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementQuery {
    tenant_id: Option<String>,
}

/// `GET /admin/placement[?tenant_id=acme]`: the pins, the hosts that may own tenants (live, with
/// their range, whether they drain and the tenants they released) and, for `tenant_id`, its
/// owner now.
async fn placement(
    State(st): State<AppState>,
    query: Result<axum::extract::Query<PlacementQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let cluster = cluster_mode(&st, "placement")?;
    let axum::extract::Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let hosts: Vec<Value> = cluster
        .members()
        .await?
        .into_iter()
        .filter(|m| m.live)
        .map(|m| {
            json!({
                "host_id": m.member.host_id,
                "draining": m.member.draining,
                "tenant_range": m.member.tenant_range,
                "released": m.member.released,
            })
        })
        .collect();
    let mut body = json!({ "host_id": cluster.host_id(), "pins": cluster.pins(), "hosts": hosts });
    if let Some(t) = q.tenant_id {
        let tenant = TenantId::new(t)?;
        body["tenant_id"] = json!(tenant.as_str());
        body["owner"] = json!(cluster.owner_of(&tenant));
    }
    Ok(AxumJson(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    host_id: String,
}

pub(super) fn tenant_path(path: Result<Path<String>, PathRejection>) -> Result<TenantId, ApiError> {
    let Path(t) = path.map_err(path_error)?;
    // `_` names the single (unnamed) tenant, as in the placement bucket.
    if t == crate::cluster::SINGLE_TENANT_KEY {
        return Ok(TenantId::single());
    }
    Ok(TenantId::new(t)?)
}

/// `PUT /admin/placement/pins/{tenant_id}` `{"host_id": "host-2"}`: pin a tenant to a host (it
/// moves there as soon as every host read the pin: at the next heartbeat).
async fn pin(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let cluster = cluster_mode(&st, "pinning a tenant")?;
    let tenant = tenant_path(path)?;
    let body = super::body::read(body, SMALL_BODY, "body").await?;
    let r: PinRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?;
    if !crate::config::valid_host_id(&r.host_id) {
        return Err(ApiError::BadRequest(format!(
            "host_id: {:?} is not a host id (1 to 64 ASCII letters, digits, '-' and '_')",
            r.host_id
        )));
    }
    cluster.pin(&tenant, Some(&r.host_id)).await?;
    Ok(AxumJson(json!({
        "tenant_id": tenant.as_str(),
        "pinned_to": r.host_id,
        "owner": cluster.owner_of(&tenant),
    }))
    .into_response())
}

/// `DELETE /admin/placement/pins/{tenant_id}`: remove a pin (the tenant goes back to its
/// hashed owner).
async fn unpin(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let cluster = cluster_mode(&st, "unpinning a tenant")?;
    let tenant = tenant_path(path)?;
    cluster.pin(&tenant, None).await?;
    Ok(AxumJson(json!({
        "tenant_id": tenant.as_str(),
        "pinned_to": Value::Null,
        "owner": cluster.owner_of(&tenant),
    }))
    .into_response())
}

/// `GET /admin/cluster`: this host's view of the cluster — every host with its liveness, what
/// it serves and the manifest revision it has applied. 404 `not-found` outside cluster mode.
async fn cluster(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(cluster) = &st.0.cluster else {
        return Err(ApiError::NoRoute(
            "/admin/cluster (this host is not in cluster mode: set cluster: true)".into(),
        ));
    };
    let health = cluster.health();
    let hosts = cluster.members().await?;
    Ok(AxumJson(json!({
        "host_id": cluster.host_id(),
        "caught_up": health.ok,
        "state": health.state,
        "reason": health.reason,
        "manifest_revision": health.manifest_revision,
        "install_errors": health.install_errors,
        "live_hosts": hosts.iter().filter(|h| h.live).count(),
        "hosts": hosts,
    }))
    .into_response())
}

/// `PUT /admin/aggregates/{aggregate_type}/limits` with a JSON object of the limits to change.
async fn limits(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let ty = aggregate_type(path)?;
    let body = super::body::read(body, SMALL_BODY, "limits").await?;
    let change: serde_json::Map<String, Value> =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("limits: {e}")))?;
    if let Some(cluster) = &st.0.cluster {
        // From the bucket's entry, not from what this host has installed.
        let (limits, revision) = cluster.change_limits(&ty, &change).await?;
        return Ok(AxumJson(
            json!({ "aggregate_type": ty, "limits": limits, "cluster": { "revision": revision } }),
        )
        .into_response());
    }
    let current = st.0.registry.resolve(&ty)?.limits;
    let mut merged =
        serde_json::to_value(current).map_err(|e| ApiError::Internal(e.to_string()))?;
    let obj = merged
        .as_object_mut()
        .expect("limits serialize as an object");
    obj.extend(change);
    let limits: Limits =
        serde_json::from_value(merged).map_err(|e| ApiError::BadRequest(format!("limits: {e}")))?;
    let registry = st.0.registry.clone();
    let (update_ty, new) = (ty.clone(), limits.clone());
    blocking(move || {
        registry.update(&update_ty, |e| {
            e.limits = new;
            Ok(())
        })
    })
    .await??;
    Ok(AxumJson(json!({ "aggregate_type": ty, "limits": limits })).into_response())
}

/// A tenant's row of `/admin/tenants`.
async fn tenant_row(st: &AppState, t: &super::tenants::TenantStatus) -> Value {
    let aggregates =
        st.0.service
            .log()
            .list_aggregates(&t.tenant)
            .await
            .map(|a| a.len())
            .ok();
    let owner = st.0.cluster.as_ref().map(|c| c.owner_of(&t.tenant));
    let usage = st.0.quotas.report(&t.tenant);
    let commands = st.0.metrics.tenant_commands(&t.tenant);
    let mut row = json!({
        "tenant_id": t.tenant.as_str(),
        "aggregates": aggregates,
        "usage": {
            "commands": commands,
            "quota_refusals": usage.quota_refusals,
        },
        "quotas": {
            "commands_per_sec": usage.limits.commands_per_sec,
            "burst": usage.limits.burst,
            "max_aggregates": usage.limits.max_aggregates,
        },
        "in_flight": t.in_flight,
        // Cluster mode: a released tenant (a drain of one tenant) counts as draining here.
        "draining": t.draining
            || st.0.cluster.as_ref().is_some_and(|c| c.is_released(&t.tenant)),
        "last_activity": t.last_activity,
    });
    if let Some(owner) = owner {
        row["owner"] = json!(owner);
    }
    row
}

/// `GET /admin/tenants`
async fn tenants(State(st): State<AppState>) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    for t in st.0.tenants.statuses() {
        out.push(tenant_row(&st, &t).await);
    }
    Ok(AxumJson(json!({ "tenants": out })).into_response())
}

/// `GET /admin/tenants/{tenant}`: one row of `/admin/tenants` (404 for a tenant not listed).
async fn tenant(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    let Some(status) =
        st.0.tenants
            .statuses()
            .into_iter()
            .find(|t| t.tenant == tenant)
    else {
        return Err(ApiError::NotFound(format!(
            "tenant `{}` has no accepted work on this host and is not configured",
            tenant.as_str()
        )));
    };
    Ok(AxumJson(tenant_row(&st, &status).await).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Cluster mode: drain (resume) the whole host instead of one tenant.
    #[serde(default)]
    host: bool,
}

async fn drain_request(body: Body) -> Result<(TenantId, Duration, bool), ApiError> {
    let body = super::body::read(body, SMALL_BODY, "body").await?;
    let r: DrainRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DrainRequest::default()
    } else {
        // Through a map: serde would also take a struct from a JSON array (`[null, null]`).
        let bad = |e: serde_json::Error| ApiError::BadRequest(format!("body: {e}"));
        let object: serde_json::Map<String, Value> = serde_json::from_slice(&body).map_err(bad)?;
        serde_json::from_value(Value::Object(object)).map_err(bad)?
    };
    if r.host && r.tenant_id.is_some() {
        return Err(ApiError::BadRequest(
            "body: give either `tenant_id` or `host: true`, not both".into(),
        ));
    }
    let tenant = TenantId::new(r.tenant_id.unwrap_or_default())?;
    Ok((
        tenant,
        r.timeout_ms
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_millis),
        r.host,
    ))
}

/// `POST /admin/drain` `{"tenant_id": "acme", "timeout_ms": 30000}`: refuse the tenant's new
/// commands and wait for those in flight. In cluster mode the tenant is handed over instead:
/// this host releases it (its next owner serves it) and waits for those in flight here;
/// `{"host": true}` drains the whole host that way.
async fn drain(State(st): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let (tenant, timeout, host) = drain_request(body).await?;
    let started = Instant::now();
    if host {
        let cluster = cluster_mode(&st, "draining a whole host")?;
        // Announced at once: every host computes owners without this one, so new commands go
        // to the next owners; those already running here finish.
        cluster.set_draining(true).await?;
        let left = st.0.tenants.wait_all_idle(timeout).await;
        tracing::info!(in_flight = left, "host drained");
        return Ok(AxumJson(json!({
            "host_id": cluster.host_id(),
            "draining": true,
            "drained": left == 0,
            "in_flight": left,
            "waited_ms": started.elapsed().as_millis() as u64,
        }))
        .into_response());
    }
    if let Some(cluster) = &st.0.cluster {
        // Cluster mode: hand the tenant over. Announced at once: every host computes its owner
        // without this one, so new commands go to the next owner (which starts once this host
        // can no longer write); those running here finish or are fenced at their append and run
        // again there.
        let was = cluster.release(&tenant, true).await?;
        let left = st.0.tenants.wait_idle(&tenant, timeout).await;
        let owner = cluster.owner_of(&tenant);
        tracing::info!(
            tenant_id = tenant.as_str(),
            in_flight = left,
            next_owner = owner.as_deref().unwrap_or("none"),
            "tenant released"
        );
        return Ok(AxumJson(json!({
            "tenant_id": tenant.as_str(),
            "host_id": cluster.host_id(),
            "draining": true,
            "was_draining": was,
            "drained": left == 0,
            "in_flight": left,
            "owner": owner,
            "waited_ms": started.elapsed().as_millis() as u64,
        }))
        .into_response());
    }
    let left = st.0.tenants.drain(&tenant, timeout).await;
    tracing::info!(
        tenant_id = tenant.as_str(),
        in_flight = left,
        "tenant drained"
    );
    Ok(AxumJson(json!({
        "tenant_id": tenant.as_str(),
        "draining": true,
        "drained": left == 0,
        "in_flight": left,
        "waited_ms": started.elapsed().as_millis() as u64,
    }))
    .into_response())
}

/// `POST /admin/resume` `{"tenant_id": "acme"}`: accept the tenant's commands again (cluster
/// mode: take the released tenant back where placement gives it to this host).
async fn resume(State(st): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let (tenant, _, host) = drain_request(body).await?;
    if host {
        let cluster = cluster_mode(&st, "resuming a whole host")?;
        let was = cluster.is_draining();
        cluster.set_draining(false).await?;
        return Ok(AxumJson(
            json!({ "host_id": cluster.host_id(), "draining": false, "was_draining": was }),
        )
        .into_response());
    }
    if let Some(cluster) = &st.0.cluster {
        let was = cluster.release(&tenant, false).await?;
        return Ok(AxumJson(json!({
            "tenant_id": tenant.as_str(),
            "host_id": cluster.host_id(),
            "draining": false,
            "was_draining": was,
            "owner": cluster.owner_of(&tenant),
        }))
        .into_response());
    }
    let was = st.0.tenants.resume(&tenant);
    Ok(
        AxumJson(json!({ "tenant_id": tenant.as_str(), "draining": false, "was_draining": was }))
            .into_response(),
    )
}

/// `POST /admin/reload`: read the manifest file again (in cluster mode: the manifest bucket);
/// placement is single-host until tenant placement exists.
async fn reload(State(st): State<AppState>) -> Result<Response, ApiError> {
    if let Some(cluster) = &st.0.cluster {
        let installed = cluster.reload().await?;
        cluster.reload_placement().await?;
        return Ok(AxumJson(json!({
            "installed": installed,
            "aggregates": st.0.registry.manifest().aggregates.len(),
            "manifest_revision": cluster.health().manifest_revision,
            "placement": { "mode": "cluster", "pins": cluster.pins(), "tenant_range": st.0.config.tenant_range },
        }))
        .into_response());
    }
    let registry = st.0.registry.clone();
    let compiles_before = st.0.runtime.stats().compiles;
    let started = Instant::now();
    let changed = blocking(move || registry.reload())
        .await?
        .map_err(ApiError::Reload)?;
    if st.0.runtime.stats().compiles > compiles_before {
        st.0.metrics.compiled(started.elapsed());
    }
    Ok(AxumJson(json!({
        "changed": changed,
        "aggregates": st.0.registry.manifest().aggregates.len(),
        "placement": { "mode": "single-host", "tenants": st.0.config.tenants },
    }))
    .into_response())
}

/// `GET /admin/index`: the state index — the log position it applied, the log's position, and
/// the rebuilds of types whose component changed under snapshot policy `rebuild`.
async fn index(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(index) = &st.0.index else {
        return Ok(AxumJson(json!({ "enabled": false })).into_response());
    };
    let status = index.status();
    let log_position = st.0.service.log().position().await.ok();
    Ok(AxumJson(json!({
        "enabled": true,
        "position": status.position,
        "log_position": log_position,
        "rebuilds": status.rebuilds,
    }))
    .into_response())
}

/// `POST /admin/cache/clear`: remove the precompiled artifacts on disk and close every tenant log
/// (storage routes) that nothing uses now.
async fn cache_clear(State(st): State<AppState>) -> Result<Response, ApiError> {
    let runtime = st.0.runtime.clone();
    let artifacts = blocking(move || {
        runtime
            .clear_artifacts()
            .map_err(|e| ApiError::Internal(format!("clear artifacts: {e}")))
    })
    .await??;
    let tenant_logs = match &st.0.routed {
        Some(r) => r.close_idle(Duration::ZERO).await,
        None => 0,
    };
    tracing::info!(artifacts, tenant_logs, "caches cleared");
    Ok(
        AxumJson(json!({ "artifacts_removed": artifacts, "tenant_logs_closed": tenant_logs }))
            .into_response(),
    )
}

/// `GET /metrics` (Prometheus text format).
async fn metrics(State(st): State<AppState>) -> Response {
    st.0.metrics.sync_runtime(&st.0.runtime.stats());
    st.0.metrics.sync_tenant_aggregates(&st.0.quotas.counted());
    st.0.metrics.sync_process(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        st.0.tenants
            .open_streams(&crate::types::TenantId::single())
            .1,
        st.0.index.as_ref().map(|i| i.position()),
    );
    let ct = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    ([(header::CONTENT_TYPE, ct)], st.0.metrics.render()).into_response()
}

/// The event log's health as the log tracks it (its breaker and connection state in JetStream
/// mode, its storage state when embedded): answered at once, without I/O, so a probe never waits
/// on a hung dependency.
fn event_log_check(st: &AppState) -> Value {
    let log = st.0.service.log();
    let health = log.health();
    json!({ "ok": health.ok, "kind": log.kind(), "state": health.state, "reason": health.reason })
}

fn nats_status(st: &AppState, log: &Value) -> Value {
    match &st.0.config.nats_url {
        Some(url) => json!({
            "ok": log["ok"],
            "url": url,
            "state": log["state"],
            "reason": log["reason"],
        }),
        None => Value::Null,
    }
}

/// `GET /health`: liveness. Always 200 while the process serves, answered at once; `status` says
/// whether storage and NATS are up as the event log tracks them.
async fn health(State(st): State<AppState>) -> Response {
    let log = event_log_check(&st);
    let status = if log["ok"] == Value::Bool(true) {
        "ok"
    } else {
        "degraded"
    };
    AxumJson(json!({
        "status": status,
        "uptime_secs": st.0.started.elapsed().as_secs(),
        "nats": nats_status(&st, &log),
        "event_log": log,
    }))
    .into_response()
}

/// `GET /ready`: 200 when configuration, manifest, storage and NATS are all good and the host is
/// not shutting down; otherwise a `not-ready` problem listing the checks (a failing `nats` or
/// `storage` check carries the log's `state` and `reason`, e.g. `NATS not connected yet (…)`).
/// Answered at once from tracked state: no I/O that could hang.
async fn ready(State(st): State<AppState>) -> Result<Response, ApiError> {
    let manifest = st.0.registry.manifest();
    let missing: Vec<&AggregateType> = manifest
        .aggregates
        .iter()
        .filter(|(_, e)| !st.0.runtime.is_loaded(&e.component))
        .map(|(t, _)| t)
        .collect();
    let log = event_log_check(&st);
    let mut checks = json!({
        "config": { "ok": true },
        "manifest": { "ok": missing.is_empty(), "aggregates": manifest.aggregates.len(), "not_loaded": missing },
        "storage": log,
        "accepting": { "ok": !st.0.tenants.is_shutting_down() },
    });
    let nats = nats_status(&st, &checks["storage"]);
    if !nats.is_null() {
        checks["nats"] = nats;
    }
    if let Some(cluster) = &st.0.cluster {
        checks["cluster"] = serde_json::to_value(cluster.health()).unwrap_or(Value::Null);
    }
    let ok = checks
        .as_object()
        .expect("object")
        .values()
        .all(|c| c["ok"] == Value::Bool(true));
    if ok {
        Ok(AxumJson(json!({ "ready": true, "checks": checks })).into_response())
    } else {
        Err(ApiError::NotReady(checks))
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
    }
}
