//! Block bookkeeping of the caching allocator, in plain Rust over addresses: segments, the
//! blocks that tile them, and segregated free lists per (pool, stream). No backend here, so
//! every rule is testable on its own.
//!
//! Blocks live in a slab (`Vec<Block>` with a free-slot stack) and link to their address
//! neighbours and free-list neighbours by index, so the steady state (a block freed and taken
//! again) touches no heap. Free lists are binned by size class, two levels as in TLSF: eight
//! classes per power of two, a bitmap of non-empty classes, good fit in O(1).

use super::sizing::{may_serve, should_split, PoolKind};

const NIL: u32 = u32::MAX;
const CLASSES: usize = 448;
const SCAN: usize = 16;

/// The state of a block.
#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockState {
    /// Handed to a user.
    Allocated,
    /// Freed by the user, waiting for work on other streams (`record_stream`) to finish.
    PendingFree,
    /// In a free list.
    Free,
    /// A hole in an expandable segment whose pages were unmapped.
    Unmapped,
}

/// One block: a range inside a segment.
#[derive(Clone, Debug)]
pub struct Block {
    /// First byte.
    pub addr: u64,
    /// Bytes.
    pub size: u64,
    /// Bytes the user asked for (allocated blocks).
    pub requested: u64,
    /// Index of its segment.
    pub segment: u32,
    /// The stream whose work last used it (the allocation stream).
    pub stream: u64,
    /// State.
    pub state: BlockState,
    /// A caller's tag (the history's allocation id).
    pub tag: u64,
    /// The block's address was handed to a user (by [`BlockPool::set_user`]) since the block
    /// was made: a free of a non-live block there is a double free, not an unknown pointer.
    pub handed_out: bool,
    prev: u32,
    next: u32,
    fprev: u32,
    fnext: u32,
}

/// How a segment's memory is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// One backend allocation.
    Fixed,
    /// A reserved range that grows and shrinks by mapping pages (expandable segments).
    Expandable,
    /// A virtual range of exactly the pages one block needs, mapped to pages of the page pool
    /// (`page` bytes each). Its one block is never split, and serves only requests needing
    /// the same number of pages; freed, its pages may be unmapped and mapped elsewhere.
    Paged {
        /// Page size in bytes.
        page: u64,
    },
}

/// One segment: memory obtained from the backend in one piece (or, expandable, one reserved
/// range of which `size` bytes are mapped).
#[derive(Clone, Debug)]
pub struct Segment {
    /// First byte.
    pub base: u64,
    /// Bytes its blocks tile (for an expandable segment, from the base to the end of the last
    /// mapped page: unmapped holes included, so more than the mapped bytes when it has holes).
    pub size: u64,
    /// Reserved address range (equals `size` unless expandable).
    pub capacity: u64,
    /// Stream it was created for.
    pub stream: u64,
    /// Pool.
    pub kind: PoolKind,
    /// How its memory is held.
    pub backing: Backing,
    first: u32,
    live: bool,
}

struct FreeLists {
    kind: PoolKind,
    stream: u64,
    heads: Box<[u32; CLASSES]>,
    bitmap: [u64; CLASSES / 64],
}

impl FreeLists {
    fn new(kind: PoolKind, stream: u64) -> Self {
        FreeLists {
            kind,
            stream,
            heads: Box::new([NIL; CLASSES]),
            bitmap: [0; CLASSES / 64],
        }
    }

    fn next_nonempty(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        if w >= self.bitmap.len() {
            return None;
        }
        let mut bits = self.bitmap[w] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            if w >= self.bitmap.len() {
                return None;
            }
            bits = self.bitmap[w];
        }
    }
}

/// Size class of a block size (a multiple of 512).
fn class(size: u64) -> usize {
    let u = (size >> 9).max(1);
    if u < 8 {
        return u as usize;
    }
    let fl = 63 - u.leading_zeros() as usize;
    let sl = ((u >> (fl - 3)) & 7) as usize;
    (fl - 2) * 8 + sl
}

