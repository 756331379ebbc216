//! What `sync_interval: always` costs a single-node JetStream log (a `--release` bench binary, not
//! a timed test): durable commands/s through the command service (rehydrate from the hot cache →
//! decide → append → apply, the bank-account `deposit`) and the raw append rate of the log alone,
//! on three logs in the same run — the embedded log (fsync before every acknowledgement, group
//! commit), JetStream with nats-server's default (acknowledge, fsync at most every 2 minutes) and
//! JetStream with `sync_interval: always` (fsync before every acknowledgement) — with 1 and 64
//! concurrent writers on distinct aggregates.
//!
//! The cases run in rounds (`BENCH_ROUNDS`, default 3), each case `BENCH_SECS` seconds (default
//! 2) per round, interleaved so that a change of load on the machine hits every case alike; the
//! table gives each case's median round and its ratio to the embedded log and to JetStream's
//! default, measured in the same run. Both JetStream servers are started from a config file (the
//! same but for `sync_interval`) on loopback, each with its own store directory.
//!
//! Run: `cargo bench -p aggregate-host --bench jetstream_sync` (needs `nats-server` on `PATH`:
//! `scripts/toolchains.sh`, then `. target/toolchains/env.sh`).

#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
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

const WRITERS: [usize; 2] = [1, 64];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One measured round of one case.
struct Round {
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Run `writers` closed loops for `secs`; loop `w` owns aggregate `w` and `op(w)` does one
/// command on it.
async fn closed_loop<F, Fut>(writers: usize, secs: Duration, op: F) -> Round
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let deadline = started + secs;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(w).await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };
    Round {
        per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn account(tenant: &TenantId) -> AggregateRef {
    AggregateRef {
        tenant: tenant.clone(),
        aggregate_type: AggregateType::new("bank-account").expect("type name"),
        aggregate_id: AggregateId::generate(),
    }
}

/// One event log under test: a command service on it, and the log itself for raw appends.
struct Subject {
    name: &'static str,
    log: Arc<dyn EventLog>,
    service: Arc<CommandService>,
    tenant: TenantId,
    /// Per writer count: the opened accounts the service rows deposit to.
    accounts: BTreeMap<usize, Arc<Vec<AggregateRef>>>,
    /// Per writer count: the aggregates the raw rows append to, with their next version.
    raw: BTreeMap<usize, Arc<Vec<(AggregateRef, std::sync::atomic::AtomicU64)>>>,
    /// Keeps the data directory (and the nats-server) alive as long as the subject.
    _dir: tempfile::TempDir,
    _server: Option<nats::NatsServer>,
}

impl Subject {
    async fn new(
        name: &'static str,
        log: Arc<dyn EventLog>,
        dir: tempfile::TempDir,
        server: Option<nats::NatsServer>,
    ) -> Self {
        let path: &Path = dir.path();
        let runtime = Arc::new(
            Runtime::new(RuntimeConfig {
                artifact_dir: Some(path.join("artifacts")),
                ..RuntimeConfig::default()
            })
            .expect("runtime"),
        );
        let registry = Arc::new(
            Registry::open(path, &path.join("manifest.yaml"), runtime.clone(), 64 << 20)
                .expect("registry"),
        );
        let ty = AggregateType::new("bank-account").expect("type name");
        let component = std::fs::read(example_artifacts::BANK_ACCOUNT).expect("bank-account");
        registry.deploy(&ty, &component, None).expect("deploy");
        let snapshots = SnapshotStore::open(path.join("snapshots")).expect("snapshots");
        let service = Arc::new(CommandService::new(
            registry,
            runtime,
            log.clone(),
            snapshots,
            ServiceConfig::default(),
        ));
        let tenant = TenantId::new("bench").expect("tenant");
        let mut accounts = BTreeMap::new();
        let mut raw = BTreeMap::new();
        for writers in WRITERS {
            let opened: Vec<_> = (0..writers).map(|_| account(&tenant)).collect();
            for a in &opened {
                let open = Submit {
                    command_id: None,
                    target: a.clone(),
                    command_type: "open".into(),
                    payload: Json::parse(r#"{"owner":"bench"}"#).expect("json"),
                    metadata: CommandMetadata::default(),
                };
                service.submit(&tenant, open).await.expect("open");
            }
            accounts.insert(writers, Arc::new(opened));
            let fresh = (0..writers)
                .map(|_| (account(&tenant), std::sync::atomic::AtomicU64::new(0)))
                .collect();
            raw.insert(writers, Arc::new(fresh));
        }
        Self {
            name,
            log,
            service,
            tenant,
            accounts,
            raw,
            _dir: dir,
            _server: server,
        }
    }

    async fn service_round(&self, writers: usize, secs: Duration) -> Round {
        let (service, accounts, tenant) = (
            self.service.clone(),
            self.accounts[&writers].clone(),
            self.tenant.clone(),
        );
        closed_loop(writers, secs, move |w| {
            let (service, target, tenant) = (service.clone(), accounts[w].clone(), tenant.clone());
            async move {
                let deposit = Submit {
                    command_id: None,
                    target,
                    command_type: "deposit".into(),
                    payload: Json::parse(r#"{"amount":1}"#).expect("json"),
                    metadata: CommandMetadata::default(),
                };
                service.submit(&tenant, deposit).await.expect("deposit");
            }
        })
        .await
    }

    async fn raw_round(&self, writers: usize, secs: Duration) -> Round {
        let (log, aggregates) = (self.log.clone(), self.raw[&writers].clone());
        let component = ComponentHash::of(b"raw");
        closed_loop(writers, secs, move |w| {
            let (log, aggregates) = (log.clone(), aggregates.clone());
            async move {
                let (aggregate, next) = &aggregates[w];
                let expected = next.load(std::sync::atomic::Ordering::Relaxed);
                let command_id = CommandId::generate();
                let event = Event {
                    aggregate: aggregate.clone(),
                    version: Version(expected + 1),
                    event_type: "deposited".into(),
                    schema_version: 1,
                    payload: Json::parse(r#"{"amount":1}"#).expect("json"),
                    causation_id: command_id,
                    metadata: CommandMetadata::default(),
                    component,
                    recorded_at: chrono::Utc::now(),
                };
                log.append(Commit {
                    aggregate: aggregate.clone(),
                    expected: Version(expected),
                    command_id,
                    events: vec![event],
                })
                .await
                .expect("append");
                next.store(expected + 1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .await
    }
}

async fn jetstream(name: &'static str, what: &str, jetstream_config: &str) -> Option<Subject> {
    let server = nats::NatsServer::start_with_jetstream_config_or_skip(what, jetstream_config)?;
    let log: Arc<dyn EventLog> = Arc::new(
        JetStreamLog::connect(&server.url(), Default::default())
            .await
            .expect("connect to nats-server"),
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    Some(Subject::new(name, log, dir, Some(server)).await)
}

fn median(rounds: &mut [Round]) -> &Round {
    rounds.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
    &rounds[rounds.len() / 2]
}

#[tokio::main]
async fn main() {
    let secs = Duration::from_secs(env_or("BENCH_SECS", 2));
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);

    let dir = tempfile::tempdir().expect("temporary directory");
    let embedded: Arc<dyn EventLog> =
        Arc::new(EmbeddedLog::open(dir.path().join("events")).expect("embedded log"));
    let mut subjects = vec![Subject::new("embedded", embedded, dir, None).await];
    subjects.extend(jetstream("jetstream, default sync", "sync bench (default)", "").await);
    subjects.extend(
        jetstream(
            "jetstream, sync_interval: always",
            "sync bench (sync_interval: always)",
            "sync_interval: always",
        )
        .await,
    );
    if subjects.len() < 3 {
        eprintln!("NOTICE: the JetStream rows are missing: nats-server is not on PATH");
    }

    // (what, writers, subject) → rounds, run interleaved.
    let mut results: BTreeMap<(&str, usize, usize), Vec<Round>> = BTreeMap::new();
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for what in ["raw append", "service"] {
            for writers in WRITERS {
                for (i, subject) in subjects.iter().enumerate() {
                    let r = match what {
                        "raw append" => subject.raw_round(writers, secs).await,
                        _ => subject.service_round(writers, secs).await,
                    };
                    results.entry((what, writers, i)).or_default().push(r);
                }
            }
        }
    }

    println!(
        "| what | log | writers | commands/s (median of {rounds}) | range | p50 ms | p99 ms | ÷ embedded | ÷ jetstream default |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for what in ["raw append", "service"] {
        for writers in WRITERS {
            let mut medians = Vec::new();
            for (i, subject) in subjects.iter().enumerate() {
                let rounds = results.get_mut(&(what, writers, i)).expect("measured");
                let (lo, hi) = rounds.iter().fold((f64::MAX, 0f64), |(lo, hi), r| {
                    (lo.min(r.per_sec), hi.max(r.per_sec))
                });
                let m = median(rounds);
                medians.push(m.per_sec);
                let ratio = |base: Option<&f64>| {
                    base.map_or("".to_string(), |b| format!("{:.2}", m.per_sec / b))
                };
                println!(
                    "| {what} | {} | {writers} | {:.0} | {:.0}–{:.0} | {:.2} | {:.2} | {} | {} |",
                    subject.name,
                    m.per_sec,
                    lo,
                    hi,
                    m.p50_ms,
                    m.p99_ms,
                    ratio(medians.first()),
                    if i == 0 {
                        String::new()
                    } else {
                        ratio(medians.get(1))
                    },
                );
            }
        }
    }
}
