//! The simulated device: memory, streams, events, copies and kernels, with fault injection, a
//! bandwidth model and the stream-ordering checker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::error::{SimError, SimResult};
use crate::host::{HostKind, HostMemory};
use crate::memory::{Mapping, Memory, Phys, Region, RegionKind, Segment, PLAIN_ALIGN};
use crate::race::{Access, Checker, Clock, Space, Violation};
use crate::stream::{EventPoint, EventState, Job, Stream};
use crate::{FaultOp, RaceMode, SimConfig};

mod launch;

pub use launch::Kernel;

/// Live resources of a device, for leak reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeakReport {
    /// Bytes of physical device memory still allocated.
    pub device_bytes: u64,
    /// Plain and stream-ordered allocations not freed.
    pub allocations: u64,
    /// Virtual address reservations not freed.
    pub reservations: u64,
    /// Mappings not unmapped.
    pub mappings: u64,
    /// Physical allocation handles not released.
    pub physical_handles: u64,
    /// Bytes of pinned host memory allocated by the device and not freed.
    pub pinned_bytes: u64,
    /// Host ranges registered and not unregistered.
    pub registered_ranges: u64,
    /// Streams not destroyed (the NULL stream is not counted).
    pub streams: u64,
    /// Events not destroyed.
    pub events: u64,
}

impl LeakReport {
    /// True when nothing is left.
    pub fn is_clean(&self) -> bool {
        *self == LeakReport::default()
    }
}

/// Counters of what the device has done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Host-to-device copies.
    pub copies_h2d: u64,
    /// Device-to-host copies.
    pub copies_d2h: u64,
    /// Device-to-device copies.
    pub copies_d2d: u64,
    /// Bytes copied host to device.
    pub bytes_h2d: u64,
    /// Bytes copied device to host.
    pub bytes_d2h: u64,
    /// Copies that ran synchronously because the host side was pageable.
    pub pageable_copies: u64,
    /// Kernel launches.
    pub launches: u64,
    /// Device allocations (plain, async and physical).
    pub allocations: u64,
}

/// Time reservation of one copy direction under the bandwidth model.
struct Link {
    bytes_per_sec: f64,
    busy_until: Mutex<Instant>,
    /// The latest reserved intervals, oldest first (at most `LINK_LOG` of them).
    log: Mutex<std::collections::VecDeque<(Instant, Instant)>>,
}

const LINK_LOG: usize = 4096;

impl Link {
    /// Reserves the link for `bytes` at `factor` of its bandwidth; returns when the transfer ends.
    fn reserve(&self, bytes: u64, factor: f64) -> Instant {
        self.reserve_at(Instant::now(), bytes, factor)
    }

    /// [`Link::reserve`] as of `now`.
    fn reserve_at(&self, now: Instant, bytes: u64, factor: f64) -> Instant {
        let secs = bytes as f64 / (self.bytes_per_sec * factor);
        let mut busy = self.busy_until.lock().expect("link lock");
        let start = (*busy).max(now);
        let end = start + Duration::from_secs_f64(secs);
        *busy = end;
        let mut log = self.log.lock().expect("link log lock");
        if log.len() == LINK_LOG {
            log.pop_front();
        }
        log.push_back((start, end));
        end
    }
}

/// A copy direction of the bandwidth model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDir {
    /// Host to device.
    HostToDevice,
    /// Device to host.
    DeviceToHost,
    /// Device to device.
    DeviceToDevice,
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// A copy to queue: what it touches, which link it uses, and the work itself.
struct CopyJob {
    op: &'static str,
    accesses: Vec<Access>,
    dir: Dir,
    bytes: u64,
    pageable: bool,
    body: Box<dyn FnOnce() + Send>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    H2D,
    D2H,
    D2D,
}

struct Inner {
    config: SimConfig,
    memory: Mutex<Memory>,
    host: Mutex<HostMemory>,
    streams: RwLock<HashMap<u64, Arc<Stream>>>,
    events: Mutex<HashMap<u64, EventState>>,
    next_id: AtomicU64,
    checker: Mutex<Checker>,
    faults: Mutex<HashMap<FaultOp, (u64, Vec<u64>)>>,
    links: Option<[Link; 3]>,
    pinned_bytes: AtomicU64,
    counters: Mutex<SimCounters>,
}

/// A simulated GPU in host memory. Cheap to clone (a handle to shared state).
///
/// ```
/// use vramswap_sim::{SimConfig, SimDevice};
/// let dev = SimDevice::new(SimConfig::default());
/// let d = dev.alloc(1024).unwrap();
/// let src = vec![7u8; 1024];
/// let mut dst = vec![0u8; 1024];
/// // SAFETY: the buffers outlive the copies (pageable copies are synchronous).
/// unsafe {
///     dev.copy_htod(d, src.as_ptr(), 1024, 0).unwrap();
///     dev.copy_dtoh(dst.as_mut_ptr(), d, 1024, 0).unwrap();
/// }
/// assert_eq!(src, dst);
/// dev.free(d).unwrap();
/// ```
#[derive(Clone)]
pub struct SimDevice {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("name", &self.inner.config.name)
            .field("capacity", &self.inner.config.capacity)
            .finish()
    }
}

