//! The sandbox, end to end through real components: bank-account behaviour, every limit, hostile
//! guests, the artifact cache, and instance isolation. Assertions are on typed errors and on the
//! runtime's counters, never on time.

use std::sync::Arc;

use aggregate_host::registry::{Registry, RegistryError};
use aggregate_host::runtime::{
    Decision, InstanceKey, Isolation, Limits, Runtime, RuntimeConfig, RuntimeError,
};
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, Command, CommandId, CommandMetadata, ComponentHash,
    Json, TenantId,
};
use example_artifacts::{BANK_ACCOUNT, FORBIDDEN_IMPORT, HOSTILE};

#[path = "support/components.rs"]
mod components;

fn bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_warm_instances: 16,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn runtime_with_artifacts(dir: &std::path::Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        artifact_dir: Some(dir.to_path_buf()),
        max_warm_instances: 16,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

fn key(tenant: &str, ty: &str, component: ComponentHash) -> InstanceKey {
    InstanceKey {
        tenant: TenantId::new(tenant).unwrap(),
        aggregate_type: AggregateType::new(ty).unwrap(),
        component,
    }
}

fn command(k: &InstanceKey, command_type: &str, payload: serde_json::Value) -> Command {
    Command {
        command_id: CommandId::generate(),
        target: AggregateRef {
            tenant: k.tenant.clone(),
            aggregate_type: k.aggregate_type.clone(),
            aggregate_id: AggregateId::generate(),
        },
        command_type: command_type.to_string(),
        payload: Json::from_value(&payload),
        metadata: CommandMetadata::default(),
        received_at: chrono::Utc::now(),
    }
}

/// Decide, then apply the accepted events; returns the decision and the new state.
fn run(
    rt: &Runtime,
    k: &InstanceKey,
    limits: &Limits,
    state: &Json,
    cmd: &Command,
) -> Result<(Decision, Json), RuntimeError> {
    rt.with_instance(k, limits, Isolation::Pooled, |g| {
        let d = g.decide(state, cmd)?;
        let next = match &d {
            Decision::Accepted(events) => g.apply(state, events.iter().map(|e| e.data()))?,
            _ => state.clone(),
        };
        Ok((d, next))
    })
}

fn init(rt: &Runtime, k: &InstanceKey, limits: &Limits) -> Json {
    rt.with_instance(k, limits, Isolation::Pooled, |g| g.init())
        .unwrap()
}

/// Bank-account still runs correctly on this runtime: the proof after every hostile case.
fn assert_bank_account_works(rt: &Runtime) {
    let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
    let k = key("healthy", "bank-account", hash);
    let limits = Limits::default();
    let s0 = init(rt, &k, &limits);
    let (d, s1) = run(
        rt,
        &k,
        &limits,
        &s0,
        &command(&k, "open", serde_json::json!({"owner": "ann"})),
    )
    .unwrap();
    assert!(
        matches!(d, Decision::Accepted(ref e) if e.len() == 1),
        "{d:?}"
    );
    let (_, s2) = run(
        rt,
        &k,
        &limits,
        &s1,
        &command(&k, "deposit", serde_json::json!({"amount": 7})),
    )
    .unwrap();
    assert_eq!(s2.to_value()["balance"], 7, "{s2}");
}

mod bank_account {
    use super::*;

    #[test]
    fn decide_and_apply_give_the_right_events_and_state() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        let k = key("t1", "bank-account", hash);
        let limits = Limits::default();
        let s0 = init(&rt, &k, &limits);
        assert_eq!(s0.to_value()["balance"], 0);

        let (d, s1) = run(
            &rt,
            &k,
            &limits,
            &s0,
            &command(&k, "open", serde_json::json!({"owner": "ann"})),
        )
        .unwrap();
        let Decision::Accepted(events) = d else {
            panic!("open refused: {d:?}")
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "opened");
        assert_eq!(events[0].schema_version, 1);

        let (d, s2) = run(
            &rt,
            &k,
            &limits,
            &s1,
            &command(&k, "deposit", serde_json::json!({"amount": 100})),
        )
        .unwrap();
        let Decision::Accepted(events) = d else {
            panic!("deposit refused: {d:?}")
        };
        assert_eq!(events[0].event_type, "deposited");
        assert_eq!(events[0].payload.to_value()["amount"], 100);
        assert_eq!(s2.to_value()["balance"], 100);

        let (d, s3) = run(
            &rt,
            &k,
            &limits,
            &s2,
            &command(&k, "withdraw", serde_json::json!({"amount": 30})),
        )
        .unwrap();
        assert!(
            matches!(d, Decision::Accepted(ref e) if e[0].event_type == "withdrawn"),
            "{d:?}"
        );
        assert_eq!(s3.to_value()["balance"], 70);

        let (d, s4) = run(
            &rt,
            &k,
            &limits,
            &s3,
            &command(&k, "withdraw", serde_json::json!({"amount": 71})),
        )
        .unwrap();
        match d {
            Decision::Rejected(m) => assert!(m.contains("insufficient funds"), "{m}"),
            other => panic!("overdraft accepted: {other:?}"),
        }
        assert_eq!(s4, s3, "a rejected command changes nothing");

        let (d, _) = run(
            &rt,
            &k,
            &limits,
            &s3,
            &command(&k, "deposit", serde_json::json!({"amount": -5})),
        )
        .unwrap();
        assert!(
            matches!(d, Decision::Invalid(_)),
            "negative amount must be invalid: {d:?}"
        );
        let (d, _) = run(
            &rt,
            &k,
            &limits,
            &s3,
            &command(&k, "deposit", serde_json::json!({"amount": "lots"})),
        )
        .unwrap();
        assert!(
            matches!(d, Decision::Invalid(_)),
            "a string amount must be invalid: {d:?}"
        );
    }

    #[test]
    fn apply_folds_a_batch_in_one_call() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        let k = key("t1", "bank-account", hash);
        let limits = Limits::default();
        let s0 = init(&rt, &k, &limits);
        let events: Vec<aggregate_host::types::NewEvent> = [
            ("opened", serde_json::json!({"owner": "bo"})),
            ("deposited", serde_json::json!({"amount": 50})),
            ("withdrawn", serde_json::json!({"amount": 20})),
            ("deposited", serde_json::json!({"amount": 5})),
        ]
        .into_iter()
        .map(|(t, p)| aggregate_host::types::NewEvent {
            event_type: t.into(),
            schema_version: 1,
            payload: Json::from_value(&p),
        })
        .collect();
        let state = rt
            .with_instance(&k, &limits, Isolation::Pooled, |g| {
                let before = g.calls();
                let s = g.apply(&s0, events.iter().map(|e| e.data()))?;
                assert_eq!(g.calls(), before + 1, "one guest call for the whole batch");
                Ok(s)
            })
            .unwrap();
        assert_eq!(state.to_value()["balance"], 35);
    }

    #[test]
    fn fuel_used_is_reported() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        let k = key("t1", "bank-account", hash);
        let limits = Limits::default();
        let s0 = init(&rt, &k, &limits);
        let used = rt
            .with_instance(&k, &limits, Isolation::Pooled, |g| {
                g.decide(&s0, &command(&k, "open", serde_json::json!({"owner": "x"})))?;
                Ok(g.fuel_used())
            })
            .unwrap();
        assert!(used > 0 && used < limits.fuel, "fuel used {used}");
    }
}

