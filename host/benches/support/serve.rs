//! Shared by the bench binaries that drive the real `aggregate-host serve` binary.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aggregate_host::client::Client;

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // CLK_TCK is 100 on Linux
}

/// `aggregate-host serve` as a child process on a temporary data directory, both listeners on
/// free loopback ports; stopped with SIGTERM when dropped.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// A client of its two APIs.
    pub client: Client,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Start it with extra `AGGREGATE_*` variables; returns once it printed its addresses.
    pub fn start(vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aggregate-host"));
        cmd.arg("serve")
            .env("AGGREGATE_DATA_DIR", dir.path())
            .env("AGGREGATE_GATEWAY_LISTEN", "127.0.0.1:0")
            .env("AGGREGATE_ADMIN_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("start aggregate-host");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("listening line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .expect("address")
                .to_string()
        };
        let client = Client::new(field("gateway="), field("admin="));
        Self {
            child,
            client,
            _dir: dir,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
