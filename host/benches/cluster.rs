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
//! 3. **forwarding**: 24 tenants with one bank account each (owner by
//!    `GET /admin/placement?tenant_id=…`), deposits for a fixed time through the tenant's owner
//!    (**owner-direct**) or through each host in turn (**any host**: two thirds forwarded over
//!    NATS), with 24 clients (one per tenant) and with 1 client, the cases alternating over two
//!    rounds; commands/s, p50/p99, and the forwarded commands apart (an event's `metadata.host`
//!    differing from the entry host).
//! 4. **failover**: 9 tenants, one client each (a command every 20 ms, retried with its command
//!    id on the next host after any error); the host owning most of them is SIGKILLed; for each
//!    of its tenants, the time from the kill until the first command a new owner acknowledged.
//!    Hosts run with the default heartbeat, `host_ttl`, NATS request timeout and forward retry.
//!
//! Prints the host logs' warnings and errors at the end. Bounded: about a minute on 2 vCPUs
//! (each wait is bounded: 15 s for a deploy to reach every host, 60 s for a host to be ready,
//! 30 s for the failover).
//! Skipped with a notice when `nats-server` is not on PATH (a panic when `CI` is set).
//! `BENCH_KEEP=1` keeps the data directories and host logs (the path is printed).
//!
//! `cargo bench -p aggregate-host --bench cluster`

#[path = "../tests/support/nats_cluster.rs"]
mod nats_cluster;

#[path = "../../tests/e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aggregate_host::client::{Client, ClientError, CommandOptions};
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
/// Ids of the three hosts.
const HOST_IDS: [&str; 3] = ["a", "b", "c"];
/// Tenants of the forwarding cases, one bank account each.
const TENANTS: usize = 24;
/// Clients of the loaded cases: one per tenant, so no two commands of one account overlap.
const CLIENTS: usize = 24;
/// Duration of one loaded case.
const CASE: Duration = Duration::from_secs(5);
/// Duration of one single-client case.
const SERIAL_CASE: Duration = Duration::from_secs(2);
/// Rounds of the forwarding cases (the order of the cases reversed in every second round).
const ROUNDS: usize = 2;
/// Bound on one command request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Tenants of the failover run, one client each.
const FAILOVER_TENANTS: usize = 9;
/// Pause between two commands of one failover client.
const FAILOVER_PAUSE: Duration = Duration::from_millis(20);
/// Load before the kill.
const BEFORE_KILL: Duration = Duration::from_secs(2);
/// Bound on the killed host's tenants being served again (and on one command's retries).
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

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

/// [`pct`] in milliseconds; NaN for no durations.
fn pms(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        ms(pct(v, p))
    }
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
    /// The id of each of `hosts`.
    ids: Vec<String>,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    fn vars(&self, id: &str, dir: &Path) -> Vec<(String, String)> {
        support::cluster_host_vars(dir, self.nats.urls(), id)
    }

    /// Start a host on `dir`; returns it with the time from spawn until it printed its addresses
    /// and until `/ready` answered 200.
    fn start_timed(&self, id: &str, dir: &Path) -> (HostProcess, Duration, Duration) {
        let started = Instant::now();
        let host = HostProcess::start(dir, &self.vars(id, dir));
        let listening = started.elapsed();
        host.wait_ready_every(READY_TIMEOUT.saturating_sub(started.elapsed()), POLL);
        (host, listening, started.elapsed())
    }

    fn clients(&self) -> Vec<Client> {
        self.hosts.iter().map(HostProcess::client).collect()
    }

    /// Each host's id and client.
    fn entries(&self) -> Vec<(String, Client)> {
        self.ids.iter().cloned().zip(self.clients()).collect()
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

/// One tenant of the forwarding cases: its bank account and the host that owns it.
#[derive(Clone)]
struct Target {
    tenant: String,
    aggregate: String,
    /// Index of the owner in the entry list.
    owner: usize,
}

/// A command's outcome: the answer, or what went wrong (a short kind, for counting, and the
/// message).
type Sent = Result<Value, (String, String)>;

/// The innermost cause of an error (reqwest's own message only names the URL).
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Send one command as `tenant` through `client`, bounded by [`REQUEST_TIMEOUT`].
async fn send(
    client: &Client,
    tenant: &str,
    aggregate: &str,
    command: &str,
    payload: &Value,
    command_id: Option<String>,
) -> Sent {
    let client = client.clone().with_tenant(Some(tenant.to_string()));
    let options = CommandOptions {
        command_id,
        ..Default::default()
    };
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.send_with(TYPE, aggregate, command, payload, &options),
    )
    .await
    {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(ClientError::Problem { status, problem })) => Err((
            format!(
                "{status} {}",
                problem["type"].as_str().unwrap_or("(no type)")
            ),
            problem["detail"].as_str().unwrap_or_default().to_string(),
        )),
        Ok(Err(ClientError::Http { source, .. })) => {
            let kind = if source.is_connect() {
                "connect error"
            } else if source.is_timeout() {
                "HTTP timeout"
            } else {
                "transport error"
            };
            Err((kind.to_string(), root_cause(&source)))
        }
        Ok(Err(e @ ClientError::Garbled { .. })) => Err(("garbled answer".into(), e.to_string())),
        Err(_) => Err((
            format!("no answer within {REQUEST_TIMEOUT:?}"),
            String::new(),
        )),
    }
}