mod hostile {
    use super::*;

    fn hostile(rt: &Runtime, tenant: &str) -> InstanceKey {
        let (hash, _) = rt.load(&bytes(HOSTILE)).unwrap();
        key(tenant, "hostile", hash)
    }

    fn decide(
        rt: &Runtime,
        k: &InstanceKey,
        limits: &Limits,
        ty: &str,
        payload: serde_json::Value,
    ) -> Result<Decision, RuntimeError> {
        let state = init(rt, k, &Limits::default());
        rt.with_instance(k, limits, Isolation::Pooled, |g| {
            g.decide(&state, &command(k, ty, payload))
        })
    }

    #[test]
    fn infinite_loop_is_stopped_by_fuel() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let limits = Limits {
            fuel: 20_000_000,
            timeout_ms: 60_000,
            ..Limits::default()
        };
        let e = decide(&rt, &k, &limits, "spin", serde_json::json!({})).unwrap_err();
        assert!(
            matches!(e, RuntimeError::FuelExhausted { limit: 20_000_000 }),
            "{e:?}"
        );
        assert!(e.is_limit_breach());
        assert_bank_account_works(&rt);
    }

    #[test]
    fn infinite_loop_is_stopped_by_the_timeout() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let limits = Limits {
            fuel: u64::MAX / 4,
            timeout_ms: 150,
            ..Limits::default()
        };
        let e = decide(&rt, &k, &limits, "spin", serde_json::json!({})).unwrap_err();
        assert!(
            matches!(e, RuntimeError::Timeout { limit_ms: 150 }),
            "{e:?}"
        );
        assert_bank_account_works(&rt);
    }

    #[test]
    fn memory_bomb_is_stopped_by_the_memory_limit() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let limits = Limits {
            fuel: u64::MAX / 4,
            timeout_ms: 30_000,
            max_memory_bytes: 32 << 20,
            ..Limits::default()
        };
        let e = decide(&rt, &k, &limits, "hog", serde_json::json!({})).unwrap_err();
        assert!(
            matches!(e, RuntimeError::MemoryLimit { limit } if limit == 32 << 20),
            "{e:?}"
        );
        assert_bank_account_works(&rt);
    }

    #[test]
    fn panic_is_a_typed_error_with_the_message() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let e = decide(&rt, &k, &Limits::default(), "panic", serde_json::json!({})).unwrap_err();
        match &e {
            RuntimeError::Panicked { message } => assert!(message.contains("boom"), "{message}"),
            other => panic!("expected Panicked, got {other:?}"),
        }
        assert_bank_account_works(&rt);
    }

    #[test]
    fn invalid_json_output_is_a_typed_error() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let e = decide(
            &rt,
            &k,
            &Limits::default(),
            "bad-json",
            serde_json::json!({}),
        )
        .unwrap_err();
        match &e {
            RuntimeError::InvalidOutput(m) => assert!(m.contains("not JSON"), "{m}"),
            other => panic!("expected InvalidOutput, got {other:?}"),
        }
        assert_bank_account_works(&rt);
    }

    #[test]
    fn too_many_events_and_too_many_bytes_are_limit_breaches() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let limits = Limits {
            max_events: 5,
            max_output_bytes: 10_000,
            ..Limits::default()
        };
        let e = decide(
            &rt,
            &k,
            &limits,
            "many-events",
            serde_json::json!({"count": 6}),
        )
        .unwrap_err();
        assert!(
            matches!(e, RuntimeError::TooManyEvents { count: 6, limit: 5 }),
            "{e:?}"
        );
        let ok = decide(
            &rt,
            &k,
            &limits,
            "many-events",
            serde_json::json!({"count": 5}),
        )
        .unwrap();
        assert!(
            matches!(ok, Decision::Accepted(ref ev) if ev.len() == 5),
            "{ok:?}"
        );
        let e = decide(
            &rt,
            &k,
            &limits,
            "huge-output",
            serde_json::json!({"bytes": 20_000}),
        )
        .unwrap_err();
        assert!(
            matches!(e, RuntimeError::OutputTooLarge { limit: 10_000, .. }),
            "{e:?}"
        );
        assert_bank_account_works(&rt);
    }

    #[test]
    fn stderr_is_captured_and_bounded_without_failing_the_guest() {
        let rt = runtime();
        let k = hostile(&rt, "t1");
        let limits = Limits {
            max_stderr_bytes: 1024,
            ..Limits::default()
        };
        let d = decide(
            &rt,
            &k,
            &limits,
            "stderr",
            serde_json::json!({"bytes": 100_000}),
        )
        .unwrap();
        assert!(matches!(d, Decision::Accepted(_)), "{d:?}");
    }

    #[test]
    fn forbidden_import_is_rejected_at_load_naming_the_import() {
        let rt = runtime();
        let e = rt.load(&bytes(FORBIDDEN_IMPORT)).unwrap_err();
        match &e {
            RuntimeError::ForbiddenImport { import, .. } => {
                assert!(import.starts_with("evil:"), "{import}")
            }
            other => panic!("expected ForbiddenImport, got {other:?}"),
        }
        assert!(e.to_string().contains("evil:"), "{e}");
        assert!(!rt.is_loaded(&ComponentHash::of(&bytes(FORBIDDEN_IMPORT))));
        let s = rt.stats();
        assert_eq!(
            (s.compiles, s.compile_failures),
            (0, 0),
            "refused by reading it, not compiled"
        );
        assert_bank_account_works(&rt);
    }

    #[test]
    fn non_wasm_and_core_modules_are_rejected() {
        let rt = runtime();
        assert!(matches!(
            rt.load(b"hello world, not wasm"),
            Err(RuntimeError::NotWasm)
        ));
        let core = wat::parse_str("(module (func (export \"f\")))").unwrap();
        assert!(matches!(rt.load(&core), Err(RuntimeError::CoreModule)));
        let mut truncated = bytes(BANK_ACCOUNT);
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(
            rt.load(&truncated),
            Err(RuntimeError::Malformed { .. })
        ));
        let wrong_world = wat::parse_str("(component)").unwrap();
        assert!(
            matches!(
                rt.load(&wrong_world),
                Err(RuntimeError::WorldMismatch { export: Some(ref e), .. }) if e == "init"
            ),
            "{:?}",
            rt.load(&wrong_world)
        );
        assert_eq!(rt.stats().compiles, 0, "nothing was worth compiling");
    }
}

