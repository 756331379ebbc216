//! The client subcommands of the same binary against a running host: `deploy`, `send`, `state`,
//! `events`, `health`, and a refused command's exit status and message.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Backend, Env, HostProcess, BINARY, TOKEN};

fn run(host: &HostProcess, args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env("AGGREGATE_GATEWAY_URL", &host.gateway)
        .env("AGGREGATE_ADMIN_URL", &host.admin)
        .env("AGGREGATE_ADMIN_TOKEN", TOKEN)
        .env_remove("AGGREGATE_TENANT")
        .output()
        .unwrap()
}

#[track_caller]
fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn cli_talks_to_a_running_host() {
    let env = Env::new(Backend::Embedded, "cli").unwrap();
    let host = env.start(&[]);
    let deployed = json_of(&run(
        &host,
        &["deploy", "bank-account", example_artifacts::BANK_ACCOUNT],
    ));
    assert_eq!(
        (deployed["version"].as_u64(), deployed["changed"].as_bool()),
        (Some(1), Some(true))
    );

    let opened = json_of(&run(
        &host,
        &[
            "send",
            "bank-account",
            "new",
            r#"{"type": "open", "owner": "Ada"}"#,
        ],
    ));
    let id = opened["aggregate_id"].as_str().unwrap().to_string();
    assert_eq!(
        (opened["version"].as_u64(), opened["component"].as_str()),
        (Some(1), deployed["component"].as_str())
    );
    let deposit = json_of(&run(
        &host,
        &[
            "send",
            "bank-account",
            &id,
            r#"{"amount": 100}"#,
            "--command",
            "deposit",
            "--correlation-id",
            "cli-1",
        ],
    ));
    assert_eq!(deposit["events"][0]["metadata"]["correlation_id"], "cli-1");

    let refused = run(
        &host,
        &[
            "send",
            "bank-account",
            &id,
            r#"{"type": "withdraw", "amount": 1000}"#,
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("422 command-rejected") && stderr.contains("insufficient funds"),
        "{stderr}"
    );
    let no_type = run(&host, &["send", "bank-account", &id, r#"{"amount": 1}"#]);
    assert!(!no_type.status.success());
    assert!(String::from_utf8_lossy(&no_type.stderr).contains("--command"));

    let state = json_of(&run(&host, &["state", "bank-account", &id]));
    assert_eq!(
        (
            state["version"].as_u64(),
            state["state"]["balance"].as_i64()
        ),
        (Some(2), Some(100))
    );
    let events = json_of(&run(
        &host,
        &["events", "bank-account", &id, "--after", "1"],
    ));
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    assert_eq!(events["events"][0]["event_type"], "deposited");
    let health = json_of(&run(&host, &["health"]));
    assert_eq!(health["ready"], true);

    let wrong_token = Command::new(BINARY)
        .args(["deploy", "bank-account", example_artifacts::BANK_ACCOUNT])
        .env("AGGREGATE_ADMIN_URL", &host.admin)
        .env("AGGREGATE_ADMIN_TOKEN", "not-the-token-0123456789")
        .output()
        .unwrap();
    assert!(!wrong_token.status.success());
    assert!(String::from_utf8_lossy(&wrong_token.stderr).contains("401 unauthorized"));
}
