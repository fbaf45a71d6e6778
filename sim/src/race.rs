//! The stream-ordering checker.
//!
//! Every operation a stream runs declares the byte ranges it reads and writes. The checker keeps
//! a vector clock per stream (how far each other stream's work is known to be ordered before
//! this stream's next operation), joined through `stream_wait_event` and through host
//! synchronisation, and a history of recent accesses. Two accesses on different streams that
//! overlap, at least one a write, with neither ordered before the other, are a race: the bug
//! class behind most misuse of a caching allocator (a block handed to stream B while stream A
//! still reads it).

use std::collections::HashMap;

/// Which address space an access touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// Device memory (a device address).
    Device,
    /// Host memory (a host pointer value).
    Host,
}

/// One range an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Address space of the range.
    pub space: Space,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Whether the operation writes the range.
    pub write: bool,
}

impl Access {
    pub(crate) fn read(space: Space, start: u64, len: u64) -> Self {
        Access {
            space,
            start,
            end: start + len,
            write: false,
        }
    }
    pub(crate) fn write(space: Space, start: u64, len: u64) -> Self {
        Access {
            space,
            start,
            end: start + len,
            write: true,
        }
    }
}

/// A reported stream-ordering violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Human-readable description naming both operations and the overlapping range.
    pub message: String,
    /// Address space of the overlapping range.
    pub space: Space,
    /// Start of the overlapping range.
    pub start: u64,
    /// End of the overlapping range.
    pub end: u64,
}

/// Vector clock: for each stream, the sequence number up to which its work is ordered before.
pub(crate) type Clock = HashMap<u64, u64>;

pub(crate) fn join(into: &mut Clock, other: &Clock) {
    for (&s, &n) in other {
        let e = into.entry(s).or_insert(0);
        if *e < n {
            *e = n;
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    access: Access,
    stream: u64,
    seq: u64,
    op: &'static str,
}

pub(crate) struct Checker {
    pub(crate) enabled: bool,
    clocks: HashMap<u64, Clock>,
    host: Clock,
    history: Vec<Entry>,
    pub(crate) violations: Vec<Violation>,
}

const PRUNE_AT: usize = 8192;

impl Checker {
    pub(crate) fn new(enabled: bool) -> Self {
        Checker {
            enabled,
            clocks: HashMap::new(),
            host: Clock::new(),
            history: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// The clock of `stream`'s next operation, which is `seq`; records it.
    pub(crate) fn enqueue(
        &mut self,
        stream: u64,
        seq: u64,
        op: &'static str,
        accesses: &[Access],
    ) -> Vec<Violation> {
        let host = self.host.clone();
        let clock = self.clocks.entry(stream).or_default();
        join(clock, &host);
        clock.insert(stream, seq);
        if !self.enabled || accesses.is_empty() {
            return Vec::new();
        }
        let clock = clock.clone();
        let mut found = Vec::new();
        for a in accesses {
            for h in &self.history {
                if h.stream == stream || h.access.space != a.space {
                    continue;
                }
                if !(h.access.write || a.write) {
                    continue;
                }
                let lo = a.start.max(h.access.start);
                let hi = a.end.min(h.access.end);
                if lo >= hi {
                    continue;
                }
                if clock.get(&h.stream).copied().unwrap_or(0) >= h.seq {
                    continue;
                }
                found.push(Violation {
                    message: format!(
                        "{} on stream {stream} and {} on stream {} touch {:?} bytes {lo:#x}..{hi:#x} \
                         ({} and {}) with no event ordering between them",
                        op,
                        h.op,
                        h.stream,
                        a.space,
                        if a.write { "write" } else { "read" },
                        if h.access.write { "write" } else { "read" },
                    ),
                    space: a.space,
                    start: lo,
                    end: hi,
                });
            }
        }
        for a in accesses {
            self.history.push(Entry {
                access: *a,
                stream,
                seq,
                op,
            });
        }
        if self.history.len() > PRUNE_AT {
            self.prune();
        }
        self.violations.extend(found.iter().cloned());
        found
    }

    /// Removes the last `n` history entries (an operation refused in error mode).
    pub(crate) fn forget_last(&mut self, n: usize) {
        let keep = self.history.len().saturating_sub(n);
        self.history.truncate(keep);
    }

    /// Entries that the host has seen complete are ordered before everything enqueued later.
    fn prune(&mut self) {
        let host = &self.host;
        self.history
            .retain(|e| host.get(&e.stream).copied().unwrap_or(0) < e.seq);
        if self.history.len() > PRUNE_AT {
            // Keep memory bounded: forget the oldest half. This can only hide races, never
            // invent one.
            let drop = self.history.len() / 2;
            self.history.drain(..drop);
        }
    }

    pub(crate) fn clock_of(&self, stream: u64) -> Clock {
        self.clocks.get(&stream).cloned().unwrap_or_default()
    }

    pub(crate) fn wait(&mut self, stream: u64, event_clock: &Clock) {
        join(self.clocks.entry(stream).or_default(), event_clock);
    }

    /// The host has observed `clock` complete (stream or event synchronisation).
    pub(crate) fn host_observed(&mut self, clock: &Clock) {
        join(&mut self.host, clock);
    }

    /// Memory in `[start, end)` is being freed or unmapped by the host: any access still queued
    /// or running (sequence past what the stream has completed) is a use-after-free.
    pub(crate) fn release(
        &mut self,
        space: Space,
        start: u64,
        end: u64,
        completed: &dyn Fn(u64) -> u64,
        what: &str,
    ) {
        if !self.enabled {
            return;
        }
        let mut found = Vec::new();
        for h in &self.history {
            if h.access.space != space || h.access.end <= start || h.access.start >= end {
                continue;
            }
            if completed(h.stream) < h.seq {
                found.push(Violation {
                    message: format!(
                        "{what} of {space:?} bytes {start:#x}..{end:#x} while {} on stream {} \
                         still uses them",
                        h.op, h.stream
                    ),
                    space,
                    start,
                    end,
                });
            }
        }
        self.history
            .retain(|h| h.access.space != space || h.access.end <= start || h.access.start >= end);
        self.violations.extend(found);
    }
}
