//! A throwaway `nats-server -js` for tests and benches: free port, temporary store directory,
//! killed on drop.
//!
//! [`NatsServer::start_with_jetstream_config_or_skip`] starts one from a config file instead of
//! flags, for JetStream settings that have no flag (e.g. `sync_interval: always`).
//!
//! When `nats-server` is not installed, [`NatsServer::start_or_skip`] fails the test if the
//! environment variable `CI` is set, and otherwise prints a notice and returns `None` (the caller
//! skips).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server with JetStream enabled.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// Extra lines for the config file's `jetstream {}` block; `None` starts with flags only.
    jetstream_config: Option<String>,
}

/// Where `nats-server` is installed, if anywhere: `PATH`, then the Debian package's location.
pub fn binary() -> Option<PathBuf> {
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

/// Whether every thread of process `pid` is stopped (`T` in `/proc/<pid>/task/*/stat`); true
/// where `/proc` cannot be read.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next())
            })
            .is_none_or(|state| state == 'T' || state == 't')
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

impl NatsServer {
    /// Start a server, or explain why not: panics under `CI`, returns `None` otherwise.
    pub fn start_or_skip(what: &str) -> Option<Self> {
        match binary() {
            Some(binary) => Some(Self::start_with(binary)),
            None if std::env::var_os("CI").is_some() => panic!(
                "{what}: `nats-server` is not on PATH. The JetStream tests need it when CI is set \
                 (Debian: `apt-get install -y nats-server`)."
            ),
            None => {
                eprintln!("NOTICE: {what}: skipped, `nats-server` is not on PATH (apt-get install -y nats-server)");
                None
            }
        }
    }

    fn start_with(binary: PathBuf) -> Self {
        let mut server = Self::unstarted(binary);
        server.spawn();
        server
    }

    fn unstarted(binary: PathBuf) -> Self {
        Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temporary directory"),
            binary,
            jetstream_config: None,
        }
    }

    /// Start a server as [`NatsServer::start_or_skip`] does, but from a config file whose
    /// `jetstream {}` block holds the store directory plus `jetstream` (e.g. `"sync_interval:
    /// always"`; `""` for the defaults), or explain why not: panics under `CI`, returns `None`
    /// otherwise.
    pub fn start_with_jetstream_config_or_skip(what: &str, jetstream: &str) -> Option<Self> {
        let Some(binary) = binary() else {
            return Self::start_or_skip(what);
        };
        let mut server = Self::unstarted(binary);
        server.jetstream_config = Some(jetstream.to_owned());
        server.spawn();
        Some(server)
    }

    /// A port and a store directory for a server that is not started yet ([`NatsServer::start`]
    /// starts it), or why not, as [`NatsServer::start_or_skip`].
    pub fn reserve_or_skip(what: &str) -> Option<Self> {
        match binary() {
            Some(binary) => Some(Self::unstarted(binary)),
            // No binary: `start_or_skip` explains, and panics under CI.
            None => Self::start_or_skip(what),
        }
    }

    /// Start the server (on its port and store directory) if it is not running; returns once it
    /// accepts connections.
    pub fn start(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// Whether the server process was started (and not killed since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Send a signal (e.g. `STOP`, `CONT`) to the running server.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("nats-server is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} nats-server failed");
        if signal == "STOP" {
            // Return only once every thread of the server is stopped, so that nothing sent after
            // this call is answered.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(child.id()) {
                assert!(Instant::now() < deadline, "nats-server did not stop");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    fn spawn(&mut self) {
        let store = self.dir.path().join("js");
        let log = self.dir.path().join("server.log");
        let mut command = Command::new(&self.binary);
        match &self.jetstream_config {
            None => command
                .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
                .arg("-sd")
                .arg(&store),
            Some(extra) => {
                let config = self.dir.path().join("nats.conf");
                let text = format!(
                    "listen: 127.0.0.1:{}\njetstream {{\n  store_dir: {:?}\n  {extra}\n}}\n",
                    self.port,
                    store.display().to_string()
                );
                std::fs::write(&config, text)
                    .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
                command.arg("-c").arg(config)
            }
        };
        let child = command
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
        self.wait_ready(&log);
    }

    fn wait_ready(&mut self, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("nats-server exited with {status} during startup:\n{log}");
                }
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                // JetStream is enabled before the client listener accepts connections.
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!(
                    "nats-server did not accept connections on port {} within 20 s:\n{log}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client URL, e.g. `nats://127.0.0.1:4222`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL the server (its store directory stays).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL the server and start it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
