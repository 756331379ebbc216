//! Tenant lifecycle on the admin API: export a tenant's events, import them (into a tenant with
//! no data), delete a tenant and everything the host keeps of it.
//!
//! # Export format (NDJSON)
//!
//! One line per commit (one command's events), aggregate by aggregate, in version order:
//!
//! ```json
//! {"aggregate_type":"bank-account","aggregate_id":"…","command_id":"…","expected":0,"events":[…]}
//! ```
//!
//! `expected` is the aggregate's version before the commit; `events` are the stored events
//! (their `aggregate.tenant` is replaced by the importing tenant). The last line is
//! `{"end":{"commits":N,"events":M}}`: an export without it was cut short. Commands that
//! produced no events are not exported (they hold no data; only their ids were recorded).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json as AxumJson;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{ApiError, AppState};
use crate::service::ServiceError;
use crate::store::Commit;
use crate::types::{AggregateId, AggregateRef, AggregateType, CommandId, Event, TenantId, Version};

/// How long a delete or import waits for the tenant's commands in flight (and the state index)
/// by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// One exported commit (a line of the export).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportedCommit {
    aggregate_type: AggregateType,
    aggregate_id: AggregateId,
    command_id: CommandId,
    expected: Version,
    events: Vec<Event>,
}

/// The last line of an export.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    commits: u64,
    events: u64,
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    ApiError::Service(ServiceError::from(e))
}

fn refuse_in_cluster(st: &AppState, what: &str) -> Result<(), ApiError> {
    if st.0.cluster.is_some() {
        return Err(ApiError::BadRequest(format!(
            "{what} is not available in cluster mode yet: run it against a single host"
        )));
    }
    Ok(())
}

/// Split an aggregate's events into its commits (consecutive events of one command).
fn commits(events: Vec<Event>) -> Vec<Vec<Event>> {
    let mut out: Vec<Vec<Event>> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(c) if c[0].causation_id == e.causation_id => c.push(e),
            _ => out.push(vec![e]),
        }
    }
    out
}

/// `GET /admin/tenants/{tenant}/export`: the tenant's events as NDJSON (see the module docs),
/// streamed aggregate by aggregate.
pub(super) async fn export(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let tenant = super::admin::tenant_path(path)?;
    let log = st.0.service.log().clone();
    let aggregates = log.list_aggregates(&tenant).await.map_err(store_err)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let (mut n_commits, mut n_events) = (0u64, 0u64);
        for (aggregate_type, aggregate_id) in aggregates {
            let aggregate = AggregateRef {
                tenant: tenant.clone(),
                aggregate_type,
                aggregate_id,
            };
            let events = match log.read(&aggregate, Version(0)).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(tenant_id = tenant.as_str(), %aggregate, error = %e, "export cut short");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let mut expected = 0u64;
            for events in commits(events) {
                let line = ExportedCommit {
                    aggregate_type: aggregate.aggregate_type.clone(),
                    aggregate_id: aggregate.aggregate_id,
                    command_id: events[0].causation_id,
                    expected: Version(expected),
                    events,
                };
                expected += line.events.len() as u64;
                n_commits += 1;
                n_events += line.events.len() as u64;
                let mut bytes = serde_json::to_vec(&line).expect("a commit serializes");
                bytes.push(b'\n');
                if tx.send(Ok(bytes.into())).await.is_err() {
                    return; // the client went away
                }
            }
        }
        let end = json!({ "end": End { commits: n_commits, events: n_events } });
        let _ = tx.send(Ok(format!("{end}\n").into())).await;
        tracing::info!(
            tenant_id = tenant.as_str(),
            commits = n_commits,
            events = n_events,
            "tenant exported"
        );
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        body,
    )
        .into_response())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Parse and check an import body: every line a commit of `tenant`, versions continuing each
