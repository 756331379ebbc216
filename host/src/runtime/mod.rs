//! The sandbox: one wasmtime engine, compiled components (memory and disk caches), a pool of warm
//! instances, and per-call limits. Nothing here knows storage or HTTP.
//!
//! Calls are synchronous (guests are pure CPU); the service layer runs them on blocking threads.

mod artifacts;
mod bindings;
mod host_state;
mod limits;
mod policy;
mod pool;
mod refusals;
mod stderr;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use self::limits::{Isolation, Limits, MAX_TIMEOUT_MS};
pub use self::pool::InstanceKey;

use self::artifacts::{ArtifactStore, Lookup};
use self::bindings::{AggregatePre, WitCommand, WitDecideError, WitEvent};
use self::host_state::HostState;
use self::pool::{Instance, Pool};
use self::refusals::Refusals;
use crate::types::{Command, ComponentHash, EventData, Json, NewEvent};

/// Longest guest message (rejection reason, apply error, stderr excerpt) kept in an error.
const MAX_MESSAGE: usize = 4096;

/// [`RuntimeConfig::max_concurrent_compiles`] unless configured: one compile at a time (it
/// parallelises internally).
pub const DEFAULT_MAX_CONCURRENT_COMPILES: usize = 1;

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled artifacts are kept; `None` keeps them in memory only.
    pub artifact_dir: Option<PathBuf>,
    /// The largest memory any instance may have (the per-type limit must not exceed it).
    pub max_memory_bytes: usize,
    /// Warm instances kept across all tenants and types (LRU beyond that).
    pub max_warm_instances: usize,
    /// Use wasmtime's pooling instance allocator (fast instantiation, preallocated slots).
    pub pooling: bool,
    /// Resolution of the wall-clock timeout.
    pub epoch_tick: Duration,
    /// Compiles that may run at once; further loads wait for a slot. Each compile already uses
    /// every core (parallel code generation) and hundreds of MiB for a large component, so more
    /// at once only takes CPU and memory from command processing. At least 1.
    pub max_concurrent_compiles: usize,
    /// Refused components remembered by hash, so the same bytes are refused again without being
    /// read or compiled (oldest forgotten first beyond this many).
    pub remembered_refusals: usize,
    /// How long a refusal is remembered.
    pub refusal_ttl: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            artifact_dir: None,
            max_memory_bytes: 256 << 20,
            max_warm_instances: 256,
            pooling: true,
            epoch_tick: Duration::from_millis(5),
            max_concurrent_compiles: DEFAULT_MAX_CONCURRENT_COMPILES,
            remembered_refusals: 1024,
            refusal_ttl: Duration::from_secs(3600),
        }
    }
}

