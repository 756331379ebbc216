//! A small HTTP client of a running host's gateway and admin APIs (used by the CLI, the
//! end-to-end tests and the load bench).
//!
//! # Examples
//!
//! ```no_run
//! # async fn f() -> Result<(), aggregate_host::client::ClientError> {
//! use aggregate_host::client::Client;
//! let host = Client::new("http://127.0.0.1:8080", "http://127.0.0.1:8081").with_token(Some("…".into()));
//! let wasm = std::fs::read("bank_account.wasm").unwrap();
//! host.deploy("bank-account", wasm).await?;
//! let id = aggregate_host::types::AggregateId::generate().to_string();
//! let answer = host.send("bank-account", &id, "open", &serde_json::json!({"owner": "Ada"})).await?;
//! assert_eq!(answer["version"], 1);
//! # Ok(()) }
//! ```

use serde_json::Value;

/// What a request failed with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host could not be reached or answered garbage.
    #[error("{url}: {source}")]
    Http {
        /// The request URL.
        url: String,
        /// The transport error.
        source: reqwest::Error,
    },
    /// The host sent something that is not what the API says (a line of the event stream that
    /// is not its JSON).
    #[error("{url}: {detail}")]
    Garbled {
        /// The request URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// The host answered with an error (an RFC 7807 problem when it is one).
    #[error("{status} {}: {}", problem_slug(.problem), .problem["detail"].as_str().unwrap_or(""))]
    Problem {
        /// The HTTP status.
        status: u16,
        /// The problem body (or `{"detail": <text>}` for a non-JSON body).
        problem: Value,
    },
}

fn problem_slug(p: &Value) -> &str {
    p["type"]
        .as_str()
        .map(|t| t.rsplit('/').next().unwrap_or(t))
        .unwrap_or("error")
}

impl ClientError {
    /// The HTTP status of a problem answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem { status, .. } => Some(*status),
            ClientError::Http { .. } | ClientError::Garbled { .. } => None,
        }
    }

    /// The problem's slug (`version-conflict`, ...), for a problem answer.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            ClientError::Problem { problem, .. } => Some(problem_slug(problem)),
            ClientError::Http { .. } | ClientError::Garbled { .. } => None,
        }
    }
}

/// Options of one command.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// `x-command-id` (idempotency key).
    pub command_id: Option<String>,
    /// `x-correlation-id`.
    pub correlation_id: Option<String>,
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `x-expected-version`.
    pub expected_version: Option<u64>,
}

/// A client of one host.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    gateway: String,
    admin: String,
    token: Option<String>,
    tenant: Option<String>,
    gateway_token: Option<String>,
}

