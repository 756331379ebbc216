//! The compose files in `docker/` and the Swarm stack in `swarm/` are valid and wired the way the
//! host needs them:
//!
//! - dclint (npm, pinned in `tools/compose-lint`, installed by `scripts/toolchains.sh`) accepts
//!   `docker/compose.yaml`, `docker/compose.cluster.yaml` and `swarm/stacks/platform.yml`: the
//!   Compose Specification's JSON schema plus the rules in `tools/compose-lint/dclint.config.yaml`,
//!   warnings fatal. It refuses broken copies, so a pass means something.
//! - `docker stack config` (the Docker CLI's own loader for `docker stack deploy`, no daemon
//!   needed) accepts the stack, leaves the Swarm templates alone and refuses a top-level `name`
//!   (why the stack turns dclint's `require-project-name-field` off).
//! - `nats-server -t` (the pinned one on `PATH`) accepts the NATS config files in `docker/nats/`
//!   and `swarm/nats/`; the Swarm one has the settings of `docker/nats/cluster.conf` plus
//!   `no_advertise`.
//! - The cluster file has three NATS nodes with distinct names and volumes, `sync_interval:
//!   always`, and three hosts in cluster mode with distinct ids, volumes and advertised URLs.
//! - The stack has three NATS services with distinct server names, volumes and node constraints;
//!   the `host` service has 3 replicas, stop-first rolling updates, a restart policy, resource
//!   limits and reservations, the admin token from a Docker secret and a healthcheck that asks
//!   `/ready` on the admin port (run against a stand-in server); each tenant-range service's
//!   node constraint names the range in its `AGGREGATE_TENANT_RANGE`.
//!
//! When dclint or nats-server is not installed, the test that needs it fails if the environment
//! variable `CI` is set, and otherwise prints a notice and skips. The Docker CLI is not one of the
//! pinned tools: without it the `docker stack config` test prints a notice and skips, also in CI.

#[path = "support/nats.rs"]
#[allow(dead_code)]
mod nats;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml::Value;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const COMPOSE_FILES: [&str; 2] = ["docker/compose.yaml", "docker/compose.cluster.yaml"];

/// The Swarm stack (`docker stack deploy -c swarm/stacks/platform.yml <stack>`).
const STACK_FILE: &str = "swarm/stacks/platform.yml";

/// The NATS nodes, as services of the cluster file and of the stack.
const NATS_NODES: [&str; 3] = ["nats-1", "nats-2", "nats-3"];

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
    for file in COMPOSE_FILES.into_iter().chain([STACK_FILE]) {
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
    assert_refused(&script, dir.path(), cases)
}

/// dclint refuses each `(file name, content, rule)`, naming the rule.
fn assert_refused<const N: usize>(
    script: &Path,
    dir: &Path,
    cases: [(&str, String, &str); N],
) -> Result {
    for (name, yaml, rule) in cases {
        let file = dir.join(name);
        std::fs::write(&file, yaml)?;
        let output = lint(script, &file);
        let out = text(&output);
        assert!(
            !output.status.success() && out.contains(rule),
            "dclint should refuse {name} naming {rule}, but it answered {}:\n{out}",
            output.status
        );
    }
    Ok(())
}

/// `text` with the first `from` replaced by `to`; `from` must be there.
fn broken(text: &str, file: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "{file} no longer has {from:?}; pick another line to break"
    );
    text.replacen(from, to, 1)
}