impl SimDevice {
    /// A new device with the given configuration.
    pub fn new(config: SimConfig) -> SimDevice {
        let links = config.bandwidth.map(|bw| {
            let link = |b: f64| Link {
                bytes_per_sec: b,
                busy_until: Mutex::new(Instant::now()),
                log: Mutex::new(Default::default()),
            };
            [link(bw.h2d), link(bw.d2h), link(bw.d2d)]
        });
        let enabled = config.race_mode != RaceMode::Off;
        // Cache freed physical memory up to half the capacity (at most 4 GiB of host memory).
        let cache_limit = (config.capacity / 2).min(4 << 30);
        let mut streams = HashMap::new();
        // The NULL stream: legacy default stream semantics.
        streams.insert(0, Stream::new(0, true));
        SimDevice {
            inner: Arc::new(Inner {
                config,
                memory: Mutex::new(Memory::new(cache_limit)),
                host: Mutex::new(HostMemory::default()),
                streams: RwLock::new(streams),
                events: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                checker: Mutex::new(Checker::new(enabled)),
                faults: Mutex::new(HashMap::new()),
                links,
                pinned_bytes: AtomicU64::new(0),
                counters: Mutex::new(SimCounters::default()),
            }),
        }
    }

    /// The configuration the device was made with.
    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    /// `(free, total)` bytes of device memory.
    pub fn mem_info(&self) -> (u64, u64) {
        let used = self
            .inner
            .memory
            .lock()
            .expect("memory lock")
            .used
            .load(Ordering::SeqCst);
        let cap = self.inner.config.capacity;
        (cap.saturating_sub(used), cap)
    }

    /// Counters of copies, launches and allocations so far.
    pub fn counters(&self) -> SimCounters {
        self.inner.counters.lock().expect("counters lock").clone()
    }

