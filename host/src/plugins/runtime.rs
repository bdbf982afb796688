//! [`PluginRuntime`] (the engine, its epoch ticker, linkers per world, the caches) and
//! [`Plugin`] (one loaded component, with a typed method per world).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store,
    Trap,
};

use super::bindings::{self, builder, placement, probe, strategy, webhook};
use super::build_host::BuildHostCap;
use super::endpoint::EndpointCap;
use super::error::PluginError;
use super::host::{truncate, HostState};
use super::inspect::Contract;
use super::types::*;
use super::{cache, inspect, v0_1, v0_2, validate};

/// Resource limits of plugin calls. Each one stops an attack or an accident: the deadline an
/// infinite loop, the memory cap an allocation bomb, the plugin-state cap a strategy growing
/// its persisted state without bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Deadline of a `plan`, `place` or `handle` call (default 100 ms).
    pub call_deadline: Duration,
    /// Added to a probe's own timeout to make the deadline of a `check` call (default 1 s).
    pub probe_margin: Duration,
    /// Deadline of a `build` call, host capabilities included (default 30 min).
    pub build_deadline: Duration,
    /// Linear memory of one call's instance, all memories summed (default 64 MiB).
    pub memory_bytes: usize,
    /// Largest `plugin-state` a strategy may return (default 1 MiB).
    pub max_plugin_state: usize,
    /// Plugin calls running at the same time (the pooling allocator's instance slots;
    /// default 64). A call beyond it fails as a trap without running.
    pub max_concurrent_calls: u32,
}

impl Default for RuntimeLimits {
    fn default() -> Self {
        RuntimeLimits {
            call_deadline: Duration::from_millis(100),
            probe_margin: Duration::from_secs(1),
            build_deadline: Duration::from_secs(30 * 60),
            memory_bytes: 64 << 20,
            max_plugin_state: 1 << 20,
            max_concurrent_calls: 64,
        }
    }
}

/// Where a plugin's bytes came from: named in errors and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PluginOrigin {
    /// Embedded in the binary (see [`builtin`](super::builtin)).
    Builtin(String),
    /// A `.wasm` file.
    Path(PathBuf),
}

impl PluginOrigin {
    /// The plugin's short name: the built-in's name or the file's stem.
    pub fn name(&self) -> String {
        match self {
            PluginOrigin::Builtin(name) => name.clone(),
            PluginOrigin::Path(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
        }
    }
}

impl fmt::Display for PluginOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginOrigin::Builtin(name) => write!(f, "builtin:{name}"),
            PluginOrigin::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Counters of the runtime's caches, for tests, benchmarks and `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    /// Components compiled by cranelift.
    pub compiled: u64,
    /// Components deserialized from the disk cache.
    pub disk_hits: u64,
    /// Loads answered from the in-memory map.
    pub memory_hits: u64,
}

/// Bytes of a pooled slot's memory (and tables) kept resident between calls: more than a
/// typical Rust plugin touches, so its calls take no page faults.
const KEEP_RESIDENT: usize = 4 << 20;

/// Period of the epoch ticker: deadlines are accurate to about one tick.
const TICK: Duration = Duration::from_millis(1);

/// The plugin runtime: one wasmtime engine shared by every plugin. Cheap to clone; the epoch
/// ticker thread stops when the last clone (and the last [`Plugin`]) is dropped.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    limits: RuntimeLimits,
    cache_dir: Option<PathBuf>,
    linkers: Linkers,
    loaded: Mutex<HashMap<[u8; 32], Arc<Loaded>>>,
    compiled: AtomicU64,
    disk_hits: AtomicU64,
    memory_hits: AtomicU64,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// One linker per world, holding exactly the host interfaces that world imports, under the
/// names of every supported contract version (`@0.1.0`, `@0.2.0` and `@0.3.0`).
struct Linkers {
    strategy: Linker<HostState>,
    placement: Linker<HostState>,
    probe: Linker<HostState>,
    webhook: Linker<HostState>,
    builder: Linker<HostState>,
}

