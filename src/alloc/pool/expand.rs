//! Growing and trimming expandable segments, and the invariant check used by tests.

use super::{Backing, Block, BlockPool, BlockState, NIL};
use crate::alloc::sizing::PoolKind;

impl BlockPool {
    /// The expandable segments of `kind` on `stream`, oldest slot first.
    pub fn expandable_segments(
        &self,
        kind: PoolKind,
        stream: u64,
    ) -> impl Iterator<Item = u32> + '_ {
        self.segments()
            .filter(move |(_, s)| {
                s.backing == Backing::Expandable && s.kind == kind && s.stream == stream
            })
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
                    handed_out: false,
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

    /// The whole granules (relative to the base) inside every free block of a segment, as
    /// ranges `(start, bytes)`, one per free block that holds any.
    pub fn unmappable_ranges(&self, seg: u32, granule: u64) -> Vec<(u64, u64)> {
        let base = self.segments[seg as usize].base;
        self.blocks_of(seg)
            .filter(|(_, b)| b.state == BlockState::Free)
            .filter_map(|(_, b)| {
                let lo = base + (b.addr - base).div_ceil(granule) * granule;
                let hi = base + (b.addr + b.size - base) / granule * granule;
                (hi > lo).then(|| (lo, hi - lo))
            })
            .collect()
    }

    /// Marks `[start, start + bytes)`, which lies inside one free block of `seg`, as
    /// [`BlockState::Unmapped`] (its pages were unmapped by the caller); the parts of the free
    /// block before and after it stay free.
    pub fn mark_unmapped(&mut self, seg: u32, start: u64, bytes: u64) {
        let Some(i) = self
            .blocks_of(seg)
            .find(|(_, b)| {
                b.state == BlockState::Free && b.addr <= start && start + bytes <= b.addr + b.size
            })
            .map(|(i, _)| i)
        else {
            debug_assert!(false, "no free block holds {start:#x}+{bytes}");
            return;
        };
        let (addr, size) = (self.blocks[i as usize].addr, self.blocks[i as usize].size);
        self.unaccount(seg);
        self.unlink_free(i);
        let mut mid = i;
        if start > addr {
            mid = self.split_at(i, start - addr);
            self.push_free(i);
        }
        if start + bytes < addr + size {
            let up = self.split_at(mid, bytes);
            self.push_free(up);
        }
        self.blocks[mid as usize].state = BlockState::Unmapped;
        // Neighbouring holes become one, so that a request can use them together.
        let unmapped =
            |p: &Self, i: u32| i != NIL && p.blocks[i as usize].state == BlockState::Unmapped;
        if unmapped(self, self.blocks[mid as usize].next) {
            self.absorb_next(mid);
        }
        let prev = self.blocks[mid as usize].prev;
        if unmapped(self, prev) {
            self.absorb_next(prev);
        }
        self.account(seg);
    }

    /// Marks the whole granules inside every free block of an expandable segment as
    /// [`BlockState::Unmapped`] (splitting off the unaligned ends, which stay free) and returns
    /// their ranges `(start, bytes)`, which the caller unmaps.
    pub fn carve_unmappable(&mut self, seg: u32, granule: u64) -> Vec<(u64, u64)> {
        let out = self.unmappable_ranges(seg, granule);
        for &(start, bytes) in &out {
            self.mark_unmapped(seg, start, bytes);
        }
        out
    }

    /// Whether every block of a segment is an unmapped hole (nothing of it is mapped).
    pub fn all_unmapped(&self, seg: u32) -> bool {
        self.blocks_of(seg)
            .all(|(_, b)| b.state == BlockState::Unmapped)
    }

    /// Cuts unmapped blocks off the end of a segment; a segment left empty is removed (true).
    pub fn drop_unmapped_tail(&mut self, seg: u32) -> bool {
        self.unaccount(seg);
        while let Some((i, b)) = self.blocks_of(seg).last().map(|(i, b)| (i, b.clone())) {
            if b.state != BlockState::Unmapped {
                break;
            }
            if b.prev != NIL {
                self.blocks[b.prev as usize].next = NIL;
            } else {
                self.segments[seg as usize].first = NIL;
            }
            self.segments[seg as usize].size -= b.size;
            self.free_slots.push(i);
        }
        if self.segments[seg as usize].first == NIL {
            self.segments[seg as usize].live = false;
            self.free_segment_slots.push(seg);
            return true;
        }
        self.account(seg);
        false
    }

    /// The pages to map so that a hole of a segment, joined with its free neighbours on
    /// `stream`, holds `rounded` bytes: `(hole, start, bytes)`, for the hole that needs the
    /// fewest. Only the granules the request needs are mapped, from the start of the hole
    /// (after a free neighbour, where the request then begins); the whole hole only when its
    /// next free neighbour is needed too.
    pub fn hole_for(
        &self,
        seg: u32,
        stream: u64,
        rounded: u64,
        granule: u64,
    ) -> Option<(u32, u64, u64)> {
        let side = |i: u32| -> u64 {
            if i == NIL {
                return 0;
            }
            let b = &self.blocks[i as usize];
            if b.state == BlockState::Free && b.stream == stream {
                b.size
            } else {
                0
            }
        };
        self.blocks_of(seg)
            .filter(|(_, b)| b.state == BlockState::Unmapped)
            .filter_map(|(i, b)| {
                let before = side(b.prev);
                let room = before.checked_add(b.size)?.checked_add(side(b.next))?;
                if room < rounded {
                    return None;
                }
                let want = rounded
                    .saturating_sub(before)
                    .checked_next_multiple_of(granule)?
                    .max(granule);
                Some((i, b.addr, want.min(b.size)))
            })
            .min_by_key(|&(_, _, bytes)| bytes)
    }

    /// The address range of block `idx` together with its neighbours in its segment.
    pub fn span_with_neighbours(&self, idx: u32) -> (u64, u64) {
        let b = &self.blocks[idx as usize];
        let (mut lo, mut hi) = (b.addr, b.addr + b.size);
        for n in [b.prev, b.next] {
            if n != NIL {
                let nb = &self.blocks[n as usize];
                lo = lo.min(nb.addr);
                hi = hi.max(nb.addr + nb.size);
            }
        }
        (lo, hi)
    }

    /// Marks the first `bytes` of hole `idx` mapped again (the caller mapped them): they
    /// become a free block on `stream`, merged with its free neighbours on that stream; the
    /// rest of the hole stays unmapped. Returns the merged block.
    pub fn map_hole(&mut self, idx: u32, bytes: u64, stream: u64) -> u32 {
        let seg = self.blocks[idx as usize].segment;
        if bytes < self.blocks[idx as usize].size {
            self.unaccount(seg);
            self.split_at(idx, bytes);
            self.account(seg);
        }
        self.blocks[idx as usize].stream = stream;
        self.release(idx)
    }

    /// The mapped ranges of a segment (everything but its unmapped holes).
    pub fn mapped_ranges(&self, seg: u32) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (_, b) in self.blocks_of(seg) {
            if b.state == BlockState::Unmapped {
                continue;
            }
            match out.last_mut() {
                Some((s, n)) if *s + *n == b.addr => *n += b.size,
                _ => out.push((b.addr, b.size)),
            }
        }
        out
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
                if b.state == BlockState::Unmapped
                    && prev != NIL
                    && self.blocks[prev as usize].state == BlockState::Unmapped
                {
                    return Err(format!("unmerged unmapped neighbours {prev} and {bi}"));
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
