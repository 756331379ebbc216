//! Gateway handlers: submit a command, read state and events, follow new events (SSE).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json as AxumJson;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::Principal;
use super::quota::Quota;
use super::{ApiError, AppState, ProblemType, Routes};
use crate::service::{PastPoint, ServiceError, ServiceObserver, Submit};
use crate::store::FeedFilter;
use crate::telemetry::CommandOutcomeLabel;
use crate::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, ComponentHash, Event,
    InvalidValue, Json, TenantId, Version,
};

/// Carried into the events' metadata and the log.
pub(super) const CORRELATION_HEADER: &str = "x-correlation-id";
const TRACEPARENT_HEADER: &str = "traceparent";
/// Idempotency key of a command (a UUID).
const COMMAND_ID_HEADER: &str = "x-command-id";
/// Optimistic concurrency: run only if the aggregate is at this version.
const EXPECTED_VERSION_HEADER: &str = "x-expected-version";
const MAX_EVENTS_PAGE: usize = 1000;
const DEFAULT_EVENTS_PAGE: usize = 100;

pub(super) fn routes() -> Routes {
    Routes::new()
        .add(
            Method::POST,
            "/aggregates/{aggregate_type}/{aggregate_id}/commands/{command_type}",
            submit,
        )
        .add(Method::GET, "/aggregates/{aggregate_type}", query)
        .add(
            Method::GET,
            "/aggregates/{aggregate_type}/{aggregate_id}",
            state,
        )
        .add(
            Method::GET,
            "/aggregates/{aggregate_type}/{aggregate_id}/events",
            events,
        )
        .add(Method::GET, "/events/stream", stream)
        .add(Method::GET, "/problems/{slug}", problem_doc)
        .add(Method::GET, "/openapi.json", super::openapi)
}

pub(super) fn path_error(e: PathRejection) -> ApiError {
    ApiError::BadRequest(format!("path: {}", e.body_text()))
}

fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<Option<&'h str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest(format!("header {name} is not visible ASCII")))
        })
        .transpose()
}

fn aggregate(tenant: &TenantId, ty: &str, id: &str) -> Result<AggregateRef, ApiError> {
    Ok(AggregateRef {
        tenant: tenant.clone(),
        aggregate_type: AggregateType::new(ty)?,
        aggregate_id: id.parse::<AggregateId>()?,
    })
}

pub(super) fn check_command_type(t: &str) -> Result<(), InvalidValue> {
    let bad = |reason: String| InvalidValue {
        field: "command type",
        reason,
    };
    if t.is_empty() || t.len() > 128 {
        return Err(bad(format!("must be 1 to 128 bytes long, got {}", t.len())));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(bad(format!(
            "{t:?} contains {c:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
        )));
    }
    Ok(())
}

fn metadata(headers: &HeaderMap) -> Result<CommandMetadata, ApiError> {
    let correlation_id = match header(headers, CORRELATION_HEADER)? {
        Some(c) if c.is_empty() || c.len() > 256 => {
            return Err(ApiError::BadRequest(format!(
                "header {CORRELATION_HEADER} must be 1 to 256 characters"
            )));
        }
        c => c.map(str::to_owned),
    };
    // A malformed traceparent is dropped, not refused (W3C Trace Context, "ignore the header").
    let traceparent = header(headers, TRACEPARENT_HEADER)?
        .filter(|t| crate::telemetry::trace_id(t).is_some())
        .map(|t| t.trim().to_ascii_lowercase());
    Ok(CommandMetadata {
        correlation_id,
        traceparent,
        host: None,
        actor: None,
    })
}

/// The answer to a command.
#[derive(Serialize)]
struct CommandResponse<'a> {
    command_id: CommandId,
    aggregate_type: &'a AggregateType,
    aggregate_id: AggregateId,
    version: Version,
    /// The component that decided the command.
    component: Option<ComponentHash>,
    duplicate: bool,
    attempts: u32,
    /// The commit's log position (for `min_position` of a state query).
    position: u64,
    events: &'a [Event],
}

