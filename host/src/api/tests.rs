//! The routers through `oneshot` (no socket): every route, every error mapping, the OpenAPI
//! document against the routes.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::types::{AggregateId, TenantId};

const TOKEN: &str = "test-token-0123456789";

struct Fixture {
    _dir: tempfile::TempDir,
    host: Host,
    gateway: Router,
    admin: Router,
}

async fn fixture(tune: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        admin_token: Some(TOKEN.into()),
        ..Config::default()
    };
    tune(&mut config);
    config.validate().unwrap();
    let host = Host::open(config).await.unwrap();
    let state = AppState::new(&host, Metrics::new());
    Fixture {
        _dir: dir,
        gateway: gateway(state.clone()),
        admin: admin(state),
        host,
    }
}

fn bank_account() -> Vec<u8> {
    std::fs::read(example_artifacts::BANK_ACCOUNT).unwrap()
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (parts.status, parts.headers, value)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn admin_req(method: &str, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(body.into())
        .unwrap()
}

fn command(ty: &str, id: &str, cmd: &str) -> axum::http::request::Builder {
    Request::post(format!("/aggregates/{ty}/{id}/commands/{cmd}"))
        .header(header::CONTENT_TYPE, "application/json")
}

fn cmd(ty: &str, id: &str, name: &str, payload: Value) -> Request<Body> {
    command(ty, id, name)
        .body(Body::from(payload.to_string()))
        .unwrap()
}

/// Assert a problem answer: status, content type and `type`.
#[track_caller]
fn assert_problem(answer: &(StatusCode, HeaderMap, Value), status: u16, slug: &str) {
    let (s, h, v) = answer;
    assert_eq!(s.as_u16(), status, "{v}");
    assert_eq!(h[header::CONTENT_TYPE], PROBLEM_JSON, "{v}");
    assert_eq!(v["type"], format!("/problems/{slug}"), "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
}

async fn deploy_bank(f: &Fixture) -> String {
    let (s, _, v) = call(
        &f.admin,
        admin_req(
            "PUT",
            "/admin/aggregates/bank-account/component",
            bank_account(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["component"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn openapi_document_lists_exactly_the_routes_and_problem_types() {
    let doc: Value = serde_yaml::from_str(OPENAPI_YAML).unwrap();
    let mut documented: BTreeMap<&str, BTreeSet<Operation>> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for tag in op["tags"].as_array().unwrap() {
                documented
                    .entry(tag.as_str().unwrap())
                    .or_default()
                    .insert(Operation {
                        method: method.to_uppercase(),
                        path: path.clone(),
                    });
            }
        }
    }
    let (gateway_ops, admin_ops) = operations();
    assert_eq!(
        documented["gateway"],
        gateway_ops.into_iter().collect(),
        "gateway routes vs openapi.yaml"
    );
    assert_eq!(
        documented["admin"],
        admin_ops.into_iter().collect(),
        "admin routes vs openapi.yaml"
    );

    let problems: BTreeMap<String, u64> = doc["x-problem-types"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    let actual: BTreeMap<String, u64> = ProblemType::ALL
        .iter()
        .map(|p| (p.slug().to_string(), u64::from(p.status().as_u16())))
        .collect();
    assert_eq!(problems, actual, "x-problem-types vs ProblemType");

    // Every problem status an operation documents is one some problem type has.
    let statuses: BTreeSet<u64> = actual.values().copied().collect();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            for code in op["responses"].as_object().unwrap().keys() {
                let code: u64 = code.parse().unwrap();
                assert!(
                    code < 400 || statuses.contains(&code),
                    "status {code} has no problem type"
                );
            }
        }
    }

    // Served as JSON on both listeners, without a token.
    let f = fixture(|_| {}).await;
    for router in [&f.gateway, &f.admin] {
        let (s, h, v) = call(router, get("/openapi.json")).await;
        assert_eq!(
            (s, h[header::CONTENT_TYPE].to_str().unwrap()),
            (StatusCode::OK, "application/json")
        );
        assert_eq!(v["openapi"], "3.1.0");
    }
}

#[tokio::test]
async fn bank_account_story_through_the_gateway() {
    let f = fixture(|_| {}).await;
    let hash = deploy_bank(&f).await;
    let id = AggregateId::generate().to_string();

    let open = Request::post(format!("/aggregates/bank-account/{id}/commands/open"))
        .header("x-correlation-id", "corr-42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-command-id", "0190a8b0-0000-7000-8000-000000000001")
        .body(Body::from(r#"{"owner":"Ada"}"#))
        .unwrap();
    let (s, _, v) = call(&f.gateway, open).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["component"].as_str()),
        (Some(1), Some(hash.as_str()))
    );
    assert_eq!(v["duplicate"], false);
    let e = &v["events"][0];
    assert_eq!(
        (e["event_type"].as_str(), e["payload"]["owner"].as_str()),
        (Some("opened"), Some("Ada"))
    );
    assert_eq!(e["metadata"]["correlation_id"], "corr-42");
    assert_eq!(
        e["metadata"]["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(e["causation_id"], "0190a8b0-0000-7000-8000-000000000001");

    // The same command id again: the original answer, nothing new.
    let again = Request::post(format!("/aggregates/bank-account/{id}/commands/open"))
        .header("x-command-id", "0190a8b0-0000-7000-8000-000000000001")
        .body(Body::from(r#"{"owner":"Ada"}"#))
        .unwrap();
    let (s, _, v) = call(&f.gateway, again).await;
    assert_eq!(
        (s, v["duplicate"].as_bool(), v["version"].as_u64()),
        (StatusCode::OK, Some(true), Some(1))
    );

    let (s, _, v) = call(
        &f.gateway,
        cmd("bank-account", &id, "deposit", json!({"amount": 100})),
    )
    .await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
    let (s, _, v) = call(
        &f.gateway,
        cmd("bank-account", &id, "withdraw", json!({"amount": 30})),
    )
    .await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(3)), "{v}");

    let answer = call(
        &f.gateway,
        cmd("bank-account", &id, "withdraw", json!({"amount": 500})),
    )
    .await;
    assert_problem(&answer, 422, "command-rejected");
    assert!(
        answer.2["detail"]
            .as_str()
            .unwrap()
            .contains("insufficient funds"),
        "{}",
        answer.2
    );
    let answer = call(
        &f.gateway,
        cmd("bank-account", &id, "deposit", json!({"amount": -1})),
    )
    .await;
    assert_problem(&answer, 400, "invalid-command");
    assert!(answer.2["detail"].as_str().unwrap().contains("positive"));

    let (s, _, v) = call(&f.gateway, get(&format!("/aggregates/bank-account/{id}"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], 3);
    assert_eq!(
        v["state"],
        json!({"opened": true, "owner": "Ada", "balance": 70})
    );
    assert_eq!(v["component"], hash);

    let (s, _, v) = call(
        &f.gateway,
        get(&format!(
            "/aggregates/bank-account/{id}/events?after=1&limit=1"
        )),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        (v["events"][0]["version"].as_u64(), v["next_after"].as_u64()),
        (Some(2), Some(2))
    );
    let (_, _, v) = call(
        &f.gateway,
        get(&format!("/aggregates/bank-account/{id}/events?after=2")),
    )
    .await;
    assert_eq!(
        (
            v["events"].as_array().unwrap().len(),
            v["next_after"].is_null()
        ),
        (1, true)
    );

    // Optimistic concurrency from the client.
    let stale = command("bank-account", &id, "deposit")
        .header("x-expected-version", "2")
        .body(Body::from(r#"{"amount":1}"#))
        .unwrap();
    let answer = call(&f.gateway, stale).await;
    assert_problem(&answer, 409, "version-conflict");
    assert_eq!(
        (
            answer.2["expected_version"].as_u64(),
            answer.2["actual_version"].as_u64()
        ),
        (Some(2), Some(3))
    );
    let fresh = command("bank-account", &id, "deposit")
        .header("x-expected-version", "3")
        .body(Body::from(r#"{"amount":1}"#))
        .unwrap();
    assert_eq!(call(&f.gateway, fresh).await.0, StatusCode::OK);

    let metrics = call(&f.admin, admin_req("GET", "/metrics", Body::empty()))
        .await
        .2;
    let text = metrics.as_str().unwrap();
    for needle in [
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="accepted",tenant_id="=single"} 4"#,
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="rejected",tenant_id="=single"} 1"#,
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="duplicate",tenant_id="=single"} 1"#,
        r#"aggregate_commands_total{aggregate_type="bank-account",outcome="conflict",tenant_id="=single"} 1"#,
        r#"aggregate_decide_fuel_used_count{aggregate_type="bank-account",tenant_id="=single"}"#,
        r#"aggregate_hot_cache_total{aggregate_type="bank-account",result="hit",tenant_id="=single"}"#,
        r#"aggregate_rehydration_duration_seconds_count{aggregate_type="bank-account",tenant_id="=single"}"#,
        r#"aggregate_tenant_errors_total{problem="command-rejected",tenant_id="=single"} 1"#,
        "aggregate_component_compile_duration_seconds_count 1",
        r#"aggregate_component_deploys_total{aggregate_type="bank-account",outcome="deployed"} 1"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn every_gateway_error_is_a_problem() {
    let f = fixture(|c| {
        c.multi_tenant = true;
        c.tenants = vec![TenantId::new("acme").unwrap()];
        c.max_command_bytes = 1024;
    })
    .await;
    deploy_bank(&f).await;
    let id = AggregateId::generate().to_string();
    let with_tenant = |r: axum::http::request::Builder| r.header("x-tenant-id", "acme");

    let answer = call(
        &f.gateway,
        cmd("bank-account", &id, "open", json!({"owner": "A"})),
    )
    .await;
    assert_problem(&answer, 400, "missing-tenant");
    assert!(answer.2["detail"].as_str().unwrap().contains("x-tenant-id"));
    let bad = Request::post(format!("/aggregates/bank-account/{id}/commands/open"))
        .header("x-tenant-id", "a.b");
    let answer = call(&f.gateway, bad.body(Body::from("{}")).unwrap()).await;
    assert_problem(&answer, 400, "invalid-input");
    assert_eq!(answer.2["field"], "tenant id");
    let other = Request::post(format!("/aggregates/bank-account/{id}/commands/open"))
        .header("x-tenant-id", "globex");
    assert_problem(
        &call(&f.gateway, other.body(Body::from("{}")).unwrap()).await,
        403,
        "tenant-denied",
    );

    let post = |uri: String, body: &'static str| {
        with_tenant(Request::post(uri))
            .body(Body::from(body))
            .unwrap()
    };
    let answer = call(
        &f.gateway,
        post(
            "/aggregates/bank-account/not-a-uuid/commands/open".into(),
            "{}",
        ),
    )
    .await;
    assert_problem(&answer, 400, "invalid-input");
    assert_eq!(answer.2["field"], "aggregate id");
    let answer = call(
        &f.gateway,
        post(
            format!("/aggregates/bank-account/{id}/commands/open"),
            "{oops",
        ),
    )
    .await;
    assert_problem(&answer, 400, "invalid-input");
    assert!(answer.2["detail"].as_str().unwrap().contains("not JSON"));
    let answer = call(
        &f.gateway,
        post(
            format!("/aggregates/bank-account/{id}/commands/op%20en"),
            "{}",
        ),
    )
    .await;
    assert_problem(&answer, 400, "invalid-input");
    let big = format!(r#"{{"owner":"{}"}}"#, "x".repeat(2000));
    let answer = call(
        &f.gateway,
        with_tenant(Request::post(format!(
            "/aggregates/bank-account/{id}/commands/open"
        )))
        .body(Body::from(big))
        .unwrap(),
    )
    .await;
    assert_problem(&answer, 413, "payload-too-large");
    assert_eq!(answer.2["limit"], 1024);
    let answer = call(
        &f.gateway,
        post(format!("/aggregates/savings/{id}/commands/open"), "{}"),
    )
    .await;
    assert_problem(&answer, 404, "unknown-aggregate-type");
    let answer = call(
        &f.gateway,
        with_tenant(Request::get(format!("/aggregates/bank-account/{id}")))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_problem(&answer, 404, "unknown-aggregate");
    let events = with_tenant(Request::get(format!(
        "/aggregates/bank-account/{id}/events"
    )))
    .body(Body::empty())
    .unwrap();
    assert_problem(&call(&f.gateway, events).await, 404, "unknown-aggregate");
    let events = with_tenant(Request::get(format!(
        "/aggregates/bank-account/{id}/events?limit=0"
    )))
    .body(Body::empty())
    .unwrap();
    assert_problem(&call(&f.gateway, events).await, 400, "invalid-input");
    assert_problem(&call(&f.gateway, get("/nowhere")).await, 404, "not-found");
    assert_problem(
        &call(
            &f.gateway,
            Request::delete(format!("/aggregates/bank-account/{id}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await,
        405,
        "method-not-allowed",
    );

    // Drained tenant: 503 with Retry-After; resumed: accepted again.
    let (s, _, v) = call(
        &f.admin,
        admin_req(
            "POST",
            "/admin/drain",
            r#"{"tenant_id":"acme","timeout_ms":1000}"#,
        ),
    )
    .await;
    assert_eq!(
        (s, v["drained"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    let answer = call(
        &f.gateway,
        post(
            format!("/aggregates/bank-account/{id}/commands/open"),
            r#"{"owner":"A"}"#,
        ),
    )
    .await;
    assert_problem(&answer, 503, "tenant-draining");
    assert_eq!(answer.1[header::RETRY_AFTER], "1");
    call(
        &f.admin,
        admin_req("POST", "/admin/resume", r#"{"tenant_id":"acme"}"#),
    )
    .await;
    let (s, _, v) = call(
        &f.gateway,
        post(
            format!("/aggregates/bank-account/{id}/commands/open"),
            r#"{"owner":"A"}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, _, v) = call(&f.gateway, get("/problems/version-conflict")).await;
    assert_eq!((s, v["status"].as_u64()), (StatusCode::OK, Some(409)));
    let (s, _, v) = call(&f.admin, admin_req("GET", "/admin/tenants", Body::empty())).await;
    assert_eq!(s, StatusCode::OK);
    let acme = v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant_id"] == "acme")
        .unwrap();
    assert_eq!(
        (acme["aggregates"].as_u64(), acme["draining"].as_bool()),
        (Some(1), Some(false))
    );
    assert!(acme["last_activity"].is_string());
}

#[tokio::test]
async fn guest_limits_and_faults_map_to_422_and_500() {
    let f = fixture(|_| {}).await;
    let hostile = std::fs::read(example_artifacts::HOSTILE).unwrap();
    let (s, _, v) = call(
        &f.admin,
        admin_req("PUT", "/admin/aggregates/hostile/component", hostile),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _, v) = call(
        &f.admin,
        admin_req(
            "PUT",
            "/admin/aggregates/hostile/limits",
            r#"{"fuel": 5000000}"#,
        ),
    )
    .await;
    assert_eq!(
        (
            s,
            v["limits"]["fuel"].as_u64(),
            v["limits"]["timeout_ms"].as_u64()
        ),
        (StatusCode::OK, Some(5_000_000), Some(1000))
    );
    let id = AggregateId::generate().to_string();
    let answer = call(&f.gateway, cmd("hostile", &id, "spin", json!({}))).await;
    assert_problem(&answer, 422, "limit-exceeded");
    assert_eq!(answer.2["limit"], "fuel");
    let answer = call(&f.gateway, cmd("hostile", &id, "panic", json!({}))).await;
    assert_problem(&answer, 500, "guest-fault");
    assert_eq!(answer.2["kind"], "panic");
    assert!(
        !answer.2["detail"].as_str().unwrap().contains("boom"),
        "5xx bodies are opaque"
    );
    let answer = call(
        &f.admin,
        admin_req("PUT", "/admin/aggregates/hostile/limits", r#"{"fuel": 0}"#),
    )
    .await;
    assert_problem(&answer, 400, "invalid-input");
    let answer = call(
        &f.admin,
        admin_req("PUT", "/admin/aggregates/hostile/limits", r#"{"fuels": 1}"#),
    )
    .await;
    assert_problem(&answer, 400, "invalid-input");
    assert!(answer.2["detail"]
        .as_str()
        .unwrap()
        .contains("unknown field `fuels`"));
    let text = call(&f.admin, admin_req("GET", "/metrics", Body::empty()))
        .await
        .2;
    let needle = r#"aggregate_limit_breaches_total{aggregate_type="hostile",kind="fuel",tenant_id="=single"} 1"#;
    assert!(text.as_str().unwrap().contains(needle), "{text}");
}

#[tokio::test]
async fn admin_needs_the_token_and_refuses_bad_components_without_change() {
    let f = fixture(|c| c.max_component_mb = 1).await;
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Basic abc"),
    ] {
        let mut r = Request::get("/admin/aggregates");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        let answer = call(&f.admin, r.body(Body::empty()).unwrap()).await;
        assert_problem(&answer, 401, "unauthorized");
        assert!(answer.1.contains_key(header::WWW_AUTHENTICATE));
    }
    assert_problem(&call(&f.admin, get("/metrics")).await, 401, "unauthorized");
    let (s, _, v) = call(&f.admin, get("/health")).await;
    assert_eq!(
        (s, v["status"].as_str(), v["event_log"]["kind"].as_str()),
        (StatusCode::OK, Some("ok"), Some("embedded"))
    );
    let (s, _, v) = call(&f.admin, get("/ready")).await;
    assert_eq!(
        (s, v["ready"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );

    let hash = deploy_bank(&f).await;
    let before = f.host.registry.manifest();
    let blobs = || {
        std::fs::read_dir(f.host.config.data_dir.join("components"))
            .unwrap()
            .count()
    };
    let blob_count = blobs();
    let core = wat::parse_str("(module)").unwrap();
    let forbidden = std::fs::read(example_artifacts::FORBIDDEN_IMPORT).unwrap();
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            b"hello, not wasm".to_vec(),
            422,
            "component-rejected",
            "not-wasm",
        ),
        (core, 422, "component-rejected", "core-module"),
        (forbidden, 422, "component-rejected", "forbidden-import"),
        (vec![0u8; (1 << 20) + 1], 413, "payload-too-large", ""),
    ];
    for (bytes, status, slug, kind) in cases {
        let answer = call(
            &f.admin,
            admin_req("PUT", "/admin/aggregates/bank-account/component", bytes),
        )
        .await;
        assert_problem(&answer, status, slug);
        if !kind.is_empty() {
            assert_eq!(answer.2["kind"], kind, "{}", answer.2);
        }
        assert_eq!(
            f.host.registry.manifest(),
            before,
            "a refused upload changed the manifest"
        );
        assert_eq!(blobs(), blob_count, "a refused upload stored a blob");
    }
    // Same bytes again: nothing changes.
    let (s, _, v) = call(
        &f.admin,
        admin_req(
            "PUT",
            "/admin/aggregates/bank-account/component",
            bank_account(),
        ),
    )
    .await;
    assert_eq!(
        (s, v["changed"].as_bool(), v["component"].as_str()),
        (StatusCode::OK, Some(false), Some(hash.as_str()))
    );

    // Rollback without history is a 409; versions and list describe the type.
    assert_problem(
        &call(
            &f.admin,
            admin_req(
                "POST",
                "/admin/aggregates/bank-account/rollback",
                Body::empty(),
            ),
        )
        .await,
        409,
        "no-earlier-version",
    );
    assert_problem(
        &call(
            &f.admin,
            admin_req("POST", "/admin/aggregates/nope/rollback", Body::empty()),
        )
        .await,
        404,
        "unknown-aggregate-type",
    );
    let (_, _, v) = call(
        &f.admin,
        admin_req(
            "GET",
            "/admin/aggregates/bank-account/versions",
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(
        v["versions"],
        json!([{ "component": hash, "active": true, "bytes": bank_account().len() }])
    );
    let (_, _, v) = call(
        &f.admin,
        admin_req("GET", "/admin/aggregates", Body::empty()),
    )
    .await;
    assert_eq!(
        (
            v["aggregates"][0]["aggregate_type"].as_str(),
            v["aggregates"][0]["component"].as_str()
        ),
        (Some("bank-account"), Some(hash.as_str()))
    );
    let (s, _, v) = call(&f.admin, admin_req("POST", "/admin/reload", Body::empty())).await;
    assert_eq!(
        (
            s,
            v["changed"].as_array().map(Vec::len),
            v["aggregates"].as_u64()
        ),
        (StatusCode::OK, Some(0), Some(1))
    );
    std::fs::write(
        f.host.config.data_dir.join("manifest.yaml"),
        "aggregates: [oops",
    )
    .unwrap();
    assert_problem(
        &call(&f.admin, admin_req("POST", "/admin/reload", Body::empty())).await,
        422,
        "invalid-manifest",
    );
    assert_eq!(
        f.host.registry.manifest(),
        before,
        "a failed reload keeps the manifest"
    );
}

#[tokio::test]
async fn rollback_restores_the_previous_component() {
    let f = fixture(|_| {}).await;
    let v1 = deploy_bank(&f).await;
    let hostile = std::fs::read(example_artifacts::HOSTILE).unwrap();
    let (s, _, v) = call(
        &f.admin,
        admin_req("PUT", "/admin/aggregates/bank-account/component", hostile),
    )
    .await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::CREATED, Some(2)));
    let v2 = v["component"].as_str().unwrap().to_string();
    let (_, _, v) = call(
        &f.admin,
        admin_req(
            "GET",
            "/admin/aggregates/bank-account/versions",
            Body::empty(),
        ),
    )
    .await;
    let order: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["component"].as_str().unwrap())
        .collect();
    assert_eq!(order, [v1.as_str(), v2.as_str()]);
    let (s, _, v) = call(
        &f.admin,
        admin_req(
            "POST",
            "/admin/aggregates/bank-account/rollback",
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(
        (s, v["component"].as_str(), v["version"].as_u64()),
        (StatusCode::OK, Some(v1.as_str()), Some(3))
    );
    let id = AggregateId::generate().to_string();
    let (s, _, v) = call(
        &f.gateway,
        cmd("bank-account", &id, "open", json!({"owner": "B"})),
    )
    .await;
    assert_eq!(
        (s, v["component"].as_str()),
        (StatusCode::OK, Some(v1.as_str()))
    );
}

#[tokio::test]
async fn event_stream_says_ready_then_delivers_new_events() {
    use futures::StreamExt;
    let f = fixture(|_| {}).await;
    deploy_bank(&f).await;
    let id = AggregateId::generate().to_string();
    let response = f
        .gateway
        .clone()
        .oneshot(get(&format!(
            "/events/stream?aggregate_type=bank-account&aggregate_id={id}"
        )))
        .await
        .unwrap();
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body().into_data_stream();
    let mut seen = String::new();
    let mut next = async || {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    };
    seen.push_str(&next().await);
    assert!(seen.contains("event: ready"), "{seen}");
    // Another aggregate's events are filtered out; this one's arrive in order.
    call(
        &f.gateway,
        cmd(
            "bank-account",
            &AggregateId::generate().to_string(),
            "open",
            json!({"owner": "X"}),
        ),
    )
    .await;
    call(
        &f.gateway,
        cmd("bank-account", &id, "open", json!({"owner": "Y"})),
    )
    .await;
    call(
        &f.gateway,
        cmd("bank-account", &id, "deposit", json!({"amount": 5})),
    )
    .await;
    while seen.matches("event: event").count() < 2 {
        seen.push_str(&next().await);
    }
    // Each event's id is its place in the log, `P.i`, growing.
    let ids: Vec<(u64, u64)> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| {
            let (p, i) = id.split_once('.').expect("P.i");
            (p.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    assert_eq!(ids.len(), 2, "{seen}");
    assert!(
        ids[0] < ids[1] && ids.iter().all(|(_, i)| *i == 0),
        "{seen}"
    );
    assert!(
        !seen.contains("\"X\""),
        "another aggregate's event leaked: {seen}"
    );
    let answer = call(
        &f.gateway,
        get("/events/stream?aggregate_id=0190a8b0-0000-7000-8000-000000000001"),
    )
    .await;
    assert_problem(&answer, 400, "invalid-input");
}