/// aggregate from 0 without gaps, command ids unique, and the `end` line last with the right
/// counts.
fn parse_import(tenant: &TenantId, body: &[u8]) -> Result<Vec<Commit>, ApiError> {
    let bad = |line: usize, why: String| ApiError::BadRequest(format!("import line {line}: {why}"));
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("import: the body is not UTF-8: {e}")))?;
    let mut out = Vec::new();
    let mut versions: HashMap<(AggregateType, AggregateId), u64> = HashMap::new();
    let mut ids: HashSet<CommandId> = HashSet::new();
    let mut end: Option<(usize, End)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        if let Some((at, _)) = &end {
            return Err(bad(line, format!("data after the end line (line {at})")));
        }
        let value: Value =
            serde_json::from_str(raw).map_err(|e| bad(line, format!("not JSON: {e}")))?;
        if let Some(e) = value.get("end") {
            let e: End = serde_json::from_value(e.clone())
                .map_err(|e| bad(line, format!("end line: {e}")))?;
            end = Some((line, e));
            continue;
        }
        let c: ExportedCommit =
            serde_json::from_value(value).map_err(|e| bad(line, e.to_string()))?;
        if c.events.is_empty() {
            return Err(bad(line, "a commit without events".into()));
        }
        if !ids.insert(c.command_id) {
            return Err(bad(
                line,
                format!("command id {} appears twice", c.command_id),
            ));
        }
        let aggregate = AggregateRef {
            tenant: tenant.clone(),
            aggregate_type: c.aggregate_type.clone(),
            aggregate_id: c.aggregate_id,
        };
        let version = versions
            .entry((c.aggregate_type.clone(), c.aggregate_id))
            .or_insert(0);
        if c.expected.0 != *version {
            return Err(bad(
                line,
                format!(
                    "expected version {} of {}, but the lines before leave it at {version}",
                    c.expected.0, aggregate
                ),
            ));
        }
        let mut events = c.events;
        for e in &mut events {
            if e.aggregate.aggregate_type != aggregate.aggregate_type
                || e.aggregate.aggregate_id != aggregate.aggregate_id
            {
                return Err(bad(
                    line,
                    format!("an event of {} in a commit of {aggregate}", e.aggregate),
                ));
            }
            if e.causation_id != c.command_id {
                return Err(bad(line, "an event of another command".into()));
            }
            e.aggregate.tenant = tenant.clone();
        }
        let commit = Commit {
            aggregate,
            expected: c.expected,
            command_id: c.command_id,
            events,
        };
        commit.validate().map_err(|e| bad(line, e.to_string()))?;
        *version = commit.next_version().0;
        out.push(commit);
    }
    match end {
        None => Err(ApiError::BadRequest(
            "import: no end line ({\"end\":{…}}): the export was cut short".into(),
        )),
        Some((line, e)) => {
            let events: u64 = out.iter().map(|c| c.events.len() as u64).sum();
            if e.commits != out.len() as u64 || e.events != events {
                return Err(bad(
                    line,
                    format!(
                        "the end line counts {} commits and {} events, the body has {} and {events}",
                        e.commits,
                        e.events,
                        out.len()
                    ),
                ));
            }
            Ok(out)
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ImportQuery {
    /// Continue an import that stopped part-way: commits already in the log are skipped.
    #[serde(default)]
    resume: bool,
}

/// Fold each aggregate's imported events with the active component of its type, so that an
/// import the component cannot apply (an unknown event, a payload it refuses) is refused before
/// anything is written. `commits` are in file order; a refusal names the aggregate's first line.
async fn check_apply(st: &AppState, commits: &[Commit]) -> Result<(), ApiError> {
    let mut per_aggregate: Vec<(usize, &AggregateRef, Vec<Event>)> = Vec::new();
    let mut index: HashMap<&AggregateRef, usize> = HashMap::new();
    for (i, c) in commits.iter().enumerate() {
        let k = *index.entry(&c.aggregate).or_insert_with(|| {
            per_aggregate.push((i + 1, &c.aggregate, Vec::new()));
            per_aggregate.len() - 1
        });
        per_aggregate[k].2.extend(c.events.iter().cloned());
    }
    for (line, aggregate, events) in per_aggregate {
        st.0.service
            .fold_events(aggregate, None, events)
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!(
                    "import line {line}: the events of {aggregate} cannot be applied by the active `{}` component: {e}",
                    aggregate.aggregate_type.as_str()
                ))
            })?;
    }
    Ok(())
}