impl Linkers {
    fn new(engine: &Engine) -> wasmtime::Result<Self> {
        let mut strategy = Linker::new(engine);
        strategy::Strategy::add_to_linker::<_, HasSelf<HostState>>(&mut strategy, |s| s)?;
        v0_1::strategy::Strategy::add_to_linker::<_, HasSelf<HostState>>(&mut strategy, |s| s)?;
        v0_2::strategy::Strategy::add_to_linker::<_, HasSelf<HostState>>(&mut strategy, |s| s)?;
        let mut placement = Linker::new(engine);
        placement::Placement::add_to_linker::<_, HasSelf<HostState>>(&mut placement, |s| s)?;
        v0_1::placement::Placement::add_to_linker::<_, HasSelf<HostState>>(&mut placement, |s| s)?;
        v0_2::placement::Placement::add_to_linker::<_, HasSelf<HostState>>(&mut placement, |s| s)?;
        let mut probe = Linker::new(engine);
        probe::Probe::add_to_linker::<_, HasSelf<HostState>>(&mut probe, |s| s)?;
        v0_1::probe::Probe::add_to_linker::<_, HasSelf<HostState>>(&mut probe, |s| s)?;
        v0_2::probe::Probe::add_to_linker::<_, HasSelf<HostState>>(&mut probe, |s| s)?;
        let mut webhook = Linker::new(engine);
        webhook::Webhook::add_to_linker::<_, HasSelf<HostState>>(&mut webhook, |s| s)?;
        v0_1::webhook::Webhook::add_to_linker::<_, HasSelf<HostState>>(&mut webhook, |s| s)?;
        v0_2::webhook::Webhook::add_to_linker::<_, HasSelf<HostState>>(&mut webhook, |s| s)?;
        let mut builder = Linker::new(engine);
        builder::Builder::add_to_linker::<_, HasSelf<HostState>>(&mut builder, |s| s)?;
        v0_1::builder::Builder::add_to_linker::<_, HasSelf<HostState>>(&mut builder, |s| s)?;
        v0_2::builder::Builder::add_to_linker::<_, HasSelf<HostState>>(&mut builder, |s| s)?;
        Ok(Linkers {
            strategy,
            placement,
            probe,
            webhook,
            builder,
        })
    }

    fn get(&self, world: World) -> &Linker<HostState> {
        match world {
            World::Strategy => &self.strategy,
            World::Placement => &self.placement,
            World::Probe => &self.probe,
            World::Webhook => &self.webhook,
            World::Builder => &self.builder,
        }
    }
}

/// A compiled component, pre-linked against its world.
struct Loaded {
    world: World,
    /// The contract version it was built against (see `v0_1` for how older ones are served).
    contract: Contract,
    pre: Pre,
    sha256: [u8; 32],
}

/// The typed entry point of a loaded component. Worlds whose records and exports did not
/// change since 0.1.0 are called through the live bindings whatever the component's version;
/// `placement` has one variant per records' shape, `strategy` one per exports.
enum Pre {
    Strategy(strategy::StrategyPre<HostState>),
    /// A 0.1.x or 0.2.x strategy: `plan` only (no `check-params`).
    StrategyPlanOnly(PlanOnly),
    Placement(placement::PlacementPre<HostState>),
    PlacementV0_1(v0_1::placement::PlacementPre<HostState>),
    Probe(probe::ProbePre<HostState>),
    Webhook(webhook::WebhookPre<HostState>),
    Builder(builder::BuilderPre<HostState>),
}

