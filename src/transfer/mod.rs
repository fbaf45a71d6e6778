//! Moving bytes between host and device: chunked copies spread over several streams per
//! direction, with an event per chunk, readiness per group of ranges (a model layer), progress
//! counters and optional checksum verification.
//!
//! This module is mechanism only: it moves the bytes it is told to move. What to move and when
//! is the swap engine's business.
//!
//! Uploads and downloads use streams of their own, so a download of one weight set and an
//! upload of another run on both copy engines at once.

mod plan;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, DevicePtr, Event, SharedBackend, Stream};
use crate::error::{Error, Result};

pub use plan::{Chunk, CopyPlan, Group};

/// Settings of the copy engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferConfig {
    /// Bytes per chunk. Chunks are the unit of stream assignment and of progress.
    pub chunk_bytes: u64,
    /// Streams per direction.
    pub streams_per_direction: usize,
    /// Verify every copy with device-side checksums against the source.
    pub verify: bool,
}

impl Default for TransferConfig {
    /// 16 MiB chunks on 2 streams per direction.
    ///
    /// These defaults come from `vramswap bench`'s sweep of chunk size × stream count on the
    /// simulated device's bandwidth model and from the shape of PCIe DMA: chunks of a few MiB
    /// and up reach the single-copy ceiling on real links, and two streams per direction keep a
    /// copy engine busy while the next chunk is queued. They are not yet measured on a GPU;
    /// `vramswap bench --backend cuda` prints the best setting for a machine.
    fn default() -> Self {
        TransferConfig {
            chunk_bytes: 16 << 20,
            streams_per_direction: 2,
            verify: false,
        }
    }
}

impl TransferConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_bytes == 0 {
            return Err(Error::Config {
                key: "chunk_bytes".into(),
                problem: "must be positive".into(),
            });
        }
        if self.streams_per_direction == 0 || self.streams_per_direction > 64 {
            return Err(Error::Config {
                key: "streams_per_direction".into(),
                problem: format!("{} is not in 1..=64", self.streams_per_direction),
            });
        }
        Ok(())
    }
}

/// Which way bytes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Host to device.
    HostToDevice,
    /// Device to host.
    DeviceToHost,
}

/// Owns the copy streams of one device and a pool of events.
#[derive(Debug)]
pub struct CopyEngine {
    backend: SharedBackend,
    config: TransferConfig,
    up: Vec<Stream>,
    down: Vec<Stream>,
    events: Mutex<Vec<Event>>,
    next_up: AtomicU64,
    next_down: AtomicU64,
}

