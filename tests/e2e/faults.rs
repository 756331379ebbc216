//! Faults found by trying the product as a hostile user would (issue 8), each as the small input
//! that showed it and the right behaviour: command ids bound to one aggregate, bookkeeping that
//! grows only from accepted work, a full disk, and requests that race a SIGTERM.

use std::time::{Duration, Instant};

use aggregate_host::client::{ClientError, CommandOptions};
use serde_json::json;

use crate::support::disk::{fill, Tmpfs};
use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(a_command_id_reused_on_another_aggregate_is_refused);

/// Tenant `acme`: `deposit` to Y with `x-command-id: K` (200), then to Z with the same K: 409
/// `command-id-reused` naming Y — never a `duplicate: true` answer describing Y. The same K on Y
/// keeps returning the original; both hold across a restart.
async fn a_command_id_reused_on_another_aggregate_is_refused(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e command id reuse on JetStream") else {
        return;
    };
    let (y, z, k) = (new_id(), new_id(), new_id());
    let with_k = CommandOptions {
        command_id: Some(k.clone()),
        ..Default::default()
    };
    let deposit = json!({"amount": 5});
    {
        let mut host = env.start(&[("AGGREGATE_MULTI_TENANT", "true")]);
        deploy(
            &host.client(),
            "bank-account",
            example_artifacts::BANK_ACCOUNT,
        )
        .await;
        let acme = host.tenant("acme");
        for id in [&y, &z] {
            acme.send("bank-account", id, "open", &json!({"owner": "Ada"}))
                .await
                .unwrap();
        }
        let first = acme
            .send_with("bank-account", &y, "deposit", &deposit, &with_k)
            .await
            .unwrap();
        assert_eq!(first["duplicate"], false);
        let p = problem(
            acme.send_with("bank-account", &z, "deposit", &deposit, &with_k)
                .await,
            409,
            "command-id-reused",
        );
        assert_eq!(
            (p["first_aggregate_id"].as_str(), p["command_id"].as_str()),
            (Some(y.as_str()), Some(k.as_str())),
            "{p}"
        );
        assert_eq!(
            acme.state("bank-account", &z).await.unwrap()["state"]["balance"],
            0,
            "nothing happened to Z"
        );
        let again = acme
            .send_with("bank-account", &y, "deposit", &deposit, &with_k)
            .await
            .unwrap();
        assert_eq!(
            (again["duplicate"].as_bool(), &again["version"]),
            (Some(true), &first["version"])
        );
        assert_eq!(host.stop().code(), Some(0));
    }
    let host = env.start(&[("AGGREGATE_MULTI_TENANT", "true")]);
    let acme = host.tenant("acme");
    problem(
        acme.send_with("bank-account", &z, "deposit", &deposit, &with_k)
            .await,
        409,
        "command-id-reused",
    );
    let again = acme
        .send_with("bank-account", &y, "deposit", &deposit, &with_k)
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true);
    for (id, balance) in [(&y, 5), (&z, 0)] {
        assert_eq!(
            acme.state("bank-account", id).await.unwrap()["state"]["balance"],
            balance
        );
    }
}

