//! The command lifecycle through the real bank-account component, on each event log.
//!
//! Each scenario is written once and run on the embedded log and on JetStream (against a
//! nats-server the test starts itself).

mod support;

use std::path::Path;
use std::sync::Arc;

use aggregate_host::registry::Registry;
use aggregate_host::runtime::{Runtime, RuntimeConfig};
use aggregate_host::service::{
    CommandOutcome, CommandService, ServiceConfig, ServiceError, Submit,
};
use aggregate_host::store::snapshots::SnapshotStore;
use aggregate_host::store::EventLog;
use aggregate_host::types::{
    AggregateId, AggregateRef, AggregateType, CommandId, CommandMetadata, Json, TenantId, Version,
};
use support::nats::NatsServer;

/// Which event log a scenario runs on.
#[derive(Clone, Copy)]
enum Backend {
    Embedded,
    JetStream,
}

/// Storage for one scenario: a temp dir, and for JetStream a private nats-server.
struct Env {
    dir: tempfile::TempDir,
    nats: Option<NatsServer>,
    log: tokio::sync::Mutex<Option<Arc<dyn EventLog>>>,
}

impl Backend {
    /// `None` when the scenario must be skipped (JetStream without nats-server, outside CI).
    async fn start(self) -> Option<Env> {
        let nats = match self {
            Backend::Embedded => None,
            Backend::JetStream => Some(NatsServer::start_or_skip("service suite on JetStream")?),
        };
        Some(Env {
            dir: tempfile::tempdir().unwrap(),
            nats,
            log: Default::default(),
        })
    }
}

impl Env {
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn open(&self) -> Arc<dyn EventLog> {
        match &self.nats {
            None => Arc::new(
                aggregate_host::store::embedded::EmbeddedLog::open(self.dir().join("events"))
                    .unwrap(),
            ),
            Some(n) => Arc::new(
                aggregate_host::store::jetstream::JetStreamLog::connect(
                    &n.url(),
                    Default::default(),
                )
                .await
                .unwrap(),
            ),
        }
    }

    /// The log of this scenario (opened once).
    async fn log(&self) -> Arc<dyn EventLog> {
        let mut slot = self.log.lock().await;
        if slot.is_none() {
            *slot = Some(self.open().await);
        }
        slot.clone().unwrap()
    }

    /// Close the log and open it again, as a restarted host would.
    async fn reopen_log(&self) -> Arc<dyn EventLog> {
        let mut slot = self.log.lock().await;
        if let Some(old) = slot.take() {
            old.flush().await.unwrap();
            drop(old);
        }
        let log = self.open().await;
        *slot = Some(log.clone());
        log
    }
}

struct Fixture {
    service: Arc<CommandService>,
    registry: Arc<Registry>,
    log: Arc<dyn EventLog>,
    snapshots: SnapshotStore,
}

fn bank() -> AggregateType {
    AggregateType::new("bank-account").unwrap()
}

async fn fixture(dir: &Path, log: Arc<dyn EventLog>) -> Fixture {
    let f = open_fixture(dir, log, None).await;
    f.registry
        .deploy(
            &bank(),
            &std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap(),
            None,
        )
        .unwrap();
    f
}

/// A service over what `dir` already holds (manifest as deployed before), with an empty cache.
/// `snapshots` shares an already open snapshot store (fjall locks its directory).
async fn open_fixture(
    dir: &Path,
    log: Arc<dyn EventLog>,
    snapshots: Option<SnapshotStore>,
) -> Fixture {
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            artifact_dir: Some(dir.join("artifacts")),
            max_warm_instances: 32,
            ..RuntimeConfig::default()
        })
        .unwrap(),
    );
    let registry = Arc::new(
        Registry::open(dir, &dir.join("manifest.yaml"), runtime.clone(), 64 << 20).unwrap(),
    );
    let snapshots =
        snapshots.unwrap_or_else(|| SnapshotStore::open(dir.join("snapshots")).unwrap());
    let service = Arc::new(CommandService::new(
        registry.clone(),
        runtime,
        log.clone(),
        snapshots.clone(),
        ServiceConfig::default(),
    ));
    Fixture {
        service,
        registry,
        log,
        snapshots,
    }
}

fn target(tenant: &TenantId, id: AggregateId) -> AggregateRef {
    AggregateRef {
        tenant: tenant.clone(),
        aggregate_type: bank(),
        aggregate_id: id,
    }
}