/// Everything that can go wrong loading or running a component. Limit breaches, traps and bad
/// output are per-call errors: the instance is discarded and the runtime keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bytes are not WebAssembly at all.
    #[error("not a WebAssembly component: the bytes do not start with the wasm magic number")]
    NotWasm,
    /// A core module was uploaded where a component is required.
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2 or componentize it"
    )]
    CoreModule,
    /// The bytes start like a component but are not a well-formed one (truncated, a bad section,
    /// types that do not check); found by reading them, before compiling.
    #[error("component {hash} is not a valid component: {reason}")]
    Malformed {
        /// The component.
        hash: ComponentHash,
        /// The parser's explanation, with the byte offset.
        reason: String,
    },
    /// The component imports something the host does not link.
    #[error("component {hash} imports `{import}`, which is not allowed: {reason}")]
    ForbiddenImport {
        /// The component.
        hash: ComponentHash,
        /// The import's full name.
        import: String,
        /// Why it is refused.
        reason: String,
    },
    /// The component does not export the `aggregate` world (or links wrongly).
    #[error("component {hash} does not implement world `aggregate:core/aggregate`: {reason}")]
    WorldMismatch {
        /// The component.
        hash: ComponentHash,
        /// The export that is missing or has the wrong type (`init`, `decide`, `apply`), when
        /// one is to blame.
        export: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Validation or code generation failed.
    #[error("component {hash} failed to compile: {reason}")]
    Compile {
        /// The component.
        hash: ComponentHash,
        /// wasmtime's explanation.
        reason: String,
    },
    /// A call named a component that was never loaded.
    #[error("component {0} is not loaded")]
    NotLoaded(ComponentHash),
    /// Creating an instance failed (including a trap in the guest's start-up code).
    #[error("could not instantiate component {hash}: {reason}")]
    Instantiate {
        /// The component.
        hash: ComponentHash,
        /// What failed.
        reason: String,
    },
    /// The call used up its fuel.
    #[error("the guest ran out of fuel (limit {limit} per call)")]
    FuelExhausted {
        /// The fuel budget of the call.
        limit: u64,
    },
    /// The guest tried to grow memory past its limit.
    #[error("the guest exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The memory limit.
        limit: usize,
    },
    /// The call ran past its wall-clock deadline.
    #[error("the guest exceeded its time limit of {limit_ms} ms")]
    Timeout {
        /// The limit.
        limit_ms: u64,
    },
    /// The guest panicked (Rust) and aborted.
    #[error("the guest panicked: {message}")]
    Panicked {
        /// The panic message from the guest's stderr.
        message: String,
    },
    /// Any other trap.
    #[error("the guest trapped: {trap}{}", if stderr.is_empty() { String::new() } else { format!(" (stderr: {stderr})") })]
    Trap {
        /// The trap.
        trap: String,
        /// What the guest wrote to stderr during the call.
        stderr: String,
    },
    /// `decide` returned more events than allowed.
    #[error("the guest returned {count} events; the limit is {limit}")]
    TooManyEvents {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A call returned more bytes than allowed.
    #[error("the guest returned {bytes} bytes; the limit is {limit}")]
    OutputTooLarge {
        /// How many.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The guest returned something that is not what the contract promises.
    #[error("the guest returned invalid output: {0}")]
    InvalidOutput(String),
    /// `apply` reported an error (the events could not be folded).
    #[error("the guest could not apply the events: {0}")]
    ApplyFailed(String),
    /// The artifact directory could not be used.
    #[error("artifact store at {path}: {source}")]
    ArtifactStore {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// A short stable name of the error kind (for metrics and problem types).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotWasm => "not-wasm",
            Self::CoreModule => "core-module",
            Self::Malformed { .. } => "malformed",
            Self::ForbiddenImport { .. } => "forbidden-import",
            Self::WorldMismatch { .. } => "world-mismatch",
            Self::Compile { .. } => "compile",
            Self::NotLoaded(_) => "not-loaded",
            Self::Instantiate { .. } => "instantiate",
            Self::FuelExhausted { .. } => "fuel",
            Self::MemoryLimit { .. } => "memory",
            Self::Timeout { .. } => "timeout",
            Self::Panicked { .. } => "panic",
            Self::Trap { .. } => "trap",
            Self::TooManyEvents { .. } => "too-many-events",
            Self::OutputTooLarge { .. } => "output-too-large",
            Self::InvalidOutput(_) => "invalid-output",
            Self::ApplyFailed(_) => "apply-failed",
            Self::ArtifactStore { .. } => "artifact-store",
        }
    }

    /// Whether the component was refused at load time (bad upload, not a host fault).
    pub fn is_rejected_component(&self) -> bool {
        matches!(
            self,
            Self::NotWasm
                | Self::CoreModule
                | Self::Malformed { .. }
                | Self::ForbiddenImport { .. }
                | Self::WorldMismatch { .. }
                | Self::Compile { .. }
        )
    }

    /// A copy of a refusal of the component's bytes (the kinds [`Self::is_rejected_component`]
    /// accepts), to answer the same bytes with again; `None` for every other error.
    fn rejection_copy(&self) -> Option<Self> {
        Some(match self {
            Self::NotWasm => Self::NotWasm,
            Self::CoreModule => Self::CoreModule,
            Self::Malformed { hash, reason } => Self::Malformed {
                hash: *hash,
                reason: reason.clone(),
            },
            Self::ForbiddenImport {
                hash,
                import,
                reason,
            } => Self::ForbiddenImport {
                hash: *hash,
                import: import.clone(),
                reason: reason.clone(),
            },
            Self::WorldMismatch {
                hash,
                export,
                reason,
            } => Self::WorldMismatch {
                hash: *hash,
                export: export.clone(),
                reason: reason.clone(),
            },
            Self::Compile { hash, reason } => Self::Compile {
                hash: *hash,
                reason: reason.clone(),
            },
            _ => return None,
        })
    }

    /// Whether a per-call limit was breached (fuel, memory, time, events, output size).
    pub fn is_limit_breach(&self) -> bool {
        matches!(
            self,
            Self::FuelExhausted { .. }
                | Self::MemoryLimit { .. }
                | Self::Timeout { .. }
                | Self::TooManyEvents { .. }
                | Self::OutputTooLarge { .. }
        )
    }
}