/// `POST /admin/tenants/{tenant}/import[?resume=true]`: append an export's commits to a tenant
/// that has no data, keeping versions, command ids and event metadata. The whole body is checked
/// first (its shape, then each aggregate folded by the active component of its type); the
/// tenant's commands are refused while it runs. An import that stopped part-way (the log became
/// unavailable) is continued with `resume=true`: commits already in the log are skipped.
pub(super) async fn import(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let tenant = super::admin::tenant_path(path)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    refuse_in_cluster(&st, "importing a tenant")?;
    st.0.tenants.check_routed(&tenant)?;
    let limit = st.0.config.max_import_mb << 20;
    let body = super::body::read(body, limit, "import").await?;
    let commits = parse_import(&tenant, &body)?;
    drop(body);
    check_apply(&st, &commits).await?;
    let mut written = 0usize;
    let (was_draining, outcome) = drained(&st, &tenant, DEFAULT_WAIT, async {
        let log = st.0.service.log();
        if !q.resume && !log.list_aggregates(&tenant).await.map_err(store_err)?.is_empty() {
            return Err(ApiError::Conflict(format!(
                "tenant `{}` already has data; delete it first (DELETE /admin/tenants/{{tenant}}), or continue an import that stopped with ?resume=true",
                tenant.as_str()
            )));
        }
        let (mut aggregates, mut events, mut skipped) = (HashSet::new(), 0u64, 0usize);
        for (done, commit) in commits.iter().enumerate() {
            let appended = log.append(commit.clone()).await.map_err(|e| {
                tracing::error!(tenant_id = tenant.as_str(), done, error = %e, "import stopped part-way");
                match e {
                    crate::store::StoreError::Unavailable(m) => ApiError::Service(ServiceError::from(
                        crate::store::StoreError::Unavailable(format!(
                            "{m}; {done} of {} commits were imported: continue with ?resume=true",
                            commits.len()
                        )),
                    )),
                    e => ApiError::Service(ServiceError::from(e)),
                }
            })?;
            if appended.duplicate {
                if !q.resume || appended.version != commit.next_version() {
                    return Err(ApiError::Conflict(format!(
                        "command {} was already recorded (at version {} of {}): the log still remembers it (imported {done} of {} commits)",
                        commit.command_id,
                        appended.version.0,
                        appended.aggregate,
                        commits.len()
                    )));
                }
                skipped += 1;
            } else {
                written += 1;
            }
            aggregates.insert(commit.aggregate.clone());
            events += commit.events.len() as u64;
        }
        Ok((aggregates.len(), events, skipped))
    })
    .await;
    if !was_draining {
        st.0.tenants.resume(&tenant);
    }
    if written > 0 {
        // It has data now (also when the import stopped part-way): list it, count it.
        st.tenant_accepted(&tenant);
        st.0.quotas.accepted(&tenant, false);
    }
    let (aggregates, events, skipped) = outcome?;
    tracing::info!(
        tenant_id = tenant.as_str(),
        aggregates,
        commits = commits.len(),
        skipped,
        events,
        "tenant imported"
    );
    Ok(AxumJson(json!({
        "tenant_id": tenant.as_str(),
        "aggregates": aggregates,
        "commits": commits.len(),
        "skipped": skipped,
        "events": events,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteQuery {
    confirm: Option<String>,
    timeout_ms: Option<u64>,
}

/// Run `work` with `tenant`'s new commands refused and those in flight finished (waiting at most
/// `wait`; 409 `conflict` and `work` not run when some still run). Returns whether the tenant
/// was drained before: the caller lets it in again (or not) afterwards.
async fn drained<T>(
    st: &AppState,
    tenant: &TenantId,
    wait: Duration,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> (bool, Result<T, ApiError>) {
    let was_draining = st.0.tenants.is_draining(tenant);
    let running = st.0.tenants.drain(tenant, wait).await;
    let outcome = if running > 0 {
        Err(ApiError::Conflict(format!(
            "tenant `{}` still has {running} commands running after {} ms; nothing was changed",
            tenant.as_str(),
            wait.as_millis()
        )))
    } else {
        work.await
    };
    (was_draining, outcome)
}

/// `DELETE /admin/tenants/{tenant}?confirm={tenant}`: remove the tenant's events, command
/// records, snapshots, state index entries, hot-cache entries, usage and metric series. The
/// tenant's commands are refused meanwhile and those in flight finish first, so none of them can
/// write after the removal.
pub(super) async fn delete(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = super::admin::tenant_path(path)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(format!("query: {}", e.body_text())))?;
    let key = if tenant.is_single() {
        crate::cluster::SINGLE_TENANT_KEY
    } else {
        tenant.as_str()
    };
    if q.confirm.as_deref() != Some(key) {
        return Err(ApiError::BadRequest(format!(
            "confirm: deleting tenant `{key}` removes all its data; repeat its id as `?confirm={key}`"
        )));
    }
    refuse_in_cluster(&st, "deleting a tenant")?;
    let wait = q.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis);
    let (was_draining, outcome) = drained(&st, &tenant, wait, async {
        // The index must have applied every commit of the tenant before its entries go, or it
        // would write them again.
        let log = st.0.service.log();
        if let Some(index) = &st.0.index {
            let position = log.position().await.map_err(store_err)?;
            index.wait_for(position, wait).await.map_err(|e| {
                ApiError::QueryUnavailable(format!(
                    "nothing was deleted: the state index is behind: {e}"
                ))
            })?;
        }
        let aggregates = st.0.service.delete_tenant(&tenant).await?;
        let index_entries = match &st.0.index {
            Some(index) => index
                .delete_tenant(&tenant)
                .await
                .map_err(|e| ApiError::Internal(format!("state index: {e}")))?,
            None => 0,
        };
        Ok((aggregates, index_entries))
    })
    .await;
    let (aggregates, index_entries) = match outcome {
        Ok(v) => v,
        Err(e) => {
            if !was_draining {
                st.0.tenants.resume(&tenant);
            }
            return Err(e);
        }
    };
    // (The tenant stays drained until its usage and metric series are gone.)
    st.0.quotas.forget(&tenant);
    st.0.metrics.forget_tenant(&tenant);
    // Taken before the tenant's commands are let in again: everything of it recorded from now on
    // is newer.
    let deleted_at = chrono::Utc::now();
    st.0.tenants.forget(&tenant, was_draining);
    tracing::warn!(tenant_id = key, aggregates, index_entries, "tenant deleted");
    Ok(AxumJson(json!({
        "tenant_id": tenant.as_str(),
        "deleted": true,
        "aggregates": aggregates,
        "index_entries": index_entries,
        "deleted_at": deleted_at,
    }))
    .into_response())
}
