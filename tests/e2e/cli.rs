//! The client subcommands of the same binary against a running host: `deploy`, `send`, `state`,
//! `events`, `health`, and a refused command's exit status and message.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Backend, Env, HostProcess, BINARY, TOKEN};

fn run(host: &HostProcess, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("AGGREGATE_GATEWAY_URL", &host.gateway)
        .env("AGGREGATE_ADMIN_URL", &host.admin)
        .env("AGGREGATE_ADMIN_TOKEN", TOKEN)
        .env_remove("AGGREGATE_TENANT")
        .output()
        .unwrap()
}

#[track_caller]
fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn cli_talks_to_a_running_host() {
    let env = Env::new(Backend::Embedded, "cli").unwrap();
    let host = env.start(&[]);
    let deployed = json_of(&run(
        &host,
        &["deploy", "bank-account", example_artifacts::BANK_ACCOUNT],
    ));
    assert_eq!(
        (deployed["version"].as_u64(), deployed["changed"].as_bool()),
        (Some(1), Some(true))
    );

    let opened = json_of(&run(
        &host,
        &[
            "send",
            "bank-account",
            "new",
            r#"{"type": "open", "owner": "Ada"}"#,
        ],
    ));
    let id = opened["aggregate_id"].as_str().unwrap().to_string();
    assert_eq!(
        (opened["version"].as_u64(), opened["component"].as_str()),
        (Some(1), deployed["component"].as_str())
    );
    let deposit = json_of(&run(
        &host,
        &[
            "send",
            "bank-account",
            &id,
            r#"{"amount": 100}"#,
            "--command",
            "deposit",
            "--correlation-id",
            "cli-1",
        ],
    ));
    assert_eq!(deposit["events"][0]["metadata"]["correlation_id"], "cli-1");

    let refused = run(
        &host,
        &[
            "send",
            "bank-account",
            &id,
            r#"{"type": "withdraw", "amount": 1000}"#,
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("422 command-rejected") && stderr.contains("insufficient funds"),
        "{stderr}"
    );
    let no_type = run(&host, &["send", "bank-account", &id, r#"{"amount": 1}"#]);
    assert!(!no_type.status.success());
    assert!(String::from_utf8_lossy(&no_type.stderr).contains("--command"));

    let state = json_of(&run(&host, &["state", "bank-account", &id]));
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(2), Some(100))
    );
    let events = json_of(&run(
        &host,
        &["events", "bank-account", &id, "--after", "1"],
    ));
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    assert_eq!(events["events"][0]["event_type"], "deposited");
    let health = json_of(&run(&host, &["health"]));
    assert_eq!(health["ready"], true);

    let wrong_token = Command::new(BINARY)
        .args(["deploy", "bank-account", example_artifacts::BANK_ACCOUNT])
        .env("AGGREGATE_ADMIN_URL", &host.admin)
        .env("AGGREGATE_ADMIN_TOKEN", "not-the-token-0123456789")
        .output()
        .unwrap();
    assert!(!wrong_token.status.success());
    assert!(String::from_utf8_lossy(&wrong_token.stderr).contains("401 unauthorized"));
}

/// A TCP relay to `upstream` whose open connections the test can cut (a dropped connection
/// between the CLI and the host).
struct Relay {
    url: String,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(upstream_url: &str) -> Self {
        use std::net::{TcpListener, TcpStream};
        let upstream = upstream_url.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let held = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                held.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { url, open }
    }

    /// Cut every connection open now; returns how many sockets were cut.
    fn cut(&self) -> usize {
        let open: Vec<_> = self.open.lock().unwrap().drain(..).collect();
        for s in &open {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }
}

/// Read `n` more lines from the follower (or fail after 30 s, showing its stderr).
fn take_lines(
    lines: &std::sync::mpsc::Receiver<String>,
    n: usize,
    stderr: &std::path::Path,
) -> Vec<Value> {
    (0..n)
        .map(|k| {
            let line = lines
                .recv_timeout(std::time::Duration::from_secs(30))
                .unwrap_or_else(|e| {
                    panic!(
                        "line {k} of {n}: {e}; follower stderr:\n{}",
                        std::fs::read_to_string(stderr).unwrap_or_default()
                    )
                });
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
        })
        .collect()
}

/// `events --follow` prints an aggregate's events as they are committed and survives two cut
/// connections with no gap and no duplicate; `query` prints every match over pages; `state
/// --version` prints a past state; bad input exits 1 naming the problem.
#[test]
fn cli_follows_events_queries_and_reads_past_states() {
    let env = Env::new(Backend::Embedded, "cli read side").unwrap();
    let host = env.start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = host.client();
    let ty = "bank-account";
    rt.block_on(crate::support::deploy(
        &client,
        ty,
        example_artifacts::BANK_ACCOUNT,
    ));
    let id = crate::support::new_id();
    let send = |amount: i64| {
        rt.block_on(client.send(ty, &id, "deposit", &serde_json::json!({ "amount": amount })))
            .unwrap()
    };
    rt.block_on(client.send(ty, &id, "open", &serde_json::json!({ "owner": "Ada" })))
        .unwrap();
    for amount in 1..=3 {
        send(amount);
    }

    let relay = Relay::start(&host.gateway);
    let stderr = env.dir.path().join("follow.stderr");
    let mut follower = Command::new(BINARY)
        .args(["events", ty, &id, "--follow", "--after-id", "0"])
        .env("AGGREGATE_GATEWAY_URL", &relay.url)
        .env_remove("AGGREGATE_TENANT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The history first (open + 3 deposits), then events as they are committed.
    let mut got = take_lines(&lines, 4, &stderr);
    for round in 0..2 {
        assert!(relay.cut() >= 2, "round {round}: the stream was connected");
        for amount in 1..=5 {
            send(10 * (round + 1) + amount);
        }
        got.extend(take_lines(&lines, 5, &stderr));
    }
    send(1000);
    got.extend(take_lines(&lines, 1, &stderr));
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        lines
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err(),
        "no event printed twice"
    );
    let log = rt.block_on(client.events(ty, &id, 0, 1000)).unwrap();
    let logged = log["events"].as_array().unwrap();
    let printed: Vec<&Value> = got.iter().map(|l| &l["event"]).collect();
    assert_eq!(
        printed,
        logged.iter().collect::<Vec<_>>(),
        "followed = the log"
    );
    let ids: Vec<(u64, u64)> = got
        .iter()
        .map(|l| {
            let (p, i) = l["id"].as_str().unwrap().split_once('.').unwrap();
            (p.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let follow_log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        follow_log.matches("reconnecting").count() >= 2,
        "{follow_log}"
    );

    // query: every match, over pages of one.
    let mut matching = vec![id.clone()];
    for balance in [2, 60, 70] {
        let other = crate::support::new_id();
        rt.block_on(client.send(ty, &other, "open", &serde_json::json!({ "owner": "B" })))
            .unwrap();
        rt.block_on(client.send(
            ty,
            &other,
            "deposit",
            &serde_json::json!({ "amount": balance }),
        ))
        .unwrap();
        if balance > 50 {
            matching.push(other);
        }
    }
    let out = run(
        &host,
        &["query", ty, "state.balance > 50", "--page-size", "1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["aggregate_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    found.sort();
    matching.sort();
    assert_eq!(found, matching);
    let bad = run(&host, &["query", ty, "state.balance >"]);
    assert_eq!(bad.status.code(), Some(1));
    let bad = String::from_utf8_lossy(&bad.stderr);
    assert!(
        bad.contains("400 invalid-filter") && bad.contains("\"position\""),
        "{bad}"
    );

    // state --version: the balance after the open and two deposits (1 + 2).
    let past = json_of(&run(&host, &["state", ty, &id, "--version", "3"]));
    assert_eq!(
        (past["version"].as_u64(), past["state"]["balance"].as_i64()),
        (Some(3), Some(3)),
        "{past}"
    );
    assert_eq!(past["current_version"].as_u64(), Some(logged.len() as u64));
    let missing = run(&host, &["state", ty, &id, "--version", "999"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404 unknown-version"));
    let no_id = run(&host, &["events", ty]);
    assert!(String::from_utf8_lossy(&no_id.stderr).contains("--follow"));
}