/// Segments, blocks and free lists.
#[derive(Default)]
pub struct BlockPool {
    blocks: Vec<Block>,
    free_slots: Vec<u32>,
    segments: Vec<Segment>,
    free_segment_slots: Vec<u32>,
    lists: Vec<FreeLists>,
    free_bytes: u64,
    free_blocks: u64,
    whole_free_bytes: u64,
    whole_free_segments: u64,
}

impl std::fmt::Debug for BlockPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockPool")
            .field("segments", &self.segments().count())
            .field("free_bytes", &self.free_bytes)
            .finish()
    }
}

impl BlockPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// The block at `idx`.
    pub fn block(&self, idx: u32) -> &Block {
        &self.blocks[idx as usize]
    }

    /// Sets the tag and requested size of an allocated block, and marks it handed out.
    pub fn set_user(&mut self, idx: u32, requested: u64, tag: u64) {
        let b = &mut self.blocks[idx as usize];
        b.requested = requested;
        b.tag = tag;
        b.handed_out = true;
    }

    /// The segment at `idx`.
    pub fn segment(&self, idx: u32) -> &Segment {
        &self.segments[idx as usize]
    }

    /// Live segments with their indices.
    pub fn segments(&self) -> impl Iterator<Item = (u32, &Segment)> {
        self.segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(i, s)| (i as u32, s))
    }

    /// The blocks of a segment in address order, with their indices.
    pub fn blocks_of(&self, seg: u32) -> impl Iterator<Item = (u32, &Block)> {
        let mut cur = self.segments[seg as usize].first;
        std::iter::from_fn(move || {
            if cur == NIL {
                return None;
            }
            let i = cur;
            cur = self.blocks[i as usize].next;
            Some((i, &self.blocks[i as usize]))
        })
    }

    /// The block starting at `addr`, in any state (a slow search, for error reports).
    pub fn find_block_at(&self, addr: u64) -> Option<u32> {
        let (seg, _) = self
            .segments()
            .find(|(_, s)| s.base <= addr && addr < s.base + s.size)?;
        self.blocks_of(seg)
            .find(|(_, b)| b.addr == addr)
            .map(|(i, _)| i)
    }

    /// Bytes in free blocks.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Bytes and count of free blocks in segments that hold other blocks too.
    pub fn inactive_split(&self) -> (u64, u64) {
        (
            self.free_bytes - self.whole_free_bytes,
            self.free_blocks - self.whole_free_segments,
        )
    }

    /// The largest free block (for out-of-memory reports).
    pub fn largest_free(&self) -> u64 {
        self.blocks
            .iter()
            .filter(|b| b.state == BlockState::Free && self.segments[b.segment as usize].live)
            .map(|b| b.size)
            .max()
            .unwrap_or(0)
    }

    fn new_block(&mut self, b: Block) -> u32 {
        match self.free_slots.pop() {
            Some(i) => {
                self.blocks[i as usize] = b;
                i
            }
            None => {
                self.blocks.push(b);
                (self.blocks.len() - 1) as u32
            }
        }
    }

    fn whole_free(&self, seg: u32) -> bool {
        let s = &self.segments[seg as usize];
        if !s.live || s.first == NIL {
            return false;
        }
        let b = &self.blocks[s.first as usize];
        b.state == BlockState::Free && b.next == NIL
    }

    fn unaccount(&mut self, seg: u32) {
        if self.whole_free(seg) {
            self.whole_free_bytes -= self.segments[seg as usize].size;
            self.whole_free_segments -= 1;
        }
    }

    fn account(&mut self, seg: u32) {
        if self.whole_free(seg) {
            self.whole_free_bytes += self.segments[seg as usize].size;
            self.whole_free_segments += 1;
        }
    }

    fn list_index(&mut self, kind: PoolKind, stream: u64) -> usize {
        if let Some(i) = self
            .lists
            .iter()
            .position(|l| l.kind == kind && l.stream == stream)
        {
            return i;
        }
        self.lists.push(FreeLists::new(kind, stream));
        self.lists.len() - 1
    }

    fn push_free(&mut self, idx: u32) {
        let (kind, stream, size) = {
            let b = &self.blocks[idx as usize];
            (self.segments[b.segment as usize].kind, b.stream, b.size)
        };
        let li = self.list_index(kind, stream);
        let c = class(size);
        let list = &mut self.lists[li];
        let head = list.heads[c];
        list.heads[c] = idx;
        list.bitmap[c / 64] |= 1 << (c % 64);
        if head != NIL {
            self.blocks[head as usize].fprev = idx;
        }
        let b = &mut self.blocks[idx as usize];
        b.fprev = NIL;
        b.fnext = head;
        b.state = BlockState::Free;
        self.free_bytes += size;
        self.free_blocks += 1;
    }

    fn unlink_free(&mut self, idx: u32) {
        let (kind, stream, size, fprev, fnext) = {
            let b = &self.blocks[idx as usize];
            (
                self.segments[b.segment as usize].kind,
                b.stream,
                b.size,
                b.fprev,
                b.fnext,
            )
        };
        if fnext != NIL {
            self.blocks[fnext as usize].fprev = fprev;
        }
        if fprev != NIL {
            self.blocks[fprev as usize].fnext = fnext;
        } else {
            let li = self.list_index(kind, stream);
            let c = class(size);
            let list = &mut self.lists[li];
            list.heads[c] = fnext;
            if fnext == NIL {
                list.bitmap[c / 64] &= !(1 << (c % 64));
            }
        }
        self.free_bytes -= size;
        self.free_blocks -= 1;
    }

    /// Adds a segment of `size` bytes at `base` (of `capacity` reserved bytes) as one free block
    /// on `stream`; returns the block.
    pub fn add_segment(
        &mut self,
        base: u64,
        size: u64,
        capacity: u64,
        stream: u64,
        kind: PoolKind,
        backing: Backing,
    ) -> u32 {
        let seg = Segment {
            base,
            size,
            capacity,
            stream,
            kind,
            backing,
            first: NIL,
            live: true,
        };
        let si = match self.free_segment_slots.pop() {
            Some(i) => {
                self.segments[i as usize] = seg;
                i
            }
            None => {
                self.segments.push(seg);
                (self.segments.len() - 1) as u32
            }
        };
        let bi = self.new_block(Block {
            addr: base,
            size,
            requested: 0,
            segment: si,
            stream,
            state: BlockState::Allocated,
            tag: 0,
            handed_out: false,
            prev: NIL,
            next: NIL,
            fprev: NIL,
            fnext: NIL,
        });
        self.segments[si as usize].first = bi;
        self.push_free(bi);
        self.account(si);
        bi
    }

    /// A free block on `stream` in `kind`'s pool that can serve `rounded` bytes: the best fit
    /// among the first blocks of the request's size class, else the first acceptable block of a
    /// larger class. When that bounded search finds nothing but left blocks unlooked at, every
    /// block is looked at: a fitting free block is never missed. Blocks of expandable segments
    /// ignore `max_split` (they are split whatever their size, see [`BlockPool::take`]).
    pub fn find_free(
        &self,
        kind: PoolKind,
        stream: u64,
        rounded: u64,
        max_split: u64,
    ) -> Option<u32> {
        let list = self
            .lists
            .iter()
            .find(|l| l.kind == kind && l.stream == stream)?;
        self.find_in(list, rounded, max_split)
    }

    fn find_in(&self, list: &FreeLists, rounded: u64, max_split: u64) -> Option<u32> {
        match self.scan(list, rounded, max_split, SCAN) {
            (Some(i), _) => Some(i),
            (None, true) => self.scan(list, rounded, max_split, usize::MAX).0,
            (None, false) => None,
        }
    }

    /// Looks at up to `limit` blocks of each size class from the request's on. Returns the
    /// block found and whether some class had blocks left unlooked at.
    fn scan(
        &self,
        list: &FreeLists,
        rounded: u64,
        max_split: u64,
        limit: usize,
    ) -> (Option<u32>, bool) {
        let c0 = class(rounded);
        let mut cut = false;
        let Some(mut c) = list.next_nonempty(c0) else {
            return (None, false);
        };
        // Paged blocks fit only requests of their page count: classes above that bound hold
        // nothing that fits (set on seeing one; all large blocks are paged in that mode).
        let mut ceiling: Option<usize> = None;
        loop {
            let mut cur = list.heads[c];
            let mut best: Option<(u64, u64, u32)> = None;
            let mut n = 0;
            while cur != NIL {
                if n == limit {
                    cut = true;
                    break;
                }
                let b = &self.blocks[cur as usize];
                let (fits, any_fit) = match self.segments[b.segment as usize].backing {
                    Backing::Fixed => (may_serve(b.size, rounded, max_split), false),
                    Backing::Expandable => (may_serve(b.size, rounded, u64::MAX), false),
                    Backing::Paged { page } => {
                        let pages = rounded.div_ceil(page);
                        let most = pages.saturating_add(page_slack(pages));
                        ceiling = Some(class(most.saturating_mul(page)));
                        let have = b.size.div_ceil(page);
                        (
                            b.size >= rounded && (pages..=most).contains(&have),
                            have == pages,
                        )
                    }
                };
                if fits {
                    let key = (b.size, b.addr, cur);
                    if best.is_none_or(|k| (key.0, key.1) < (k.0, k.1)) {
                        best = Some(key);
                    }
                    // A paged block of exactly the pages asked wastes nothing more: take it.
                    if b.size == rounded || c != c0 || any_fit {
                        break;
                    }
                }
                cur = b.fnext;
                n += 1;
            }
            if let Some((_, _, i)) = best {
                return (Some(i), cut);
            }
            match list.next_nonempty(c + 1) {
                Some(next) if ceiling.is_none_or(|top| next <= top) => c = next,
                _ => return (None, cut),
            }
        }
    }

    /// A free block on a stream other than `stream` that can serve `rounded` bytes.
    pub fn find_free_elsewhere(
        &self,
        kind: PoolKind,
        stream: u64,
        rounded: u64,
        max_split: u64,
    ) -> Option<u32> {
        self.lists
            .iter()
            .filter(|l| l.kind == kind && l.stream != stream)
            .find_map(|l| self.find_in(l, rounded, max_split))
    }

    /// Moves a free block to `stream`'s free list (after the caller ordered `stream` after the
    /// block's last use).
    pub fn retag(&mut self, idx: u32, stream: u64) {
        self.unlink_free(idx);
        self.blocks[idx as usize].stream = stream;
        self.push_free(idx);
    }

    /// Takes free block `idx` for `rounded` bytes, splitting off the rest when the split rules
    /// say so. Returns the allocated block (same index).
    pub fn take(&mut self, idx: u32, rounded: u64, max_split: u64) -> u32 {
        let seg = self.blocks[idx as usize].segment;
        self.unaccount(seg);
        self.unlink_free(idx);
        let (kind, backing) = {
            let s = &self.segments[seg as usize];
            (s.kind, s.backing)
        };
        let size = self.blocks[idx as usize].size;
        let split = match backing {
            Backing::Fixed => should_split(kind, size, rounded, max_split),
            Backing::Expandable => should_split(kind, size, rounded, u64::MAX),
            Backing::Paged { .. } => false,
        };
        if split {
            let rest = self.split_at(idx, rounded);
            self.push_free(rest);
        }
        self.blocks[idx as usize].state = BlockState::Allocated;
        self.account(seg);
        idx
    }

    /// Splits block `idx` after its first `first` bytes; the new upper block (same segment,
    /// stream and state, in no free list) is returned. `idx` must be in no free list. The one
    /// place a block is split: [`BlockPool::take`] and the expandable segments' holes use it.
    fn split_at(&mut self, idx: u32, first: u64) -> u32 {
        let b = self.blocks[idx as usize].clone();
        let up = self.new_block(Block {
            addr: b.addr + first,
            size: b.size - first,
            requested: 0,
            segment: b.segment,
            stream: b.stream,
            state: b.state,
            tag: 0,
            handed_out: false,
            prev: idx,
            next: b.next,
            fprev: NIL,
            fnext: NIL,
        });
        if b.next != NIL {
            self.blocks[b.next as usize].prev = up;
        }
        let blk = &mut self.blocks[idx as usize];
        blk.next = up;
        blk.size = first;
        up
    }

    /// Marks an allocated block as waiting for events.
    pub fn set_pending(&mut self, idx: u32) {
        self.blocks[idx as usize].state = BlockState::PendingFree;
    }

    /// Merges the next block into `idx`; neither may be in a free list.
    fn absorb_next(&mut self, idx: u32) {
        let n = self.blocks[idx as usize].next;
        let (nsize, nnext) = {
            let nb = &self.blocks[n as usize];
            (nb.size, nb.next)
        };
        let b = &mut self.blocks[idx as usize];
        b.size += nsize;
        b.next = nnext;
        if nnext != NIL {
            self.blocks[nnext as usize].prev = idx;
        }
        self.free_slots.push(n);
    }

    fn mergeable(&self, a: u32, b: u32) -> bool {
        b != NIL && {
            let (x, y) = (&self.blocks[a as usize], &self.blocks[b as usize]);
            y.state == BlockState::Free && x.stream == y.stream
        }
    }

    /// Returns a block to its stream's free list, merging it with free neighbours of the same
    /// stream. Returns the merged block.
    pub fn release(&mut self, idx: u32) -> u32 {
        let seg = self.blocks[idx as usize].segment;
        self.unaccount(seg);
        let mut idx = idx;
        self.blocks[idx as usize].requested = 0;
        self.blocks[idx as usize].state = BlockState::Free;
        let next = self.blocks[idx as usize].next;
        if self.mergeable(idx, next) {
            self.unlink_free(next);
            self.absorb_next(idx);
        }
        let prev = self.blocks[idx as usize].prev;
        if self.mergeable(idx, prev) {
            self.unlink_free(prev);
            self.absorb_next(prev);
            idx = prev;
        }
        self.push_free(idx);
        self.account(seg);
        idx
    }

    /// Moves everything of stream `from` to stream `to`: segments, blocks in any state, and
    /// free blocks into `to`'s free lists, merged with free neighbours there. Only sound once
    /// the work on `from` is complete (before its user destroys it).
    pub fn move_stream(&mut self, from: u64, to: u64) {
        if from == to {
            return;
        }
        let mut free = Vec::new();
        for seg in 0..self.segments.len() as u32 {
            if !self.segments[seg as usize].live {
                continue;
            }
            if self.segments[seg as usize].stream == from {
                self.segments[seg as usize].stream = to;
            }
            let mut cur = self.segments[seg as usize].first;
            while cur != NIL {
                let b = &mut self.blocks[cur as usize];
                if b.stream == from {
                    if b.state == BlockState::Free {
                        free.push(cur);
                    } else {
                        b.stream = to;
                    }
                }
                cur = b.next;
            }
        }
        // A block of `from` merges only with blocks of `to`, never with another of `from` not
        // yet moved: no index in `free` is absorbed before its turn.
        for idx in free {
            let seg = self.blocks[idx as usize].segment;
            self.unaccount(seg);
            self.unlink_free(idx);
            let b = &mut self.blocks[idx as usize];
            b.stream = to;
            b.state = BlockState::Allocated;
            self.account(seg);
            self.release(idx);
        }
        self.lists.retain(|l| l.stream != from);
    }

    /// Merges every pair of adjacent free blocks regardless of stream, tagging the result with
    /// the segment's stream. Only sound after the whole device was synchronised.
    pub fn merge_all_free(&mut self) {
        let segs: Vec<u32> = self.segments().map(|(i, _)| i).collect();
        for seg in segs {
            self.unaccount(seg);
            let stream = self.segments[seg as usize].stream;
            let mut cur = self.segments[seg as usize].first;
            while cur != NIL {
                if self.blocks[cur as usize].state == BlockState::Free {
                    if self.blocks[cur as usize].stream != stream {
                        self.retag(cur, stream);
                    }
                    let n = self.blocks[cur as usize].next;
                    if n != NIL && self.blocks[n as usize].state == BlockState::Free {
                        self.unlink_free(cur);
                        self.unlink_free(n);
                        self.absorb_next(cur);
                        self.push_free(cur);
                        continue;
                    }
                }
                cur = self.blocks[cur as usize].next;
            }
            self.account(seg);
        }
    }

    /// Segments whose every byte is one free block.
    pub fn empty_segments(&self) -> Vec<u32> {
        self.segments()
            .map(|(i, _)| i)
            .filter(|&i| self.whole_free(i))
            .collect()
    }

    /// Cuts an entirely free paged segment down to its first `bytes` (`bytes` > 0): what
    /// stays mapped after unmapping its last pages failed part way.
    pub fn shrink_paged(&mut self, seg: u32, bytes: u64) {
        debug_assert!(bytes > 0 && self.whole_free(seg));
        let b = self.segments[seg as usize].first;
        self.unaccount(seg);
        self.unlink_free(b);
        let blk = &mut self.blocks[b as usize];
        blk.size = blk.size.min(bytes);
        let s = &mut self.segments[seg as usize];
        s.size = s.size.min(bytes);
        self.push_free(b);
        self.account(seg);
    }

    /// Whether every byte of segment `seg` is one free block.
    pub fn is_empty_segment(&self, seg: u32) -> bool {
        self.whole_free(seg)
    }

    /// Removes an entirely free segment; returns it.
    pub fn remove_segment(&mut self, seg: u32) -> Option<Segment> {
        if !self.whole_free(seg) {
            return None;
        }
        self.unaccount(seg);
        let b = self.segments[seg as usize].first;
        self.unlink_free(b);
        self.free_slots.push(b);
        let s = &mut self.segments[seg as usize];
        s.live = false;
        s.first = NIL;
        self.free_segment_slots.push(seg);
        Some(self.segments[seg as usize].clone())
    }

    /// Removes a segment whatever its blocks' states (allocator teardown).
    pub fn forget_segment(&mut self, seg: u32) -> Segment {
        self.unaccount(seg);
        let ids: Vec<u32> = self.blocks_of(seg).map(|(i, _)| i).collect();
        for i in ids {
            if self.blocks[i as usize].state == BlockState::Free {
                self.unlink_free(i);
            }
            self.free_slots.push(i);
        }
        let s = &mut self.segments[seg as usize];
        s.live = false;
        s.first = NIL;
        self.free_segment_slots.push(seg);
        self.segments[seg as usize].clone()
    }
}

mod expand;

#[cfg(test)]
mod tests;

/// How many pages more than a request needs a cached paged block may have and still serve it
/// whole: reusing it costs those pages of slack, while remapping costs a `cuMemUnmap` and a
/// `cuMemMap` per page (27 and 45 µs each on an H200, docs/gpu-results.md).
pub(crate) fn page_slack(pages: u64) -> u64 {
    pages / SLACK_DIV
}

const SLACK_DIV: u64 = 2;
