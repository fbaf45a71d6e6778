//! Growing and trimming expandable segments, and the invariant check used by tests.

use super::{Block, BlockPool, BlockState, NIL};
use crate::alloc::sizing::PoolKind;

impl BlockPool {
    /// The expandable segment of `kind` on `stream`, if any.
    pub fn expandable_segment(&self, kind: PoolKind, stream: u64) -> Option<u32> {
        self.segments()
            .find(|(_, s)| s.expandable && s.kind == kind && s.stream == stream)
            .map(|(i, _)| i)
    }

    /// The free tail block of a segment on `stream`, if its last block is free and on `stream`.
    pub fn free_tail(&self, seg: u32, stream: u64) -> Option<(u32, u64)> {
        let (i, b) = self.blocks_of(seg).last()?;
        (b.state == BlockState::Free && b.stream == stream).then_some((i, b.size))
    }

    /// Grows a segment by `bytes` at its end, extending its free tail block on `stream` or
    /// adding a free block. Returns the free tail block.
    pub fn grow(&mut self, seg: u32, bytes: u64, stream: u64) -> u32 {
        self.unaccount(seg);
        let tail = self.free_tail(seg, stream);
        let old_size = self.segments[seg as usize].size;
        self.segments[seg as usize].size += bytes;
        let idx = match tail {
            Some((i, _)) => {
                self.unlink_free(i);
                self.blocks[i as usize].size += bytes;
                self.push_free(i);
                i
            }
            None => {
                let last = self.blocks_of(seg).last().map(|(i, _)| i).unwrap_or(NIL);
                let base = self.segments[seg as usize].base;
                let bi = self.new_block(Block {
                    addr: base + old_size,
                    size: bytes,
                    requested: 0,
                    segment: seg,
                    stream,
                    state: BlockState::Allocated,
                    tag: 0,
                    prev: last,
                    next: NIL,
                    fprev: NIL,
                    fnext: NIL,
                });
                if last != NIL {
                    self.blocks[last as usize].next = bi;
                } else {
                    self.segments[seg as usize].first = bi;
                }
                self.push_free(bi);
                bi
            }
        };
        self.account(seg);
        idx
    }

    /// Shrinks an expandable segment by cutting its free tail back to a multiple of `granule`
    /// (relative to the base). Returns the cut range `(start, bytes)`; `bytes` is 0 when
    /// nothing can be cut. A segment cut to nothing is removed.
    pub fn trim_tail(&mut self, seg: u32, granule: u64) -> (u64, u64) {
        let Some((i, b)) = self.blocks_of(seg).last().map(|(i, b)| (i, b.clone())) else {
            return (0, 0);
        };
        if b.state != BlockState::Free {
            return (0, 0);
        }
        let base = self.segments[seg as usize].base;
        let end = base + self.segments[seg as usize].size;
        let keep_end = base + (b.addr - base).div_ceil(granule) * granule;
        if keep_end >= end {
            return (0, 0);
        }
        let cut = end - keep_end;
        self.unaccount(seg);
        self.unlink_free(i);
        self.segments[seg as usize].size -= cut;
        if keep_end == b.addr {
            // The whole block goes.
            if b.prev != NIL {
                self.blocks[b.prev as usize].next = NIL;
            } else {
                self.segments[seg as usize].first = NIL;
            }
            self.free_slots.push(i);
        } else {
            self.blocks[i as usize].size -= cut;
            self.push_free(i);
        }
        if self.segments[seg as usize].first == NIL {
            self.segments[seg as usize].live = false;
            self.free_segment_slots.push(seg);
        } else {
            self.account(seg);
        }
        (keep_end, cut)
    }

    /// Checks every invariant; returns the first violation. For tests.
    pub fn check(&self) -> Result<(), String> {
        let mut free_bytes = 0;
        for (si, s) in self.segments() {
            let mut at = s.base;
            let mut prev = NIL;
            for (bi, b) in self.blocks_of(si) {
                if b.addr != at || b.segment != si || b.prev != prev || b.size == 0 {
                    return Err(format!("segment {si}: block {bi} {b:?} breaks the tiling"));
                }
                if b.state == BlockState::Free {
                    free_bytes += b.size;
                    if prev != NIL {
                        let p = &self.blocks[prev as usize];
                        if p.state == BlockState::Free && p.stream == b.stream {
                            return Err(format!("unmerged free neighbours {prev} and {bi}"));
                        }
                    }
                }
                at += b.size;
                prev = bi;
            }
            if at != s.base + s.size {
                return Err(format!(
                    "segment {si} blocks end at {at:#x}, not at its end"
                ));
            }
        }
        if free_bytes != self.free_bytes {
            return Err(format!(
                "free bytes {} counted, {free_bytes} found",
                self.free_bytes
            ));
        }
        Ok(())
    }
}
