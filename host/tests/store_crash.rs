//! Crash test for both event logs.
//!
//! The parent re-executes this test binary in "child mode" (`crash_child`, selected by the
//! environment variable `STORE_CRASH_CHILD`). The child appends under load — many concurrent
//! writers on a few aggregates, conflicts and retries included — and prints one line per
//! acknowledged command, flushed, as soon as the append returned `Ok`:
//!
//! ```text
//! ACK <command-id> <aggregate-id> <version-before> <version-after>
//! ```
//!
//! The parent reads for a while, SIGKILLs the child mid-stream, reads what was printed before the
//! kill, reopens the log (JetStream: after also SIGKILLing and restarting nats-server) and checks:
//! every acknowledged command is there with exactly its events at exactly its versions, every
//! aggregate's versions run 1..n without gaps, and no command's events appear twice.
//!
//! A SIGKILL keeps the page cache, so this tests crash consistency (atomic batches, journal
//! recovery, idempotency records), not power-loss durability.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::store::{
    Commit, EmbeddedLog, EventLog, JetStreamConfig, JetStreamLog, StoreError,
};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, ComponentHash, Event,
    Json, TenantId, Version,
};
use support::nats::NatsServer;

const CHILD_ENV: &str = "STORE_CRASH_CHILD";
const TARGET_ENV: &str = "STORE_CRASH_TARGET";
const TENANT: &str = "crash";
const AGGREGATES: usize = 8;
const WRITERS: usize = 32;

fn tenant() -> TenantId {
    TenantId::new(TENANT).unwrap()
}

fn aggregate(id: AggregateId) -> AggregateRef {
    AggregateRef {
        tenant: tenant(),
        aggregate_type: AggregateType::new("counter").unwrap(),
        aggregate_id: id,
    }
}

fn commit(a: &AggregateRef, expected: u64, count: u64) -> Commit {
    let command_id = CommandId::generate();
    Commit {
        aggregate: a.clone(),
        expected: Version(expected),
        command_id,
        events: (1..=count)
            .map(|i| Event {
                aggregate: a.clone(),
                version: Version(expected + i),
                event_type: "incremented".into(),
                schema_version: 1,
                payload: Json::from_value(&serde_json::json!({ "by": i })),
                causation_id: command_id,
                metadata: CommandMetadata::default(),
                component: ComponentHash::of(b"crash"),
                recorded_at: chrono::Utc::now(),
            })
            .collect(),
    }
}

async fn open(kind: &str, target: &str) -> Arc<dyn EventLog> {
    match kind {
        "embedded" => Arc::new(EmbeddedLog::open(target).expect("open embedded log")),
        "jetstream" => Arc::new(
            JetStreamLog::connect(target, JetStreamConfig::default())
                .await
                .expect("open JetStream log"),
        ),
        other => panic!("unknown log kind {other}"),
    }
}

