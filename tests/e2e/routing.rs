//! Per-tenant storage routing (JetStream): two tenants in two streams of their own (one on another
//! nats-server), a third
//! (a `prefix*` route) in an embedded directory of its own, everyone else in the shared stream.
//! Each tenant's events are only in its own target (read directly: the streams' subjects over
//! NATS, the embedded log opened after the host stopped); isolation holds; the log shows one
//! "created" then cache hits; an idle log is closed and opened again on use; a restart routes the
//! same way; strict routing refuses a tenant without a route; caches are cleared online and
//! offline.

use std::time::{Duration, Instant};

use aggregate_host::store::{EmbeddedLog, EventLog};
use aggregate_host::types::TenantId;
use futures::TryStreamExt;
use serde_json::{json, Value};

use crate::support::{deploy, new_id, problem, Backend, Env, HostProcess, BINARY};

/// The routes; `{other}` is a second nats-server's URL (GLOBEX lives there).
const CONFIG: &str = "multi_tenant: true
storage_idle_secs: 1
storage_routes:
  - tenants: [acme]
    stream: ACME
  - tenants: [globex]
    stream: GLOBEX
    nats_url: {other}
  - tenants: [\"local-*\"]
    embedded_dir: tenants/local
";

/// The aggregate ids with messages in `stream` under `filter`, by subject.
async fn subjects(js: &async_nats::jetstream::Context, stream: &str, filter: &str) -> Vec<String> {
    let s = js.get_stream(stream).await.unwrap();
    let mut out: Vec<String> = s
        .info_with_subjects(filter)
        .await
        .unwrap()
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .unwrap();
    out.sort();
    out
}

/// Poll the host's log until `needle` appears `n` times (at most 15 s).
fn wait_log(host: &HostProcess, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while host.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not {n} times in the log:\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_routed_to_their_own_logs() {
    let Some(env) = Env::new(Backend::JetStream, "e2e storage routing") else {
        return;
    };
    let Some(other) = crate::support::nats::NatsServer::start_or_skip("e2e storage routing") else {
        return;
    };
    let config = env.dir.path().join("routes.yaml");
    std::fs::write(&config, CONFIG.replace("{other}", &other.url())).unwrap();
    let config = config.display().to_string();
    let vars = [
        ("AGGREGATE_CONFIG", config.as_str()),
        (
            "RUST_LOG",
            "info,aggregate_host::store::routed=debug,fjall=warn,lsm_tree=warn",
        ),
    ];
    let mut host = env.start(&vars);
    deploy(
        &host.client(),
        "bank-account",
        example_artifacts::BANK_ACCOUNT,
    )
    .await;
    let open = json!({"owner": "Ada"});
    let mut ids: Vec<(&str, String)> = Vec::new();
    for tenant in ["acme", "acme", "globex", "local-1", "other"] {
        let id = new_id();
        host.tenant(tenant)
            .send("bank-account", &id, "open", &open)
            .await
            .unwrap();
        host.tenant(tenant)
            .send("bank-account", &id, "deposit", &json!({"amount": 5}))
            .await
            .unwrap();
        ids.push((tenant, id));
    }
    // Isolation: another tenant does not see the aggregate.
    problem(
        host.tenant("globex").state("bank-account", &ids[0].1).await,
        404,
        "unknown-aggregate",
    );
    // One "created" per route log, then cache hits.
    assert_eq!(
        host.log().matches("tenant log created").count(),
        3,
        "{}",
        host.log()
    );
    assert!(host.log().matches("tenant log cache hit").count() >= 4);
    // Queries do not cover routed tenants; they say so.
    let p = problem(
        host.tenant("acme")
            .query("bank-account", Some("true"), None, None)
            .await,
        400,
        "invalid-input",
    );
    assert!(
        p["detail"].as_str().unwrap().contains("storage_routes"),
        "{p}"
    );
    assert_eq!(
        host.tenant("other")
            .query("bank-account", Some("true"), None, None)
            .await
            .unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A routed tenant's event stream starts at its own log's end (here behind the shared one's):
    // a command sent after `ready` comes through.
    for _ in 0..4 {
        host.tenant("other")
            .send("bank-account", &ids[4].1, "deposit", &json!({"amount": 1}))
            .await
            .unwrap();
    }
    let mut stream = host
        .tenant("globex")
        .event_stream(None, None, None)
        .await
        .unwrap();
    let ready = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap();
    assert!(
        matches!(
            ready,
            Some(Ok(aggregate_host::client::StreamItem::Ready(_)))
        ),
        "{ready:?}"
    );
    let answer = host
        .tenant("globex")
        .send("bank-account", &ids[2].1, "deposit", &json!({"amount": 2}))
        .await
        .unwrap();
    let event = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the routed tenant's event in time")
        {
            Some(Ok(aggregate_host::client::StreamItem::Event { id, event })) => break (id, event),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(event.1["version"], 3, "{event:?}");
    assert_eq!(event.0, format!("{}.0", answer["position"]), "{event:?}");
    drop(stream);

    // The targets, read directly.
    let nats = async_nats::connect(env.nats.as_ref().unwrap().url())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(nats);
    let other_js = async_nats::jetstream::new(async_nats::connect(other.url()).await.unwrap());
    let subject = |prefix: &str, tenant: &str, id: &str| {
        format!("{prefix}tenant.{tenant}.aggregate.bank-account.{id}")
    };
    let mut acme = vec![
        subject("ACME.", "acme", &ids[0].1),
        subject("ACME.", "acme", &ids[1].1),
    ];
    acme.sort();
    assert_eq!(subjects(&js, "ACME", ">").await, acme);
    assert_eq!(
        subjects(&other_js, "GLOBEX", ">").await,
        [subject("GLOBEX.", "globex", &ids[2].1)],
        "globex's stream is on the other nats-server"
    );
    assert!(js.get_stream("GLOBEX").await.is_err());
    assert_eq!(
        subjects(&js, "AGGREGATES", ">").await,
        [subject("", "other", &ids[4].1)],
        "the shared stream holds only the tenant without a route"
    );

    // An idle log is closed, and opened again on use.
    wait_log(&host, "tenant log closed idle", 3);
    host.tenant("acme")
        .send("bank-account", &ids[0].1, "deposit", &json!({"amount": 1}))
        .await
        .unwrap();
    wait_log(&host, "tenant log created", 4);

    // Online cache clear: the precompiled artifact of bank-account is removed.
    let cleared = host
        .client()
        .admin(reqwest::Method::POST, "/admin/cache/clear", None)
        .await
        .unwrap();
    assert!(
        cleared["artifacts_removed"].as_u64().unwrap() >= 1,
        "{cleared}"
    );

    // The embedded directory, read after the host stopped: only local-1.
    assert!(host.stop().success());
    let local = EmbeddedLog::open(env.dir.path().join("host/tenants/local")).unwrap();
    let tenant = |t: &str| TenantId::new(t).unwrap();
    assert_eq!(
        local
            .list_aggregates(&tenant("local-1"))
            .await
            .unwrap()
            .len(),
        1
    );
    for other in ["acme", "globex", "other"] {
        assert!(local
            .list_aggregates(&tenant(other))
            .await
            .unwrap()
            .is_empty());
    }
    drop(local);

    // A restart routes the same way; with strict routing a tenant without a route is refused.
    let strict = [vars[0], vars[1], ("AGGREGATE_STORAGE_STRICT", "true")];
    let host = env.start(&strict);
    for (tenant, id) in &ids[..4] {
        let state = host.tenant(tenant).state("bank-account", id).await.unwrap();
        assert_eq!(state["state"]["owner"], "Ada", "{tenant}: {state}");
    }
    host.tenant("globex")
        .send("bank-account", &ids[2].1, "deposit", &json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(
        subjects(&js, "AGGREGATES", ">").await,
        [subject("", "other", &ids[4].1)]
    );
    let p = problem(
        host.tenant("other").state("bank-account", &ids[4].1).await,
        403,
        "tenant-denied",
    );
    assert_eq!(p["reason"], "no-storage-route", "{p}");
    // ... also on the admin API's import.
    let refused = host
        .client()
        .admin(reqwest::Method::POST, "/admin/tenants/other/import", None)
        .await;
    assert_eq!(refused.unwrap_err().status(), Some(403));

    // An embedded route's log kept open by an event stream is not closed as idle under it.
    let mut stream = host
        .tenant("local-1")
        .event_stream(None, None, None)
        .await
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap(),
        Some(Ok(aggregate_host::client::StreamItem::Ready(_)))
    ));
    // The other route logs are closed as idle meanwhile; two more idle periods pass.
    wait_log(&host, "tenant log closed idle", 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    host.tenant("local-1")
        .send("bank-account", &ids[3].1, "deposit", &json!({"amount": 3}))
        .await
        .unwrap();
    let got = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the event on the stream that outlived the idle period")
        {
            Some(Ok(aggregate_host::client::StreamItem::Event { event, .. })) => break event,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(got["payload"]["amount"], 3, "{got}");
    drop(stream);

    // Offline cache clear (`aggregate-host cache clear --data-dir`): the restarted host compiled
    // bank-account again.
    let mut host = host;
    assert!(host.stop().success());
    let out = std::process::Command::new(BINARY)
        .args(["cache", "clear", "--data-dir"])
        .arg(env.dir.path().join("host"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        printed["artifacts_removed"].as_u64().unwrap() >= 1,
        "{printed}"
    );
}
