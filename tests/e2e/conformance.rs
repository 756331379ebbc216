//! The host against its own OpenAPI document, over real sockets.
//!
//! - `schemathesis` (PyPI; `scripts/toolchains.sh` pins it in its own venv) generates requests for
//!   every operation of the document served at `/openapi.json` — the gateway's, then the admin
//!   API's with the bearer token — and checks every answer: never a 5xx, only documented status
//!   codes, content types, headers and response schemas, no 2xx for a request the document calls
//!   invalid, and no admin route that ignores a missing or wrong token. The run is bounded
//!   (examples per operation, a fixed seed, a request timeout and a deadline for the whole run). `GET /events/stream` is left out: a 200 there never ends, so
//!   schemathesis could only time out on it; the gateway's property test
//!   (`host/src/api/fuzz_tests.rs`) and the story test cover it.
//! - A keep-alive connection survives a refusal answered before the request body arrived (the
//!   first bug schemathesis found: its next request on that connection was lost).
//!
//! Without schemathesis (neither in `target/toolchains/schemathesis` nor on `PATH`) the
//! schemathesis test prints a notice and passes, unless `CI` is set: then it fails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{deploy, new_id, Backend, Env, TOKEN};

/// Test cases per operation in each generating phase (about 20 s per listener on 2 cores).
const MAX_EXAMPLES: &str = "150";

/// Fixed, so a failure can be replayed (`--seed` in the printed command line).
const SEED: &str = "8080";

/// How long one request may take before schemathesis reports it (a hang).
const REQUEST_TIMEOUT_SECS: &str = "10";

/// How long one whole schemathesis run may take before the test kills it and fails.
const RUN_BOUND: Duration = Duration::from_secs(240);

/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,\
                      negative_data_rejection,ignored_auth";

/// Schemathesis's configuration file: nothing but what the command line says, and no
/// `schemathesis.toml` found in a parent directory of the run.
const CONFIG: &str = "# Everything is on the command line.\n";

/// Where schemathesis is installed, if anywhere: the project's pinned venv, then `PATH`.
fn binary() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/toolchains/schemathesis/bin/schemathesis");
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("schemathesis"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(venv).chain(from_path).find(|p| p.is_file())
}

/// Schemathesis, or explain why not: panics under `CI`, returns `None` otherwise.
fn schemathesis_or_skip(what: &str) -> Option<PathBuf> {
    match binary() {
        Some(b) => Some(b),
        None if std::env::var_os("CI").is_some() => panic!(
            "{what}: `schemathesis` is neither in target/toolchains/schemathesis nor on PATH. It \
             is needed when CI is set: run scripts/toolchains.sh (it pins the version)."
        ),
        None => {
            eprintln!(
                "NOTICE: {what}: skipped, `schemathesis` is not installed (scripts/toolchains.sh \
                 installs it into target/toolchains/schemathesis)"
            );
            None
        }
    }
}

