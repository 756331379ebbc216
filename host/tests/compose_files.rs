//! The compose files in `docker/` are valid and wired the way the host needs them:
//!
//! - dclint (npm, pinned in `tools/compose-lint`, installed by `scripts/toolchains.sh`) accepts
//!   `docker/compose.yaml` and `docker/compose.cluster.yaml`: the Compose Specification's JSON
//!   schema plus the rules in `tools/compose-lint/dclint.config.yaml`, warnings fatal. It refuses
//!   broken copies, so a pass means something.
//! - `nats-server -t` (the pinned one on `PATH`) accepts the NATS config files in `docker/nats/`.
//! - The cluster file has three NATS nodes with distinct names and volumes, `sync_interval:
//!   always`, and three hosts in cluster mode with distinct ids, volumes and advertised URLs.
//!
//! When dclint or nats-server is not installed, the test that needs it fails if the environment
//! variable `CI` is set, and otherwise prints a notice and skips.

#[path = "support/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml::Value;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const COMPOSE_FILES: [&str; 2] = ["docker/compose.yaml", "docker/compose.cluster.yaml"];

/// The repository root (the workspace), where the paths above are relative to.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Fail under `CI`, else print a notice; the caller skips when this returns.
fn missing(what: &str, tool: &str) {
    let how = "run scripts/toolchains.sh, then `. target/toolchains/env.sh`";
    if std::env::var_os("CI").is_some() {
        panic!("{what}: {tool} is not installed; the test needs it when CI is set ({how})");
    }
    eprintln!("NOTICE: {what}: skipped, {tool} is not installed ({how})");
}

/// dclint's entry point, if `scripts/toolchains.sh` installed it (and `node` runs).
fn dclint() -> Option<PathBuf> {
    let script = root().join("tools/compose-lint/node_modules/dclint/bin/dclint.cjs");
    let node_runs = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (script.is_file() && node_runs).then_some(script)
}

/// Run dclint on one file with the project's config; warnings count as failures.
fn lint(script: &Path, file: &Path) -> Output {
    Command::new("node")
        .arg(script)
        .arg("--config")
        .arg(root().join("tools/compose-lint/dclint.config.yaml"))
        .args(["--max-warnings", "0", "--no-color"])
        .arg(file)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn dclint_accepts_the_compose_files() {
    let Some(script) = dclint() else {
        return missing("dclint_accepts_the_compose_files", "dclint");
    };
    for file in COMPOSE_FILES {
        let output = lint(&script, &root().join(file));
        assert!(
            output.status.success(),
            "dclint refused {file} ({}):\n{}",
            output.status,
            text(&output)
        );
    }
}

#[test]
fn dclint_refuses_broken_compose_files() -> Result {
    let Some(script) = dclint() else {
        missing("dclint_refuses_broken_compose_files", "dclint");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let cluster = std::fs::read_to_string(root().join("docker/compose.cluster.yaml"))?;
    // A key the Compose Specification does not know, inside the anchor the three hosts merge:
    // the schema check sees through `<<: *host`.
    let typo = "  stop_grace_period: 40s\n";
    assert!(
        cluster.contains(typo),
        "docker/compose.cluster.yaml no longer has {typo:?}; pick another line to break"
    );
    let cases = [
        (
            "unknown-key.yaml",
            "name: broken\nservices:\n  app:\n    image: \"nats:2.15.1-alpine\"\n    restart_policy: always\n"
                .to_string(),
            "invalid-schema",
        ),
        (
            "cluster-typo.yaml",
            cluster.replacen(typo, "  stop_grace_periode: 40s\n", 1),
            "invalid-schema",
        ),
        (
            "same-port.yaml",
            "name: broken\nservices:\n  a:\n    image: \"nats:2.15.1-alpine\"\n    ports:\n      - \"127.0.0.1:8080:8080\"\n  b:\n    image: \"nats:2.15.1-alpine\"\n    ports:\n      - \"127.0.0.1:8080:8081\"\n"
                .to_string(),
            "no-duplicate-exported-ports",
        ),
        (
            "unbound-port.yaml",
            "name: broken\nservices:\n  a:\n    image: \"nats:2.15.1-alpine\"\n    ports:\n      - \"8080:8080\"\n"
                .to_string(),
            "no-unbound-port-interfaces",
        ),
    ];
    for (name, yaml, rule) in cases {
        let file = dir.path().join(name);
        std::fs::write(&file, yaml)?;
        let output = lint(&script, &file);
        let out = text(&output);
        assert!(
            !output.status.success() && out.contains(rule),
            "dclint should refuse {name} naming {rule}, but it answered {}:\n{out}",
            output.status
        );
    }
    Ok(())
}

#[test]
fn nats_server_accepts_the_config_files() -> Result {
    let Some(binary) = nats::binary() else {
        missing("nats_server_accepts_the_config_files", "nats-server");
        return Ok(());
    };
    let check = |file: &Path| {
        Command::new(&binary)
            .args(["-t", "-c"])
            .arg(file)
            .env("NATS_SERVER_NAME", "nats-1")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()))
    };
    for file in ["docker/nats/single.conf", "docker/nats/cluster.conf"] {
        let output = check(&root().join(file));
        assert!(
            output.status.success(),
            "{} -t refused {file}:\n{}",
            binary.display(),
            text(&output)
        );
    }
    // `-t` checks values, not only syntax: the same file with a bad sync_interval is refused.
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("cluster.conf");
    let conf = std::fs::read_to_string(root().join("docker/nats/cluster.conf"))?;
    std::fs::write(
        &broken,
        conf.replace("sync_interval: always", "sync_interval: sometimes"),
    )?;
    let output = check(&broken);
    assert!(
        !output.status.success() && text(&output).contains("sync_interval"),
        "{} -t accepted sync_interval: sometimes:\n{}",
        binary.display(),
        text(&output)
    );
    Ok(())
}