pub(crate) fn engine_config(limits: &RuntimeLimits, pooling: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // Explicit bounds checks instead of guard pages and signal handlers. A call instantiates
    // a fresh instance into a pooled slot; with guard pages, each reuse of a slot whose
    // memory grew during the previous call costs an `mprotect` and a TLB shootdown across
    // cores (measured: 27 µs per call instead of 9 µs). Plugin calls are short step
    // functions, so the per-call cost dominates the bounds checks' cost.
    config.signals_based_traps(false);
    config.memory_guard_size(0);
    if pooling {
        let n = limits.max_concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::default();
        // A Rust component holds one memory and a handful of core instances and tables
        // (the main module plus wit-component's shims); the totals leave room for that.
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 8)
            .max_memories_per_component(2)
            .max_memory_size(limits.memory_bytes);
        // Reset a used slot by rewriting only its dirty pages (found with the PAGEMAP_SCAN
        // ioctl, Linux ≥ 6.7) instead of `madvise`, which faults every page back in on the
        // next call. Without the ioctl, `keep_resident` would `memset` that many bytes
        // blindly, so it stays 0 there.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            pool.pagemap_scan(Enabled::Yes)
                .linear_memory_keep_resident(KEEP_RESIDENT.min(limits.memory_bytes))
                .table_keep_resident(KEEP_RESIDENT);
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

impl PluginRuntime {
    /// A runtime with `limits`, caching precompiled components in `cache_dir` (created with
    /// mode 0700; see [`cache_dir`](super::cache_dir)); `None` compiles every new component.
    pub fn new(limits: RuntimeLimits, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let engine_err = |e: wasmtime::Error| PluginError::Engine {
            reason: format!("{e:#}"),
        };
        let engine = Engine::new(&engine_config(&limits, true)).map_err(engine_err)?;
        if let Some(dir) = &cache_dir {
            cache::ensure_dir(dir)?;
        }
        let linkers = Linkers::new(&engine).map_err(engine_err)?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let stop = stop_ticker.clone();
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("orca-plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| PluginError::Engine {
                reason: format!("spawning the epoch ticker: {e}"),
            })?;
        Ok(PluginRuntime {
            inner: Arc::new(Inner {
                engine,
                limits,
                cache_dir,
                linkers,
                loaded: Mutex::new(HashMap::new()),
                compiled: AtomicU64::new(0),
                disk_hits: AtomicU64::new(0),
                memory_hits: AtomicU64::new(0),
                stop_ticker,
            }),
        })
    }

    /// The limits every call of this runtime runs under.
    pub fn limits(&self) -> &RuntimeLimits {
        &self.inner.limits
    }

    /// Cache counters.
    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            compiled: self.inner.compiled.load(Ordering::Relaxed),
            disk_hits: self.inner.disk_hits.load(Ordering::Relaxed),
            memory_hits: self.inner.memory_hits.load(Ordering::Relaxed),
        }
    }

    /// Loads a component: checks it is one, finds its world from its exports, compiles it
    /// (or deserializes it from the disk cache) and pre-links it against that world. Imports
    /// the world does not grant (e.g. `wasi:*` of a `wasm32-wasip2` std guest) are linked to
    /// functions that trap when called. The same bytes load once per runtime.
    pub fn load(&self, bytes: &[u8], origin: PluginOrigin) -> Result<Plugin, PluginError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let hit = self
            .inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&sha256)
            .cloned();
        let loaded = match hit {
            Some(loaded) => {
                self.inner.memory_hits.fetch_add(1, Ordering::Relaxed);
                loaded
            }
            None => {
                let loaded = Arc::new(self.load_new(bytes, sha256, &origin)?);
                let mut map = self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner());
                map.entry(sha256).or_insert(loaded).clone()
            }
        };
        Ok(Plugin {
            name: origin.name().into(),
            origin,
            loaded,
            runtime: self.inner.clone(),
        })
    }

    fn load_new(
        &self,
        bytes: &[u8],
        sha256: [u8; 32],
        origin: &PluginOrigin,
    ) -> Result<Loaded, PluginError> {
        let invalid = |reason: String| PluginError::Invalid {
            origin: origin.to_string(),
            reason,
        };
        let component = self.component(bytes, &sha256, origin)?;
        let world = inspect::world_of(&self.inner.engine, &component).map_err(invalid)?;
        let named = inspect::contract_of(&self.inner.engine, &component).map_err(invalid)?;
        let mut linker = self.inner.linkers.get(world).clone();
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| invalid(format!("linking imports: {e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("linking against the {world} world: {e:#}")))?;
        let typed =
            |e: wasmtime::Error| invalid(format!("exports do not match the {world} world: {e:#}"));
        let mut contract = named.unwrap_or(Contract::V0_3);
        let pre = match world {
            World::Strategy => match named {
                Some(Contract::V0_1 | Contract::V0_2) => {
                    Pre::StrategyPlanOnly(PlanOnly::new(pre).map_err(typed)?)
                }
                Some(Contract::V0_3) => {
                    Pre::Strategy(strategy::StrategyPre::new(pre).map_err(typed)?)
                }
                // A component naming no version: whether it exports `check-params` decides.
                None => match strategy::StrategyPre::new(pre.clone()) {
                    Ok(p) => Pre::Strategy(p),
                    Err(_) => {
                        contract = Contract::V0_2;
                        Pre::StrategyPlanOnly(PlanOnly::new(pre).map_err(typed)?)
                    }
                },
            },
            World::Placement => match named {
                Some(Contract::V0_1) => {
                    Pre::PlacementV0_1(v0_1::placement::PlacementPre::new(pre).map_err(typed)?)
                }
                Some(Contract::V0_2 | Contract::V0_3) => {
                    Pre::Placement(placement::PlacementPre::new(pre).map_err(typed)?)
                }
                // A component naming no version: its `place` signature decides.
                None => match placement::PlacementPre::new(pre.clone()) {
                    Ok(p) => Pre::Placement(p),
                    Err(_) => {
                        contract = Contract::V0_1;
                        Pre::PlacementV0_1(v0_1::placement::PlacementPre::new(pre).map_err(typed)?)
                    }
                },
            },
            World::Probe => Pre::Probe(probe::ProbePre::new(pre).map_err(typed)?),
            World::Webhook => Pre::Webhook(webhook::WebhookPre::new(pre).map_err(typed)?),
            World::Builder => Pre::Builder(builder::BuilderPre::new(pre).map_err(typed)?),
        };
        Ok(Loaded {
            world,
            contract,
            pre,
            sha256,
        })
    }

    /// The compiled component: from the disk cache, or compiled and then cached.
    pub(crate) fn component(
        &self,
        bytes: &[u8],
        sha256: &[u8; 32],
        origin: &PluginOrigin,
    ) -> Result<Component, PluginError> {
        inspect::check_header(bytes).map_err(|reason| PluginError::Invalid {
            origin: origin.to_string(),
            reason,
        })?;
        let engine = &self.inner.engine;
        let path = self
            .inner
            .cache_dir
            .as_ref()
            .map(|dir| cache::path(dir, &cache::key(engine, sha256)));
        if let Some(component) = path.as_deref().and_then(|p| cache::read(engine, p)) {
            self.inner.disk_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(component);
        }
        let started = Instant::now();
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Invalid {
            origin: origin.to_string(),
            reason: format!("compiling: {e:#}"),
        })?;
        self.inner.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(plugin = %origin, elapsed = ?started.elapsed(), "compiled plugin");
        if let Some(path) = path {
            // A cache that cannot be written costs a compile next time, not the load.
            if let Err(e) = cache::write(&component, &path) {
                tracing::warn!(plugin = %origin, "{e}");
            }
        }
        Ok(component)
    }

    /// Describes a component (world, WIT package, imports, exports, size, digest), using
    /// this runtime's engine and cache.
    pub fn inspect(&self, bytes: &[u8]) -> Result<inspect::PluginInfo, PluginError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let component =
            self.component(bytes, &sha256, &PluginOrigin::Path("<inspected>".into()))?;
        Ok(inspect::describe(
            &self.inner.engine,
            &component,
            bytes,
            &sha256,
        ))
    }
}

