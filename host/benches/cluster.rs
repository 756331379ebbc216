//! Cluster control-plane benchmark (a bench binary, not a timed test): a 3-node nats-server
//! cluster on loopback (manifest and membership buckets and the component store R3) and three
//! release `aggregate-host serve` processes in cluster mode, as in `tests/cluster`:
//!
//! 1. **deploy propagation**: 21 deploys of one aggregate type, alternating the bank account v1
//!    and v2 components (v1 first), each through the next host in turn. For each: the **answer**
//!    (upload to the admin answer: the receiving host's checks, the prepare phase on every host,
//!    the activation) and the **propagation** (from the answer until every host's
//!    `GET /admin/aggregates` shows the new component and version; each host is polled every 2 ms
//!    from the moment the upload starts and once more as soon as the answer arrives, so a host
//!    that shows it before the answer counts 0, and the resolution is one loopback request). The
//!    first two deploys compile the component on every host; the other 19 find it compiled.
//! 2. **start to ready with 20 deployed types**: the same component deployed under `bench-00` ..
//!    `bench-19` (one distinct blob), then v2 over every odd one (two distinct blobs); for each,
//!    a 4th host started 3 times **cold** (empty data dir: every blob fetched from the Object
//!    Store and compiled) and 3 times **warm** (restarted on the last cold run's data dir: local
//!    blobs and precompiled artifacts). Timed from spawn until `GET /ready` answers 200 (false
//!    until the host caught up with the manifest bucket and loaded every active component),
//!    polled every 2 ms.
//!
//! Prints the host logs' warnings and errors at the end. Bounded: about 10 s on 2 vCPUs (each
//! wait is bounded: 15 s for a deploy to reach every host, 60 s for a host to be ready).
//! Skipped with a notice when `nats-server` is not on PATH (a panic when `CI` is set).
//! `BENCH_KEEP=1` keeps the data directories and host logs (the path is printed).
//!
//! `cargo bench -p aggregate-host --bench cluster`

#[path = "../tests/support/nats_cluster.rs"]
mod nats_cluster;

#[path = "../../tests/e2e/support.rs"]
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aggregate_host::client::Client;
use serde_json::Value;

use nats_cluster::NatsCluster;
use support::{wasm, HostProcess};

