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
mod status;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crate::alloc::{CachingAllocator, PressureHandlerId};
use crate::arena::{ArenaConfig, PinnedArena};
use crate::backend::{Event, SharedBackend, Stream};
use crate::error::{Error, Result};
use crate::load::{self, LoadOptions};
use crate::transfer::{
    host_checksums, CopyEngine, CopyPlan, Direction, Group, HostPiece, Transfer,
};
use crate::weights::{DType, HostWeights, WeightSetDesc};

pub use config::{parse_bytes, SwapConfig};
pub use guard::WeightGuard;
pub use status::{gbps, Counters, EngineStatus, Residency, SetStatus};

use device::DeviceSpace;

/// How a set's bytes are laid out and copied.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) desc: WeightSetDesc,
    pub(crate) plan: CopyPlan,
    pub(crate) checksums: Option<Vec<u64>>,
}

impl Layout {
    fn new(host: &HostWeights, chunk_bytes: u64, verify: bool) -> Result<Layout> {
        let desc = host.desc().clone();
        let total = desc.total_bytes;
        let mut groups: Vec<Group> = desc
            .layers()
            .into_iter()
            .map(|l| Group {
                name: l.name,
                offset: l.start,
                len: l.end - l.start,
            })
            .collect();
        groups.sort_by_key(|g| g.offset);
        // Bytes no group covers (alignment padding) still move, in groups of their own, so the
        // device copy is byte-identical to the host copy and checksums cover everything.
        let mut filled = Vec::with_capacity(groups.len() + 1);
        let mut cur = 0u64;
        for g in groups {
            if g.offset > cur {
                filled.push(Group {
                    name: format!("(padding at {cur})"),
                    offset: cur,
                    len: g.offset - cur,
                });
            }
            cur = cur.max(g.offset + g.len);
            filled.push(g);
        }
        if cur < total {
            filled.push(Group {
                name: format!("(padding at {cur})"),
                offset: cur,
                len: total - cur,
            });
        }
        let plan = CopyPlan::new(filled, chunk_bytes)?;
        let checksums = verify.then(|| group_checksums(host, &plan.groups));
        Ok(Layout {
            desc,
            plan,
            checksums,
        })
    }
}

/// Checksums of each group of a host set (see [`host_checksums`]).
fn group_checksums(host: &HostWeights, groups: &[Group]) -> Vec<u64> {
    if let Some(r) = host.host_range() {
        return host_checksums(&r.as_slice()[..host.total_bytes() as usize], groups);
    }
    // Direct mode: a group may span files; gather it.
    let segs = host.segments();
    groups
        .iter()
        .map(|g| {
            let mut buf = vec![0u8; g.len as usize];
            for s in &segs {
                let lo = g.offset.max(s.offset);
                let hi = (g.offset + g.len).min(s.offset + s.len);
                if lo < hi {
                    // SAFETY: `[lo, hi)` lies inside segment `s`, a live registered mapping.
                    let src = unsafe {
                        std::slice::from_raw_parts(
                            s.ptr.add((lo - s.offset) as usize),
                            (hi - lo) as usize,
                        )
                    };
                    buf[(lo - g.offset) as usize..(hi - g.offset) as usize].copy_from_slice(src);
                }
            }
            vramswap_sim::kernels::checksum(&buf)
        })
        .collect()
}

/// The host pieces of a set, for the copy engine.
fn pieces(host: &HostWeights) -> Vec<HostPiece> {
    host.segments()
        .into_iter()
        .map(|s| HostPiece {
            offset: s.offset,
            len: s.len,
            ptr: s.ptr as *mut u8,
        })
        .collect()
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
    host: Option<Arc<HostWeights>>,
    layout: Option<Arc<Layout>>,
    state: Residency,
    space: Option<DeviceSpace>,
    transfer: Option<Arc<Transfer>>,
    upload_started: Option<Instant>,
    guards: usize,
    last_use: Instant,
    tick: u64,
    dirty: bool,
    busy: bool,
    uses: Vec<Event>,
    last_error: Option<String>,
}

