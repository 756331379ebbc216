//! Every error of the HTTP API, and the one place that turns them into RFC 7807
//! `application/problem+json` responses.
//!
//! Each error has a stable problem `type` (a [`ProblemType`], served as `/problems/<slug>` on the
//! gateway) and a fixed status. 4xx answers say exactly what was wrong; 5xx answers are opaque
//! (the details go to the log, written by the request middleware).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::registry::RegistryError;
use crate::runtime::RuntimeError;
use crate::service::ServiceError;
use crate::store::StoreError;
use crate::types::{InvalidValue, TenantId};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

macro_rules! problem_types {
    ($($variant:ident = $slug:literal, $status:literal, $title:literal, $doc:literal;)*) => {
        /// The stable problem types of the API. The slug, status and title of each never change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ProblemType {
            $(#[doc = $doc] $variant,)*
        }

        impl ProblemType {
            /// Every problem type.
            pub const ALL: &'static [ProblemType] = &[$(ProblemType::$variant,)*];

            /// The short name, e.g. `version-conflict`.
            pub fn slug(self) -> &'static str {
                match self { $(ProblemType::$variant => $slug,)* }
            }

            /// The HTTP status.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ProblemType::$variant => StatusCode::from_u16($status).expect("valid status"),)*
                }
            }

            /// A short human-readable summary (the problem's `title`).
            pub fn title(self) -> &'static str {
                match self { $(ProblemType::$variant => $title,)* }
            }

            /// When the API answers with it.
            pub fn description(self) -> &'static str {
                match self { $(ProblemType::$variant => $doc,)* }
            }
        }
    };
}