#[test]
fn dclint_refuses_broken_stack_files() -> Result {
    let Some(script) = dclint() else {
        missing("dclint_refuses_broken_stack_files", "dclint");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let stack = std::fs::read_to_string(root().join(STACK_FILE))?;
    // What the stack turns off, it turns off for one rule and one place only.
    let cases = [
        (
            // A key the Compose Specification does not know, in the anchor the hosts merge
            // (`deploy: {<<: *host-deploy}`): the schema check sees through nested merges.
            "stack-typo.yml",
            broken(
                &stack,
                STACK_FILE,
                "    monitor: 60s\n",
                "    monitors: 60s\n",
            ),
            "invalid-schema",
        ),
        (
            // Ingress ports are cluster-wide: two services cannot publish one port.
            "stack-same-port.yml",
            broken(
                &stack,
                STACK_FILE,
                "        published: 8180\n",
                "        published: 8080\n",
            ),
            "no-duplicate-exported-ports",
        ),
        (
            // The rule is off only on the lines that say so.
            "stack-unbound-port.yml",
            broken(
                &stack,
                STACK_FILE,
                "    ports: # dclint disable-line no-unbound-port-interfaces\n",
                "    ports:\n",
            ),
            "no-unbound-port-interfaces",
        ),
        (
            // The file-wide disable covers require-project-name-field and nothing else.
            "stack-no-disable.yml",
            broken(
                &stack,
                STACK_FILE,
                "# dclint disable require-project-name-field\n",
                "",
            ),
            "require-project-name-field",
        ),
    ];
    assert_refused(&script, dir.path(), cases)
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
    for file in [
        "docker/nats/single.conf",
        "docker/nats/cluster.conf",
        "swarm/nats/cluster.conf",
    ] {
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
    let stack = compose(STACK_FILE)?;
    for (file, svc) in std::iter::once(("compose.yaml", service(&single, "nats")))
        .chain(NATS_NODES.map(|n| ("compose.cluster.yaml", service(&cluster, n))))
        .chain(NATS_NODES.map(|n| (STACK_FILE, service(&stack, n))))
    {
        assert_eq!(
            svc.get("image").and_then(Value::as_str),
            Some(image.as_str()),
            "{file}: the NATS image is not the version the tests run"
        );
    }
    for conf in [
        "docker/nats/single.conf",
        "docker/nats/cluster.conf",
        "swarm/nats/cluster.conf",
    ] {
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
    let nodes = NATS_NODES;
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

/// `value` at a path of mapping keys.
fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path:?} in {value:?}"))
}

/// The hosts' healthcheck in the stack: `aggregate-host health` asks `/ready` of the admin URL.
const HOST_HEALTHCHECK: [&str; 5] = [
    "CMD",
    "aggregate-host",
    "health",
    "--admin",
    "http://127.0.0.1:8081",
];

#[test]
fn swarm_nats_config_is_the_cluster_config_plus_no_advertise() -> Result {
    // Lines that set something: no blank lines, no comments.
    let settings = |file: &str| -> Result<Vec<String>> {
        Ok(std::fs::read_to_string(root().join(file))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect())
    };
    let mut swarm = settings("swarm/nats/cluster.conf")?;
    let before = swarm.len();
    swarm.retain(|l| l != "no_advertise: true");
    assert_eq!(
        before - swarm.len(),
        1,
        "swarm/nats/cluster.conf sets `no_advertise: true` once"
    );
    assert_eq!(
        swarm,
        settings("docker/nats/cluster.conf")?,
        "swarm/nats/cluster.conf and docker/nats/cluster.conf differ in more than no_advertise"
    );
    Ok(())
}

#[test]
fn swarm_stack_has_three_nats_nodes_and_replicated_hosts() -> Result {
    let stack = compose(STACK_FILE)?;
    let conf_path = root().join("swarm/nats/cluster.conf");
    let conf = std::fs::read_to_string(&conf_path)?;
    assert!(conf.contains("server_name: $NATS_SERVER_NAME"));

    let (mut names, mut volumes, mut constraints) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for (i, node) in NATS_NODES.into_iter().enumerate() {
        let svc = service(&stack, node);
        // The config file substitutes NATS_SERVER_NAME into server_name (the Raft peer id).
        assert_eq!(env(svc, "NATS_SERVER_NAME"), node);
        names.insert(env(svc, "NATS_SERVER_NAME"));
        assert!(
            conf.contains(&format!("nats-route://{node}:6222")),
            "swarm/nats/cluster.conf has no route to {node}"
        );
        let mounts = strings(svc.get("volumes"));
        let data: Vec<_> = mounts.iter().filter(|m| m.ends_with(":/data")).collect();
        assert_eq!(data.len(), 1, "{node}: one volume on /data, got {mounts:?}");
        let volume = data[0].split(':').next().unwrap_or_default();
        assert!(
            at(&stack, &["volumes", volume]).is_some(),
            "{node}: volume {volume} is not declared"
        );
        volumes.insert(volume.to_owned());
        // One task, pinned to one labelled node: its Raft state is on that node's volume.
        assert_eq!(
            at(svc, &["deploy", "replicas"]).and_then(Value::as_u64),
            Some(1),
            "{node}"
        );
        let label = format!("node.labels.nats == {}", i + 1);
        let placement = strings(at(svc, &["deploy", "placement", "constraints"]));
        assert_eq!(placement, [label], "{node}: pinned by its own label");
        constraints.extend(placement);
        // The command reads the Swarm config made from swarm/nats/cluster.conf.
        let target = "/etc/nats/cluster.conf";
        let command = strings(svc.get("command"));
        assert!(
            command.iter().any(|a| a == target),
            "{node}: {command:?} does not read {target}"
        );
        let mount = svc
            .get("configs")
            .and_then(Value::as_sequence)
            .and_then(|c| {
                c.iter()
                    .find(|m| m.get("target").and_then(Value::as_str) == Some(target))
            })
            .unwrap_or_else(|| panic!("{node}: no config at {target}"));
        let source = str_at(mount, &["source"]);
        let file = str_at(&stack, &["configs", source, "file"]);
        assert_eq!(
            root().join("swarm/stacks").join(file).canonicalize()?,
            conf_path.canonicalize()?,
            "{node}: config {source} is not swarm/nats/cluster.conf"
        );
    }
    assert_eq!(names.len(), 3, "distinct server names");
    assert_eq!(volumes.len(), 3, "every NATS node has its own volume");
    assert_eq!(constraints.len(), 3, "every NATS node has its own node");

    let nats_url = NATS_NODES.map(|n| format!("nats://{n}:4222")).join(",");
    let hosts: Vec<(&str, &Value)> = stack
        .get("services")
        .and_then(Value::as_mapping)
        .ok_or("no services")?
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?, v)))
        .filter(|(k, _)| !NATS_NODES.contains(k))
        .collect();
    let mut published = BTreeSet::new();
    let mut ranges = BTreeSet::new();
    for &(name, svc) in &hosts {
        assert!(
            str_at(svc, &["image"]).starts_with("${AGGREGATE_HOST_IMAGE:?"),
            "{name}: the image is the required AGGREGATE_HOST_IMAGE (Swarm pulls, never builds)"
        );
        assert_eq!(env(svc, "AGGREGATE_CLUSTER"), "true", "{name}");
        assert_eq!(env(svc, "AGGREGATE_NATS_URL"), nats_url, "{name}");
        assert_eq!(env(svc, "AGGREGATE_NATS_REPLICAS"), "3", "{name}");
        // Go templates Swarm expands per task: stable per slot, distinct across services.
        assert_eq!(
            env(svc, "AGGREGATE_HOST_ID"),
            "{{.Service.Name}}-{{.Task.Slot}}"
        );
        assert_eq!(
            env(svc, "AGGREGATE_ADVERTISE_GATEWAY"),
            "http://{{.Task.Name}}:8080"
        );
        assert_eq!(
            env(svc, "AGGREGATE_ADVERTISE_ADMIN"),
            "http://{{.Task.Name}}:8081"
        );

        // The admin token: a Docker secret, read into AGGREGATE_ADMIN_TOKEN by the entrypoint
        // (the host has no *_FILE variant); never in the service's environment.
        assert!(
            at(svc, &["environment", "AGGREGATE_ADMIN_TOKEN"]).is_none(),
            "{name}: the admin token must come from the secret"
        );
        let secret = svc
            .get("secrets")
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .unwrap_or_else(|| panic!("{name}: no secret"));
        let source = str_at(secret, &["source"]);
        assert_eq!(
            at(&stack, &["secrets", source, "external"]).and_then(Value::as_bool),
            Some(true),
            "{name}: secret {source} is created before the deploy (swarm/README.md)"
        );
        let entrypoint = strings(svc.get("entrypoint")).join(" ");
        let read = format!(
            "AGGREGATE_ADMIN_TOKEN=\"$$(cat /run/secrets/{})\"",
            str_at(secret, &["target"])
        );
        for part in [
            read.as_str(),
            "export AGGREGATE_ADMIN_TOKEN",
            "exec aggregate-host serve",
        ] {
            assert!(
                entrypoint.contains(part),
                "{name}: entrypoint {entrypoint:?} lacks {part:?}"
            );
        }

        // /ready on the admin port (the_stack_healthcheck_asks_ready_on_the_admin_port runs it).
        assert_eq!(
            strings(at(svc, &["healthcheck", "test"])),
            HOST_HEALTHCHECK,
            "{name}"
        );

        // Gateway and admin through the ingress mesh, on ports no other service publishes.
        let ports = svc
            .get("ports")
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("{name}: no ports"));
        let targets: BTreeSet<u64> = ports
            .iter()
            .filter_map(|p| p.get("target")?.as_u64())
            .collect();
        assert_eq!(targets, BTreeSet::from([8080, 8081]), "{name}");
        for port in ports {
            assert_eq!(
                port.get("mode").and_then(Value::as_str),
                Some("ingress"),
                "{name}"
            );
            published.insert(port.get("published").and_then(Value::as_u64));
        }

        let deploy = svc
            .get("deploy")
            .unwrap_or_else(|| panic!("{name}: no deploy"));
        // A slot's new task has the old one's host id and volume: never both at once.
        assert_eq!(
            str_at(deploy, &["update_config", "order"]),
            "stop-first",
            "{name}"
        );
        assert_eq!(
            at(deploy, &["update_config", "parallelism"]).and_then(Value::as_u64),
            Some(1),
            "{name}: one replica at a time"
        );
        assert!(
            at(deploy, &["restart_policy", "condition"]).is_some(),
            "{name}: no restart_policy"
        );
        for kind in ["limits", "reservations"] {
            for resource in ["cpus", "memory"] {
                assert!(
                    at(deploy, &["resources", kind, resource])
                        .and_then(Value::as_str)
                        .is_some_and(|v| !v.is_empty()),
                    "{name}: no deploy.resources.{kind}.{resource}"
                );
            }
        }

        // A data volume per service and slot: two tasks on one node never share one.
        let mounts = strings(svc.get("volumes"));
        let data: Vec<_> = mounts
            .iter()
            .filter(|m| m.ends_with(":/var/lib/aggregate-host"))
            .collect();
        assert_eq!(data.len(), 1, "{name}: one data volume, got {mounts:?}");
        let volume = data[0].split(':').next().unwrap_or_default();
        let volume_name = str_at(&stack, &["volumes", volume, "name"]);
        assert!(
            volume_name.contains("{{.Service.Name}}") && volume_name.contains("{{.Task.Slot}}"),
            "{name}: volume name {volume_name:?} is not per service and slot"
        );

        // A tenant range: the node constraint and the host's range name the same one.
        let placement = strings(at(deploy, &["placement", "constraints"]));
        let labelled: Vec<&str> = placement
            .iter()
            .filter_map(|c| c.strip_prefix("node.labels.tenant_range == "))
            .collect();
        match at(svc, &["environment", "AGGREGATE_TENANT_RANGE"]).and_then(Value::as_str) {
            Some(range) => {
                assert_eq!(
                    labelled,
                    [range],
                    "{name}: node constraint and AGGREGATE_TENANT_RANGE disagree"
                );
                ranges.insert(range);
            }
            None => assert!(
                labelled.is_empty(),
                "{name}: placed by tenant_range without AGGREGATE_TENANT_RANGE"
            ),
        }
    }
    assert_eq!(
        published.len(),
        hosts.len() * 2,
        "every published port is distinct"
    );
    assert_eq!(
        at(service(&stack, "host"), &["deploy", "replicas"]).and_then(Value::as_u64),
        Some(3)
    );
    assert!(at(
        service(&stack, "host"),
        &["environment", "AGGREGATE_TENANT_RANGE"]
    )
    .is_none());
    assert_eq!(ranges, BTreeSet::from(["a-m", "n-z"]));
    let dockerfile = std::fs::read_to_string(root().join("docker/Dockerfile"))?;
    for listen in ["0.0.0.0:8080", "0.0.0.0:8081"] {
        assert!(
            dockerfile.contains(listen),
            "docker/Dockerfile no longer listens on {listen}: fix the stack's ports and healthcheck"
        );
    }
    Ok(())
}