impl CopyEngine {
    /// Creates the copy streams.
    pub fn new(backend: SharedBackend, config: TransferConfig) -> Result<CopyEngine> {
        config.validate()?;
        let mut made = Vec::new();
        let mut make = |n: usize| -> Result<Vec<Stream>> {
            (0..n)
                .map(|_| {
                    let s = backend.stream_create()?;
                    made.push(s);
                    Ok(s)
                })
                .collect()
        };
        let streams = make(config.streams_per_direction)
            .and_then(|up| Ok((up, make(config.streams_per_direction)?)));
        let (up, down) = match streams {
            Ok(v) => v,
            Err(e) => {
                for s in made {
                    let _ = backend.stream_destroy(s);
                }
                return Err(e);
            }
        };
        Ok(CopyEngine {
            backend,
            config,
            up,
            down,
            events: Mutex::new(Vec::new()),
            next_up: AtomicU64::new(0),
            next_down: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &TransferConfig {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.backend
    }

    /// The streams of a direction.
    pub fn streams(&self, dir: Direction) -> &[Stream] {
        match dir {
            Direction::HostToDevice => &self.up,
            Direction::DeviceToHost => &self.down,
        }
    }

    fn take_event(&self) -> Result<Event> {
        if let Some(e) = self.events.lock().expect("event pool lock").pop() {
            return Ok(e);
        }
        self.backend.event_create(true)
    }

    fn return_events(&self, evs: impl IntoIterator<Item = Event>) {
        self.events.lock().expect("event pool lock").extend(evs);
    }

    /// Starts copying per `plan` between the host bytes `host` and `device` in direction `dir`,
    /// and returns at once with a [`Transfer`] that tracks the chunks. `host` lists where each
    /// range of the set lives on the host (one piece for an arena range, one per file for
    /// mapped files); a chunk that spans pieces is copied in several calls.
    ///
    /// The first stream used rotates between calls, so concurrent transfers in one direction
    /// spread over the streams.
    ///
    /// # Safety
    /// Every piece must be valid for its `len` bytes (reads for uploads, writes for downloads,
    /// untouched by the host meanwhile) until the returned transfer has completed or been
    /// dropped (dropping waits for it).
    pub unsafe fn start(
        self: &Arc<Self>,
        dir: Direction,
        host: &[HostPiece],
        device: DevicePtr,
        plan: &CopyPlan,
    ) -> Result<Transfer> {
        let streams = self.streams(dir);
        let rot = match dir {
            Direction::HostToDevice => &self.next_up,
            Direction::DeviceToHost => &self.next_down,
        };
        let first = rot.fetch_add(1, Ordering::Relaxed) as usize;
        let mut t = Transfer {
            engine: self.clone(),
            dir,
            device,
            chunks: Vec::with_capacity(plan.chunks.len()),
            groups: plan.groups.clone(),
            total_bytes: plan.total_bytes(),
            done_upto: AtomicU64::new(0),
            failed: None,
            start_event: None,
        };
        // A timing event ahead of the first chunk, for the copy's device time.
        if let Ok(ev) = self.take_event() {
            if self
                .backend
                .event_record(ev, streams[first % streams.len()])
                .is_ok()
            {
                t.start_event = Some(ev);
            } else {
                self.return_events([ev]);
            }
        }
        for (i, c) in plan.chunks.iter().enumerate() {
            let s = streams[(first + i) % streams.len()];
            let ev = match self.take_event() {
                Ok(e) => e,
                Err(e) => {
                    t.failed = Some(e.to_string());
                    return Err(e);
                }
            };
            // SAFETY: the caller keeps the pieces valid until the transfer completes.
            let r = unsafe { self.copy_chunk(dir, host, device, c, s) }
                .and_then(|_| self.backend.event_record(ev, s));
            if let Err(e) = r {
                self.return_events([ev]);
                // Pieces of this chunk may already be queued with no event after them: wait for
                // this stream so nothing of the failed chunk is still running when the caller
                // gets the error. Earlier chunks are waited for by `t`'s drop. The destination
                // is invalid: the caller must not use it.
                let _ = self.backend.stream_synchronize(s);
                t.failed = Some(e.to_string());
                return Err(e);
            }
            t.chunks.push(ChunkState {
                group: c.group,
                len: c.len,
                event: ev,
                stream: s,
            });
        }
        Ok(t)
    }

    /// Queues the copies of one chunk, split where host pieces end.
    ///
    /// # Safety
    /// As for [`CopyEngine::start`].
    unsafe fn copy_chunk(
        &self,
        dir: Direction,
        host: &[HostPiece],
        device: DevicePtr,
        c: &Chunk,
        s: Stream,
    ) -> Result<()> {
        let mut off = c.offset;
        let end = c.offset + c.len;
        while off < end {
            let p = host
                .iter()
                .find(|p| p.offset <= off && off < p.offset + p.len)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("no host piece holds byte {off} of the set"))
                })?;
            let n = end.min(p.offset + p.len) - off;
            // SAFETY: `off` lies in piece `p`, and `n` stays inside it.
            let h = unsafe { p.ptr.add((off - p.offset) as usize) };
            let d = device.offset(off);
            // SAFETY: the caller keeps the piece valid until the transfer completes.
            unsafe {
                match dir {
                    Direction::HostToDevice => self.backend.copy_htod_async(d, h, n, s)?,
                    Direction::DeviceToHost => self.backend.copy_dtoh_async(h, d, n, s)?,
                }
            }
            off += n;
        }
        Ok(())
    }
}

