//! Free-range bookkeeping of one slab: plain Rust over offsets, no memory touched.
//!
//! Exact-size best fit: a request takes the smallest free range that holds it (ties broken by
//! the lowest offset), split off at that range's start; a freed range merges with both
//! neighbours. Sizes are whatever the caller asks for; rounding to an alignment is the
//! caller's business, so there is no power-of-two waste here.

use std::collections::{BTreeMap, BTreeSet};

/// The free ranges of a region `[0, capacity)`.
#[derive(Debug, Clone)]
pub struct FreeList {
    capacity: u64,
    /// Free ranges by offset: offset -> length.
    by_offset: BTreeMap<u64, u64>,
    /// Free ranges by (length, offset), for best fit.
    by_size: BTreeSet<(u64, u64)>,
    free_bytes: u64,
}

impl FreeList {
    /// A region of `capacity` bytes, all free.
    pub fn new(capacity: u64) -> FreeList {
        let mut f = FreeList {
            capacity,
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            free_bytes: 0,
        };
        if capacity > 0 {
            f.insert(0, capacity);
        }
        f
    }

    /// Bytes in the region.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// True when nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.free_bytes == self.capacity
    }

    /// The longest free range.
    pub fn largest_free(&self) -> u64 {
        self.by_size.last().map_or(0, |&(len, _)| len)
    }

    /// Number of separate free ranges.
    pub fn fragments(&self) -> usize {
        self.by_offset.len()
    }

    /// Free ranges as `(offset, len)`, by offset.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_offset.iter().map(|(&o, &l)| (o, l))
    }

    fn insert(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
        self.free_bytes += len;
    }

    fn remove(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
        self.free_bytes -= len;
    }

    /// The length of the free range [`FreeList::alloc`] would take `len` bytes from, if any.
    pub fn best_fit(&self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        self.by_size.range((len, 0)..).next().map(|&(l, _)| l)
    }

    /// Takes `len` bytes (`len > 0`) from the smallest free range that holds them; returns the
    /// offset, or `None` when no free range is long enough.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        if len == 0 {
            return None;
        }
        let &(flen, off) = self.by_size.range((len, 0)..).next()?;
        self.remove(off, flen);
        if flen > len {
            self.insert(off + len, flen - len);
        }
        Some(off)
    }

    /// Returns `[offset, offset + len)` to the free list, merging with free neighbours.
    ///
    /// Returns `false` (and changes nothing) when the range is out of bounds, empty or overlaps
    /// a free range: a double free or a wrong length.
    pub fn free(&mut self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        if len == 0 || end > self.capacity {
            return false;
        }
        let prev = self
            .by_offset
            .range(..=offset)
            .next_back()
            .map(|(&o, &l)| (o, l));
        let next = self.by_offset.range(offset..).next().map(|(&o, &l)| (o, l));
        if prev.is_some_and(|(o, l)| o + l > offset) || next.is_some_and(|(o, _)| o < end) {
            return false;
        }
        let (mut start, mut stop) = (offset, end);
        if let Some((o, l)) = prev.filter(|&(o, l)| o + l == offset) {
            self.remove(o, l);
            start = o;
        }
        if let Some((o, l)) = next.filter(|&(o, _)| o == end) {
            self.remove(o, l);
            stop = o + l;
        }
        self.insert(start, stop - start);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn best_fit_takes_the_smallest_range_that_holds_the_request() {
        let mut f = FreeList::new(1000);
        let a = f.alloc(100).unwrap();
        let _b = f.alloc(50).unwrap();
        let c = f.alloc(300).unwrap();
        let _d = f.alloc(10).unwrap();
        assert!(f.free(a, 100));
        assert!(f.free(c, 300));
        // Free: [0,100), [150,450), [460,1000). 90 bytes fit best in the first.
        assert_eq!(f.alloc(90), Some(0));
        assert_eq!(f.alloc(250), Some(150));
    }

    #[test]
    fn freeing_everything_coalesces_into_one_range() {
        let mut f = FreeList::new(4096);
        let offs: Vec<u64> = (0..8).map(|_| f.alloc(512).unwrap()).collect();
        assert_eq!(f.alloc(1), None);
        for &o in offs.iter().rev().step_by(2).chain(offs.iter().step_by(2)) {
            assert!(f.free(o, 512));
        }
        assert!(f.is_empty());
        assert_eq!(f.fragments(), 1);
        assert_eq!(f.largest_free(), 4096);
    }

    #[test]
    fn double_free_is_refused() {
        let mut f = FreeList::new(100);
        let a = f.alloc(10).unwrap();
        assert!(f.free(a, 10));
        assert!(!f.free(a, 10));
        assert!(!f.free(90, 20));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..5000).prop_map(Op::Alloc),
            any::<usize>().prop_map(Op::Free)
        ]
    }

    proptest! {
        /// Live ranges never overlap, stay in bounds, and free bytes always equal capacity minus
        /// live bytes; free ranges are never adjacent (always coalesced); and when a request
        /// fails, no free range was long enough.
        #[test]
        fn allocations_are_disjoint_and_accounting_is_exact(ops in proptest::collection::vec(op(), 1..200)) {
            let cap = 20_000u64;
            let mut f = FreeList::new(cap);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(len) => {
                        let largest = f.largest_free();
                        match f.alloc(len) {
                            Some(o) => {
                                prop_assert!(o + len <= cap);
                                for &(lo, ll) in &live {
                                    prop_assert!(o + len <= lo || lo + ll <= o);
                                }
                                live.push((o, len));
                            }
                            None => prop_assert!(largest < len),
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (o, l) = live.swap_remove(i % live.len());
                        prop_assert!(f.free(o, l));
                    }
                    Op::Free(_) => {}
                }
                let used: u64 = live.iter().map(|&(_, l)| l).sum();
                prop_assert_eq!(f.free_bytes(), cap - used);
                let ranges: Vec<_> = f.ranges().collect();
                for w in ranges.windows(2) {
                    prop_assert!(w[0].0 + w[0].1 < w[1].0, "adjacent free ranges not merged");
                }
            }
            for (o, l) in live {
                prop_assert!(f.free(o, l));
            }
            prop_assert!(f.is_empty());
            prop_assert_eq!(f.fragments(), 1);
        }
    }
}
