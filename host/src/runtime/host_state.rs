//! What a guest's `Store` holds: a deny-all WASI context, the memory limiter, deterministic
//! clocks and randomness, and the captured stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::{Infallible, TryRng};
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::stderr::StderrCapture;

/// Per-instance host data.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stderr: StderrCapture,
    pub(crate) determinism: Determinism,
}

impl HostState {
    /// A context that grants nothing: no preopened directories, no environment, no arguments,
    /// no network, stdin empty, stdout discarded, stderr captured (bounded).
    pub(crate) fn new(max_memory_bytes: usize, max_stderr_bytes: usize) -> Self {
        let stderr = StderrCapture::new(max_stderr_bytes);
        let determinism = Determinism::default();
        let mut b = WasiCtx::builder();
        b.stderr(stderr.clone())
            .wall_clock(determinism.clock())
            .monotonic_clock(determinism.monotonic())
            .secure_random(determinism.rng())
            .insecure_random(determinism.rng())
            .insecure_random_seed(0)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        Self {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max: max_memory_bytes,
                hit: false,
            },
            stderr,
            determinism,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory growth and remembers that the cap was hit, so a guest that turns a failed
/// `memory.grow` into a trap or an error (Rust aborts, SpiderMonkey returns "out of memory") is
/// reported as a memory-limit breach, not as a generic failure.
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = desired <= self.max && maximum.is_none_or(|m| desired <= m);
        if !ok {
            self.hit = true;
        }
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }
}

/// Clocks and randomness that depend only on the command: before each call the host sets the
/// time to the command's timestamp and reseeds the generator from the command id, so replaying a
/// command gives the same answer.
///
/// The monotonic clock is separate: it starts at one second and advances by one microsecond per
/// read, so it never reads zero and never goes backwards (Go's runtime aborts on a zero
/// `nanotime`, and command timestamps need not increase from one command to the next).
#[derive(Clone)]
pub(crate) struct Determinism {
    now_ns: Arc<AtomicU64>,
    monotonic_ns: Arc<AtomicU64>,
    seed: Arc<Mutex<u64>>,
}

/// The wall clock before the first command: 2020-01-01T00:00:00Z (never zero).
const EPOCH_BEFORE_FIRST_COMMAND_NS: u64 = 1_577_836_800_000_000_000;

impl Default for Determinism {
    fn default() -> Self {
        Self {
            now_ns: Arc::new(AtomicU64::new(EPOCH_BEFORE_FIRST_COMMAND_NS)),
            monotonic_ns: Arc::new(AtomicU64::new(1_000_000_000)),
            seed: Arc::default(),
        }
    }
}

impl Determinism {
    pub(crate) fn set(&self, now_ns: u64, seed: u64) {
        let now_ns = if now_ns == 0 {
            EPOCH_BEFORE_FIRST_COMMAND_NS
        } else {
            now_ns
        };
        self.now_ns.store(now_ns, Ordering::Relaxed);
        *self.seed.lock().unwrap_or_else(|p| p.into_inner()) = seed;
    }

    fn clock(&self) -> FixedClock {
        FixedClock(self.now_ns.clone())
    }

    fn monotonic(&self) -> SteppingClock {
        SteppingClock(self.monotonic_ns.clone())
    }

    fn rng(&self) -> SeededRng {
        SeededRng(self.seed.clone())
    }
}

struct FixedClock(Arc<AtomicU64>);

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// A monotonic clock that moves one microsecond per read.
struct SteppingClock(Arc<AtomicU64>);

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000
    }
}

/// SplitMix64 over a shared state; not cryptographic, by design (guests must be deterministic).
struct SeededRng(Arc<Mutex<u64>>);

impl SeededRng {
    fn next(&self) -> u64 {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.next() as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.next())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for chunk in dst.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_never_read_zero_and_the_monotonic_one_never_goes_back() {
        let d = Determinism::default();
        let wall = d.clock();
        let mono = d.monotonic();
        assert_eq!(
            HostWallClock::now(&wall).as_nanos() as u64,
            EPOCH_BEFORE_FIRST_COMMAND_NS
        );
        let a = mono.now();
        assert!(a > 0);
        d.set(5_000, 1);
        assert_eq!(HostWallClock::now(&wall), Duration::from_nanos(5_000));
        let b = mono.now();
        assert!(b > a, "{b} > {a}");
        d.set(0, 1);
        assert_eq!(
            HostWallClock::now(&wall).as_nanos() as u64,
            EPOCH_BEFORE_FIRST_COMMAND_NS
        );
        assert!(mono.now() > b);
    }
}
