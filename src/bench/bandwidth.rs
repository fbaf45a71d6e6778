//! Host/device bandwidth: each direction from pinned and pageable memory, both directions at
//! once, device to device, and a sweep of chunk size × streams per direction through the copy
//! engine, each beside the single-large-copy ceiling of its direction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{Backend, DevicePtr, SharedBackend, Stream};
use crate::error::Result;
use crate::transfer::{CopyEngine, CopyPlan, Direction, HostPiece, TransferConfig};
use vramswap_sim::LinkDir;

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct BandwidthConfig {
    /// Bytes per measurement.
    pub buffer_bytes: u64,
    /// Chunk sizes of the sweep.
    pub chunk_sizes: Vec<u64>,
    /// Streams per direction of the sweep.
    pub stream_counts: Vec<usize>,
    /// Repetitions per figure (the median is reported).
    pub reps: usize,
}

impl BandwidthConfig {
    /// The full run: 1 GiB buffers, chunks 1 MiB to 256 MiB, 1 to 4 streams.
    pub fn full() -> Self {
        BandwidthConfig {
            buffer_bytes: 1 << 30,
            chunk_sizes: [1u64, 4, 16, 64, 256].iter().map(|m| m << 20).collect(),
            stream_counts: vec![1, 2, 3, 4],
            reps: 3,
        }
    }

    /// A short run (seconds on `sim`).
    pub fn quick() -> Self {
        BandwidthConfig {
            buffer_bytes: 128 << 20,
            chunk_sizes: [1u64, 4, 16, 64].iter().map(|m| m << 20).collect(),
            stream_counts: vec![1, 2, 4],
            reps: 2,
        }
    }
}

/// One measured figure.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Figure {
    /// GB/s (10^9 bytes per second).
    pub gbps: f64,
    /// Ratio to the ceiling of the same direction measured in the same run.
    pub ratio: f64,
}

/// One point of the sweep.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SweepPoint {
    /// Chunk size in bytes.
    pub chunk_bytes: u64,
    /// Streams used.
    pub streams: usize,
    /// GB/s.
    pub gbps: f64,
    /// Ratio to the direction's ceiling.
    pub ratio: f64,
}

/// Figures of one direction.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionReport {
    /// From (or to) pinned memory, one large copy: the ceiling.
    pub pinned: Figure,
    /// From (or to) pageable memory, one large copy.
    pub pageable: Figure,
    /// The sweep through the copy engine.
    pub sweep: Vec<SweepPoint>,
    /// The best sweep point.
    pub best: Option<SweepPoint>,
}

/// The whole report (`vramswap bench --json`).
#[derive(Clone, Debug, Serialize)]
pub struct BandwidthReport {
    /// Backend name.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Whether the device is emulated (the figures are the model's, not hardware).
    pub emulated: bool,
    /// The simulator's link model the figures were timed by, if any (`sim` only; absent on a
    /// GPU or the emulated driver, whose figures are host-clock timings).
    pub model: Option<LinkModel>,
    /// Bytes per measurement.
    pub buffer_bytes: u64,
    /// Host to device.
    pub h2d: DirectionReport,
    /// Device to host.
    pub d2h: DirectionReport,
    /// Both directions at once from pinned memory: aggregate GB/s, ratio to the sum... ratio to
    /// the faster single direction's ceiling (≈2 when both copy engines work at once).
    pub bidir: Figure,
    /// Device to device.
    pub d2d: Figure,
    /// The price of the virtual-memory calls at one granule (absent without VMM).
    pub vmm: Option<crate::bench::vmm::VmmPrice>,
}

/// The simulator's bandwidth model, as the report shows it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LinkModel {
    /// Host to device, GB/s.
    pub h2d_gbps: f64,
    /// Device to host, GB/s.
    pub d2h_gbps: f64,
    /// Device to device, GB/s.
    pub d2d_gbps: f64,
    /// Fraction of the link a pageable copy reaches.
    pub pageable_factor: f64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn gbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-9) / 1e9
}

