//! The bank-account story over HTTP: deploy, commands, queries, idempotency, the live event
//! stream, and the events still there after a graceful restart.

use std::time::Duration;

use aggregate_host::client::CommandOptions;
use futures::StreamExt;
use serde_json::json;

use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(bank_account_story);

async fn bank_account_story(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e story on JetStream") else {
        return;
    };
    let mut host = env.start(&[]);
    let client = host.client();
    let hash = deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let id = new_id();

    // Subscribe first, wait for `ready`: then nothing the story writes can be missed.
    let sse = client
        .http()
        .get(format!(
            "{}/events/stream?aggregate_type=bank-account&aggregate_id={id}",
            host.gateway
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut sse = sse.bytes_stream();
    let mut streamed = String::new();
    while !streamed.contains("event: ready") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }

    let options = CommandOptions {
        command_id: Some("0190a8b0-0000-7000-8000-0000000000aa".into()),
        correlation_id: Some("story-1".into()),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        expected_version: None,
    };
    let opened = client
        .send_with(
            "bank-account",
            &id,
            "open",
            &json!({"owner": "Ada"}),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        (opened["version"].as_u64(), opened["component"].as_str()),
        (Some(1), Some(hash.as_str()))
    );
    assert_eq!(opened["events"][0]["event_type"], "opened");
    assert_eq!(opened["events"][0]["metadata"]["correlation_id"], "story-1");
    assert_eq!(
        opened["events"][0]["metadata"]["traceparent"],
        options.traceparent.clone().unwrap()
    );
    // A retried request with the same command id runs nothing and answers the same.
    let again = client
        .send_with(
            "bank-account",
            &id,
            "open",
            &json!({"owner": "Ada"}),
            &options,
        )
        .await
        .unwrap();
    assert_eq!(
        (again["duplicate"].as_bool(), again["version"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(again["events"], opened["events"]);

    let v = client
        .send("bank-account", &id, "deposit", &json!({"amount": 100}))
        .await
        .unwrap();
    assert_eq!(
        (
            v["version"].as_u64(),
            v["events"][0]["payload"]["amount"].as_i64()
        ),
        (Some(2), Some(100))
    );
    let v = client
        .send("bank-account", &id, "withdraw", &json!({"amount": 30}))
        .await
        .unwrap();
    assert_eq!(v["version"], 3);
    let p = problem(
        client
            .send("bank-account", &id, "withdraw", &json!({"amount": 500}))
            .await,
        422,
        "command-rejected",
    );
    assert_eq!(p["detail"], "insufficient funds: balance 70, requested 500");

    let state = client.state("bank-account", &id).await.unwrap();
    assert_eq!(
        state["state"],
        json!({"opened": true, "owner": "Ada", "balance": 70})
    );
    assert_eq!(
        (state["version"].as_u64(), state["component"].as_str()),
        (Some(3), Some(hash.as_str()))
    );
    let events = client.events("bank-account", &id, 0, 100).await.unwrap();
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["opened", "deposited", "withdrawn"]);

    // The stream delivered exactly the three events, in order.
    while streamed.matches("event: event").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), sse.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Each event's id is its place in the log, `P.i`: one command per commit here, so the
    // positions grow and every index is 0.
    let ids: Vec<(u64, u64)> = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| {
            let (p, i) = id.split_once('.').expect("P.i");
            (p.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), 3, "{streamed}");
    assert!(
        ids.windows(2).all(|w| w[0].0 < w[1].0) && ids.iter().all(|(_, i)| *i == 0),
        "{ids:?}"
    );
    drop(sse);

    // Graceful stop, restart on the same data: the manifest, the component and the events survive.
    assert!(host.stop().success(), "exit status; log:\n{}", host.log());
    let host = env.start(&[]);
    let client = host.client();
    let state = client.state("bank-account", &id).await.unwrap();
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(3), Some(70))
    );
    let v = client
        .send("bank-account", &id, "deposit", &json!({"amount": 5}))
        .await
        .unwrap();
    assert_eq!(
        (v["version"].as_u64(), v["component"].as_str()),
        (Some(4), Some(hash.as_str()))
    );
}