/// Result alias for this module.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The checks [`Runtime::load`] makes before compiling, on their own: `bytes` are wasm, a
/// well-formed component, importing only the WASI 0.2 interfaces the host links, exporting world
/// `aggregate` with the contract's types. Reads the bytes once; compiles nothing (milliseconds
/// for a 12 MB component). Returns the component's hash.
///
/// # Errors
///
/// [`RuntimeError::NotWasm`], [`RuntimeError::CoreModule`], [`RuntimeError::Malformed`],
/// [`RuntimeError::ForbiddenImport`] naming the import, [`RuntimeError::WorldMismatch`] naming
/// the export.
pub fn check_component(bytes: &[u8]) -> Result<ComponentHash> {
    let hash = ComponentHash::of(bytes);
    policy::check(bytes, hash)?;
    Ok(hash)
}

/// What `decide` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The command is accepted; these events happened (possibly none).
    Accepted(Vec<NewEvent>),
    /// A business rule refused the command.
    Rejected(String),
    /// The command is malformed.
    Invalid(String),
}

/// Counters that tests and metrics read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled from wasm (cache misses).
    pub compiles: u64,
    /// Components loaded from a precompiled artifact on disk.
    pub artifact_loads: u64,
    /// Artifacts found on disk but refused (stale, foreign, corrupted) and recompiled.
    pub artifact_rejects: u64,
    /// Instances created.
    pub instantiations: u64,
    /// Calls served by a warm pooled instance.
    pub pool_hits: u64,
    /// Instances discarded because a call failed, was refused, or breached a limit.
    pub discards: u64,
    /// Compiles that failed (the component passed the checks made before compiling).
    pub compile_failures: u64,
    /// Loads refused at once because the same bytes were refused before (nothing read or
    /// compiled).
    pub refusals_remembered: u64,
    /// The most compiles that ran at the same time (never above
    /// [`RuntimeConfig::max_concurrent_compiles`]).
    pub peak_concurrent_compiles: u64,
}

#[derive(Default)]
struct Counters {
    compiles: AtomicU64,
    artifact_loads: AtomicU64,
    artifact_rejects: AtomicU64,
    instantiations: AtomicU64,
    pool_hits: AtomicU64,
    discards: AtomicU64,
    compile_failures: AtomicU64,
    refusals_remembered: AtomicU64,
    peak_concurrent_compiles: AtomicU64,
}

/// Counting semaphore for compiles (they run on blocking threads, so a blocking wait is right).
struct CompileSlots {
    running: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl CompileSlots {
    fn new(max: usize) -> Self {
        Self {
            running: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }

    /// Wait for a free slot; returns it and how many compiles run now (including this one).
    fn acquire(&self) -> (CompileSlot<'_>, usize) {
        let mut running = self.running.lock();
        while *running >= self.max {
            self.freed.wait(&mut running);
        }
        *running += 1;
        (CompileSlot(self), *running)
    }
}

struct CompileSlot<'a>(&'a CompileSlots);

impl Drop for CompileSlot<'_> {
    fn drop(&mut self) {
        *self.0.running.lock() -= 1;
        self.0.freed.notify_one();
    }
}

struct Loaded {
    pre: AggregatePre<HostState>,
}

/// How a component got into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// It was already loaded in this process.
    Memory,
    /// From a precompiled artifact on disk.
    Artifact,
    /// Compiled now.
    Compiled,
}