fn outcome_label(e: &ServiceError) -> CommandOutcomeLabel {
    use CommandOutcomeLabel as L;
    match e {
        ServiceError::Rejected(_) => L::Rejected,
        ServiceError::InvalidCommand(_) | ServiceError::InvalidInput(_) => L::Invalid,
        ServiceError::Conflict { .. }
        | ServiceError::VersionMismatch { .. }
        | ServiceError::CommandIdReused { .. } => L::Conflict,
        ServiceError::Guest(g) if g.is_limit_breach() => L::LimitBreach,
        ServiceError::Guest(_) => L::GuestFault,
        ServiceError::Store(crate::store::StoreError::Unavailable(_))
        | ServiceError::NotOwner(_) => L::Unavailable,
        ServiceError::TenantAccessDenied { .. }
        | ServiceError::UnknownAggregateType(_)
        | ServiceError::UnknownAggregate(_) => L::Refused,
        _ => L::Error,
    }
}

fn record_limit_breach(state: &AppState, target: &AggregateRef, e: &ServiceError) {
    if let ServiceError::Guest(g) = e {
        if g.is_limit_breach() {
            state
                .0
                .metrics
                .limit_breach(&target.aggregate_type, &target.tenant, g.kind());
        }
    }
}

/// `POST /aggregates/{aggregate_type}/{aggregate_id}/commands/{command_type}`
///
/// A command refused before its body is read (a bad path, tenant or header) still has its body
/// read to the end, after the answer: hyper closes a connection whose request body was dropped
/// unread while the client was still sending it, and a keep-alive client then loses its next
/// request on that connection ("connection closed without response").
async fn submit(
    State(st): State<AppState>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let mut body = Some(body);
    let actor = principal.and_then(|Extension(p)| p.actor);
    let answer = run_command(st.clone(), path, headers, actor, &mut body).await;
    if let Some(unread) = body {
        tokio::spawn(super::body::discard(unread, st.0.config.max_command_bytes));
    }
    answer
}

