//! The allocation history: a ring of recent events, exportable as a trace in the format
//! `vramswap replay` reads (see [`super::trace`]).

use std::collections::{HashMap, VecDeque};

use super::trace::TraceOp;

/// One event in the history: a [`TraceOp`], with the backend's stream handles and, for
/// allocations, the address.
pub type HistoryEvent = TraceOp;

/// A bounded ring of [`HistoryEvent`]s; capacity 0 records nothing.
#[derive(Debug, Default)]
pub struct History {
    ring: VecDeque<HistoryEvent>,
    capacity: usize,
    dropped: u64,
}

impl History {
    /// A ring of `capacity` events.
    pub fn new(capacity: usize) -> Self {
        History {
            ring: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
        }
    }

    /// Whether events are recorded.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Records an event, dropping the oldest when full.
    pub fn push(&mut self, e: HistoryEvent) {
        if self.capacity == 0 {
            return;
        }
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
            self.dropped += 1;
        }
        self.ring.push_back(e);
    }

    /// The events, oldest first.
    pub fn events(&self) -> Vec<HistoryEvent> {
        self.ring.iter().copied().collect()
    }

    /// Events that fell out of the ring.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Converts history events to trace operations; stream handles become small integers in
/// order of first use. Frees of allocations that fell out of the ring are left out, so the
/// trace replays cleanly.
pub fn to_trace(events: &[HistoryEvent]) -> Vec<TraceOp> {
    let mut streams: HashMap<u64, u64> = HashMap::new();
    let mut known = std::collections::HashSet::new();
    let mut small = |s: u64| {
        let n = streams.len() as u64;
        *streams.entry(s).or_insert(n)
    };
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        match *e {
            TraceOp::Alloc {
                id, size, stream, ..
            } => {
                known.insert(id);
                out.push(TraceOp::Alloc {
                    id,
                    size,
                    stream: small(stream),
                    addr: None,
                });
            }
            TraceOp::Free { id } if known.remove(&id) => out.push(TraceOp::Free { id }),
            TraceOp::RecordStream { id, stream } if known.contains(&id) => {
                out.push(TraceOp::RecordStream {
                    id,
                    stream: small(stream),
                })
            }
            TraceOp::Free { .. } | TraceOp::RecordStream { .. } => {}
            op @ (TraceOp::SegmentAlloc { .. }
            | TraceOp::SegmentFree { .. }
            | TraceOp::Oom { .. }) => out.push(op),
        }
    }
    out
}
