//! Guests in every language through the real host: the bank-account parity table
//! (`tests/parity/bank-account.yaml`) through the command service for Rust, Go, JavaScript and
//! Python; a 64 KiB-state stress on each; and each language's hostile guest stopped by its limits
//! with the host still healthy.
//!
//! The Go, JS and Python components are built from source by `scripts/build-guests.sh` (the test
//! command runs it first) into `target/guests/polyglot/`. When one is missing the test fails
//! under CI and is skipped with a notice otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aggregate_host::registry::Registry;
use aggregate_host::runtime::{
    Decision, InstanceKey, Isolation, Limits, Runtime, RuntimeConfig, RuntimeError,
};
use aggregate_host::service::{CommandService, ServiceConfig, ServiceError, Submit};
use aggregate_host::store::embedded::EmbeddedLog;
use aggregate_host::store::snapshots::SnapshotStore;
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, Command, CommandId, CommandMetadata, Json, TenantId,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// A guest language and its components.
struct Lang {
    name: &'static str,
    bank: PathBuf,
    hostile: Option<PathBuf>,
}

fn polyglot(file: &str) -> PathBuf {
    Path::new(example_artifacts::POLYGLOT_DIR).join(file)
}

/// Every language whose components exist; a missing one fails under CI, else is skipped.
fn languages() -> Vec<Lang> {
    let mut langs = vec![Lang {
        name: "rust",
        bank: PathBuf::from(example_artifacts::BANK_ACCOUNT),
        hostile: None,
    }];
    for name in ["go", "js", "python"] {
        let bank = polyglot(&format!("bank_account_{name}.wasm"));
        let hostile = polyglot(&format!("hostile_{name}.wasm"));
        if !bank.is_file() || !hostile.is_file() {
            let msg = format!(
                "the {name} components are missing ({} / {}); build them with \
                 scripts/build-guests.sh",
                bank.display(),
                hostile.display()
            );
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED {name}: {msg}");
            continue;
        }
        langs.push(Lang {
            name,
            bank,
            hostile: Some(hostile),
        });
    }
    langs
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// One precompiled-artifact directory for the whole test binary: the multi-megabyte JS and
/// Python components take seconds to compile, so each is compiled once and then loaded.
fn artifacts() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn runtime() -> Arc<Runtime> {
    Arc::new(
        Runtime::new(RuntimeConfig {
            artifact_dir: Some(artifacts().to_path_buf()),
            max_warm_instances: 16,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    )
}

/// Limits every language's bank account runs within (the larger guests need more memory and
/// fuel than Rust; these are the defaults an operator would set for them).
fn roomy() -> Limits {
    Limits {
        fuel: 2_000_000_000,
        max_memory_bytes: 128 << 20,
        timeout_ms: 10_000,
        ..Limits::default()
    }
}

// ---- the parity table ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    init: Value,
    scenarios: Vec<Scenario>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    steps: Vec<Step>,
    state: Value,
    version: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    command: String,
    payload: Value,
    #[serde(default)]
    events: Option<Vec<ExpectedEvent>>,
    #[serde(default)]
    rejected: Option<String>,
    #[serde(default)]
    invalid: Option<String>,
    #[serde(default)]
    invalid_containing: Option<Vec<String>>,
}

#[derive(Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct ExpectedEvent {
    #[serde(rename = "type")]
    event_type: String,
    schema_version: u32,
    payload: Value,
}

fn table() -> Table {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/parity/bank-account.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let table: Table = serde_yaml::from_str(&text).unwrap();
    for s in &table.scenarios {
        for step in &s.steps {
            let expectations = [
                step.events.is_some(),
                step.rejected.is_some(),
                step.invalid.is_some(),
                step.invalid_containing.is_some(),
            ];
            assert_eq!(
                expectations.iter().filter(|x| **x).count(),
                1,
                "{}: step `{}` must expect exactly one outcome",
                s.name,
                step.command
            );
        }
    }
    table
}

/// What one step gave, in a form comparable across languages (the wording of decoding errors
/// is each language's own, so only their kind is kept).
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Events(Vec<(String, u32, Value)>),
    Rejected(String),
    Invalid(String),
    InvalidDecoding,
}