/// [`submit`], taking the body out of `body` when it reads it.
async fn run_command(
    st: AppState,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    actor: Option<String>,
    body: &mut Option<Body>,
) -> Result<Response, ApiError> {
    let Path((ty, id, command_type)) = path.map_err(path_error)?;
    let tenant = st.0.tenants.resolve(&headers)?;
    let target = aggregate(&tenant, &ty, &id)?;
    let started = Instant::now();
    if let Err(wait) = st.0.quotas.take(&tenant) {
        return Err(st.quota_refused(&target, started, Quota::Rate, Some(wait)));
    }
    let refused = |e: ApiError| {
        let label = match &e {
            ApiError::Service(s) => outcome_label(s),
            ApiError::TenantDraining(_) | ApiError::ShuttingDown => CommandOutcomeLabel::Refused,
            _ => CommandOutcomeLabel::Invalid,
        };
        st.0.metrics.command(
            st.type_label(&target.aggregate_type),
            &tenant,
            label,
            started.elapsed(),
        );
        e
    };
    check_command_type(&command_type).map_err(|e| refused(e.into()))?;
    let command_id = header(&headers, COMMAND_ID_HEADER)
        .and_then(|c| {
            c.map(|c| c.parse::<CommandId>().map_err(ApiError::from))
                .transpose()
        })
        .map_err(&refused)?;
    let expected = header(&headers, EXPECTED_VERSION_HEADER)
        .and_then(|v| {
            v.map(|v| {
                v.trim().parse::<u64>().map(Version).map_err(|_| {
                    ApiError::BadRequest(format!(
                        "header {EXPECTED_VERSION_HEADER}: {v:?} is not a version number"
                    ))
                })
            })
            .transpose()
        })
        .map_err(&refused)?;
    let mut metadata = metadata(&headers).map_err(&refused)?;
    // Every event records the host that wrote it, and who sent the command (JWT `sub`).
    metadata.host = st.0.cluster.as_ref().map(|c| c.host_id().to_string());
    metadata.actor = actor;
    let limit = st.0.config.max_command_bytes;
    let body = body.take().expect("the body is read once");
    let body = super::body::read(body, limit, "command body")
        .await
        .map_err(&refused)?;
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        Json::parse("{}").expect("valid JSON")
    } else {
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| refused(ApiError::BadRequest("the body is not UTF-8".into())))?;
        let json = Json::parse(text)
            .map_err(|e| refused(ApiError::BadRequest(format!("the body is not JSON: {e}"))))?;
        // Valid JSON that starts with `{` is an object.
        if !json.as_str().trim_start().starts_with('{') {
            return Err(refused(ApiError::BadRequest(
                "the body is not a JSON object: a command's payload is an object".into(),
            )));
        }
        json
    };
    let in_flight = st.0.tenants.admit(&tenant).map_err(&refused)?;
    let reservation = if st.0.quotas.bounds_aggregates(&tenant) {
        st.reserve_aggregate(&target, started).await?
    } else {
        None
    };

    // The command runs on its own task: a client that hangs up does not cancel it half-way, and
    // drain and shutdown wait for it through `in_flight`.
    let submit = Submit {
        command_id,
        target: target.clone(),
        command_type,
        payload,
        metadata,
    };
    let st = st.clone();
    let outcome = tokio::spawn(async move {
        let _in_flight = in_flight;
        // Freed after the aggregate it may create is counted (below).
        let _reservation = reservation;
        let r =
            st.0.service
                .submit_expecting(&target.tenant, submit, expected)
                .await;
        if let Ok(o) = &r {
            st.tenant_accepted(&target.tenant);
            // The first events of an aggregate start at version 1.
            let created =
                !o.duplicate && !o.events.is_empty() && o.version.0 == o.events.len() as u64;
            st.count_accepted(&target.tenant, created);
        }
        let label = match &r {
            Ok(o) if o.duplicate => CommandOutcomeLabel::Duplicate,
            Ok(_) => CommandOutcomeLabel::Accepted,
            Err(e) => {
                record_limit_breach(&st, &target, e);
                if let ServiceError::VersionMismatch { .. } = e {
                    // The service counts append conflicts; a client's stale expectation is one too.
                    st.0.metrics.conflict(&target);
                }
                outcome_label(e)
            }
        };
        st.0.metrics.command(
            st.type_label(&target.aggregate_type),
            &target.tenant,
            label,
            started.elapsed(),
        );
        r
    })
    .await
    .map_err(|e| ApiError::Internal(format!("command task: {e}")))??;

    let body = CommandResponse {
        command_id: outcome.command_id,
        aggregate_type: &outcome.aggregate.aggregate_type,
        aggregate_id: outcome.aggregate.aggregate_id,
        version: outcome.version,
        component: outcome.component,
        duplicate: outcome.duplicate,
        attempts: outcome.attempts,
        position: outcome.position,
        events: &outcome.events,
    };
    Ok(AxumJson(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterQuery {
    filter: Option<String>,
    limit: Option<usize>,
    page_token: Option<String>,
    min_position: Option<u64>,
}

const DEFAULT_QUERY_PAGE: usize = 100;
const MAX_QUERY_PAGE: usize = 1000;
/// Longest one page of a query scans before it answers with what it found and a token.
const QUERY_SCAN_BUDGET: Duration = Duration::from_secs(2);

/// `GET /aggregates/{aggregate_type}?filter=&limit=&page_token=&min_position=`: the tenant's
/// aggregates of the type whose current state matches the CEL `filter`, in aggregate id order,
/// a page at a time. Reads the state index once it has applied `min_position` and the log's
/// position when the query arrived (see [`crate::query::index`]).
async fn query(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FilterQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use crate::query::filter::{on_filter_thread, Filter};
    use crate::query::index::{IndexError, Query as IndexQuery};
    let Path(ty) = path.map_err(path_error)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let tenant = st.0.tenants.resolve(&headers)?;
    let ty = AggregateType::new(ty)?;
    st.0.registry.resolve(&ty).map_err(ServiceError::from)?;
    if st.0.tenants.is_routed(&tenant) {
        return Err(ApiError::BadRequest(format!(
            "filtered queries are not available for tenant `{}`: its events are in a log of its own (storage_routes), which the state index does not follow",
            tenant.as_str()
        )));
    }
    let Some(index) = st.0.index.clone() else {
        return Err(ApiError::NoRoute(format!(
            "GET /aggregates/{ty}: the state index is off on this host (state_index: false)"
        )));
    };
    let limit = q.limit.unwrap_or(DEFAULT_QUERY_PAGE);
    if limit == 0 || limit > MAX_QUERY_PAGE {
        return Err(ApiError::BadRequest(format!(
            "query: limit must be 1 to {MAX_QUERY_PAGE}, got {limit}"
        )));
    }
    let wait = Duration::from_millis(st.0.config.query_wait_ms);
    let deadline = tokio::time::Instant::now() + wait;
    let _permit = tokio::time::timeout(wait, st.0.queries.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::QueryUnavailable(format!(
                "the host evaluates as many queries as it may at once; none finished within {} ms",
                wait.as_millis()
            ))
        })?
        .map_err(|_| ApiError::ShuttingDown)?;
    let filter = match q.filter.filter(|f| !f.trim().is_empty()) {
        Some(source) => Some(
            on_filter_thread(move || Filter::compile(&source))
                .await
                .and_then(|r| r)
                .map_err(ApiError::InvalidFilter)?,
        ),
        None => None,
    };
    // Reflect every command acknowledged before the query arrived (any host), and the
    // position the client names.
    let head =
        st.0.service
            .log()
            .position()
            .await
            .map_err(ServiceError::from)?;
    if let Some(p) = q.min_position.filter(|p| *p > head) {
        return Err(ApiError::BadRequest(format!(
            "query: min_position {p} is beyond the event log's end ({head}); use the `position` of a command answer"
        )));
    }
    let wanted = head.max(q.min_position.unwrap_or(0));
    let index_error = |e: IndexError| match e {
        IndexError::Behind { .. } => ApiError::QueryUnavailable(e.to_string()),
        IndexError::Filter(f) => ApiError::InvalidFilter(f),
        IndexError::BadPageToken(_) => ApiError::BadRequest(e.to_string()),
        IndexError::Storage(_) => ApiError::Internal(e.to_string()),
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    index.wait_for(wanted, left).await.map_err(index_error)?;
    let request = IndexQuery {
        tenant: tenant.clone(),
        aggregate_type: ty.clone(),
        filter,
        limit,
        page_token: q.page_token,
        budget: QUERY_SCAN_BUDGET,
    };
    let page = on_filter_thread(move || index.query_page(&request))
        .await
        .map_err(|e| ApiError::Internal(format!("filter thread: {e}")))?
        .map_err(index_error)?;
    if !page.items.is_empty() {
        st.tenant_accepted(&tenant);
    }
    Ok(AxumJson(json!({
        "aggregate_type": ty,
        "items": page.items,
        "next_page_token": page.next_page_token,
        "position": page.position,
        "scanned": page.scanned,
        "errors": page.errors,
        "first_error": page.first_error,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    version: Option<u64>,
    at: Option<String>,
}

/// `GET /aggregates/{aggregate_type}/{aggregate_id}?version=&at=`: the current state, or the
/// state as it was after event `version`, or at time `at` (RFC 3339) — folded with the component
/// active now, named in `component`.
async fn state(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<StateQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((ty, id)) = path.map_err(path_error)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let tenant = st.0.tenants.resolve(&headers)?;
    let target = aggregate(&tenant, &ty, &id)?;
    let point = match (q.version, q.at) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "query: give `version` or `at`, not both".into(),
            ))
        }
        (Some(v), None) => Some(PastPoint::Version(Version(v))),
        (None, Some(at)) => Some(PastPoint::At(
            chrono::DateTime::parse_from_rfc3339(at.trim())
                .map_err(|e| {
                    ApiError::BadRequest(format!(
                        "query: at: {at:?} is not an RFC 3339 time like 2026-01-31T12:00:00Z ({e})"
                    ))
                })?
                .with_timezone(&chrono::Utc),
        )),
        (None, None) => None,
    };
    if let Some(point) = point {
        let past =
            st.0.service
                .state_at(&tenant, &target, point)
                .await
                .inspect_err(|e| record_limit_breach(&st, &target, e))?;
        st.tenant_accepted(&tenant);
        return Ok(AxumJson(json!({
            "aggregate_type": target.aggregate_type,
            "aggregate_id": target.aggregate_id,
            "version": past.version,
            "state": past.state,
            "component": past.component,
            "recorded_at": past.recorded_at,
            "current_version": past.current_version,
        }))
        .into_response());
    }
    let s =
        st.0.service
            .state(&tenant, &target)
            .await
            .inspect_err(|e| record_limit_breach(&st, &target, e))?;
    st.tenant_accepted(&tenant);
    Ok(AxumJson(json!({
        "aggregate_type": target.aggregate_type,
        "aggregate_id": target.aggregate_id,
        "version": s.version,
        "state": s.state,
        "component": s.component,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /aggregates/{aggregate_type}/{aggregate_id}/events?after=&limit=`
async fn events(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path((ty, id)) = path.map_err(path_error)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let tenant = st.0.tenants.resolve(&headers)?;
    let target = aggregate(&tenant, &ty, &id)?;
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_PAGE);
    if limit == 0 || limit > MAX_EVENTS_PAGE {
        return Err(ApiError::BadRequest(format!(
            "query: limit must be 1 to {MAX_EVENTS_PAGE}, got {limit}"
        )));
    }
    let after = Version(q.after.unwrap_or(0));
    st.0.registry
        .resolve(&target.aggregate_type)
        .map_err(ServiceError::from)?;
    let events = st.0.service.events(&tenant, &target, after, limit).await?;
    if events.is_empty() && after == Version::INITIAL {
        return Err(ServiceError::UnknownAggregate(target).into());
    }
    if !events.is_empty() {
        st.tenant_accepted(&tenant);
    }
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.version))
        .flatten();
    Ok(AxumJson(json!({ "events": events, "next_after": next_after })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    after: Option<String>,
}

/// `Last-Event-ID`: where an SSE client that reconnects saw its last event.
const LAST_EVENT_ID_HEADER: &str = "last-event-id";
/// The media type of the newline-delimited JSON form of the event stream.
const NDJSON: &str = "application/x-ndjson";

/// A place in the event log: just after event `index` of the commit at `position` (after the
/// whole commit when `index` is absent). Written `P` or `P.i`; every streamed event carries its
/// own as `id` (`P.i`: the commit's log position and the event's index in the commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    position: u64,
    index: Option<usize>,
}

impl Cursor {
    fn parse(what: &str, raw: &str) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::BadRequest(format!(
                "{what}: {raw:?} is not an event id; use `P` or `P.i` (log position, event index) as the stream sent it"
            ))
        };
        let raw = raw.trim();
        let (p, i) = match raw.split_once('.') {
            Some((p, i)) => (p, Some(i)),
            None => (raw, None),
        };
        let position = p.parse::<u64>().map_err(|_| bad())?;
        let index = i
            .map(|i| i.parse::<usize>().map_err(|_| bad()))
            .transpose()?;
        Ok(Self { position, index })
    }
}

/// One piece of an event stream, rendered as SSE or NDJSON.
enum Chunk {
    Ready(serde_json::Value),
    Event { id: String, event: Box<Event> },
    Heartbeat,
    Error(serde_json::Value),
}

/// What one open event stream holds; dropped (with its feed and its place in the stream
/// bounds) when the client goes away or the host shuts down.
struct Follow {
    feed: crate::store::Feed,
    aggregate_id: Option<AggregateId>,
    /// Events of this commit up to this index were already seen (a `P.i` resume).
    seen_in: Option<(u64, usize)>,
    heartbeat: Duration,
    /// When the client was last sent something: a heartbeat is due `heartbeat` after it, however
    /// many commits the stream's filter dropped meanwhile.
    quiet_since: tokio::time::Instant,
    shutdown: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    pending: std::collections::VecDeque<Chunk>,
    done: bool,
    _slot: super::tenants::StreamSlot,
}

impl Follow {
    async fn next(&mut self) -> Option<Chunk> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                self.quiet_since = tokio::time::Instant::now();
                return Some(c);
            }
            if self.done {
                return None;
            }
            let item = tokio::select! {
                _ = &mut self.shutdown => return None,
                _ = tokio::time::sleep_until(self.quiet_since + self.heartbeat) => {
                    self.quiet_since = tokio::time::Instant::now();
                    return Some(Chunk::Heartbeat);
                }
                item = self.feed.next() => item,
            };
            match item {
                None => return None,
                Some(Ok(commit)) => {
                    for (index, event) in commit.events.iter().enumerate() {
                        if self
                            .seen_in
                            .is_some_and(|(p, i)| p == commit.position && index <= i)
                        {
                            continue;
                        }
                        if self
                            .aggregate_id
                            .is_some_and(|id| id != event.aggregate.aggregate_id)
                        {
                            continue;
                        }
                        self.pending.push_back(Chunk::Event {
                            id: format!("{}.{index}", commit.position),
                            event: Box::new(event.clone()),
                        });
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    tracing::warn!(error = %e, "event stream failed");
                    let p = ProblemType::Unavailable;
                    return Some(Chunk::Error(json!({
                        "type": p.uri(), "title": p.title(), "status": p.status().as_u16(),
                        "detail": "the event log failed; reconnect with the last event id to continue",
                    })));
                }
            }
        }
    }
}

/// `GET /events/stream?aggregate_type=&aggregate_id=&after=`: a `ready` event once subscribed,
/// then one `event` per event of the tenant (optionally one type or one aggregate), each with its
/// `id` (`P.i`). `Last-Event-ID` (or `after=`) continues just after that event, with no gap and
/// no repeat; without either the stream starts at the log's end. `Accept: application/x-ndjson`
/// answers one JSON object per line instead (`{"id", "event"}`; heartbeats are empty lines).
async fn stream(
    State(st): State<AppState>,
    query: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let tenant = st.0.tenants.resolve(&headers)?;
    let ty = q.aggregate_type.map(AggregateType::new).transpose()?;
    let id = q
        .aggregate_id
        .map(|i| i.parse::<AggregateId>())
        .transpose()?;
    if id.is_some() && ty.is_none() {
        return Err(ApiError::BadRequest(
            "query: aggregate_id needs aggregate_type".into(),
        ));
    }
    let resume = match header(&headers, LAST_EVENT_ID_HEADER)? {
        Some(raw) if !raw.trim().is_empty() => Some(Cursor::parse("header Last-Event-ID", raw)?),
        _ => q
            .after
            .as_deref()
            .map(|raw| Cursor::parse("query: after", raw))
            .transpose()?,
    };
    let ndjson = header(&headers, "accept")?.is_some_and(|a| a.contains(NDJSON));
    if let Some(ty) = &ty {
        st.0.registry.resolve(ty).map_err(ServiceError::from)?;
    }
    if st.0.tenants.is_shutting_down() {
        return Err(ApiError::ShuttingDown);
    }
    let slot = st.0.tenants.open_stream(
        &tenant,
        st.0.config.max_streams_per_tenant,
        st.0.config.max_streams,
    )?;
    let log = st.0.service.log();
    if let Some(cursor) = resume {
        // An id beyond the log's end was not sent by this log (another embedded host's, or a
        // restored database): following after it would skip events silently.
        let end = log.position_of(&tenant).await.map_err(ServiceError::from)?;
        if cursor.position > end {
            return Err(ApiError::BadRequest(format!(
                "event id {}: position {} is beyond the event log's end ({end}); resume with an id this host's stream sent",
                match cursor.index { Some(i) => format!("{}.{i}", cursor.position), None => cursor.position.to_string() },
                cursor.position
            )));
        }
    }
    // Start at a known position, so the `ready` event can say where the stream begins.
    let (after, seen_in) = match resume {
        Some(Cursor {
            position,
            index: Some(i),
        }) => (position.saturating_sub(1), Some((position, i))),
        Some(Cursor {
            position,
            index: None,
        }) => (position, None),
        None => (
            log.position_of(&tenant).await.map_err(ServiceError::from)?,
            None,
        ),
    };
    let feed = log
        .subscribe(FeedFilter::tenant(&tenant, ty.as_ref()), Some(after))
        .await
        .map_err(ServiceError::from)?;
    let ready = Chunk::Ready(json!({
        "tenant_id": tenant.as_str(),
        "aggregate_type": ty,
        "aggregate_id": id.map(|i| i.to_string()),
        "after": match seen_in { Some((p, i)) => format!("{p}.{i}"), None => after.to_string() },
    }));
    let follow = Follow {
        feed,
        aggregate_id: id,
        seen_in,
        heartbeat: Duration::from_millis(st.0.config.stream_heartbeat_ms),
        quiet_since: tokio::time::Instant::now(),
        shutdown: Box::pin(st.shutdown_signal()),
        pending: std::collections::VecDeque::from([ready]),
        done: false,
        _slot: slot,
    };
    let chunks = futures::stream::unfold(follow, |mut f| async move {
        let c = f.next().await?;
        Some((c, f))
    });
    if ndjson {
        let lines = chunks.map(|c| {
            let line = match c {
                Chunk::Ready(v) => json!({ "ready": v }).to_string(),
                Chunk::Event { id, event } => json!({ "id": id, "event": event }).to_string(),
                Chunk::Heartbeat => String::new(),
                Chunk::Error(v) => json!({ "error": v }).to_string(),
            };
            Ok::<_, Infallible>(bytes::Bytes::from(line + "\n"))
        });
        return Ok((
            [
                (axum::http::header::CONTENT_TYPE, NDJSON),
                (axum::http::header::CACHE_CONTROL, "no-cache"),
                (
                    axum::http::HeaderName::from_static("x-accel-buffering"),
                    "no",
                ),
            ],
            Body::from_stream(lines),
        )
            .into_response());
    }
    let events = chunks.map(|c| {
        Ok::<_, Infallible>(match c {
            Chunk::Ready(v) => SseEvent::default().event("ready").data(v.to_string()),
            Chunk::Event { id, event } => SseEvent::default()
                .event("event")
                .id(id)
                .data(serde_json::to_string(&event).unwrap_or_default()),
            Chunk::Heartbeat => SseEvent::default().comment("heartbeat"),
            Chunk::Error(v) => SseEvent::default().event("error").data(v.to_string()),
        })
    });
    Ok(([("x-accel-buffering", "no")], Sse::new(events)).into_response())
}

/// `GET /problems/{slug}`: what a problem type means.
async fn problem_doc(path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(slug) = path.map_err(path_error)?;
    let p = ProblemType::from_slug(&slug)
        .ok_or_else(|| ApiError::NoRoute(format!("GET /problems/{slug}")))?;
    Ok(AxumJson(json!({
        "type": p.uri(),
        "title": p.title(),
        "status": p.status().as_u16(),
        "description": p.description(),
    }))
    .into_response())
}