impl Client {
    /// A client of the gateway and admin APIs at these base URLs.
    pub fn new(gateway: impl Into<String>, admin: impl Into<String>) -> Self {
        let trim = |s: String| s.trim_end_matches('/').to_string();
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("HTTP client"),
            gateway: trim(gateway.into()),
            admin: trim(admin.into()),
            token: None,
            tenant: None,
            gateway_token: None,
        }
    }

    /// Send this admin token.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Act as this tenant (`x-tenant-id`).
    pub fn with_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }

    /// Send this JWT as `Authorization: Bearer` on gateway requests.
    pub fn with_gateway_token(mut self, token: Option<String>) -> Self {
        self.gateway_token = token;
        self
    }

    /// The gateway base URL.
    pub fn gateway_url(&self) -> &str {
        &self.gateway
    }

    /// The admin base URL.
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// The underlying HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn gw(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.gateway));
        if let Some(t) = &self.tenant {
            r = r.header("x-tenant-id", t);
        }
        match &self.gateway_token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn adm(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.admin));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Send a request; a 2xx JSON body is returned, anything else is a [`ClientError::Problem`].
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn execute(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let request = request.build().map_err(|source| ClientError::Http {
            url: String::new(),
            source,
        })?;
        let url = request.url().to_string();
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let response = self.http.execute(request).await.map_err(http)?;
        let status = response.status();
        let text = response.text().await.map_err(http)?;
        let body =
            serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "detail": text }));
        if status.is_success() {
            Ok(body)
        } else {
            Err(ClientError::Problem {
                status: status.as_u16(),
                problem: body,
            })
        }
    }

    /// Submit a command.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn send(
        &self,
        ty: &str,
        id: &str,
        command: &str,
        payload: &Value,
    ) -> Result<Value, ClientError> {
        self.send_with(ty, id, command, payload, &CommandOptions::default())
            .await
    }

    /// Submit a command with headers.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn send_with(
        &self,
        ty: &str,
        id: &str,
        command: &str,
        payload: &Value,
        options: &CommandOptions,
    ) -> Result<Value, ClientError> {
        let mut r = self
            .gw(
                reqwest::Method::POST,
                &format!("/aggregates/{ty}/{id}/commands/{command}"),
            )
            .json(payload);
        for (name, value) in [
            ("x-command-id", options.command_id.clone()),
            ("x-correlation-id", options.correlation_id.clone()),
            ("traceparent", options.traceparent.clone()),
            (
                "x-expected-version",
                options.expected_version.map(|v| v.to_string()),
            ),
        ] {
            if let Some(v) = value {
                r = r.header(name, v);
            }
        }
        self.execute(r).await
    }

    /// An aggregate's state and version.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn state(&self, ty: &str, id: &str) -> Result<Value, ClientError> {
        self.execute(self.gw(reqwest::Method::GET, &format!("/aggregates/{ty}/{id}")))
            .await
    }

    /// An aggregate's state as it was after event `version`, or at time `at` (RFC 3339).
    ///
    /// # Errors
    ///
    /// [`ClientError`] (a 404 `unknown-version` when it had no such version).
    pub async fn state_at(
        &self,
        ty: &str,
        id: &str,
        version: Option<u64>,
        at: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut r = self.gw(reqwest::Method::GET, &format!("/aggregates/{ty}/{id}"));
        if let Some(v) = version {
            r = r.query(&[("version", v.to_string())]);
        }
        if let Some(at) = at {
            r = r.query(&[("at", at)]);
        }
        self.execute(r).await
    }

    /// One page of the tenant's aggregates of type `ty` whose state matches the CEL `filter`
    /// (all when `None`), after `page_token`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] (a 400 `invalid-filter` naming the problem).
    pub async fn query(
        &self,
        ty: &str,
        filter: Option<&str>,
        limit: Option<usize>,
        page_token: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut r = self.gw(reqwest::Method::GET, &format!("/aggregates/{ty}"));
        if let Some(f) = filter {
            r = r.query(&[("filter", f)]);
        }
        if let Some(l) = limit {
            r = r.query(&[("limit", l.to_string())]);
        }
        if let Some(t) = page_token {
            r = r.query(&[("page_token", t)]);
        }
        self.execute(r).await
    }

    /// An aggregate's events after a version.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn events(
        &self,
        ty: &str,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Value, ClientError> {
        self.execute(self.gw(
            reqwest::Method::GET,
            &format!("/aggregates/{ty}/{id}/events?after={after}&limit={limit}"),
        ))
        .await
    }

    /// Open the tenant's event stream as newline-delimited JSON (`GET /events/stream` with
    /// `Accept: application/x-ndjson`): every event of the tenant, or of one aggregate type, or of
    /// one aggregate, after the event id `after` (`P` or `P.i` as the stream sent it; `"0"` is the
    /// start of the log; `None` is the log's end now).
    ///
    /// # Errors
    ///
    /// [`ClientError`]: a problem answer (429 `too-many-streams`, 400 for a bad id, ...) or a
    /// transport error.
    pub async fn event_stream(
        &self,
        ty: Option<&str>,
        id: Option<&str>,
        after: Option<&str>,
    ) -> Result<EventStream, ClientError> {
        let mut r = self
            .gw(reqwest::Method::GET, "/events/stream")
            .header("accept", "application/x-ndjson");
        for (name, value) in [
            ("aggregate_type", ty),
            ("aggregate_id", id),
            ("after", after),
        ] {
            if let Some(v) = value {
                r = r.query(&[(name, v)]);
            }
        }
        let request = r.build().map_err(|source| ClientError::Http {
            url: String::new(),
            source,
        })?;
        let url = request.url().to_string();
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|source| ClientError::Http {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let problem = serde_json::from_str(&text)
                .unwrap_or_else(|_| serde_json::json!({ "detail": text }));
            return Err(ClientError::Problem {
                status: status.as_u16(),
                problem,
            });
        }
        Ok(EventStream {
            url,
            response,
            buffer: Vec::new(),
        })
    }

    /// Upload a component.
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn deploy(&self, ty: &str, wasm: Vec<u8>) -> Result<Value, ClientError> {
        let r = self
            .adm(
                reqwest::Method::PUT,
                &format!("/admin/aggregates/{ty}/component"),
            )
            .header("content-type", "application/wasm")
            .body(wasm);
        self.execute(r).await
    }

    /// Any admin request with a JSON body (or none).
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let mut r = self.adm(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        self.execute(r).await
    }

    /// `/metrics` of the admin API (Prometheus text).
    ///
    /// # Errors
    ///
    /// [`ClientError`].
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let request = self.adm(reqwest::Method::GET, "/metrics");
        let url = format!("{}/metrics", self.admin);
        let http = |source| ClientError::Http {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(http)?;
        let status = response.status();
        let text = response.text().await.map_err(http)?;
        if status.is_success() {
            Ok(text)
        } else {
            let problem = serde_json::from_str(&text)
                .unwrap_or_else(|_| serde_json::json!({ "detail": text }));
            Err(ClientError::Problem {
                status: status.as_u16(),
                problem,
            })
        }
    }

    /// `/ready` of the admin API.
    ///
    /// # Errors
    ///
    /// [`ClientError`]; a host that is not ready answers a `not-ready` problem.
    pub async fn ready(&self) -> Result<Value, ClientError> {
        self.execute(self.http.get(format!("{}/ready", self.admin)))
            .await
    }
}

