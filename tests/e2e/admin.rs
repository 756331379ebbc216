//! The admin API: bearer token, refused uploads that change nothing, rollback, and refusing to
//! start off loopback without a token.

use std::process::Command;

use aggregate_host::client::Client;
use serde_json::json;

use crate::support::{deploy, new_id, problem, wasm, Backend, Env, BINARY, TOKEN};

crate::on_both_logs!(admin_token_is_required);
crate::on_both_logs!(bad_uploads_change_nothing);
crate::on_both_logs!(rollback_restores_the_previous_component);

async fn admin_token_is_required(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e admin auth on JetStream") else {
        return;
    };
    let host = env.start(&[]);
    let anonymous = Client::new(&host.gateway, &host.admin);
    let wrong =
        Client::new(&host.gateway, &host.admin).with_token(Some("wrong-token-0123456789".into()));
    for client in [&anonymous, &wrong] {
        problem(
            client
                .deploy("bank-account", wasm(example_artifacts::BANK_ACCOUNT))
                .await,
            401,
            "unauthorized",
        );
        problem(
            client
                .admin(reqwest::Method::GET, "/admin/aggregates", None)
                .await,
            401,
            "unauthorized",
        );
        problem(
            client.metrics().await.map(serde_json::Value::String),
            401,
            "unauthorized",
        );
        problem(
            client
                .admin(reqwest::Method::POST, "/admin/drain", Some(&json!({})))
                .await,
            401,
            "unauthorized",
        );
    }
    let raw = anonymous
        .http()
        .get(format!("{}/admin/tenants", host.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    assert!(raw.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let p = problem(
        wrong
            .admin(reqwest::Method::GET, "/admin/aggregates", None)
            .await,
        401,
        "unauthorized",
    );
    assert_eq!(p["detail"], "the bearer token is wrong");
    // Nothing was deployed by the refused requests.
    let list = host
        .client()
        .admin(reqwest::Method::GET, "/admin/aggregates", None)
        .await
        .unwrap();
    assert_eq!(list["aggregates"], json!([]));
    // Probes and the API document need no token.
    anonymous.ready().await.unwrap();
    let health = anonymous
        .execute(anonymous.http().get(format!("{}/health", host.admin)))
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    anonymous
        .execute(anonymous.http().get(format!("{}/openapi.json", host.admin)))
        .await
        .unwrap();
    // The gateway never asks for the admin token.
    problem(
        anonymous.state("bank-account", &new_id()).await,
        404,
        "unknown-aggregate-type",
    );
}

async fn bad_uploads_change_nothing(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e uploads on JetStream") else {
        return;
    };
    let host = env.start(&[("AGGREGATE_MAX_COMPONENT_MB", "1")]);
    let client = host.client();
    let hash = deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    let before = client
        .admin(reqwest::Method::GET, "/admin/aggregates", None)
        .await
        .unwrap();
    let versions_before = client
        .admin(
            reqwest::Method::GET,
            "/admin/aggregates/bank-account/versions",
            None,
        )
        .await
        .unwrap();
    let components = env.dir.path().join("host/components");
    let blobs = || std::fs::read_dir(&components).unwrap().count();
    let blobs_before = blobs();

    let core_module =
        wat::parse_str(r#"(module (func (export "init") (result i32) i32.const 0))"#).unwrap();
    let oversized = {
        // A real component padded past the 1 MiB limit: the size alone must refuse it.
        let mut b = wasm(example_artifacts::BANK_ACCOUNT);
        b.resize((1 << 20) + 4096, 0);
        b
    };
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "not wasm",
            b"#!/bin/sh\necho hello\n".to_vec(),
            422,
            "component-rejected",
            "magic number",
        ),
        (
            "core module",
            core_module,
            422,
            "component-rejected",
            "core WebAssembly module",
        ),
        (
            "forbidden import",
            wasm(example_artifacts::FORBIDDEN_IMPORT),
            422,
            "component-rejected",
            "evil:net/exfil",
        ),
        ("oversized", oversized, 413, "payload-too-large", "1048576"),
    ];
    for (what, bytes, status, slug, needle) in cases {
        let p = problem(client.deploy("bank-account", bytes).await, status, slug);
        assert!(
            p["detail"].as_str().unwrap().contains(needle),
            "{what}: {p}"
        );
        let after = client
            .admin(reqwest::Method::GET, "/admin/aggregates", None)
            .await
            .unwrap();
        assert_eq!(after, before, "{what} changed the manifest");
        let versions = client
            .admin(
                reqwest::Method::GET,
                "/admin/aggregates/bank-account/versions",
                None,
            )
            .await
            .unwrap();
        assert_eq!(versions, versions_before, "{what} changed the history");
        assert_eq!(blobs(), blobs_before, "{what} stored a blob");
    }
    // A refused upload to a new type creates nothing either.
    problem(
        client.deploy("savings", b"nope".to_vec()).await,
        422,
        "component-rejected",
    );
    problem(
        client.state("savings", &id).await,
        404,
        "unknown-aggregate-type",
    );
    // Commands still run on the active component.
    let v = client
        .send("bank-account", &id, "deposit", &json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(v["component"], hash);
    // The upload metrics count the refusals by problem type.
    let text = client.metrics().await.unwrap();
    assert!(text.contains(r#"aggregate_component_deploys_total{aggregate_type="bank-account",outcome="component-rejected"} 3"#), "{text}");
    assert!(text.contains(r#"aggregate_component_deploys_total{aggregate_type="bank-account",outcome="payload-too-large"} 1"#), "{text}");
}

async fn rollback_restores_the_previous_component(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e rollback on JetStream") else {
        return;
    };
    let host = env.start(&[]);
    let client = host.client();
    problem(
        client
            .admin(
                reqwest::Method::POST,
                "/admin/aggregates/bank-account/rollback",
                None,
            )
            .await,
        404,
        "unknown-aggregate-type",
    );
    let v1 = deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    problem(
        client
            .admin(
                reqwest::Method::POST,
                "/admin/aggregates/bank-account/rollback",
                None,
            )
            .await,
        409,
        "no-earlier-version",
    );
    let v2 = deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT_V2).await;
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    let d = client
        .send("bank-account", &id, "deposit", &json!({"amount": 10}))
        .await
        .unwrap();
    assert_eq!(
        (
            d["component"].as_str(),
            d["events"][0]["schema_version"].as_u64()
        ),
        (Some(v2.as_str()), Some(2))
    );

    let r = client
        .admin(
            reqwest::Method::POST,
            "/admin/aggregates/bank-account/rollback",
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (r["component"].as_str(), r["version"].as_u64()),
        (Some(v1.as_str()), Some(3))
    );
    let versions = client
        .admin(
            reqwest::Method::GET,
            "/admin/aggregates/bank-account/versions",
            None,
        )
        .await
        .unwrap();
    assert_eq!(versions["component"], v1);
    // v1 again decides, and folds the v2 event it finds in the aggregate's history.
    let d = client
        .send("bank-account", &id, "deposit", &json!({"amount": 5}))
        .await
        .unwrap();
    assert_eq!(
        (
            d["component"].as_str(),
            d["events"][0]["schema_version"].as_u64()
        ),
        (Some(v1.as_str()), Some(1))
    );
    assert!(d["events"][0]["payload"].get("currency").is_none());
    let s = client.state("bank-account", &id).await.unwrap();
    assert_eq!(s["state"]["balance"], 15);
    // Rolled back survives a restart (the manifest is persisted).
    drop(host);
    let host = env.start(&[]);
    let versions = host
        .client()
        .admin(
            reqwest::Method::GET,
            "/admin/aggregates/bank-account/versions",
            None,
        )
        .await
        .unwrap();
    assert_eq!(versions["component"], v1);
}

#[test]
fn refuses_to_start_off_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BINARY)
        .arg("serve")
        .env("AGGREGATE_DATA_DIR", dir.path())
        .env("AGGREGATE_GATEWAY_LISTEN", "127.0.0.1:0")
        .env("AGGREGATE_ADMIN_LISTEN", "0.0.0.0:0")
        .env_remove("AGGREGATE_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin_token") && stderr.contains("loopback"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it must not report listening");
    // With a token it starts (and stops on SIGTERM).
    let env = Env {
        backend: Backend::Embedded,
        dir,
        nats: None,
    };
    let mut host = env.start(&[
        ("AGGREGATE_ADMIN_LISTEN", "0.0.0.0:0"),
        ("AGGREGATE_ADMIN_TOKEN", TOKEN),
    ]);
    assert!(host.stop().success());
}