/// The host that wrote the answer's (first) event.
fn writer(answer: &Value) -> Option<String> {
    answer["events"][0]["metadata"]["host"]
        .as_str()
        .map(str::to_string)
}

/// The owner of `tenant` by every entry host's `GET /admin/placement` (they must agree).
async fn owner_index(hosts: &[(String, Client)], tenant: &str) -> usize {
    let mut owners = Vec::new();
    for (_, client) in hosts {
        let p = client
            .admin(
                reqwest::Method::GET,
                &format!("/admin/placement?tenant_id={tenant}"),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("GET /admin/placement?tenant_id={tenant}: {e}"));
        owners.push(p["owner"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        owners.iter().all(|o| *o == owners[0]),
        "the hosts disagree on the owner of {tenant}: {owners:?}"
    );
    hosts
        .iter()
        .position(|(id, _)| *id == owners[0])
        .unwrap_or_else(|| panic!("{tenant} is owned by {:?}, not an entry host", owners[0]))
}

/// One command of a timed case.
struct Sample {
    latency: Duration,
    /// Index of the entry host.
    entry: usize,
    /// The writer of its event, or what went wrong.
    outcome: Result<Option<String>, String>,
}

/// One timed case: every client's samples and the time until the last client stopped.
struct Case {
    samples: Vec<Sample>,
    wall: Duration,
}

impl Case {
    fn ok(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(|s| s.outcome.is_ok())
    }
}

/// `clients` clients sending deposits for `duration`, each waiting for its answer before the
/// next. Client `k` of several sends to tenant `k`'s account (one client per tenant); a single
/// client goes through the tenants in turn. The entry host is the tenant's owner (`any_host`
/// false) or each host in turn (every (tenant, host) pair equally often).
async fn timed_case(
    hosts: &[(String, Client)],
    targets: &[Target],
    any_host: bool,
    clients: usize,
    duration: Duration,
) -> Case {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let hosts = hosts.to_vec();
            let targets = targets.to_vec();
            tokio::spawn(async move {
                let payload = serde_json::json!({ "amount": 1 });
                let mut samples = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = &targets[if clients == 1 { i } else { k } % targets.len()];
                    let entry = if any_host {
                        (k + i + i / targets.len()) % hosts.len()
                    } else {
                        t.owner
                    };
                    let sent = Instant::now();
                    let r = send(
                        &hosts[entry].1,
                        &t.tenant,
                        &t.aggregate,
                        "deposit",
                        &payload,
                        None,
                    )
                    .await;
                    let latency = sent.elapsed();
                    let failed = r.is_err();
                    samples.push(Sample {
                        latency,
                        entry,
                        outcome: r.as_ref().map(writer).map_err(|(k, _)| k.clone()),
                    });
                    if failed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    i += 1;
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.expect("a client panicked"));
    }
    Case {
        samples,
        wall: started.elapsed(),
    }
}

/// The forwarding table's rows of one variant (clients, entry) over all rounds.
struct Variant {
    what: &'static str,
    clients: usize,
    any_host: bool,
    duration: Duration,
    rounds: Vec<Case>,
}

impl Variant {
    fn latencies(&self, keep: impl Fn(&Sample) -> bool) -> Vec<Duration> {
        self.rounds
            .iter()
            .flat_map(Case::ok)
            .filter(|s| keep(s))
            .map(|s| s.latency)
            .collect()
    }

    fn errors(&self) -> BTreeMap<String, usize> {
        let mut errors = BTreeMap::new();
        for s in self.rounds.iter().flat_map(|c| &c.samples) {
            if let Err(kind) = &s.outcome {
                *errors.entry(kind.clone()).or_insert(0) += 1;
            }
        }
        errors
    }
}

/// Wait until every host's placement view holds exactly the hosts of `hosts` and names one of
/// them as the owner of every tenant of `tenants` (a host stopped cleanly leaves the others'
/// views: the `hosts` list of `GET /admin/placement` reads the membership bucket, the owner
/// comes from the view refreshed every heartbeat). How long until the lists agreed, and until
/// the owners did too.
async fn settle_placement(hosts: &[(String, Client)], tenants: &[String]) -> (Duration, Duration) {
    let started = Instant::now();
    let mut want: Vec<&str> = hosts.iter().map(|(id, _)| id.as_str()).collect();
    want.sort();
    let mut lists_agreed = None;
    loop {
        let mut lists = true;
        let mut owners = true;
        for (_, client) in hosts {
            let view = client
                .admin(reqwest::Method::GET, "/admin/placement", None)
                .await
                .ok();
            let mut live: Vec<String> = view
                .as_ref()
                .and_then(|v| v["hosts"].as_array())
                .map(|hs| {
                    hs.iter()
                        .filter_map(|h| h["host_id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            live.sort();
            lists &= live == want;
            for t in tenants {
                let owner = client
                    .admin(
                        reqwest::Method::GET,
                        &format!("/admin/placement?tenant_id={t}"),
                        None,
                    )
                    .await
                    .ok()
                    .and_then(|p| p["owner"].as_str().map(str::to_string));
                owners &= owner.is_some_and(|o| want.contains(&o.as_str()));
            }
        }
        if lists && lists_agreed.is_none() {
            lists_agreed = Some(started.elapsed());
        }
        if lists && owners {
            return (lists_agreed.unwrap_or_default(), started.elapsed());
        }
        assert!(
            started.elapsed() < PROPAGATION_TIMEOUT,
            "the placement views did not settle on {want:?} within {PROPAGATION_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn forwarding(bench: &Bench) -> Vec<Variant> {
    let hosts = bench.entries();
    let tenants: Vec<String> = (0..TENANTS).map(|n| format!("fwd-{n:02}")).collect();
    let (lists_settled, owners_settled) = bench.rt.block_on(settle_placement(&hosts, &tenants));
    let targets: Vec<Target> = bench.rt.block_on(async {
        let mut targets = Vec::new();
        for tenant in tenants {
            let owner = owner_index(&hosts, &tenant).await;
            let aggregate = support::new_id();
            send(
                &hosts[owner].1,
                &tenant,
                &aggregate,
                "open",
                &serde_json::json!({ "owner": tenant }),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("open the account of {tenant}: {e:?}"));
            targets.push(Target {
                tenant,
                aggregate,
                owner,
            });
        }
        targets
    });
    let owned: Vec<usize> = (0..hosts.len())
        .map(|h| targets.iter().filter(|t| t.owner == h).count())
        .collect();
    // Warm-up: connections of every client to every host, instances of every account.
    bench.rt.block_on(timed_case(
        &hosts,
        &targets,
        true,
        CLIENTS,
        Duration::from_secs(1),
    ));
    let mut variants = vec![
        Variant {
            what: "owner-direct",
            clients: CLIENTS,
            any_host: false,
            duration: CASE,
            rounds: Vec::new(),
        },
        Variant {
            what: "any host",
            clients: CLIENTS,
            any_host: true,
            duration: CASE,
            rounds: Vec::new(),
        },
        Variant {
            what: "owner-direct",
            clients: 1,
            any_host: false,
            duration: SERIAL_CASE,
            rounds: Vec::new(),
        },
        Variant {
            what: "any host",
            clients: 1,
            any_host: true,
            duration: SERIAL_CASE,
            rounds: Vec::new(),
        },
    ];
    for round in 0..ROUNDS {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let v = &variants[i];
            let case = bench.rt.block_on(timed_case(
                &hosts, &targets, v.any_host, v.clients, v.duration,
            ));
            variants[i].rounds.push(case);
        }
    }

    println!(
        "### Commands through the tenant's owner or any host ({TENANTS} tenants, one `{TYPE}` each, deposits)"
    );
    println!();
    println!(
        "After the last 4th host stopped (cleanly): every host's `GET /admin/placement` listed exactly a, b, c after {:.0} ms, and named one of them as the owner of every tenant below after {:.0} ms. Owners by `GET /admin/placement?tenant_id=…` (every host agreed): {}. Each case {} rounds, the cases alternating (order reversed in the second round); {CLIENTS} clients = one per tenant, each waiting for its answer; 1 client = the tenants in turn. `any host`: each host in turn as the entry; a command is *forwarded* when its event's `metadata.host` differs from the entry host.",
        ms(lists_settled),
        ms(owners_settled),
        hosts
            .iter()
            .zip(&owned)
            .map(|((id, _), n)| format!("{id} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        ROUNDS
    );
    println!();
    println!("| entry | clients | s per round | commands | errors | commands/s, each round | p50 (ms) | p99 (ms) | forwarded |");
    println!("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |");
    for v in &variants {
        let forwarded = |s: &Sample| matches!(&s.outcome, Ok(Some(w)) if *w != hosts[s.entry].0);
        let local = |s: &Sample| matches!(&s.outcome, Ok(Some(w)) if *w == hosts[s.entry].0);
        let all = v.latencies(|_| true);
        let fwd = v.latencies(forwarded);
        let errors: usize = v.errors().values().sum();
        let rates = v
            .rounds
            .iter()
            .map(|c| format!("{:.0}", c.ok().count() as f64 / c.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {} | {} | {} | {} | {errors} | {rates} | {:.2} | {:.2} | {:.1} % |",
            v.what,
            v.clients,
            v.duration.as_secs(),
            all.len(),
            pms(&all, 50.0),
            pms(&all, 99.0),
            100.0 * fwd.len() as f64 / all.len().max(1) as f64
        );
        if v.any_host {
            for (part, keep) in [
                ("forwarded only", &forwarded as &dyn Fn(&Sample) -> bool),
                ("entry was the owner", &local),
            ] {
                let l = v.latencies(keep);
                if !l.is_empty() {
                    println!(
                        "| {} — {part} | {} | | {} | | | {:.2} | {:.2} | |",
                        v.what,
                        v.clients,
                        l.len(),
                        pms(&l, 50.0),
                        pms(&l, 99.0)
                    );
                }
            }
        }
    }
    println!();
    for pair in variants.chunks(2) {
        let [direct, any] = pair else { continue };
        let p50 = |v: &Variant, keep: &dyn Fn(&Sample) -> bool| pms(&v.latencies(keep), 50.0);
        let fwd = |s: &Sample| matches!(&s.outcome, Ok(Some(w)) if *w != hosts[s.entry].0);
        let local = |s: &Sample| matches!(&s.outcome, Ok(Some(w)) if *w == hosts[s.entry].0);
        let rate = |v: &Variant| {
            v.rounds.iter().map(|c| c.ok().count()).sum::<usize>() as f64
                / v.rounds.iter().map(|c| c.wall.as_secs_f64()).sum::<f64>()
        };
        println!(
            "Cost of a forward hop, {} client(s), p50: any host − owner-direct {:+.2} ms; forwarded only − owner-direct {:+.2} ms; forwarded − entry was the owner (same runs) {:+.2} ms; commands/s any host / owner-direct {:.2}.",
            direct.clients,
            p50(any, &|_| true) - p50(direct, &|_| true),
            p50(any, &fwd) - p50(direct, &|_| true),
            p50(any, &fwd) - p50(any, &local),
            rate(any) / rate(direct)
        );
        let stray = direct
            .rounds
            .iter()
            .flat_map(Case::ok)
            .filter(|s| !matches!(&s.outcome, Ok(Some(w)) if *w == hosts[s.entry].0))
            .count();
        if stray > 0 {
            println!("  ({stray} owner-direct commands were written by another host than the one asked.)");
        }
    }
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for v in &variants {
        for (k, n) in v.errors() {
            *errors.entry(k).or_insert(0) += n;
        }
    }
    println!("Errors by kind: {errors:?}");
    println!();
    variants
}

/// One acknowledged command of the failover run.
struct Ack {
    tenant: usize,
    at: Instant,
    writer: Option<String>,
    duplicate: bool,
}

/// One failed attempt of the failover run.
struct Failure {
    tenant: usize,
    at: Instant,
    entry: usize,
    kind: String,
    detail: String,
}

#[derive(Default)]
struct FailoverLog {
    acks: Vec<Ack>,
    failures: Vec<Failure>,
}

/// One client of the failover run: `open`, then deposits with [`FAILOVER_PAUSE`] between
/// them; each command retried with its command id on the next host after any error (after
/// 20 ms), given up after [`FAILOVER_TIMEOUT`]. Returns the aggregate id.
async fn failover_client(
    hosts: Vec<(String, Client)>,
    tenant: usize,
    name: String,
    log: Arc<Mutex<FailoverLog>>,
    stop: Arc<AtomicBool>,
) -> String {
    let aggregate = support::new_id();
    let mut turn = tenant;
    let mut first = true;
    'commands: while !stop.load(Ordering::Relaxed) {
        let (command, payload) = if first {
            ("open", serde_json::json!({ "owner": name }))
        } else {
            ("deposit", serde_json::json!({ "amount": 1 }))
        };
        let command_id = support::new_id();
        let started = Instant::now();
        loop {
            let entry = turn % hosts.len();
            turn += 1;
            let r = send(
                &hosts[entry].1,
                &name,
                &aggregate,
                command,
                &payload,
                Some(command_id.clone()),
            )
            .await;
            let at = Instant::now();
            match r {
                Ok(answer) => {
                    log.lock().unwrap().acks.push(Ack {
                        tenant,
                        at,
                        writer: writer(&answer),
                        duplicate: answer["duplicate"].as_bool().unwrap_or(false),
                    });
                    break;
                }
                Err((kind, detail)) => {
                    log.lock().unwrap().failures.push(Failure {
                        tenant,
                        at,
                        entry,
                        kind,
                        detail,
                    });
                    if started.elapsed() > FAILOVER_TIMEOUT {
                        break 'commands;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        first = false;
        tokio::time::sleep(FAILOVER_PAUSE).await;
    }
    aggregate
}

fn failover(bench: &mut Bench) {
    let hosts = bench.entries();
    let names: Vec<String> = (0..FAILOVER_TENANTS)
        .map(|n| format!("failover-{n}"))
        .collect();
    let owners: Vec<usize> = bench.rt.block_on(async {
        let mut owners = Vec::new();
        for t in &names {
            owners.push(owner_index(&hosts, t).await);
        }
        owners
    });
    // The host owning the most of these tenants (the last of equals).
    let victim = (0..hosts.len())
        .max_by_key(|h| owners.iter().filter(|o| *o == h).count())
        .expect("hosts");
    let victim_id = hosts[victim].0.clone();
    let owned: Vec<usize> = (0..names.len()).filter(|t| owners[*t] == victim).collect();
    let log = Arc::new(Mutex::new(FailoverLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(t, name)| {
            bench.rt.spawn(failover_client(
                hosts.clone(),
                t,
                name.clone(),
                log.clone(),
                stop.clone(),
            ))
        })
        .collect();
    std::thread::sleep(BEFORE_KILL);
    let mut dead = bench.hosts.remove(victim);
    bench.ids.remove(victim);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &dead.pid().to_string()])
        .status()
        .expect("kill");
    let killed = Instant::now();
    assert!(status.success(), "kill -KILL {}", dead.pid());
    let served_again = |log: &FailoverLog, t: usize| {
        log.acks
            .iter()
            .filter(|a| a.tenant == t && a.at > killed && a.writer.as_deref() != Some(&victim_id))
            .map(|a| a.at - killed)
            .min()
    };
    loop {
        let done = {
            let log = log.lock().unwrap();
            owned.iter().all(|t| served_again(&log, *t).is_some())
        };
        if done || killed.elapsed() > FAILOVER_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let aggregates: Vec<String> = tasks
        .into_iter()
        .map(|t| bench.rt.block_on(t).expect("a failover client panicked"))
        .collect();
    let ended = killed.elapsed();
    let _ = dead.wait(Duration::from_secs(5));
    let log = Arc::try_unwrap(log)
        .ok()
        .expect("every client ended")
        .into_inner()
        .unwrap();

    // What every tenant's log holds: one event per acknowledged command.
    let survivors = bench.entries();
    let versions: Vec<Option<u64>> = bench.rt.block_on(async {
        let mut versions = Vec::new();
        for (name, aggregate) in names.iter().zip(&aggregates) {
            let client = survivors[0].1.clone().with_tenant(Some(name.clone()));
            versions.push(
                client
                    .state(TYPE, aggregate)
                    .await
                    .ok()
                    .and_then(|s| s["version"].as_u64()),
            );
        }
        versions
    });
    let new_owners: Vec<String> = bench.rt.block_on(async {
        let mut owners = Vec::new();
        for t in &names {
            owners.push(survivors[owner_index(&survivors, t).await].0.clone());
        }
        owners
    });

    let defaults = aggregate_host::config::Config::default();
    println!("### Failover: SIGKILL of a tenant owner ({FAILOVER_TENANTS} tenants, 1 client each)");
    println!();
    println!(
        "Each client sends `open`, then deposits {} ms apart, to the hosts in turn (the killed one stays in the rotation: its connections are refused); any error → the same command (same `x-command-id`) on the next host 20 ms later. Host settings: the defaults (the bench sets none of them): heartbeat {} ms, host_ttl {} ms, NATS request timeout {} ms, forward_retry {} ms.",
        FAILOVER_PAUSE.as_millis(),
        defaults.heartbeat_interval_ms,
        defaults.host_ttl_ms,
        defaults.nats_request_timeout_ms,
        defaults.forward_retry_ms
    );
    println!();
    println!(
        "Host {victim_id} (owner of {} of the {FAILOVER_TENANTS}) killed after {} s of load; load stopped {:.1} s after the kill.",
        owned.len(),
        BEFORE_KILL.as_secs(),
        ended.as_secs_f64()
    );
    println!();
    println!("| tenant | owner before → after | kill → first command acknowledged by the new owner (ms) | failed attempts after the kill | acknowledged | log version |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    let mut worst = Duration::ZERO;
    let mut never = 0;
    for (t, name) in names.iter().enumerate() {
        let first = served_again(&log, t);
        let is_owned = owned.contains(&t);
        match first {
            Some(d) if is_owned => worst = worst.max(d),
            None if is_owned => never += 1,
            _ => {}
        }
        let failed = log
            .failures
            .iter()
            .filter(|f| f.tenant == t && f.at > killed)
            .count();
        let acked = log.acks.iter().filter(|a| a.tenant == t).count();
        println!(
            "| {name} | {} → {} | {} | {failed} | {acked} | {} |",
            hosts[owners[t]].0,
            new_owners[t],
            if is_owned {
                first.map_or("never".to_string(), |d| format!("**{:.0}**", ms(d)))
            } else {
                "(not moved)".to_string()
            },
            versions[t].map_or("?".to_string(), |v| v.to_string())
        );
    }
    println!();
    println!(
        "Failover (max over the killed host's tenants): **{:.0} ms**{}.",
        ms(worst),
        if never > 0 {
            format!("; {never} of them not served again within {FAILOVER_TIMEOUT:?}")
        } else {
            String::new()
        }
    );
    // The others: the longest wait between two acknowledgements around the kill.
    let gap = (0..names.len())
        .filter(|t| !owned.contains(t))
        .filter_map(|t| {
            let mut at: Vec<Instant> = log
                .acks
                .iter()
                .filter(|a| a.tenant == t)
                .map(|a| a.at)
                .collect();
            at.sort();
            at.windows(2)
                .filter(|w| w[1] > killed)
                .map(|w| w[1] - w[0])
                .max()
        })
        .max()
        .unwrap_or_default();
    println!(
        "Other tenants: longest pause between two acknowledgements after the kill {:.0} ms.",
        ms(gap)
    );
    let late = log
        .acks
        .iter()
        .filter(|a| a.at > killed && a.writer.as_deref() == Some(&victim_id))
        .count();
    let duplicates = log.acks.iter().filter(|a| a.duplicate).count();
    let consistent = (0..names.len())
        .filter(|t| versions[*t] == Some(log.acks.iter().filter(|a| a.tenant == *t).count() as u64))
        .count();
    println!(
        "{} commands acknowledged; {duplicates} answered as duplicates (a retry of a command already written); {late} answered after the kill with an event the killed host wrote; log version = acknowledged commands for {consistent} of {FAILOVER_TENANTS} tenants.",
        log.acks.len()
    );
    let mut kinds: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    for f in &log.failures {
        let entry = kinds
            .entry((hosts[f.entry].0.clone(), f.kind.clone()))
            .or_insert((0, f.detail.clone()));
        entry.0 += 1;
    }
    println!(
        "Failed attempts by entry host and kind ({} in all):",
        log.failures.len()
    );
    for ((entry, kind), (n, detail)) in &kinds {
        println!("    via {entry}: {n} × {kind} (e.g. {detail:?})");
    }
    println!();
    drop(dead);
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
        ids: Vec::new(),
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
    for id in HOST_IDS {
        let dir = bench.root.join(id);
        let (host, _, ready) = bench.start_timed(id, &dir);
        first_ready.push(ready);
        bench.hosts.push(host);
        bench.ids.push(id.to_string());
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
    forwarding(&bench);
    failover(&mut bench);

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
