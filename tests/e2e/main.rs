//! Black-box end-to-end suite: every test starts the real `aggregate-host` binary (`serve`, ports
//! chosen by the OS), talks to it over HTTP on loopback, and stops it with SIGTERM. Each scenario
//! runs twice: on the embedded event log and on JetStream (against a `nats-server` the test starts
//! itself; skipped with a notice when it is not installed, unless `CI` is set).
//!
//! This file lives in the top-level `tests/` but is a test target of the host package
//! (`host/Cargo.toml`, `[[test]] name = "e2e"`), so cargo builds the binary before the suite and
//! hands over its path; the suite never runs a stale binary.

mod support;

mod admin;
mod cli;
mod conformance;
mod drain;
mod errors;
mod faults;
mod hot_deploy;
mod index;
mod ingress;
mod metrics;
mod nats_outage;
mod read_side;
mod routing;
mod scaffold;
mod shutdown;
mod story;
mod tenancy;
mod upload_limits;