/// Buffers of one run, freed on drop.
struct Buffers {
    b: SharedBackend,
    dev: DevicePtr,
    dev2: DevicePtr,
    pinned: *mut u8,
    pinned2: *mut u8,
    pageable: Vec<u8>,
    stream: Stream,
    stream2: Stream,
}

impl Buffers {
    fn new(b: &SharedBackend, bytes: u64) -> Result<Buffers> {
        let dev = b.alloc(bytes)?;
        let mut made = Buffers {
            b: b.clone(),
            dev,
            dev2: DevicePtr(0),
            pinned: std::ptr::null_mut(),
            pinned2: std::ptr::null_mut(),
            pageable: Vec::new(),
            stream: Stream::DEFAULT,
            stream2: Stream::DEFAULT,
        };
        made.dev2 = b.alloc(bytes)?;
        made.pinned = b.host_alloc_pinned(bytes)?;
        made.pinned2 = b.host_alloc_pinned(bytes)?;
        made.pageable = vec![1u8; bytes as usize];
        made.stream = b.stream_create()?;
        made.stream2 = b.stream_create()?;
        Ok(made)
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        let b = &self.b;
        let _ = b.synchronize();
        for s in [self.stream, self.stream2] {
            if s != Stream::DEFAULT {
                let _ = b.stream_destroy(s);
            }
        }
        for p in [self.pinned, self.pinned2] {
            if !p.is_null() {
                // SAFETY: allocated in `new` by this backend; the device is synchronised.
                let _ = unsafe { b.host_free_pinned(p) };
            }
        }
        for d in [self.dev, self.dev2] {
            if d.0 != 0 {
                let _ = b.free(d);
            }
        }
    }
}

/// How a measurement is timed: by the host clock, or, on the simulator's bandwidth model, by the
/// model's own schedule of the copies (what the link was reserved for), which no load on the
/// host can skew towards a better figure.
#[derive(Clone, Copy)]
enum Clock<'a> {
    Host,
    Model(&'a vramswap_sim::SimDevice),
}

impl<'a> Clock<'a> {
    fn of(b: &'a dyn Backend) -> Clock<'a> {
        match b.sim_device() {
            Some(sim) if sim.config().bandwidth.is_some() => Clock::Model(sim),
            _ => Clock::Host,
        }
    }

    /// Times one run of `f`, which uses the links `links`.
    fn time(&self, links: &[LinkDir], f: &mut dyn FnMut() -> Result<()>) -> Result<Duration> {
        match self {
            Clock::Host => {
                let t = Instant::now();
                f()?;
                Ok(t.elapsed())
            }
            Clock::Model(sim) => {
                // A watch per link sees every interval reserved while `f` runs, however many
                // copies that is (the device's interval log keeps only the latest few
                // thousand).
                let watches = links
                    .iter()
                    .map(|&l| sim.watch_link(l))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        crate::Error::InvalidState("the device has no bandwidth model".into())
                    })?;
                f()?;
                // Each link's busy span, from its first copy's start to its last copy's end; the
                // run took as long as the busiest link (links run independently, so a host
                // thread that starts one direction a little late does not count as link time).
                watches
                    .iter()
                    .filter_map(|w| w.span().busy_span())
                    .max()
                    .ok_or_else(|| {
                        crate::Error::InvalidState("the bandwidth model recorded no copy".into())
                    })
            }
        }
    }

    /// The median of `reps` timed runs after a warm-up run.
    fn median(
        &self,
        reps: usize,
        links: &[LinkDir],
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<Duration> {
        f()?; // warm-up
        let mut v = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            v.push(self.time(links, &mut f)?);
        }
        Ok(median(v))
    }
}