problem_types! {
    InvalidInput = "invalid-input", 400, "Invalid input",
        "A path segment, header, query parameter or body is malformed; `detail` names it.";
    MissingTenant = "missing-tenant", 400, "Missing tenant",
        "The host is multi-tenant and the request has no `x-tenant-id` header.";
    InvalidCommand = "invalid-command", 400, "Invalid command",
        "The aggregate found the command malformed (the guest's `invalid` answer, in `detail`).";
    Unauthorized = "unauthorized", 401, "Unauthorized",
        "The admin API needs `Authorization: Bearer <token>`; it is missing or wrong. With JWT authentication on (`jwt`), so does the gateway: `reason` says what is wrong with the token (missing, malformed, expired, not-yet-valid, bad-signature, wrong-algorithm, unknown-key, wrong-audience, wrong-issuer, claim).";
    TenantMismatch = "tenant-mismatch", 403, "Tenant mismatch",
        "The `x-tenant-id` header names another tenant than the token's tenant claim (`header`, `claim`); leave the header out or make it agree.";
    TenantDenied = "tenant-denied", 403, "Tenant denied",
        "The tenant is not hosted here, has no storage route while routes are strict (`reason: no-storage-route`), or may not act on the aggregate.";
    NotFound = "not-found", 404, "Not found",
        "No route matches the path, or what it names does not exist (e.g. a tenant unknown to `/admin/tenants/{tenant}`).";
    UnknownAggregateType = "unknown-aggregate-type", 404, "Unknown aggregate type",
        "No component is deployed for the aggregate type.";
    UnknownAggregate = "unknown-aggregate", 404, "Unknown aggregate",
        "The aggregate has no events (it was never created).";
    MethodNotAllowed = "method-not-allowed", 405, "Method not allowed",
        "The route exists but not with this method.";
    VersionConflict = "version-conflict", 409, "Version conflict",
        "The aggregate is not at `x-expected-version`, or concurrent writers kept moving it on.";
    CommandIdReused = "command-id-reused", 409, "Command id reused",
        "The `x-command-id` was already used for a command on another aggregate (`first_aggregate_type`, `first_aggregate_id`). A command id names one command on one aggregate; use a new id.";
    NoEarlierVersion = "no-earlier-version", 409, "No earlier version",
        "A rollback was asked for an aggregate type that has no earlier component.";
    PayloadTooLarge = "payload-too-large", 413, "Payload too large",
        "The body is larger than the configured limit (command or component); `detail` says which.";
    CommandRejected = "command-rejected", 422, "Command rejected",
        "A business rule of the aggregate refused the command; `detail` is the aggregate's message.";
    LimitExceeded = "limit-exceeded", 422, "Limit exceeded",
        "The command breached a limit of its aggregate type (`limit`: fuel, memory, timeout, too-many-events, output-too-large). Deterministic for the same state and command: retrying does not help, raising the limit may.";
    ComponentRejected = "component-rejected", 422, "Component rejected",
        "The uploaded bytes are not an acceptable component (`kind`: not-wasm, core-module, malformed, forbidden-import — `import` names it —, world-mismatch — `export` names it —, compile). All but `compile` are found by reading the component, before compiling it; a refused component's hash is remembered for a while, so the same bytes are refused again at once. Nothing was changed.";
    InvalidManifest = "invalid-manifest", 422, "Invalid manifest",
        "The manifest file could not be reloaded; the previous manifest stays active.";
    GuestFault = "guest-fault", 500, "Component failure",
        "The aggregate's component trapped, panicked or broke the contract. The host log has the details.";
    Internal = "internal", 500, "Internal error",
        "An unexpected failure of the host. The host log has the details.";
    Unavailable = "unavailable", 503, "Dependency unavailable",
        "A dependency is unavailable — the event log (embedded store or NATS JetStream), or the host's disk for component and manifest writes; retry later.";
    TenantDraining = "tenant-draining", 503, "Tenant draining",
        "The tenant is drained on this host (`/admin/drain`); commands are refused until it is resumed.";
    ShuttingDown = "shutting-down", 503, "Shutting down",
        "The host is shutting down and accepts no new commands.";
    HostRefused = "host-refused", 409, "Refused by a host",
        "Cluster mode: a live host refused the deploy, rollback or limits change in its prepare phase (`refused` maps each host id to its reason, e.g. limits above its `max_memory_mb`); nothing was activated.";
    NotReady = "not-ready", 503, "Not ready",
        "A readiness check failed (`checks` lists each with its status).";
    InvalidFilter = "invalid-filter", 400, "Invalid filter",
        "The `filter` of a state query is not a usable CEL expression: a syntax error, an unknown function or variable, a result that is not a bool, or an expression over the size, nesting or cost bounds (`kind`: syntax, unknown-function, unknown-variable, not-boolean, too-expensive, or evaluation when compiling it failed otherwise; `position`: byte offset in the filter, when known). A non-bool result found while scanning is refused the same way.";
    UnknownVersion = "unknown-version", 404, "Unknown version",
        "The aggregate never had the version asked for (`?version=N` above its current version, or 0), or had no events yet at the `?at=` time.";
    TooManyStreams = "too-many-streams", 429, "Too many event streams",
        "The tenant (or the host) has as many event streams open as it may (`scope`: tenant or host; `limit`); close one first.";
    Conflict = "conflict", 409, "Conflict",
        "The request cannot be done in the current state; `detail` says why (a tenant to import into already has data, a tenant's commands still run, a command of an import was already recorded).";
    QuotaExceeded = "quota-exceeded", 429, "Quota exceeded",
        "A quota of the tenant refused the command (`quota`: rate — commands per second, retry after `Retry-After` seconds —, or aggregates — the tenant has `limit` aggregates and the command would create another); `limit` is the bound.";
    QueryUnavailable = "query-unavailable", 503, "Query unavailable",
        "A state query could not run now: the state index did not reach the log position the query must reflect within `query_wait_ms` (it is catching up), or the host already evaluates as many queries as it may; retry.";
}

impl ProblemType {
    /// The problem's `type` URI: a path on the gateway that describes it.
    pub fn uri(self) -> String {
        format!("/problems/{}", self.slug())
    }

    /// A 503 the host answers on purpose (shutting down, a drained tenant, not ready): logged
    /// as information, not as an error of the host.
    pub fn is_expected_refusal(self) -> bool {
        matches!(
            self,
            ProblemType::ShuttingDown | ProblemType::TenantDraining | ProblemType::NotReady
        )
    }

    /// Look a problem type up by slug.
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.slug() == slug)
    }
}

