//! Aggregate Host: runs event-sourced aggregates shipped as WebAssembly components.
//!
//! Layers, data flowing one way: `registry` (component blobs and the manifest) and `runtime` (the
//! sandbox) are used by the command service; `types` is shared by all.

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod guest;
pub mod query;
pub mod registry;
pub mod runtime;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod types;