/// What `load` decides before compiling, what it remembers, and how many compiles it runs at once.
mod load_checks {
    use super::*;
    use std::time::Duration;

    fn runtime_with(f: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
        let mut c = RuntimeConfig {
            max_warm_instances: 16,
            ..RuntimeConfig::default()
        };
        f(&mut c);
        Runtime::new(c).unwrap()
    }

    #[test]
    fn every_rust_example_passes_the_checks_made_before_compiling() {
        let rt = runtime();
        for path in [BANK_ACCOUNT, HOSTILE, example_artifacts::BANK_ACCOUNT_V2] {
            rt.load(&bytes(path))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        assert_eq!(rt.stats().compiles, 3);
    }

    #[test]
    fn an_export_of_the_wrong_type_is_named_before_compiling() {
        let rt = runtime();
        let e = rt.load(&components::decide_without_command(1)).unwrap_err();
        match &e {
            RuntimeError::WorldMismatch {
                export: Some(export),
                reason,
                ..
            } => {
                assert_eq!(export, "decide");
                assert!(reason.contains("parameters"), "{reason}");
            }
            other => panic!("expected WorldMismatch, got {other:?}"),
        }
        assert_eq!(e.kind(), "world-mismatch");
        assert!(e.is_rejected_component());
        assert_eq!(rt.stats().compiles + rt.stats().compile_failures, 0);
    }

    #[test]
    fn a_forbidden_import_next_to_the_right_exports_is_named_before_compiling() {
        let rt = runtime();
        let e = rt
            .load(&components::importing(
                "wasi:http/outgoing-handler@0.2.3",
                1,
            ))
            .unwrap_err();
        assert!(
            matches!(&e, RuntimeError::ForbiddenImport { import, reason, .. }
                if import == "wasi:http/outgoing-handler@0.2.3" && reason.contains("wasi:http")),
            "{e:?}"
        );
        assert_eq!(rt.stats().compiles + rt.stats().compile_failures, 0);
        // The same shape importing only linked WASI passes the checks (and, bodies being fine,
        // compiles).
        rt.load(&components::importing("wasi:io/error@0.2.0", 1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rt.stats().compiles, 1);
    }

    #[test]
    fn a_refused_hash_is_refused_again_without_compiling() {
        let rt = runtime();
        let bad = components::fails_to_compile(1);
        let first = rt.load(&bad).unwrap_err();
        assert!(matches!(first, RuntimeError::Compile { .. }), "{first:?}");
        assert_eq!(
            (rt.stats().compile_failures, rt.stats().refusals_remembered),
            (1, 0)
        );
        for _ in 0..3 {
            let again = rt.load(&bad).unwrap_err();
            assert_eq!(again.to_string(), first.to_string());
        }
        let s = rt.stats();
        assert_eq!(
            (s.compile_failures, s.refusals_remembered),
            (1, 3),
            "the compiler ran once"
        );
        // Other bytes are judged on their own.
        assert!(rt.load(&components::fails_to_compile(2)).is_err());
        assert_eq!(rt.stats().compile_failures, 2);
        assert_bank_account_works(&rt);
    }

    #[test]
    fn the_refusal_memory_is_bounded_in_size() {
        let rt = runtime_with(|c| c.remembered_refusals = 2);
        for salt in 0..3 {
            rt.load(&components::fails_to_compile(salt)).unwrap_err();
        }
        // 0 was forgotten to make room for 2; 1 and 2 are remembered.
        for salt in [2, 1, 0] {
            rt.load(&components::fails_to_compile(salt)).unwrap_err();
        }
        let s = rt.stats();
        assert_eq!((s.compile_failures, s.refusals_remembered), (4, 2));
    }

    #[test]
    fn the_refusal_memory_is_bounded_in_time() {
        let rt = runtime_with(|c| c.refusal_ttl = Duration::ZERO);
        let bad = components::fails_to_compile(1);
        rt.load(&bad).unwrap_err();
        rt.load(&bad).unwrap_err();
        let s = rt.stats();
        assert_eq!((s.compile_failures, s.refusals_remembered), (2, 0));
    }

    #[test]
    fn compiles_wait_for_a_slot() {
        for (slots, threads) in [(1, 3), (2, 4)] {
            let rt = Arc::new(runtime_with(|c| c.max_concurrent_compiles = slots));
            let bank = bytes(BANK_ACCOUNT);
            let start = Arc::new(std::sync::Barrier::new(threads));
            let loads: Vec<_> = (0..threads as u64)
                .map(|salt| {
                    let (rt, start) = (rt.clone(), start.clone());
                    let component = components::salted(&bank, salt);
                    std::thread::spawn(move || {
                        start.wait();
                        rt.load(&component).map(|_| ())
                    })
                })
                .collect();
            for l in loads {
                l.join().unwrap().unwrap();
            }
            let s = rt.stats();
            assert_eq!(s.compiles, threads as u64);
            assert!(
                (1..=slots as u64).contains(&s.peak_concurrent_compiles),
                "{slots} slots, peak {}",
                s.peak_concurrent_compiles
            );
        }
    }
}

mod cache {
    use super::*;

    #[test]
    fn same_bytes_give_the_same_hash_and_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = aggregate_host::registry::ComponentStore::open(dir.path()).unwrap();
        let b = bytes(BANK_ACCOUNT);
        let (h1, new1) = store.insert(&b).unwrap();
        let (h2, new2) = store.insert(&b).unwrap();
        assert_eq!(h1, h2);
        assert!(new1 && !new2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let rt = runtime();
        assert_eq!(rt.load(&b).unwrap().0, h1);
        assert_eq!(rt.stats().compiles, 1);
        rt.load(&b).unwrap();
        assert_eq!(
            rt.stats().compiles,
            1,
            "second load of the same bytes is served from memory"
        );
    }

    #[test]
    fn a_restart_loads_the_precompiled_artifact_without_recompiling() {
        let dir = tempfile::tempdir().unwrap();
        let b = bytes(BANK_ACCOUNT);
        let first = runtime_with_artifacts(dir.path());
        first.load(&b).unwrap();
        assert_eq!(
            (first.stats().compiles, first.stats().artifact_loads),
            (1, 0)
        );
        drop(first);

        let second = runtime_with_artifacts(dir.path());
        let (_, source) = second.load(&b).unwrap();
        assert_eq!(source, aggregate_host::runtime::LoadSource::Artifact);
        assert_eq!(
            (second.stats().compiles, second.stats().artifact_loads),
            (0, 1)
        );
        assert_bank_account_works(&second);
    }

    #[test]
    fn a_corrupted_artifact_is_recompiled_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let b = bytes(BANK_ACCOUNT);
        let first = runtime_with_artifacts(dir.path());
        let (hash, _) = first.load(&b).unwrap();
        let path = first.artifact_path(&hash).unwrap();
        drop(first);

        let mut art = std::fs::read(&path).unwrap();
        let mid = art.len() / 2;
        art[mid] ^= 0xff;
        std::fs::write(&path, &art).unwrap();

        let second = runtime_with_artifacts(dir.path());
        second.load(&b).unwrap();
        let s = second.stats();
        assert_eq!(
            (s.artifact_rejects, s.compiles, s.artifact_loads),
            (1, 1, 0),
            "{s:?}"
        );
        assert_bank_account_works(&second);
        drop(second);

        let third = runtime_with_artifacts(dir.path());
        third.load(&b).unwrap();
        assert_eq!(
            (third.stats().compiles, third.stats().artifact_loads),
            (0, 1),
            "the rewritten artifact is good"
        );
    }

    #[test]
    fn an_artifact_of_another_component_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let first = runtime_with_artifacts(dir.path());
        let (bank, _) = first.load(&bytes(BANK_ACCOUNT)).unwrap();
        let (hostile, _) = first.load(&bytes(HOSTILE)).unwrap();
        // Put hostile's compiled code where bank-account's belongs.
        std::fs::copy(
            first.artifact_path(&hostile).unwrap(),
            first.artifact_path(&bank).unwrap(),
        )
        .unwrap();
        drop(first);
        let second = runtime_with_artifacts(dir.path());
        second.load(&bytes(BANK_ACCOUNT)).unwrap();
        assert_eq!(
            (second.stats().artifact_rejects, second.stats().compiles),
            (1, 1)
        );
        assert_bank_account_works(&second);
    }
}

