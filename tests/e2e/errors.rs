//! Every error mapping of the gateway, as a client sees it: status, `application/problem+json`,
//! and the stable problem type.

use serde_json::json;

use aggregate_host::client::CommandOptions;

use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(every_error_mapping);

async fn every_error_mapping(backend: Backend) {
    let Some(mut env) = Env::new(backend, "e2e error mappings on JetStream") else {
        return;
    };
    let host = env.start(&[
        ("AGGREGATE_MULTI_TENANT", "true"),
        ("AGGREGATE_TENANTS", "acme,globex"),
        ("AGGREGATE_MAX_COMMAND_BYTES", "4096"),
    ]);
    let admin = host.client();
    deploy(&admin, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    deploy(&admin, "hostile", example_artifacts::HOSTILE).await;
    let acme = host.tenant("acme");
    let id = new_id();
    acme.send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();

    // The raw answer: status, media type, body members.
    let raw = admin
        .http()
        .post(format!(
            "{}/aggregates/bank-account/{id}/commands/deposit",
            host.gateway
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(raw.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(body["type"], "/problems/missing-tenant");
    assert!(
        body["detail"].as_str().unwrap().contains("x-tenant-id"),
        "{body}"
    );

    // 400 invalid input: tenant, id, body, command type, header.
    let p = problem(
        host.tenant("a.b")
            .send("bank-account", &id, "deposit", &json!({"amount": 1}))
            .await,
        400,
        "invalid-input",
    );
    assert_eq!(p["field"], "tenant id");
    let p = problem(
        acme.send("bank-account", "42", "deposit", &json!({"amount": 1}))
            .await,
        400,
        "invalid-input",
    );
    assert_eq!(p["field"], "aggregate id");
    let not_json = acme
        .execute(
            acme.http()
                .post(format!(
                    "{}/aggregates/bank-account/{id}/commands/deposit",
                    host.gateway
                ))
                .header("x-tenant-id", "acme")
                .body("{amount: 1"),
        )
        .await;
    assert!(problem(not_json, 400, "invalid-input")["detail"]
        .as_str()
        .unwrap()
        .contains("not JSON"));
    let bad_id = CommandOptions {
        command_id: Some("not-a-uuid".into()),
        ..Default::default()
    };
    let p = problem(
        acme.send_with(
            "bank-account",
            &id,
            "deposit",
            &json!({"amount": 1}),
            &bad_id,
        )
        .await,
        400,
        "invalid-input",
    );
    assert_eq!(p["field"], "command id");
    // 400 invalid command: the guest's own verdict, with its message.
    let p = problem(
        acme.send("bank-account", &id, "deposit", &json!({"amount": -5}))
            .await,
        400,
        "invalid-command",
    );
    assert_eq!(p["detail"], "amount must be positive, got -5");
    let p = problem(
        acme.send("bank-account", &id, "close", &json!({})).await,
        400,
        "invalid-command",
    );
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("unknown variant `close`"),
        "{p}"
    );

    // 403 tenant denied.
    let p = problem(
        host.tenant("initech")
            .send("bank-account", &id, "deposit", &json!({"amount": 1}))
            .await,
        403,
        "tenant-denied",
    );
    assert_eq!(p["tenant_id"], "initech");
    // Tenants are isolated: globex does not see acme's aggregate.
    problem(
        host.tenant("globex").state("bank-account", &id).await,
        404,
        "unknown-aggregate",
    );

    // 404 unknown aggregate type and unknown aggregate.
    let p = problem(
        acme.send("savings", &id, "open", &json!({})).await,
        404,
        "unknown-aggregate-type",
    );
    assert_eq!(p["aggregate_type"], "savings");
    problem(
        acme.state("bank-account", &new_id()).await,
        404,
        "unknown-aggregate",
    );
    problem(
        acme.events("bank-account", &new_id(), 0, 10).await,
        404,
        "unknown-aggregate",
    );

    // 409 version conflict.
    let stale = CommandOptions {
        expected_version: Some(0),
        ..Default::default()
    };
    let p = problem(
        acme.send_with(
            "bank-account",
            &id,
            "deposit",
            &json!({"amount": 1}),
            &stale,
        )
        .await,
        409,
        "version-conflict",
    );
    assert_eq!(
        (p["expected_version"].as_u64(), p["actual_version"].as_u64()),
        (Some(0), Some(1))
    );

    // 413 body over `max_command_bytes`.
    let big = json!({ "owner": "x".repeat(5000) });
    let p = problem(
        acme.send("bank-account", &new_id(), "open", &big).await,
        413,
        "payload-too-large",
    );
    assert_eq!(p["limit"], 4096);

    // 422 rejected, with the guest's message.
    let p = problem(
        acme.send("bank-account", &id, "withdraw", &json!({"amount": 1}))
            .await,
        422,
        "command-rejected",
    );
    assert_eq!(p["detail"], "insufficient funds: balance 0, requested 1");

    // 422 limit breaches: fuel, memory, time.
    let limits = |body: serde_json::Value| {
        let admin = admin.clone();
        async move {
            admin
                .admin(
                    reqwest::Method::PUT,
                    "/admin/aggregates/hostile/limits",
                    Some(&body),
                )
                .await
        }
    };
    limits(json!({"fuel": 2_000_000})).await.unwrap();
    let h = new_id();
    let p = problem(
        acme.send("hostile", &h, "spin", &json!({})).await,
        422,
        "limit-exceeded",
    );
    assert_eq!(p["limit"], "fuel");
    limits(json!({"fuel": 1_000_000_000_000u64, "max_memory_bytes": 4 << 20, "timeout_ms": 5_000}))
        .await
        .unwrap();
    let p = problem(
        acme.send("hostile", &h, "hog", &json!({})).await,
        422,
        "limit-exceeded",
    );
    assert_eq!(p["limit"], "memory");
    limits(json!({"fuel": 1_000_000_000_000u64, "timeout_ms": 100}))
        .await
        .unwrap();
    let p = problem(
        acme.send("hostile", &h, "spin", &json!({})).await,
        422,
        "limit-exceeded",
    );
    assert_eq!(p["limit"], "timeout");
    // 500 guest fault: opaque body, the details in the log.
    let p = problem(
        acme.send("hostile", &h, "panic", &json!({})).await,
        500,
        "guest-fault",
    );
    assert_eq!(p["kind"], "panic");
    assert!(!p.to_string().contains("boom"), "{p}");
    assert!(host.log().contains("boom"), "the log has the panic message");
    // The host keeps serving after all that.
    acme.send("hostile", &h, "ok", &json!({})).await.unwrap();

    // 404/405 for routes.
    problem(
        acme.execute(acme.http().get(format!("{}/nowhere", host.gateway)))
            .await,
        404,
        "not-found",
    );
    problem(
        acme.execute(
            acme.http()
                .delete(format!("{}/aggregates/bank-account/{id}", host.gateway)),
        )
        .await,
        405,
        "method-not-allowed",
    );

    // 503 dependency down: only JetStream has a dependency to lose.
    if let Some(nats) = env.nats.as_mut() {
        nats.kill();
        let p = problem(
            acme.send("bank-account", &new_id(), "open", &json!({"owner": "B"}))
                .await,
            503,
            "unavailable",
        );
        assert!(
            !p["detail"].as_str().unwrap().contains("nats:"),
            "opaque: {p}"
        );
        let health = admin
            .execute(admin.http().get(format!("{}/health", host.admin)))
            .await
            .unwrap();
        assert_eq!(
            (health["status"].as_str(), health["nats"]["ok"].as_bool()),
            (Some("degraded"), Some(false)),
            "{health}"
        );
        let p = problem(admin.ready().await, 503, "not-ready");
        assert_eq!(p["checks"]["nats"]["ok"], false, "{p}");
        nats.restart();
        // The client reconnects by itself; the host recovers without a restart.
        let mut recovered = false;
        for _ in 0..100 {
            if acme
                .send("bank-account", &id, "deposit", &json!({"amount": 3}))
                .await
                .is_ok()
            {
                recovered = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            recovered,
            "no recovery after NATS came back; log:\n{}",
            host.log()
        );
        admin.ready().await.unwrap();
    }
}

/// Two hosts on one JetStream stream: a host whose cached version is stale meets a real append
/// conflict; with one attempt allowed that is a 409, and the next command succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_conflict_on_jetstream() {
    let Some(env) = Env::new(Backend::JetStream, "e2e two-host conflict") else {
        return;
    };
    let one_attempt = [("AGGREGATE_MAX_ATTEMPTS", "1")];
    let a = env.start_in(&env.dir.path().join("a"), &one_attempt);
    let b = env.start_in(&env.dir.path().join("b"), &one_attempt);
    deploy(&a.client(), "bank-account", example_artifacts::BANK_ACCOUNT).await;
    deploy(&b.client(), "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let id = new_id();
    a.client()
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    // b learns version 1 (and caches it); a moves the aggregate on to version 2.
    assert_eq!(
        b.client().state("bank-account", &id).await.unwrap()["version"],
        1
    );
    a.client()
        .send("bank-account", &id, "deposit", &json!({"amount": 10}))
        .await
        .unwrap();
    let p = problem(
        b.client()
            .send("bank-account", &id, "deposit", &json!({"amount": 1}))
            .await,
        409,
        "version-conflict",
    );
    assert_eq!(p["attempts"], 1, "{p}");
    let v = b
        .client()
        .send("bank-account", &id, "deposit", &json!({"amount": 1}))
        .await
        .unwrap();
    assert_eq!(v["version"], 3);
    let text = b.client().metrics().await.unwrap();
    assert!(text.contains(r#"aggregate_version_conflicts_total{aggregate_type="bank-account",tenant_id="=single"} 1"#), "{text}");
    assert!(text.contains(r#"aggregate_commands_total{aggregate_type="bank-account",outcome="conflict",tenant_id="=single"} 1"#));
}