fn submit(target: &AggregateRef, command_type: &str, payload: serde_json::Value) -> Submit {
    Submit {
        command_id: None,
        target: target.clone(),
        command_type: command_type.into(),
        payload: Json::from_value(&payload),
        metadata: CommandMetadata {
            correlation_id: Some("corr-1".into()),
            traceparent: None,
            host: None,
            actor: None,
        },
    }
}

async fn send(
    f: &Fixture,
    target: &AggregateRef,
    ty: &str,
    payload: serde_json::Value,
) -> Result<CommandOutcome, ServiceError> {
    f.service
        .submit(&target.tenant, submit(target, ty, payload))
        .await
}

async fn balance(f: &Fixture, target: &AggregateRef) -> i64 {
    let s = f.service.state(&target.tenant, target).await.unwrap();
    s.state.to_value()["balance"].as_i64().unwrap()
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

macro_rules! on_both_logs {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Embedded).await })*
        }
        mod jetstream {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::JetStream).await })*
        }
    };
}

on_both_logs!(
    bank_account_story,
    concurrent_commands_on_one_aggregate_all_succeed,
    tenants_with_the_same_aggregate_id_stay_separate,
    resubmitting_a_command_id_returns_the_original,
    snapshots_every_n_events_and_restart_rehydrates,
    single_tenant_mode_works,
    a_stale_cache_conflicts_and_is_retried,
    a_snapshot_of_another_component_is_trusted_or_rebuilt_per_manifest,
    a_state_the_active_component_cannot_read_is_rebuilt_from_events,
    a_command_id_is_bound_to_its_first_aggregate,
);

async fn bank_account_story(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let f = fixture(env.dir(), env.log().await).await;
    let acc = target(&tenant("acme"), AggregateId::generate());
    let o = send(&f, &acc, "open", serde_json::json!({"owner": "Ada"}))
        .await
        .unwrap();
    assert_eq!(
        (o.version, o.events.len(), o.duplicate),
        (Version(1), 1, false)
    );
    send(&f, &acc, "deposit", serde_json::json!({"amount": 100}))
        .await
        .unwrap();
    let o = send(&f, &acc, "withdraw", serde_json::json!({"amount": 30}))
        .await
        .unwrap();
    assert_eq!(o.version, Version(3));
    assert_eq!(
        o.events[0].metadata.correlation_id.as_deref(),
        Some("corr-1")
    );
    assert_eq!(o.events[0].causation_id, o.command_id);
    let e = send(&f, &acc, "withdraw", serde_json::json!({"amount": 500}))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ServiceError::Rejected(m) if m.contains("insufficient funds")),
        "{e:?}"
    );
    let e = send(&f, &acc, "deposit", serde_json::json!({"amount": 0}))
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::InvalidCommand(_)), "{e:?}");
    assert_eq!(balance(&f, &acc).await, 70);
    let events = f
        .service
        .events(&acc.tenant, &acc, Version(0), 100)
        .await
        .unwrap();
    let kinds: Vec<(u64, &str)> = events
        .iter()
        .map(|e| (e.version.0, e.event_type.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![(1, "opened"), (2, "deposited"), (3, "withdrawn")]
    );
    let unknown = AggregateType::new("no-such-type").unwrap();
    let e = f
        .service
        .submit(
            &acc.tenant,
            Submit {
                target: AggregateRef {
                    aggregate_type: unknown,
                    ..acc.clone()
                },
                ..submit(&acc, "open", serde_json::json!({}))
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ServiceError::UnknownAggregateType(_)), "{e:?}");
}