const COMMAND: &str = "cargo bench -p aggregate-host --bench cluster";
/// The aggregate type of the deploy series.
const TYPE: &str = "bank-account";
/// Deploys in the series (v1 first and last).
const DEPLOYS: usize = 21;
/// Aggregate types deployed before the start-up runs.
const TYPES: usize = 20;
/// Cold and warm starts per variant.
const STARTS: usize = 3;
/// Pause between two polls of a host.
const POLL: Duration = Duration::from_millis(2);
/// Bound on one deploy reaching every host.
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a started host becoming ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of unsorted durations.
fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn max(v: &[Duration]) -> Duration {
    v.iter().copied().max().unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text without ANSI escape sequences (the host's text logs are coloured).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Lines of a log containing `what`.
fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

struct Bench {
    nats: NatsCluster,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    hosts: Vec<HostProcess>,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    fn vars(&self, id: &str, dir: &Path) -> Vec<(String, String)> {
        [
            ("AGGREGATE_DATA_DIR", dir.display().to_string()),
            ("AGGREGATE_GATEWAY_LISTEN", "127.0.0.1:0".into()),
            ("AGGREGATE_ADMIN_LISTEN", "127.0.0.1:0".into()),
            ("AGGREGATE_ADMIN_TOKEN", support::TOKEN.into()),
            ("AGGREGATE_SHUTDOWN_GRACE_SECS", "10".into()),
            ("AGGREGATE_SHUTDOWN_LINGER_MS", "0".into()),
            ("AGGREGATE_NATS_URL", self.nats.urls()),
            ("AGGREGATE_CLUSTER", "true".into()),
            ("AGGREGATE_HOST_ID", id.into()),
            ("AGGREGATE_NATS_REPLICAS", "3".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Start a host on `dir`; returns it with the time from spawn until it printed its addresses
    /// and until `/ready` answered 200.
    fn start_timed(&self, id: &str, dir: &Path) -> (HostProcess, Duration, Duration) {
        let started = Instant::now();
        let host = HostProcess::start(dir, &self.vars(id, dir));
        let listening = started.elapsed();
        wait_ready(&host, started);
        (host, listening, started.elapsed())
    }

    fn clients(&self) -> Vec<Client> {
        self.hosts.iter().map(HostProcess::client).collect()
    }
}

/// Poll `GET /ready` every [`POLL`] until it answers 200; panics with the host's log after
/// [`READY_TIMEOUT`].
fn wait_ready(host: &HostProcess, started: Instant) {
    let addr = host
        .admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    loop {
        let status = std::net::TcpStream::connect(&addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: host\r\nConnection: close\r\n\r\n")?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head)?;
            Ok(head)
        });
        if matches!(&status, Ok(head) if head.ends_with(b" 200")) {
            return;
        }
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "host not ready within {READY_TIMEOUT:?} ({status:?}); its log:\n{}",
            host.log()
        );
        std::thread::sleep(POLL);
    }
}

/// The host's entries: aggregate type → (component, version).
async fn entries(client: &Client) -> Option<Vec<(String, String, Value)>> {
    let list = client
        .admin(reqwest::Method::GET, "/admin/aggregates", None)
        .await
        .ok()?;
    Some(
        list["aggregates"]
            .as_array()?
            .iter()
            .map(|a| {
                (
                    a["aggregate_type"].as_str().unwrap_or_default().to_string(),
                    a["component"].as_str().unwrap_or_default().to_string(),
                    a["version"].clone(),
                )
            })
            .collect(),
    )
}

/// Poll one host every [`POLL`], and once more at once when `answered` changes, until it shows
/// `hash` for `ty` at another version than `before`; when it first did, and the version it
/// showed.
async fn first_seen(
    client: Client,
    ty: String,
    hash: String,
    before: Option<Value>,
    since: Instant,
    mut answered: tokio::sync::watch::Receiver<bool>,
) -> (Instant, Value) {
    loop {
        let shown = entries(&client).await.and_then(|e| {
            e.into_iter()
                .find(|(t, h, v)| *t == ty && *h == hash && Some(v) != before.as_ref())
        });
        if let Some((_, _, version)) = shown {
            return (Instant::now(), version);
        }
        assert!(
            since.elapsed() < PROPAGATION_TIMEOUT,
            "{} did not show {ty} = {hash} within {PROPAGATION_TIMEOUT:?}",
            client.admin_url()
        );
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = answered.changed() => {}
        }
    }
}

/// One deploy's figures.
struct Deployed {
    /// Upload to answer.
    answer: Duration,
    /// Last host showing it, relative to the answer (negative: before the answer arrived).
    last_seen_ms: f64,
    /// Hosts that acknowledged the prepare phase.
    acknowledged: u64,
}

impl Deployed {
    /// From the answer until every host showed it (zero when all did before the answer).
    fn propagation(&self) -> Duration {
        Duration::from_secs_f64(self.last_seen_ms.max(0.0) / 1e3)
    }
}

/// One deploy through `clients[via]`, every host polled from the moment it is sent.
async fn deploy(clients: &[Client], via: usize, ty: &str, bytes: &[u8]) -> Deployed {
    let hash = aggregate_host::types::ComponentHash::of(bytes).to_string();
    let before = entries(&clients[via])
        .await
        .expect("list aggregates")
        .into_iter()
        .find(|(t, _, _)| t == ty)
        .map(|(_, _, v)| v);
    let (tell, told) = tokio::sync::watch::channel(false);
    let sent = Instant::now();
    let pollers: Vec<_> = clients
        .iter()
        .map(|c| {
            tokio::spawn(first_seen(
                c.clone(),
                ty.to_string(),
                hash.clone(),
                before.clone(),
                sent,
                told.clone(),
            ))
        })
        .collect();
    let answer = clients[via]
        .deploy(ty, bytes.to_vec())
        .await
        .unwrap_or_else(|e| panic!("deploy {ty} through host {via}: {e}"));
    let answered = Instant::now();
    // Every host is asked again at once: the propagation's resolution is one request, not POLL.
    tell.send_replace(true);
    assert_eq!(answer["component"], hash.as_str(), "{answer}");
    let mut last = sent;
    for poller in pollers {
        let (at, version) = poller.await.expect("a poller panicked");
        assert_eq!(version, answer["version"], "a host showed another version");
        last = last.max(at);
    }
    drop(tell);
    let last_seen_ms = if last >= answered {
        ms(last - answered)
    } else {
        -ms(answered - last)
    };
    Deployed {
        answer: answered - sent,
        last_seen_ms,
        acknowledged: answer["cluster"]["acknowledged"].as_u64().unwrap_or(0),
    }
}

fn deploy_series(bench: &Bench) {
    let v1 = wasm(example_artifacts::BANK_ACCOUNT);
    let v2 = wasm(example_artifacts::BANK_ACCOUNT_V2);
    let clients = bench.clients();
    let deploys: Vec<Deployed> = (0..DEPLOYS)
        .map(|i| {
            let bytes = if i % 2 == 0 { &v1 } else { &v2 };
            bench
                .rt
                .block_on(deploy(&clients, i % clients.len(), TYPE, bytes))
        })
        .collect();
    let answers: Vec<Duration> = deploys.iter().map(|d| d.answer).collect();
    let propagations: Vec<Duration> = deploys.iter().map(Deployed::propagation).collect();
    let hosts = clients.len() as u64;
    let fully_acked = deploys.iter().filter(|d| d.acknowledged == hosts).count();
    let before_answer = deploys.iter().filter(|d| d.last_seen_ms < 0.0).count();
    println!(
        "### Deploy propagation ({DEPLOYS} deploys of `{TYPE}`, v1/v2 alternating, through hosts a, b, c in turn)"
    );
    println!();
    println!("| deploys | n | answer p50 (ms) | answer max (ms) | propagation p50 (ms) | propagation max (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |what: &str, a: &[Duration], p: &[Duration]| {
        println!(
            "| {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            a.len(),
            ms(pct(a, 50.0)),
            ms(max(a)),
            ms(pct(p, 50.0)),
            ms(max(p))
        );
    };
    row("all", &answers, &propagations);
    row(
        "first two (each host compiles the new component)",
        &answers[..2],
        &propagations[..2],
    );
    row(
        "the others (already compiled everywhere)",
        &answers[2..],
        &propagations[2..],
    );
    println!();
    println!(
        "Each deploy, answer (ms): {}",
        answers
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Each deploy, last host showing it relative to the answer (ms; negative: before): {}",
        deploys
            .iter()
            .map(|d| format!("{:+.1}", d.last_seen_ms))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "Every host showed the new component before the answer arrived in {before_answer} of {DEPLOYS} deploys (propagation counted as 0 then)."
    );
    println!(
        "Prepare phase acknowledged by all {hosts} hosts: {fully_acked} of {DEPLOYS} deploys."
    );
    println!();
}

/// Deploy `bytes` under every type of `types` (through the hosts in turn); the answers' latency.
fn deploy_types(bench: &Bench, types: &[String], bytes: &[u8]) -> Vec<Duration> {
    let clients = bench.clients();
    types
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            bench
                .rt
                .block_on(deploy(&clients, i % clients.len(), ty, bytes))
                .answer
        })
        .collect()
}

