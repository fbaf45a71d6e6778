//! The swap engine: named weight sets that live in the pinned host arena and visit the device.
//!
//! Residency goes on disk → in host arena → on device; the host copy stays while the set is on
//! the device, so a clean set (weights are read-only in inference) is offloaded by unmapping
//! its device pages, with no copy. Only sets marked dirty are copied back.
//!
//! ```
//! use std::sync::Arc;
//! use vramswap::backend::sim::SimBackend;
//! use vramswap::swap::{SwapConfig, SwapEngine};
//! use vramswap::weights::DType;
//!
//! let backend = Arc::new(SimBackend::with_capacity(256 << 20));
//! let engine = SwapEngine::new(backend, SwapConfig::default()).unwrap();
//! let bytes = vec![7u8; 4096];
//! engine.register_arrays("tiny", vec![("w".to_string(), DType::U8, vec![4096], &bytes[..])]).unwrap();
//! let guard = engine.acquire("tiny").unwrap();          // uploads, waits
//! assert_eq!(guard.read_tensor("w").unwrap(), bytes);
//! drop(guard);
//! engine.offload("tiny").unwrap();                      // clean: unmaps, no copy
//! ```

mod config;
mod device;
mod guard;
mod layout;
mod policy;
mod state;
mod status;
mod transitions;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::Instant;

use crate::alloc::{CachingAllocator, PressureHandlerId};
use crate::arena::{ArenaConfig, PinnedArena};
use crate::backend::{Event, SharedBackend, Stream};
use crate::error::{Error, Result};
use crate::load::LoadOptions;
use crate::transfer::CopyEngine;
use crate::weights::{DType, HostWeights};

pub use config::{parse_bytes, parse_bytes_for, store_from_env, SwapConfig};
pub use guard::WeightGuard;
pub use status::{gbps, Counters, EngineStatus, Residency, SetStatus};

use device::DeviceSpace;
use layout::Layout;
use state::{Loaded, SetState};
use transitions::{idle_loop, Bring};

/// Refuses a stored set whose tensors are not exactly `expect` (names, dtypes, shapes).
fn check_expected(
    name: &str,
    desc: &crate::weights::WeightSetDesc,
    expect: &[crate::weights::TensorSpec],
) -> Result<()> {
    let mismatch = |what: String| {
        Err(Error::InvalidArgument(format!(
            "the store's set `{name}` does not match the model: {what}"
        )))
    };
    for s in expect {
        match desc.find(&s.name) {
            None => return mismatch(format!("it has no tensor `{}`", s.name)),
            Some(t) if t.dtype != s.dtype || t.shape != s.shape => {
                return mismatch(format!(
                    "tensor `{}` is {} {:?} there, {} {:?} here",
                    s.name, t.dtype, t.shape, s.dtype, s.shape
                ))
            }
            Some(_) => {}
        }
    }
    if desc.tensors.len() != expect.len() {
        let extra = desc
            .tensors
            .iter()
            .find(|t| !expect.iter().any(|s| s.name == t.name))
            .map_or_else(String::new, |t| format!(", e.g. `{}`", t.name));
        return mismatch(format!(
            "it has {} tensors, the model {}{extra}",
            desc.tensors.len(),
            expect.len()
        ));
    }
    Ok(())
}

/// Where a set comes from.
#[derive(Debug)]
enum Origin {
    Path(PathBuf, LoadOptions),
    Memory,
}

#[derive(Debug)]
struct Entry {
    origin: Origin,
    /// Where the set is, with what each place needs (`state.rs`).
    state: SetState,
    /// The set's bytes, once known (kept after a release, for status).
    bytes: u64,
    space: Option<DeviceSpace>,
    guards: usize,
    last_use: Instant,
    tick: u64,
    dirty: bool,
    /// The host copy holds device changes copied back (a dirty offload): it no longer equals
    /// the source, so the engine never drops it on its own to make room.
    host_modified: bool,
    busy: bool,
    uses: Vec<Event>,
    last_error: Option<String>,
}

impl Entry {
    fn new(origin: Origin) -> Entry {
        Entry {
            origin,
            state: SetState::OnDisk,
            bytes: 0,
            space: None,
            guards: 0,
            last_use: Instant::now(),
            tick: 0,
            dirty: false,
            host_modified: false,
            busy: false,
            uses: Vec::new(),
            last_error: None,
        }
    }

    fn resident(&self) -> bool {
        self.space.as_ref().is_some_and(|s| s.is_backed())
    }

    fn evictable(&self) -> bool {
        self.guards == 0 && !self.busy && self.resident()
    }
}