/// Unauthenticated callers cannot grow the host's bookkeeping: commands to made-up (well-formed)
/// aggregate types and from made-up tenants add no metric series and no `/admin/tenants` entry;
/// a tenant appears once it has an accepted command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_types_and_tenants_leave_no_trace() {
    let env = Env::new(Backend::Embedded, "").unwrap();
    let host = env.start(&[("AGGREGATE_MULTI_TENANT", "true")]);
    let admin = host.client();
    deploy(&admin, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let h = &host;
    let junk = |i: usize| async move {
        let tenant = h.tenant(&format!("made-up-tenant-{i}"));
        problem(
            tenant
                .send(&format!("made-up-type-{i}"), &new_id(), "open", &json!({}))
                .await,
            404,
            "unknown-aggregate-type",
        );
        // A deployed type, but nothing accepted: rejected and invalid commands.
        problem(
            tenant
                .send("bank-account", &new_id(), "deposit", &json!({"amount": 1}))
                .await,
            422,
            "command-rejected",
        );
        problem(
            tenant
                .send("bank-account", &new_id(), "open", &json!({"owner": 7}))
                .await,
            400,
            "invalid-command",
        );
        problem(
            tenant.state("bank-account", &new_id()).await,
            404,
            "unknown-aggregate",
        );
    };
    junk(0).await; // the fixed `=other` / `=unknown` series exist from here on
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = admin.metrics().await.unwrap();
    for i in 1..=30 {
        junk(i).await;
    }
    let after = admin.metrics().await.unwrap();
    assert_eq!(
        series(&before),
        series(&after),
        "30 made-up tenants and types added metric series"
    );
    assert!(!after.contains("made-up-"), "{after}");
    assert!(
        after.contains(r#"aggregate_type="=unknown""#) && after.contains(r#"tenant_id="=other""#)
    );
    let tenants = admin
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    assert!(!tenants.to_string().contains("made-up-"), "{tenants}");

    // Accepted work makes a tenant visible, in the table and as a label.
    host.tenant("acme")
        .send("bank-account", &new_id(), "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    let tenants = admin
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    assert!(tenants.to_string().contains("\"acme\""), "{tenants}");
    assert!(admin
        .metrics()
        .await
        .unwrap()
        .contains(r#"aggregate_commands_total{aggregate_type="bank-account",outcome="accepted",tenant_id="acme"} 1"#));
}

/// Embedded log with the data directory on a small filesystem: once writes fail for lack of
/// space, `/ready` answers 503 naming the storage problem and commands are refused with 503 at
/// once; after space is freed the host recovers by itself (no restart) and no acknowledged
/// command is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_readiness_and_the_host_recovers_when_space_returns() {
    let Some(fs) = Tmpfs::mount(64) else {
        eprintln!("SKIPPED a_full_disk_fails_readiness...: cannot mount a tmpfs (needs root)");
        return;
    };
    let env = Env::new(Backend::Embedded, "").unwrap();
    let data = fs.path().join("host");
    let mut host = env.start_in(&data, &[("AGGREGATE_SNAPSHOT_EVERY", "5")]);
    let client = host.client();
    deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    let mut acknowledged = 0i64;
    let deposit = |n: usize| {
        let client = client.clone();
        let id = id.clone();
        async move {
            let opts = CommandOptions {
                command_id: Some(format!("{:08x}-0000-7000-8000-000000000000", n)),
                ..Default::default()
            };
            client
                .send_with("bank-account", &id, "deposit", &json!({"amount": 1}), &opts)
                .await
        }
    };
    for n in 0..20 {
        deposit(n).await.unwrap();
        acknowledged += 1;
    }
    let filler = fill(fs.path());
    // Some commits may still fit in the journal's last page; soon one fails.
    let mut next = 20;
    let failed_at = loop {
        assert!(next < 2_000, "no command failed on a full disk");
        match deposit(next).await {
            Ok(_) => acknowledged += 1,
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e:?}");
                break next;
            }
        }
        next += 1;
    };
    // While full: not ready, naming storage; commands refused at once with Retry-After.
    let not_ready = client.ready().await;
    let p = problem(not_ready, 503, "not-ready");
    assert!(
        p["checks"]["storage"]["ok"] == false && p.to_string().contains("writes fail"),
        "{p}"
    );
    let started = Instant::now();
    let refused = client
        .http()
        .post(format!(
            "{}/aggregates/bank-account/{id}/commands/deposit",
            host.gateway
        ))
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(1));
    let health: serde_json::Value = client
        .http()
        .get(format!("{}/health", host.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(health["status"], "ok", "{health}");

    // Space returns: the host recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.ready().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "not ready 20 s after space returned; log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The failed command is safe to retry with its id: applied exactly once.
    deposit(failed_at).await.unwrap();
    acknowledged += 1;
    for n in failed_at + 1..failed_at + 11 {
        deposit(n).await.unwrap();
        acknowledged += 1;
    }
    let state = client.state("bank-account", &id).await.unwrap();
    assert_eq!(state["state"]["balance"], acknowledged, "{state}");
    assert_eq!(host.stop().code(), Some(0), "{}", host.log());
    let host = env.start_in(&data, &[]);
    let state = host.client().state("bank-account", &id).await.unwrap();
    assert_eq!(
        state["state"]["balance"], acknowledged,
        "after a restart: {state}"
    );
    assert_eq!(state["version"], acknowledged + 1);
}

/// Requests that arrive on an open keep-alive connection just after SIGTERM get an answer (503
/// `shutting-down`, or a success), never a dropped connection; those refusals are not logged as
/// errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_sigterm_are_answered_not_dropped() {
    let env = Env::new(Backend::Embedded, "").unwrap();
    let mut host = env.start(&[("AGGREGATE_SHUTDOWN_LINGER_MS", "2000")]);
    let client = host.client();
    deploy(&client, "bank-account", example_artifacts::BANK_ACCOUNT).await;
    let id = new_id();
    client
        .send("bank-account", &id, "open", &json!({"owner": "Ada"}))
        .await
        .unwrap();
    host.terminate();
    let deadline = Instant::now() + Duration::from_secs(2);
    let refused = loop {
        assert!(Instant::now() < deadline, "never saw 503 shutting-down");
        match client
            .send("bank-account", &id, "deposit", &json!({"amount": 1}))
            .await
        {
            Ok(_) => continue,
            Err(ClientError::Problem { status, problem }) => {
                assert_eq!(
                    (status, problem["type"].as_str()),
                    (503, Some("/problems/shutting-down")),
                    "{problem}"
                );
                break problem;
            }
            Err(e) => panic!("a request racing SIGTERM was dropped: {e:?}"),
        }
    };
    // More requests on the same client during the linger: answered too.
    for _ in 0..5 {
        problem(
            client
                .send("bank-account", &id, "deposit", &json!({"amount": 1}))
                .await,
            503,
            "shutting-down",
        );
    }
    assert!(refused["detail"].is_string());
    let status = host.wait(Duration::from_secs(20));
    assert!(status.success(), "{}", host.log());
    let log = host.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("\"level\":\"ERROR\""))
        .collect();
    assert!(
        errors.is_empty(),
        "expected refusals logged as errors: {errors:#?}"
    );
    assert!(log.contains("request refused"), "{log}");
}

