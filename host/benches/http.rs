//! HTTP load benchmark (a bench binary, not a timed test). For each event log, with 1 and 32
//! concurrent closed-loop writers (each on its own aggregate, `deposit` commands):
//!
//! - **service**: `CommandService::submit` in this process — the ceiling without HTTP;
//! - **http**: the real `aggregate-host serve` binary (a child process), driven over loopback
//!   HTTP/1.1 keep-alive connections from this process.
//!
//! Each row reports commands/s and p50/p99 latency as the caller sees it, and the **server CPU
//! time per command** (utime + stime of the serving process from `/proc`, divided by the commands):
//! the cost the host pays. The client shares the same two cores with the server, so HTTP
//! throughput is bounded by client + server; the CPU column isolates what HTTP adds to the host.
//! An **http-floor** row measures a trivial `GET /problems/version-conflict` on the same server
//! (32 writers): what HTTP/1.1 on loopback costs before any command work.
//!
//! Bounded: each row stops after `BENCH_SECS` seconds (default 5) or 200,000 commands. Traffic
//! goes to 127.0.0.1 only; the JetStream rows start their own nats-server on loopback (skipped
//! with a notice when it is missing).
//!
//! `cargo bench -p aggregate-host --bench http`
//!
//! With `-- tenancy`: only JetStream, the same `deposit` over HTTP, over HTTP with an RS256 JWT
//! (`http-jwt`), and over the NATS command endpoint (`nats`), at 1 and 32 clients, each compared
//! with plain HTTP in the same run.

#[path = "../tests/support/nats.rs"]
#[allow(dead_code)]
mod nats;
#[path = "support/serve.rs"]
mod serve;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::app::Host;
use aggregate_host::client::Client;
use aggregate_host::config::Config;
use aggregate_host::service::Submit;
use aggregate_host::telemetry::Metrics;
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandMetadata, Json, TenantId,
};

const MAX_COMMANDS: usize = 200_000;
const WRITERS: [usize; 2] = [1, 32];

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    )
}

use serve::{cpu_time, Serve};

struct Row {
    layer: &'static str,
    log: &'static str,
    writers: usize,
    commands: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_command: Duration,
}

