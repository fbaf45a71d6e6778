//! The simulated device: memory, streams, events, copies and kernels, with fault injection, a
//! bandwidth model and the stream-ordering checker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Stream and event handles, unique in the process across every simulated device (as a
/// `CUstream` is): a handle from one device is never a valid handle on another.
pub(crate) static NEXT_ID: AtomicU64 = AtomicU64::new(1);

use crate::error::{SimError, SimResult};
use crate::host::HostMemory;
use crate::memory::{Memory, RegionKind};
use crate::race::{Access, Checker, Clock, Violation};
use crate::stream::{EventState, Stream};
use crate::{FaultOp, RaceMode, SimConfig};

mod copies;
mod launch;
mod memory_ops;
mod streams;

use copies::{gather, scatter};

pub use launch::Kernel;

/// Live resources of a device, for leak reports: the one definition of a leak report's fields,
/// serialised as they are named here by the emulator's `VRAMSWAP_EMU_REPORT` and by Python's
/// `Engine.leaks()` (each adding `clean`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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
    /// Copies whose host side was pageable (neither pinned nor registered).
    pub pageable_copies: u64,
    /// Kernel launches.
    pub launches: u64,
    /// Device allocations (plain, async and physical).
    pub allocations: u64,
}

/// Time reservation of one copy direction under the bandwidth model.
pub(crate) struct Link {
    bytes_per_sec: f64,
    busy_until: Mutex<Instant>,
    /// The latest reserved intervals, oldest first (at most `LINK_LOG` of them).
    log: Mutex<std::collections::VecDeque<(Instant, Instant)>>,
    /// The spans of the live [`LinkWatch`]es, each extended by every reservation.
    watches: Mutex<Vec<Weak<Mutex<LinkSpan>>>>,
}

/// How many reserved intervals [`SimDevice::link_intervals`] keeps per link. A measurement that
/// makes more copies than this uses a [`LinkWatch`], which has no such limit.
pub const LINK_LOG: usize = 4096;

/// What the bandwidth model reserved on one link while a [`LinkWatch`] was live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkSpan {
    /// Intervals reserved.
    pub copies: u64,
    /// Start of the first of them.
    pub first_start: Option<Instant>,
    /// End of the last of them (intervals on one link are reserved in order).
    pub last_end: Option<Instant>,
}

impl LinkSpan {
    /// From the first interval's start to the last one's end; `None` when nothing was reserved.
    pub fn busy_span(&self) -> Option<Duration> {
        Some(self.last_end? - self.first_start?)
    }
}

/// Records every interval the bandwidth model reserves on one link from the moment it is made
/// ([`SimDevice::watch_link`]) until it is dropped, however many copies that is.
#[derive(Debug)]
pub struct LinkWatch {
    span: Arc<Mutex<LinkSpan>>,
}