/// A loaded plugin: cheap to clone, callable from any thread, each call in a fresh store.
/// The methods block the calling thread for up to the call's deadline: async callers run
/// them in `spawn_blocking`.
#[derive(Clone)]
pub struct Plugin {
    name: Arc<str>,
    origin: PluginOrigin,
    loaded: Arc<Loaded>,
    runtime: Arc<Inner>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("world", &self.loaded.world)
            .finish()
    }
}

impl Plugin {
    /// The short name used in errors and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn origin(&self) -> &PluginOrigin {
        &self.origin
    }

    /// The world the component implements.
    pub fn world(&self) -> World {
        self.loaded.world
    }

    /// The WIT package release the component was built against and is served as:
    /// `orca:plugin@0.1.0` or `orca:plugin@0.2.0` (the live one, also for a component naming
    /// no version whose exports fit it).
    pub fn package(&self) -> &'static str {
        self.loaded.contract.package()
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn sha256(&self) -> String {
        hex::encode(self.loaded.sha256)
    }

    fn wrong_world(&self, expected: World) -> PluginError {
        PluginError::WrongWorld {
            plugin: self.name.to_string(),
            expected,
            found: self.loaded.world,
        }
    }

    fn invalid_output(&self, reason: String) -> PluginError {
        PluginError::InvalidOutput {
            plugin: self.name.to_string(),
            reason,
        }
    }

    fn failed(&self, reason: String) -> PluginError {
        PluginError::Failed {
            plugin: self.name.to_string(),
            reason: truncate(&reason, validate::MAX_REASON).into(),
        }
    }

    /// Strategy: the next step of a rollout.
    pub fn plan(&self, state: &RolloutState) -> Result<Step, PluginError> {
        let input = bindings::rollout_state(state);
        let deadline = self.runtime.limits.call_deadline;
        let out = match &self.loaded.pre {
            Pre::Strategy(pre) => self.call(
                deadline,
                |_| {},
                |store| pre.instantiate(&mut *store)?.call_plan(&mut *store, &input),
            )?,
            Pre::StrategyPlanOnly(pre) => {
                self.call(deadline, |_| {}, |store| pre.call_plan(store, &input))?
            }
            _ => return Err(self.wrong_world(World::Strategy)),
        };
        let step = bindings::step(out.map_err(|e| self.failed(e))?);
        validate::step(&step, self.runtime.limits.max_plugin_state)
            .map_err(|e| self.invalid_output(e))?;
        Ok(step)
    }

    /// Strategy: checks `service`'s parameters at deploy. `Ok(None)` when the strategy
    /// accepts them, and also for a 0.1.x/0.2.x strategy (those have no `check-params`);
    /// `Ok(Some(..))` names the parameter it refuses and why.
    pub fn check_params(&self, service: &Service) -> Result<Option<ParamError>, PluginError> {
        let pre = match &self.loaded.pre {
            Pre::Strategy(pre) => pre,
            Pre::StrategyPlanOnly(_) => return Ok(None),
            _ => return Err(self.wrong_world(World::Strategy)),
        };
        let input = bindings::service(service);
        let deadline = self.runtime.limits.call_deadline;
        let out = self.call(
            deadline,
            |_| {},
            |store| {
                pre.instantiate(&mut *store)?
                    .call_check_params(&mut *store, &input)
            },
        )?;
        match out {
            Ok(()) => Ok(None),
            Err(e) => {
                let e = bindings::param_error(e);
                validate::param_error(&e).map_err(|r| self.invalid_output(r))?;
                Ok(Some(e))
            }
        }
    }

    /// Placement: verdicts naming nodes of `nodes` by id. A 0.2 plugin answers for every
    /// node (its verdicts come back in node order); a 0.1.0 plugin at most once per node, and a
    /// node it leaves out is infeasible for the caller.
    pub fn place(
        &self,
        request: &PlacementRequest,
        nodes: &[Node],
    ) -> Result<Vec<Verdict>, PluginError> {
        let deadline = self.runtime.limits.call_deadline;
        match &self.loaded.pre {
            Pre::Placement(pre) => {
                let request_in = bindings::placement_request(request);
                let nodes_in = bindings::nodes(request, nodes);
                let out = self.call(
                    deadline,
                    |_| {},
                    |store| {
                        pre.instantiate(&mut *store)?.call_place(
                            &mut *store,
                            &request_in,
                            &nodes_in,
                        )
                    },
                )?;
                let out = out.map_err(|e| self.failed(e))?;
                validate::indexed_verdicts(
                    out.scores.len(),
                    out.infeasible.iter().map(|i| (i.node, i.reason.len())),
                    nodes,
                )
                .map_err(|e| self.invalid_output(e))?;
                Ok(bindings::verdicts(out, nodes))
            }
            Pre::PlacementV0_1(pre) => {
                let request_in = v0_1::placement_request(request);
                let nodes_in: Vec<_> = nodes.iter().map(v0_1::node).collect();
                let out = self.call(
                    deadline,
                    |_| {},
                    |store| {
                        pre.instantiate(&mut *store)?.call_place(
                            &mut *store,
                            &request_in,
                            &nodes_in,
                        )
                    },
                )?;
                let verdicts: Vec<Verdict> = out
                    .map_err(|e| self.failed(e))?
                    .into_iter()
                    .map(v0_1::verdict)
                    .collect();
                validate::verdicts(&verdicts, nodes).map_err(|e| self.invalid_output(e))?;
                Ok(verdicts)
            }
            _ => Err(self.wrong_world(World::Placement)),
        }
    }

    /// Probe: `Ok(Ok(()))` healthy, `Ok(Err(reason))` unhealthy. The plugin reaches the
    /// network only through `endpoint`, each operation bounded by `settings.timeout_ms`
    /// (1 s if zero); the call's deadline is that timeout plus `probe_margin`.
    pub fn check(
        &self,
        settings: &ProbeSettings,
        endpoint: Arc<dyn EndpointCap>,
    ) -> Result<Result<(), String>, PluginError> {
        let Pre::Probe(pre) = &self.loaded.pre else {
            return Err(self.wrong_world(World::Probe));
        };
        let timeout = match settings.timeout_ms {
            0 => Duration::from_secs(1),
            ms => Duration::from_millis(u64::from(ms)),
        };
        let input = bindings::probe_settings(settings);
        let deadline = timeout + self.runtime.limits.probe_margin;
        let out = self.call(
            deadline,
            |state| {
                state.endpoint = Some(endpoint);
                state.endpoint_timeout = timeout;
            },
            |store| {
                pre.instantiate(&mut *store)?
                    .call_check(&mut *store, &input)
            },
        )?;
        Ok(out.map_err(|reason| truncate(&reason, validate::MAX_REASON).to_string()))
    }

    /// Webhook: what a delivery asks for, or its rejection (status checked to be 4xx/5xx,
    /// redeploys checked to name hooks of `hooks`).
    pub fn handle(
        &self,
        request: &WebhookRequest,
        hooks: &[Hook],
    ) -> Result<Result<WebhookOutcome, Rejection>, PluginError> {
        let Pre::Webhook(pre) = &self.loaded.pre else {
            return Err(self.wrong_world(World::Webhook));
        };
        let request_in = bindings::webhook_request(request);
        let hooks_in: Vec<_> = hooks.iter().map(bindings::hook).collect();
        let deadline = self.runtime.limits.call_deadline;
        let out = self.call(
            deadline,
            |_| {},
            |store| {
                pre.instantiate(&mut *store)?
                    .call_handle(&mut *store, &request_in, &hooks_in)
            },
        )?;
        let out = out
            .map(bindings::webhook_outcome)
            .map_err(bindings::rejection);
        validate::webhook(&out, hooks).map_err(|e| self.invalid_output(e))?;
        Ok(out)
    }

    /// Builder: runs the build pipeline, the plugin driving `host`. The deadline
    /// (`build_deadline`) includes the time spent in `host`.
    pub fn build(
        &self,
        request: &BuildRequest,
        host: Arc<dyn BuildHostCap>,
    ) -> Result<Result<BuildOutput, String>, PluginError> {
        let Pre::Builder(pre) = &self.loaded.pre else {
            return Err(self.wrong_world(World::Builder));
        };
        let input = bindings::build_request(request);
        let deadline = self.runtime.limits.build_deadline;
        let out = self.call(
            deadline,
            |state| state.build = Some(host),
            |store| {
                pre.instantiate(&mut *store)?
                    .call_build(&mut *store, &input)
            },
        )?;
        Ok(out
            .map(bindings::build_output)
            .map_err(|reason| truncate(&reason, validate::MAX_REASON).to_string()))
    }

    /// Runs one call in a fresh store with the runtime's limits and `deadline`, inside the
    /// `orca.plugin.call` span, and classifies a failure.
    fn call<R>(
        &self,
        deadline: Duration,
        grant: impl FnOnce(&mut HostState),
        run: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let span = tracing::info_span!(
            "orca.plugin.call",
            plugin = %self.name,
            world = %self.loaded.world,
            duration = tracing::field::Empty,
        );
        let _entered = span.enter();
        let started = Instant::now();
        let limits = &self.runtime.limits;
        let mut state = HostState::new(self.name.clone(), limits.memory_bytes);
        grant(&mut state);
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        // The ticker may be up to one tick into the current epoch: one extra tick makes the
        // deadline a lower bound.
        let ticks = (deadline.as_micros() / TICK.as_micros()).saturating_add(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        let result = run(&mut store);
        span.record("duration", tracing::field::debug(started.elapsed()));
        result.map_err(|e| self.classify(e, store.data(), deadline))
    }

    fn classify(&self, err: wasmtime::Error, state: &HostState, deadline: Duration) -> PluginError {
        let plugin = self.name.to_string();
        if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return PluginError::Timeout { plugin, deadline };
        }
        if state.limiter.memory_denied {
            return PluginError::MemoryExceeded {
                plugin,
                limit: state.limiter.memory_limit,
            };
        }
        if err
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return PluginError::Trap {
                plugin,
                reason: format!(
                    "not run: {} plugin calls already running",
                    self.runtime.limits.max_concurrent_calls
                ),
            };
        }
        // The root cause is the trap itself ("wasm `unreachable` instruction executed",
        // "unknown import: ... has not been defined"); the wasm backtrace goes to the debug log.
        tracing::debug!(plugin = %self.name, "plugin trapped: {err:?}");
        let reason = err.root_cause().to_string();
        PluginError::Trap {
            plugin,
            reason: truncate(&reason, validate::MAX_REASON).to_string(),
        }
    }
}

