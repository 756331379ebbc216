//! Helpers shared by the storage test suites (and the storage bench).

#![allow(dead_code)]

pub mod disk;
pub mod nats;
