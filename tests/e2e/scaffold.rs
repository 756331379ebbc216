//! An author's path in every language: `aggregate-host new --lang <lang>` → `aggregate-host
//! build` → `aggregate-host deploy` → a command through the gateway, with the real binary.
//!
//! Every template is the same counter: `add {"by": n}` → `added {"by": n}`, state `{"value": n}`.
//! The toolchains come from `scripts/toolchains.sh` (the test command runs it first); a missing
//! one fails under CI and skips the language with a notice otherwise.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{Backend, Env, HostProcess, BINARY, TOKEN};

fn cli(host: Option<&HostProcess>, cwd: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BINARY);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("AGGREGATE_TENANT");
    if let Some(h) = host {
        cmd.env("AGGREGATE_GATEWAY_URL", &h.gateway)
            .env("AGGREGATE_ADMIN_URL", &h.admin)
            .env("AGGREGATE_ADMIN_TOKEN", TOKEN);
    }
    // The Rust scaffold builds in a shared target dir so reruns are incremental.
    cmd.env(
        "CARGO_TARGET_DIR",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold"),
    );
    cmd.output().unwrap()
}

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn toolchain_missing(lang: &str, out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("not found on PATH") {
        return false;
    }
    let msg = format!("{lang}: toolchain missing (run scripts/toolchains.sh): {stderr}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED {msg}");
    true
}

#[test]
fn new_then_build_then_deploy_works_in_every_language() {
    let env = Env::new(Backend::Embedded, "scaffold").unwrap();
    let host = env.start(&[]);
    let work = tempfile::tempdir().unwrap();
    for lang in ["rust", "go", "js", "python"] {
        let name = format!("counter-{lang}");
        let dir = work.path().join(&name);
        let created = ok(
            cli(
                None,
                work.path(),
                &["new", "--lang", lang, &name, "--dir", dir.to_str().unwrap()],
            ),
            &format!("new --lang {lang}"),
        );
        assert!(created.contains("created"), "{created}");
        // A second `new` into the same folder is refused and leaves it alone.
        let again = cli(
            None,
            work.path(),
            &["new", "--lang", lang, &name, "--dir", dir.to_str().unwrap()],
        );
        assert!(!again.status.success());
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("not empty"),
            "{}",
            String::from_utf8_lossy(&again.stderr)
        );

        let wasm = work.path().join(format!("{name}.wasm"));
        let built = cli(
            None,
            work.path(),
            &["build", dir.to_str().unwrap(), "-o", wasm.to_str().unwrap()],
        );
        if toolchain_missing(lang, &built) {
            continue;
        }
        let built = ok(built, &format!("build {lang}"));
        assert!(built.contains(&format!("({lang},")), "{built}");

        let deployed: Value = serde_json::from_str(&ok(
            cli(
                Some(&host),
                work.path(),
                &["deploy", &name, wasm.to_str().unwrap()],
            ),
            &format!("deploy {lang}"),
        ))
        .unwrap();
        assert_eq!(deployed["version"], 1, "{deployed}");

        let sent: Value = serde_json::from_str(&ok(
            cli(
                Some(&host),
                work.path(),
                &["send", &name, "new", r#"{"type": "add", "by": 2}"#],
            ),
            &format!("send {lang}"),
        ))
        .unwrap();
        assert_eq!(sent["version"], 1, "{lang}: {sent}");
        assert_eq!(sent["events"][0]["event_type"], "added", "{lang}: {sent}");
        assert_eq!(sent["events"][0]["payload"]["by"], 2, "{lang}: {sent}");
        let id = sent["aggregate_id"].as_str().unwrap();
        let sent: Value = serde_json::from_str(&ok(
            cli(
                Some(&host),
                work.path(),
                &["send", &name, id, r#"{"type": "add", "by": 5}"#],
            ),
            &format!("second send {lang}"),
        ))
        .unwrap();
        assert_eq!(sent["version"], 2, "{lang}: {sent}");
        let state: Value = serde_json::from_str(&ok(
            cli(Some(&host), work.path(), &["state", &name, id]),
            &format!("state {lang}"),
        ))
        .unwrap();
        assert_eq!(state["state"]["value"], 7, "{lang}: {state}");

        // The template's rule: adding zero is invalid (400), nothing is appended.
        let refused = cli(
            Some(&host),
            work.path(),
            &["send", &name, id, r#"{"type": "add", "by": 0}"#],
        );
        assert!(!refused.status.success(), "{lang}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("invalid-command"),
            "{lang}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
    }
}