/// Answer one HTTP request on `listener` with `status` and a JSON body; return its request line.
fn answer_once(listener: TcpListener, status: &'static str) -> std::io::Result<String> {
    let (mut stream, _) = listener.accept()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let body = r#"{"ready": false, "checks": []}"#;
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let head = String::from_utf8_lossy(&head);
    Ok(head.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn the_stack_healthcheck_asks_ready_on_the_admin_port() -> Result {
    let stack = compose(STACK_FILE)?;
    let test = strings(at(service(&stack, "host"), &["healthcheck", "test"]));
    let [cmd, program, args @ ..] = test.as_slice() else {
        panic!("healthcheck {test:?} is not [CMD, program, args...]");
    };
    assert_eq!((cmd.as_str(), program.as_str()), ("CMD", "aggregate-host"));
    let admin = "http://127.0.0.1:8081";
    assert!(
        args.iter().any(|a| a == admin),
        "healthcheck {test:?} does not ask the admin port {admin}"
    );
    // The same arguments against a stand-in admin API: GET /ready, exit 0 only on a 2xx.
    for (status, healthy) in [("200 OK", true), ("503 Service Unavailable", false)] {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || answer_once(listener, status));
        let url = format!("http://{addr}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_aggregate-host"));
        command.args(args.iter().map(|a| if a == admin { &url } else { a }));
        for var in [
            "AGGREGATE_ADMIN_URL",
            "AGGREGATE_GATEWAY_URL",
            "AGGREGATE_ADMIN_TOKEN",
            "AGGREGATE_TENANT",
            "http_proxy",
            "HTTP_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            command.env_remove(var);
        }
        let output = command.output()?;
        if !server.is_finished() {
            // The binary never connected: unblock the stand-in so the assertion below reports it.
            let _ = TcpStream::connect(addr);
        }
        let request = server.join().expect("the stand-in server panicked")?;
        assert!(
            request.starts_with("GET /ready "),
            "the healthcheck sent {request:?}, not GET /ready:\n{}",
            text(&output)
        );
        assert_eq!(
            output.status.success(),
            healthy,
            "`aggregate-host health` on {status}:\n{}",
            text(&output)
        );
    }
    Ok(())
}

