//! The allocation history: a ring of recent events, exportable as a trace in the format
//! `vramswap replay` reads (see [`super::trace`]).

use std::collections::{HashMap, VecDeque};

use super::trace::TraceOp;

/// One event in the history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HistoryEvent {
    /// A block was handed out.
    Alloc {
        /// Allocation id (order of allocation, from 0).
        id: u64,
        /// Bytes asked for.
        size: u64,
        /// Stream handle.
        stream: u64,
        /// Device address.
        addr: u64,
    },
    /// A block was freed by the user.
    Free {
        /// Allocation id.
        id: u64,
    },
    /// A block was marked as used on another stream.
    RecordStream {
        /// Allocation id.
        id: u64,
        /// Stream handle.
        stream: u64,
    },
    /// Memory was obtained from the backend (a segment, or pages of an expandable one).
    SegmentAlloc {
        /// First byte.
        addr: u64,
        /// Bytes.
        size: u64,
    },
    /// Memory was returned to the backend.
    SegmentFree {
        /// First byte.
        addr: u64,
        /// Bytes.
        size: u64,
    },
    /// A request failed with out-of-memory.
    Oom {
        /// Bytes asked for.
        size: u64,
    },
}

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
    let mut streams: HashMap<u64, u32> = HashMap::new();
    let mut known = std::collections::HashSet::new();
    let mut small = |s: u64| {
        let n = streams.len() as u32;
        *streams.entry(s).or_insert(n)
    };
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        match *e {
            HistoryEvent::Alloc {
                id, size, stream, ..
            } => {
                known.insert(id);
                out.push(TraceOp::Alloc {
                    id,
                    size,
                    stream: small(stream),
                });
            }
            HistoryEvent::Free { id } if known.remove(&id) => out.push(TraceOp::Free { id }),
            HistoryEvent::RecordStream { id, stream } if known.contains(&id) => {
                out.push(TraceOp::RecordStream {
                    id,
                    stream: small(stream),
                })
            }
            HistoryEvent::SegmentAlloc { addr, size } => {
                out.push(TraceOp::SegmentAlloc { addr, size })
            }
            HistoryEvent::SegmentFree { addr, size } => {
                out.push(TraceOp::SegmentFree { addr, size })
            }
            HistoryEvent::Oom { size } => out.push(TraceOp::Oom { size }),
            _ => {}
        }
    }
    out
}