struct State {
    sets: BTreeMap<String, Entry>,
    counters: Counters,
    tick: u64,
}

impl State {
    fn entry(&mut self, name: &str) -> Result<&mut Entry> {
        self.sets.get_mut(name).ok_or_else(|| Error::NotFound {
            kind: "weight set",
            name: name.to_string(),
        })
    }

    /// What the policy (`policy.rs`) needs to know of each set, in name order.
    fn facts(&self, now: Instant) -> Vec<policy::SetFacts<'_>> {
        self.sets
            .iter()
            .map(|(name, e)| policy::SetFacts {
                name,
                tick: e.tick,
                idle_for: now.saturating_duration_since(e.last_use),
                held: e.guards > 0 || e.busy,
                resident: e.resident(),
                in_host_only: matches!(e.state, SetState::InHost(_)) && !e.resident(),
                reloadable: !e.dirty
                    && !e.host_modified
                    && e.state.loaded().is_some()
                    && matches!(e.origin, Origin::Path(..)),
            })
            .collect()
    }

    fn device_used(&self) -> u64 {
        self.sets
            .values()
            .filter(|e| e.resident())
            .map(|e| e.space.as_ref().map_or(0, |s| s.size()))
            .sum()
    }

    fn touch(&mut self, name: &str) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.sets.get_mut(name) {
            e.tick = t;
            e.last_use = Instant::now();
        }
    }
}

pub(crate) struct Inner {
    backend: SharedBackend,
    arena: Arc<PinnedArena>,
    copy: Arc<CopyEngine>,
    config: SwapConfig,
    vmm: bool,
    state: Mutex<State>,
    changed: Condvar,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    allocators: Mutex<Vec<(Weak<CachingAllocator>, PressureHandlerId)>>,
    /// The shared host store, when the configuration names one.
    #[cfg(target_os = "linux")]
    store: Option<crate::store::StoreClient>,
    /// Background loads started by `prefetch`; joined when the last engine handle goes.
    prefetchers: Mutex<Vec<thread::JoinHandle<()>>>,
}

/// Named weight sets shared by one device. Cheap to clone; safe to use from many threads.
#[derive(Clone)]
pub struct SwapEngine {
    inner: Arc<Inner>,
    _idle: Arc<IdleThread>,
}

impl std::fmt::Debug for SwapEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapEngine")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Stops the idle-timeout thread when the last engine handle goes.
struct IdleThread {
    inner: Weak<Inner>,
    handle: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Drop for IdleThread {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            *inner.stop.lock().expect("stop lock") = true;
            inner.stop_cv.notify_all();
            let loads = std::mem::take(&mut *inner.prefetchers.lock().expect("prefetchers lock"));
            drop(inner);
            for h in loads {
                let _ = h.join();
            }
        }
        if let Some(h) = self.handle.lock().expect("idle handle lock").take() {
            let _ = h.join();
        }
    }
}

impl SwapEngine {
    /// An engine over `backend` with its own pinned arena (budget `config.host_budget`) and copy
    /// streams.
    pub fn new(backend: SharedBackend, config: SwapConfig) -> Result<SwapEngine> {
        let arena = PinnedArena::new(
            backend.clone(),
            ArenaConfig {
                budget: config.host_budget,
                ..ArenaConfig::default()
            },
        )?;
        SwapEngine::with_arena(backend, arena, config)
    }

