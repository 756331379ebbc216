//! Runtime benchmark (a `--release` bench binary, not a timed test): for each guest component,
//! compile time, precompiled-artifact load time, decide+apply per command on a warm pooled
//! instance and on a fresh instance, and — for Rust — the same aggregate compiled natively with the
//! same JSON in and out.
//!
//! Run: `cargo bench -p aggregate-host --bench runtime`. Prints a markdown table for BENCHMARKS.md.

use std::path::Path;
use std::time::{Duration, Instant};

use aggregate_host::runtime::{Decision, InstanceKey, Isolation, Limits, Runtime, RuntimeConfig};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, Command, CommandId, CommandMetadata, ComponentHash,
    Json, TenantId,
};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn command(target: &AggregateRef) -> Command {
    Command {
        command_id: CommandId::generate(),
        target: target.clone(),
        command_type: "deposit".into(),
        payload: Json::parse(r#"{"amount":5}"#).unwrap(),
        metadata: CommandMetadata::default(),
        received_at: chrono::Utc::now(),
    }
}

/// One decide + apply, the per-command work of the service on a hot aggregate.
fn decide_apply(
    rt: &Runtime,
    key: &InstanceKey,
    limits: &Limits,
    iso: Isolation,
    state: &Json,
    cmd: &Command,
) -> Json {
    rt.with_instance(key, limits, iso, |g| {
        let Decision::Accepted(events) = g.decide(state, cmd)? else {
            panic!("deposit refused")
        };
        g.apply(state, events.iter().map(|e| e.data()))
    })
    .expect("decide+apply")
}

struct Row {
    guest: String,
    size: usize,
    compile: Duration,
    load: Duration,
    warm: Duration,
    fresh: Duration,
}

fn bench_component(name: &str, path: &Path) -> (Row, Json) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    // compile: a fresh runtime with no artifact cache each time
    // Three compiles for small components, one for the multi-megabyte Go/JS/Python ones.
    let runs = if bytes.len() > 2 << 20 { 1 } else { 3 };
    let compile = median(
        (0..runs)
            .map(|_| {
                let rt = Runtime::new(RuntimeConfig::default()).unwrap();
                let t = Instant::now();
                rt.load(&bytes).unwrap();
                t.elapsed()
            })
            .collect(),
    );
    // precompiled load: the artifact is on disk, a new runtime (new process, in effect) loads it
    let dir = tempfile::tempdir().unwrap();
    let cfg = RuntimeConfig {
        artifact_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    Runtime::new(cfg.clone()).unwrap().load(&bytes).unwrap();
    let load = median(
        (0..10)
            .map(|_| {
                let rt = Runtime::new(cfg.clone()).unwrap();
                let t = Instant::now();
                rt.load(&bytes).unwrap();
                let el = t.elapsed();
                assert_eq!(
                    rt.stats().compiles,
                    0,
                    "must load the artifact, not compile"
                );
                el
            })
            .collect(),
    );

    let rt = Runtime::new(cfg).unwrap();
    let (hash, _) = rt.load(&bytes).unwrap();
    let target = AggregateRef {
        tenant: TenantId::new("bench").unwrap(),
        aggregate_type: AggregateType::new("bank-account").unwrap(),
        aggregate_id: AggregateId::generate(),
    };
    let key = InstanceKey {
        tenant: target.tenant.clone(),
        aggregate_type: target.aggregate_type.clone(),
        component: hash,
    };
    // Room for the larger guest runtimes (SpiderMonkey, CPython, Go); same for every row.
    let limits = Limits {
        max_calls_per_instance: u64::MAX,
        max_memory_bytes: 128 << 20,
        fuel: 2_000_000_000,
        timeout_ms: 10_000,
        ..Limits::default()
    };
    let state = open_account(&rt, &key, &limits, &target);
    let cmd = command(&target);

    let n = 20_000;
    for _ in 0..500 {
        decide_apply(&rt, &key, &limits, Isolation::Pooled, &state, &cmd);
    }
    let t = Instant::now();
    for _ in 0..n {
        decide_apply(&rt, &key, &limits, Isolation::Pooled, &state, &cmd);
    }
    let warm = t.elapsed() / n;

    let m = if bytes.len() > 2 << 20 { 300 } else { 2_000 };
    let t = Instant::now();
    for _ in 0..m {
        decide_apply(&rt, &key, &limits, Isolation::PerCommand, &state, &cmd);
    }
    let fresh = t.elapsed() / m;
    let _: &ComponentHash = &hash;
    (
        Row {
            guest: name.into(),
            size: bytes.len(),
            compile,
            load,
            warm,
            fresh,
        },
        state,
    )
}

fn open_account(rt: &Runtime, key: &InstanceKey, limits: &Limits, target: &AggregateRef) -> Json {
    rt.with_instance(key, limits, Isolation::Pooled, |g| {
        let s0 = g.init()?;
        let open = Command {
            command_type: "open".into(),
            payload: Json::parse(r#"{"owner":"bench"}"#).unwrap(),
            ..command(target)
        };
        let Decision::Accepted(events) = g.decide(&s0, &open)? else {
            panic!("open refused")
        };
        g.apply(&s0, events.iter().map(|e| e.data()))
    })
    .unwrap()
}

/// The same bank-account logic compiled natively, with the same JSON text in and out: the SDK's
/// codec is exactly what the component runs behind its exports.
fn native(state: &Json) -> Duration {
    use aggregate_sdk::codec;
    use bank_account::BankAccount;
    let round = |state: &str| {
        let events = codec::decide::<BankAccount>(state, "deposit", r#"{"amount":5}"#)
            .expect("deposit accepted");
        codec::apply::<BankAccount>(state, &events).expect("apply")
    };
    let n = 200_000;
    for _ in 0..1000 {
        std::hint::black_box(round(state.as_str()));
    }
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(round(std::hint::black_box(state.as_str())));
    }
    t.elapsed() / n
}

/// Per-call host overhead: the hostile guest's trivial `ok` command (no JSON work in the guest
/// beyond an empty object), decide + apply on a warm instance.
fn host_overhead() -> Duration {
    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let (hash, _) = rt
        .load(&std::fs::read(example_artifacts::HOSTILE).unwrap())
        .unwrap();
    let target = AggregateRef {
        tenant: TenantId::new("bench").unwrap(),
        aggregate_type: AggregateType::new("hostile").unwrap(),
        aggregate_id: AggregateId::generate(),
    };
    let key = InstanceKey {
        tenant: target.tenant.clone(),
        aggregate_type: target.aggregate_type.clone(),
        component: hash,
    };
    let limits = Limits {
        max_calls_per_instance: u64::MAX,
        ..Limits::default()
    };
    let state = Json::parse(r#"{"count":0}"#).unwrap();
    let cmd = Command {
        command_type: "ok".into(),
        payload: Json::parse("{}").unwrap(),
        ..command(&target)
    };
    let n: u32 = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    for _ in 0..500 {
        decide_apply(&rt, &key, &limits, Isolation::Pooled, &state, &cmd);
    }
    let t = Instant::now();
    for _ in 0..n {
        decide_apply(&rt, &key, &limits, Isolation::Pooled, &state, &cmd);
    }
    t.elapsed() / n
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments. `BENCH_ONLY=overhead` runs just the
    // host-overhead loop (for profiling with perf).
    if std::env::var("BENCH_ONLY").as_deref() == Ok("overhead") {
        println!("host overhead: {} µs", us(host_overhead()));
        return;
    }
    let mut rows = Vec::new();
    let (rust, state) = bench_component("Rust", Path::new(example_artifacts::BANK_ACCOUNT));
    rows.push(rust);
    // The other languages, built from source by scripts/build-guests.sh (skipped when absent).
    for (name, file) in [
        ("Go", "bank_account_go.wasm"),
        ("JavaScript", "bank_account_js.wasm"),
        ("Python", "bank_account_python.wasm"),
    ] {
        let path = Path::new(example_artifacts::POLYGLOT_DIR).join(file);
        if path.is_file() {
            rows.push(bench_component(name, &path).0);
        } else {
            eprintln!(
                "{name}: {} missing (run scripts/build-guests.sh)",
                path.display()
            );
        }
    }
    let native = native(&state);
    let overhead = host_overhead();

    println!("| guest | .wasm bytes | compile (ms) | precompiled load (ms) | warm decide+apply (µs) | fresh instance decide+apply (µs) | native decide+apply (µs) | warm ÷ native |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let native_col = if r.guest == "Rust" {
            us(native)
        } else {
            "–".into()
        };
        let ratio = if r.guest == "Rust" {
            format!("{:.1}×", r.warm.as_secs_f64() / native.as_secs_f64())
        } else {
            "–".into()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.guest,
            r.size,
            ms(r.compile),
            ms(r.load),
            us(r.warm),
            us(r.fresh),
            native_col,
            ratio
        );
    }
    println!();
    println!(
        "Host overhead per command (trivial guest `ok`, warm decide+apply): {} µs",
        us(overhead)
    );
}