/// Child mode: append until killed. A no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(kind) = std::env::var(CHILD_ENV) else {
        return;
    };
    let target = std::env::var(TARGET_ENV).expect("STORE_CRASH_TARGET");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = open(&kind, &target).await;
        let aggregates: Arc<Vec<(AggregateRef, AtomicU64)>> = Arc::new(
            (0..AGGREGATES)
                .map(|_| (aggregate(AggregateId::generate()), AtomicU64::new(0)))
                .collect(),
        );
        let out = Arc::new(parking_lot::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let log = log.clone();
            let aggregates = aggregates.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0u64.. {
                    let (a, known) = &aggregates[(w + n as usize) % AGGREGATES];
                    let from = known.load(Ordering::Acquire);
                    let c = commit(a, from, 1 + (n + w as u64) % 3);
                    match log.append(c.clone()).await {
                        Ok(appended) => {
                            known.fetch_max(appended.version.0, Ordering::AcqRel);
                            let mut out = out.lock();
                            writeln!(
                                out,
                                "ACK {} {} {} {}",
                                c.command_id, a.aggregate_id, from, appended.version
                            )
                            .and_then(|()| out.flush())
                            .expect("stdout");
                        }
                        Err(StoreError::Conflict { actual, .. }) => {
                            known.fetch_max(actual.0, Ordering::AcqRel);
                        }
                        Err(e) => eprintln!("child: append failed: {e}"),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[derive(Debug)]
struct Ack {
    command: CommandId,
    aggregate: AggregateId,
    from: u64,
    to: u64,
}

/// Run the child against `target`, kill it after `min_acks` acks or `max_time`, and return
/// every ack it printed.
fn run_child_and_kill(kind: &str, target: &str, min_acks: usize, max_time: Duration) -> Vec<Ack> {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, kind)
        .env(TARGET_ENV, target)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("ACK ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut lines = Vec::new();
    while lines.len() < min_acks && started.elapsed() < max_time {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            lines.push(line);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the child exited by itself: {status}");
        }
    }
    child.kill().expect("SIGKILL the child");
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    assert!(
        !lines.is_empty(),
        "the child acknowledged nothing in {max_time:?}"
    );
    lines
        .iter()
        .map(|line| {
            let p: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(p.len(), 5, "malformed line {line:?}");
            Ack {
                command: p[1].parse().unwrap(),
                aggregate: p[2].parse().unwrap(),
                from: p[3].parse().unwrap(),
                to: p[4].parse().unwrap(),
            }
        })
        .collect()
}

async fn verify(log: &dyn EventLog, acks: &[Ack]) {
    let listed = log.list_aggregates(&tenant()).await.unwrap();
    assert!(listed.len() <= AGGREGATES);
    let mut by_command: HashMap<CommandId, Vec<u64>> = HashMap::new();
    let mut by_aggregate: HashMap<AggregateId, Vec<Event>> = HashMap::new();
    for (_, id) in &listed {
        let a = aggregate(*id);
        let events = log.read(&a, Version(0)).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version.0).collect();
        assert_eq!(
            versions,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{a}: versions 1..n, no gaps"
        );
        assert_eq!(log.version(&a).await.unwrap(), Version(events.len() as u64));
        for e in &events {
            by_command
                .entry(e.causation_id)
                .or_default()
                .push(e.version.0);
        }
        by_aggregate.insert(*id, events);
    }
    // No command's events appear twice: each command owns one contiguous run of versions.
    for (command, versions) in &by_command {
        let contiguous = versions.windows(2).all(|w| w[1] == w[0] + 1);
        assert!(
            contiguous,
            "command {command} has events at {versions:?} (written twice?)"
        );
    }
    let mut seen = HashSet::new();
    for ack in acks {
        assert!(
            seen.insert(ack.command),
            "command {} acknowledged twice",
            ack.command
        );
        let versions = by_command
            .get(&ack.command)
            .unwrap_or_else(|| panic!("acknowledged command {} lost", ack.command));
        assert_eq!(
            versions,
            &((ack.from + 1)..=ack.to).collect::<Vec<_>>(),
            "command {}",
            ack.command
        );
        assert!(by_aggregate[&ack.aggregate]
            .iter()
            .any(|e| e.causation_id == ack.command));
    }
    // The idempotency records survived too (sampled: every 10th ack).
    for ack in acks.iter().step_by(10) {
        let found = log
            .find_command(&tenant(), &ack.command)
            .await
            .unwrap()
            .expect("command record");
        assert_eq!(found.version, Version(ack.to));
        assert_eq!(found.aggregate.aggregate_id, ack.aggregate);
    }
    // And the log goes on.
    let (_, id) = &listed[0];
    let a = aggregate(*id);
    let n = by_aggregate[id].len() as u64;
    log.append(commit(&a, n, 1)).await.unwrap();
    println!(
        "verified {} acknowledged commands, {} events on {} aggregates",
        acks.len(),
        by_command.values().map(Vec::len).sum::<usize>(),
        listed.len()
    );
}

#[test]
fn embedded_log_survives_sigkill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().to_str().unwrap().to_string();
    let acks = run_child_and_kill("embedded", &target, 20_000, Duration::from_secs(3));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = open("embedded", &target).await;
        verify(log.as_ref(), &acks).await;
    });
}

#[test]
fn jetstream_log_survives_sigkill_of_host_and_server() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(mut server) =
        NatsServer::start_or_skip("jetstream_log_survives_sigkill_of_host_and_server")
    else {
        return;
    };
    let url = server.url();
    let acks = run_child_and_kill("jetstream", &url, 5_000, Duration::from_secs(3));
    server.restart();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = open("jetstream", &url).await;
        verify(log.as_ref(), &acks).await;
    });
}
