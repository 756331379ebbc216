//! A throwaway 3-node `nats-server` cluster on loopback, JetStream on, for tests.
//!
//! Include it with `#[path = "support/nats_cluster.rs"] mod nats_cluster;` (adjust the path to
//! the including file). Self-contained: it needs only `std`, `tempfile` and `serde_json`, and does
//! not depend on `support::nats`.
//!
//! Each node has a stable `server_name` (`n1`..`n3`, the Raft peer id, so a restarted node is the
//! same peer), its own client, route (cluster) and HTTP monitoring ports on `127.0.0.1`, and its
//! own temporary directory holding its config file (`nats.conf`), its log (`server.log`: the
//! server's stderr, appended across restarts, so early config errors are captured too) and its
//! JetStream file store (`js/`). Every node's `cluster` block lists the routes to all three.
//! Readiness is polled on `GET /jsz` (`meta_cluster.leader`) on the monitoring ports; every wait
//! is bounded and panics with the tail of every node's log.
//!
//! Works with nats-server 2.9 and 2.10+ (no options newer than 2.9 are used).
//!
//! When `nats-server` is not installed, [`NatsCluster::start_or_skip`] panics if the environment
//! variable `CI` is set, and otherwise prints a notice and returns `None` (the caller skips).
//!
//! Note: async-nats 0.51 does not split a comma-separated string into several servers (a `&str`
//! is parsed as one URL); pass `cluster.urls().split(',').collect::<Vec<_>>()` to
//! `async_nats::connect` / `ConnectOptions::connect`.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Number of nodes in the cluster.
const NODES: usize = 3;
/// Bound on a node accepting client connections after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a node exiting after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the first meta leader election after a cold start.
const FIRST_LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between polls.
const POLL: Duration = Duration::from_millis(25);
/// Lines of each node's log shown in a panic message.
const LOG_TAIL_LINES: usize = 80;

/// A running 3-node nats-server cluster with JetStream (file storage); every node is killed on
/// drop and its store directory removed.
pub struct NatsCluster {
    binary: PathBuf,
    version: String,
    nodes: Vec<Node>,
}

/// One node: its ports, directory and (when running) process.
struct Node {
    name: String,
    client_port: u16,
    route_port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

/// Where `nats-server` is installed, if anywhere: `PATH`, then `/usr/sbin`, then `/usr/bin`.
fn binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([
            PathBuf::from("/usr/sbin/nats-server"),
            PathBuf::from("/usr/bin/nats-server"),
        ])
        .find(|p| p.is_file())
}

/// `n` distinct free ports on 127.0.0.1, none handed out before by this process (so two clusters
/// started concurrently by one test binary never share a port).
fn free_ports(n: usize) -> Vec<u16> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    // Hold every listener until all ports are picked: the OS cannot return the same port twice.
    let mut listeners = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free local port");
        let port = listener.local_addr().expect("local address").port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    ports
}

/// The version reported by `nats-server --version` (`nats-server: v2.9.10` gives `2.9.10`).
fn binary_version(binary: &Path) -> String {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let text = if text.is_empty() {
        String::from_utf8_lossy(&output.stderr).trim().to_string()
    } else {
        text
    };
    text.rsplit(' ')
        .next()
        .unwrap_or(&text)
        .trim_start_matches('v')
        .to_string()
}

/// `GET path` on `127.0.0.1:port` over plain HTTP/1.0; the body of a 200 response.
fn http_get(port: u16, path: &str) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(3));
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response from {addr}: {response:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("GET {path} on {addr}: {status}"));
    }
    Ok(body.to_string())
}

/// The meta leader a node reports in `/jsz` (`meta_cluster.leader`), or why there is none.
fn meta_leader(http_port: u16) -> Result<String, String> {
    let body = http_get(http_port, "/jsz")?;
    let jsz: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/jsz is not JSON ({e}): {body}"))?;
    match jsz
        .pointer("/meta_cluster/leader")
        .and_then(serde_json::Value::as_str)
    {
        Some(leader) if !leader.is_empty() => Ok(leader.to_string()),
        _ => Err("no meta leader yet".to_string()),
    }
}