/// A guest call that outlives the grace period (limits raised to the maximum) does not keep the
/// process alive after SIGTERM: the host exits once the grace period is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_call_running_past_the_grace_period_does_not_hold_the_exit() {
    let env = Env::new(Backend::Embedded, "").unwrap();
    let mut host = env.start(&[("AGGREGATE_SHUTDOWN_GRACE_SECS", "1")]);
    let client = host.client();
    deploy(&client, "hostile", example_artifacts::HOSTILE).await;
    let too_long = json!({"timeout_ms": 600_001});
    problem(
        client
            .admin(
                reqwest::Method::PUT,
                "/admin/aggregates/hostile/limits",
                Some(&too_long),
            )
            .await,
        400,
        "invalid-input",
    );
    let limits = json!({"fuel": 1_000_000_000_000_000u64, "timeout_ms": 600_000});
    client
        .admin(
            reqwest::Method::PUT,
            "/admin/aggregates/hostile/limits",
            Some(&limits),
        )
        .await
        .unwrap();
    let spinning = {
        let client = client.clone();
        tokio::spawn(async move { client.send("hostile", &new_id(), "spin", &json!({})).await })
    };
    // Wait until the command is running.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tenants = client
            .admin(reqwest::Method::GET, "/admin/tenants", None)
            .await
            .unwrap();
        if tenants.to_string().contains("\"in_flight\":1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the command never ran: {tenants}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    host.terminate();
    let (status, host) = tokio::task::spawn_blocking(move || {
        let status = host.wait(Duration::from_secs(20));
        (status, host)
    })
    .await
    .unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "exit took {:?}",
        stopping.elapsed()
    );
    assert!(status.code().is_some(), "exited by itself: {status}");
    assert!(
        host.log().contains("commands still running at exit"),
        "{}",
        host.log()
    );
    spinning.abort();
}
