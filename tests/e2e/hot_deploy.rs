//! Hot deploy under load: v2 (deposits carry a currency, event schema 2) is deployed while
//! clients keep sending deposits. No command fails or is lost; each ran wholly on v1 or wholly on
//! v2, which the answer names and the events confirm; commands sent after the deploy answered run
//! on v2.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::support::{deploy, new_id, Backend, Env};

const CLIENTS: usize = 6;
/// Commands each client sends after it saw the deploy answered.
const AFTER_DEPLOY: usize = 10;
/// Upper bound of commands per client (the test is bounded even if the deploy hangs).
const MAX_PER_CLIENT: usize = 5_000;

crate::on_both_logs!(hot_deploy_under_load);

/// One answered deposit: when it was sent and what answered it.
struct Answer {
    sent: Instant,
    body: Value,
}

async fn hot_deploy_under_load(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e hot deploy on JetStream") else {
        return;
    };
    let host = env.start(&[]);
    let client = host.client();
    let v1 = deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let ids: Vec<String> = (0..CLIENTS).map(|_| new_id()).collect();
    for id in &ids {
        client
            .send("bank-account", id, "open", &json!({"owner": "load"}))
            .await
            .unwrap();
    }

    let warmed_up = Arc::new(Notify::new());
    let deployed_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let mut workers = Vec::new();
    for (n, id) in ids.iter().cloned().enumerate() {
        let (client, warmed_up, deployed_at) =
            (client.clone(), warmed_up.clone(), deployed_at.clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            let mut after = 0;
            while after < AFTER_DEPLOY {
                assert!(answers.len() < MAX_PER_CLIENT, "the deploy never answered");
                if n == 0 && answers.len() == 5 {
                    warmed_up.notify_one();
                }
                if deployed_at.get().is_some() {
                    after += 1;
                }
                let sent = Instant::now();
                let body = client
                    .send("bank-account", &id, "deposit", &json!({"amount": 1}))
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "deposit {} on {id} failed during the hot deploy: {e}",
                            answers.len()
                        )
                    });
                answers.push(Answer { sent, body });
            }
            answers
        }));
    }
    warmed_up.notified().await;
    let deployed = client
        .deploy(
            "bank-account",
            crate::support::wasm(example_artifacts::BANK_ACCOUNT_V2),
        )
        .await
        .unwrap();
    let deployed_at = *deployed_at.get_or_init(Instant::now);
    let v2 = deployed["component"].as_str().unwrap().to_string();
    assert_eq!(
        (deployed["version"].as_u64(), deployed["changed"].as_bool()),
        (Some(2), Some(true))
    );
    assert_ne!(v1, v2);

    let (mut on_v1, mut on_v2) = (0, 0);
    for (worker, id) in workers.into_iter().zip(&ids) {
        let answers = worker.await.unwrap();
        for (i, a) in answers.iter().enumerate() {
            // Versions are gap-free: open was 1, the i-th deposit is i + 2.
            assert_eq!(a.body["version"].as_u64(), Some(i as u64 + 2), "{}", a.body);
            let event = &a.body["events"][0];
            let component = a.body["component"].as_str().unwrap();
            assert_eq!(
                event["component"], component,
                "the event names the component that decided it"
            );
            if component == v1 {
                on_v1 += 1;
                assert_eq!(
                    event["schema_version"], 1,
                    "v1 answer with a v2 event: {}",
                    a.body
                );
                assert!(event["payload"].get("currency").is_none(), "{}", a.body);
                assert!(
                    a.sent < deployed_at,
                    "a command sent after the deploy answered ran on v1: {}",
                    a.body
                );
            } else {
                assert_eq!(component, v2, "unknown component {component}");
                on_v2 += 1;
                assert_eq!(
                    (
                        event["schema_version"].as_u64(),
                        event["payload"]["currency"].as_str()
                    ),
                    (Some(2), Some("EUR"))
                );
            }
        }
        // Nothing lost: the balance is the number of deposits, the log has every event.
        let state = client.state("bank-account", id).await.unwrap();
        assert_eq!(state["state"]["balance"], answers.len() as i64);
        assert_eq!(state["version"], answers.len() as u64 + 1);
        let events = client
            .events("bank-account", id, answers.len() as u64 - 1, 1000)
            .await
            .unwrap();
        assert_eq!(events["events"][1]["version"], answers.len() as u64 + 1);
    }
    assert!(
        on_v1 > 0 && on_v2 > 0,
        "the deploy must land mid-load (v1 {on_v1}, v2 {on_v2})"
    );
    eprintln!("hot deploy: {on_v1} commands on v1, {on_v2} on v2, none failed");

    // After the deploy every new command runs on v2.
    let d = client
        .send("bank-account", &ids[0], "deposit", &json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(d["component"], v2);
}
