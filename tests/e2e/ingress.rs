//! Commands over NATS (the NATS service endpoint): the bank-account story as NATS requests,
//! errors as a status header plus the problem JSON, idempotent retries, tenant isolation, and
//! the same metrics as over HTTP; JWT authentication of the gateway does not apply to it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{deploy, new_id, Backend, Env};

/// A command over NATS: `(Aggregate-Status, Nats-Service-Error-Code, body)`.
async fn request(
    nats: &async_nats::Client,
    subject: String,
    headers: &[(&str, &str)],
    payload: &str,
) -> (u16, Option<String>, Value) {
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        map.insert(*k, *v);
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request_with_headers(subject, map, payload.to_string().into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    let h = reply.headers.expect("reply headers");
    let status: u16 = h
        .get("Aggregate-Status")
        .expect("Aggregate-Status")
        .as_str()
        .parse()
        .unwrap();
    let code = h
        .get("Nats-Service-Error-Code")
        .map(|v| v.as_str().to_string());
    (
        status,
        code,
        serde_json::from_slice(&reply.payload).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_nats() {
    let Some(env) = Env::new(Backend::JetStream, "e2e NATS ingress") else {
        return;
    };
    let secret = env.dir.path().join("hs256.secret");
    std::fs::write(&secret, "a shared secret of at least thirty-two bytes").unwrap();
    let host = env.start(&[
        ("AGGREGATE_MULTI_TENANT", "true"),
        // The HTTP gateway needs a token; the NATS endpoint does not.
        (
            "AGGREGATE_JWT_HS256_SECRET_FILE",
            &secret.display().to_string(),
        ),
        ("AGGREGATE_JWT_ISSUER", "iss"),
        ("AGGREGATE_JWT_AUDIENCE", "aud"),
    ]);
    deploy(
        &host.client(),
        "bank-account",
        example_artifacts::BANK_ACCOUNT,
    )
    .await;
    let nats = async_nats::connect(env.nats.as_ref().unwrap().url())
        .await
        .unwrap();
    let id = new_id();
    let subject =
        |tenant: &str, command: &str| format!("aggregate.cmd.{tenant}.bank-account.{id}.{command}");
    // The endpoint subscribes once NATS is up: poll until it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match nats
            .request(subject("acme", "open"), r#"{"owner": ""}"#.into())
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for the endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the NATS endpoint never answered: {e}"),
        }
    }

    // The story.
    let (status, code, body) =
        request(&nats, subject("acme", "open"), &[], r#"{"owner": "Ada"}"#).await;
    assert_eq!(
        (status, code, body["version"].as_u64()),
        (200, None, Some(1)),
        "{body}"
    );
    let deposit_id = aggregate_host::types::CommandId::generate().to_string();
    let (status, _, first) = request(
        &nats,
        subject("acme", "deposit"),
        &[
            ("x-command-id", &deposit_id),
            ("x-correlation-id", "corr-nats"),
        ],
        r#"{"amount": 100}"#,
    )
    .await;
    assert_eq!(
        (status, first["version"].as_u64()),
        (200, Some(2)),
        "{first}"
    );
    assert_eq!(
        first["events"][0]["metadata"]["correlation_id"],
        "corr-nats"
    );
    let (status, _, body) = request(
        &nats,
        subject("acme", "withdraw"),
        &[("x-expected-version", "2")],
        r#"{"amount": 30}"#,
    )
    .await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(3)), "{body}");

    // An idempotent retry: the original answer, nothing written.
    let (status, _, again) = request(
        &nats,
        subject("acme", "deposit"),
        &[("x-command-id", &deposit_id)],
        r#"{"amount": 100}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (again["duplicate"].as_bool(), again["version"].as_u64()),
        (Some(true), Some(2))
    );
    // Header names in any case, as over HTTP.
    let (status, _, again) = request(
        &nats,
        subject("acme", "deposit"),
        &[("X-Command-Id", &deposit_id)],
        r#"{"amount": 100}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["duplicate"].as_bool(), Some(true), "{again}");

    // Errors: the status header, the service error code and the problem JSON.
    // (subject, headers, payload, status, problem)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            subject("acme", "withdraw"),
            vec![],
            r#"{"amount": 1000}"#,
            422,
            "command-rejected",
        ),
        (
            subject("acme", "deposit"),
            vec![],
            "{not json",
            400,
            "invalid-input",
        ),
        (
            subject("acme", "deposit"),
            vec![("x-expected-version", "1")],
            r#"{"amount": 1}"#,
            409,
            "version-conflict",
        ),
        (
            subject("acme", "deposit"),
            vec![("x-tenant-id", "globex")],
            r#"{"amount": 1}"#,
            403,
            "tenant-mismatch",
        ),
        (
            format!("aggregate.cmd.acme.no-such-type.{id}.open"),
            vec![],
            "{}",
            404,
            "unknown-aggregate-type",
        ),
        (
            "aggregate.cmd.acme.bank-account.not-an-id.open".to_string(),
            vec![],
            "{}",
            400,
            "invalid-input",
        ),
        (
            format!("aggregate.cmd.acme.bank-account.{id}"),
            vec![],
            "{}",
            400,
            "invalid-input",
        ),
    ];
    for (subject, headers, payload, want, slug) in cases {
        let (status, code, body) = request(&nats, subject.clone(), &headers, payload).await;
        assert_eq!(status, want, "{subject}: {body}");
        assert_eq!(
            code.as_deref(),
            Some(want.to_string().as_str()),
            "{subject}"
        );
        assert_eq!(
            body["type"],
            format!("/problems/{slug}"),
            "{subject}: {body}"
        );
    }

    // Tenant isolation: the same aggregate id under another tenant is another aggregate.
    let (status, _, body) =
        request(&nats, subject("globex", "deposit"), &[], r#"{"amount": 5}"#).await;
    assert_eq!(
        (status, body["type"].as_str()),
        (422, Some("/problems/command-rejected")),
        "{body}"
    );
    let (status, _, body) =
        request(&nats, subject("globex", "open"), &[], r#"{"owner": "Gil"}"#).await;
    assert_eq!((status, body["version"].as_u64()), (200, Some(1)), "{body}");
    let (status, _, body) =
        request(&nats, subject("acme", "deposit"), &[], r#"{"amount": 1}"#).await;
    assert_eq!(
        (status, body["version"].as_u64()),
        (200, Some(4)),
        "acme's account is its own: {body}"
    );

    // The same metrics as over HTTP.
    let metrics = host.client().metrics().await.unwrap();
    let accepted = metrics
        .lines()
        .find(|l| l.starts_with(r#"aggregate_commands_total{aggregate_type="bank-account",outcome="accepted",tenant_id="acme"}"#))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(accepted.ends_with(" 4"), "{accepted}");
    assert!(
        metrics.contains(r#"outcome="rejected",tenant_id="acme"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outcome="duplicate",tenant_id="acme"} 2"#),
        "{metrics}"
    );
    // Over HTTP, the same host wants a token.
    crate::support::problem(
        host.tenant("acme").state("bank-account", &id).await,
        401,
        "unauthorized",
    );
}