/// Run `writers` closed loops, each on its own aggregate id, for `secs()` or `MAX_COMMANDS`;
/// `pid` is the process whose CPU time is charged.
async fn closed_loop<F, Fut>(
    layer: &'static str,
    log: &'static str,
    pid: u32,
    ids: &[AggregateId],
    writers: usize,
    op: F,
) -> Row
where
    F: Fn(AggregateId) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let deadline = Instant::now() + secs();
    let issued = Arc::new(AtomicUsize::new(0));
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in ids.iter().take(writers).copied() {
        let (op, issued) = (op.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < MAX_COMMANDS
            {
                let t = Instant::now();
                op(id).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer task"));
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Row {
        layer,
        log,
        writers,
        commands: lat.len(),
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_command: cpu / lat.len() as u32,
    }
}

fn fresh_ids() -> Vec<AggregateId> {
    (0..WRITERS[1]).map(|_| AggregateId::generate()).collect()
}

/// The service layer in this process.
async fn service_rows(log: &'static str, nats_url: Option<String>) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("temp dir");
    let host = Host::open(Config {
        data_dir: dir.path().to_path_buf(),
        nats_url,
        ..Config::default()
    })
    .await
    .expect("host");
    let ty = AggregateType::new("bank-account").unwrap();
    host.registry
        .deploy(
            &ty,
            &std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap(),
            None,
        )
        .expect("deploy");
    // The same metrics the server records, so both layers pay for them.
    host.service.set_observer(Metrics::new());
    let service = host.service.clone();
    let submit = move |id: AggregateId, command_type: &str, payload: &str| Submit {
        command_id: None,
        target: AggregateRef {
            tenant: TenantId::single(),
            aggregate_type: ty.clone(),
            aggregate_id: id,
        },
        command_type: command_type.into(),
        payload: Json::parse(payload).unwrap(),
        metadata: CommandMetadata::default(),
    };
    let ids = fresh_ids();
    for id in &ids {
        service
            .submit(
                &TenantId::single(),
                submit(*id, "open", r#"{"owner":"bench"}"#),
            )
            .await
            .expect("open");
    }
    let mut rows = Vec::new();
    for writers in WRITERS {
        let (service, submit) = (service.clone(), submit.clone());
        rows.push(
            closed_loop(
                "service",
                log,
                std::process::id(),
                &ids,
                writers,
                move |id| {
                    let (service, s) = (service.clone(), submit(id, "deposit", r#"{"amount":1}"#));
                    async move {
                        service
                            .submit(&TenantId::single(), s)
                            .await
                            .expect("deposit");
                    }
                },
            )
            .await,
        );
    }
    host.service.flush().await.expect("flush");
    rows
}

/// A running `aggregate-host serve` with `bank-account` deployed and one opened account per
/// writer.
struct Server {
    serve: Serve,
    client: Client,
    ids: Vec<AggregateId>,
}

impl Server {
    /// Start the real binary with extra `AGGREGATE_*` variables; `token` is the gateway JWT the
    /// setup commands send (a host with `jwt`).
    async fn start(nats_url: Option<&str>, env: &[(&str, String)], token: Option<String>) -> Self {
        let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(url) = nats_url {
            vars.push(("AGGREGATE_NATS_URL", url));
        }
        let serve = Serve::start(&vars);
        let client = serve.client.clone().with_gateway_token(token);
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.ready().await.is_err() {
            assert!(Instant::now() < deadline, "server not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
            .deploy(
                "bank-account",
                std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap(),
            )
            .await
            .expect("deploy");
        let ids = fresh_ids();
        for id in &ids {
            client
                .send(
                    "bank-account",
                    &id.to_string(),
                    "open",
                    &serde_json::json!({"owner": "bench"}),
                )
                .await
                .expect("open");
        }
        Self { serve, client, ids }
    }

    fn pid(&self) -> u32 {
        self.serve.child.id()
    }
}

/// `deposit` over HTTP with `writers` closed loops, optionally with a bearer token.
async fn http_deposits(
    layer: &'static str,
    log: &'static str,
    server: &Server,
    writers: usize,
    token: Option<String>,
) -> Row {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let base = server.client.gateway_url().to_string();
    closed_loop(layer, log, server.pid(), &server.ids, writers, move |id| {
        let mut request = http
            .post(format!(
                "{base}/aggregates/bank-account/{id}/commands/deposit"
            ))
            .body(r#"{"amount":1}"#);
        if let Some(t) = &token {
            request = request.bearer_auth(t);
        }
        async move {
            let r = request.send().await.expect("request");
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.expect("body");
        }
    })
    .await
}

/// The real binary, over HTTP.
async fn http_rows(log: &'static str, nats_url: Option<String>) -> Vec<Row> {
    let server = Server::start(nats_url.as_deref(), &[], None).await;
    let (pid, ids) = (server.pid(), &server.ids);
    let base = server.client.gateway_url().to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for writers in WRITERS {
        rows.push(http_deposits("http", log, &server, writers, None).await);
    }
    // The floor: a trivial GET through the same server, middleware and connections.
    {
        let (http, base) = (http.clone(), base.clone());
        rows.push(
            closed_loop("http-floor", log, pid, ids, 32, move |_| {
                let request = http.get(format!("{base}/problems/version-conflict"));
                async move {
                    request
                        .send()
                        .await
                        .expect("request")
                        .bytes()
                        .await
                        .expect("body");
                }
            })
            .await,
        );
    }
    drop(server);
    rows
}

/// Issue 12's rows, all on one JetStream server: `deposit` over HTTP without authentication,
/// over HTTP with an RS256 JWT (a valid token verified on every request), and over the NATS
/// command endpoint (request-reply on one connection).
async fn tenancy_rows(nats_url: &str, jwt_nats_url: &str) -> Vec<Row> {
    let log = "jetstream";
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/fixtures/jwt");
    let claims = serde_json::json!({
        "iss": "bench", "aud": "bench", "sub": "bench-client",
        "exp": jsonwebtoken::get_current_timestamp() + 3600,
    });
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixtures.join("rs256-private.pem")).unwrap(),
    )
    .unwrap();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap();
    let mut rows = Vec::new();
    let plain = Server::start(Some(nats_url), &[], None).await;
    for writers in WRITERS {
        rows.push(http_deposits("http", log, &plain, writers, None).await);
    }
    let nats = async_nats::connect(nats_url).await.expect("NATS");
    for writers in WRITERS {
        let nats = nats.clone();
        rows.push(
            closed_loop("nats", log, plain.pid(), &plain.ids, writers, move |id| {
                let nats = nats.clone();
                async move {
                    let reply = nats
                        .request(
                            format!("aggregate.cmd._.bank-account.{id}.deposit"),
                            r#"{"amount":1}"#.into(),
                        )
                        .await
                        .expect("NATS reply");
                    let status = reply
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("Aggregate-Status"))
                        .map(|v| v.as_str().to_string());
                    assert_eq!(status.as_deref(), Some("200"));
                }
            })
            .await,
        );
    }
    drop(plain);
    let jwt_env = [
        (
            "AGGREGATE_JWT_PUBLIC_KEY_FILE",
            fixtures.join("rs256-public.pem").display().to_string(),
        ),
        ("AGGREGATE_JWT_ISSUER", "bench".to_string()),
        ("AGGREGATE_JWT_AUDIENCE", "bench".to_string()),
    ];
    // Its own nats-server: its state index must not fold the first server's commits.
    let jwt = Server::start(Some(jwt_nats_url), &jwt_env, Some(token.clone())).await;
    for writers in WRITERS {
        rows.push(http_deposits("http-jwt", log, &jwt, writers, Some(token.clone())).await);
    }
    drop(jwt);
    rows
}

fn print(rows: &[Row]) {
    println!("| layer | event log | writers | commands | commands/s | p50 ms | p99 ms | host CPU µs/command | HTTP adds (CPU) |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let vs = match r.layer {
            "http-jwt" | "nats" => rows
                .iter()
                .find(|s| s.layer == "http" && s.log == r.log && s.writers == r.writers)
                .map(|s| {
                    format!(
                        "{:.2}× http",
                        r.cpu_per_command.as_secs_f64() / s.cpu_per_command.as_secs_f64()
                    )
                })
                .unwrap_or_default(),
            "http" => rows
                .iter()
                .find(|s| s.layer == "service" && s.log == r.log && s.writers == r.writers)
                .map(|s| {
                    format!(
                        "{:+.0}%",
                        (r.cpu_per_command.as_secs_f64() / s.cpu_per_command.as_secs_f64() - 1.0)
                            * 100.0
                    )
                })
                .unwrap_or_default(),
            _ => String::from("(ceiling)"),
        };
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {vs} |",
            r.layer,
            r.log,
            r.writers,
            r.commands,
            r.per_sec,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.cpu_per_command.as_secs_f64() * 1e6,
        );
    }
}

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`; keep that instant.
    if !std::env::args().any(|a| a == "--bench") {
        println!("http bench: run with `cargo bench -p aggregate-host --bench http`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().any(|a| a == "tenancy") {
        // `cargo bench -p aggregate-host --bench http -- tenancy`
        let (Some(server), Some(jwt_server)) = (
            nats::NatsServer::start_or_skip("tenancy bench"),
            nats::NatsServer::start_or_skip("tenancy bench (JWT)"),
        ) else {
            println!("(skipped: no nats-server)");
            return;
        };
        let mut rows = rt.block_on(tenancy_rows(&server.url(), &jwt_server.url()));
        rows.sort_by_key(|r| (r.writers, r.layer));
        print(&rows);
        return;
    }
    let mut rows = rt.block_on(service_rows("embedded", None));
    rows.extend(rt.block_on(http_rows("embedded", None)));
    match nats::NatsServer::start_or_skip("http bench on JetStream") {
        Some(server) => {
            rows.extend(rt.block_on(service_rows("jetstream", Some(server.url()))));
            rows.extend(rt.block_on(http_rows("jetstream", Some(server.url()))));
        }
        None => println!("(JetStream rows skipped: no nats-server)"),
    }
    rows.sort_by_key(|r| (r.log, r.writers, r.layer != "service"));
    print(&rows);
}
