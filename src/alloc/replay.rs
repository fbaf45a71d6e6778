//! Replaying a trace through a [`CachingAllocator`], and (with the `cli` feature) charting what it
//! did.

use std::collections::HashMap;
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
    /// Allocated and reserved bytes after each op (sampled), for `ReplayReport::chart`.
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

#[cfg(feature = "cli")]
impl ReplayReport {
    /// The [`timeline`](ReplayReport::timeline) as a line chart: allocated and reserved MiB
    /// against the op index (the CLI's `replay --svg`).
    ///
    /// ```
    /// # use vramswap::alloc::ReplayReport;
    /// let report = ReplayReport {
    ///     ops: 3, peak_allocated_bytes: 2 << 20, peak_reserved_bytes: 2 << 20,
    ///     fragmentation: 1.0, backend_allocs: 1, maps: 0, unmaps: 0, ooms: 0,
    ///     cache_hits: 0, cache_misses: 1,
    ///     cache_hit_rate: 0.0, ops_per_sec: 1.0,
    ///     timeline: vec![(0, 0), (1, 2 << 20), (0, 2 << 20)],
    /// };
    /// let chart = report.chart("demo");
    /// assert_eq!(chart.series[1].points[1], (1.0, 2.0));
    /// assert!(chart.render().starts_with("<svg"));
    /// ```
    pub fn chart(&self, title: &str) -> crate::svg::LineChart {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let series = |label: &str, pick: fn(&(u64, u64)) -> u64| crate::svg::Series {
            label: label.into(),
            points: self
                .timeline
                .iter()
                .enumerate()
                .map(|(i, p)| (i as f64, mib(pick(p))))
                .collect(),
        };
        crate::svg::LineChart {
            title: title.into(),
            x_label: "operation (allocations and frees, in trace order, sampled)".into(),
            y_label: "MiB".into(),
            log_x: false,
            series: vec![series("allocated", |p| p.0), series("reserved", |p| p.1)],
            reference: None,
        }
    }
}