/// Whether the Docker CLI here has `docker stack config` (no daemon needed).
fn docker_stack_config_available() -> bool {
    Command::new("docker")
        .args(["stack", "config", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `docker stack config -c <file>`: the loader of `docker stack deploy`, with its schema and its
/// `${...}` interpolation (from `AGGREGATE_HOST_IMAGE = image`, unset when `None`).
fn stack_config(file: &Path, image: Option<&str>) -> Output {
    let mut command = Command::new("docker");
    command
        .args(["stack", "config", "-c"])
        .arg(file)
        .env_remove("AGGREGATE_HOST_IMAGE")
        .current_dir(root());
    if let Some(image) = image {
        command.env("AGGREGATE_HOST_IMAGE", image);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker stack config: {e}"))
}

#[test]
fn docker_stack_config_accepts_the_stack() -> Result {
    if !docker_stack_config_available() {
        eprintln!(
            "NOTICE: docker_stack_config_accepts_the_stack: skipped, the Docker CLI (with `docker stack config`) is not installed"
        );
        return Ok(());
    }
    let image = "registry.example.com/aggregate-host:0.1.0";
    let output = stack_config(&root().join(STACK_FILE), Some(image));
    assert!(
        output.status.success(),
        "docker stack config refused {STACK_FILE}:\n{}",
        text(&output)
    );
    let rendered: Value = serde_yaml::from_slice(&output.stdout)?;
    let host = service(&rendered, "host");
    assert_eq!(str_at(host, &["image"]), image);
    // `$$` in the file reaches the container as `$`: the shell reads the secret, not the CLI.
    let entrypoint = strings(host.get("entrypoint")).join(" ");
    assert!(
        entrypoint.contains("AGGREGATE_ADMIN_TOKEN=\"$(cat /run/secrets/admin_token)\""),
        "entrypoint after interpolation: {entrypoint:?}"
    );
    // Go templates are left for Swarm to expand per task.
    assert_eq!(
        env(host, "AGGREGATE_HOST_ID"),
        "{{.Service.Name}}-{{.Task.Slot}}"
    );
    // `mode: 0400` is octal to the CLI (owner read only), not four hundred.
    let mode = host
        .get("secrets")
        .and_then(Value::as_sequence)
        .and_then(|s| s.first())
        .and_then(|s| s.get("mode"))
        .and_then(Value::as_u64);
    assert_eq!(mode, Some(0o400), "the secret's file mode");
    // The NATS config, resolved relative to the stack file.
    let file = str_at(&rendered, &["configs", "nats_cluster_conf", "file"]);
    assert_eq!(
        Path::new(file).canonicalize()?,
        root().join("swarm/nats/cluster.conf").canonicalize()?
    );

    // Without the image the deploy stops, naming the variable.
    let output = stack_config(&root().join(STACK_FILE), None);
    assert!(
        !output.status.success() && text(&output).contains("AGGREGATE_HOST_IMAGE"),
        "docker stack config without AGGREGATE_HOST_IMAGE answered {}:\n{}",
        output.status,
        text(&output)
    );
    // A top-level `name` (what dclint's require-project-name-field asks for) is refused: the
    // reason the stack turns that rule off. Same layout as the repository, for ../nats/.
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("stacks"))?;
    std::fs::create_dir_all(dir.path().join("nats"))?;
    std::fs::copy(
        root().join("swarm/nats/cluster.conf"),
        dir.path().join("nats/cluster.conf"),
    )?;
    let named = dir.path().join("stacks/platform.yml");
    let stack = std::fs::read_to_string(root().join(STACK_FILE))?;
    std::fs::write(&named, format!("name: aggregate\n{stack}"))?;
    let output = stack_config(&named, Some(image));
    assert!(
        !output.status.success() && text(&output).contains("Additional property name is not allowed"),
        "docker stack config accepted a top-level name ({}): drop `# dclint disable require-project-name-field` from {STACK_FILE} and add `name:`\n{}",
        output.status,
        text(&output)
    );
    Ok(())
}