/// What a request failed with. Converted to a response only by its [`IntoResponse`] impl.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// From the command service.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// From the registry (admin API).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Reloading the manifest failed.
    #[error("reload: {0}")]
    Reload(RegistryError),
    /// A validated value was malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    /// Some other malformed input; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// Multi-tenant mode and no `x-tenant-id`.
    #[error("the `x-tenant-id` header is required: this host is multi-tenant")]
    MissingTenant,
    /// The tenant is not in the configured list.
    #[error("tenant `{0}` is not hosted here")]
    TenantNotHosted(TenantId),
    /// `storage_strict` and no storage route names the tenant.
    #[error("tenant `{0}` has no storage route (storage_strict: every tenant needs one)")]
    TenantNotRouted(TenantId),
    /// Admin API without a valid bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Gateway with JWT on: the token is missing or refused.
    #[error("{0}")]
    Token(#[from] super::auth::TokenError),
    /// `x-tenant-id` disagrees with the token's tenant claim.
    #[error("x-tenant-id {header:?} is not the token's tenant {claim:?}")]
    TenantMismatch {
        /// The header's value.
        header: String,
        /// The claim's tenant.
        claim: String,
    },
    /// Something the path names does not exist; the message says what.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state; the message says how.
    #[error("{0}")]
    Conflict(String),
    /// A quota of the tenant refused the command.
    #[error("tenant `{}` is over its {} quota ({limit})", .tenant.as_str(), .quota.as_str())]
    QuotaExceeded {
        /// The tenant.
        tenant: TenantId,
        /// Which quota.
        quota: super::quota::Quota,
        /// The bound (commands per second, or aggregates).
        limit: Value,
        /// When to retry (the rate quota; whole seconds).
        retry_after: Option<std::time::Duration>,
    },
    /// No route.
    #[error("no route for {0}")]
    NoRoute(String),
    /// Route exists, method does not.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// A body over its limit.
    #[error("the {what} is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// `command body` or `component`.
        what: &'static str,
        /// The limit in bytes.
        limit: usize,
    },
    /// The tenant is drained.
    #[error("tenant `{0}` is drained on this host; commands are refused until it is resumed")]
    TenantDraining(TenantId),
    /// The host is shutting down.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// A readiness check failed.
    #[error("not ready: {}", failing(.0))]
    NotReady(Value),
    /// The cluster control plane (NATS) cannot be reached now.
    #[error("{0}")]
    ClusterUnavailable(String),
    /// The cluster refused a change (a host refused it, the entry changed meanwhile, or the
    /// manifest bucket holds something unusable).
    #[error(transparent)]
    Cluster(crate::cluster::ClusterError),
    /// A state query's filter is unusable.
    #[error("filter: {0}")]
    InvalidFilter(crate::query::filter::FilterError),
    /// An event stream bound is reached (`scope`: `tenant` or `host`).
    #[error("too many event streams open for this {scope}: the limit is {limit}")]
    TooManyStreams {
        /// `tenant` or `host`.
        scope: &'static str,
        /// The bound.
        limit: usize,
    },
    /// A state query could not run now (the index is behind, or too many queries run).
    #[error("{0}")]
    QueryUnavailable(String),
    /// Anything unexpected.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// [`ApiError::TenantMismatch`] between an `x-tenant-id` value (shown cut to 64 bytes of
    /// text, it is untrusted) and the tenant the request may act for (`""`: the single tenant).
    pub fn tenant_mismatch(header: &[u8], claim: &str) -> Self {
        ApiError::TenantMismatch {
            header: String::from_utf8_lossy(header).chars().take(64).collect(),
            claim: claim.to_string(),
        }
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        use crate::cluster::ClusterError as C;
        match e {
            C::Registry(r) => ApiError::Registry(r),
            C::Unavailable(m) => ApiError::ClusterUnavailable(m),
            e => ApiError::Cluster(e),
        }
    }
}

fn failing(checks: &Value) -> String {
    checks
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v["ok"] != Value::Bool(true))
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A 5xx error's real message, kept out of the body and handed to the logging middleware.
#[derive(Debug, Clone)]
pub struct HiddenDetail(pub String);

/// The problem type of an error response (read by the middleware for metrics).
#[derive(Debug, Clone, Copy)]
pub struct ProblemMarker(pub ProblemType);

struct Problem {
    kind: ProblemType,
    detail: String,
    extensions: Map<String, Value>,
}

impl Problem {
    fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_string(), value.into());
        self
    }
}

impl ApiError {
    /// The problem type this error is answered with.
    pub fn problem_type(&self) -> ProblemType {
        self.problem().kind
    }