    /// The intervals the bandwidth model reserved on a link, oldest first, as (start, end)
    /// instants: how the model scheduled the copies, independent of how busy the host was.
    /// Empty without a bandwidth model.
    pub fn link_intervals(&self, dir: LinkDir) -> Vec<(Instant, Instant)> {
        let d = match dir {
            LinkDir::HostToDevice => Dir::H2D,
            LinkDir::DeviceToHost => Dir::D2H,
            LinkDir::DeviceToDevice => Dir::D2D,
        };
        self.link(d)
            .map(|l| {
                l.log
                    .lock()
                    .expect("link log lock")
                    .iter()
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- fault injection -------------------------------------------------------------------

    /// Makes the `nth` (1-based) next call of `op` fail, counting from now. Several faults may
    /// be planted for one operation.
    pub fn inject_fault(&self, op: FaultOp, nth: u64) {
        let mut f = self.inner.faults.lock().expect("faults lock");
        let e = f.entry(op).or_insert((0, Vec::new()));
        let at = e.0 + nth.max(1);
        e.1.push(at);
    }

    /// Removes all planted faults.
    pub fn clear_faults(&self) {
        self.inner.faults.lock().expect("faults lock").clear();
    }

    /// How many calls of `op` have been made since the device was created.
    pub fn calls(&self, op: FaultOp) -> u64 {
        self.inner
            .faults
            .lock()
            .expect("faults lock")
            .get(&op)
            .map(|e| e.0)
            .unwrap_or(0)
    }

    fn fault(&self, op: FaultOp) -> SimResult<()> {
        let mut f = self.inner.faults.lock().expect("faults lock");
        let e = f.entry(op).or_insert((0, Vec::new()));
        e.0 += 1;
        let n = e.0;
        if let Some(i) = e.1.iter().position(|&at| at == n) {
            e.1.swap_remove(i);
            return Err(SimError::InjectedFault { op, nth: n });
        }
        Ok(())
    }

    // ----- the stream-ordering checker -------------------------------------------------------

    /// Violations recorded so far (in [`RaceMode::Record`] and [`RaceMode::Error`]).
    pub fn violations(&self) -> Vec<Violation> {
        self.inner
            .checker
            .lock()
            .expect("checker lock")
            .violations
            .clone()
    }

    /// Returns and clears the recorded violations.
    pub fn take_violations(&self) -> Vec<Violation> {
        std::mem::take(&mut self.inner.checker.lock().expect("checker lock").violations)
    }

    // ----- device memory ---------------------------------------------------------------------

    fn check_capacity(&self, mem: &Memory, len: u64) -> SimResult<()> {
        let used = mem.used.load(Ordering::SeqCst);
        let cap = self.inner.config.capacity;
        if used.checked_add(len).is_none_or(|t| t > cap) {
            return Err(SimError::OutOfMemory {
                requested: len,
                free: cap.saturating_sub(used),
                capacity: cap,
            });
        }
        Ok(())
    }

    fn new_region(&self, len: u64, kind: RegionKind) -> SimResult<u64> {
        if len == 0 {
            return Err(SimError::InvalidValue("allocation of 0 bytes".into()));
        }
        let rounded = len.checked_next_multiple_of(PLAIN_ALIGN).ok_or_else(|| {
            SimError::InvalidValue(format!("allocation of {len} bytes overflows"))
        })?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        self.check_capacity(&mem, rounded)?;
        let phys = Phys::new(rounded as usize, mem.used.clone(), mem.cache.clone())?;
        let va = mem.take_va(rounded, PLAIN_ALIGN);
        let mut maps = std::collections::BTreeMap::new();
        maps.insert(
            va,
            Mapping {
                len: rounded,
                phys,
                phys_off: 0,
                accessible: true,
            },
        );
        mem.regions.insert(
            va,
            Region {
                len: rounded,
                kind,
                maps,
            },
        );
        self.inner
            .counters
            .lock()
            .expect("counters lock")
            .allocations += 1;
        Ok(va)
    }

    /// Allocates `len` bytes of device memory (`cuMemAlloc`).
    pub fn alloc(&self, len: u64) -> SimResult<u64> {
        self.fault(FaultOp::DeviceAlloc)?;
        self.new_region(len, RegionKind::Plain)
    }

    /// Frees an allocation made by [`SimDevice::alloc`] (`cuMemFree`). Like `cudaFree`, this
    /// waits for all work on the device first.
    pub fn free(&self, ptr: u64) -> SimResult<()> {
        {
            let mem = self.inner.memory.lock().expect("memory lock");
            match mem.regions.get(&ptr) {
                Some(r) if r.kind == RegionKind::Plain => {}
                Some(r) if r.kind == RegionKind::Async => {}
                _ => {
                    return Err(SimError::InvalidValue(format!(
                        "{ptr:#x} is not the start of a live device allocation"
                    )))
                }
            }
        }
        self.synchronize()?;
        self.drop_region(ptr, "free");
        Ok(())
    }

    fn drop_region(&self, ptr: u64, what: &str) {
        let region = self
            .inner
            .memory
            .lock()
            .expect("memory lock")
            .regions
            .remove(&ptr);
        if let Some(r) = region {
            self.release_check(Space::Device, ptr, ptr + r.len, what);
        }
    }

    fn release_check(&self, space: Space, start: u64, end: u64, what: &str) {
        let streams = self.inner.streams.read().expect("streams lock");
        let completed = |s: u64| {
            streams
                .get(&s)
                .map(|st| st.shared.completed())
                .unwrap_or(u64::MAX)
        };
        self.inner
            .checker
            .lock()
            .expect("checker lock")
            .release(space, start, end, &completed, what);
    }

    /// Stream-ordered allocation (`cuMemAllocAsync`): usable by work queued on `stream` after
    /// this call.
    pub fn alloc_async(&self, len: u64, stream: u64) -> SimResult<u64> {
        self.stream(stream)?;
        self.fault(FaultOp::DeviceAlloc)?;
        self.new_region(len, RegionKind::Async)
    }

    /// Stream-ordered free (`cuMemFreeAsync`): the memory is released once the work queued on
    /// `stream` before this call has completed.
    pub fn free_async(&self, ptr: u64, stream: u64) -> SimResult<()> {
        {
            let mem = self.inner.memory.lock().expect("memory lock");
            match mem.regions.get(&ptr) {
                Some(r) if r.kind == RegionKind::Async || r.kind == RegionKind::Plain => {}
                _ => {
                    return Err(SimError::InvalidValue(format!(
                        "{ptr:#x} is not the start of a live device allocation"
                    )))
                }
            }
        }
        let len = self.region_len(ptr);
        let dev = self.clone();
        // The free is an operation of the stream that writes (invalidates) the whole range.
        self.enqueue(
            stream,
            "cuMemFreeAsync",
            vec![Access::write(Space::Device, ptr, len)],
            Box::new(move || {
                dev.inner
                    .memory
                    .lock()
                    .expect("memory lock")
                    .regions
                    .remove(&ptr);
                Ok(())
            }),
        )?;
        Ok(())
    }

    fn region_len(&self, ptr: u64) -> u64 {
        self.inner
            .memory
            .lock()
            .expect("memory lock")
            .regions
            .get(&ptr)
            .map(|r| r.len)
            .unwrap_or(0)
    }

    /// The allocation granularity of the virtual-memory calls.
    pub fn granularity(&self) -> u64 {
        self.inner.config.granularity
    }

    fn check_granular(&self, what: &str, v: u64) -> SimResult<()> {
        let g = self.inner.config.granularity;
        if v == 0 || v % g != 0 {
            return Err(SimError::InvalidValue(format!(
                "{what} {v:#x} is not a non-zero multiple of the granularity {g:#x}"
            )));
        }
        Ok(())
    }

    /// Reserves a virtual address range (`cuMemAddressReserve`). `len` must be a multiple of the
    /// granularity; `align` 0 means the granularity.
    pub fn reserve(&self, len: u64, align: u64) -> SimResult<u64> {
        self.fault(FaultOp::Reserve)?;
        self.check_granular("reservation size", len)?;
        let g = self.inner.config.granularity;
        let align = if align == 0 { g } else { align };
        if !align.is_power_of_two() {
            return Err(SimError::InvalidValue(format!(
                "alignment {align} is not a power of two"
            )));
        }
        let mut mem = self.inner.memory.lock().expect("memory lock");
        let va = mem.take_va(len, align.max(g));
        mem.regions.insert(
            va,
            Region {
                len,
                kind: RegionKind::Reservation,
                maps: Default::default(),
            },
        );
        Ok(va)
    }

    /// Frees a reservation (`cuMemAddressFree`). The range must be a whole reservation, and
    /// every mapping in it must have been unmapped first.
    pub fn address_free(&self, va: u64, len: u64) -> SimResult<()> {
        let mut mem = self.inner.memory.lock().expect("memory lock");
        match mem.regions.get(&va) {
            Some(r) if r.kind == RegionKind::Reservation => {
                if r.len != len {
                    return Err(SimError::InvalidValue(format!(
                        "cuMemAddressFree of {va:#x}+{len}: the reservation is {} bytes",
                        r.len
                    )));
                }
                if !r.maps.is_empty() {
                    return Err(SimError::NotPermitted(format!(
                        "reservation {va:#x} still has {} mapping(s); unmap them first",
                        r.maps.len()
                    )));
                }
            }
            _ => {
                return Err(SimError::InvalidValue(format!(
                    "{va:#x} is not the start of a reserved address range"
                )))
            }
        }
        mem.regions.remove(&va);
        Ok(())
    }

    /// Creates physical memory of `len` bytes (`cuMemCreate`); `len` must be a multiple of the
    /// granularity. Returns the allocation handle.
    pub fn create(&self, len: u64) -> SimResult<u64> {
        self.fault(FaultOp::PhysCreate)?;
        self.check_granular("physical allocation size", len)?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        self.check_capacity(&mem, len)?;
        let phys = Phys::new(len as usize, mem.used.clone(), mem.cache.clone())?;
        self.inner
            .counters
            .lock()
            .expect("counters lock")
            .allocations += 1;
        Ok(mem.new_handle(phys))
    }

    /// Releases a physical allocation handle (`cuMemRelease`). The memory itself is freed when
    /// the last mapping of it is unmapped.
    pub fn release(&self, handle: u64) -> SimResult<()> {
        let mut mem = self.inner.memory.lock().expect("memory lock");
        mem.handles.remove(&handle).map(|_| ()).ok_or_else(|| {
            SimError::InvalidValue(format!("{handle:#x} is not a live allocation handle"))
        })
    }

    /// Maps `len` bytes of physical allocation `handle`, from `offset`, at `va` (`cuMemMap`).
    /// The range must lie in a reservation, be granularity-aligned and not already mapped.
    /// The mapping is not accessible until [`SimDevice::set_access`].
    pub fn map(&self, va: u64, len: u64, handle: u64, offset: u64) -> SimResult<()> {
        self.fault(FaultOp::Map)?;
        // cuMemMap: "offset - Offset into the memory represented by handle ... Currently must be
        // zero."
        if offset != 0 {
            return Err(SimError::InvalidValue(format!(
                "cuMemMap offset must be 0, got {offset}"
            )));
        }
        self.check_granular("mapping size", len)?;
        self.check_granular("mapping address", va)?;
        let mut mem = self.inner.memory.lock().expect("memory lock");
        let phys = mem.handles.get(&handle).cloned().ok_or_else(|| {
            SimError::InvalidHandle(format!("{handle:#x} is not a live allocation handle"))
        })?;
        if len > phys.len() as u64 {
            return Err(SimError::InvalidValue(format!(
                "mapping of {len} bytes exceeds the physical allocation of {} bytes",
                phys.len()
            )));
        }
        let (base, region) = mem
            .region_of(va)
            .ok_or_else(|| SimError::InvalidValue(format!("{va:#x} is not in a reserved range")))?;
        if region.kind != RegionKind::Reservation || va + len > base + region.len {
            return Err(SimError::InvalidValue(format!(
                "{va:#x}+{len} does not lie within one reserved range"
            )));
        }
        let overlapping = region
            .maps
            .range(..va + len)
            .next_back()
            .is_some_and(|(&s, m)| s + m.len > va);
        if overlapping {
            return Err(SimError::InvalidValue(format!(
                "{va:#x}+{len} overlaps an existing mapping"
            )));
        }
        let region = mem.regions.get_mut(&base).expect("found above");
        region.maps.insert(
            va,
            Mapping {
                len,
                phys,
                phys_off: 0,
                accessible: false,
            },
        );
        Ok(())
    }

    /// Grants read-write access to the mappings covering `[va, va + len)` (`cuMemSetAccess`).
    /// Every byte of the range must be mapped.
    pub fn set_access(&self, va: u64, len: u64) -> SimResult<()> {
        let mut mem = self.inner.memory.lock().expect("memory lock");
        let (base, _) = mem
            .region_of(va)
            .ok_or_else(|| SimError::InvalidValue(format!("{va:#x} is not in a reserved range")))?;
        let region = mem.regions.get_mut(&base).expect("found above");
        let end = va + len;
        let mut cur = va;
        let keys: Vec<u64> = region.maps.range(..end).map(|(&k, _)| k).collect();
        for k in keys {
            let m = region.maps.get_mut(&k).expect("key from map");
            if k + m.len <= va {
                continue;
            }
            if k > cur {
                break;
            }
            m.accessible = true;
            cur = k + m.len;
        }
        if cur < end {
            return Err(SimError::InvalidValue(format!(
                "cuMemSetAccess: {cur:#x} in {va:#x}+{len} is not mapped"
            )));
        }
        Ok(())
    }

    /// Unmaps `[va, va + len)` (`cuMemUnmap`), which must consist of whole mappings.
    pub fn unmap(&self, va: u64, len: u64) -> SimResult<()> {
        {
            let mut mem = self.inner.memory.lock().expect("memory lock");
            let (base, region) = mem.region_of(va).ok_or_else(|| {
                SimError::InvalidValue(format!("{va:#x} is not in a reserved range"))
            })?;
            if region.kind != RegionKind::Reservation {
                return Err(SimError::InvalidValue(format!(
                    "{va:#x} is a plain allocation, not a mapping"
                )));
            }
            // cuMemUnmap: "The range must be the entire contiguous address range that was
            // mapped to."
            let end = va + len;
            let mut cur = va;
            let mut keys = Vec::new();
            for (&k, m) in region.maps.range(va..end) {
                if k != cur || k + m.len > end {
                    break;
                }
                keys.push(k);
                cur = k + m.len;
            }
            if cur != end || keys.is_empty() {
                return Err(SimError::InvalidValue(format!(
                    "cuMemUnmap of {va:#x}+{len} does not cover whole mappings"
                )));
            }
            let region = mem.regions.get_mut(&base).expect("found above");
            for k in keys {
                region.maps.remove(&k);
            }
        }
        self.release_check(Space::Device, va, va + len, "cuMemUnmap");
        Ok(())
    }

    // ----- pinned host memory ----------------------------------------------------------------

    /// Allocates page-locked host memory (`cuMemHostAlloc`).
    pub fn host_alloc(&self, len: u64) -> SimResult<*mut u8> {
        self.fault(FaultOp::HostAlloc)?;
        let p = self.inner.host.lock().expect("host lock").alloc(len)?;
        self.inner.pinned_bytes.fetch_add(len, Ordering::SeqCst);
        Ok(p)
    }

    /// Frees memory from [`SimDevice::host_alloc`] (`cuMemFreeHost`).
    pub fn host_free(&self, ptr: *mut u8) -> SimResult<()> {
        let len = self.inner.host.lock().expect("host lock").free(ptr)?;
        self.release_check(Space::Host, ptr as u64, ptr as u64 + len, "cuMemFreeHost");
        self.inner.pinned_bytes.fetch_sub(len, Ordering::SeqCst);
        Ok(())
    }

    /// Page-locks an existing host range (`cuMemHostRegister`); `read_only` ranges may be read
    /// by the device but never written.
    pub fn host_register(&self, ptr: *const u8, len: u64, read_only: bool) -> SimResult<()> {
        self.fault(FaultOp::HostRegister)?;
        self.inner
            .host
            .lock()
            .expect("host lock")
            .register(ptr as u64, len, read_only)
    }

    /// Unregisters a range registered by [`SimDevice::host_register`] (`cuMemHostUnregister`).
    pub fn host_unregister(&self, ptr: *const u8) -> SimResult<()> {
        let len = self
            .inner
            .host
            .lock()
            .expect("host lock")
            .unregister(ptr as u64)?;
        self.release_check(
            Space::Host,
            ptr as u64,
            ptr as u64 + len,
            "cuMemHostUnregister",
        );
        Ok(())
    }

    /// How the device sees `[ptr, ptr + len)`.
    pub fn host_kind(&self, ptr: *const u8, len: u64) -> HostKind {
        self.inner
            .host
            .lock()
            .expect("host lock")
            .kind(ptr as u64, len)
    }

    // ----- streams and events ----------------------------------------------------------------

    fn stream(&self, id: u64) -> SimResult<Arc<Stream>> {
        self.inner
            .streams
            .read()
            .expect("streams lock")
            .get(&id)
            .cloned()
            .ok_or_else(|| SimError::InvalidHandle(format!("stream {id:#x} does not exist")))
    }

    /// Creates a stream (`cuStreamCreate`). A `blocking` stream synchronises with the NULL
    /// stream (id 0) as CUDA's legacy default stream does; pass `false` for
    /// `CU_STREAM_NON_BLOCKING`.
    pub fn stream_create(&self, blocking: bool) -> SimResult<u64> {
        self.fault(FaultOp::StreamCreate)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let s = Stream::new(id, blocking);
        self.inner
            .streams
            .write()
            .expect("streams lock")
            .insert(id, s);
        Ok(id)
    }

    /// Destroys a stream (`cuStreamDestroy`). Work already queued still runs.
    pub fn stream_destroy(&self, id: u64) -> SimResult<()> {
        if id == 0 {
            return Err(SimError::InvalidHandle(
                "the NULL stream cannot be destroyed".into(),
            ));
        }
        let s = self
            .inner
            .streams
            .write()
            .expect("streams lock")
            .remove(&id)
            .ok_or_else(|| SimError::InvalidHandle(format!("stream {id:#x} does not exist")))?;
        s.detach();
        Ok(())
    }

    /// Waits for all work queued on `stream` (`cuStreamSynchronize`).
    pub fn stream_synchronize(&self, stream: u64) -> SimResult<()> {
        let s = self.stream(stream)?;
        let seq = s.submit.lock().expect("submit lock").seq;
        s.shared.wait_for(seq);
        let clock = self
            .inner
            .checker
            .lock()
            .expect("checker lock")
            .clock_of(stream);
        self.inner
            .checker
            .lock()
            .expect("checker lock")
            .host_observed(&clock);
        let err = s
            .shared
            .progress
            .lock()
            .expect("progress lock")
            .error
            .take();
        err.map_or(Ok(()), Err)
    }

    /// `Ok(true)` when all work on `stream` has completed (`cuStreamQuery`).
    pub fn stream_query(&self, stream: u64) -> SimResult<bool> {
        let s = self.stream(stream)?;
        let seq = s.submit.lock().expect("submit lock").seq;
        let mut p = s.shared.progress.lock().expect("progress lock");
        if let Some(e) = p.error.take() {
            return Err(e);
        }
        Ok(p.completed >= seq)
    }

    /// Waits for all work on all streams (`cuCtxSynchronize`).
    pub fn synchronize(&self) -> SimResult<()> {
        let ids: Vec<u64> = self
            .inner
            .streams
            .read()
            .expect("streams lock")
            .keys()
            .copied()
            .collect();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.stream_synchronize(id) {
                if !matches!(e, SimError::InvalidHandle(_)) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Creates an event (`cuEventCreate`); `timing` enables [`SimDevice::event_elapsed_ms`].
    pub fn event_create(&self, timing: bool) -> SimResult<u64> {
        self.fault(FaultOp::EventCreate)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        self.inner.events.lock().expect("events lock").insert(
            id,
            EventState {
                point: None,
                time: Arc::new(Mutex::new(None)),
                timing,
            },
        );
        Ok(id)
    }

    /// Destroys an event (`cuEventDestroy`).
    pub fn event_destroy(&self, event: u64) -> SimResult<()> {
        self.inner
            .events
            .lock()
            .expect("events lock")
            .remove(&event)
            .map(|_| ())
            .ok_or_else(|| SimError::InvalidHandle(format!("event {event:#x} does not exist")))
    }

    /// Records `event` at the current end of `stream` (`cuEventRecord`).
    pub fn event_record(&self, event: u64, stream: u64) -> SimResult<()> {
        if !self
            .inner
            .events
            .lock()
            .expect("events lock")
            .contains_key(&event)
        {
            return Err(SimError::InvalidHandle(format!(
                "event {event:#x} does not exist"
            )));
        }
        let fresh = Arc::new(Mutex::new(None::<Instant>));
        let marker = fresh.clone();
        let s = self.stream(stream)?;
        let seq = self.enqueue(
            stream,
            "cuEventRecord",
            Vec::new(),
            Box::new(move || {
                *marker.lock().expect("event time lock") = Some(Instant::now());
                Ok(())
            }),
        )?;
        let clock = self
            .inner
            .checker
            .lock()
            .expect("checker lock")
            .clock_of(stream);
        let mut ev = self.inner.events.lock().expect("events lock");
        if let Some(e) = ev.get_mut(&event) {
            e.point = Some(EventPoint {
                stream: s.shared.clone(),
                seq,
                clock,
            });
            e.time = fresh;
        }
        Ok(())
    }

    fn event_point(&self, event: u64) -> SimResult<Option<EventPoint>> {
        let ev = self.inner.events.lock().expect("events lock");
        let e = ev
            .get(&event)
            .ok_or_else(|| SimError::InvalidHandle(format!("event {event:#x} does not exist")))?;
        Ok(e.point.clone())
    }

    /// `Ok(true)` when the work before the event's latest record has completed, or it was never
    /// recorded (`cuEventQuery`).
    pub fn event_query(&self, event: u64) -> SimResult<bool> {
        Ok(match self.event_point(event)? {
            None => true,
            Some(p) => p.stream.completed() >= p.seq,
        })
    }

    /// Waits for the event's latest record to complete (`cuEventSynchronize`).
    pub fn event_synchronize(&self, event: u64) -> SimResult<()> {
        if let Some(p) = self.event_point(event)? {
            p.stream.wait_for(p.seq);
            self.inner
                .checker
                .lock()
                .expect("checker lock")
                .host_observed(&p.clock);
        }
        Ok(())
    }

    /// Makes future work on `stream` wait for the event's latest record (`cuStreamWaitEvent`).
    pub fn stream_wait_event(&self, stream: u64, event: u64) -> SimResult<()> {
        let point = self.event_point(event)?;
        let Some(p) = point else { return Ok(()) };
        let clock = p.clock.clone();
        let s = self.stream(stream)?;
        // Hold the submission lock so the wait is ordered with this stream's other work.
        let mut sub = s.submit.lock().expect("submit lock");
        self.inner
            .checker
            .lock()
            .expect("checker lock")
            .wait(stream, &clock);
        sub.seq += 1;
        let seq = sub.seq;
        sub.send(
            seq,
            Box::new(move || {
                p.stream.wait_for(p.seq);
                Ok(())
            }),
        );
        Ok(())
    }

    /// Milliseconds between two completed timing events (`cuEventElapsedTime`).
    pub fn event_elapsed_ms(&self, start: u64, end: u64) -> SimResult<f32> {
        let get = |id: u64| -> SimResult<Instant> {
            let ev = self.inner.events.lock().expect("events lock");
            let e = ev
                .get(&id)
                .ok_or_else(|| SimError::InvalidHandle(format!("event {id:#x} does not exist")))?;
            if !e.timing {
                return Err(SimError::InvalidHandle(format!(
                    "event {id:#x} was created with timing disabled"
                )));
            }
            if e.point.is_none() {
                return Err(SimError::InvalidHandle(format!(
                    "event {id:#x} was never recorded"
                )));
            }
            let t = *e.time.lock().expect("event time lock");
            t.ok_or(SimError::NotReady)
        };
        let (a, b) = (get(start)?, get(end)?);
        Ok(if b >= a {
            (b - a).as_secs_f32() * 1e3
        } else {
            -((a - b).as_secs_f32() * 1e3)
        })
    }

    /// Queues `job` on `stream` after checking its accesses; returns its sequence number.
    fn enqueue(
        &self,
        stream: u64,
        op: &'static str,
        accesses: Vec<Access>,
        job: Job,
    ) -> SimResult<u64> {
        let s = self.stream(stream)?;
        // Legacy default stream: the NULL stream waits for every blocking stream, and a blocking
        // stream waits for the NULL stream.
        let mut deps: Vec<(Arc<Stream>, u64)> = Vec::new();
        if stream == 0 {
            for (id, other) in self.inner.streams.read().expect("streams lock").iter() {
                if *id != 0 && other.blocking {
                    let seq = other.submit.lock().expect("submit lock").seq;
                    deps.push((other.clone(), seq));
                }
            }
        } else if s.blocking {
            let null = self.stream(0)?;
            let seq = null.submit.lock().expect("submit lock").seq;
            deps.push((null, seq));
        }
        let mut sub = s.submit.lock().expect("submit lock");
        let seq = sub.seq + 1;
        {
            let mut checker = self.inner.checker.lock().expect("checker lock");
            for (d, _) in &deps {
                let id = self.stream_id_of(d);
                let c = checker.clock_of(id);
                checker.wait(stream, &c);
            }
            let found = checker.enqueue(stream, seq, op, &accesses);
            if self.inner.config.race_mode == RaceMode::Error && !found.is_empty() {
                let msg = found[0].message.clone();
                checker.forget_last(accesses.len());
                return Err(SimError::Race(msg));
            }
        }
        sub.seq = seq;
        let job: Job = if deps.is_empty() {
            job
        } else {
            let deps: Vec<_> = deps
                .into_iter()
                .map(|(d, n)| (d.shared.clone(), n))
                .collect();
            Box::new(move || {
                for (d, n) in deps {
                    d.wait_for(n);
                }
                job()
            })
        };
        sub.send(seq, job);
        Ok(seq)
    }

    fn stream_id_of(&self, s: &Arc<Stream>) -> u64 {
        self.inner
            .streams
            .read()
            .expect("streams lock")
            .iter()
            .find(|(_, v)| Arc::ptr_eq(v, s))
            .map(|(k, _)| *k)
            .unwrap_or(0)
    }

    fn resolve(&self, addr: u64, len: u64) -> SimResult<Vec<Segment>> {
        self.inner
            .memory
            .lock()
            .expect("memory lock")
            .resolve(addr, len)
    }

    fn link(&self, dir: Dir) -> Option<&Link> {
        self.inner.links.as_ref().map(|l| match dir {
            Dir::H2D => &l[0],
            Dir::D2H => &l[1],
            Dir::D2D => &l[2],
        })
    }

    /// Runs a copy job on the stream; synchronously (waiting for completion) when `sync`.
    fn submit_copy(&self, stream: u64, copy: CopyJob) -> SimResult<()> {
        let CopyJob {
            op,
            accesses,
            dir,
            bytes,
            pageable,
            body,
        } = copy;
        let factor = if pageable {
            self.inner
                .config
                .bandwidth
                .map(|b| b.pageable_factor)
                .unwrap_or(1.0)
        } else {
            1.0
        };
        let dev = self.clone();
        let job: Job = Box::new(move || {
            // The link is reserved when the copy starts, so a copy takes the longer of its
            // modelled transfer time and the host memcpy, not their sum.
            let end = dev.link(dir).map(|link| link.reserve(bytes, factor));
            body();
            if let Some(end) = end {
                sleep_until(end);
            }
            Ok(())
        });
        let seq = self.enqueue(stream, op, accesses, job)?;
        {
            let mut c = self.inner.counters.lock().expect("counters lock");
            match dir {
                Dir::H2D => {
                    c.copies_h2d += 1;
                    c.bytes_h2d += bytes;
                }
                Dir::D2H => {
                    c.copies_d2h += 1;
                    c.bytes_d2h += bytes;
                }
                Dir::D2D => c.copies_d2d += 1,
            }
            if pageable {
                c.pageable_copies += 1;
            }
        }
        if pageable {
            // "For transfers from pageable host memory to device memory, ... the function will
            // return once the pageable buffer has been copied" and device-to-pageable copies are
            // synchronous (CUDA Runtime/Driver API, "API synchronization behavior").
            let s = self.stream(stream)?;
            s.shared.wait_for(seq);
            let clock = self
                .inner
                .checker
                .lock()
                .expect("checker lock")
                .clock_of(stream);
            self.inner
                .checker
                .lock()
                .expect("checker lock")
                .host_observed(&clock);
        }
        Ok(())
    }

    /// Copies `len` bytes from host `src` to device `dst` on `stream` (`cuMemcpyHtoDAsync`).
    /// From pinned memory the copy is asynchronous; from pageable memory it completes before
    /// this returns.
    ///
    /// # Safety
    /// `src` must be valid for reads of `len` bytes until the copy has completed (for pinned
    /// memory: until the stream has passed this operation).
    pub unsafe fn copy_htod(
        &self,
        dst: u64,
        src: *const u8,
        len: u64,
        stream: u64,
    ) -> SimResult<()> {
        self.fault(FaultOp::Copy)?;
        if len == 0 {
            return Ok(());
        }
        if src.is_null() {
            return Err(SimError::InvalidValue("null host pointer".into()));
        }
        let segs = self.resolve(dst, len)?;
        let kind = self.host_kind(src, len);
        let pageable = kind == HostKind::Pageable;
        let mut acc = vec![Access::write(Space::Device, dst, len)];
        if !pageable {
            acc.push(Access::read(Space::Host, src as u64, len));
        }
        let src = src as usize;
        self.submit_copy(
            stream,
            CopyJob {
                op: "copy host-to-device",
                accesses: acc,
                dir: Dir::H2D,
                bytes: len,
                pageable,
                body: Box::new(move || {
                    let mut off = 0usize;
                    for s in segs {
                        // SAFETY: the caller keeps `src` valid for `len` bytes until the copy runs;
                        // `s` stays inside its physical allocation (resolved above).
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                (src as *const u8).add(off),
                                s.phys.bytes_ptr(s.off, s.len),
                                s.len,
                            )
                        };
                        off += s.len;
                    }
                }),
            },
        )
    }

    /// Copies `len` bytes from device `src` to host `dst` on `stream` (`cuMemcpyDtoHAsync`).
    ///
    /// # Safety
    /// `dst` must be valid for writes of `len` bytes until the copy has completed, and not be
    /// accessed by the host in the meantime.
    pub unsafe fn copy_dtoh(&self, dst: *mut u8, src: u64, len: u64, stream: u64) -> SimResult<()> {
        self.fault(FaultOp::Copy)?;
        if len == 0 {
            return Ok(());
        }
        if dst.is_null() {
            return Err(SimError::InvalidValue("null host pointer".into()));
        }
        let segs = self.resolve(src, len)?;
        let kind = self.host_kind(dst, len);
        if kind == HostKind::PinnedReadOnly {
            // CU_MEMHOSTREGISTER_READ_ONLY: "the memory ... will be considered read-only by the
            // device"; a device write to it faults.
            return Err(SimError::NotPermitted(format!(
                "device-to-host copy into read-only registered memory {dst:p}"
            )));
        }
        let pageable = kind == HostKind::Pageable;
        let mut acc = vec![Access::read(Space::Device, src, len)];
        if !pageable {
            acc.push(Access::write(Space::Host, dst as u64, len));
        }
        let dst = dst as usize;
        self.submit_copy(
            stream,
            CopyJob {
                op: "copy device-to-host",
                accesses: acc,
                dir: Dir::D2H,
                bytes: len,
                pageable,
                body: Box::new(move || {
                    let mut off = 0usize;
                    for s in segs {
                        // SAFETY: the caller keeps `dst` valid for `len` bytes until the copy runs.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                s.phys.bytes_ptr(s.off, s.len),
                                (dst as *mut u8).add(off),
                                s.len,
                            )
                        };
                        off += s.len;
                    }
                }),
            },
        )
    }

    /// Copies `len` bytes between device ranges on `stream` (`cuMemcpyDtoDAsync`).
    pub fn copy_dtod(&self, dst: u64, src: u64, len: u64, stream: u64) -> SimResult<()> {
        self.fault(FaultOp::Copy)?;
        if len == 0 {
            return Ok(());
        }
        let from = self.resolve(src, len)?;
        let to = self.resolve(dst, len)?;
        let acc = vec![
            Access::read(Space::Device, src, len),
            Access::write(Space::Device, dst, len),
        ];
        self.submit_copy(
            stream,
            CopyJob {
                op: "copy device-to-device",
                accesses: acc,
                dir: Dir::D2D,
                bytes: len,
                pageable: false,
                body: Box::new(move || copy_segments(&from, &to)),
            },
        )
    }

    /// Sets `len` bytes at `dst` to `value` on `stream` (`cuMemsetD8Async`).
    pub fn memset_d8(&self, dst: u64, value: u8, len: u64, stream: u64) -> SimResult<()> {
        self.fault(FaultOp::Memset)?;
        if len == 0 {
            return Ok(());
        }
        let to = self.resolve(dst, len)?;
        self.enqueue(
            stream,
            "memset",
            vec![Access::write(Space::Device, dst, len)],
            Box::new(move || {
                for s in to {
                    // SAFETY: the segment lies inside its physical allocation.
                    unsafe { std::ptr::write_bytes(s.phys.bytes_ptr(s.off, s.len), value, s.len) };
                }
                Ok(())
            }),
        )?;
        Ok(())
    }

    /// What is still allocated, mapped, pinned or registered.
    pub fn leaks(&self) -> LeakReport {
        let mem = self.inner.memory.lock().expect("memory lock");
        let mut r = LeakReport {
            device_bytes: mem.used.load(Ordering::SeqCst),
            physical_handles: mem.handles.len() as u64,
            ..Default::default()
        };
        for region in mem.regions.values() {
            match region.kind {
                RegionKind::Plain | RegionKind::Async => r.allocations += 1,
                RegionKind::Reservation => {
                    r.reservations += 1;
                    r.mappings += region.maps.len() as u64;
                }
            }
        }
        drop(mem);
        let host = self.inner.host.lock().expect("host lock");
        for range in host.ranges.values() {
            if range.layout.is_some() {
                r.pinned_bytes += range.len;
            } else {
                r.registered_ranges += 1;
            }
        }
        drop(host);
        r.streams = self.inner.streams.read().expect("streams lock").len() as u64 - 1;
        r.events = self.inner.events.lock().expect("events lock").len() as u64;
        r
    }
}

/// Copies the bytes of `from` into `to` (both covering the same number of bytes), piece by
/// piece, with `memmove` semantics where a source and destination piece share memory.
fn copy_segments(from: &[Segment], to: &[Segment]) {
    let (mut i, mut io) = (0usize, 0usize);
    let (mut j, mut jo) = (0usize, 0usize);
    while i < from.len() && j < to.len() {
        let n = (from[i].len - io).min(to[j].len - jo);
        // SAFETY: both pieces lie inside their physical allocations (resolved by the caller);
        // `ptr::copy` allows overlap.
        unsafe {
            std::ptr::copy(
                from[i].phys.bytes_ptr(from[i].off + io, n),
                to[j].phys.bytes_ptr(to[j].off + jo, n),
                n,
            )
        };
        io += n;
        jo += n;
        if io == from[i].len {
            i += 1;
            io = 0;
        }
        if jo == to[j].len {
            j += 1;
            jo = 0;
        }
    }
}

fn gather(from: &[Segment], out: &mut [u8]) {
    let mut off = 0;
    for s in from {
        // SAFETY: the segment lies inside its physical allocation; `out` holds the whole range.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.phys.bytes_ptr(s.off, s.len),
                out[off..].as_mut_ptr(),
                s.len,
            )
        };
        off += s.len;
    }
}