/// One line of the event stream (see [`Client::event_stream`]).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// The stream is open: `{"tenant_id", "aggregate_type", "aggregate_id", "after"}`, where
    /// `after` is the event id the stream starts after.
    Ready(Value),
    /// One event and its id (`P.i`: log position and index in the commit), the id to resume after.
    Event {
        /// The event id.
        id: String,
        /// The event (`aggregate`, `version`, `event_type`, `payload`, `metadata`, ...).
        event: Value,
    },
    /// An empty line the host sends while the stream is idle.
    Heartbeat,
    /// The host ended the stream with a problem (e.g. the event log failed); reconnect with the
    /// last event id to continue.
    Error(Value),
}

/// An open event stream: call [`EventStream::next`] until it returns `None` (the host closed it).
#[derive(Debug)]
pub struct EventStream {
    url: String,
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl EventStream {
    /// The next line; `None` when the host closed the stream.
    ///
    /// # Errors
    ///
    /// [`ClientError::Http`] when the connection broke, or a line is not the stream's JSON.
    pub async fn next(&mut self) -> Option<Result<StreamItem, ClientError>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Some(parse_stream_line(&line[..end]).map_err(|detail| {
                    ClientError::Garbled {
                        url: self.url.clone(),
                        detail,
                    }
                }));
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return None,
                Err(source) => {
                    return Some(Err(ClientError::Http {
                        url: self.url.clone(),
                        source,
                    }))
                }
            }
        }
    }
}

fn parse_stream_line(line: &[u8]) -> Result<StreamItem, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(StreamItem::Heartbeat);
    }
    let mut v: Value = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    if let Some(ready) = v.get_mut("ready") {
        return Ok(StreamItem::Ready(ready.take()));
    }
    if let Some(error) = v.get_mut("error") {
        return Ok(StreamItem::Error(error.take()));
    }
    match (v["id"].as_str().map(str::to_string), v.get_mut("event")) {
        (Some(id), Some(event)) => Ok(StreamItem::Event {
            id,
            event: event.take(),
        }),
        _ => Err("expected `ready`, `error` or `id` and `event`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines_parse() {
        assert_eq!(parse_stream_line(b""), Ok(StreamItem::Heartbeat));
        assert_eq!(
            parse_stream_line(br#"{"ready":{"after":"7"}}"#),
            Ok(StreamItem::Ready(serde_json::json!({"after": "7"})))
        );
        assert_eq!(
            parse_stream_line(br#"{"id":"8.0","event":{"version":1}}"#),
            Ok(StreamItem::Event {
                id: "8.0".into(),
                event: serde_json::json!({"version": 1})
            })
        );
        assert!(matches!(
            parse_stream_line(br#"{"error":{"status":503}}"#),
            Ok(StreamItem::Error(_))
        ));
        assert!(parse_stream_line(b"{\"id\":8}").is_err());
        assert!(parse_stream_line(b"not json").is_err());
    }
}
