//! Upload cost benchmark (a bench binary, not a timed test), against the real
//! `aggregate-host serve` binary (release build, a child process) over loopback HTTP:
//!
//! 1. **refusal**: upload the 12 MB JavaScript component that imports `wasi:http`
//!    (`forbidden_http_js.wasm`, `scripts/build-guests.sh`) — time to the 422, server CPU, and
//!    the server's resident memory (`VmRSS` from `/proc`) before and after; then the same bytes
//!    four more times (refused from memory).
//! 2. **compile** (what that refusal used to cost, when the host compiled before looking at the
//!    imports): upload the JavaScript bank account of the same size, which is compiled.
//! 3. **compiles under load**: three different 12 MB JavaScript components uploaded at once while
//!    one writer keeps sending `deposit` commands to a Rust bank account — with
//!    `max_concurrent_compiles` 1 (the default) and 3: wall time until all are deployed, peak
//!    resident memory (`VmHWM`), and the commands' latency meanwhile.
//!
//! 4. **checks alone**, in this process: `runtime::check_component` (what every load does before
//!    compiling or loading an artifact) on each component, median of 5.
//!
//! `cargo bench -p aggregate-host --bench uploads` (needs `scripts/build-guests.sh` first).

#[path = "../tests/support/components.rs"]
mod components;
#[path = "support/serve.rs"]
mod serve;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_host::client::ClientError;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc status")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

use serve::{cpu_time, Serve as Server};

fn polyglot(file: &str) -> PathBuf {
    Path::new(example_artifacts::POLYGLOT_DIR).join(file)
}

async fn refusal_and_compile() {
    let forbidden = std::fs::read(polyglot("forbidden_http_js.wasm")).unwrap();
    let allowed = std::fs::read(polyglot("bank_account_js.wasm")).unwrap();
    let s = Server::start(&[]);
    // Warm the upload path with a small refused component.
    let _ = s
        .client
        .deploy("warm-up", components::decide_without_command(0))
        .await;
    println!("| upload | bytes | answer | time (ms) | server CPU (ms) | VmRSS before (MiB) | VmRSS after (MiB) |");
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: |");
    let row = |what: &str, bytes: usize, answer: String, t: Duration, cpu: Duration, a, b| {
        println!(
            "| {what} | {bytes} | {answer} | {:.1} | {} | {:.1} | {:.1} |",
            t.as_secs_f64() * 1e3,
            cpu.as_millis(),
            mib(a),
            mib(b)
        );
    };
    let answer = |r: Result<serde_json::Value, ClientError>| match r {
        Ok(v) => format!(
            "{} (version {})",
            if v["changed"] == true { 201 } else { 200 },
            v["version"]
        ),
        Err(ClientError::Problem { status, problem }) => {
            format!("{status} {}", problem["kind"].as_str().unwrap_or_default())
        }
        Err(e) => panic!("{e}"),
    };
    for attempt in 1..=5 {
        let (rss, cpu) = (status_kib(s.child.id(), "VmRSS:"), cpu_time(s.child.id()));
        let t = Instant::now();
        let r = s.client.deploy("bank-account", forbidden.clone()).await;
        let took = t.elapsed();
        let what = if attempt == 1 {
            "wasi:http JS, first".to_string()
        } else {
            format!("wasi:http JS, again ({attempt})")
        };
        row(
            &what,
            forbidden.len(),
            answer(r),
            took,
            cpu_time(s.child.id()) - cpu,
            rss,
            status_kib(s.child.id(), "VmRSS:"),
        );
    }
    let (rss, cpu) = (status_kib(s.child.id(), "VmRSS:"), cpu_time(s.child.id()));
    let t = Instant::now();
    let r = s.client.deploy("bank-account", allowed.clone()).await;
    row(
        "JS bank account (compiled)",
        allowed.len(),
        answer(r),
        t.elapsed(),
        cpu_time(s.child.id()) - cpu,
        rss,
        status_kib(s.child.id(), "VmRSS:"),
    );
}