/// The compose file with YAML merge keys (`<<: *anchor`) applied, as compose reads it.
fn compose(file: &str) -> Result<Value> {
    let mut value: Value = serde_yaml::from_str(&std::fs::read_to_string(root().join(file))?)?;
    value.apply_merge()?;
    Ok(value)
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn env<'a>(service: &'a Value, key: &str) -> &'a str {
    service
        .get("environment")
        .and_then(|e| e.get(key))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no environment {key} (as a string) in {service:?}"))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The nats-server version `scripts/toolchains.sh` installs for the tests.
fn pinned_nats_version() -> Result<String> {
    let script = std::fs::read_to_string(root().join("scripts/toolchains.sh"))?;
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("NATS_SERVER_VERSION="))
        .ok_or("scripts/toolchains.sh has no NATS_SERVER_VERSION=")?;
    Ok(version.trim().to_owned())
}

#[test]
fn compose_files_run_the_tested_nats_server_with_sync_always() -> Result {
    let image = format!("nats:{}-alpine", pinned_nats_version()?);
    let single = compose("docker/compose.yaml")?;
    let cluster = compose("docker/compose.cluster.yaml")?;
    let nodes = ["nats-1", "nats-2", "nats-3"];
    for (file, svc) in std::iter::once(("compose.yaml", service(&single, "nats")))
        .chain(nodes.map(|n| ("compose.cluster.yaml", service(&cluster, n))))
    {
        assert_eq!(
            svc.get("image").and_then(Value::as_str),
            Some(image.as_str()),
            "{file}: the NATS image is not the version the tests run"
        );
    }
    for conf in ["docker/nats/single.conf", "docker/nats/cluster.conf"] {
        let text = std::fs::read_to_string(root().join(conf))?;
        assert!(
            text.lines().any(|l| l.trim() == "sync_interval: always"),
            "{conf} does not set sync_interval: always"
        );
    }
    Ok(())
}

#[test]
fn cluster_file_has_three_nodes_and_three_hosts_in_cluster_mode() -> Result {
    let cluster = compose("docker/compose.cluster.yaml")?;
    let conf = std::fs::read_to_string(root().join("docker/nats/cluster.conf"))?;
    let nodes = ["nats-1", "nats-2", "nats-3"];
    let mut volumes = BTreeSet::new();
    for node in nodes {
        let svc = service(&cluster, node);
        // The config file substitutes NATS_SERVER_NAME into server_name (the Raft peer id).
        assert_eq!(env(svc, "NATS_SERVER_NAME"), node);
        assert!(
            conf.contains(&format!("nats-route://{node}:6222")),
            "cluster.conf has no route to {node}"
        );
        let mounts = strings(svc.get("volumes"));
        assert!(
            mounts.contains(&"./nats/cluster.conf:/etc/nats/cluster.conf:ro".to_owned()),
            "{node} does not mount the cluster config: {mounts:?}"
        );
        let data: Vec<_> = mounts.iter().filter(|m| m.ends_with(":/data")).collect();
        assert_eq!(data.len(), 1, "{node}: one volume on /data, got {mounts:?}");
        volumes.insert(data[0].clone());
    }
    assert_eq!(volumes.len(), 3, "every NATS node has its own volume");
    assert!(conf.contains("server_name: $NATS_SERVER_NAME"));

    let nats_url = nodes.map(|n| format!("nats://{n}:4222")).join(",");
    let mut host_volumes = BTreeSet::new();
    let mut published = BTreeSet::new();
    for host in ["host-1", "host-2", "host-3"] {
        let svc = service(&cluster, host);
        assert_eq!(env(svc, "AGGREGATE_CLUSTER"), "true", "{host}");
        assert_eq!(env(svc, "AGGREGATE_HOST_ID"), host);
        assert_eq!(env(svc, "AGGREGATE_NATS_REPLICAS"), "3", "{host}");
        assert_eq!(env(svc, "AGGREGATE_NATS_URL"), nats_url, "{host}");
        // The image listens on 8080 (gateway) and 8081 (admin): docker/Dockerfile.
        assert_eq!(
            env(svc, "AGGREGATE_ADVERTISE_GATEWAY"),
            format!("http://{host}:8080")
        );
        assert_eq!(
            env(svc, "AGGREGATE_ADVERTISE_ADMIN"),
            format!("http://{host}:8081")
        );
        let ports = strings(svc.get("ports"));
        assert_eq!(ports.len(), 2, "{host}: gateway and admin, got {ports:?}");
        for port in ports {
            assert!(
                port.starts_with("127.0.0.1:"),
                "{host}: {port} not on loopback"
            );
            published.insert(port.split(':').nth(1).map(str::to_owned));
        }
        for mount in strings(svc.get("volumes")) {
            if mount.ends_with(":/var/lib/aggregate-host") {
                host_volumes.insert(mount);
            }
        }
    }
    assert_eq!(host_volumes.len(), 3, "every host has its own data volume");
    assert_eq!(published.len(), 6, "every published port is distinct");
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile"))?;
    for listen in ["0.0.0.0:8080", "0.0.0.0:8081"] {
        assert!(
            dockerfile.contains(listen),
            "docker/Dockerfile no longer listens on {listen}: fix the advertised URLs"
        );
    }
    Ok(())
}