impl Entry {
    fn new(origin: Origin) -> Entry {
        Entry {
            origin,
            host: None,
            layout: None,
            state: Residency::OnDisk,
            space: None,
            transfer: None,
            upload_started: None,
            guards: 0,
            last_use: Instant::now(),
            tick: 0,
            dirty: false,
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
        e.host = Some(Arc::new(host));
        e.layout = Some(Arc::new(layout));
        e.state = Residency::InHost;
        self.insert(name, e)
    }

    /// Registers a set from named arrays (name, dtype, shape, bytes), copied into the arena.
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
        let host = HostWeights::from_arrays(&self.inner.arena, arrays)?;
        self.register_host(name, host)
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
            weak.upgrade()
                .map_or(0, |inner| inner.relieve(needed, true))
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
                Residency::OnDisk => true,
                Residency::InHost => {
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
    /// Fails for sets registered from memory (they have no source to reload from).
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
        let mut e = st.sets.remove(name).expect("checked above");
        if let Some(space) = e.space.take() {
            space.destroy(self.inner.backend.as_ref())?;
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
        if e.host.as_ref().is_some_and(|h| h.is_direct()) {
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
        let names: Vec<String> = st
            .sets
            .iter()
            .filter(|(_, e)| e.evictable())
            .map(|(n, _)| n.clone())
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
        self.inner.relieve(needed, false)
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
                state: e.state,
                bytes: e.layout.as_ref().map_or(0, |l| l.desc.total_bytes),
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bring {
    Prefetch,
    Guard { wait: bool },
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("engine lock poisoned")
    }

    /// Locks, waiting until `name` is not busy.
    fn wait_idle(&self, name: &str) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        loop {
            if !st.entry(name)?.busy {
                return Ok(st);
            }
            st = self.changed.wait(st).expect("engine lock poisoned");
        }
    }

    /// Brings a set to the device; in guard mode returns a guard.
    fn bring(self: &Arc<Self>, name: &str, mode: Bring) -> Result<Option<WeightGuard>> {
        let mut st = self.lock();
        loop {
            let e = st.entry(name)?;
            if e.busy {
                st = self.changed.wait(st).expect("engine lock poisoned");
                continue;
            }
            match e.state {
                Residency::OnDisk => {
                    let Origin::Path(path, opts) = &e.origin else {
                        return Err(Error::InvalidState(format!(
                            "weight set `{name}` has no host copy and no source"
                        )));
                    };
                    let (path, opts) = (path.clone(), opts.clone());
                    e.busy = true;
                    drop(st);
                    let t = Instant::now();
                    let loaded = self.load_with_room(&path, &opts);
                    st = self.lock();
                    let e = st.entry(name)?;
                    e.busy = false;
                    self.changed.notify_all();
                    match loaded {
                        Ok((host, layout)) => {
                            e.host = Some(Arc::new(host));
                            e.layout = Some(Arc::new(layout));
                            e.state = Residency::InHost;
                            e.last_error = None;
                            st.counters.loads += 1;
                            st.counters.last_load_ms = t.elapsed().as_secs_f64() * 1e3;
                        }
                        Err(err) => {
                            e.last_error = Some(err.to_string());
                            return Err(err);
                        }
                    }
                }
                Residency::InHost => {
                    if let Err(err) = self.start_upload(&mut st, name) {
                        st.entry(name)?.last_error = Some(err.to_string());
                        return Err(err);
                    }
                }
                Residency::Uploading => {
                    let Bring::Guard { wait } = mode else {
                        return Ok(None);
                    };
                    e.guards += 1;
                    let t = e.transfer.clone().expect("uploading sets have a transfer");
                    st.touch(name);
                    if !wait {
                        drop(st);
                        return Ok(Some(self.guard(name, Some(t))?));
                    }
                    drop(st);
                    let waited = t.wait();
                    st = self.lock();
                    let finished = waited.and_then(|_| self.finish_upload(&mut st, name, &t));
                    if let Err(err) = finished {
                        let e = st.entry(name)?;
                        e.guards -= 1;
                        e.last_error = Some(err.to_string());
                        self.changed.notify_all();
                        return Err(err);
                    }
                    drop(st);
                    return Ok(Some(self.guard(name, None)?));
                }
                Residency::OnDevice => {
                    let Bring::Guard { .. } = mode else {
                        return Ok(None);
                    };
                    e.guards += 1;
                    st.touch(name);
                    drop(st);
                    return Ok(Some(self.guard(name, None)?));
                }
                Residency::Downloading => {
                    st = self.changed.wait(st).expect("engine lock poisoned");
                }
            }
        }
    }

    fn guard(self: &Arc<Self>, name: &str, transfer: Option<Arc<Transfer>>) -> Result<WeightGuard> {
        let st = self.lock();
        let e = st.sets.get(name).expect("guarded sets stay registered");
        let layout = e.layout.clone().expect("resident sets have a layout");
        let base = e
            .space
            .as_ref()
            .and_then(|s| s.base())
            .expect("resident sets are backed");
        let stable = e.space.as_ref().is_some_and(|s| s.stable());
        let host = e.host.clone().expect("resident sets have a host copy");
        drop(st);
        Ok(WeightGuard::new(
            self.clone(),
            name.to_string(),
            base,
            layout,
            transfer,
            stable,
            host,
        ))
    }

    /// Loads a file into the arena, releasing least recently used idle host copies that can be
    /// reloaded when the host budget is in the way.
    fn load_with_room(&self, path: &Path, opts: &LoadOptions) -> Result<(HostWeights, Layout)> {
        loop {
            match load::load(path, &self.arena, opts) {
                Ok(host) => {
                    let layout = Layout::new(
                        &host,
                        self.config.transfer.chunk_bytes,
                        self.config.transfer.verify,
                    )?;
                    return Ok((host, layout));
                }
                Err(e @ Error::HostBudgetExceeded { .. }) => {
                    let mut st = self.lock();
                    let victim = st
                        .sets
                        .iter()
                        .filter(|(_, e)| {
                            e.state == Residency::InHost
                                && e.guards == 0
                                && !e.busy
                                && matches!(e.origin, Origin::Path(..))
                        })
                        .min_by_key(|(_, e)| e.tick)
                        .map(|(n, _)| n.clone());
                    match victim {
                        Some(v) => self.release_locked(&mut st, &v),
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn release_locked(&self, st: &mut State, name: &str) {
        if let Some(e) = st.sets.get_mut(name) {
            e.transfer = None;
            e.host = None;
            e.state = Residency::OnDisk;
            st.counters.releases += 1;
        }
    }

    /// Offloads least recently used idle sets until `needed` more bytes fit the budget (or, with
    /// `ignore_budget`, until `needed` bytes were freed). Returns the bytes freed.
    fn evict(&self, st: &mut State, needed: u64, except: &str, ignore_budget: bool) -> u64 {
        let mut freed = 0;
        loop {
            let fits = if ignore_budget {
                freed >= needed
            } else {
                match self.config.device_budget {
                    None => true,
                    Some(b) => st.device_used() + needed <= b,
                }
            };
            if fits {
                return freed;
            }
            let victim = st
                .sets
                .iter()
                .filter(|(n, e)| n.as_str() != except && e.evictable())
                .min_by_key(|(_, e)| e.tick)
                .map(|(n, _)| n.clone());
            let Some(v) = victim else { return freed };
            let size = st.sets[&v].space.as_ref().map_or(0, |s| s.size());
            match self.offload_locked(st, &v) {
                Ok(()) => {
                    freed += size;
                    st.counters.evictions += 1;
                }
                Err(e) => {
                    tracing::warn!("evicting `{v}` failed: {e}");
                    if let Some(e2) = st.sets.get_mut(&v) {
                        e2.last_error = Some(e.to_string());
                    }
                    return freed;
                }
            }
        }
    }

    /// Asks attached allocators to return their unused cached memory; true if any freed some.
    fn release_allocator_cache(&self) -> bool {
        let allocs: Vec<Arc<CachingAllocator>> = self
            .allocators
            .lock()
            .expect("allocators lock")
            .iter()
            .filter_map(|(w, _)| w.upgrade())
            .collect();
        let mut freed = false;
        for a in allocs {
            let before = a.stats().reserved_bytes.current;
            if a.empty_cache().is_ok() && a.stats().reserved_bytes.current < before {
                freed = true;
            }
        }
        freed
    }

    /// Offloads idle sets until `needed` bytes could be allocated on the device (counting what
    /// is already free); returns the bytes freed.
    fn relieve(&self, needed: u64, _from_allocator: bool) -> u64 {
        let free = self.backend.mem_info().map_or(0, |m| m.free);
        let deficit = needed.saturating_sub(free);
        if deficit == 0 {
            return 0;
        }
        // `try_lock`: the allocator may call this while this engine holds its own lock (through
        // a plain allocation that ran out of memory); then there is nothing to do here.
        match self.state.try_lock() {
            Ok(mut st) => self.evict(&mut st, deficit, "", true),
            Err(_) => 0,
        }
    }

    /// Backs device memory for an in-host set and queues the upload.
    fn start_upload(&self, st: &mut State, name: &str) -> Result<()> {
        let b = self.backend.as_ref();
        let (bytes, has_space) = {
            let e = st.entry(name)?;
            let layout = e.layout.clone().expect("in-host sets have a layout");
            (layout.desc.total_bytes, e.space.is_some())
        };
        if !has_space {
            let space = DeviceSpace::new(b, bytes, self.vmm)?;
            st.entry(name)?.space = Some(space);
        }
        let need = st.sets[name].space.as_ref().map_or(0, |s| s.size());
        if let Some(budget) = self.config.device_budget {
            self.evict(st, need, name, false);
            let used = st.device_used();
            if used + need > budget {
                let pinned: u64 = st
                    .sets
                    .values()
                    .filter(|e| e.resident() && !e.evictable())
                    .map(|e| e.space.as_ref().map_or(0, |s| s.size()))
                    .sum();
                return Err(Error::DeviceBudgetExceeded {
                    requested: need,
                    pinned,
                    budget,
                });
            }
        }
        // Back the range, evicting idle sets while the device itself is out of memory.
        let base = loop {
            let e = st.entry(name)?;
            let r = e.space.as_mut().expect("made above").back(b);
            match r {
                Ok(p) => break p,
                Err(err) if err.is_out_of_memory() => {
                    if self.release_allocator_cache() {
                        continue;
                    }
                    if self.evict(st, need, name, true) == 0 {
                        st.entry(name)?.last_error = Some(err.to_string());
                        return Err(err);
                    }
                }
                Err(err) => {
                    st.entry(name)?.last_error = Some(err.to_string());
                    return Err(err);
                }
            }
        };
        let e = st.entry(name)?;
        let host = e.host.clone().expect("in-host sets have a host copy");
        let layout = e.layout.clone().expect("in-host sets have a layout");
        // SAFETY: the host copy is kept alive by the entry until the transfer is dropped
        // (release and offload drop the transfer first), and nothing writes it meanwhile.
        let started = unsafe {
            self.copy
                .start(Direction::HostToDevice, &pieces(&host), base, &layout.plan)
        };
        match started {
            Ok(t) => {
                e.transfer = Some(Arc::new(t));
                e.upload_started = Some(Instant::now());
                e.state = Residency::Uploading;
                e.dirty = false;
                Ok(())
            }
            Err(err) => {
                // Never half-valid: the partly written range goes back to the device.
                let _ = e.space.as_mut().expect("made above").unback(b);
                e.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }

    /// Marks an upload complete after its transfer was waited for (verifying it if asked).
    fn finish_upload(&self, st: &mut State, name: &str, t: &Arc<Transfer>) -> Result<()> {
        let e = st.entry(name)?;
        if e.state != Residency::Uploading
            || !e.transfer.as_ref().is_some_and(|x| Arc::ptr_eq(x, t))
        {
            return Ok(()); // another thread finished it
        }
        let layout = e.layout.clone().expect("uploading sets have a layout");
        if let Some(sums) = &layout.checksums {
            if let Err(err) = t.verify(sums, Stream::DEFAULT) {
                e.transfer = None;
                let _ = e
                    .space
                    .as_mut()
                    .expect("uploading sets have space")
                    .unback(self.backend.as_ref());
                e.state = Residency::InHost;
                return Err(err);
            }
        }
        let elapsed = t
            .elapsed_ms()
            .ok()
            .flatten()
            .map(|ms| Duration::from_secs_f64(ms as f64 / 1e3))
            .unwrap_or_else(|| e.upload_started.map_or(Duration::ZERO, |s| s.elapsed()));
        e.transfer = None;
        e.state = Residency::OnDevice;
        st.counters.swap_in(layout.desc.total_bytes, elapsed);
        Ok(())
    }

    /// Takes a set off the device (copying it back first if dirty). No-op if not resident.
    fn offload_locked(&self, st: &mut State, name: &str) -> Result<()> {
        let b = self.backend.as_ref();
        let e = st.entry(name)?;
        if !e.resident() {
            return Ok(());
        }
        let t0 = Instant::now();
        if let Some(t) = e.transfer.take() {
            // An upload nobody waited for (a prefetch): let it land before unmapping.
            t.wait()?;
        }
        for ev in e.uses.drain(..) {
            b.event_synchronize(ev)?;
            b.event_destroy(ev)?;
        }
        let mut copied = 0;
        if e.dirty {
            e.state = Residency::Downloading;
            let host = e.host.clone().expect("resident sets have a host copy");
            let layout = e.layout.clone().expect("resident sets have a layout");
            let base = e.space.as_ref().and_then(|s| s.base()).expect("resident");
            // SAFETY: no guard holds the set, so nothing reads the host copy while the device
            // writes it; the transfer is waited for before `host` can go away.
            let r = unsafe {
                self.copy
                    .start(Direction::DeviceToHost, &pieces(&host), base, &layout.plan)
            }
            .and_then(|t| t.wait());
            if let Err(err) = r {
                // The device copy is still good; keep the set resident and dirty.
                e.state = Residency::OnDevice;
                e.last_error = Some(err.to_string());
                return Err(err);
            }
            copied = layout.desc.total_bytes;
            e.dirty = false;
            if layout.checksums.is_some() {
                // The host copy changed: later verified swap-ins compare against its new sums.
                e.layout = Some(Arc::new(Layout {
                    desc: layout.desc.clone(),
                    plan: layout.plan.clone(),
                    checksums: Some(group_checksums(&host, &layout.plan.groups)),
                }));
            }
        }
        e.space.as_mut().expect("resident").unback(b)?;
        e.state = Residency::InHost;
        st.counters.swap_out(copied, t0.elapsed());
        self.changed.notify_all();
        Ok(())
    }

    fn release_guard(&self, name: &str) {
        let mut st = self.lock();
        if let Some(e) = st.sets.get_mut(name) {
            e.guards = e.guards.saturating_sub(1);
        }
        st.touch(name);
        self.changed.notify_all();
    }

    fn record_use(&self, name: &str, stream: Stream) -> Result<()> {
        let ev = self.backend.event_create(false)?;
        if let Err(e) = self.backend.event_record(ev, stream) {
            let _ = self.backend.event_destroy(ev);
            return Err(e);
        }
        let mut st = self.lock();
        st.entry(name)?.uses.push(ev);
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (w, id) in self
            .allocators
            .get_mut()
            .expect("allocators lock")
            .drain(..)
        {
            if let Some(a) = w.upgrade() {
                a.remove_pressure_handler(id);
            }
        }
        let b = self.backend.clone();
        let st = self.state.get_mut().expect("engine lock poisoned");
        for (_, mut e) in std::mem::take(&mut st.sets) {
            e.transfer = None;
            for ev in e.uses.drain(..) {
                let _ = b.event_synchronize(ev);
                let _ = b.event_destroy(ev);
            }
            if let Some(space) = e.space.take() {
                let _ = space.destroy(b.as_ref());
            }
        }
    }
}

fn idle_loop(weak: Weak<Inner>, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        let Some(inner) = weak.upgrade() else { return };
        {
            let stop = inner.stop.lock().expect("stop lock");
            if *stop {
                return;
            }
            let (stop, _) = inner.stop_cv.wait_timeout(stop, tick).expect("stop lock");
            if *stop {
                return;
            }
        }
        let mut st = inner.lock();
        let now = Instant::now();
        let idle: Vec<String> = st
            .sets
            .iter()
            .filter(|(_, e)| e.evictable() && now - e.last_use >= timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for n in idle {
            if let Err(e) = inner.offload_locked(&mut st, &n) {
                tracing::warn!("idle offload of `{n}` failed: {e}");
            }
        }
    }
}
