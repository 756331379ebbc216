//! NATS outages (issue 8, faults 1 and 2), black-box: the real binary on JetStream, a private
//! nats-server that the test kills, pauses (SIGSTOP) and starts again on the same port and store
//! directory, and clients that keep sending commands throughout. Each test prints the figures it
//! measured (`cargo test -p aggregate-host --test e2e nats_outage -- --nocapture`); BENCHMARKS.md
//! records them against the targets: new commands during an outage answered 503 within 1 s,
//! commands already waiting on NATS within the deadline (`nats_request_timeout_ms`, default
//! 2 s). The assertions leave a margin for a loaded CI machine.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::nats::NatsServer;
use crate::support::{deploy, new_id, problem, Backend, Env, HostProcess, BINARY};

/// The default `nats_request_timeout_ms`.
const DEADLINE: Duration = Duration::from_millis(2000);
/// Slack on every bound for a loaded machine.
const MARGIN: Duration = Duration::from_millis(1500);
/// Bound on the answer to a command that arrives while the host knows NATS is down (target 1 s).
const NEW_COMMAND_BOUND: Duration = Duration::from_secs(2);
/// Writers sending commands throughout, one account each.
const WORKERS: usize = 4;

/// One command a worker sent.
#[derive(Debug, Clone)]
struct Sample {
    worker: usize,
    command_id: String,
    amount: i64,
    /// When it was sent.
    sent: Instant,
    /// When the answer came.
    answered: Instant,
    status: u16,
    problem_type: Option<String>,
    retry_after: bool,
}