struct Host {
    service: Arc<CommandService>,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    _dir: tempfile::TempDir,
}

fn host(component: &Path) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let registry = Arc::new(
        Registry::open(
            dir.path(),
            &dir.path().join("manifest.yaml"),
            runtime.clone(),
            64 << 20,
        )
        .unwrap(),
    );
    registry
        .deploy(&bank(), &read(component), Some(roomy()))
        .unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path().join("events")).unwrap());
    let snapshots = SnapshotStore::open(dir.path().join("snapshots")).unwrap();
    let service = Arc::new(CommandService::new(
        registry.clone(),
        runtime.clone(),
        log,
        snapshots,
        ServiceConfig::default(),
    ));
    Host {
        service,
        runtime,
        registry,
        _dir: dir,
    }
}

fn bank() -> AggregateType {
    AggregateType::new("bank-account").unwrap()
}

/// Runs the whole table on `lang`, asserting every expectation; returns the transcript.
async fn run_table(lang: &Lang, table: &Table) -> Vec<(Vec<Outcome>, Value, u64)> {
    let h = host(&lang.bank);
    let tenant = TenantId::new("parity").unwrap();
    let active = h.registry.resolve(&bank()).unwrap();
    let key = InstanceKey {
        tenant: tenant.clone(),
        aggregate_type: bank(),
        component: active.component,
    };
    let init = h
        .runtime
        .with_instance(&key, &active.limits, active.isolation, |g| g.init())
        .unwrap();
    assert_eq!(init.to_value(), table.init, "{}: init", lang.name);

    let mut transcript = Vec::new();
    for scenario in &table.scenarios {
        let target = AggregateRef {
            tenant: tenant.clone(),
            aggregate_type: bank(),
            aggregate_id: AggregateId::generate(),
        };
        let mut outcomes = Vec::new();
        for step in &scenario.steps {
            let at = format!(
                "{} / {}: {} {}",
                lang.name, scenario.name, step.command, step.payload
            );
            let result = h
                .service
                .submit(
                    &tenant,
                    Submit {
                        command_id: None,
                        target: target.clone(),
                        command_type: step.command.clone(),
                        payload: Json::from_value(&step.payload),
                        metadata: CommandMetadata::default(),
                    },
                )
                .await;
            let outcome = match result {
                Ok(o) => Outcome::Events(
                    o.events
                        .iter()
                        .map(|e| (e.event_type.clone(), e.schema_version, e.payload.to_value()))
                        .collect(),
                ),
                Err(ServiceError::Rejected(m)) => Outcome::Rejected(m),
                Err(ServiceError::InvalidCommand(m)) => Outcome::Invalid(m),
                Err(e) => panic!("{at}: unexpected error {e:?}"),
            };
            if let Some(expected) = &step.events {
                let expected: Vec<_> = expected
                    .iter()
                    .map(|e| (e.event_type.clone(), e.schema_version, e.payload.clone()))
                    .collect();
                assert_eq!(outcome, Outcome::Events(expected), "{at}");
            } else if let Some(m) = &step.rejected {
                assert_eq!(outcome, Outcome::Rejected(m.clone()), "{at}");
            } else if let Some(m) = &step.invalid {
                assert_eq!(outcome, Outcome::Invalid(m.clone()), "{at}");
            } else if let Some(needles) = &step.invalid_containing {
                let Outcome::Invalid(m) = &outcome else {
                    panic!("{at}: expected invalid, got {outcome:?}");
                };
                for n in needles {
                    assert!(m.contains(n.as_str()), "{at}: `{m}` lacks `{n}`");
                }
            }
            outcomes.push(match outcome {
                Outcome::Invalid(_) if step.invalid_containing.is_some() => {
                    Outcome::InvalidDecoding
                }
                o => o,
            });
        }
        let state = h.service.state(&tenant, &target).await.unwrap();
        assert_eq!(
            state.state.to_value(),
            scenario.state,
            "{}: {}: final state",
            lang.name,
            scenario.name
        );
        assert_eq!(
            state.version.0, scenario.version,
            "{}: {}: version",
            lang.name, scenario.name
        );
        transcript.push((outcomes, state.state.to_value(), state.version.0));
    }
    transcript
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parity_table_passes_identically_in_every_language() {
    let table = table();
    let langs = languages();
    let mut reference = None;
    for lang in &langs {
        let transcript = run_table(lang, &table).await;
        match &reference {
            None => reference = Some(transcript),
            Some(r) => assert_eq!(&transcript, r, "{} differs from rust", lang.name),
        }
        eprintln!(
            "parity: {} passes {} scenarios",
            lang.name,
            table.scenarios.len()
        );
    }
}

// ---- stress ----

fn command(key: &InstanceKey, command_type: &str, payload: Value) -> Command {
    Command {
        command_id: CommandId::generate(),
        target: AggregateRef {
            tenant: key.tenant.clone(),
            aggregate_type: key.aggregate_type.clone(),
            aggregate_id: AggregateId::generate(),
        },
        command_type: command_type.into(),
        payload: Json::from_value(&payload),
        metadata: CommandMetadata::default(),
        received_at: chrono::Utc::now(),
    }
}

/// 20,000 decides against a state of 64 KiB (a long owner name) on a warm instance: every one
/// accepted, none traps (the Go SDK's GC-in-realloc fix is what this guards).
fn stress(lang: &Lang) {
    let rt = runtime();
    let (hash, _) = rt.load(&read(&lang.bank)).unwrap();
    let key = InstanceKey {
        tenant: TenantId::new("stress").unwrap(),
        aggregate_type: bank(),
        component: hash,
    };
    let state = Json::from_value(&json!({
        "opened": true,
        "owner": "x".repeat(64 << 10),
        "balance": 1,
    }));
    assert!(state.as_str().len() > 64 << 10);
    let limits = roomy();
    let cmd = command(&key, "deposit", json!({"amount": 3}));
    let before = rt.stats();
    for i in 0..20_000 {
        let d = rt
            .with_instance(&key, &limits, Isolation::Pooled, |g| g.decide(&state, &cmd))
            .unwrap_or_else(|e| panic!("{}: decide #{i} failed: {e}", lang.name));
        match d {
            Decision::Accepted(events) if events.len() == 1 => {
                assert_eq!(events[0].event_type, "deposited");
                assert_eq!(events[0].payload.to_value(), json!({"amount": 3}));
            }
            other => panic!("{}: decide #{i}: {other:?}", lang.name),
        }
    }
    // Apply one batch of 1,000 events onto the big state too.
    let events: Vec<_> = (0..1000)
        .map(|_| aggregate_host::types::EventData {
            event_type: "deposited",
            schema_version: 1,
            payload: r#"{"amount":2}"#,
        })
        .collect();
    let next = rt
        .with_instance(&key, &limits, Isolation::Pooled, |g| {
            g.apply(&state, events.iter().copied())
        })
        .unwrap();
    assert_eq!(next.to_value()["balance"], 2001, "{}", lang.name);
    let after = rt.stats();
    assert_eq!(
        after.discards, before.discards,
        "{}: no instance failed",
        lang.name
    );
    assert!(
        after.instantiations - before.instantiations <= 3,
        "{}: warm instances were reused ({:?})",
        lang.name,
        after
    );
}

#[test]
fn twenty_thousand_decides_with_a_64_kib_state_in_every_language() {
    for lang in languages() {
        let started = std::time::Instant::now();
        stress(&lang);
        eprintln!("stress: {} done in {:?}", lang.name, started.elapsed());
    }
}

// ---- hostile guests ----

fn hostile_key(rt: &Runtime, path: &Path, tenant: &str) -> InstanceKey {
    let (hash, _) = rt.load(&read(path)).unwrap();
    InstanceKey {
        tenant: TenantId::new(tenant).unwrap(),
        aggregate_type: AggregateType::new("hostile").unwrap(),
        component: hash,
    }
}

fn hostile_decide(
    rt: &Runtime,
    key: &InstanceKey,
    limits: &Limits,
    command_type: &str,
) -> Result<Decision, RuntimeError> {
    let state = rt
        .with_instance(key, &roomy(), Isolation::Pooled, |g| g.init())
        .unwrap();
    rt.with_instance(key, limits, Isolation::Pooled, |g| {
        g.decide(&state, &command(key, command_type, json!({})))
    })
}

/// The language's bank account still runs on this runtime after a hostile call.
fn assert_healthy(rt: &Runtime, lang: &Lang) {
    let (hash, _) = rt.load(&read(&lang.bank)).unwrap();
    let key = InstanceKey {
        tenant: TenantId::new("healthy").unwrap(),
        aggregate_type: bank(),
        component: hash,
    };
    let limits = roomy();
    let s0 = rt
        .with_instance(&key, &limits, Isolation::Pooled, |g| g.init())
        .unwrap();
    let d = rt
        .with_instance(&key, &limits, Isolation::Pooled, |g| {
            g.decide(&s0, &command(&key, "open", json!({"owner": "ann"})))
        })
        .unwrap();
    assert!(
        matches!(&d, Decision::Accepted(e) if e.len() == 1 && e[0].event_type == "opened"),
        "{}: {d:?}",
        lang.name
    );
}

/// Runs `command_type` on a fresh warm instance and checks the error, that the instance was
/// discarded, and that the host still serves.
fn check_hostile(
    lang: &Lang,
    command_type: &str,
    limits: Limits,
    expect: impl Fn(&RuntimeError) -> bool,
) {
    let rt = runtime();
    let key = hostile_key(&rt, lang.hostile.as_ref().unwrap(), "t1");
    // Warm an instance first, so the discard is observable.
    let d = hostile_decide(&rt, &key, &roomy(), "ok").unwrap();
    assert!(
        matches!(d, Decision::Accepted(_)),
        "{}: ok: {d:?}",
        lang.name
    );
    assert_eq!(rt.warm_instances(), 1);
    let discards = rt.stats().discards;
    let e = hostile_decide(&rt, &key, &limits, command_type).unwrap_err();
    assert!(expect(&e), "{}: {command_type}: {e:?}", lang.name);
    assert_eq!(
        rt.stats().discards,
        discards + 1,
        "{}: {command_type}: the instance was discarded",
        lang.name
    );
    assert_eq!(rt.warm_instances(), 0, "{}: {command_type}", lang.name);
    // The same component still works on a fresh instance, and so does the bank account.
    let d = hostile_decide(&rt, &key, &roomy(), "ok").unwrap();
    assert!(
        matches!(d, Decision::Accepted(_)),
        "{}: after {command_type}",
        lang.name
    );
    assert_healthy(&rt, lang);
}

fn polyglot_langs() -> Vec<Lang> {
    languages()
        .into_iter()
        .filter(|l| l.hostile.is_some())
        .collect()
}

#[test]
fn infinite_loops_are_stopped_by_fuel_in_every_language() {
    for lang in polyglot_langs() {
        let limits = Limits {
            fuel: 50_000_000,
            timeout_ms: 60_000,
            ..roomy()
        };
        check_hostile(&lang, "spin", limits, |e| {
            matches!(e, RuntimeError::FuelExhausted { limit: 50_000_000 })
        });
    }
}

#[test]
fn infinite_loops_are_stopped_by_the_timeout_in_every_language() {
    for lang in polyglot_langs() {
        let limits = Limits {
            fuel: u64::MAX / 4,
            timeout_ms: 200,
            ..roomy()
        };
        check_hostile(&lang, "spin", limits, |e| {
            matches!(e, RuntimeError::Timeout { limit_ms: 200 })
        });
    }
}

#[test]
fn memory_bombs_are_stopped_by_the_memory_limit_in_every_language() {
    for lang in polyglot_langs() {
        let limits = Limits {
            fuel: u64::MAX / 4,
            timeout_ms: 60_000,
            max_memory_bytes: 96 << 20,
            ..roomy()
        };
        // JavaScript reports out-of-memory as an error result rather than a trap; the host
        // still classifies it as the memory limit (its limiter saw the refused growth) and
        // discards the instance.
        check_hostile(
            &lang,
            "hog",
            limits,
            |e| matches!(e, RuntimeError::MemoryLimit { limit } if *limit == 96 << 20),
        );
    }
}

// ---- checks made before compiling ----

/// Every language's components pass the checks `load` makes before compiling (they import
/// only linked WASI and export the contract's types), and the JavaScript component built with
/// componentize-js's `http` feature on is refused by them, naming `wasi:http`, in well under a
/// second and without compiling.
#[test]
fn every_language_passes_the_checks_made_before_compiling_and_wasi_http_does_not() {
    use aggregate_host::runtime::check_component;
    for lang in languages() {
        for path in std::iter::once(&lang.bank).chain(lang.hostile.as_ref()) {
            check_component(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", lang.name));
        }
    }
    let http = polyglot("forbidden_http_js.wasm");
    if !http.is_file() {
        let msg = format!(
            "{} is missing; build it with scripts/build-guests.sh",
            http.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED wasi:http: {msg}");
        return;
    }
    let bytes = read(&http);
    let started = std::time::Instant::now();
    let e = check_component(&bytes).unwrap_err();
    let took = started.elapsed();
    match &e {
        RuntimeError::ForbiddenImport { import, reason, .. } => {
            assert!(import.starts_with("wasi:http/"), "{import}");
            assert!(reason.contains("wasi:http is not provided"), "{reason}");
        }
        other => panic!("expected ForbiddenImport, got {other:?}"),
    }
    assert!(
        took < std::time::Duration::from_secs(1),
        "{} MB refused in {took:?}",
        bytes.len() / 1_000_000
    );
}

// ---- reproducible builds ----

/// The same Go source built from two different folders gives byte-identical components (no
/// build paths inside), so a content-addressed deploy of an unchanged aggregate is a no-op.
#[test]
fn a_go_component_does_not_depend_on_where_it_was_built() {
    use aggregate_host::guest::{build, GuestError, Sdk};
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let sdk = Sdk::locate(Some(&repo.join("guest-sdk")), &repo).unwrap();
    let source = repo.join("example-aggregates/bank-account-go");
    let work = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for name in ["first", "elsewhere/second"] {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["main.go", "go.mod"] {
            let text = std::fs::read_to_string(source.join(file)).unwrap();
            let text = text.replace(
                "../../guest-sdk/go",
                sdk.dir(aggregate_host::guest::Language::Go)
                    .to_str()
                    .unwrap(),
            );
            std::fs::write(dir.join(file), text).unwrap();
        }
        let out = dir.join("out.wasm");
        match build(&sdk, &dir, &out) {
            Ok(_) => {}
            Err(GuestError::ToolMissing { .. }) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: Go is not installed (scripts/toolchains.sh)");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        let bytes = read(&out);
        assert!(
            !bytes
                .windows(work.path().as_os_str().len())
                .any(|w| w == work.path().as_os_str().as_encoded_bytes()),
            "the build path is inside the component"
        );
        hashes.push(runtime().load(&bytes).unwrap().0);
    }
    assert_eq!(hashes[0], hashes[1]);
}
