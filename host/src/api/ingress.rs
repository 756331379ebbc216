//! Commands over NATS: a NATS service endpoint (request-reply) for internal services, next to
//! the HTTP gateway.
//!
//! # Subject scheme
//!
//! `<prefix>.<tenant>.<aggregate_type>.<aggregate_id>.<command_type>`, `prefix` from
//! `nats_ingress_subject` (default `aggregate.cmd`), `_` as the tenant for the single tenant; the
//! command type may contain dots (it is the rest of the subject). Tenant first, so NATS
//! permissions can give a service one tenant's commands only (`aggregate.cmd.acme.>`).
//!
//! # Message
//!
//! The payload is the command's JSON object. Headers, as over HTTP (names in any case):
//! `x-command-id`, `x-expected-version`, `x-correlation-id`, `traceparent`, optionally
//! `x-tenant-id`, which must name the subject's tenant, and `authorization` (with JWT on, a token
//! is checked and its `sub` recorded as the actor; none is needed). A message without a reply
//! subject is ignored.
//!
//! # Reply
//!
//! The body is what the gateway answers over HTTP: the command's outcome, or a problem JSON.
//! Header `Aggregate-Status` is the HTTP status; an error also carries the NATS service API's
//! `Nats-Service-Error` (the problem title) and `Nats-Service-Error-Code` (the status).
//!
//! Each request runs through the gateway router itself (as a request marked internal, which
//! skips JWT authentication: NATS permissions are the boundary), so validation, idempotency,
//! quotas, errors, metrics and cluster routing to the tenant's owner are the same as over HTTP.
//! The endpoint joins the queue group `aggregate-host`: each request is answered by one host.

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use axum::body::Body;
use axum::http::{Method, Request};
use axum::response::IntoResponse;
use futures::StreamExt;
use tower::ServiceExt as _;

use super::ApiError;
use crate::types::{AggregateId, AggregateType, TenantId};

/// The default subject prefix.
pub const DEFAULT_SUBJECT_PREFIX: &str = "aggregate.cmd";
/// The queue group of the endpoint (one host answers each request).
pub const QUEUE_GROUP: &str = "aggregate-host";
/// Reply header: the HTTP status of the answer.
pub const STATUS_HEADER: &str = "Aggregate-Status";
/// Requests handled at once by one host; more wait in the subscription.
const MAX_IN_FLIGHT: usize = 1024;
/// Largest reply body (NATS' default `max_payload` is 1 MiB).
const MAX_REPLY_BYTES: usize = 1 << 20;
/// The headers copied from the NATS request to the gateway request (names matched without
/// regard to case, as in HTTP).
const COPIED_HEADERS: [&str; 6] = [
    "x-command-id",
    "x-expected-version",
    "x-correlation-id",
    "traceparent",
    "x-tenant-id",
    "authorization",
];

/// Marks a request made by the host itself (NATS ingress, a forward from a cluster peer): JWT
/// authentication does not apply (a token it carries is still checked, for the actor).
#[derive(Debug, Clone, Copy)]
pub struct Internal;