impl Sample {
    fn took(&self) -> Duration {
        self.answered - self.sent
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// POST a deposit with an explicit command id; the status, problem type and Retry-After.
async fn deposit(
    http: &reqwest::Client,
    gateway: &str,
    account: &str,
    command_id: &str,
    amount: i64,
) -> (u16, Option<String>, bool, Value) {
    let response = http
        .post(format!(
            "{gateway}/aggregates/bank-account/{account}/commands/deposit"
        ))
        .header("x-command-id", command_id)
        .json(&json!({ "amount": amount }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("the host answers every command");
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let problem_type = body["type"].as_str().map(str::to_string);
    (status, problem_type, retry_after, body)
}

/// Writers that send deposits to their own accounts until stopped, recording every answer.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<parking_lot::Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gateway: &str, accounts: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let http = reqwest::Client::new();
        let tasks = accounts
            .iter()
            .enumerate()
            .map(|(worker, account)| {
                let (stop, samples, http) = (stop.clone(), samples.clone(), http.clone());
                let (gateway, account) = (gateway.to_string(), account.clone());
                tokio::spawn(async move {
                    // Bounded: 25 ms apart, a test of < 1 min sends far fewer.
                    for n in 0..5_000i64 {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let command_id = new_id();
                        let amount = 1 + n % 7;
                        let sent = Instant::now();
                        let (status, problem_type, retry_after, _) =
                            deposit(&http, &gateway, &account, &command_id, amount).await;
                        samples.lock().push(Sample {
                            worker,
                            command_id,
                            amount,
                            sent,
                            answered: Instant::now(),
                            status,
                            problem_type,
                            retry_after,
                        });
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            samples,
            tasks,
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().clone()
    }

    /// Wait until every worker has had a success sent after `after` (bounded by `timeout`).
    async fn wait_all_succeed_after(&self, after: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let samples = self.samples();
            let firsts: Vec<Option<Instant>> = (0..WORKERS)
                .map(|w| {
                    samples
                        .iter()
                        .filter(|s| s.worker == w && s.sent >= after && s.ok())
                        .map(|s| s.answered)
                        .min()
                })
                .collect();
            if firsts.iter().all(Option::is_some) {
                return firsts.into_iter().flatten().min();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Release);
        for task in self.tasks {
            task.await.unwrap();
        }
        self.samples.lock().clone()
    }
}

/// A host on JetStream with bank-account deployed and `WORKERS` open accounts.
async fn host_with_accounts(env: &Env) -> (HostProcess, Vec<String>) {
    let host = env.start(&[]);
    let client = host.client();
    deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let mut accounts = Vec::new();
    for _ in 0..WORKERS {
        let id = new_id();
        client
            .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
            .await
            .unwrap();
        accounts.push(id);
    }
    (host, accounts)
}

/// Poll `/ready` every 10 ms until its readiness is `want`; the time it took (bounded).
async fn wait_ready(host: &HostProcess, want: bool, timeout: Duration) -> Duration {
    let client = host.client();
    let started = Instant::now();
    loop {
        if client.ready().await.is_ok() == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "/ready did not become {want} within {timeout:?}; host log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `/ready` answers at once while NATS is down: 503, `nats` failing with its state and reason.
async fn ready_names_nats(host: &HostProcess, reason: &str) -> Duration {
    let started = Instant::now();
    let p = problem(host.client().ready().await, 503, "not-ready");
    let took = started.elapsed();
    let nats = &p["checks"]["nats"];
    assert_eq!(nats["ok"], false, "{p}");
    assert!(
        nats["reason"].as_str().unwrap_or_default().contains(reason),
        "reason should contain {reason:?}: {p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("nats"), "{p}");
    took
}

/// Retry every refused command with its own id once NATS is back: each succeeds, and the balances
/// show every command applied exactly once. Returns how many of the refused commands had in
/// fact been stored (answered `duplicate: true` on retry).
async fn retry_refused_and_check_balances(
    host: &HostProcess,
    accounts: &[String],
    samples: &[Sample],
) -> usize {
    let http = reqwest::Client::new();
    let mut stored_anyway = 0;
    let mut expected: HashMap<usize, i64> = HashMap::new();
    for s in samples {
        if s.ok() {
            *expected.entry(s.worker).or_default() += s.amount;
            continue;
        }
        let (status, _, _, body) = deposit(
            &http,
            &host.gateway,
            &accounts[s.worker],
            &s.command_id,
            s.amount,
        )
        .await;
        assert_eq!(status, 200, "retry of {} : {body}", s.command_id);
        if body["duplicate"] == true {
            stored_anyway += 1;
        }
        *expected.entry(s.worker).or_default() += s.amount;
    }
    for (w, account) in accounts.iter().enumerate() {
        let state = host.client().state("bank-account", account).await.unwrap();
        assert_eq!(
            state["state"]["balance"],
            expected.get(&w).copied().unwrap_or(0),
            "worker {w}: every command applied exactly once: {state}"
        );
    }
    stored_anyway
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn max_ms<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> f64 {
    samples
        .into_iter()
        .map(|s| ms(s.took()))
        .fold(0.0, f64::max)
}

fn p50_ms<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> f64 {
    let mut v: Vec<f64> = samples.into_iter().map(|s| ms(s.took())).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// nats-server is SIGKILLed while clients send commands: the host sees the connection drop,
/// refuses new commands at once (503 `unavailable`, Retry-After) without waiting on NATS, says
/// not ready at once, and recovers by itself when nats-server is back on the same port and store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_refused_at_once_while_nats_is_down_and_recover_after() {
    let Some(mut env) = Env::new(Backend::JetStream, "e2e NATS killed under load") else {
        return;
    };
    let (mut host, accounts) = host_with_accounts(&env).await;
    let load = Load::start(&host.gateway, &accounts);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let nats = env.nats.as_mut().unwrap();
    let killed = Instant::now();
    nats.kill();
    // The breaker opens on the client's disconnect event: /ready turns false at once.
    let detected = wait_ready(&host, false, Duration::from_secs(5)).await;
    let ready_took = ready_names_nats(&host, "NATS connection lost").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outage_from = killed + detected;
    let restarting = Instant::now();
    nats.start();
    let back = Instant::now();
    let ready_again = wait_ready(&host, true, Duration::from_secs(10)).await;
    let first_success = load
        .wait_all_succeed_after(back, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no recovery after NATS came back; log:\n{}", host.log()));
    let samples = load.stop().await;

    // Sent once the host knew NATS was down, answered before it was back: refused at once.
    let new: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= outage_from && s.answered <= restarting)
        .collect();
    // Sent before the host knew, answered during the outage: they waited on NATS.
    let in_flight: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent < outage_from && s.answered > killed)
        .collect();
    assert!(new.len() >= WORKERS * 10, "{} new commands", new.len());
    for s in &new {
        assert_eq!(
            (s.status, s.problem_type.as_deref(), s.retry_after),
            (503, Some("/problems/unavailable"), true),
            "{s:?}"
        );
        assert!(
            s.took() <= NEW_COMMAND_BOUND,
            "new command took {:?}",
            s.took()
        );
    }
    for s in &in_flight {
        assert!(
            s.took() <= DEADLINE + MARGIN,
            "in-flight command took {:?}",
            s.took()
        );
    }
    for s in &samples {
        assert!(
            s.ok() || (s.status == 503 && s.retry_after),
            "only successes and 503 with Retry-After: {s:?}"
        );
        assert!(
            s.took() <= DEADLINE + MARGIN,
            "no command waits longer than the deadline: {s:?}"
        );
    }
    assert!(
        ready_took < Duration::from_secs(1),
        "/ready took {ready_took:?}"
    );
    assert!(
        detected < Duration::from_secs(2),
        "the outage was noticed after {detected:?}"
    );
    let recovery = first_success - back;
    assert!(
        recovery < Duration::from_secs(10),
        "recovered {recovery:?} after NATS was back"
    );

    let stored_anyway = retry_refused_and_check_balances(&host, &accounts, &samples).await;
    let text = host.client().metrics().await.unwrap();
    assert_eq!(
        metric(&text, r#"aggregate_nats_breaker_state{state="closed"}"#),
        1.0,
        "{text}"
    );
    for (from, to) in [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ] {
        assert!(
            metric(
                &text,
                &format!(r#"aggregate_nats_breaker_transitions_total{{from="{from}",to="{to}"}}"#)
            ) >= 1.0,
            "{from} → {to}: {text}"
        );
    }
    println!(
        "NATS killed: outage noticed (/ready false) {:.0} ms after SIGKILL; /ready answered in \
         {:.1} ms; {} new commands during the outage: p50 {:.1} ms, max {:.1} ms (target ≤ 1000); \
         {} in flight at the kill: max {:.1} ms (deadline {} ms); first success {:.0} ms after \
         nats-server accepted connections again, /ready true after {:.0} ms; {} refused commands \
         retried with their ids, {} of them had been stored (duplicate on retry); slowest \
         command of the run {:.0} ms",
        ms(detected),
        ms(ready_took),
        new.len(),
        p50_ms(new.iter().copied()),
        max_ms(new.iter().copied()),
        in_flight.len(),
        max_ms(in_flight.iter().copied()),
        DEADLINE.as_millis(),
        ms(recovery),
        ms(ready_again),
        samples.iter().filter(|s| !s.ok()).count(),
        stored_anyway,
        max_ms(&samples),
    );
    assert_eq!(host.stop().code(), Some(0), "{}", host.log());
}

/// nats-server stops answering (SIGSTOP: the connection stays up): commands waiting on it answer
/// 503 at the deadline, consecutive timeouts open the breaker so later commands are refused at
/// once, and after SIGCONT a probe closes it again. Retrying the refused commands with their ids
/// applies each exactly once, also those the server stored after it resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_waiting_on_a_hung_nats_answer_at_the_deadline() {
    let Some(env) = Env::new(Backend::JetStream, "e2e NATS hung under load") else {
        return;
    };
    let (mut host, accounts) = host_with_accounts(&env).await;
    let load = Load::start(&host.gateway, &accounts);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let nats = env.nats.as_ref().unwrap();
    let stopped = Instant::now();
    nats.signal("STOP");
    // Timeouts of the commands in flight open the breaker.
    let opened_after = wait_ready(&host, false, DEADLINE + MARGIN + Duration::from_secs(2)).await;
    let ready_took = ready_names_nats(&host, "consecutive failures").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resuming = Instant::now();
    nats.signal("CONT");
    let first_success = load
        .wait_all_succeed_after(resuming, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no recovery after SIGCONT; log:\n{}", host.log()));
    let samples = load.stop().await;

    let open_from = stopped + opened_after;
    let in_flight: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent < open_from && s.answered > stopped && !s.ok())
        .collect();
    let new: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent >= open_from && s.answered <= resuming)
        .collect();
    assert!(
        in_flight.len() >= WORKERS,
        "every worker had a command waiting: {in_flight:?}"
    );
    for s in &in_flight {
        assert_eq!(
            (s.status, s.problem_type.as_deref(), s.retry_after),
            (503, Some("/problems/unavailable"), true),
            "{s:?}"
        );
        assert!(
            s.took() <= DEADLINE + MARGIN,
            "a command waiting on NATS took {:?}",
            s.took()
        );
    }
    for s in &samples {
        assert!(
            s.took() <= DEADLINE + MARGIN,
            "no command waits longer than the deadline: {s:?}"
        );
    }
    assert!(new.len() >= WORKERS * 10, "{} new commands", new.len());
    for s in &new {
        assert_eq!((s.status, s.retry_after), (503, true), "{s:?}");
        assert!(
            s.took() <= NEW_COMMAND_BOUND,
            "new command took {:?}",
            s.took()
        );
    }
    assert!(
        ready_took < Duration::from_secs(1),
        "/ready took {ready_took:?}"
    );
    let recovery = first_success - resuming;
    assert!(
        recovery < Duration::from_secs(10),
        "recovered {recovery:?} after SIGCONT"
    );
    let stored_anyway = retry_refused_and_check_balances(&host, &accounts, &samples).await;
    println!(
        "NATS hung (SIGSTOP): {} commands waiting on it answered 503 after {:.0}–{:.0} ms \
         (deadline {} ms); breaker open (/ready false) {:.0} ms after SIGSTOP; /ready answered in \
         {:.1} ms; {} new commands while open: p50 {:.1} ms, max {:.1} ms (target ≤ 1000); \
         first success {:.0} ms after SIGCONT; {} refused commands retried with their ids, {} \
         of them had been stored after SIGCONT (duplicate on retry)",
        in_flight.len(),
        in_flight
            .iter()
            .map(|s| ms(s.took()))
            .fold(f64::MAX, f64::min),
        max_ms(in_flight.iter().copied()),
        DEADLINE.as_millis(),
        ms(opened_after),
        ms(ready_took),
        new.len(),
        p50_ms(new.iter().copied()),
        max_ms(new.iter().copied()),
        ms(recovery),
        samples.iter().filter(|s| !s.ok()).count(),
        stored_anyway,
    );
    assert_eq!(host.stop().code(), Some(0), "{}", host.log());
}

/// The host is started before nats-server: it serves `/health` and `/ready` (not ready, naming
/// NATS), refuses commands with 503 at once, and becomes ready once nats-server is up — the same
/// process, never restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_starts_before_nats_and_becomes_ready_when_it_is_up() {
    let Some(nats) = NatsServer::reserve_or_skip("e2e start before NATS") else {
        return;
    };
    let mut env = Env {
        backend: Backend::JetStream,
        dir: tempfile::tempdir().unwrap(),
        nats: Some(nats),
    };
    let started = Instant::now();
    let mut host = env.start(&[]);
    let listening_after = started.elapsed();
    let pid = host.pid();
    let client = host.client();

    let asked = Instant::now();
    let health = client
        .execute(client.http().get(format!("{}/health", host.admin)))
        .await
        .unwrap();
    let health_took = asked.elapsed();
    assert_eq!(
        (health["status"].as_str(), health["nats"]["ok"].as_bool()),
        (Some("degraded"), Some(false)),
        "{health}"
    );
    let ready_took = ready_names_nats(&host, "NATS not connected yet").await;
    let p = problem(client.ready().await, 503, "not-ready");
    assert_eq!(p["checks"]["nats"]["state"], "connecting", "{p}");

    let asked = Instant::now();
    let refused = client
        .http()
        .post(format!(
            "{}/aggregates/bank-account/{}/commands/open",
            host.gateway,
            new_id()
        ))
        .json(&json!({"owner": "Ada"}))
        .send()
        .await
        .unwrap();
    let command_took = asked.elapsed();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "/problems/unavailable", "{body}");
    for took in [health_took, ready_took, command_took] {
        assert!(took < Duration::from_secs(1), "answered after {took:?}");
    }
    // Still not ready a while later: the host keeps serving and keeps trying.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ready_names_nats(&host, "NATS not connected yet").await;

    env.nats.as_mut().unwrap().start();
    let up = Instant::now();
    wait_ready(&host, true, Duration::from_secs(20)).await;
    let ready_after = up.elapsed();
    assert_eq!(host.pid(), pid, "the same process");
    deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    let state = client.state("bank-account", &id).await.unwrap();
    assert_eq!(state["version"], 1, "{state}");
    assert!(
        host.log().contains("NATS is not reachable yet"),
        "{}",
        host.log()
    );
    println!(
        "start before NATS: listening {:.0} ms after spawn; /health {:.1} ms, /ready {:.1} ms, a \
         command {:.1} ms (503) while NATS was down; ready {:.0} ms after nats-server accepted \
         connections",
        ms(listening_after),
        ms(health_took),
        ms(ready_took),
        ms(command_took),
        ms(ready_after),
    );
    assert_eq!(host.stop().code(), Some(0), "{}", host.log());
}

/// `nats_connect: fail-fast` keeps the old behaviour: no NATS at start, the host exits with an
/// error naming it.
#[test]
fn fail_fast_exits_when_nats_is_not_up() {
    let Some(nats) = NatsServer::reserve_or_skip("e2e fail-fast without NATS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BINARY);
    for (k, _) in std::env::vars() {
        if k.starts_with("AGGREGATE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("serve")
        .env("AGGREGATE_DATA_DIR", dir.path())
        .env("AGGREGATE_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("AGGREGATE_ADMIN_LISTEN", "127.0.0.1:0")
        .env("AGGREGATE_NATS_URL", nats.url())
        .env("AGGREGATE_NATS_CONNECT", "fail-fast")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fail-fast host still running 30 s without NATS");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains(&nats.url()), "{stderr}");
}
