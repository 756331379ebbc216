//! Tenancy over HTTP: JWT authentication of the gateway (real RS256 and HS256 tokens), the
//! tenant taken from the token's claim, the actor in the events' metadata, and per-tenant
//! quotas (rate with `Retry-After`, number of aggregates) with their usage in `/metrics` and
//! `/admin/tenants`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use aggregate_host::client::Client;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{deploy, new_id, problem, Backend, Env};

crate::on_both_logs!(jwt_authenticates_the_gateway);
crate::on_both_logs!(quotas_refuse_a_tenant_over_its_bounds);

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "aggregate-host";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/e2e/fixtures/jwt")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims that pass every check; tests change one at a time.
fn claims(tenant: Option<&str>, sub: &str) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "exp": now() + 600,
        "iat": now(),
    });
    if let Some(t) = tenant {
        c["tenant_id"] = json!(t);
    }
    c
}

fn rs256(private_pem: &str, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(private_pem)).unwrap()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A valid RS256 token (the fixture key) for `tenant` and `sub`.
fn rs(tenant: Option<&str>, sub: &str) -> Option<String> {
    Some(rs256("rs256-private.pem", &claims(tenant, sub)))
}

fn as_caller(host: &crate::support::HostProcess, token: Option<String>) -> Client {
    host.client().with_gateway_token(token)
}