    /// The single mapping from errors to problems.
    fn problem(&self) -> Problem {
        use ProblemType as P;
        let opaque_guest = "the aggregate's component failed; the host log has the details";
        let opaque = "an internal error occurred; the host log has the details";
        match self {
            ApiError::Service(e) => match e {
                ServiceError::InvalidInput(v) => {
                    Problem::new(P::InvalidInput, v.to_string()).with("field", v.field)
                }
                ServiceError::TenantAccessDenied { .. } => {
                    Problem::new(P::TenantDenied, e.to_string())
                }
                ServiceError::UnknownAggregateType(t) => {
                    Problem::new(P::UnknownAggregateType, e.to_string())
                        .with("aggregate_type", t.as_str())
                }
                ServiceError::UnknownAggregate(a) => {
                    Problem::new(P::UnknownAggregate, e.to_string())
                        .with("aggregate_type", a.aggregate_type.as_str())
                        .with("aggregate_id", a.aggregate_id.to_string())
                }
                ServiceError::UnknownVersion(m) => Problem::new(P::UnknownVersion, m.clone()),
                ServiceError::Rejected(m) => Problem::new(P::CommandRejected, m.clone()),
                ServiceError::InvalidCommand(m) => Problem::new(P::InvalidCommand, m.clone()),
                ServiceError::VersionMismatch {
                    expected, actual, ..
                } => Problem::new(P::VersionConflict, e.to_string())
                    .with("expected_version", expected.0)
                    .with("actual_version", actual.0),
                ServiceError::CommandIdReused {
                    command_id, first, ..
                } => Problem::new(P::CommandIdReused, e.to_string())
                    .with("command_id", command_id.to_string())
                    .with("first_aggregate_type", first.aggregate_type.as_str())
                    .with("first_aggregate_id", first.aggregate_id.to_string()),
                ServiceError::Conflict { attempts, .. } => {
                    Problem::new(P::VersionConflict, e.to_string()).with("attempts", *attempts)
                }
                ServiceError::Guest(g) if g.is_limit_breach() => {
                    Problem::new(P::LimitExceeded, g.to_string()).with("limit", g.kind())
                }
                ServiceError::Guest(g) => {
                    Problem::new(P::GuestFault, opaque_guest).with("kind", g.kind())
                }
                ServiceError::NotOwner(reason) => Problem::new(
                    P::Unavailable,
                    format!("{reason}; the command was not run: retry"),
                ),
                ServiceError::Store(StoreError::Unavailable(_)) => {
                    Problem::new(P::Unavailable, "the event log is unavailable; retry later")
                }
                ServiceError::Store(StoreError::Conflict { .. }) => {
                    Problem::new(P::VersionConflict, e.to_string())
                }
                ServiceError::Store(_) | ServiceError::Registry(_) | ServiceError::Internal(_) => {
                    Problem::new(P::Internal, opaque)
                }
            },
            ApiError::Registry(e) => match e {
                RegistryError::UnknownType(t) => {
                    Problem::new(P::UnknownAggregateType, e.to_string())
                        .with("aggregate_type", t.as_str())
                }
                RegistryError::TooLarge { limit, .. } => {
                    Problem::new(P::PayloadTooLarge, e.to_string()).with("limit", *limit)
                }
                RegistryError::NoEarlierVersion(_) => {
                    Problem::new(P::NoEarlierVersion, e.to_string())
                }
                RegistryError::Component { source, .. } if source.is_rejected_component() => {
                    let p = Problem::new(P::ComponentRejected, e.to_string())
                        .with("kind", source.kind());
                    match source {
                        RuntimeError::ForbiddenImport { import, .. } => {
                            p.with("import", import.as_str())
                        }
                        RuntimeError::WorldMismatch {
                            export: Some(export),
                            ..
                        } => p.with("export", export.as_str()),
                        _ => p,
                    }
                }
                RegistryError::InvalidEntry { .. } => Problem::new(P::InvalidInput, e.to_string()),
                // A full or failing disk: the host's fault of the moment, not the caller's.
                RegistryError::ManifestIo { source, .. } | RegistryError::BlobIo { source, .. } => {
                    Problem::new(
                        P::Unavailable,
                        format!(
                            "the host could not write its component store or manifest ({}); retry later",
                            source.kind()
                        ),
                    )
                }
                _ => Problem::new(P::Internal, opaque),
            },
            ApiError::Reload(e) => match e {
                RegistryError::ManifestSyntax { .. }
                | RegistryError::InvalidEntry { .. }
                | RegistryError::UnknownComponent(_)
                | RegistryError::CorruptBlob { .. } => {
                    Problem::new(P::InvalidManifest, e.to_string())
                }
                RegistryError::Component { source, .. } if source.is_rejected_component() => {
                    Problem::new(P::InvalidManifest, e.to_string())
                }
                _ => Problem::new(P::Internal, opaque),
            },
            ApiError::Invalid(v) => {
                Problem::new(P::InvalidInput, v.to_string()).with("field", v.field)
            }
            ApiError::BadRequest(m) => Problem::new(P::InvalidInput, m.clone()),
            ApiError::MissingTenant => {
                Problem::new(P::MissingTenant, self.to_string()).with("header", "x-tenant-id")
            }
            ApiError::TenantNotRouted(t) => Problem::new(P::TenantDenied, self.to_string())
                .with("tenant_id", t.as_str())
                .with("reason", "no-storage-route"),
            ApiError::TenantNotHosted(t) => {
                Problem::new(P::TenantDenied, self.to_string()).with("tenant_id", t.as_str())
            }
            ApiError::Unauthorized(m) => Problem::new(P::Unauthorized, *m),
            ApiError::Token(t) => {
                Problem::new(P::Unauthorized, t.to_string()).with("reason", t.reason())
            }
            ApiError::Conflict(m) => Problem::new(P::Conflict, m.clone()),
            ApiError::NotFound(m) => Problem::new(P::NotFound, m.clone()),
            ApiError::TenantMismatch { header, claim } => {
                Problem::new(P::TenantMismatch, self.to_string())
                    .with("header", header.as_str())
                    .with("claim", claim.as_str())
            }
            ApiError::QuotaExceeded {
                tenant,
                quota,
                limit,
                ..
            } => Problem::new(P::QuotaExceeded, self.to_string())
                .with("tenant_id", tenant.as_str())
                .with("quota", quota.as_str())
                .with("limit", limit.clone()),
            ApiError::NoRoute(_) => Problem::new(P::NotFound, self.to_string()),
            ApiError::MethodNotAllowed(_) => Problem::new(P::MethodNotAllowed, self.to_string()),
            ApiError::PayloadTooLarge { limit, .. } => {
                Problem::new(P::PayloadTooLarge, self.to_string()).with("limit", *limit)
            }
            ApiError::TenantDraining(t) => {
                Problem::new(P::TenantDraining, self.to_string()).with("tenant_id", t.as_str())
            }
            ApiError::ShuttingDown => Problem::new(P::ShuttingDown, self.to_string()),
            ApiError::NotReady(checks) => {
                Problem::new(P::NotReady, self.to_string()).with("checks", checks.clone())
            }
            ApiError::ClusterUnavailable(m) => Problem::new(
                P::Unavailable,
                format!("the cluster control plane is unavailable ({m}); retry later"),
            ),
            ApiError::Cluster(e) => {
                use crate::cluster::ClusterError as C;
                match e {
                    C::Refused(refused) => Problem::new(P::HostRefused, e.to_string())
                        .with("refused", serde_json::to_value(refused).unwrap_or_default()),
                    C::Conflict(_) => Problem::new(P::VersionConflict, e.to_string()),
                    C::BadEntry { .. } | C::MissingBlob(_) => {
                        Problem::new(P::InvalidManifest, e.to_string())
                    }
                    C::TooManyReleased(_) => Problem::new(P::InvalidInput, e.to_string()),
                    C::Registry(_) | C::Unavailable(_) => Problem::new(P::Internal, opaque),
                }
            }
            ApiError::InvalidFilter(f) => {
                let p = Problem::new(P::InvalidFilter, self.to_string()).with(
                    "kind",
                    serde_json::to_value(f.kind).unwrap_or_default(),
                );
                match f.position {
                    Some(pos) => p.with("position", pos),
                    None => p,
                }
            }
            ApiError::TooManyStreams { scope, limit } => {
                Problem::new(P::TooManyStreams, self.to_string())
                    .with("scope", *scope)
                    .with("limit", *limit)
            }
            ApiError::QueryUnavailable(_) => Problem::new(P::QueryUnavailable, self.to_string()),
            ApiError::Internal(_) => Problem::new(P::Internal, opaque),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = self.problem();
        let status = p.kind.status();
        let mut body = Map::new();
        body.insert("type".into(), json!(p.kind.uri()));
        body.insert("title".into(), json!(p.kind.title()));
        body.insert("status".into(), json!(status.as_u16()));
        body.insert("detail".into(), json!(p.detail));
        body.extend(p.extensions);
        let mut response = (status, Value::Object(body).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match p.kind {
            ProblemType::Unauthorized => {
                let value = match &self {
                    ApiError::Token(_) => {
                        "Bearer realm=\"aggregate-host\", error=\"invalid_token\""
                    }
                    _ => "Bearer realm=\"aggregate-host admin\"",
                };
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
            }
            ProblemType::QuotaExceeded => {
                if let ApiError::QuotaExceeded {
                    retry_after: Some(wait),
                    ..
                } = &self
                {
                    headers.insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(wait.as_secs().max(1)),
                    );
                }
            }
            ProblemType::Unavailable
            | ProblemType::QueryUnavailable
            | ProblemType::TooManyStreams
            | ProblemType::TenantDraining
            | ProblemType::ShuttingDown
            | ProblemType::NotReady => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let ApiError::Service(ServiceError::NotOwner(_)) = &self {
            response.headers_mut().insert(
                crate::cluster::NOT_OWNER_HEADER,
                HeaderValue::from_static("1"),
            );
        }
        response.extensions_mut().insert(ProblemMarker(p.kind));
        if status.is_server_error() {
            response
                .extensions_mut()
                .insert(HiddenDetail(self.to_string()));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeError;
    use crate::types::{AggregateType, ComponentHash};

    async fn body(e: ApiError) -> (StatusCode, String, Value) {
        let r = e.into_response();
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, ct, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_problem_is_rfc7807_with_a_stable_type() {
        let (status, ct, v) = body(ApiError::Service(ServiceError::Rejected(
            "insufficient funds".into(),
        )))
        .await;
        assert_eq!(
            (status, ct.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, PROBLEM_JSON)
        );
        assert_eq!(v["type"], "/problems/command-rejected");
        assert_eq!(v["title"], "Command rejected");
        assert_eq!(v["status"], 422);
        assert_eq!(v["detail"], "insufficient funds");

        let (status, _, v) = body(ApiError::Service(ServiceError::Guest(
            RuntimeError::FuelExhausted { limit: 10 },
        )))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            (v["type"].as_str(), v["limit"].as_str()),
            (Some("/problems/limit-exceeded"), Some("fuel"))
        );

        let (status, _, v) = body(ApiError::MissingTenant).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(v["detail"].as_str().unwrap().contains("x-tenant-id"));

        let (status, _, v) = body(ApiError::Service(ServiceError::Store(
            StoreError::Unavailable("nats down".into()),
        )))
        .await;
        assert_eq!(
            (status, v["type"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("/problems/unavailable")
            )
        );
        assert!(
            !v.to_string().contains("nats down"),
            "5xx bodies are opaque: {v}"
        );

        // A full disk under the component store: 503, not 500, and no path in the body.
        let (status, _, v) = body(ApiError::Registry(RegistryError::BlobIo {
            path: "/var/lib/secret/blobs".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        }))
        .await;
        assert_eq!(
            (status, v["type"].as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("/problems/unavailable")
            )
        );
        assert!(!v.to_string().contains("/var/lib"), "{v}");

        let hash = ComponentHash::of(b"x");
        let e = RegistryError::Component {
            aggregate_type: AggregateType::new("t").unwrap(),
            source: RuntimeError::ForbiddenImport {
                hash,
                import: "evil:net/exfil".into(),
                reason: "not linked".into(),
            },
        };
        let (status, _, v) = body(ApiError::Registry(e)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(v["kind"], "forbidden-import");
        assert_eq!(v["import"], "evil:net/exfil");
        assert!(v["detail"].as_str().unwrap().contains("evil:net/exfil"));
    }

    #[tokio::test]
    async fn server_errors_hide_their_detail_but_keep_it_for_the_log() {
        let r = ApiError::Internal("disk on fire".into()).into_response();
        assert_eq!(
            r.extensions().get::<HiddenDetail>().unwrap().0,
            "internal error: disk on fire"
        );
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("disk"));
    }

    #[test]
    fn slugs_are_unique_and_statuses_are_errors() {
        let mut seen = std::collections::HashSet::new();
        for p in ProblemType::ALL {
            assert!(seen.insert(p.slug()), "duplicate slug {}", p.slug());
            assert!(p.status().is_client_error() || p.status().is_server_error());
            assert_eq!(ProblemType::from_slug(p.slug()), Some(*p));
        }
    }
}