impl LinkWatch {
    /// What was reserved so far.
    pub fn span(&self) -> LinkSpan {
        *self.span.lock().expect("link watch lock")
    }
}

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
        let mut watches = self.watches.lock().expect("link watches lock");
        watches.retain(|w| match w.upgrade() {
            Some(span) => {
                let mut span = span.lock().expect("link watch lock");
                span.copies += 1;
                span.first_start.get_or_insert(start);
                span.last_end = Some(end);
                true
            }
            None => false,
        });
        end
    }

    /// A new watch of this link's reservations.
    fn watch(&self) -> LinkWatch {
        let span = Arc::new(Mutex::new(LinkSpan::default()));
        self.watches
            .lock()
            .expect("link watches lock")
            .push(Arc::downgrade(&span));
        LinkWatch { span }
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
pub(crate) struct CopyJob {
    op: &'static str,
    accesses: Vec<Access>,
    dir: Dir,
    bytes: u64,
    pageable: bool,
    body: Box<dyn FnOnce() + Send>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    H2D,
    D2H,
    D2D,
}

impl Dir {
    fn of(dir: LinkDir) -> Dir {
        match dir {
            LinkDir::HostToDevice => Dir::H2D,
            LinkDir::DeviceToHost => Dir::D2H,
            LinkDir::DeviceToDevice => Dir::D2D,
        }
    }
}

struct Inner {
    config: SimConfig,
    memory: Mutex<Memory>,
    host: Mutex<HostMemory>,
    streams: RwLock<HashMap<u64, Arc<Stream>>>,
    /// Destroyed streams whose queued work may still run, with the sequence number of their
    /// last operation: `cuCtxSynchronize` waits for it too.
    retired: Mutex<Vec<(u64, Arc<Stream>, u64)>>,
    events: Mutex<HashMap<u64, EventState>>,
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
/// // SAFETY: the buffers outlive the copies, which are waited for before `dst` is read.
/// unsafe {
///     dev.copy_htod(d, src.as_ptr(), 1024, 0).unwrap();
///     dev.copy_dtoh(dst.as_mut_ptr(), d, 1024, 0).unwrap();
/// }
/// dev.stream_synchronize(0).unwrap();
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
                watches: Mutex::new(Vec::new()),
            };
            [link(bw.h2d), link(bw.d2h), link(bw.d2d)]
        });
        let enabled = config.race_mode != RaceMode::Off;
        // Cache freed physical memory up to half the capacity (at most 4 GiB of host memory).
        let cache_limit = (config.capacity / 2).min(4 << 30);
        let host_visible = config.host_visible;
        let mut streams = HashMap::new();
        // The NULL stream: legacy default stream semantics.
        streams.insert(0, Stream::new(0, true));
        SimDevice {
            inner: Arc::new(Inner {
                config,
                memory: Mutex::new(Memory::new(cache_limit, host_visible)),
                host: Mutex::new(HostMemory::default()),
                streams: RwLock::new(streams),
                retired: Mutex::new(Vec::new()),
                events: Mutex::new(HashMap::new()),
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

    /// The latest intervals (at most [`LINK_LOG`]) the bandwidth model reserved on a link,
    /// oldest first, as (start, end) instants: how the model scheduled the copies. Empty
    /// without a bandwidth model. Once the log is full each new interval drops the oldest, so
    /// its length stops growing: to time a stretch of work, use [`SimDevice::watch_link`].
    pub fn link_intervals(&self, dir: LinkDir) -> Vec<(Instant, Instant)> {
        self.link(Dir::of(dir))
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

    /// Starts recording what the bandwidth model reserves on a link from now on: the number of
    /// copies and the span from the first one's start to the last one's end, with no limit on
    /// the number of copies. `None` without a bandwidth model.
    pub fn watch_link(&self, dir: LinkDir) -> Option<LinkWatch> {
        self.link(Dir::of(dir)).map(Link::watch)
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
            watches: Mutex::new(Vec::new()),
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

    #[test]
    fn a_watch_sees_every_copy_after_the_log_is_full() {
        let t0 = Instant::now();
        let up = link(t0);
        for _ in 0..LINK_LOG {
            up.reserve_at(t0, 1000, 1.0);
        }
        let w = up.watch();
        let n = 2 * LINK_LOG as u64;
        for _ in 0..n {
            up.reserve_at(t0, 1000, 1.0);
        }
        assert_eq!(up.log.lock().unwrap().len(), LINK_LOG);
        let span = w.span();
        assert_eq!(span.copies, n);
        // Each copy is 1 µs; the watched ones follow the first LINK_LOG on the link.
        let us = Duration::from_micros;
        assert_eq!(span.first_start, Some(t0 + us(LINK_LOG as u64)));
        assert_eq!(span.busy_span(), Some(us(n)));
        // A dropped watch is forgotten by the link.
        drop(w);
        up.reserve_at(t0, 1000, 1.0);
        assert!(up.watches.lock().unwrap().is_empty());
    }
}