/// One start-up run's figures.
struct Start {
    listening: Duration,
    ready: Duration,
    fetched: usize,
    compiled: usize,
    warnings: usize,
}

/// Start a 4th host `id` on `dir`, wait for it to be ready, check it serves every type of the
/// manifest as the first host does, stop it.
fn start_once(bench: &Bench, id: &str, dir: &Path) -> Start {
    let (mut host, listening, ready) = bench.start_timed(id, dir);
    let expected = bench
        .rt
        .block_on(entries(&bench.hosts[0].client()))
        .expect("host a lists its aggregates");
    let got = bench
        .rt
        .block_on(entries(&host.client()))
        .expect("the new host lists its aggregates");
    assert_eq!(
        got, expected,
        "host {id} serves another manifest than host a"
    );
    let status = host.stop();
    assert!(status.success(), "host {id} exited with {status}");
    let log = strip_ansi(&host.log());
    Start {
        listening,
        ready,
        fetched: count(&log, "fetched from the component store"),
        compiled: count(&log, "compiled component"),
        warnings: count(&log, " WARN ") + count(&log, " ERROR "),
    }
}

fn start_runs(bench: &Bench, variant: &str, blobs: usize) -> Vec<(String, Start)> {
    let mut runs = Vec::new();
    let mut last_dir = PathBuf::new();
    for k in 1..=STARTS {
        let id = format!("d-{variant}-cold-{k}");
        let dir = bench.root.join(&id);
        runs.push((format!("cold {k}"), start_once(bench, &id, &dir)));
        last_dir = dir;
    }
    let id = format!("d-{variant}-cold-{STARTS}");
    for k in 1..=STARTS {
        runs.push((format!("warm {k}"), start_once(bench, &id, &last_dir)));
    }
    for (what, s) in &runs {
        println!(
            "| {} | {blobs} | {what} | {:.0} | {:.0} | {} | {} | {} |",
            TYPES + 1,
            ms(s.listening),
            ms(s.ready),
            s.fetched,
            s.compiled,
            s.warnings
        );
    }
    runs
}

