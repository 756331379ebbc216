//! Graceful shutdown on SIGTERM: the listener stops accepting, the command in flight finishes and
//! gets its answer, the log is flushed, the process exits 0, and a restart finds every
//! acknowledged event.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(sigterm_finishes_in_flight_commands);

async fn sigterm_finishes_in_flight_commands(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e shutdown on JetStream") else {
        return;
    };
    let mut host = env.start(&[]);
    let client = host.client();
    deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    deploy(&client, "hostile", example_artifacts::HOSTILE).await;
    let limits = json!({"fuel": 1_000_000_000_000u64, "timeout_ms": 1500});
    client
        .admin(
            reqwest::Method::PUT,
            "/admin/aggregates/hostile/limits",
            Some(&limits),
        )
        .await
        .unwrap();
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    for _ in 0..20 {
        client
            .send("bank-account", &id, "deposit", &json!({"amount": 5}))
            .await
            .unwrap();
    }

    let slow = {
        let client = client.clone();
        tokio::spawn(async move { client.send("hostile", &new_id(), "spin", &json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = Instant::now();
    host.terminate();
    // The command that was running gets its real answer, not a dropped connection.
    let p = problem(slow.await.unwrap(), 422, "limit-exceeded");
    assert_eq!(p["limit"], "timeout");
    let status = tokio::task::spawn_blocking(move || {
        let status = host.wait(Duration::from_secs(20));
        (status, host)
    })
    .await
    .unwrap();
    let (status, host) = status;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        host.log()
    );
    assert!(
        stopping.elapsed() >= Duration::from_millis(900),
        "exited before the command in flight finished"
    );
    let log = host.log();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    // Nothing listens any more.
    assert!(client.state("bank-account", &id).await.is_err());

    let host = env.start(&[]);
    let state = host.client().state("bank-account", &id).await.unwrap();
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(21), Some(100))
    );
}
