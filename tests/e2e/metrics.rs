//! `/metrics`: the Prometheus text has every metric the host promises, per-command ones labelled
//! with the tenant.

use serde_json::json;

use aggregate_host::client::CommandOptions;

use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(metrics_are_labelled_by_tenant);

async fn metrics_are_labelled_by_tenant(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e metrics on JetStream") else {
        return;
    };
    let host = env.start(&[("AGGREGATE_MULTI_TENANT", "true")]);
    let admin = host.client();
    deploy(&admin, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    deploy(&admin, "hostile", example_artifacts::HOSTILE).await;
    admin
        .admin(
            reqwest::Method::PUT,
            "/admin/aggregates/hostile/limits",
            Some(&json!({"fuel": 1_000_000})),
        )
        .await
        .unwrap();
    let acme = host.tenant("acme");
    let id = new_id();
    acme.send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    acme.send("bank-account", &id, "deposit", &json!({"amount": 10}))
        .await
        .unwrap();
    problem(
        acme.send("bank-account", &id, "withdraw", &json!({"amount": 99}))
            .await,
        422,
        "command-rejected",
    );
    let stale = CommandOptions {
        expected_version: Some(1),
        ..Default::default()
    };
    problem(
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
    problem(
        acme.send("hostile", &new_id(), "spin", &json!({})).await,
        422,
        "limit-exceeded",
    );
    host.tenant("globex")
        .send("bank-account", &new_id(), "open", &json!({"owner": "G"}))
        .await
        .unwrap();

    let text = admin.metrics().await.unwrap();
    let tenant_lines = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(r#"tenant_id="acme""#))
            .count()
    };
    for name in [
        "aggregate_commands_total",
        "aggregate_command_duration_seconds_bucket",
        "aggregate_decide_fuel_used_bucket",
        "aggregate_version_conflicts_total",
        "aggregate_rehydration_duration_seconds_bucket",
        "aggregate_hot_cache_total",
        "aggregate_limit_breaches_total",
        "aggregate_tenant_errors_total",
    ] {
        assert!(
            tenant_lines(name) > 0,
            "no {name} line with tenant_id=\"acme\" in\n{text}"
        );
    }
    for line in [
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="accepted",tenant_id="acme"} 2"#,
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="rejected",tenant_id="acme"} 1"#,
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="accepted",tenant_id="globex"} 1"#,
        r#"aggregate_version_conflicts_total{aggregate_type="bank-account",tenant_id="acme"} 1"#,
        r#"aggregate_limit_breaches_total{aggregate_type="hostile",kind="fuel",tenant_id="acme"} 1"#,
        r#"aggregate_tenant_errors_total{problem="command-rejected",tenant_id="acme"} 1"#,
        r#"aggregate_component_deploys_total{aggregate_type="bank-account",outcome="deployed"} 1"#,
        "aggregate_component_compile_duration_seconds_count 2",
        r#"aggregate_component_cache_total{result="compiled"} 2"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    assert!(text.contains("# TYPE aggregate_command_duration_seconds histogram"));
    assert!(text.contains(r#"aggregate_instance_pool_total{result="hit"}"#));
}