/// A strategy built against 0.1.x or 0.2.x: its `plan` export, called with the live records
/// (`rollout-state` and `step` are unchanged since 0.1.0; [`PlanOnly::new`] type-checks the
/// export against them at load, as `bindgen!`'s `StrategyPre::new` does).
pub(crate) struct PlanOnly {
    pre: wasmtime::component::InstancePre<HostState>,
    plan: wasmtime::component::ComponentExportIndex,
}

type PlanParams<'a> = (&'a bindings::wit::RolloutState,);
type PlanResults = (Result<bindings::wit::Step, String>,);

impl PlanOnly {
    fn new(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<PlanOnly> {
        let instance_type = pre.instance_type();
        let (item, plan) = pre
            .component()
            .get_export(None, "plan")
            .ok_or_else(|| wasmtime::format_err!("no export `plan` found"))?;
        match item {
            ComponentItem::ComponentFunc(func) => {
                wasmtime::error::Context::context(
                    func.typecheck::<PlanParams<'_>, PlanResults>(&instance_type),
                    "type-checking export func `plan`",
                )?;
            }
            _ => return Err(wasmtime::format_err!("export `plan` is not a function")),
        }
        Ok(PlanOnly { pre, plan })
    }

    fn call_plan(
        &self,
        store: &mut Store<HostState>,
        state: &bindings::wit::RolloutState,
    ) -> wasmtime::Result<Result<bindings::wit::Step, String>> {
        let instance = self.pre.instantiate(&mut *store)?;
        let plan =
            instance.get_typed_func::<PlanParams<'_>, PlanResults>(&mut *store, &self.plan)?;
        let (out,) = plan.call(&mut *store, (state,))?;
        Ok(out)
    }
}