fn scatter(data: &[u8], to: &[Segment]) {
    let mut off = 0;
    for s in to {
        // SAFETY: as in `gather`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data[off..].as_ptr(),
                s.phys.bytes_ptr(s.off, s.len),
                s.len,
            )
        };
        off += s.len;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for s in self.streams.write().expect("streams lock").values() {
            s.detach();
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<SimDevice>();
    let _: Option<Clock> = None;
}

#[cfg(test)]
mod link_tests {
    use super::*;

    fn link(now: Instant) -> Link {
        Link {
            bytes_per_sec: 1e9,
            busy_until: Mutex::new(now),
            log: Mutex::new(Default::default()),
        }
    }

    #[test]
    fn copies_on_one_link_queue_and_copies_on_two_links_overlap() {
        let t0 = Instant::now();
        let (up, down) = (link(t0), link(t0));
        let ms = Duration::from_millis;
        // Two uploads asked for at the same moment: the second starts when the first ends.
        assert_eq!(up.reserve_at(t0, 1_000_000, 1.0), t0 + ms(1));
        assert_eq!(up.reserve_at(t0, 1_000_000, 1.0), t0 + ms(2));
        // A download at that moment has its own link: it ends after one transfer time.
        assert_eq!(down.reserve_at(t0, 1_000_000, 1.0), t0 + ms(1));
        // A pageable copy at 40 % of the link takes 2.5 times as long.
        assert_eq!(
            down.reserve_at(t0 + ms(10), 1_000_000, 0.4),
            t0 + ms(10) + Duration::from_micros(2500)
        );
        // An idle link starts a copy when it is asked for, not when it was last busy.
        assert_eq!(up.reserve_at(t0 + ms(50), 1_000_000, 1.0), t0 + ms(51));
    }
}
