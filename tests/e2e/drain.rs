//! `/admin/drain`: a tenant's new commands are refused while its command in flight finishes, other
//! tenants are unaffected, and `/admin/resume` lets it back in.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(drain_waits_for_in_flight_commands);

async fn drain_waits_for_in_flight_commands(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e drain on JetStream") else {
        return;
    };
    let host = env.start(&[]);
    let admin = host.client();
    deploy(&admin, "hostile", example_artifacts::HOSTILE).await;
    // `spin` runs until its deadline: a command that stays in flight for ~1.5 s.
    let limits = json!({"fuel": 1_000_000_000_000u64, "timeout_ms": 1500});
    admin
        .admin(
            reqwest::Method::PUT,
            "/admin/aggregates/hostile/limits",
            Some(&limits),
        )
        .await
        .unwrap();
    let (acme, globex) = (host.tenant("acme"), host.tenant("globex"));
    let id = new_id();
    acme.send("hostile", &id, "ok", &json!({})).await.unwrap();

    let slow = {
        let acme = acme.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let r = acme.send("hostile", &id, "spin", &json!({})).await;
            (r, Instant::now())
        })
    };
    // Wait until the host counts it in flight.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = admin
            .admin(reqwest::Method::GET, "/admin/tenants", None)
            .await
            .unwrap();
        let in_flight = t["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tenant_id"] == "acme")
            .map(|t| t["in_flight"].clone());
        if in_flight == Some(json!(1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow command never showed as in flight: {t}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let drained = admin
        .admin(
            reqwest::Method::POST,
            "/admin/drain",
            Some(&json!({"tenant_id": "acme"})),
        )
        .await
        .unwrap();
    let drained_at = Instant::now();
    assert_eq!(
        (drained["drained"].as_bool(), drained["in_flight"].as_u64()),
        (Some(true), Some(0)),
        "{drained}"
    );
    assert!(
        drained["waited_ms"].as_u64().unwrap() >= 500,
        "drain returned before the slow command finished: {drained}"
    );
    // The command in flight was finished, not cut: it got its own answer (its time limit).
    let (slow_answer, slow_done) = slow.await.unwrap();
    let p = problem(slow_answer, 422, "limit-exceeded");
    assert_eq!(p["limit"], "timeout");
    assert!(
        slow_done <= drained_at + Duration::from_millis(200),
        "the slow command ended after the drain answered"
    );

    // acme is refused, globex is not; acme can still read.
    let p = problem(
        acme.send("hostile", &id, "ok", &json!({})).await,
        503,
        "tenant-draining",
    );
    assert_eq!(p["tenant_id"], "acme");
    globex
        .send("hostile", &new_id(), "ok", &json!({}))
        .await
        .unwrap();
    assert_eq!(acme.state("hostile", &id).await.unwrap()["version"], 1);
    let t = admin
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    let row = |name: &str| {
        t["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tenant_id"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        (
            row("acme")["draining"].as_bool(),
            row("acme")["aggregates"].as_u64()
        ),
        (Some(true), Some(1))
    );
    assert_eq!(
        (
            row("globex")["draining"].as_bool(),
            row("globex")["aggregates"].as_u64()
        ),
        (Some(false), Some(1))
    );
    assert!(row("acme")["last_activity"].is_string());

    let resumed = admin
        .admin(
            reqwest::Method::POST,
            "/admin/resume",
            Some(&json!({"tenant_id": "acme"})),
        )
        .await
        .unwrap();
    assert_eq!(resumed["was_draining"], true);
    let v = acme.send("hostile", &id, "ok", &json!({})).await.unwrap();
    assert_eq!(v["version"], 2);
}