/// Where a range of a set lives on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPiece {
    /// Offset of the piece within the set.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
    /// Host address of the piece's first byte.
    pub ptr: *mut u8,
}

impl HostPiece {
    /// The whole set `[0, len)` at `ptr`.
    pub fn whole(ptr: *mut u8, len: u64) -> [HostPiece; 1] {
        [HostPiece {
            offset: 0,
            len,
            ptr,
        }]
    }
}

impl Drop for CopyEngine {
    fn drop(&mut self) {
        for s in self.up.iter().chain(&self.down) {
            let _ = self.backend.stream_synchronize(*s);
            let _ = self.backend.stream_destroy(*s);
        }
        for e in self.events.get_mut().expect("event pool lock").drain(..) {
            let _ = self.backend.event_destroy(e);
        }
    }
}

#[derive(Debug)]
struct ChunkState {
    group: usize,
    len: u64,
    event: Event,
    stream: Stream,
}

/// A copy in flight. Dropping it waits for the queued chunks (so the buffers it uses are free
/// again) and returns its events to the pool.
#[derive(Debug)]
pub struct Transfer {
    engine: Arc<CopyEngine>,
    dir: Direction,
    device: DevicePtr,
    chunks: Vec<ChunkState>,
    groups: Vec<Group>,
    total_bytes: u64,
    /// Index of the first chunk not yet known complete (chunks complete in order per stream,
    /// not globally, so this only advances over a prefix that is).
    done_upto: AtomicU64,
    failed: Option<String>,
    start_event: Option<Event>,
}

impl Transfer {
    /// Direction of the copy.
    pub fn direction(&self) -> Direction {
        self.dir
    }