/// Run `schemathesis run` on the document at `base/openapi.json` with `extra` arguments, in
/// `dir`; its exit status and everything it printed. Killed (and the test failed) after
/// [`RUN_BOUND`].
fn run_schemathesis(bin: &Path, dir: &Path, base: &str, extra: &[&str]) -> (ExitStatus, String) {
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let log_path = dir.join(format!("schemathesis-{}.log", new_id()));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(bin);
    cmd.current_dir(dir)
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run", &format!("{base}/openapi.json")])
        .args(["--url", base])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        .args(["--request-timeout", REQUEST_TIMEOUT_SECS])
        .args(["--generation-database", "none"])
        .args(["--workers", "1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_BOUND {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within {RUN_BOUND:?}; its output:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "schemathesis {} {}: {status} in {:.1} s",
        base,
        extra.join(" "),
        started.elapsed().as_secs_f64()
    );
    (
        status,
        std::fs::read_to_string(&log_path).unwrap_or_default(),
    )
}

/// The gateway and the admin API answer every generated request as their document says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_contradiction_of_the_document() {
    let Some(bin) = schemathesis_or_skip("schemathesis against the OpenAPI document") else {
        return;
    };
    let env = Env::new(Backend::Embedded, "schemathesis").expect("embedded needs nothing");
    let mut host = env.start(&[]);
    let client = host.client();
    deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let aggregates = client
        .admin(reqwest::Method::GET, "/admin/aggregates", None)
        .await
        .unwrap();
    let limits = aggregates["aggregates"][0]["limits"].clone();
    assert!(limits.is_object(), "{aggregates}");
    let work = tempfile::tempdir().unwrap();

    // The gateway first: the admin run may drain tenants and change bank-account's limits.
    let gateway = host.gateway.clone();
    let dir = work.path().to_path_buf();
    let bin2 = bin.clone();
    let (status, output) = tokio::task::spawn_blocking(move || {
        run_schemathesis(
            &bin2,
            &dir,
            &gateway,
            &[
                "--include-tag",
                "gateway",
                "--exclude-operation-id",
                "streamEvents",
            ],
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "schemathesis on the gateway:\n{output}");

    let admin = host.admin.clone();
    let dir = work.path().to_path_buf();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (status, output) = tokio::task::spawn_blocking(move || {
        run_schemathesis(
            &bin,
            &dir,
            &admin,
            &["--include-tag", "admin", "--header", &bearer],
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "schemathesis on the admin API:\n{output}");

    // The host still serves: undo what the admin run may have changed, then a story.
    client
        .admin(
            reqwest::Method::PUT,
            "/admin/aggregates/bank-account/limits",
            Some(&limits),
        )
        .await
        .unwrap();
    client
        .admin(
            reqwest::Method::POST,
            "/admin/resume",
            Some(&json!({ "tenant_id": "" })),
        )
        .await
        .unwrap();
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    let v = client
        .send("bank-account", &id, "deposit", &json!({"amount": 7}))
        .await
        .unwrap();
    assert_eq!(v["version"], 2, "{v}");
    let v = client.state("bank-account", &id).await.unwrap();
    assert_eq!(v["state"]["balance"], 7, "{v}");
    let log = host.log();
    assert!(!log.contains("panicked"), "the host panicked:\n{log}");
    assert!(host.stop().success(), "{}", host.log());
}

/// One HTTP/1.1 answer read from `stream`: status and body (`Content-Length` framed). `None` when
/// the connection closes before a status line.
fn read_answer(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            Ok(_) => return None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return None
            }
            Err(e) => panic!("reading an answer: {e}"),
        }
        assert!(buf.len() < 64 << 10, "headers without end");
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    Some((status, String::from_utf8(body).unwrap()))
}

/// A request refused before its body arrived (bad aggregate id, no route, wrong method) leaves
/// the connection usable: the body, sent after the answer, is read and dropped, and the next
/// request on the connection is answered. Hyper used to close such a connection, and a
/// keep-alive client lost its next request ("connection closed without response").
#[test]
fn a_refusal_before_the_body_arrived_keeps_the_connection() {
    let env = Env::new(Backend::Embedded, "keep-alive").expect("embedded needs nothing");
    let host = env.start(&[]);
    let address = host.gateway.trim_start_matches("http://").to_string();
    let body = r#"{"owner":"Ada"}"#;
    for (method, path, status) in [
        (
            "POST",
            "/aggregates/bank-account/not-a-uuid/commands/open",
            400,
        ),
        ("POST", "/no/such/route", 404),
        ("PUT", "/openapi.json", 405),
    ] {
        let mut stream = TcpStream::connect(&address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // The headers alone: the host answers before the body exists.
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        let (s, problem) = read_answer(&mut stream).expect("an answer");
        assert_eq!(s, status, "{method} {path}: {problem}");
        let problem: Value = serde_json::from_str(&problem).unwrap();
        assert_eq!(problem["status"], status, "{problem}");
        // Still open a moment later (hyper decides right after the answer whether to close a
        // connection whose request body nobody reads)...
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut probe = [0u8; 1];
        let peeked = stream.peek(&mut probe);
        assert!(
            matches!(&peeked, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
            "{method} {path}: the host closed the connection after answering ({peeked:?})"
        );
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // ...then the body, and a second request on the same connection.
        let second = write!(
            stream,
            "{body}GET /problems/not-found HTTP/1.1\r\nHost: {address}\r\n\r\n"
        )
        .map(|()| read_answer(&mut stream));
        assert!(
            matches!(&second, Ok(Some((200, text))) if text.contains("not-found")),
            "{method} {path}: the next request on the connection got {second:?} (None: closed)"
        );
    }
}
