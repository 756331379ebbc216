//! Service-layer benchmark (a `--release` bench binary, not a timed test): durable commands/s and
//! p50/p99 latency through the whole lifecycle (rehydrate from the hot cache → decide → append →
//! apply), for each event log, with 1 and 64 concurrent writers on distinct aggregates — beside
//! the raw append rate of the same log without the runtime (the ceiling).
//!
//! Run: `cargo bench -p aggregate-host --bench service`. Bounded by time per row (`BENCH_SECS`,
//! default 5). The JetStream rows start their own nats-server on loopback.

#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::registry::Registry;
use aggregate_host::runtime::{Runtime, RuntimeConfig};
use aggregate_host::service::{CommandService, ServiceConfig, Submit};
use aggregate_host::store::embedded::EmbeddedLog;
use aggregate_host::store::jetstream::JetStreamLog;
use aggregate_host::store::snapshots::SnapshotStore;
use aggregate_host::store::{Commit, EventLog};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, ComponentHash, Event,
    Json, TenantId, Version,
};

struct Stats {
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn row(&mut self, what: &str, log: &str, writers: usize) -> String {
        self.latencies.sort();
        let pct = |p: f64| {
            self.latencies
                [((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1)]
        };
        format!(
            "| {what} | {log} | {writers} | {:.0} | {:.2} | {:.2} | {} |",
            self.ops as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            self.ops
        )
    }
}

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    )
}

fn account(tenant: &TenantId) -> AggregateRef {
    AggregateRef {
        tenant: tenant.clone(),
        aggregate_type: AggregateType::new("bank-account").unwrap(),
        aggregate_id: AggregateId::generate(),
    }
}

/// Run `writers` closed loops for `secs()`; each loop owns one aggregate.
async fn closed_loop<F, Fut>(writers: usize, op: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + secs();
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(w, i).await;
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    Stats {
        ops: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    }
}

async fn service_rows(
    log_name: &str,
    log: Arc<dyn EventLog>,
    dir: &std::path::Path,
    out: &mut Vec<String>,
) {
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            artifact_dir: Some(dir.join("artifacts")),
            ..RuntimeConfig::default()
        })
        .unwrap(),
    );
    let registry = Arc::new(
        Registry::open(dir, &dir.join("manifest.yaml"), runtime.clone(), 64 << 20).unwrap(),
    );
    let ty = AggregateType::new("bank-account").unwrap();
    registry
        .deploy(
            &ty,
            &std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap(),
            None,
        )
        .unwrap();
    let snapshots = SnapshotStore::open(dir.join("snapshots")).unwrap();
    let service = Arc::new(CommandService::new(
        registry,
        runtime,
        log,
        snapshots,
        ServiceConfig::default(),
    ));
    let tenant = TenantId::new("bench").unwrap();
    for writers in [1usize, 64] {
        let accounts: Arc<Vec<AggregateRef>> =
            Arc::new((0..writers).map(|_| account(&tenant)).collect());
        for a in accounts.iter() {
            let open = Submit {
                command_id: None,
                target: a.clone(),
                command_type: "open".into(),
                payload: Json::parse(r#"{"owner":"bench"}"#).unwrap(),
                metadata: CommandMetadata::default(),
            };
            service.submit(&tenant, open).await.unwrap();
        }
        let (svc, accs, t) = (service.clone(), accounts.clone(), tenant.clone());
        let mut stats = closed_loop(writers, move |w, _| {
            let (svc, target, t) = (svc.clone(), accs[w].clone(), t.clone());
            async move {
                let cmd = Submit {
                    command_id: None,
                    target,
                    command_type: "deposit".into(),
                    payload: Json::parse(r#"{"amount":1}"#).unwrap(),
                    metadata: CommandMetadata::default(),
                };
                svc.submit(&t, cmd).await.expect("deposit");
            }
        })
        .await;
        out.push(stats.row("service (decide+append+apply)", log_name, writers));
    }
}

async fn raw_rows(log_name: &str, log: Arc<dyn EventLog>, out: &mut Vec<String>) {
    let tenant = TenantId::new("raw").unwrap();
    let component = ComponentHash::of(b"raw");
    for writers in [1usize, 64] {
        let accounts: Arc<Vec<AggregateRef>> =
            Arc::new((0..writers).map(|_| account(&tenant)).collect());
        let log = log.clone();
        let mut stats = closed_loop(writers, move |w, i| {
            let (log, aggregate) = (log.clone(), accounts[w].clone());
            async move {
                let command_id = CommandId::generate();
                let event = Event {
                    aggregate: aggregate.clone(),
                    version: Version(i + 1),
                    event_type: "deposited".into(),
                    schema_version: 1,
                    payload: Json::parse(r#"{"amount":1}"#).unwrap(),
                    causation_id: command_id,
                    metadata: CommandMetadata::default(),
                    component,
                    recorded_at: chrono::Utc::now(),
                };
                log.append(Commit {
                    aggregate,
                    expected: Version(i),
                    command_id,
                    events: vec![event],
                })
                .await
                .expect("append");
            }
        })
        .await;
        out.push(stats.row("raw append (ceiling)", log_name, writers));
    }
}

#[tokio::main]
async fn main() {
    let mut rows = Vec::new();
    {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(dir.path().join("raw-events")).unwrap());
        raw_rows("embedded", raw, &mut rows).await;
        let log: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(dir.path().join("events")).unwrap());
        service_rows("embedded", log, dir.path(), &mut rows).await;
    }
    match nats::NatsServer::start_or_skip("service bench on JetStream") {
        Some(server) => {
            let dir = tempfile::tempdir().unwrap();
            let raw: Arc<dyn EventLog> = Arc::new(
                JetStreamLog::connect(&server.url(), Default::default())
                    .await
                    .unwrap(),
            );
            raw_rows("jetstream", raw.clone(), &mut rows).await;
            service_rows("jetstream", raw, dir.path(), &mut rows).await;
        }
        None => {
            rows.push("| (JetStream rows skipped: nats-server not installed) | | | | | | |".into())
        }
    }
    println!("| what | log | writers | commands/s | p50 (ms) | p99 (ms) | commands |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!("{r}");
    }
}
