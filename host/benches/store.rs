//! Raw append rate of each event log (no runtime, no guest): 1 and 64 concurrent writers, each on
//! its own aggregate, one event (~200 B) per commit, every commit awaited (embedded: fsynced;
//! JetStream: acknowledged). Prints a markdown table: commits/s, p50 and p99 latency.
//!
//! Bounded: each run stops after `STORE_BENCH_SECS` seconds (default 5) or 500,000 commits.
//! The JetStream part starts its own `nats-server` (skipped with a notice when it is missing).
//!
//! `cargo bench -p aggregate-host --bench store`

#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::store::{Commit, EmbeddedLog, EventLog, JetStreamConfig, JetStreamLog};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, ComponentHash, Event,
    Json, TenantId, Version,
};

const MAX_COMMITS: usize = 500_000;

struct Row {
    log: &'static str,
    writers: usize,
    commits: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

fn commit(a: &AggregateRef, expected: u64) -> Commit {
    let command_id = CommandId::generate();
    Commit {
        aggregate: a.clone(),
        expected: Version(expected),
        command_id,
        events: vec![Event {
            aggregate: a.clone(),
            version: Version(expected + 1),
            event_type: "deposited".into(),
            schema_version: 1,
            payload: Json::from_value(&serde_json::json!({
                "amount": 125, "currency": "EUR", "reference": "invoice 2024-000123", "note": "x".repeat(64)
            })),
            causation_id: command_id,
            metadata: CommandMetadata {
                correlation_id: Some("bench".into()),
                traceparent: None,
                host: None,
                actor: None,
            },
            component: ComponentHash::of(b"bench"),
            recorded_at: chrono::Utc::now(),
        }],
    }
}

async fn run(
    log: Arc<dyn EventLog>,
    name: &'static str,
    writers: usize,
    duration: Duration,
) -> Row {
    let tenant = TenantId::new("bench").unwrap();
    let ty = AggregateType::new("account").unwrap();
    let per_writer = MAX_COMMITS / writers;
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let log = log.clone();
        let a = AggregateRef {
            tenant: tenant.clone(),
            aggregate_type: ty.clone(),
            aggregate_id: AggregateId::generate(),
        };
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut v = 0;
            while latencies.len() < per_writer && Instant::now() < deadline {
                let t = Instant::now();
                let appended = log.append(commit(&a, v)).await.expect("append");
                latencies.push(t.elapsed());
                v = appended.version.0;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Row {
        log: name,
        writers,
        commits: all.len(),
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() {
    let secs: u64 = std::env::var("STORE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    for writers in [1, 64] {
        let dir = tempfile::tempdir().unwrap();
        let embedded = Arc::new(EmbeddedLog::open(dir.path()).unwrap());
        let log: Arc<dyn EventLog> = embedded.clone();
        rows.push(rt.block_on(run(
            log,
            "embedded (fjall, fsync per batch)",
            writers,
            duration,
        )));
        let st = embedded.stats();
        let batches = st.batches.max(1) as f64;
        notes.push(format!(
            "embedded, {writers} writer(s): {} batches, {:.1} commits/batch, per batch {:.0} µs prepare + {:.0} µs write+fsync",
            st.batches,
            st.commits as f64 / batches,
            st.prepare_micros as f64 / batches,
            st.persist_micros as f64 / batches,
        ));
    }

    if let Some(server) = nats::NatsServer::start_or_skip("store bench (JetStream)") {
        for writers in [1, 64] {
            let log: Arc<dyn EventLog> = rt.block_on(async {
                let config = JetStreamConfig {
                    stream: format!("BENCH{writers}"),
                    ..Default::default()
                };
                // One stream may own `tenant.>` at a time: remove the previous run's.
                let client = async_nats::connect(server.url()).await.unwrap();
                let js = async_nats::jetstream::new(client.clone());
                for old in ["BENCH1", "BENCH64"] {
                    let _ = js.delete_stream(old).await;
                }
                Arc::new(JetStreamLog::open(client, config).await.unwrap())
            });
            rows.push(rt.block_on(run(
                log,
                "jetstream (nats-server 2.9, R1)",
                writers,
                duration,
            )));
        }
        drop(server);
    }

    println!();
    println!("| log | writers | commits | commits/s | p50 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} |",
            r.log,
            r.writers,
            r.commits,
            r.commits as f64 / r.elapsed.as_secs_f64(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
        );
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
}
