//! Uploads cost the host what they deserve: a component refused for its imports or exports is
//! refused by reading it — before compiling, in milliseconds, keeping no memory — and named in
//! the problem; the same bytes again are refused from memory; a body whose `Content-Length` is
//! over the limit is refused before it is sent. (The embedded log only: storage plays no part.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{new_id, problem, Backend, Env, HostProcess, TOKEN};

#[path = "../../host/tests/support/components.rs"]
mod components;

fn host(vars: &[(&str, &str)]) -> (Env, HostProcess) {
    let env = Env::new(Backend::Embedded, "upload limits").expect("embedded needs nothing");
    let host = env.start(vars);
    (env, host)
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The JavaScript bank account built with componentize-js's `http` feature on (12 MB,
/// imports `wasi:http`); `None` (skipped) when it was not built, except under CI.
fn wasi_http_js() -> Option<Vec<u8>> {
    let path = PathBuf::from(example_artifacts::POLYGLOT_DIR).join("forbidden_http_js.wasm");
    if !path.is_file() {
        let msg = format!("{} is missing; run scripts/build-guests.sh", path.display());
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    Some(std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_javascript_component_is_refused_before_compiling() {
    let Some(bytes) = wasi_http_js() else {
        return;
    };
    let (env, host) = host(&[]);
    let client = host.client();
    // Warm the upload path (body reading, the contract's encoding, the validator) with a small
    // refused component, so what is measured below is the 12 MB upload's own cost.
    problem(
        client
            .deploy("warm-up", components::decide_without_command(0))
            .await,
        422,
        "component-rejected",
    );
    let rss_before = vm_rss_kib(host.pid());
    let started = Instant::now();
    let first = client.deploy("bank-account", bytes.clone()).await;
    let took = started.elapsed();
    let rss_after = vm_rss_kib(host.pid());
    let p = problem(first, 422, "component-rejected");
    assert_eq!(p["kind"], "forbidden-import", "{p}");
    let import = p["import"].as_str().unwrap_or_default().to_string();
    assert!(import.starts_with("wasi:http/"), "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("wasi:http is not provided"),
        "{p}"
    );

    // The same bytes again: refused from memory, with the same problem.
    let started = Instant::now();
    let again = problem(
        client.deploy("bank-account", bytes.clone()).await,
        422,
        "component-rejected",
    );
    let took_again = started.elapsed();
    assert_eq!(again["import"], p["import"]);
    assert_eq!(again["detail"], p["detail"]);
    let rss_end = vm_rss_kib(host.pid());

    eprintln!(
        "MEASURED wasi:http JS component, {} bytes: refused in {} ms (again: {} ms); VmRSS \
         {} KiB before, {} KiB after (+{} KiB), {} KiB after the second upload",
        bytes.len(),
        took.as_millis(),
        took_again.as_millis(),
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64,
        rss_end
    );
    assert!(
        took < Duration::from_secs(1),
        "refusing {} bytes took {took:?}",
        bytes.len()
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(
        rss_end < rss_before + 50 * 1024,
        "VmRSS grew from {rss_before} KiB to {rss_end} KiB"
    );

    // Nothing was compiled, the second refusal came from memory, nothing was stored.
    let text = client.metrics().await.unwrap();
    let cache = |result: &str| {
        metric(
            &text,
            &format!(r#"aggregate_component_cache_total{{result="{result}"}}"#),
        )
    };
    assert_eq!(cache("compiled"), Some(0), "{text}");
    assert_eq!(cache("compile-failed"), Some(0), "{text}");
    assert_eq!(cache("refusal-remembered"), Some(1), "{text}");
    let list = client
        .admin(reqwest::Method::GET, "/admin/aggregates", None)
        .await
        .unwrap();
    assert_eq!(list["aggregates"], Value::Array(vec![]));
    let blobs = std::fs::read_dir(env.dir.path().join("host/components"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "a refused component was stored");
    let log = host.log();
    assert!(log.contains("refused before compiling"), "{log}");
    assert!(!log.contains("compiled component"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_import_or_export_and_are_remembered() {
    let (_env, host) = host(&[]);
    let client = host.client();

    let p = problem(
        client
            .deploy("counter", components::decide_without_command(1))
            .await,
        422,
        "component-rejected",
    );
    assert_eq!(
        (p["kind"].as_str(), p["export"].as_str()),
        (Some("world-mismatch"), Some("decide")),
        "{p}"
    );
    assert!(p["detail"].as_str().unwrap().contains("`decide`"), "{p}");

    let p = problem(
        client
            .deploy(
                "counter",
                components::importing("wasi:http/outgoing-handler@0.2.3", 1),
            )
            .await,
        422,
        "component-rejected",
    );
    assert_eq!(
        (p["kind"].as_str(), p["import"].as_str()),
        (
            Some("forbidden-import"),
            Some("wasi:http/outgoing-handler@0.2.3")
        ),
        "{p}"
    );

    // Imports and exports are right, a function body is not: only the compiler finds it. The
    // second upload of the same bytes is refused from memory without compiling again.
    let broken = components::fails_to_compile(1);
    let first = problem(
        client.deploy("counter", broken.clone()).await,
        422,
        "component-rejected",
    );
    assert_eq!(first["kind"], "compile", "{first}");
    let again = problem(
        client.deploy("counter", broken).await,
        422,
        "component-rejected",
    );
    assert_eq!(again["detail"], first["detail"]);
    let text = client.metrics().await.unwrap();
    let cache = |result: &str| {
        metric(
            &text,
            &format!(r#"aggregate_component_cache_total{{result="{result}"}}"#),
        )
    };
    assert_eq!(
        (cache("compile-failed"), cache("refusal-remembered")),
        (Some(1), Some(1)),
        "{text}"
    );
    assert_eq!(cache("compiled"), Some(0), "{text}");

    // The host still deploys and runs a good component.
    crate::support::deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    client
        .send(
            "bank-account",
            &new_id(),
            "open",
            &serde_json::json!({"owner": "Ada"}),
        )
        .await
        .unwrap();
}

/// Send `head` (a request without its body) and read the answer: status, problem, time taken.
fn headers_only(base: &str, head: &str) -> (u16, Value, Duration) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let (status, body) = loop {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("no answer within 10 s ({e}); got {got:?}"));
        assert!(
            n > 0,
            "connection closed without a full answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("the answer has a Content-Length");
        if body.len() >= length {
            let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
            break (status, serde_json::from_str(&body[..length]).unwrap());
        }
    };
    (status, body, started.elapsed())
}

#[test]
fn a_content_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let (_env, host) = host(&[]);
    // 10 GiB announced, nothing sent: the answer must not wait for the body.
    let (status, p, upload_took) = headers_only(
        &host.admin,
        &format!(
            "PUT /admin/aggregates/bank-account/component HTTP/1.1\r\nHost: test\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/wasm\r\n\
             Content-Length: 10737418240\r\n\r\n"
        ),
    );
    assert_eq!(status, 413, "{p}");
    assert_eq!(p["type"], "/problems/payload-too-large", "{p}");
    assert_eq!(p["limit"], 64 << 20, "{p}");
    let (status, p, command_took) = headers_only(
        &host.gateway,
        &format!(
            "POST /aggregates/bank-account/{}/commands/open HTTP/1.1\r\nHost: test\r\n\
             Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n",
            new_id()
        ),
    );
    assert_eq!(status, 413, "{p}");
    assert_eq!(p["type"], "/problems/payload-too-large", "{p}");
    assert_eq!(p["limit"], 1 << 20, "{p}");
    eprintln!(
        "MEASURED 413 on Content-Length alone: upload {} ms, command {} ms",
        upload_took.as_millis(),
        command_took.as_millis()
    );
    // The BODY_TIMEOUT the host would otherwise wait for is a minute.
    assert!(upload_took < Duration::from_secs(2), "{upload_took:?}");
    assert!(command_took < Duration::from_secs(2), "{command_took:?}");
}