async fn compiles_under_load(slots: usize) {
    let js = std::fs::read(polyglot("bank_account_js.wasm")).unwrap();
    let slots_text = slots.to_string();
    let s = Server::start(&[("AGGREGATE_MAX_CONCURRENT_COMPILES", slots_text.as_str())]);
    s.client
        .deploy(
            "bank-account",
            std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap(),
        )
        .await
        .expect("deploy");
    let id = aggregate_host::types::AggregateId::generate().to_string();
    s.client
        .send(
            "bank-account",
            &id,
            "open",
            &serde_json::json!({"owner": "bench"}),
        )
        .await
        .expect("open");
    let idle_rss = status_kib(s.child.id(), "VmRSS:");
    // The same writer for 5 s with no upload: the baseline.
    let mut idle = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let c = Instant::now();
        s.client
            .send(
                "bank-account",
                &id,
                "deposit",
                &serde_json::json!({"amount": 1}),
            )
            .await
            .expect("deposit");
        idle.push(c.elapsed());
    }
    let idle_rate = idle.len() as f64 / t.elapsed().as_secs_f64();
    idle.sort();
    let idle_p99 = idle[(idle.len() - 1) * 99 / 100].as_secs_f64() * 1e3;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop, id) = (s.client.clone(), stop.clone(), id.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                client
                    .send(
                        "bank-account",
                        &id,
                        "deposit",
                        &serde_json::json!({"amount": 1}),
                    )
                    .await
                    .expect("deposit");
                latencies.push(t.elapsed());
            }
            latencies
        })
    };
    let started = Instant::now();
    let uploads: Vec<_> = (0..3u64)
        .map(|salt| {
            let client = s.client.clone();
            let bytes = components::salted(&js, salt);
            tokio::spawn(async move {
                client
                    .deploy(&format!("js-{salt}"), bytes)
                    .await
                    .expect("deploy");
            })
        })
        .collect();
    for u in uploads {
        u.await.unwrap();
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut lat = writer.await.unwrap();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    println!(
        "| {slots} | {:.1} | {:.1} | {:.1} | {idle_rate:.0} / {idle_p99:.2} | {} | {:.1} | {:.2} | {:.2} | {:.1} |",
        wall.as_secs_f64(),
        mib(idle_rss),
        mib(status_kib(s.child.id(), "VmHWM:")),
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lat.last().unwrap().as_secs_f64() * 1e3,
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`; keep that instant.
    if !std::env::args().any(|a| a == "--bench") {
        println!("uploads bench: run with `cargo bench -p aggregate-host --bench uploads`");
        return;
    }
    for f in ["forbidden_http_js.wasm", "bank_account_js.wasm"] {
        assert!(
            polyglot(f).is_file(),
            "{} is missing: run scripts/build-guests.sh",
            polyglot(f).display()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(refusal_and_compile());
    println!();
    println!("| max_concurrent_compiles | 3 JS uploads, wall (s) | VmRSS idle (MiB) | VmHWM peak (MiB) | no upload: commands/s / p99 ms | commands meanwhile | commands/s | p50 ms | p99 ms | max ms |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for slots in [1, 3] {
        rt.block_on(compiles_under_load(slots));
    }
    println!();
    checks_alone();
}

fn checks_alone() {
    println!("| component | bytes | check (ms, median of 5) | outcome |");
    println!("| --- | ---: | ---: | --- |");
    let mut files: Vec<PathBuf> = std::fs::read_dir(example_artifacts::POLYGLOT_DIR)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
        .collect();
    files.sort();
    files.insert(0, PathBuf::from(example_artifacts::BANK_ACCOUNT));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let mut times = Vec::new();
        let mut outcome = String::new();
        for _ in 0..5 {
            let t = Instant::now();
            let r = aggregate_host::runtime::check_component(&bytes);
            times.push(t.elapsed());
            outcome = match r {
                Ok(_) => "passes".into(),
                Err(e) => e.kind().to_string(),
            };
        }
        times.sort();
        println!(
            "| {} | {} | {:.1} | {outcome} |",
            f.file_name().unwrap().to_string_lossy(),
            bytes.len(),
            times[2].as_secs_f64() * 1e3
        );
    }
}
