//! Per-call limits of a guest, and how an aggregate type's instances are isolated.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The budget of one guest call. Configured per aggregate type in the manifest, with global
/// defaults; every breach is its own [`RuntimeError`](super::RuntimeError) variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Fuel (roughly: wasm instructions) one call may burn.
    pub fuel: u64,
    /// Largest linear memory an instance may grow to, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock time one call may take, in milliseconds (epoch deadline).
    pub timeout_ms: u64,
    /// Most events one `decide` may return.
    pub max_events: usize,
    /// Most bytes one call may return (sum of event types and payloads, or the state).
    pub max_output_bytes: usize,
    /// Most bytes of stderr kept per instance (the rest is dropped); it goes to the host log.
    pub max_stderr_bytes: usize,
    /// A warm instance is recycled after this many calls.
    pub max_calls_per_instance: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 500_000_000,
            max_memory_bytes: 64 << 20,
            timeout_ms: 1_000,
            max_events: 100,
            max_output_bytes: 4 << 20,
            max_stderr_bytes: 16 << 10,
            max_calls_per_instance: 10_000,
        }
    }
}

/// The longest `timeout_ms` accepted: 10 minutes. Every guest call ends by then, whatever its
/// fuel, so a misconfigured limit cannot pin a core (and hold a shutdown) forever.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

impl Limits {
    /// The wall-clock timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Check the limits make sense on an engine whose memories may grow to `engine_max_memory`.
    ///
    /// # Errors
    ///
    /// A message naming the bad field.
    pub fn validate(&self, engine_max_memory: usize) -> Result<(), String> {
        if self.fuel == 0 {
            return Err("fuel must be greater than 0".into());
        }
        if self.max_memory_bytes < (1 << 16) {
            return Err(format!(
                "max_memory_bytes {} is below one wasm page (65536)",
                self.max_memory_bytes
            ));
        }
        if self.max_memory_bytes > engine_max_memory {
            return Err(format!(
                "max_memory_bytes {} exceeds the engine's maximum {engine_max_memory}",
                self.max_memory_bytes
            ));
        }
        if self.timeout_ms == 0 {
            return Err("timeout_ms must be greater than 0".into());
        }
        if self.timeout_ms > MAX_TIMEOUT_MS {
            return Err(format!(
                "timeout_ms {} exceeds the maximum {MAX_TIMEOUT_MS} (10 minutes)",
                self.timeout_ms
            ));
        }
        if self.max_events == 0 {
            return Err("max_events must be greater than 0".into());
        }
        if self.max_output_bytes == 0 {
            return Err("max_output_bytes must be greater than 0".into());
        }
        if self.max_calls_per_instance == 0 {
            return Err("max_calls_per_instance must be greater than 0".into());
        }
        Ok(())
    }
}

/// How instances of an aggregate type are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Warm instances are kept per (tenant, aggregate type, component) and reused.
    #[default]
    Pooled,
    /// Every call gets a fresh instance.
    PerCommand,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_bounded() {
        let engine_max = 256 << 20;
        assert!(Limits::default().validate(engine_max).is_ok());
        let at_max = Limits {
            timeout_ms: MAX_TIMEOUT_MS,
            ..Limits::default()
        };
        assert!(at_max.validate(engine_max).is_ok());
        let over = Limits {
            timeout_ms: MAX_TIMEOUT_MS + 1,
            ..Limits::default()
        };
        assert!(over
            .validate(engine_max)
            .unwrap_err()
            .contains("timeout_ms"));
    }
}
