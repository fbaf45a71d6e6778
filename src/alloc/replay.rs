//! Replaying a trace through a [`CachingAllocator`], and drawing what it did as an SVG chart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use super::caching::CachingAllocator;
use super::trace::TraceOp;
use crate::backend::{DevicePtr, Stream};
use crate::error::{Error, Result};

/// What a replay measured.
#[derive(Clone, Debug, Serialize)]
pub struct ReplayReport {
    /// Operations replayed (allocs, frees, record_streams).
    pub ops: u64,
    /// Peak bytes allocated.
    pub peak_allocated_bytes: u64,
    /// Peak bytes reserved from the backend.
    pub peak_reserved_bytes: u64,
    /// Peak reserved / peak allocated.
    pub fragmentation: f64,
    /// Backend allocations.
    pub backend_allocs: u64,
    /// Pages mapped (expandable segments, page pool).
    pub maps: u64,
    /// Pages unmapped.
    pub unmaps: u64,
    /// Requests that failed with out-of-memory.
    pub ooms: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
    /// Requests that needed the backend.
    pub cache_misses: u64,
    /// Hits / requests.
    pub cache_hit_rate: f64,
    /// Operations per second (wall clock, including the backend's work).
    pub ops_per_sec: f64,
    /// Allocated and reserved bytes after each op (sampled), for [`render_svg`].
    #[serde(skip)]
    pub timeline: Vec<(u64, u64)>,
}

fn trace_error(line: usize, problem: String) -> Error {
    Error::InvalidArgument(format!("trace line {line}: {problem}"))
}

/// Replays `ops` (each with its line number) through `alloc`, creating one backend stream per
/// trace stream on first use; allocations left live at the end are freed and the streams
/// destroyed. An op that does not fit the trace so far (a free of an unknown id, a duplicate
/// id) or fails in the allocator is an error naming its line.
pub fn replay(alloc: &CachingAllocator, ops: &[(usize, TraceOp)]) -> Result<ReplayReport> {
    let backend = alloc.backend().clone();
    let mut streams: HashMap<u64, Stream> = HashMap::new();
    let mut live: HashMap<u64, DevicePtr> = HashMap::new();
    let mut timeline = Vec::with_capacity(ops.len().min(1 << 20));
    let every = ops.len().div_ceil(4000).max(1);
    let start = Instant::now();
    let mut n = 0u64;
    let result = (|| -> Result<()> {
        for (i, (line, op)) in ops.iter().enumerate() {
            let line = *line;
            let mut stream_of = |s: u64| -> Result<Stream> {
                if let Some(st) = streams.get(&s) {
                    return Ok(*st);
                }
                let st = backend.stream_create()?;
                streams.insert(s, st);
                Ok(st)
            };
            match *op {
                TraceOp::Alloc {
                    id, size, stream, ..
                } => {
                    let st = stream_of(stream)?;
                    if live.contains_key(&id) {
                        return Err(trace_error(
                            line,
                            format!("allocation id {id} is already live"),
                        ));
                    }
                    let p = alloc
                        .allocate(size, st)
                        .map_err(|e| trace_error(line, e.to_string()))?;
                    live.insert(id, p);
                }
                TraceOp::Free { id } => {
                    let p = live
                        .remove(&id)
                        .ok_or_else(|| trace_error(line, format!("free of unknown id {id}")))?;
                    alloc
                        .free(p)
                        .map_err(|e| trace_error(line, e.to_string()))?;
                }
                TraceOp::RecordStream { id, stream } => {
                    let st = stream_of(stream)?;
                    let p = *live.get(&id).ok_or_else(|| {
                        trace_error(line, format!("record_stream of unknown id {id}"))
                    })?;
                    alloc
                        .record_stream(p, st)
                        .map_err(|e| trace_error(line, e.to_string()))?;
                }
                TraceOp::SegmentAlloc { .. }
                | TraceOp::SegmentFree { .. }
                | TraceOp::Oom { .. } => continue,
            }
            n += 1;
            if i % every == 0 {
                timeline.push(alloc.current_bytes());
            }
        }
        Ok(())
    })();
    let elapsed = start.elapsed().as_secs_f64();
    timeline.push(alloc.current_bytes());
    for (_, p) in live.drain() {
        let _ = alloc.free(p);
    }
    for (_, s) in streams.drain() {
        let _ = backend.stream_synchronize(s);
        let _ = backend.stream_destroy(s);
    }
    result?;
    let s = alloc.stats();
    let requests = s.cache_hits + s.cache_misses;
    Ok(ReplayReport {
        ops: n,
        peak_allocated_bytes: s.allocated_bytes.peak,
        peak_reserved_bytes: s.reserved_bytes.peak,
        fragmentation: s.fragmentation(),
        backend_allocs: s.num_device_alloc,
        maps: s.num_maps,
        unmaps: s.num_unmaps,
        ooms: s.num_ooms,
        cache_hits: s.cache_hits,
        cache_misses: s.cache_misses,
        cache_hit_rate: if requests == 0 {
            0.0
        } else {
            s.cache_hits as f64 / requests as f64
        },
        ops_per_sec: if elapsed > 0.0 {
            n as f64 / elapsed
        } else {
            0.0
        },
        timeline,
    })
}

/// Draws allocated (blue) and reserved (red) bytes over the ops as an SVG line chart.
///
/// ```
/// let svg = vramswap::alloc::replay::render_svg(&[(0, 0), (512, 2 << 20), (0, 2 << 20)], "demo");
/// assert!(svg.starts_with("<svg") && svg.contains("polyline"));
/// ```
pub fn render_svg(timeline: &[(u64, u64)], title: &str) -> String {
    let (w, h, left, top, bottom) = (800.0f64, 400.0f64, 70.0f64, 30.0f64, 40.0f64);
    let plot_w = w - left - 20.0;
    let plot_h = h - top - bottom;
    let max = timeline
        .iter()
        .map(|&(a, r)| a.max(r))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let n = timeline.len().max(2) as f64 - 1.0;
    let points = |pick: &dyn Fn(&(u64, u64)) -> u64| {
        let mut s = String::new();
        for (i, p) in timeline.iter().enumerate() {
            let x = left + plot_w * i as f64 / n;
            let y = top + plot_h * (1.0 - pick(p) as f64 / max);
            let _ = write!(s, "{x:.1},{y:.1} ");
        }
        s
    };
    let esc = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let mib = max / (1u64 << 20) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\">{esc}</text>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{yb}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{yb}\" x2=\"{xr}\" y2=\"{yb}\" stroke=\"black\"/>\n\
         <text x=\"4\" y=\"{ty}\">{mib:.0} MiB</text>\n<text x=\"4\" y=\"{yb}\">0</text>\n\
         <text x=\"{left}\" y=\"{yl}\">ops →</text>\n\
         <polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"{r}\"/>\n\
         <polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{a}\"/>\n\
         <text x=\"{lx}\" y=\"18\" fill=\"#d62728\">reserved</text>\n\
         <text x=\"{lx2}\" y=\"18\" fill=\"#1f77b4\">allocated</text>\n</svg>\n",
        yb = top + plot_h,
        xr = left + plot_w,
        ty = top + 4.0,
        yl = h - 12.0,
        r = points(&|p| p.1),
        a = points(&|p| p.0),
        lx = w - 180.0,
        lx2 = w - 100.0,
    );
    s
}