/// The component runtime. Create one per process and share it (`Arc`).
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    config: RuntimeConfig,
    artifacts: Option<ArtifactStore>,
    components: RwLock<HashMap<ComponentHash, Arc<Loaded>>>,
    pool: Mutex<Pool>,
    counters: Counters,
    compile_slots: CompileSlots,
    refusals: Mutex<Refusals>,
    next_instance: AtomicU64,
    stop_ticker: Arc<AtomicBool>,
}

impl Runtime {
    /// Build the engine (component model, fuel, epoch interruption, pooling allocator), link WASI
    /// deny-all, and start the epoch ticker.
    ///
    /// # Errors
    ///
    /// When the engine cannot be created or the artifact directory cannot be created.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut c = Config::new();
        c.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true);
        if config.pooling {
            let slots = config.max_warm_instances as u32 + 128;
            let mut p = PoolingAllocationConfig::default();
            p.total_component_instances(slots)
                .total_core_instances(slots * 8)
                .total_memories(slots * 2)
                .total_tables(slots * 4)
                .max_memory_size(config.max_memory_bytes)
                .max_memories_per_component(8)
                .max_tables_per_component(16)
                .max_core_instances_per_component(64)
                .max_component_instance_size(1 << 20)
                .max_core_instance_size(1 << 20)
                .table_elements(100_000);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
        }
        let engine = Engine::new(&c)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        let artifacts = match &config.artifact_dir {
            Some(dir) => Some(ArtifactStore::open(dir, &engine).map_err(|source| {
                RuntimeError::ArtifactStore {
                    path: dir.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("epoch-ticker".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })?;
        }
        Ok(Self {
            engine,
            linker,
            pool: Mutex::new(Pool::new(config.max_warm_instances)),
            compile_slots: CompileSlots::new(config.max_concurrent_compiles),
            refusals: Mutex::new(Refusals::new(
                config.remembered_refusals,
                config.refusal_ttl,
            )),
            config,
            artifacts,
            components: RwLock::default(),
            counters: Counters::default(),
            next_instance: AtomicU64::new(1),
            stop_ticker,
        })
    }

    /// The engine configuration this runtime was built with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> RuntimeStats {
        let c = &self.counters;
        RuntimeStats {
            compiles: c.compiles.load(Ordering::Relaxed),
            artifact_loads: c.artifact_loads.load(Ordering::Relaxed),
            artifact_rejects: c.artifact_rejects.load(Ordering::Relaxed),
            instantiations: c.instantiations.load(Ordering::Relaxed),
            pool_hits: c.pool_hits.load(Ordering::Relaxed),
            discards: c.discards.load(Ordering::Relaxed),
            compile_failures: c.compile_failures.load(Ordering::Relaxed),
            refusals_remembered: c.refusals_remembered.load(Ordering::Relaxed),
            peak_concurrent_compiles: c.peak_concurrent_compiles.load(Ordering::Relaxed),
        }
    }

    /// Warm instances currently pooled.
    pub fn warm_instances(&self) -> usize {
        self.pool.lock().len()
    }

    /// Whether a component is loaded.
    pub fn is_loaded(&self, hash: &ComponentHash) -> bool {
        self.components.read().contains_key(hash)
    }

    /// Remove the precompiled artifacts on disk (components compiled in memory stay; the next
    /// start compiles them again). Returns how many were removed.
    ///
    /// # Errors
    ///
    /// The I/O error of the artifact directory.
    pub fn clear_artifacts(&self) -> std::io::Result<usize> {
        match &self.artifacts {
            Some(a) => a.clear(),
            None => Ok(0),
        }
    }

    /// Where the precompiled artifact of a component lives (if a directory is configured).
    pub fn artifact_path(&self, hash: &ComponentHash) -> Option<PathBuf> {
        self.artifacts.as_ref().map(|a| a.path(hash))
    }

    /// Validate and load a component: the precompiled artifact when a valid one exists (it was
    /// compiled by a load that passed every check), else — first, without compiling anything —
    /// is it wasm, a well-formed component, importing only WASI 0.2, exporting world `aggregate`
    /// with the contract's types (see [`check_component`]), and only then a compile (at most
    /// [`RuntimeConfig::max_concurrent_compiles`] at once) that writes the artifact. Either way
    /// wasmtime's linker and type check have the last word.
    ///
    /// A refusal is remembered by hash for [`RuntimeConfig::refusal_ttl`]: loading the same bytes
    /// again answers the same error at once.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::NotWasm`], [`RuntimeError::CoreModule`], [`RuntimeError::Malformed`],
    /// [`RuntimeError::ForbiddenImport`], [`RuntimeError::WorldMismatch`],
    /// [`RuntimeError::Compile`]. Failing to write the artifact is logged, not an error.
    pub fn load(&self, bytes: &[u8]) -> Result<(ComponentHash, LoadSource)> {
        let hash = ComponentHash::of(bytes);
        if self.is_loaded(&hash) {
            return Ok((hash, LoadSource::Memory));
        }
        let remembered = self.refusals.lock().get(&hash, Instant::now());
        if let Some(e) = remembered {
            self.counters
                .refusals_remembered
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(component = %hash, kind = e.kind(), "refused again (remembered)");
            return Err(e);
        }
        let loaded = self.load_new(hash, bytes);
        if let Err(e) = &loaded {
            if let Some(copy) = e.rejection_copy() {
                self.refusals.lock().insert(hash, copy, Instant::now());
            }
        }
        loaded
    }

    fn load_new(&self, hash: ComponentHash, bytes: &[u8]) -> Result<(ComponentHash, LoadSource)> {
        let (component, source) = match self.artifacts.as_ref().map(|a| a.get(&self.engine, &hash))
        {
            // Compiled by a load that passed the checks; the linker and the type check below
            // still hold it to the imports the host links and the contract's exports.
            Some(Lookup::Loaded(c)) => {
                self.counters.artifact_loads.fetch_add(1, Ordering::Relaxed);
                (c, LoadSource::Artifact)
            }
            found => {
                if let Some(Lookup::Rejected(why)) = found {
                    self.counters
                        .artifact_rejects
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(component = %hash, reason = %why, "precompiled artifact refused; recompiling");
                }
                let started = Instant::now();
                policy::check(bytes, hash).inspect_err(|e| {
                    tracing::info!(
                        component = %hash,
                        kind = e.kind(),
                        ms = started.elapsed().as_millis() as u64,
                        "refused before compiling"
                    );
                })?;
                (self.compile(&hash, bytes)?, LoadSource::Compiled)
            }
        };
        // The checks above make this a formality; wasmtime's own type check stays the last word.
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(AggregatePre::new)
            .map_err(|e| RuntimeError::WorldMismatch {
                hash,
                export: None,
                reason: truncate(format!("{e:#}")),
            })?;
        if source == LoadSource::Compiled {
            if let Some(a) = &self.artifacts {
                if let Err(e) = a.insert(&hash, &component) {
                    tracing::warn!(component = %hash, error = %e, "could not write precompiled artifact");
                }
            }
        }
        self.components
            .write()
            .insert(hash, Arc::new(Loaded { pre }));
        Ok((hash, source))
    }

    fn compile(&self, hash: &ComponentHash, bytes: &[u8]) -> Result<Component> {
        let queued = Instant::now();
        let (_slot, running) = self.compile_slots.acquire();
        self.counters
            .peak_concurrent_compiles
            .fetch_max(running as u64, Ordering::Relaxed);
        let started = Instant::now();
        let c = Component::from_binary(&self.engine, bytes).map_err(|e| {
            self.counters
                .compile_failures
                .fetch_add(1, Ordering::Relaxed);
            RuntimeError::Compile {
                hash: *hash,
                reason: truncate(format!("{e:#}")),
            }
        })?;
        self.counters.compiles.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            component = %hash,
            ms = started.elapsed().as_millis() as u64,
            waited_ms = started.duration_since(queued).as_millis() as u64,
            "compiled component"
        );
        Ok(c)
    }

    /// Forget a component and drop its warm instances (after it was replaced).
    pub fn unload(&self, hash: &ComponentHash) {
        self.components.write().remove(hash);
        let retired = self.pool.lock().retire(hash);
        drop(retired);
    }

    /// Run `f` with an instance for `key`: a warm one from the pool when the isolation allows,
    /// else a fresh one. Afterwards the instance goes back to the pool only if every call
    /// succeeded (an accepted decision, a good state), it has served fewer than
    /// `limits.max_calls_per_instance` calls, and the isolation is pooled. Any error, trap, limit
    /// breach or refused command discards it.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::NotLoaded`], [`RuntimeError::Instantiate`], or whatever `f` returns.
    pub fn with_instance<R>(
        &self,
        key: &InstanceKey,
        limits: &Limits,
        isolation: Isolation,
        f: impl FnOnce(&mut Guest<'_>) -> Result<R>,
    ) -> Result<R> {
        let pooled = isolation == Isolation::Pooled;
        let warm = if pooled {
            self.pool.lock().take(key)
        } else {
            None
        };
        let mut inst = match warm {
            Some(i) => {
                self.counters.pool_hits.fetch_add(1, Ordering::Relaxed);
                i
            }
            None => self.instantiate(key, limits)?,
        };
        let mut guest = Guest {
            inst: &mut inst,
            limits,
            clean: true,
            fuel_used: 0,
            hash: key.component,
            epoch_tick: self.config.epoch_tick,
        };
        let out = f(&mut guest);
        let clean = guest.clean && out.is_ok();
        if !clean {
            self.counters.discards.fetch_add(1, Ordering::Relaxed);
        } else if pooled
            && inst.calls < limits.max_calls_per_instance
            && self.is_loaded(&key.component)
        {
            let evicted = self.pool.lock().put(key.clone(), inst);
            drop(evicted);
        }
        out
    }

    fn instantiate(&self, key: &InstanceKey, limits: &Limits) -> Result<Instance> {
        let loaded = self
            .components
            .read()
            .get(&key.component)
            .cloned()
            .ok_or(RuntimeError::NotLoaded(key.component))?;
        let mut attempt = 0;
        loop {
            let mut store = Store::new(
                &self.engine,
                HostState::new(limits.max_memory_bytes, limits.max_stderr_bytes),
            );
            store.limiter(|s| &mut s.limiter);
            arm(&mut store, limits, self.config.epoch_tick);
            match loaded.pre.instantiate(&mut store) {
                Ok(bindings) => {
                    self.counters.instantiations.fetch_add(1, Ordering::Relaxed);
                    return Ok(Instance {
                        id: self.next_instance.fetch_add(1, Ordering::Relaxed),
                        tenant: key.tenant.clone(),
                        store,
                        bindings,
                        calls: 0,
                    });
                }
                Err(e) => {
                    // The pooling allocator may be out of slots while warm instances hold them:
                    // evict the least recently used one and try once more.
                    let freed = if attempt == 0 {
                        self.pool.lock().evict_lru()
                    } else {
                        None
                    };
                    if freed.is_some() {
                        attempt += 1;
                        drop(freed);
                        continue;
                    }
                    let (stderr, _) = store.data().stderr.take();
                    let mut g = GuestFault {
                        store: &mut store,
                        limits,
                    };
                    return Err(match g.classify(e, stderr) {
                        RuntimeError::Trap { trap, stderr } => RuntimeError::Instantiate {
                            hash: key.component,
                            reason: if stderr.is_empty() {
                                trap
                            } else {
                                format!("{trap} (stderr: {stderr})")
                            },
                        },
                        other => other,
                    });
                }
            }
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

fn arm(store: &mut Store<HostState>, limits: &Limits, epoch_tick: Duration) {
    // set_fuel only fails when fuel is not enabled, and it always is.
    store.set_fuel(limits.fuel).expect("fuel is enabled");
    let tick = epoch_tick.as_nanos().max(1);
    let ticks = (limits.timeout().as_nanos().div_ceil(tick) as u64).max(1) + 1;
    store.set_epoch_deadline(ticks);
    let data = store.data_mut();
    data.limiter.max = limits.max_memory_bytes;
    data.limiter.hit = false;
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

struct GuestFault<'a> {
    store: &'a mut Store<HostState>,
    limits: &'a Limits,
}

impl GuestFault<'_> {
    fn classify(&mut self, e: wasmtime::Error, stderr: String) -> RuntimeError {
        if self.store.data().limiter.hit {
            return RuntimeError::MemoryLimit {
                limit: self.limits.max_memory_bytes,
            };
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => RuntimeError::FuelExhausted {
                limit: self.limits.fuel,
            },
            Some(Trap::Interrupt) => RuntimeError::Timeout {
                limit_ms: self.limits.timeout_ms,
            },
            _ => match stderr.find("panicked at") {
                Some(at) => RuntimeError::Panicked {
                    message: truncate(stderr[at..].trim().to_string()),
                },
                None => RuntimeError::Trap {
                    trap: truncate(format!("{e:#}")),
                    stderr: truncate(stderr),
                },
            },
        }
    }
}

/// An instance lent to one [`Runtime::with_instance`] closure.
pub struct Guest<'a> {
    inst: &'a mut Instance,
    limits: &'a Limits,
    /// Stays true while every call succeeded; decides whether the instance is reused.
    clean: bool,
    fuel_used: u64,
    hash: ComponentHash,
    epoch_tick: Duration,
}

impl Guest<'_> {
    /// A number unique to this instance within the process (for tests and logs).
    pub fn instance_id(&self) -> u64 {
        self.inst.id
    }

    /// Fuel burned by the last call.
    pub fn fuel_used(&self) -> u64 {
        self.fuel_used
    }

    /// Calls this instance has served, including the current one.
    pub fn calls(&self) -> u64 {
        self.inst.calls
    }

    fn begin(&mut self, now_ns: u64, seed: u64) {
        self.inst.calls += 1;
        arm(&mut self.inst.store, self.limits, self.epoch_tick);
        self.inst.store.data().determinism.set(now_ns, seed);
    }

    /// Log stderr, record fuel, and turn a wasmtime error into a typed one.
    fn finish<T>(&mut self, r: wasmtime::Result<T>) -> Result<T> {
        self.fuel_used = self
            .limits
            .fuel
            .saturating_sub(self.inst.store.get_fuel().unwrap_or(0));
        let (stderr, dropped) = self.inst.store.data().stderr.take();
        if !stderr.is_empty() {
            tracing::info!(target: "guest", component = %self.hash, tenant = %self.inst.tenant, dropped, "{}", stderr.trim_end());
        }
        match r {
            Ok(v) if !self.inst.store.data().limiter.hit => Ok(v),
            Ok(_) => {
                self.clean = false;
                Err(RuntimeError::MemoryLimit {
                    limit: self.limits.max_memory_bytes,
                })
            }
            Err(e) => {
                self.clean = false;
                Err(GuestFault {
                    store: &mut self.inst.store,
                    limits: self.limits,
                }
                .classify(e, stderr))
            }
        }
    }

    fn fail<T>(&mut self, e: RuntimeError) -> Result<T> {
        self.clean = false;
        Err(e)
    }

    fn check_state(&mut self, state: String) -> Result<Json> {
        if state.len() > self.limits.max_output_bytes {
            return self.fail(RuntimeError::OutputTooLarge {
                bytes: state.len(),
                limit: self.limits.max_output_bytes,
            });
        }
        match Json::parse(state) {
            Ok(j) => Ok(j),
            Err(e) => self.fail(RuntimeError::InvalidOutput(format!(
                "state is not JSON: {e}"
            ))),
        }
    }

    /// The initial state.
    ///
    /// # Errors
    ///
    /// Any limit breach or trap; [`RuntimeError::InvalidOutput`] when it is not JSON.
    pub fn init(&mut self) -> Result<Json> {
        self.begin(0, 0);
        let r = self.inst.bindings.call_init(&mut self.inst.store);
        let state = self.finish(r)?;
        self.check_state(state)
    }

    /// Ask the aggregate what `command` produces in `state`.
    ///
    /// A rejection or an invalid command is a [`Decision`], not an error, but it still retires the
    /// instance (a guest that ran out of memory may report it as an ordinary error).
    ///
    /// # Errors
    ///
    /// Any limit breach, trap, or output that breaks the contract (too many events, too many bytes,
    /// a payload that is not JSON, an empty event type).
    pub fn decide(&mut self, state: &Json, command: &Command) -> Result<Decision> {
        let now = command
            .received_at
            .timestamp_nanos_opt()
            .unwrap_or(0)
            .max(0) as u64;
        let seed = u64::from_le_bytes(
            command.command_id.as_uuid().as_bytes()[8..]
                .try_into()
                .expect("8 bytes"),
        );
        self.begin(now, seed);
        let wit = WitCommand {
            command_id: command.command_id.to_string(),
            command_type: command.command_type.clone(),
            payload: command.payload.as_str().to_string(),
            tenant_id: command.target.tenant.as_str().to_string(),
            aggregate_id: command.target.aggregate_id.to_string(),
            metadata: metadata_pairs(command),
        };
        let r = self
            .inst
            .bindings
            .call_decide(&mut self.inst.store, state.as_str(), &wit);
        match self.finish(r)? {
            Ok(events) => self.check_events(events).map(Decision::Accepted),
            Err(WitDecideError::Rejected(m)) => {
                self.clean = false;
                Ok(Decision::Rejected(truncate(m)))
            }
            Err(WitDecideError::Invalid(m)) => {
                self.clean = false;
                Ok(Decision::Invalid(truncate(m)))
            }
        }
    }

    fn check_events(&mut self, events: Vec<WitEvent>) -> Result<Vec<NewEvent>> {
        let limit = self.limits.max_events;
        if events.len() > limit {
            return self.fail(RuntimeError::TooManyEvents {
                count: events.len(),
                limit,
            });
        }
        let bytes: usize = events
            .iter()
            .map(|e| e.event_type.len() + e.payload.len())
            .sum();
        if bytes > self.limits.max_output_bytes {
            return self.fail(RuntimeError::OutputTooLarge {
                bytes,
                limit: self.limits.max_output_bytes,
            });
        }
        let mut out = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            if let Some(why) = bad_event_type(&e.event_type) {
                return self.fail(RuntimeError::InvalidOutput(format!(
                    "event {i}: event type {why}"
                )));
            }
            if e.schema_version == 0 {
                return self.fail(RuntimeError::InvalidOutput(format!(
                    "event {i} (`{}`): schema version must start at 1",
                    e.event_type
                )));
            }
            let payload = match Json::parse(e.payload) {
                Ok(p) => p,
                Err(err) => {
                    return self.fail(RuntimeError::InvalidOutput(format!(
                        "event {i} (`{}`): payload is not JSON: {err}",
                        e.event_type
                    )));
                }
            };
            out.push(NewEvent {
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload,
            });
        }
        Ok(out)
    }

    /// Fold `events` (oldest first) into `state` in one guest call.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::ApplyFailed`] when the guest refuses, any limit breach or trap, or a state
    /// that is not JSON or too large.
    pub fn apply<'e>(
        &mut self,
        state: &Json,
        events: impl IntoIterator<Item = EventData<'e>>,
    ) -> Result<Json> {
        let wit: Vec<WitEvent> = events
            .into_iter()
            .map(|e| WitEvent {
                event_type: e.event_type.to_string(),
                schema_version: e.schema_version,
                payload: e.payload.to_string(),
            })
            .collect();
        self.begin(0, 0);
        let r = self
            .inst
            .bindings
            .call_apply(&mut self.inst.store, state.as_str(), &wit);
        match self.finish(r)? {
            Ok(s) => self.check_state(s),
            Err(m) => self.fail(RuntimeError::ApplyFailed(truncate(m))),
        }
    }
}

fn bad_event_type(t: &str) -> Option<&'static str> {
    if t.is_empty() {
        Some("is empty")
    } else if t.len() > 128 {
        Some("is longer than 128 bytes")
    } else if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("contains whitespace or control characters")
    } else {
        None
    }
}

fn metadata_pairs(command: &Command) -> Vec<(String, String)> {
    let m = &command.metadata;
    [
        ("correlation-id", &m.correlation_id),
        ("traceparent", &m.traceparent),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
    .collect()
}