async fn jwt_authenticates_the_gateway(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e JWT on JetStream") else {
        return;
    };
    let public = fixture("rs256-public.pem").display().to_string();
    let config = env.dir.path().join("jwt.yaml");
    std::fs::write(
        &config,
        "quotas:\n  tenants:\n    limited:\n      commands_per_sec: 0.001\n      burst: 1\n",
    )
    .unwrap();
    let host = env.start(&[
        ("AGGREGATE_CONFIG", &config.display().to_string()),
        ("AGGREGATE_MULTI_TENANT", "true"),
        ("AGGREGATE_JWT_PUBLIC_KEY_FILE", &public),
        ("AGGREGATE_JWT_ISSUER", ISSUER),
        ("AGGREGATE_JWT_AUDIENCE", AUDIENCE),
    ]);
    deploy(
        &host.client(),
        "bank-account",
        example_artifacts::BANK_ACCOUNT,
    )
    .await;
    let id = new_id();
    let open = json!({"owner": "Ada"});

    // A valid token, no x-tenant-id: the claim's tenant is used.
    let alice = as_caller(&host, rs(Some("acme"), "alice"));
    let answer = alice
        .send("bank-account", &id, "open", &open)
        .await
        .unwrap();
    assert_eq!(answer["version"], 1);
    let state = host
        .tenant("acme")
        .with_gateway_token(rs(Some("acme"), "alice"))
        .state("bank-account", &id)
        .await
        .unwrap();
    assert_eq!(state["state"]["owner"], "Ada", "{state}");
    // The actor is in the events' metadata.
    let events = alice.events("bank-account", &id, 0, 100).await.unwrap();
    assert_eq!(
        events["events"][0]["metadata"]["actor"], "alice",
        "{events}"
    );
    // Another tenant's token does not see acme's aggregate.
    let bob = as_caller(&host, rs(Some("globex"), "bob"));
    problem(
        bob.state("bank-account", &id).await,
        404,
        "unknown-aggregate",
    );

    // Refusals, each with its own message.
    let mut expired = claims(Some("acme"), "alice");
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims(Some("acme"), "alice");
    wrong_audience["aud"] = json!("someone-else");
    let cases = [
        ("missing", None),
        ("expired", Some(rs256("rs256-private.pem", &expired))),
        (
            "bad-signature",
            Some(rs256(
                "other-rs256-private.pem",
                &claims(Some("acme"), "alice"),
            )),
        ),
        (
            "wrong-audience",
            Some(rs256("rs256-private.pem", &wrong_audience)),
        ),
        ("malformed", Some("not.a.token".to_string())),
        // A multi-tenant host takes the tenant from the token only.
        ("claim", rs(None, "alice")),
        // An empty tenant claim, and the reserved `_`, name no tenant.
        ("claim", rs(Some(""), "alice")),
        ("claim", rs(Some("_"), "alice")),
    ];
    let mut details = std::collections::HashSet::new();
    for (reason, token) in cases {
        let r = as_caller(&host, token)
            .send("bank-account", &new_id(), "open", &open)
            .await;
        let p = problem(r, 401, "unauthorized");
        assert_eq!(p["reason"], reason, "{p}");
        details.insert(p["detail"].as_str().unwrap().to_string());
    }
    assert_eq!(details.len(), 6, "six reasons, six messages: {details:?}");
    // Two Authorization headers (a valid token and another): refused, not the first taken.
    let raw = reqwest::Client::new()
        .post(format!(
            "{}/aggregates/bank-account/{}/commands/open",
            host.gateway,
            new_id()
        ))
        .header(
            "authorization",
            format!("Bearer {}", rs(Some("acme"), "alice").unwrap()),
        )
        .header("authorization", "Bearer garbage")
        .json(&open)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    let p: Value = raw.json().await.unwrap();
    assert_eq!(p["reason"], "malformed", "{p}");
    // The WWW-Authenticate header names the gateway's realm.
    let raw = reqwest::Client::new()
        .get(format!("{}/aggregates/bank-account/{id}", host.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    assert!(raw.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));
    // Header and claim disagree: 403, and nothing is written.
    let p = problem(
        host.tenant("globex")
            .with_gateway_token(rs(Some("acme"), "alice"))
            .send("bank-account", &id, "deposit", &json!({"amount": 5}))
            .await,
        403,
        "tenant-mismatch",
    );
    assert_eq!(
        (p["header"].as_str(), p["claim"].as_str()),
        (Some("globex"), Some("acme"))
    );
    // Header and claim agree: accepted.
    let answer = host
        .tenant("acme")
        .with_gateway_token(rs(Some("acme"), "carol"))
        .send("bank-account", &id, "deposit", &json!({"amount": 5}))
        .await
        .unwrap();
    assert_eq!(answer["version"], 2, "the refused deposit wrote nothing");
    let events = alice.events("bank-account", &id, 0, 100).await.unwrap();
    assert_eq!(
        events["events"][1]["metadata"]["actor"], "carol",
        "{events}"
    );
    // A tenant taken from the token meets its quota, and the refusal is counted under it; a
    // refused token's x-tenant-id is counted under nobody.
    let limited = as_caller(&host, rs(Some("limited"), "lim"));
    limited
        .send("bank-account", &new_id(), "open", &open)
        .await
        .unwrap();
    problem(
        limited.send("bank-account", &new_id(), "open", &open).await,
        429,
        "quota-exceeded",
    );
    problem(
        host.tenant("acme")
            .send("bank-account", &new_id(), "open", &open)
            .await,
        401,
        "unauthorized",
    );
    let metrics = host.client().metrics().await.unwrap();
    assert!(
        metrics.contains(
            r#"aggregate_tenant_errors_total{problem="quota-exceeded",tenant_id="limited"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"problem="unauthorized",tenant_id="acme""#),
        "{metrics}"
    );
    // The API document needs no token.
    reqwest::Client::new()
        .get(format!("{}/openapi.json", host.gateway))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    // HS256 on a single-tenant host: a valid token passes, one signed with another secret not.
    drop(host);
    let secret = env.dir.path().join("hs256.secret");
    let key = b"a shared secret of at least thirty-two bytes";
    std::fs::write(&secret, key).unwrap();
    let hs = env.start_in(
        &env.dir.path().join("hs"),
        &[
            (
                "AGGREGATE_JWT_HS256_SECRET_FILE",
                &secret.display().to_string(),
            ),
            ("AGGREGATE_JWT_ISSUER", ISSUER),
            ("AGGREGATE_JWT_AUDIENCE", AUDIENCE),
        ],
    );
    deploy(
        &hs.client(),
        "bank-account",
        example_artifacts::BANK_ACCOUNT,
    )
    .await;
    let id = new_id();
    let answer = as_caller(&hs, Some(hs256(key, &claims(None, "dave"))))
        .send("bank-account", &id, "open", &open)
        .await
        .unwrap();
    assert_eq!(answer["events"][0]["metadata"]["actor"], "dave", "{answer}");
    let p = problem(
        as_caller(
            &hs,
            Some(hs256(
                b"another secret of at least thirty-two bytes",
                &claims(None, "dave"),
            )),
        )
        .send("bank-account", &new_id(), "open", &open)
        .await,
        401,
        "unauthorized",
    );
    assert_eq!(p["reason"], "bad-signature");
    // A token without a tenant claim acts for the single tenant only.
    problem(
        hs.tenant("acme")
            .with_gateway_token(Some(hs256(key, &claims(None, "dave"))))
            .send("bank-account", &new_id(), "open", &open)
            .await,
        403,
        "tenant-mismatch",
    );
}

async fn quotas_refuse_a_tenant_over_its_bounds(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e quotas on JetStream") else {
        return;
    };
    let config = env.dir.path().join("quotas.yaml");
    std::fs::write(
        &config,
        "quotas:\n  commands_per_sec: 1000\n  tenants:\n    slow:\n      commands_per_sec: 0.5\n      burst: 3\n    stranger:\n      commands_per_sec: 0.1\n      burst: 1\n    small:\n      max_aggregates: 2\n",
    )
    .unwrap();
    let host = env.start(&[
        ("AGGREGATE_MULTI_TENANT", "true"),
        ("AGGREGATE_CONFIG", &config.display().to_string()),
    ]);
    deploy(
        &host.client(),
        "bank-account",
        example_artifacts::BANK_ACCOUNT,
    )
    .await;
    let open = json!({"owner": "Ada"});

    // A burst over the rate: the bucket's 3 pass, the rest get 429 with Retry-After.
    let slow = host.tenant("slow");
    let id = new_id();
    slow.send("bank-account", &id, "open", &open).await.unwrap();
    for _ in 0..2 {
        slow.send("bank-account", &id, "deposit", &json!({"amount": 1}))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let raw = slow
            .http()
            .post(format!(
                "{}/aggregates/bank-account/{id}/commands/deposit",
                host.gateway
            ))
            .header("x-tenant-id", "slow")
            .json(&json!({"amount": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 429);
        let retry: u64 = raw.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        let p: Value = raw.json().await.unwrap();
        assert_eq!(
            (p["type"].as_str(), p["quota"].as_str(), p["limit"].as_f64()),
            (Some("/problems/quota-exceeded"), Some("rate"), Some(0.5)),
            "{p}"
        );
    }
    // Other tenants are not affected.
    for _ in 0..10 {
        host.tenant("fast")
            .send("bank-account", &new_id(), "open", &open)
            .await
            .unwrap();
    }
    // The refused commands wrote nothing.
    let state = slow.state("bank-account", &id).await.unwrap();
    assert_eq!(state["version"], 3, "{state}");

    // Aggregates: two may be created, a third not; the existing ones still take commands.
    let small = host.tenant("small");
    let (a, b) = (new_id(), new_id());
    small.send("bank-account", &a, "open", &open).await.unwrap();
    small.send("bank-account", &b, "open", &open).await.unwrap();
    let p = problem(
        small.send("bank-account", &new_id(), "open", &open).await,
        429,
        "quota-exceeded",
    );
    assert_eq!(
        (p["quota"].as_str(), p["limit"].as_u64()),
        (Some("aggregates"), Some(2)),
        "{p}"
    );
    small
        .send("bank-account", &a, "deposit", &json!({"amount": 3}))
        .await
        .unwrap();

    // Usage in /admin/tenants and /metrics, for tenants with accepted work only.
    let tenants = host
        .client()
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    let row = |t: &str| {
        tenants["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tenant_id"] == t)
            .cloned()
    };
    let small_row = row("small").expect("small is listed");
    assert_eq!(small_row["aggregates"], 2, "{small_row}");
    assert_eq!(small_row["usage"]["quota_refusals"], 1, "{small_row}");
    assert_eq!(small_row["usage"]["commands"], 4, "{small_row}");
    assert_eq!(small_row["quotas"]["max_aggregates"], 2, "{small_row}");
    let slow_row = row("slow").expect("slow is listed");
    assert_eq!(slow_row["usage"]["quota_refusals"], 3, "{slow_row}");
    // A tenant refused before any accepted command is not listed, and no metric names it:
    // its first command is rejected (no such account), the next ones are over its rate.
    let stranger = host.tenant("stranger");
    problem(
        stranger
            .send("bank-account", &new_id(), "deposit", &json!({"amount": 1}))
            .await,
        422,
        "command-rejected",
    );
    for _ in 0..3 {
        problem(
            stranger
                .send("bank-account", &new_id(), "open", &open)
                .await,
            429,
            "quota-exceeded",
        );
    }
    let tenants = host
        .client()
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    assert!(!tenants.to_string().contains("stranger"), "{tenants}");
    let metrics = host.client().metrics().await.unwrap();
    assert!(!metrics.contains("stranger"));
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(
        line(r#"aggregate_tenant_quota_refusals_total{quota="rate",tenant_id="slow"}"#),
        3.0
    );
    assert_eq!(
        line(r#"aggregate_tenant_quota_refusals_total{quota="aggregates",tenant_id="small"}"#),
        1.0
    );
    assert_eq!(
        line(r#"aggregate_tenant_aggregates{tenant_id="small"}"#),
        2.0
    );
    assert_eq!(
        line(r#"aggregate_tenant_aggregates{tenant_id="fast"}"#),
        10.0
    );
}

crate::on_both_logs!(export_delete_import_round_trip);

/// The admin API's raw answer (text) to `method path`, with the admin token.
async fn admin_raw(
    host: &crate::support::HostProcess,
    method: reqwest::Method,
    path: &str,
    body: Option<String>,
) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", host.admin))
        .bearer_auth(crate::support::TOKEN);
    if let Some(b) = body {
        r = r.body(b);
    }
    let response = r.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `DELETE /admin/tenants/{tenant}?confirm={tenant}`, which must succeed; its answer.
async fn delete_tenant(host: &crate::support::HostProcess, tenant: &str) -> Value {
    let path = format!("/admin/tenants/{tenant}?confirm={tenant}");
    let (status, body) = admin_raw(host, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `POST /admin/tenants/{tenant}/import` with `body`: status and answer.
async fn import(host: &crate::support::HostProcess, tenant: &str, body: String) -> (u16, String) {
    let path = format!("/admin/tenants/{tenant}/import");
    admin_raw(host, reqwest::Method::POST, &path, Some(body)).await
}

async fn export_delete_import_round_trip(backend: Backend) {
    let Some(env) = Env::new(backend, "e2e tenant lifecycle on JetStream") else {
        return;
    };
    let host = env.start(&[
        ("AGGREGATE_MULTI_TENANT", "true"),
        ("AGGREGATE_SNAPSHOT_EVERY", "2"),
    ]);
    deploy(
        &host.client(),
        "bank-account",
        example_artifacts::BANK_ACCOUNT,
    )
    .await;
    let (acme, globex) = (host.tenant("acme"), host.tenant("globex"));
    let mut ids = Vec::new();
    let mut command_ids = Vec::new();
    for i in 0..4 {
        let id = new_id();
        let a = acme
            .send(
                "bank-account",
                &id,
                "open",
                &json!({"owner": format!("owner {i}")}),
            )
            .await
            .unwrap();
        command_ids.push((id.clone(), a["command_id"].as_str().unwrap().to_string()));
        for amount in 1..=3 {
            acme.send(
                "bank-account",
                &id,
                "deposit",
                &json!({"amount": amount * 10 + i}),
            )
            .await
            .unwrap();
        }
        ids.push(id);
    }
    let other = new_id();
    globex
        .send("bank-account", &other, "open", &json!({"owner": "Gil"}))
        .await
        .unwrap();
    let mut before = Vec::new();
    for id in &ids {
        before.push(acme.state("bank-account", id).await.unwrap());
    }

    // Export.
    let (status, export) = admin_raw(
        &host,
        reqwest::Method::GET,
        "/admin/tenants/acme/export",
        None,
    )
    .await;
    assert_eq!(status, 200, "{export}");
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.last().unwrap()["end"],
        json!({"commits": 16, "events": 16})
    );
    assert!(!export.contains("globex"), "only acme's data is exported");

    // Delete: the confirmation is required.
    for path in ["/admin/tenants/acme", "/admin/tenants/acme?confirm=globex"] {
        let (status, body) = admin_raw(&host, reqwest::Method::DELETE, path, None).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("confirm"), "{body}");
    }
    assert_eq!(
        acme.state("bank-account", &ids[0]).await.unwrap()["version"],
        4,
        "a refused delete changed nothing"
    );
    let deleted = delete_tenant(&host, "acme").await;
    assert_eq!(deleted["aggregates"], 4, "{deleted}");

    // Nothing of acme is readable any more; globex is untouched.
    for id in &ids {
        problem(
            acme.state("bank-account", id).await,
            404,
            "unknown-aggregate",
        );
        let events = acme.events("bank-account", id, 0, 100).await;
        assert!(
            events.as_ref().map_or(true, |e| e["events"] == json!([])),
            "{events:?}"
        );
    }
    let q = acme
        .query("bank-account", Some("true"), None, None)
        .await
        .unwrap();
    assert_eq!(q["items"], json!([]), "{q}");
    assert_eq!(
        globex.state("bank-account", &other).await.unwrap()["state"]["owner"],
        "Gil"
    );
    let tenants = host
        .client()
        .admin(reqwest::Method::GET, "/admin/tenants", None)
        .await
        .unwrap();
    assert!(!tenants.to_string().contains("\"acme\""), "{tenants}");
    let metrics = host.client().metrics().await.unwrap();
    assert!(!metrics.contains("tenant_id=\"acme\""), "{metrics}");
    let (_, empty) = admin_raw(
        &host,
        reqwest::Method::GET,
        "/admin/tenants/acme/export",
        None,
    )
    .await;
    assert_eq!(empty.trim(), r#"{"end":{"commits":0,"events":0}}"#);

    // A bad import changes nothing: a cut-short export, a gap in versions.
    let cut: String = export.lines().take(3).map(|l| format!("{l}\n")).collect();
    let (status, body) = import(&host, "acme", cut).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("end line"), "{body}");
    let gap: String = export
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| format!("{l}\n"))
        .collect();
    let (status, body) = import(&host, "acme", gap).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("line 2"), "{body}");
    problem(
        acme.state("bank-account", &ids[0]).await,
        404,
        "unknown-aggregate",
    );

    // Events the component cannot apply are refused before anything is written.
    let unappliable = export.replacen(
        r#""payload":{"amount":10}"#,
        r#""payload":{"amount":"lots"}"#,
        1,
    );
    assert_ne!(unappliable, export, "the export has a deposit of 10");
    let (status, body) = import(&host, "acme", unappliable).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot be applied"), "{body}");
    problem(
        acme.state("bank-account", &ids[0]).await,
        404,
        "unknown-aggregate",
    );

    // An import that stopped part-way (here: only its first 5 commits were sent) is continued
    // with resume=true; then the same states and versions, and the command ids are still known.
    let first: String = export
        .lines()
        .take(5)
        .map(|l| format!("{l}\n"))
        .chain(std::iter::once(
            "{\"end\":{\"commits\":5,\"events\":5}}\n".to_string(),
        ))
        .collect();
    let (status, body) = import(&host, "acme", first).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = import(&host, "acme", export.clone()).await;
    assert_eq!(status, 409, "without resume: {body}");
    let (status, body) = admin_raw(
        &host,
        reqwest::Method::POST,
        "/admin/tenants/acme/import?resume=true",
        Some(export.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let imported: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            imported["commits"].as_u64(),
            imported["skipped"].as_u64(),
            imported["events"].as_u64()
        ),
        (Some(16), Some(5), Some(16))
    );
    for (id, state) in ids.iter().zip(&before) {
        let now = acme.state("bank-account", id).await.unwrap();
        assert_eq!(
            (&now["state"], &now["version"]),
            (&state["state"], &state["version"])
        );
    }
    let (id, command_id) = &command_ids[0];
    let again = acme
        .send_with(
            "bank-account",
            id,
            "open",
            &json!({"owner": "owner 0"}),
            &aggregate_host::client::CommandOptions {
                command_id: Some(command_id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (again["duplicate"].as_bool(), again["version"].as_u64()),
        (Some(true), Some(1))
    );
    let (status, body) = import(&host, "acme", export.clone()).await;
    assert_eq!(status, 409, "a tenant with data refuses an import: {body}");

    // A delete racing commands: whatever is left was recorded after the delete let the tenant in
    // again, from version 1.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let (acme, stop, old) = (acme.clone(), stop.clone(), ids[0].clone());
        tokio::spawn(async move {
            let mut accepted = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = acme
                    .send(
                        "bank-account",
                        &new_id(),
                        "open",
                        &json!({"owner": "racer"}),
                    )
                    .await;
                accepted += usize::from(r.is_ok());
                let _ = acme
                    .send("bank-account", &old, "deposit", &json!({"amount": 1}))
                    .await;
            }
            accepted
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let deleted = delete_tenant(&host, "acme").await;
    let deleted_at: chrono::DateTime<chrono::Utc> =
        deleted["deleted_at"].as_str().unwrap().parse().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let accepted = racer.await.unwrap();
    assert!(accepted > 0, "the racer got commands in");
    let (_, export) = admin_raw(
        &host,
        reqwest::Method::GET,
        "/admin/tenants/acme/export",
        None,
    )
    .await;
    for line in export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
    {
        if line.get("end").is_some() {
            continue;
        }
        for event in line["events"].as_array().unwrap() {
            let at: chrono::DateTime<chrono::Utc> =
                event["recorded_at"].as_str().unwrap().parse().unwrap();
            assert!(
                at >= deleted_at,
                "{event} survived the delete at {deleted_at}"
            );
        }
        assert_eq!(
            line["events"][0]["version"].as_u64(),
            Some(line["expected"].as_u64().unwrap() + 1)
        );
        if line["expected"] == 0 {
            assert_eq!(line["events"][0]["payload"]["owner"], "racer", "{line}");
        }
    }
    assert!(
        !export.contains(&ids[0]),
        "the old aggregate did not come back"
    );
}
