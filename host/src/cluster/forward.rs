//! Forwarding: a host that receives a command or state read for a tenant another host owns
//! sends it to the owner over NATS (request-reply on [`super::forward_subject`]), and the owner
//! replays it into its own gateway and answers with exactly its response. At most one hop: a
//! forwarded request carries [`FORWARDED_HEADER`] and is never forwarded again; a host that gets
//! one for a tenant it does not own (ownership just moved) answers 503 with
//! [`NOT_OWNER_HEADER`], and the forwarder asks the new owner.
//!
//! Swarm's ingress mesh spreads requests over every replica, so an HTTP redirect cannot name the
//! owner: forwarding inside the cluster is the only way (CLUSTER.md of the design notes).
//!
//! On the wire: the request's method and path in the NATS headers [`H_METHOD`] and [`H_PATH`],
//! the HTTP headers of [`FORWARDED_HTTP_HEADERS`] as NATS headers of the same name, the body as
//! the payload; the answer's status in [`H_STATUS`], its `content-type`, `retry-after` and
//! [`NOT_OWNER_HEADER`] as headers, its body as the payload.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{forward_subject, unavailable, Cluster, ClusterError};

/// Set on a request one host forwarded to another (its value: the forwarding host's id).
pub const FORWARDED_HEADER: &str = "x-aggregate-forwarded";
/// Set on a 503 answered because this host does not own the tenant (the forwarder retries).
pub const NOT_OWNER_HEADER: &str = "x-aggregate-not-owner";
/// NATS header: the HTTP method.
pub const H_METHOD: &str = "Aggregate-Method";
/// NATS header: the path and query.
pub const H_PATH: &str = "Aggregate-Path";
/// NATS header: the HTTP status of the answer.
pub const H_STATUS: &str = "Aggregate-Status";
/// HTTP headers carried to the owner.
pub const FORWARDED_HTTP_HEADERS: [&str; 8] = [
    "x-tenant-id",
    // With JWT on, the owner checks the token again (and takes the actor from it).
    "authorization",
    "x-command-id",
    "x-correlation-id",
    "traceparent",
    "x-expected-version",
    "content-type",
    "accept",
];
/// HTTP headers carried back from the owner.
const ANSWER_HEADERS: [&str; 4] = [
    "content-type",
    "retry-after",
    "www-authenticate",
    NOT_OWNER_HEADER,
];
/// Largest answer body sent back (NATS' default `max_payload` is 1 MiB).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The owner's answer to a forwarded request.
#[derive(Debug, Clone)]
pub struct ForwardAnswer {
    /// HTTP status.
    pub status: u16,
    /// The headers of [`ANSWER_HEADERS`] the owner set.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl ForwardAnswer {
    /// Whether the answering host does not own the tenant (ask again).
    pub fn not_owner(&self) -> bool {
        self.headers.iter().any(|(k, _)| k == NOT_OWNER_HEADER)
    }
}

impl Cluster {
    /// Send a request to `owner` and wait for its answer, at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Unavailable`] when the owner does not answer (no responders, timeout)
    /// or the answer is malformed.
    pub async fn forward(
        &self,
        owner: &str,
        method: &str,
        path_and_query: &str,
        headers: &axum::http::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<ForwardAnswer, ClusterError> {
        let mut nats_headers = async_nats::HeaderMap::new();
        nats_headers.insert(H_METHOD, method);
        nats_headers.insert(H_PATH, path_and_query);
        nats_headers.insert(FORWARDED_HEADER, self.config.host_id.as_str());
        for name in FORWARDED_HTTP_HEADERS {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                nats_headers.insert(name, v);
            }
        }
        let request = async_nats::Request::new()
            .headers(nats_headers)
            .payload(body)
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(forward_subject(owner), request)
            .await
            .map_err(unavailable("forward"))?;
        let h = reply.headers.as_ref();
        let status = h
            .and_then(|h| h.get(H_STATUS))
            .and_then(|v| v.as_str().parse::<u16>().ok())
            .ok_or_else(|| ClusterError::Unavailable("forward: an answer without status".into()))?;
        let headers = ANSWER_HEADERS
            .iter()
            .filter_map(|name| {
                h.and_then(|h| h.get(*name))
                    .map(|v| (name.to_string(), v.as_str().to_string()))
            })
            .collect();
        Ok(ForwardAnswer {
            status,
            headers,
            body: reply.payload,
        })
    }

    /// Answer requests other hosts forward to this one by replaying them into `gateway` (this
    /// host's gateway router). Runs until shutdown.
    pub fn serve_forwards(self: Arc<Self>, gateway: axum::Router) {
        tokio::spawn(async move {
            let mut stop = self.shutdown.subscribe();
            let mut backoff = Duration::from_millis(100);
            loop {
                match self
                    .client
                    .subscribe(forward_subject(&self.config.host_id))
                    .await
                {
                    Ok(mut sub) => loop {
                        tokio::select! {
                            _ = stop.changed() => return,
                            msg = sub.next() => match msg {
                                Some(msg) => {
                                    tokio::spawn(self.clone().answer_forward(gateway.clone(), msg));
                                }
                                None => break,
                            }
                        }
                    },
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to forwarded requests"),
                }
                if !self.pause(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(super::MAX_BACKOFF);
            }
        });
    }

    async fn answer_forward(self: Arc<Self>, gateway: axum::Router, msg: async_nats::Message) {
        use tower::ServiceExt;
        let Some(reply) = msg.reply.clone() else {
            return;
        };
        let h = msg.headers.as_ref();
        let get = |name: &str| h.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
        let mut builder = axum::http::Request::builder()
            .method(get(H_METHOD).unwrap_or_default().as_str())
            .uri(get(H_PATH).unwrap_or_default())
            .header(
                FORWARDED_HEADER,
                get(FORWARDED_HEADER).unwrap_or_else(|| "unknown".into()),
            );
        for name in FORWARDED_HTTP_HEADERS {
            if let Some(v) = get(name) {
                builder = builder.header(name, v);
            }
        }
        // Checked by the host that forwarded it (a token it carries is checked again, for the
        // actor); a request from the NATS ingress carries none.
        let builder = builder.extension(crate::api::ingress::Internal);
        let (status, headers, body) = match builder.body(axum::body::Body::from(msg.payload)) {
            Ok(request) => {
                let response = gateway
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {});
                let (parts, body) = response.into_parts();
                let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
                    .await
                    .unwrap_or_else(|_| {
                        Bytes::from_static(b"{\"detail\":\"the answer is larger than 1 MiB\"}")
                    });
                let headers: Vec<(String, String)> = ANSWER_HEADERS
                    .iter()
                    .filter_map(|name| {
                        parts
                            .headers
                            .get(*name)
                            .and_then(|v| v.to_str().ok())
                            .map(|v| (name.to_string(), v.to_string()))
                    })
                    .collect();
                (parts.status.as_u16(), headers, body)
            }
            Err(e) => {
                tracing::warn!(error = %e, "malformed forwarded request");
                (400, Vec::new(), Bytes::new())
            }
        };
        let mut nats_headers = async_nats::HeaderMap::new();
        nats_headers.insert(H_STATUS, status.to_string().as_str());
        for (k, v) in &headers {
            nats_headers.insert(k.as_str(), v.as_str());
        }
        if let Err(e) = self
            .client
            .publish_with_headers(reply, nats_headers, body)
            .await
        {
            tracing::warn!(error = %e, "could not answer a forwarded request");
        }
    }
}