/// The link model `bench` and `selftest` turn on for `sim` when none is configured: 4 GB/s each
/// way (slower than any host's memcpy), 100 GB/s device to device, pageable at 40 %.
pub const SIM_DEFAULT_MODEL: vramswap_sim::Bandwidth = vramswap_sim::Bandwidth {
    h2d: 4e9,
    d2h: 4e9,
    d2d: 100e9,
    pageable_factor: 0.4,
};

/// The backend to measure on. On `sim` without a configured bandwidth model, copies run at
/// memcpy speed and every figure would be the host's memory bandwidth (and its thread count),
/// timed by the host clock; this returns a new simulated device like `b` with
/// [`SIM_DEFAULT_MODEL`], so the figures show the model's behaviour (chunking overheads, overlap
/// of directions) and are timed by the model's schedule. Any other backend, or `sim` with a
/// model (`VRAMSWAP_SIM_CONF=h2d_gbps:...`), is returned as it is.
pub fn with_sim_model(b: &SharedBackend) -> SharedBackend {
    match b.sim_device() {
        Some(sim) if sim.config().bandwidth.is_none() => {
            let mut c = sim.config().clone();
            c.bandwidth = Some(SIM_DEFAULT_MODEL);
            Arc::new(crate::backend::sim::SimBackend::new(c))
        }
        _ => b.clone(),
    }
}

