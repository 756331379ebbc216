//! Starting and stopping the host binary, and HTTP helpers.

#![allow(dead_code)]

#[path = "../../host/tests/support/nats.rs"]
pub mod nats;

#[path = "../../host/tests/support/disk.rs"]
pub mod disk;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aggregate_host::client::{Client, ClientError};
use serde_json::Value;

pub use aggregate_host::types::AggregateId;

/// The admin token every test host is started with.
pub const TOKEN: &str = "e2e-admin-token-0123456789";

/// The environment of a host in cluster mode on `data_dir`, as `tests/cluster` and the cluster
/// bench start it: loopback listeners on free ports, the admin token [`TOKEN`], a 10 s shutdown
/// grace without linger, NATS at `nats_urls` (comma-separated) with every stream and bucket R3,
/// and `host_id`.
pub fn cluster_host_vars(
    data_dir: &Path,
    nats_urls: String,
    host_id: &str,
) -> Vec<(String, String)> {
    [
        ("AGGREGATE_DATA_DIR", data_dir.display().to_string()),
        ("AGGREGATE_GATEWAY_LISTEN", "127.0.0.1:0".into()),
        ("AGGREGATE_ADMIN_LISTEN", "127.0.0.1:0".into()),
        ("AGGREGATE_ADMIN_TOKEN", TOKEN.into()),
        ("AGGREGATE_SHUTDOWN_GRACE_SECS", "10".into()),
        ("AGGREGATE_SHUTDOWN_LINGER_MS", "0".into()),
        ("AGGREGATE_NATS_URL", nats_urls),
        ("AGGREGATE_CLUSTER", "true".into()),
        ("AGGREGATE_HOST_ID", host_id.into()),
        ("AGGREGATE_NATS_REPLICAS", "3".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The binary under test, built by cargo for this test target.
pub const BINARY: &str = env!("CARGO_BIN_EXE_aggregate-host");

/// Which event log a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    JetStream,
}

/// Runs `$scenario(Backend)` as two tests, `embedded` and `jetstream`.
#[macro_export]
macro_rules! on_both_logs {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$scenario($crate::support::Backend::Embedded).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn jetstream() {
                super::$scenario($crate::support::Backend::JetStream).await
            }
        }
    };
}

/// A data directory, and for JetStream a private nats-server: what survives host restarts.
pub struct Env {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub nats: Option<nats::NatsServer>,
}

impl Env {
    /// `None` when JetStream is asked for and nats-server is missing (outside CI).
    pub fn new(backend: Backend, what: &str) -> Option<Self> {
        let nats = match backend {
            Backend::Embedded => None,
            Backend::JetStream => Some(nats::NatsServer::start_or_skip(what)?),
        };
        Some(Self {
            backend,
            dir: tempfile::tempdir().unwrap(),
            nats,
        })
    }

    /// Start a host on this environment's data directory (and NATS), with extra `AGGREGATE_*`
    /// variables.
    pub fn start(&self, vars: &[(&str, &str)]) -> HostProcess {
        self.start_in(&self.dir.path().join("host"), vars)
    }

    /// Start a host with its own data directory `dir` (two hosts on one NATS).
    pub fn start_in(&self, dir: &Path, vars: &[(&str, &str)]) -> HostProcess {
        let mut all: Vec<(String, String)> = vec![
            ("AGGREGATE_DATA_DIR".into(), dir.display().to_string()),
            ("AGGREGATE_GATEWAY_LISTEN".into(), "127.0.0.1:0".into()),
            ("AGGREGATE_ADMIN_LISTEN".into(), "127.0.0.1:0".into()),
            ("AGGREGATE_ADMIN_TOKEN".into(), TOKEN.into()),
            ("AGGREGATE_SHUTDOWN_GRACE_SECS".into(), "10".into()),
        ];
        if let Some(n) = &self.nats {
            all.push(("AGGREGATE_NATS_URL".into(), n.url()));
        }
        all.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let host = HostProcess::start(dir, &all);
        // With `nats_connect: retry` a host listens before its NATS connection is up; a test
        // whose NATS is running starts from a ready host (the outage tests start NATS later).
        if self.nats.as_ref().is_some_and(|n| n.is_running()) {
            host.wait_ready(Duration::from_secs(30));
        }
        host
    }
}