    /// Bytes the transfer moves.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The groups (layers) of the plan.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    fn backend(&self) -> &dyn Backend {
        self.engine.backend.as_ref()
    }

    /// Bytes known to have arrived (queries events; never blocks).
    pub fn bytes_done(&self) -> Result<u64> {
        let mut i = self.done_upto.load(Ordering::Acquire) as usize;
        while i < self.chunks.len() && self.backend().event_query(self.chunks[i].event)? {
            i += 1;
        }
        self.done_upto.store(i as u64, Ordering::Release);
        let mut bytes: u64 = self.chunks[..i].iter().map(|c| c.len).sum();
        // Chunks past the prefix may be done too (other streams).
        for c in &self.chunks[i..] {
            if self.backend().event_query(c.event)? {
                bytes += c.len;
            }
        }
        Ok(bytes)
    }

    /// True when every chunk has arrived.
    pub fn is_complete(&self) -> Result<bool> {
        Ok(self.bytes_done()? == self.total_bytes)
    }

    /// True when every chunk of group `g` has arrived.
    pub fn is_group_ready(&self, g: usize) -> Result<bool> {
        for c in self.chunks.iter().filter(|c| c.group == g) {
            if !self.backend().event_query(c.event)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Blocks until group `g` has arrived.
    pub fn wait_group(&self, g: usize) -> Result<()> {
        for c in self.chunks.iter().filter(|c| c.group == g) {
            self.backend().event_synchronize(c.event)?;
        }
        Ok(())
    }

    /// Blocks until everything has arrived.
    pub fn wait(&self) -> Result<()> {
        // One synchronisation per stream used suffices: each stream runs in order.
        let mut last: Vec<(Stream, Event)> = Vec::new();
        for c in &self.chunks {
            match last.iter_mut().find(|(s, _)| *s == c.stream) {
                Some(e) => e.1 = c.event,
                None => last.push((c.stream, c.event)),
            }
        }
        for (_, e) in last {
            self.backend().event_synchronize(e)?;
        }
        self.done_upto
            .store(self.chunks.len() as u64, Ordering::Release);
        Ok(())
    }

    /// Makes later work on `stream` wait for group `g` (or everything, with `None`) without
    /// blocking the host: how a compute stream consumes weights as they arrive.
    pub fn order_before(&self, stream: Stream, g: Option<usize>) -> Result<()> {
        let mut last: Vec<(Stream, Event)> = Vec::new();
        for c in self
            .chunks
            .iter()
            .filter(|c| g.is_none_or(|g| c.group == g))
        {
            match last.iter_mut().find(|(s, _)| *s == c.stream) {
                Some(e) => e.1 = c.event,
                None => last.push((c.stream, c.event)),
            }
        }
        for (_, e) in last {
            self.engine.backend.stream_wait_event(stream, e)?;
        }
        Ok(())
    }

    /// Waits for the copy, then checks it: the device-side checksum of every group against
    /// `expected[g]` (host checksums of the source, see [`host_checksums`]).
    pub fn verify(&self, expected: &[u64], stream: Stream) -> Result<()> {
        self.wait()?;
        if expected.len() != self.groups.len() {
            return Err(Error::InvalidArgument(format!(
                "{} checksums for {} groups",
                expected.len(),
                self.groups.len()
            )));
        }
        for (g, want) in self.groups.iter().zip(expected) {
            let got = crate::backend::checksum(
                self.backend(),
                self.device.offset(g.offset),
                g.len,
                stream,
            )?;
            if got != *want {
                return Err(Error::ChecksumMismatch {
                    what: format!(
                        "group `{}` ({} bytes at {})",
                        g.name,
                        g.len,
                        self.device.offset(g.offset)
                    ),
                    expected: *want,
                    actual: got,
                });
            }
        }
        Ok(())
    }

    /// Device time of the whole copy in milliseconds, from just before the first chunk to the
    /// last chunk's completion on any stream (waits for the copy). `None` when no timing event
    /// could be recorded.
    pub fn elapsed_ms(&self) -> Result<Option<f32>> {
        self.wait()?;
        let Some(start) = self.start_event else {
            return Ok(None);
        };
        let mut worst: Option<f32> = None;
        let mut seen: Vec<Stream> = Vec::new();
        for c in self.chunks.iter().rev() {
            if seen.contains(&c.stream) {
                continue;
            }
            seen.push(c.stream);
            let ms = self.backend().event_elapsed_ms(start, c.event)?;
            worst = Some(worst.map_or(ms, |w: f32| w.max(ms)));
        }
        Ok(worst.or(Some(0.0)))
    }

    /// The error that stopped the transfer from being queued whole, if one did. A failed
    /// transfer's destination holds partial data and must not be used.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let _ = self.wait();
        self.engine
            .return_events(self.chunks.drain(..).map(|c| c.event));
        if let Some(ev) = self.start_event.take() {
            let _ = self.backend().event_synchronize(ev);
            self.engine.return_events([ev]);
        }
    }
}

/// Checksums of each group's bytes in `host` (computed on several threads), matching what the
/// device's checksum kernel computes for the same bytes.
pub fn host_checksums(host: &[u8], groups: &[Group]) -> Vec<u64> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if groups.len() <= 1 || threads == 1 {
        return groups
            .iter()
            .map(|g| {
                vramswap_sim::kernels::checksum(
                    &host[g.offset as usize..(g.offset + g.len) as usize],
                )
            })
            .collect();
    }
    let mut out = vec![0u64; groups.len()];
    let per = groups.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (gs, os) in groups.chunks(per).zip(out.chunks_mut(per)) {
            s.spawn(move || {
                for (g, o) in gs.iter().zip(os.iter_mut()) {
                    *o = vramswap_sim::kernels::checksum(
                        &host[g.offset as usize..(g.offset + g.len) as usize],
                    );
                }
            });
        }
    });
    out
}