mod isolation {
    use super::*;

    /// The hostile guest's `whoami` reports the tenant of the previous command its instance ran.
    fn whoami(rt: &Runtime, k: &InstanceKey) -> (u64, serde_json::Value) {
        let state = Json::parse("{}").unwrap();
        rt.with_instance(k, &Limits::default(), Isolation::Pooled, |g| {
            let d = g.decide(&state, &command(k, "whoami", serde_json::json!({})))?;
            let Decision::Accepted(ev) = d else {
                panic!("whoami refused: {d:?}")
            };
            Ok((g.instance_id(), ev[0].payload.to_value()))
        })
        .unwrap()
    }

    #[test]
    fn a_tenant_never_receives_an_instance_that_served_another_tenant() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(HOSTILE)).unwrap();
        let tenants = ["a", "b", "c"];
        let mut owner: std::collections::HashMap<u64, &str> = Default::default();
        for round in 0..30 {
            let t = tenants[round % 3];
            let (id, seen) = whoami(&rt, &key(t, "hostile", hash));
            assert_eq!(
                *owner.entry(id).or_insert(t),
                t,
                "instance {id} served two tenants"
            );
            let previous = &seen["previous"];
            assert!(
                previous.is_null() || previous == t,
                "tenant {t} saw {previous} in its instance"
            );
        }
        assert_eq!(owner.len(), 3, "one warm instance per tenant");
        let s = rt.stats();
        assert_eq!((s.instantiations, s.pool_hits), (3, 27), "{s:?}");
    }

    #[test]
    fn an_instance_is_discarded_after_an_error() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(HOSTILE)).unwrap();
        let k = key("a", "hostile", hash);
        let (first, _) = whoami(&rt, &k);
        let (again, _) = whoami(&rt, &k);
        assert_eq!(first, again, "a clean instance is reused");
        let state = Json::parse("{}").unwrap();
        let discards = rt.stats().discards;
        let used = rt
            .with_instance(&k, &Limits::default(), Isolation::Pooled, |g| {
                let id = g.instance_id();
                g.decide(&state, &command(&k, "panic", serde_json::json!({})))
                    .map(|_| id)
            })
            .unwrap_err();
        assert!(matches!(used, RuntimeError::Panicked { .. }));
        assert_eq!(rt.stats().discards, discards + 1);
        let (after, seen) = whoami(&rt, &k);
        assert_ne!(after, first, "the instance that trapped is gone");
        assert!(
            seen["previous"].is_null(),
            "a fresh instance has no memory: {seen}"
        );
    }

    #[test]
    fn per_command_isolation_instantiates_every_time() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        let k = key("a", "bank-account", hash);
        let before = rt.stats();
        let mut ids = std::collections::HashSet::new();
        for _ in 0..10 {
            let id = rt
                .with_instance(&k, &Limits::default(), Isolation::PerCommand, |g| {
                    g.init().map(|_| g.instance_id())
                })
                .unwrap();
            ids.insert(id);
        }
        let after = rt.stats();
        assert_eq!(after.instantiations - before.instantiations, 10);
        assert_eq!(after.pool_hits, before.pool_hits);
        assert_eq!(ids.len(), 10);
        assert_eq!(rt.warm_instances(), 0);
    }

    #[test]
    fn an_instance_is_recycled_after_max_calls() {
        let rt = runtime();
        let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        let k = key("a", "bank-account", hash);
        let limits = Limits {
            max_calls_per_instance: 3,
            ..Limits::default()
        };
        let ids: Vec<u64> = (0..7)
            .map(|_| {
                rt.with_instance(&k, &limits, Isolation::Pooled, |g| {
                    g.init().map(|_| g.instance_id())
                })
                .unwrap()
            })
            .collect();
        assert_eq!(ids[0], ids[2]);
        assert_ne!(ids[2], ids[3]);
        assert_eq!(ids[3], ids[5]);
        assert_ne!(ids[5], ids[6]);
    }

    #[test]
    fn a_new_component_never_reuses_the_old_components_instances() {
        let rt = runtime();
        let (bank, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        let (other, _) = rt.load(&bytes(HOSTILE)).unwrap();
        let id = |h| {
            rt.with_instance(
                &key("a", "t", h),
                &Limits::default(),
                Isolation::Pooled,
                |g| g.init().map(|_| g.instance_id()),
            )
            .unwrap()
        };
        let v1 = id(bank);
        assert_eq!(id(bank), v1);
        let v2 = id(other);
        assert_ne!(v1, v2);
        rt.unload(&bank);
        assert_eq!(
            rt.warm_instances(),
            1,
            "unloading a component drops its warm instances"
        );
    }

    #[test]
    fn the_warm_pool_is_bounded() {
        let rt = Runtime::new(RuntimeConfig {
            max_warm_instances: 4,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let (hash, _) = rt.load(&bytes(BANK_ACCOUNT)).unwrap();
        for t in 0..10 {
            rt.with_instance(
                &key(&format!("t{t}"), "bank-account", hash),
                &Limits::default(),
                Isolation::Pooled,
                |g| g.init(),
            )
            .unwrap();
        }
        assert_eq!(rt.warm_instances(), 4);
    }
}

mod manifest {
    use super::*;

    fn registry(dir: &std::path::Path) -> Result<Registry, RegistryError> {
        Registry::open(
            dir,
            &dir.join("manifest.yaml"),
            Arc::new(runtime()),
            64 << 20,
        )
    }

    #[test]
    fn a_missing_component_is_named_with_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "aggregates:\n  bank-account:\n    component: sha256:{}\n",
            "ab".repeat(32)
        );
        std::fs::write(dir.path().join("manifest.yaml"), text).unwrap();
        let e = registry(dir.path()).err().expect("missing blob must fail");
        let msg = e.to_string();
        assert!(
            msg.contains("bank-account") && msg.contains("not in the component store"),
            "{msg}"
        );
    }

    #[test]
    fn an_invalid_component_is_named_with_its_type() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            aggregate_host::registry::ComponentStore::open(&dir.path().join("components")).unwrap();
        let (hash, _) = store.insert(&bytes(FORBIDDEN_IMPORT)).unwrap();
        std::fs::write(
            dir.path().join("manifest.yaml"),
            format!("aggregates:\n  sneaky:\n    component: {hash}\n"),
        )
        .unwrap();
        let msg = registry(dir.path())
            .err()
            .expect("forbidden import must fail")
            .to_string();
        assert!(msg.contains("sneaky") && msg.contains("evil:"), "{msg}");
    }

    #[test]
    fn bad_limits_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            aggregate_host::registry::ComponentStore::open(&dir.path().join("components")).unwrap();
        let (hash, _) = store.insert(&bytes(BANK_ACCOUNT)).unwrap();
        let text = format!("aggregates:\n  bank-account:\n    component: {hash}\n    limits:\n      timeout_ms: 0\n");
        std::fs::write(dir.path().join("manifest.yaml"), text).unwrap();
        let msg = registry(dir.path())
            .err()
            .expect("zero timeout must fail")
            .to_string();
        assert!(
            msg.contains("bank-account") && msg.contains("timeout_ms"),
            "{msg}"
        );
    }

    #[test]
    fn deploy_persists_and_a_refused_upload_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ty = AggregateType::new("bank-account").unwrap();
        let reg = registry(dir.path()).unwrap();
        let d = reg.deploy(&ty, &bytes(BANK_ACCOUNT), None).unwrap();
        assert_eq!((d.version, d.changed), (1, true));
        assert!(
            !reg.deploy(&ty, &bytes(BANK_ACCOUNT), None).unwrap().changed,
            "same bytes: no new version"
        );
        let before = std::fs::read_to_string(dir.path().join("manifest.yaml")).unwrap();
        for bad in [bytes(FORBIDDEN_IMPORT), b"garbage".to_vec()] {
            assert!(reg.deploy(&ty, &bad, None).is_err());
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("manifest.yaml")).unwrap(),
            before
        );
        assert_eq!(reg.resolve(&ty).unwrap().component, d.component);
        assert_eq!(
            std::fs::read_dir(dir.path().join("components"))
                .unwrap()
                .count(),
            1,
            "refused bytes are not stored"
        );
        drop(reg);
        let reopened = registry(dir.path()).unwrap();
        assert_eq!(reopened.resolve(&ty).unwrap().component, d.component);
    }
}