async fn concurrent_commands_on_one_aggregate_all_succeed(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let f = Arc::new(fixture(env.dir(), env.log().await).await);
    let acc = target(&tenant("acme"), AggregateId::generate());
    send(&f, &acc, "open", serde_json::json!({"owner": "Ada"}))
        .await
        .unwrap();
    let tasks: Vec<_> = (1..=20)
        .map(|amount| {
            let (f, acc) = (f.clone(), acc.clone());
            tokio::spawn(async move {
                send(&f, &acc, "deposit", serde_json::json!({"amount": amount})).await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("every concurrent command succeeds");
    }
    assert_eq!(balance(&f, &acc).await, (1..=20).sum::<i64>());
    let versions: Vec<u64> = f
        .log
        .read(&acc, Version(0))
        .await
        .unwrap()
        .iter()
        .map(|e| e.version.0)
        .collect();
    assert_eq!(
        versions,
        (1..=21).collect::<Vec<u64>>(),
        "versions 1..n with no gaps"
    );
}

async fn tenants_with_the_same_aggregate_id_stay_separate(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let f = fixture(env.dir(), env.log().await).await;
    let id = AggregateId::generate();
    let (a, b) = (target(&tenant("a"), id), target(&tenant("b"), id));
    send(&f, &a, "open", serde_json::json!({"owner": "A"}))
        .await
        .unwrap();
    send(&f, &a, "deposit", serde_json::json!({"amount": 10}))
        .await
        .unwrap();
    let e = f.service.state(&b.tenant, &b).await.unwrap_err();
    assert!(
        matches!(e, ServiceError::UnknownAggregate(_)),
        "b must not see a's aggregate: {e:?}"
    );
    send(&f, &b, "open", serde_json::json!({"owner": "B"}))
        .await
        .unwrap();
    send(&f, &b, "deposit", serde_json::json!({"amount": 99}))
        .await
        .unwrap();
    assert_eq!((balance(&f, &a).await, balance(&f, &b).await), (10, 99));
    // a request of tenant b carrying an envelope for tenant a is refused
    let e = f
        .service
        .submit(
            &b.tenant,
            submit(&a, "deposit", serde_json::json!({"amount": 1})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ServiceError::TenantAccessDenied { .. }),
        "{e:?}"
    );
    let e = f.service.state(&b.tenant, &a).await.unwrap_err();
    assert!(
        matches!(e, ServiceError::TenantAccessDenied { .. }),
        "{e:?}"
    );
    assert_eq!(balance(&f, &a).await, 10);
    let listed = f.log.list_aggregates(&a.tenant).await.unwrap();
    assert_eq!(listed, vec![(bank(), id)]);
}

async fn resubmitting_a_command_id_returns_the_original(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let acc = target(&tenant("acme"), AggregateId::generate());
    let id = CommandId::generate();
    let first = {
        let f = fixture(env.dir(), env.log().await).await;
        send(&f, &acc, "open", serde_json::json!({"owner": "Ada"}))
            .await
            .unwrap();
        let cmd = Submit {
            command_id: Some(id),
            ..submit(&acc, "deposit", serde_json::json!({"amount": 5}))
        };
        let first = f.service.submit(&acc.tenant, cmd.clone()).await.unwrap();
        let again = f.service.submit(&acc.tenant, cmd).await.unwrap();
        assert!(again.duplicate && !first.duplicate);
        assert_eq!(
            (again.version, &again.events),
            (first.version, &first.events)
        );
        assert_eq!(again.attempts, 0, "decide did not run again");
        assert_eq!(balance(&f, &acc).await, 5);
        first
    };
    // after a restart (a new log handle, service and cache on the same storage)
    let f = fixture(env.dir(), env.reopen_log().await).await;
    let cmd = Submit {
        command_id: Some(id),
        ..submit(&acc, "deposit", serde_json::json!({"amount": 5}))
    };
    let again = f.service.submit(&acc.tenant, cmd).await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.version, again.events), (first.version, first.events));
    assert_eq!(balance(&f, &acc).await, 5);
}

async fn snapshots_every_n_events_and_restart_rehydrates(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let acc = target(&tenant("acme"), AggregateId::generate());
    {
        let f = fixture(env.dir(), env.log().await).await;
        f.registry
            .update(&bank(), |e| {
                e.snapshot_every = 3;
                Ok(())
            })
            .unwrap();
        send(&f, &acc, "open", serde_json::json!({"owner": "Ada"}))
            .await
            .unwrap();
        assert!(f.snapshots.get(&acc).unwrap().is_none());
        for _ in 0..6 {
            send(&f, &acc, "deposit", serde_json::json!({"amount": 10}))
                .await
                .unwrap();
        }
        // versions 1..=7: snapshots at 3 and 6
        let snap = f
            .snapshots
            .get(&acc)
            .unwrap()
            .expect("a snapshot after 6 events");
        assert_eq!(snap.version, Version(6));
        assert_eq!(snap.state.to_value()["balance"], 50);
        assert_eq!(
            snap.component,
            f.registry.resolve(&bank()).unwrap().component
        );
        assert!(snap.log_position > 0);
    }
    let f = fixture(env.dir(), env.reopen_log().await).await;
    assert_eq!(
        balance(&f, &acc).await,
        60,
        "snapshot at 6 + event 7 folded after restart"
    );
    let o = send(&f, &acc, "deposit", serde_json::json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(o.version, Version(8));
}

async fn single_tenant_mode_works(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let f = fixture(env.dir(), env.log().await).await;
    let acc = target(&TenantId::single(), AggregateId::generate());
    send(&f, &acc, "open", serde_json::json!({"owner": "solo"}))
        .await
        .unwrap();
    send(&f, &acc, "deposit", serde_json::json!({"amount": 3}))
        .await
        .unwrap();
    assert_eq!(balance(&f, &acc).await, 3);
    assert_eq!(
        f.log
            .list_aggregates(&TenantId::single())
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn a_stale_cache_conflicts_and_is_retried(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let log = env.log().await;
    // Two services on one log: two hosts, each with its own hot cache.
    let host_a = fixture(env.dir(), log.clone()).await;
    let dir_b = tempfile::tempdir().unwrap();
    let host_b = fixture(dir_b.path(), log).await;
    let acc = target(&tenant("acme"), AggregateId::generate());
    send(&host_a, &acc, "open", serde_json::json!({"owner": "Ada"}))
        .await
        .unwrap();
    send(&host_a, &acc, "deposit", serde_json::json!({"amount": 1}))
        .await
        .unwrap(); // A caches v2
    send(&host_b, &acc, "deposit", serde_json::json!({"amount": 10}))
        .await
        .unwrap(); // log at v3
    let o = send(&host_a, &acc, "deposit", serde_json::json!({"amount": 100}))
        .await
        .unwrap();
    assert_eq!(
        o.attempts, 2,
        "the stale cache conflicted once, then the reload succeeded"
    );
    assert_eq!(o.version, Version(4));
    assert_eq!(balance(&host_a, &acc).await, 111);
    assert_eq!(balance(&host_b, &acc).await, 111);
}

/// Bank-account with one custom section appended: the same behaviour under a different hash.
fn bank_account_variant() -> Vec<u8> {
    let mut bytes = std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap();
    let name = b"variant";
    let body_len = 1 + name.len() + 1;
    bytes.extend_from_slice(&[0, body_len as u8, name.len() as u8]);
    bytes.extend_from_slice(name);
    bytes.push(2);
    bytes
}

async fn a_snapshot_of_another_component_is_trusted_or_rebuilt_per_manifest(backend: Backend) {
    use aggregate_host::registry::SnapshotPolicy;
    use aggregate_host::types::Snapshot;
    let Some(env) = backend.start().await else {
        return;
    };
    let acc = target(&tenant("acme"), AggregateId::generate());
    let f = fixture(env.dir(), env.log().await).await;
    send(&f, &acc, "open", serde_json::json!({"owner": "Ada"}))
        .await
        .unwrap();
    send(&f, &acc, "deposit", serde_json::json!({"amount": 10}))
        .await
        .unwrap();
    send(&f, &acc, "deposit", serde_json::json!({"amount": 5}))
        .await
        .unwrap();
    let first = f.registry.resolve(&bank()).unwrap().component;
    // A snapshot at version 2 whose state differs from the fold of events 1..=2, so the test can
    // tell whether it was used.
    let marked = Snapshot {
        aggregate: acc.clone(),
        version: Version(2),
        state: Json::parse(r#"{"opened":true,"owner":"Ada","balance":1000}"#).unwrap(),
        component: first,
        log_position: 2,
    };
    f.snapshots.insert(&marked).unwrap();
    let fresh =
        || async { open_fixture(env.dir(), env.log().await, Some(f.snapshots.clone())).await };

    let same = fresh().await;
    assert_eq!(
        balance(&same, &acc).await,
        1005,
        "a snapshot of the active component is used"
    );

    let deployed = f
        .registry
        .deploy(&bank(), &bank_account_variant(), None)
        .unwrap();
    assert!(deployed.changed && deployed.component != first);
    let trusting = fresh().await;
    assert_eq!(
        trusting.registry.resolve(&bank()).unwrap().snapshot_policy,
        SnapshotPolicy::Trust
    );
    assert_eq!(
        balance(&trusting, &acc).await,
        1005,
        "policy trust: the old component's snapshot is used"
    );

    f.registry
        .update(&bank(), |e| {
            e.snapshot_policy = SnapshotPolicy::Rebuild;
            Ok(())
        })
        .unwrap();
    let rebuilding = fresh().await;
    assert_eq!(
        balance(&rebuilding, &acc).await,
        15,
        "policy rebuild: all events folded by the new component"
    );
}

/// Issue 8, fault 7: a snapshot (and the hot state cached from it) built by another component,
/// in a shape the active component cannot read, must not brick the aggregate: the host rebuilds
/// the state from the events with the active component and goes on.
async fn a_state_the_active_component_cannot_read_is_rebuilt_from_events(backend: Backend) {
    use aggregate_host::types::{ComponentHash, Snapshot};
    let Some(env) = backend.start().await else {
        return;
    };
    let acc = target(&tenant("acme"), AggregateId::generate());
    let f = fixture(env.dir(), env.log().await).await;
    send(&f, &acc, "open", serde_json::json!({"owner": "Ada"}))
        .await
        .unwrap();
    send(&f, &acc, "deposit", serde_json::json!({"amount": 10}))
        .await
        .unwrap();
    let active = f.registry.resolve(&bank()).unwrap().component;
    let other = ComponentHash::of(b"a component with another state shape");
    // Another component's snapshot at the head: a JSON array, which bank-account cannot read.
    f.snapshots
        .insert(&Snapshot {
            aggregate: acc.clone(),
            version: Version(2),
            state: Json::parse(r#"[["funds", 10]]"#).unwrap(),
            component: other,
            log_position: 2,
        })
        .unwrap();
    let fresh =
        || async { open_fixture(env.dir(), env.log().await, Some(f.snapshots.clone())).await };

    // The hot state: a read caches the snapshot as it is, and names the component that built it.
    let host = fresh().await;
    let read = host.service.state(&acc.tenant, &acc).await.unwrap();
    assert_eq!((read.version, read.component), (Version(2), other));
    // A command on it: the active component fails on that state, so the host rebuilds it.
    let o = send(&host, &acc, "deposit", serde_json::json!({"amount": 5}))
        .await
        .expect("rebuilt from the events instead of failing");
    assert_eq!((o.version, o.component), (Version(3), Some(active)));
    let read = host.service.state(&acc.tenant, &acc).await.unwrap();
    assert_eq!(
        (read.state.to_value()["balance"].as_i64(), read.component),
        (Some(15), active)
    );

    // The snapshot path: events after the foreign snapshot cannot be folded into it either.
    let host = fresh().await;
    let read = host.service.state(&acc.tenant, &acc).await.unwrap();
    assert_eq!(
        (
            read.version,
            read.state.to_value()["balance"].as_i64(),
            read.component
        ),
        (Version(3), Some(15), active)
    );
    let o = send(&host, &acc, "withdraw", serde_json::json!({"amount": 15}))
        .await
        .unwrap();
    assert_eq!(o.version, Version(4));
    assert_eq!(balance(&host, &acc).await, 0);
}

/// Issue 8, fault 4: a command id names one command on one aggregate. Reusing it on another
/// aggregate is refused (naming the first), never answered with the first aggregate's result;
/// the same id on the same aggregate still returns the original, also after a restart.
async fn a_command_id_is_bound_to_its_first_aggregate(backend: Backend) {
    let Some(env) = backend.start().await else {
        return;
    };
    let acme = tenant("acme");
    let (y, z) = (
        target(&acme, AggregateId::generate()),
        target(&acme, AggregateId::generate()),
    );
    let k = CommandId::generate();
    let with_k = |t: &AggregateRef| Submit {
        command_id: Some(k),
        ..submit(t, "deposit", serde_json::json!({"amount": 7}))
    };
    {
        let f = fixture(env.dir(), env.log().await).await;
        for t in [&y, &z] {
            send(&f, t, "open", serde_json::json!({"owner": "Ada"}))
                .await
                .unwrap();
        }
        let first = f.service.submit(&acme, with_k(&y)).await.unwrap();
        assert!(!first.duplicate);
        let reused = f.service.submit(&acme, with_k(&z)).await.unwrap_err();
        match &reused {
            ServiceError::CommandIdReused {
                command_id, first, ..
            } => assert_eq!((command_id, first.as_ref()), (&k, &y)),
            other => panic!("expected CommandIdReused, got {other:?}"),
        }
        assert!(reused.to_string().contains(&y.aggregate_id.to_string()));
        assert_eq!(balance(&f, &z).await, 0, "nothing happened to Z");
        let again = f.service.submit(&acme, with_k(&y)).await.unwrap();
        assert!(again.duplicate && again.aggregate == y);
    }
    let f = fixture(env.dir(), env.reopen_log().await).await;
    assert!(matches!(
        f.service.submit(&acme, with_k(&z)).await,
        Err(ServiceError::CommandIdReused { .. })
    ));
    assert!(f.service.submit(&acme, with_k(&y)).await.unwrap().duplicate);
    assert_eq!((balance(&f, &y).await, balance(&f, &z).await), (7, 0));
    // Another tenant may use the same id for its own aggregate.
    let other = target(&tenant("globex"), z.aggregate_id);
    send(&f, &other, "open", serde_json::json!({"owner": "Bob"}))
        .await
        .unwrap();
    assert!(
        !f.service
            .submit(&other.tenant, with_k(&other))
            .await
            .unwrap()
            .duplicate
    );
}