    /// An engine over `backend` that takes host memory from `arena`.
    pub fn with_arena(
        backend: SharedBackend,
        arena: Arc<PinnedArena>,
        config: SwapConfig,
    ) -> Result<SwapEngine> {
        config.transfer.validate()?;
        #[cfg(target_os = "linux")]
        let store = match &config.store {
            Some(socket) => {
                // A store that does not answer is an error now, not at the first acquire.
                let c = crate::store::StoreClient::new(socket);
                c.ping()?;
                Some(c)
            }
            None => None,
        };
        #[cfg(not(target_os = "linux"))]
        if config.store.is_some() {
            return Err(Error::Unsupported(
                "the shared host store needs Linux (memfd and SCM_RIGHTS)".into(),
            ));
        }
        let copy = Arc::new(CopyEngine::new(backend.clone(), config.transfer)?);
        let vmm = config.use_vmm.unwrap_or(true) && backend.properties().vmm_supported;
        let inner = Arc::new(Inner {
            backend,
            arena,
            copy,
            config,
            vmm,
            state: Mutex::new(State {
                sets: BTreeMap::new(),
                counters: Counters::default(),
                tick: 0,
            }),
            changed: Condvar::new(),
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            allocators: Mutex::new(Vec::new()),
            #[cfg(target_os = "linux")]
            store,
            prefetchers: Mutex::new(Vec::new()),
        });
        let idle = IdleThread {
            inner: Arc::downgrade(&inner),
            handle: Mutex::new(None),
        };
        if let Some(timeout) = inner.config.idle_timeout {
            let weak = Arc::downgrade(&inner);
            let h = thread::Builder::new()
                .name("vramswap-idle".into())
                .spawn(move || idle_loop(weak, timeout))
                .map_err(|e| {
                    Error::InvalidState(format!("cannot start the idle-timeout thread: {e}"))
                })?;
            *idle.handle.lock().expect("idle handle lock") = Some(h);
        }
        Ok(SwapEngine {
            inner,
            _idle: Arc::new(idle),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.inner.backend
    }

    /// The pinned arena.
    pub fn arena(&self) -> &Arc<PinnedArena> {
        &self.inner.arena
    }

    /// The settings.
    pub fn config(&self) -> &SwapConfig {
        &self.inner.config
    }

    /// Whether `s` is one of the engine's own copy streams (either direction). Callers that
    /// take stream handles from outside (the C ABI) refuse those.
    pub fn is_copy_stream(&self, s: Stream) -> bool {
        use crate::transfer::Direction;
        let c = &self.inner.copy;
        [Direction::HostToDevice, Direction::DeviceToHost]
            .iter()
            .any(|&d| c.streams(d).contains(&s))
    }

    /// Whether sets get stable addresses (the virtual-memory API is in use).
    pub fn stable_addresses(&self) -> bool {
        self.inner.vmm
    }

    /// Registers a set to load lazily from a `.safetensors` file or a model directory: nothing
    /// is read until the first [`SwapEngine::acquire`] or [`SwapEngine::prefetch`].
    pub fn register_path(
        &self,
        name: &str,
        path: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<()> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file or directory",
                ),
            });
        }
        self.insert(name, Entry::new(Origin::Path(path, options)))
    }

    /// Registers a set whose bytes are already in the arena.
    pub fn register_host(&self, name: &str, host: HostWeights) -> Result<()> {
        let layout = Layout::new(
            &host,
            self.inner.config.transfer.chunk_bytes,
            self.inner.config.transfer.verify,
        )?;
        let mut e = Entry::new(Origin::Memory);
        e.bytes = layout.desc.total_bytes;
        e.state = SetState::InHost(Loaded {
            host: Arc::new(host),
            layout: Arc::new(layout),
        });
        self.insert(name, e)
    }

    /// Registers a set from named arrays (name, dtype, shape, bytes), copied into the arena, or,
    /// with a [store](SwapConfig::store), into the store (where a set of that name with the same
    /// contents is used as it is, and other contents under the name are refused).
    pub fn register_arrays(
        &self,
        name: &str,
        arrays: Vec<(String, DType, Vec<u64>, &[u8])>,
    ) -> Result<()> {
        if self
            .inner
            .state
            .lock()
            .expect("engine lock")
            .sets
            .contains_key(name)
        {
            return Err(Error::AlreadyExists {
                kind: "weight set",
                name: name.into(),
            });
        }
        #[cfg(target_os = "linux")]
        if let Some(store) = &self.inner.store {
            let (host, attached) = store.put(name, arrays, self.inner.backend.clone())?;
            self.register_host(name, host)?;
            if attached {
                self.inner.lock().counters.store_attaches += 1;
            }
            return Ok(());
        }
        let host = HostWeights::from_arrays(&self.inner.arena, arrays)?;
        self.register_host(name, host)
    }

    /// Registers the set `name` as the shared host store holds it (an earlier process put it
    /// there with [`SwapEngine::register_arrays`] or loaded it from a path), reading nothing
    /// from disk: how a restarted worker gets its weights in the time of a swap-in. `expect`
    /// lists the tensors the caller will read (name, dtype, shape): a set that differs in any
    /// of them is refused, naming the first difference, and nothing is registered. Needs a
    /// [store](SwapConfig::store).
    pub fn register_stored(&self, name: &str, expect: &[crate::weights::TensorSpec]) -> Result<()> {
        #[cfg(target_os = "linux")]
        if let Some(store) = &self.inner.store {
            if self.inner.lock().sets.contains_key(name) {
                return Err(Error::AlreadyExists {
                    kind: "weight set",
                    name: name.into(),
                });
            }
            let host = store.open(name, self.inner.backend.clone())?;
            check_expected(name, host.desc(), expect)?;
            self.register_host(name, host)?;
            self.inner.lock().counters.store_attaches += 1;
            return Ok(());
        }
        let _ = expect;
        Err(Error::InvalidState(format!(
            "register_stored(`{name}`) needs a shared host store (SwapConfig::store, \
             VRAMSWAP_STORE); this engine has none"
        )))
    }

    fn insert(&self, name: &str, e: Entry) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidArgument(
                "a weight set needs a non-empty name".into(),
            ));
        }
        let mut st = self.inner.lock();
        if st.sets.contains_key(name) {
            return Err(Error::AlreadyExists {
                kind: "weight set",
                name: name.into(),
            });
        }
        st.sets.insert(name.to_string(), e);
        Ok(())
    }

    /// Shares the device with a caching allocator: when the allocator runs out of memory it
    /// asks this engine to offload idle sets (its pressure-handler rung), and when a swap-in
    /// finds the device full, the allocator's unused cached segments are released first.
    pub fn attach_allocator(&self, alloc: &Arc<CachingAllocator>) {
        let weak = Arc::downgrade(&self.inner);
        let id = alloc.add_pressure_handler(Box::new(move |needed| {
            weak.upgrade().map_or(0, |inner| inner.relieve(needed))
        }));
        self.inner
            .allocators
            .lock()
            .expect("allocators lock")
            .push((Arc::downgrade(alloc), id));
    }

    /// Names of the registered sets.
    pub fn names(&self) -> Vec<String> {
        self.inner.lock().sets.keys().cloned().collect()
    }

    /// Makes the set resident and returns a guard that keeps it on the device while it lives.
    /// Loads it from its source first if needed (lazy load), evicting least recently used idle
    /// sets to fit the device budget, and waits until every byte has arrived.
    pub fn acquire(&self, name: &str) -> Result<WeightGuard> {
        self.inner
            .bring(name, Bring::Guard { wait: true })
            .map(|g| g.expect("guard mode returns a guard"))
    }

    /// Like [`SwapEngine::acquire`], but returns as soon as the copies are queued: use
    /// [`WeightGuard::wait_layer`] or [`WeightGuard::order_before`] to consume layers as they
    /// arrive.
    pub fn acquire_streaming(&self, name: &str) -> Result<WeightGuard> {
        self.inner
            .bring(name, Bring::Guard { wait: false })
            .map(|g| g.expect("guard mode returns a guard"))
    }

    /// Starts bringing the set to the device in the background and returns at once. A later
    /// acquire waits only for what has not arrived. Loading from disk, if needed, runs on a
    /// background thread.
    pub fn prefetch(&self, name: &str) -> Result<()> {
        let needs_load = {
            let mut st = self.inner.lock();
            let e = st.entry(name)?;
            if e.busy {
                return Ok(());
            }
            match e.state {
                SetState::OnDisk => true,
                SetState::InHost(_) => {
                    if let Err(err) = self.inner.start_upload(&mut st, name) {
                        st.entry(name)?.last_error = Some(err.to_string());
                        return Err(err);
                    }
                    false
                }
                _ => false,
            }
        };
        if needs_load {
            let inner = self.inner.clone();
            let name = name.to_string();
            let h = thread::Builder::new()
                .name("vramswap-prefetch".into())
                .spawn(move || {
                    if let Err(e) = inner.bring(&name, Bring::Prefetch) {
                        tracing::warn!("prefetch of `{name}` failed: {e}");
                    }
                })
                .map_err(|e| Error::InvalidState(format!("cannot start a prefetch thread: {e}")))?;
            let mut loads = self.inner.prefetchers.lock().expect("prefetchers lock");
            loads.retain(|h| !h.is_finished());
            loads.push(h);
        }
        Ok(())
    }

    /// Offloads the set from the device. A clean set is unmapped with no copy; a dirty set is
    /// copied back to the host first. Fails if a guard holds it.
    pub fn offload(&self, name: &str) -> Result<()> {
        let mut st = self.inner.wait_idle(name)?;
        let e = st.entry(name)?;
        if e.guards > 0 {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` is held by {} guard(s); drop them before offloading",
                e.guards
            )));
        }
        self.inner.offload_locked(&mut st, name)
    }

    /// Offloads the set and drops its host copy; the next acquire reloads it from its source.
    /// Fails for sets registered from memory (they have no source to reload from). Changes made
    /// on the device (see [`SwapEngine::mark_dirty`]) are lost with the host copy: an explicit
    /// release is the one way they go (the host budget never drops such a copy on its own).
    pub fn release(&self, name: &str) -> Result<()> {
        let mut st = self.inner.wait_idle(name)?;
        let e = st.entry(name)?;
        if e.guards > 0 {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` is held by {} guard(s); drop them before releasing",
                e.guards
            )));
        }
        if matches!(e.origin, Origin::Memory) {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` was registered from memory and has no source to reload from; \
                 use unregister to drop it"
            )));
        }
        self.inner.offload_locked(&mut st, name)?;
        self.inner.release_locked(&mut st, name);
        drop(st);
        // Give the pinned memory back to the system (users of pause/resume APIs report host
        // memory that is never returned); a later load pins afresh.
        self.inner.arena.trim();
        Ok(())
    }

    /// Removes the set entirely: device memory, reserved addresses and host copy.
    pub fn unregister(&self, name: &str) -> Result<()> {
        let mut st = self.inner.wait_idle(name)?;
        let e = st.entry(name)?;
        if e.guards > 0 {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` is held by {} guard(s)",
                e.guards
            )));
        }
        self.inner.offload_locked(&mut st, name)?;
        // Free the device side first: if that fails, the set stays registered, its space (and
        // whatever the space still owns) tracked.
        let e = st.entry(name)?;
        if let Some(space) = e.space.as_mut() {
            space.destroy(self.inner.backend.as_ref())?;
            e.space = None;
        }
        let e = st.sets.remove(name).expect("checked above");
        for ev in e.uses {
            let _ = self.inner.backend.event_destroy(ev);
        }
        Ok(())
    }

    /// Marks a resident set as modified on the device: its next offload copies it back.
    pub fn mark_dirty(&self, name: &str) -> Result<()> {
        let mut st = self.inner.lock();
        let e = st.entry(name)?;
        if !e.resident() {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` is not on the device"
            )));
        }
        if e.state.loaded().is_some_and(|l| l.host.is_shared()) {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` is held from the shared host store: its host copy is sealed \
                 memory other processes read, so device changes cannot be copied back"
            )));
        }
        if e.state.loaded().is_some_and(|l| l.host.is_direct()) {
            return Err(Error::InvalidState(format!(
                "weight set `{name}` was loaded in direct mode: its host copy is the read-only file \
                 mapping, so device changes cannot be copied back"
            )));
        }
        e.dirty = true;
        Ok(())
    }

    /// Offloads every idle resident set (no guard); returns how many.
    pub fn offload_idle(&self) -> Result<usize> {
        let mut st = self.inner.lock();
        let names: Vec<String> = policy::idle_sets(&st.facts(Instant::now()), None)
            .into_iter()
            .map(str::to_string)
            .collect();
        for n in &names {
            self.inner.offload_locked(&mut st, n)?;
        }
        Ok(names.len())
    }

    /// Makes room for an allocation of `needed` bytes by offloading least recently used idle
    /// sets (counting memory already free); returns the bytes freed. This is what the caching
    /// allocator's pressure handler calls.
    pub fn relieve(&self, needed: u64) -> u64 {
        self.inner.relieve(needed)
    }

    /// The state of every set and the counters.
    pub fn status(&self) -> EngineStatus {
        let st = self.inner.lock();
        let now = Instant::now();
        let p = self.inner.backend.properties();
        let mem = self.inner.backend.mem_info().ok();
        let sets = st
            .sets
            .iter()
            .map(|(name, e)| SetStatus {
                name: name.clone(),
                state: e.state.residency(),
                bytes: e.bytes,
                device_bytes: e.space.as_ref().map_or(0, |s| s.size()),
                idle_secs: if e.guards > 0 {
                    0.0
                } else {
                    (now - e.last_use).as_secs_f64()
                },
                guards: e.guards,
                dirty: e.dirty,
                stable_addresses: e.space.as_ref().map_or(self.inner.vmm, |s| s.stable()),
                device_ptr: e.space.as_ref().and_then(|s| s.base()).map(|p| p.0),
                source: match &e.origin {
                    Origin::Path(p, _) => p.display().to_string(),
                    Origin::Memory => "memory".into(),
                },
                last_error: e.last_error.clone(),
            })
            .collect();
        EngineStatus {
            backend: p.backend.to_string(),
            device: p.name.clone(),
            device_budget: self.inner.config.device_budget,
            device_used: st.device_used(),
            device_free: mem.map_or(0, |m| m.free),
            device_total: mem.map_or(p.total_memory, |m| m.total),
            host_budget: self.inner.config.host_budget,
            host_used: self.inner.arena.stats().used_bytes,
            sets,
            counters: st.counters.clone(),
        }
    }
}