fn start_table(bench: &Bench) -> Vec<(String, Vec<Duration>)> {
    let v1 = wasm(example_artifacts::BANK_ACCOUNT);
    let v2 = wasm(example_artifacts::BANK_ACCOUNT_V2);
    let types: Vec<String> = (0..TYPES).map(|i| format!("bench-{i:02}")).collect();
    let mut medians = Vec::new();

    // One distinct blob: `bank-account` ends the deploy series on v1 too.
    let first = deploy_types(bench, &types, &v1);
    let odd: Vec<String> = types.iter().skip(1).step_by(2).cloned().collect();
    println!(
        "### Start to ready of a 4th host ({} aggregate types in the manifest: `{TYPE}` and `bench-00`..`bench-{:02}`)",
        TYPES + 1,
        TYPES - 1
    );
    println!();
    println!(
        "Setup: {TYPES} deploys of v1 to new types, answer p50 {:.1} ms, max {:.1} ms.",
        ms(pct(&first, 50.0)),
        ms(max(&first))
    );
    println!();
    println!("| types | distinct blobs | start | spawn → listening (ms) | spawn → ready (ms) | blobs fetched | compiles | WARN/ERROR lines |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let one = start_runs(bench, "one", 1);
    let second = deploy_types(bench, &odd, &v2);
    let two = start_runs(bench, "two", 2);
    println!();
    println!(
        "Between the two variants: {} deploys of v2 over the odd types, answer p50 {:.1} ms, max {:.1} ms (the first compiles v2 on every host).",
        odd.len(),
        ms(pct(&second, 50.0)),
        ms(max(&second))
    );
    println!();
    for (blobs, runs) in [(1, &one), (2, &two)] {
        for kind in ["cold", "warm"] {
            let ready: Vec<Duration> = runs
                .iter()
                .filter(|(w, _)| w.starts_with(kind))
                .map(|(_, s)| s.ready)
                .collect();
            medians.push((format!("{kind}, {blobs} distinct blob(s)"), ready));
        }
    }
    println!("| start | spawn → ready, each (ms) | median (ms) |");
    println!("| --- | --- | ---: |");
    for (what, ready) in &medians {
        println!(
            "| {what} | {} | {:.0} |",
            ready
                .iter()
                .map(|d| format!("{:.0}", ms(*d)))
                .collect::<Vec<_>>()
                .join(", "),
            ms(pct(ready, 50.0))
        );
    }
    println!();
    medians
}

/// Every WARN and ERROR line of every host log under `root`, with the log it is in.
fn log_findings(root: &Path) {
    let mut logs = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(root) {
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().to_string();
                    if name.starts_with("host-") && name.ends_with(".log") {
                        logs.push(f.path());
                    }
                }
            }
        }
    }
    logs.sort();
    let mut lines = Vec::new();
    for path in &logs {
        let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
        let host = path
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for l in text.lines() {
            if l.contains(" WARN ") || l.contains(" ERROR ") {
                lines.push(format!("{host}: {l}"));
            }
        }
    }
    println!(
        "Host logs: {} files, {} WARN/ERROR lines",
        logs.len(),
        lines.len()
    );
    for l in lines.iter().take(40) {
        println!("    {l}");
    }
    if lines.len() > 40 {
        println!("    … {} more", lines.len() - 40);
    }
}

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`; keep that instant.
    if !std::env::args().any(|a| a == "--bench") {
        println!("cluster bench: run with `{COMMAND}`");
        return;
    }
    let Some(nats) = NatsCluster::start_or_skip("cluster bench") else {
        return;
    };
    let begun = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cluster-bench-")
        .tempdir()
        .expect("temporary directory");
    let root = tmp.path().to_path_buf();
    let keep = std::env::var_os("BENCH_KEEP").is_some();
    let tmp = if keep {
        println!(
            "BENCH_KEEP: data directories and host logs stay in {}",
            tmp.keep().display()
        );
        None
    } else {
        Some(tmp)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut bench = Bench {
        nats,
        root,
        _tmp: tmp,
        hosts: Vec::new(),
        rt,
    };

    println!("## Cluster control plane");
    println!();
    println!("Command: `{COMMAND}`");
    println!(
        "Machine: {} × {}, load average {} at the start; nats-server {} (3 nodes on loopback, R3); 3 hosts (release build)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        load_average(),
        bench.nats.version()
    );
    println!();

    let mut first_ready = Vec::new();
    for id in ["a", "b", "c"] {
        let dir = bench.root.join(id);
        let (host, _, ready) = bench.start_timed(id, &dir);
        first_ready.push(ready);
        bench.hosts.push(host);
    }
    println!(
        "Hosts a, b, c on an empty cluster: spawn → ready {} ms.",
        first_ready
            .iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();

    deploy_series(&bench);
    start_table(&bench);

    for host in &mut bench.hosts {
        let status = host.stop();
        assert!(status.success(), "a host exited with {status}");
    }
    log_findings(&bench.root);
    println!();
    println!(
        "Whole run: {:.1} s; load average {} at the end.",
        begun.elapsed().as_secs_f64(),
        load_average()
    );
}