/// Runs the measurements on `backend`, reporting progress lines through `progress`.
pub fn run(
    backend: &SharedBackend,
    cfg: &BandwidthConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<BandwidthReport> {
    let n = cfg.buffer_bytes;
    let buf = Buffers::new(backend, n)?;
    let b: &dyn Backend = backend.as_ref();
    let one = |dir: Direction, host: *mut u8| -> Result<()> {
        // SAFETY: the buffers live in `buf` for the whole run; each copy is synchronised.
        unsafe {
            match dir {
                Direction::HostToDevice => b.copy_htod_async(buf.dev, host, n, buf.stream)?,
                Direction::DeviceToHost => b.copy_dtoh_async(host, buf.dev, n, buf.stream)?,
            }
        }
        b.stream_synchronize(buf.stream)
    };
    let pageable_ptr = buf.pageable.as_ptr() as *mut u8;
    let clock = Clock::of(b);
    let mut dirs = Vec::new();
    for dir in [Direction::HostToDevice, Direction::DeviceToHost] {
        let (label, link) = match dir {
            Direction::HostToDevice => ("h2d", [LinkDir::HostToDevice]),
            Direction::DeviceToHost => ("d2h", [LinkDir::DeviceToHost]),
        };
        progress(&format!("{label}: ceiling (one pinned copy)"));
        let ceiling = gbps(n, clock.median(cfg.reps, &link, || one(dir, buf.pinned))?);
        progress(&format!("{label}: pageable"));
        let pageable = gbps(n, clock.median(cfg.reps, &link, || one(dir, pageable_ptr))?);
        let mut sweep = Vec::new();
        for &streams in &cfg.stream_counts {
            let engine = Arc::new(CopyEngine::new(
                backend.clone(),
                TransferConfig {
                    chunk_bytes: cfg.chunk_sizes[0],
                    streams_per_direction: streams,
                    verify: false,
                },
            )?);
            for &chunk in &cfg.chunk_sizes {
                progress(&format!(
                    "{label}: {} MiB chunks x {streams} stream(s)",
                    chunk >> 20
                ));
                let plan = CopyPlan::whole(n, chunk)?;
                let t = clock.median(cfg.reps, &link, || {
                    // SAFETY: the pinned buffer outlives the transfer, which is waited for.
                    let tr = unsafe {
                        engine.start(dir, &HostPiece::whole(buf.pinned, n), buf.dev, &plan)?
                    };
                    tr.wait()
                })?;
                let g = gbps(n, t);
                sweep.push(SweepPoint {
                    chunk_bytes: chunk,
                    streams,
                    gbps: g,
                    ratio: g / ceiling,
                });
            }
        }
        let best = sweep
            .iter()
            .copied()
            .max_by(|a, c| a.gbps.total_cmp(&c.gbps));
        dirs.push(DirectionReport {
            pinned: Figure {
                gbps: ceiling,
                ratio: 1.0,
            },
            pageable: Figure {
                gbps: pageable,
                ratio: pageable / ceiling,
            },
            sweep,
            best,
        });
    }
    progress("bidirectional");
    let bidir_t = clock.median(
        cfg.reps,
        &[LinkDir::HostToDevice, LinkDir::DeviceToHost],
        || {
            // SAFETY: both pinned buffers outlive the copies, which are synchronised.
            unsafe {
                b.copy_htod_async(buf.dev, buf.pinned, n, buf.stream)?;
                b.copy_dtoh_async(buf.pinned2, buf.dev2, n, buf.stream2)?;
            }
            b.stream_synchronize(buf.stream)?;
            b.stream_synchronize(buf.stream2)
        },
    )?;
    let bidir = gbps(2 * n, bidir_t);
    let best_one = dirs[0].pinned.gbps.max(dirs[1].pinned.gbps);
    progress("device to device");
    let d2d_t = clock.median(cfg.reps, &[LinkDir::DeviceToDevice], || {
        b.copy_dtod_async(buf.dev2, buf.dev, n, buf.stream)?;
        b.stream_synchronize(buf.stream)
    })?;
    progress("virtual-memory calls");
    let vmm = crate::bench::vmm::run(b, VMM_CALLS)?;
    let p = b.properties();
    let model = match clock {
        Clock::Model(sim) => sim.config().bandwidth.map(|m| LinkModel {
            h2d_gbps: m.h2d / 1e9,
            d2h_gbps: m.d2h / 1e9,
            d2d_gbps: m.d2d / 1e9,
            pageable_factor: m.pageable_factor,
        }),
        Clock::Host => None,
    };
    let d2h = dirs.pop().expect("two directions");
    let h2d = dirs.pop().expect("two directions");
    Ok(BandwidthReport {
        backend: p.backend.to_string(),
        device: p.name.clone(),
        emulated: p.emulated,
        model,
        buffer_bytes: n,
        h2d,
        d2h,
        bidir: Figure {
            gbps: bidir,
            ratio: bidir / best_one,
        },
        d2d: Figure {
            gbps: gbps(n, d2d_t),
            ratio: 1.0,
        },
        vmm,
    })
}

/// Calls of each virtual-memory operation the bench times (512 MiB at 2 MiB granules).
const VMM_CALLS: usize = 256;

impl BandwidthReport {
    /// A table like nvbandwidth's.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let how = match (&self.model, self.emulated) {
            (Some(m), _) => format!(
                ", emulated: figures come from the simulator's link model, \
                 {} GB/s h2d, {} GB/s d2h, pageable at {:.0}%",
                m.h2d_gbps,
                m.d2h_gbps,
                m.pageable_factor * 100.0
            ),
            (None, true) => ", emulated: host-clock timings of an emulated device".to_string(),
            (None, false) => String::new(),
        };
        let _ = writeln!(
            s,
            "device: {} ({}{how}), {} MiB per copy",
            self.device,
            self.backend,
            self.buffer_bytes >> 20
        );
        let _ = writeln!(s, "\n{:<28} {:>10} {:>10}", "copy", "GB/s", "ratio");
        let row = |s: &mut String, name: &str, f: &Figure| {
            let _ = writeln!(s, "{:<28} {:>10.2} {:>10.2}", name, f.gbps, f.ratio);
        };
        row(&mut s, "h2d pinned (ceiling)", &self.h2d.pinned);
        row(&mut s, "h2d pageable", &self.h2d.pageable);
        row(&mut s, "d2h pinned (ceiling)", &self.d2h.pinned);
        row(&mut s, "d2h pageable", &self.d2h.pageable);
        row(&mut s, "bidir pinned (aggregate)", &self.bidir);
        row(&mut s, "d2d", &self.d2d);
        if let Some(v) = &self.vmm {
            let _ = writeln!(
                s,
                "\nvirtual-memory calls, {} MiB each, mean of {} (host clock{}):",
                v.granule_bytes >> 20,
                v.calls,
                if self.emulated {
                    "; emulated: bookkeeping, not a driver's price"
                } else {
                    ""
                }
            );
            let _ = writeln!(s, "{:<28} {:>10} {:>10}", "call", "µs", "calls/s");
            for (name, us) in [
                ("reserve", v.reserve_us),
                ("create", v.create_us),
                ("map + set access", v.map_us),
                ("unmap", v.unmap_us),
                ("release", v.release_us),
                ("free reservation", v.free_reservation_us),
                ("alloc (cuMemAlloc)", v.alloc_us),
                ("free (cuMemFree)", v.free_us),
            ] {
                let _ = writeln!(s, "{:<28} {:>10.2} {:>10.0}", name, us, 1e6 / us.max(1e-9));
            }
        }
        for (name, d) in [("h2d", &self.h2d), ("d2h", &self.d2h)] {
            let _ = writeln!(
                s,
                "\n{name} sweep (GB/s, ratio to ceiling), chunk size x streams per direction:"
            );
            let mut streams: Vec<usize> = d.sweep.iter().map(|p| p.streams).collect();
            streams.dedup();
            let _ = write!(s, "{:>10}", "chunk");
            for st in &streams {
                let _ = write!(s, " {:>16}", format!("{st} stream(s)"));
            }
            let _ = writeln!(s);
            let mut chunks: Vec<u64> = d.sweep.iter().map(|p| p.chunk_bytes).collect();
            chunks.sort();
            chunks.dedup();
            for c in chunks {
                let _ = write!(s, "{:>7} MiB", c >> 20);
                for st in &streams {
                    if let Some(p) = d
                        .sweep
                        .iter()
                        .find(|p| p.chunk_bytes == c && p.streams == *st)
                    {
                        let _ = write!(s, " {:>9.2} ({:.2})", p.gbps, p.ratio);
                    }
                }
                let _ = writeln!(s);
            }
            if let Some(b) = d.best {
                let _ = writeln!(
                    s,
                    "best: {} MiB chunks x {} stream(s): {:.2} GB/s ({:.0}% of the ceiling)",
                    b.chunk_bytes >> 20,
                    b.streams,
                    b.gbps,
                    b.ratio * 100.0
                );
            }
        }
        s
    }

    /// One chart per direction: GB/s against chunk size, a line per stream count.
    pub fn charts(&self) -> Vec<(String, crate::svg::LineChart)> {
        [("h2d", &self.h2d), ("d2h", &self.d2h)]
            .into_iter()
            .map(|(name, d)| {
                let mut streams: Vec<usize> = d.sweep.iter().map(|p| p.streams).collect();
                streams.sort();
                streams.dedup();
                let series = streams
                    .iter()
                    .map(|st| crate::svg::Series {
                        label: format!("{st} stream(s)"),
                        points: d
                            .sweep
                            .iter()
                            .filter(|p| p.streams == *st)
                            .map(|p| ((p.chunk_bytes >> 20) as f64, p.gbps))
                            .collect(),
                    })
                    .collect();
                (
                    format!("bandwidth-{name}.svg"),
                    crate::svg::LineChart {
                        title: format!(
                            "{name} on {} (ceiling {:.1} GB/s)",
                            self.device, d.pinned.gbps
                        ),
                        x_label: "chunk size (MiB)".into(),
                        y_label: "GB/s".into(),
                        log_x: true,
                        series,
                        reference: Some((
                            format!("ceiling: one pinned copy, {:.1} GB/s", d.pinned.gbps),
                            d.pinned.gbps,
                        )),
                    },
                )
            })
            .collect()
    }
}