/// A running `aggregate-host serve`.
pub struct HostProcess {
    child: Option<Child>,
    pub gateway: String,
    pub admin: String,
    stderr: PathBuf,
}

impl HostProcess {
    /// Start `aggregate-host serve` with its data in `dir` and exactly the `AGGREGATE_*`
    /// variables `vars`; returns once it printed its addresses.
    pub fn start(dir: &Path, vars: &[(String, String)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let stderr = dir.join(format!("host-{}.log", uuid_now()));
        let mut cmd = Command::new(BINARY);
        cmd.arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, _) in std::env::vars() {
            if k.starts_with("AGGREGATE_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("RUST_LOG", "info,fjall=warn,lsm_tree=warn");
        cmd.envs(vars.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let mut reader = BufReader::new(stdout);
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the host never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.starts_with("listening ") => l,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "host did not start ({other:?}); its log:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_string()
        };
        Self {
            gateway: field("gateway="),
            admin: field("admin="),
            child: Some(child),
            stderr,
        }
    }

    /// Poll `GET /ready` on the admin listener until it answers 200; panics with the host's log
    /// after `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        self.wait_ready_every(timeout, Duration::from_millis(20));
    }

    /// [`HostProcess::wait_ready`], polling every `poll` (benches time start-up to the poll).
    pub fn wait_ready_every(&self, timeout: Duration, poll: Duration) {
        use std::io::Write;
        let addr = self
            .admin
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let deadline = Instant::now() + timeout;
        loop {
            let status = std::net::TcpStream::connect(&addr).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"GET /ready HTTP/1.1\r\nHost: host\r\nConnection: close\r\n\r\n")?;
                let mut head = [0u8; 12];
                s.read_exact(&mut head)?;
                Ok(head)
            });
            if matches!(&status, Ok(head) if head.ends_with(b" 200")) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "host not ready within {timeout:?} ({status:?}); its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(poll);
        }
    }

    /// A client with the admin token and no tenant.
    pub fn client(&self) -> Client {
        Client::new(&self.gateway, &self.admin).with_token(Some(TOKEN.into()))
    }

    /// A client acting as `tenant`.
    pub fn tenant(&self, tenant: &str) -> Client {
        self.client().with_tenant(Some(tenant.into()))
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Send SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Wait for the process to exit (SIGKILL after `timeout`, and fail).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "host did not exit within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.terminate();
        self.wait(Duration::from_secs(30))
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                let mut log = String::new();
                if let Ok(mut f) = std::fs::File::open(&self.stderr) {
                    let _ = f.read_to_string(&mut log);
                }
                let tail: String = log
                    .lines()
                    .rev()
                    .take(60)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                eprintln!("--- host log (last 60 lines) ---\n{tail}\n--- end of host log ---");
            }
        }
    }
}

fn uuid_now() -> String {
    AggregateId::generate().to_string()
}

pub fn wasm(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fresh aggregate id.
pub fn new_id() -> String {
    AggregateId::generate().to_string()
}

/// Deploy a component and return its hash.
pub async fn deploy(client: &Client, ty: &str, path: &str) -> String {
    let v = client
        .deploy(ty, wasm(path))
        .await
        .unwrap_or_else(|e| panic!("deploy {ty}: {e}"));
    v["component"].as_str().unwrap().to_string()
}

/// Assert a problem answer: status and problem type slug; returns the problem body.
#[track_caller]
pub fn problem(r: Result<Value, ClientError>, status: u16, slug: &str) -> Value {
    match r {
        Err(ClientError::Problem { status: s, problem }) => {
            assert_eq!(s, status, "{problem}");
            assert_eq!(problem["type"], format!("/problems/{slug}"), "{problem}");
            assert_eq!(problem["status"], status, "{problem}");
            assert!(
                problem["title"].is_string() && problem["detail"].is_string(),
                "{problem}"
            );
            problem
        }
        other => panic!("expected a {status} {slug} problem, got {other:?}"),
    }
}