/// The last `lines` lines of a file (empty when unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl NatsCluster {
    /// Start 3 nodes and return once a meta leader exists and every node reports it (bounded,
    /// 30 s; panics with the node logs). When `nats-server` is not installed: panics if `CI` is
    /// set, otherwise prints a notice naming `what` and returns `None` (the caller skips).
    pub fn start_or_skip(what: &str) -> Option<Self> {
        match binary() {
            Some(binary) => Some(Self::start_with(binary)),
            None if std::env::var_os("CI").is_some() => panic!(
                "{what}: `nats-server` is not on PATH. The JetStream cluster tests need it when CI \
                 is set (Debian: `apt-get install -y nats-server`)."
            ),
            None => {
                eprintln!(
                    "NOTICE: {what}: skipped, `nats-server` is not on PATH (apt-get install -y nats-server)"
                );
                None
            }
        }
    }

    fn start_with(binary: PathBuf) -> Self {
        let version = binary_version(&binary);
        let ports = free_ports(3 * NODES);
        let nodes: Vec<Node> = (0..NODES)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                client_port: ports[3 * i],
                route_port: ports[3 * i + 1],
                http_port: ports[3 * i + 2],
                dir: tempfile::Builder::new()
                    .prefix(&format!("nats-n{}-", i + 1))
                    .tempdir()
                    .expect("temporary directory"),
                child: None,
            })
            .collect();
        let routes = nodes
            .iter()
            .map(|n| format!("nats-route://127.0.0.1:{}", n.route_port))
            .collect::<Vec<_>>()
            .join(", ");
        for node in &nodes {
            let store = node.dir.path().join("js");
            let config = format!(
                "server_name: {name}\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 http: \"127.0.0.1:{http}\"\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: test\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                name = node.name,
                client = node.client_port,
                http = node.http_port,
                store = store.to_string_lossy(),
                route = node.route_port,
            );
            std::fs::write(node.config_path(), config).expect("write nats.conf");
        }
        let mut cluster = Self {
            binary,
            version,
            nodes,
        };
        // Spawn all three before waiting on any: a node's JetStream waits for its peers.
        for i in 0..NODES {
            cluster.spawn(i);
        }
        for i in 0..NODES {
            cluster.wait_accepting(i);
        }
        cluster.wait_meta_leader(FIRST_LEADER_TIMEOUT);
        cluster
    }

    /// Client URL of node `i` (0..3): `nats://127.0.0.1:<port>`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// All three client URLs joined with commas. Note: async-nats 0.51 parses a `&str` as ONE
    /// URL; split this on `,` into a `Vec` before passing it to `async_nats::connect`.
    pub fn urls(&self) -> String {
        (0..NODES)
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL node `i` (its store directory stays). No-op when it is not running.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM node `i` and wait (bounded, 15 s; then SIGKILL and panic with the logs) for it to
    /// exit, for a clean restart. No-op when it is not running.
    pub fn stop(&mut self, i: usize) {
        let Some(mut child) = self.nodes[i].child.take() else {
            return;
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.nodes[i].name);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n{}",
                        self.nodes[i].name,
                        self.logs()
                    );
                }
            }
        }
    }

    /// Start node `i` again on the same ports and store directory; returns when it accepts client
    /// connections (bounded, 20 s; panics with the logs). Panics when it is already running.
    pub fn start(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "{} is already running",
            self.nodes[i].name
        );
        self.spawn(i);
        self.wait_accepting(i);
    }

    /// [`NatsCluster::stop`] then [`NatsCluster::start`] node `i`.
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.start(i);
    }

    /// Wait (bounded; panics with the logs) until a meta leader exists and every running node
    /// reports it in `/jsz` (the leader must itself be a running node).
    pub fn wait_meta_leader(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let reports: Vec<(&str, Result<String, String>)> = running
                .iter()
                .map(|n| (n.name.as_str(), meta_leader(n.http_port)))
                .collect();
            let agreed = match reports.first() {
                Some((_, Ok(leader))) => {
                    reports.iter().all(|(_, r)| r.as_ref() == Ok(leader))
                        && running.iter().any(|n| &n.name == leader)
                }
                _ => false,
            };
            if agreed {
                return;
            }
            if Instant::now() > deadline {
                let reports = reports
                    .iter()
                    .map(|(name, r)| format!("  {name}: {r:?}"))
                    .collect::<Vec<_>>()
                    .join("\n");
                panic!(
                    "no meta leader agreed on by all running nodes within {timeout:?}; /jsz \
                     meta_cluster.leader per node:\n{reports}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The nats-server version of the binary used, from `nats-server --version` without the
    /// leading `nats-server: v` (e.g. `2.9.10`).
    pub fn version(&self) -> String {
        self.version.clone()
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("open server.log");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(node.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.nodes[i].child = Some(child);
    }

    /// Wait until node `i` accepts client connections (bounded; panics with the logs, also when
    /// the process exits first).
    fn wait_accepting(&mut self, i: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        let (name, port) = (self.nodes[i].name.clone(), self.nodes[i].client_port);
        loop {
            let child = self.nodes[i].child.as_mut().expect("node was spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.nodes[i].child = None;
                panic!(
                    "{name} exited with {status} during startup\n{}",
                    self.logs()
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} did not accept client connections on port {port} within \
                     {START_TIMEOUT:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// The tail of every node's log, for panic messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "----- {} ({}, client {}, route {}, http {}) {} -----\n{}",
                    n.name,
                    if n.child.is_some() { "running" } else { "down" },
                    n.client_port,
                    n.route_port,
                    n.http_port,
                    n.log_path().display(),
                    tail(&n.log_path(), LOG_TAIL_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
    }
}
