//! Cluster mode: commands and state reads run on the tenant's owner. A gateway request for a
//! tenant another host owns is forwarded to it (one hop, see [`crate::cluster`]'s forwarding);
//! the owner runs it only while its membership lease holds. Reads of events and the event stream
//! are served by any host from the log.

use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::tenants::TENANT_HEADER;
use super::{ApiError, AppState};
use crate::cluster::{FORWARDED_HEADER, NOT_OWNER_HEADER};
use crate::types::{CommandId, TenantId};

/// Shortest wait for the owner's answer to one forward: the rest of `forward_retry_ms`, but at
/// least this (a paused owner must not hold a request longer than the retry budget, a slow
/// command must still get its answer).
const MIN_FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
const COMMAND_ID_HEADER: &str = "x-command-id";

/// Whether the request is one that runs on the tenant's owner: a command or a state read.
fn runs_on_owner(method: &Method, path: &str) -> bool {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        (method, parts.as_slice()),
        (&Method::POST, ["aggregates", _, _, "commands", _]) | (&Method::GET, ["aggregates", _, _])
    )
}

/// The tenant a request names; `None` when the header is malformed or missing where required
/// (the handler then answers with the right problem).
fn tenant_of(st: &AppState, request: &Request) -> Option<TenantId> {
    match request.headers().get(TENANT_HEADER) {
        None if st.0.config.multi_tenant => None,
        None => Some(TenantId::single()),
        Some(v) => TenantId::new(v.to_str().ok()?).ok(),
    }
}

fn not_owner(reason: String) -> Response {
    let mut response = ApiError::ClusterUnavailable(reason).into_response();
    response
        .headers_mut()
        .insert(NOT_OWNER_HEADER, HeaderValue::from_static("1"));
    response
}

/// The gateway middleware of cluster mode (a no-op otherwise).
pub(super) async fn route_to_owner(
    State(st): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(cluster) = st.0.cluster.clone() else {
        return next.run(request).await;
    };
    if !runs_on_owner(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    let Some(tenant) = tenant_of(&st, &request) else {
        return next.run(request).await;
    };
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    let me = cluster.host_id().to_string();
    let retry_for = Duration::from_millis(st.0.config.forward_retry_ms);
    let deadline = Instant::now() + retry_for;
    let mut backoff = Duration::from_millis(20);
    // The body is read once, so that the request can be run again (here or on another host)
    // when ownership moves while it is on its way.
    let (mut parts, body) = request.into_parts();
    let body = match super::body::read(body, st.0.config.max_command_bytes, "command body").await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // A command that may be sent twice must carry an id, so that it runs once.
    if parts.method == Method::POST && !parts.headers.contains_key(COMMAND_ID_HEADER) {
        let id = CommandId::generate().to_string();
        parts.headers.insert(
            COMMAND_ID_HEADER,
            HeaderValue::from_str(&id).expect("a UUID is a header value"),
        );
    }
    loop {
        let owner = cluster.owner_of(&tenant);
        let last_problem = match owner {
            Some(owner) if owner == me => match cluster.may_write(&tenant) {
                // Being handed over, or the lease is being renewed: wait within the budget.
                Err(reason) => reason,
                Ok(()) => {
                    let request =
                        Request::from_parts(parts.clone(), axum::body::Body::from(body.clone()));
                    let response = next.clone().run(request).await;
                    // Refused at the append (ownership moved while it ran): nothing was
                    // written; run it again where it belongs. A forwarder does that itself.
                    if forwarded || !response.headers().contains_key(NOT_OWNER_HEADER) {
                        return response;
                    }
                    format!("tenant `{tenant}` moved while its command ran here")
                }
            },
            Some(owner) if forwarded => {
                return not_owner(format!(
                    "tenant `{tenant}` is owned by host `{owner}`, not by this host"
                ));
            }
            Some(owner) => {
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let forward = cluster.forward(
                    &owner,
                    parts.method.as_str(),
                    path,
                    &parts.headers,
                    body.clone(),
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(MIN_FORWARD_TIMEOUT),
                );
                // An owner that dies with the request never answers: stop waiting as soon as
                // the view names another owner (the command is idempotent by its id, and the
                // old owner can no longer append it).
                let owner_changed = async {
                    while cluster.owner_of(&tenant).as_deref() == Some(owner.as_str()) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                let answer = tokio::select! {
                    answer = forward => answer,
                    () = owner_changed => Err(crate::cluster::ClusterError::Unavailable(
                        format!("host `{owner}` stopped owning tenant `{tenant}` while the request was on its way"),
                    )),
                };
                match answer {
                    Ok(answer) if !answer.not_owner() => {
                        let mut response = (
                            StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
                            answer.body,
                        )
                            .into_response();
                        for (k, v) in &answer.headers {
                            if let (Ok(name), Ok(value)) = (
                                axum::http::HeaderName::from_bytes(k.as_bytes()),
                                HeaderValue::from_str(v),
                            ) {
                                response.headers_mut().insert(name, value);
                            }
                        }
                        return response;
                    }
                    Ok(_) => format!("host `{owner}` no longer owns tenant `{tenant}`"),
                    Err(e) => format!("forwarding to host `{owner}`: {e}"),
                }
            }
            None => format!("no live host can own tenant `{tenant}` now"),
        };
        if Instant::now() + backoff > deadline {
            tracing::warn!(tenant = %tenant, problem = last_problem, "giving up: no owner could take the request");
            return not_owner(last_problem);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_commands_and_state_reads_run_on_the_owner() {
        let id = "01934b4e-8f3a-7000-8000-000000000001";
        assert!(runs_on_owner(
            &Method::POST,
            &format!("/aggregates/bank-account/{id}/commands/deposit")
        ));
        assert!(runs_on_owner(
            &Method::GET,
            &format!("/aggregates/bank-account/{id}")
        ));
        assert!(!runs_on_owner(
            &Method::GET,
            &format!("/aggregates/bank-account/{id}/events")
        ));
        assert!(!runs_on_owner(&Method::GET, "/events/stream"));
        assert!(!runs_on_owner(&Method::GET, "/openapi.json"));
        assert!(!runs_on_owner(
            &Method::GET,
            &format!("/aggregates/bank-account/{id}/commands/deposit")
        ));
    }
}