/// Serve the endpoint until `stop` resolves, retrying (with backoff) while NATS is away.
pub fn serve(
    client: async_nats::Client,
    prefix: String,
    gateway: axum::Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::pin!(stop);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = async {
                let service = client
                    .service_builder()
                    .description("Aggregate Host: submit commands")
                    .queue_group(QUEUE_GROUP)
                    .start("aggregate-host", env!("CARGO_PKG_VERSION"))
                    .await?;
                let endpoint = service.endpoint(format!("{prefix}.>")).await?;
                Ok::<_, async_nats::Error>((service, endpoint))
            };
            match started.await {
                Ok((_service, mut endpoint)) => {
                    tracing::info!(
                        subject = format!("{prefix}.>"),
                        queue_group = QUEUE_GROUP,
                        "NATS command endpoint serving"
                    );
                    backoff = Duration::from_millis(100);
                    loop {
                        tokio::select! {
                            () = &mut stop => return,
                            request = endpoint.next() => match request {
                                Some(request) => {
                                    let Ok(permit) = permits.clone().acquire_owned().await else { return };
                                    let (gateway, prefix) = (gateway.clone(), prefix.clone());
                                    tokio::spawn(async move {
                                        handle(gateway, &prefix, request).await;
                                        drop(permit);
                                    });
                                }
                                None => break,
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot start the NATS command endpoint");
                }
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

/// The gateway path of a command subject (after `prefix.`), every part validated: a subject
/// token may hold characters (`/`, `?`, `%`) that would change the path.
fn command_path(rest: &str) -> Result<(Option<TenantId>, String), ApiError> {
    let mut parts = rest.splitn(4, '.');
    let (Some(tenant), Some(ty), Some(id), Some(command)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ApiError::BadRequest(
            "subject: expected <prefix>.<tenant>.<aggregate_type>.<aggregate_id>.<command_type>"
                .into(),
        ));
    };
    let tenant = if tenant == crate::cluster::SINGLE_TENANT_KEY {
        None
    } else {
        Some(TenantId::new(tenant)?)
    };
    let ty = AggregateType::new(ty)?;
    let id: AggregateId = id.parse()?;
    super::gateway::check_command_type(command)?;
    Ok((
        tenant,
        format!("/aggregates/{}/{id}/commands/{command}", ty.as_str()),
    ))
}

/// Answer one request: run it through the gateway and reply with its answer.
async fn handle(gateway: axum::Router, prefix: &str, request: async_nats::service::Request) {
    let message = &request.message;
    if message.reply.is_none() {
        // A publish, not a request: nobody could learn the outcome, so nothing runs.
        tracing::debug!(subject = %message.subject, "NATS command without a reply subject ignored");
        return;
    }
    let rest = message
        .subject
        .as_str()
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or_default();
    // NATS header names are case-sensitive; HTTP's are not, and the endpoint takes them "as over
    // HTTP". The first value of the first name that matches.
    let header = |name: &str| {
        message.headers.as_ref().and_then(|h| {
            h.iter()
                .find(|(k, _)| AsRef::<str>::as_ref(*k).eq_ignore_ascii_case(name))
                .and_then(|(_, values)| values.first())
                .map(|v| v.as_str().to_string())
        })
    };
    let response = match command_path(rest) {
        Err(e) => e.into_response(),
        Ok((tenant, path)) => {
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header("content-type", "application/json");
            for name in COPIED_HEADERS {
                if let Some(v) = header(name) {
                    builder = builder.header(name, v);
                }
            }
            // The subject's tenant (`""`: the single tenant); a header must name the same.
            let subject_tenant = tenant.as_ref().map_or("", |t| t.as_str());
            match header("x-tenant-id").filter(|t| !t.is_empty()) {
                Some(h) if h != subject_tenant => {
                    ApiError::tenant_mismatch(h.as_bytes(), subject_tenant).into_response()
                }
                _ => {
                    if let Some(t) = &tenant {
                        builder = builder.header("x-tenant-id", t.as_str());
                    }
                    match builder
                        .extension(Internal)
                        .body(Body::from(message.payload.clone()))
                    {
                        Ok(r) => match gateway.oneshot(r).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        },
                        Err(e) => ApiError::BadRequest(format!("headers: {e}")).into_response(),
                    }
                }
            }
        }
    };
    let mut status = response.status();
    let body = match axum::body::to_bytes(response.into_body(), MAX_REPLY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "NATS command reply too large");
            status = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
            serde_json::json!({
                "type": super::ProblemType::Internal.uri(),
                "title": super::ProblemType::Internal.title(),
                "status": 500,
                "detail": "the answer is too large for a NATS reply",
            })
            .to_string()
            .into()
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS_HEADER, status.as_u16().to_string().as_str());
    headers.insert("Content-Type", "application/json");
    if !status.is_success() {
        let title = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|p| p["title"].as_str().map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        headers.insert(async_nats::service::NATS_SERVICE_ERROR, title.as_str());
        headers.insert(
            async_nats::service::NATS_SERVICE_ERROR_CODE,
            status.as_u16().to_string().as_str(),
        );
    }
    if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
        tracing::debug!(error = %e, subject = %message.subject, "cannot reply to a NATS command");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked_before_they_become_paths() {
        let id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let (t, path) = command_path(&format!("acme.bank-account.{id}.deposit")).unwrap();
        assert_eq!(t, Some(TenantId::new("acme").unwrap()));
        assert_eq!(
            path,
            format!("/aggregates/bank-account/{id}/commands/deposit")
        );
        let (t, path) = command_path(&format!("_.bank-account.{id}.v2.deposit")).unwrap();
        assert_eq!(t, None);
        assert!(path.ends_with("/commands/v2.deposit"), "{path}");
        for bad in [
            "acme.bank-account".to_string(),
            format!("acme.bank/account.{id}.deposit"),
            format!("acme.bank-account.{id}.deposit?x=1"),
            "acme.bank-account.not-an-id.deposit".to_string(),
            format!("ac%me.bank-account.{id}.deposit"),
            format!("acme.bank-account.{id}.dep/../osit"),
        ] {
            assert!(command_path(&bad).is_err(), "{bad}");
        }
    }
}
