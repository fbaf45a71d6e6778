//! Copy plans: which byte ranges move, cut into chunks, grouped by layer.

use serde::Serialize;

use crate::error::{Error, Result};

/// A named contiguous range of a weight set (a model layer, or the whole set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Name (e.g. `model.layers.3`).
    pub name: String,
    /// Offset of the range within the set.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One chunk: a range copied by one call on one stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Chunk {
    /// Offset within the set (the same on host and device).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Index of the group the chunk belongs to.
    pub group: usize,
}

/// The chunks of a copy, in submission order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyPlan {
    /// Chunks in order.
    pub chunks: Vec<Chunk>,
    /// Groups the chunks belong to.
    pub groups: Vec<Group>,
}

impl CopyPlan {
    /// Cuts each group into chunks of at most `chunk_bytes`. Groups must not overlap; empty
    /// groups get no chunk (and are ready at once).
    ///
    /// ```
    /// use vramswap::transfer::{CopyPlan, Group};
    /// let g = |name: &str, offset, len| Group { name: name.into(), offset, len };
    /// let plan = CopyPlan::new(vec![g("a", 0, 10), g("b", 10, 25)], 10).unwrap();
    /// assert_eq!(plan.chunks.len(), 4);
    /// assert_eq!(plan.total_bytes(), 35);
    /// ```
    pub fn new(groups: Vec<Group>, chunk_bytes: u64) -> Result<CopyPlan> {
        if chunk_bytes == 0 {
            return Err(Error::InvalidArgument("chunk size 0".into()));
        }
        let mut sorted: Vec<&Group> = groups.iter().collect();
        sorted.sort_by_key(|g| g.offset);
        for w in sorted.windows(2) {
            let end = w[0].offset.checked_add(w[0].len).ok_or_else(|| {
                Error::InvalidArgument(format!("group `{}` overflows", w[0].name))
            })?;
            if end > w[1].offset {
                return Err(Error::InvalidArgument(format!(
                    "groups `{}` and `{}` overlap",
                    w[0].name, w[1].name
                )));
            }
        }
        let mut chunks = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            let mut off = 0;
            while off < g.len {
                let len = chunk_bytes.min(g.len - off);
                chunks.push(Chunk {
                    offset: g.offset + off,
                    len,
                    group: i,
                });
                off += len;
            }
        }
        Ok(CopyPlan { chunks, groups })
    }

    /// A plan for one range `[0, len)` as a single group named `all`.
    pub fn whole(len: u64, chunk_bytes: u64) -> Result<CopyPlan> {
        CopyPlan::new(
            vec![Group {
                name: "all".into(),
                offset: 0,
                len,
            }],
            chunk_bytes,
        )
    }

    /// Bytes the plan moves.
    pub fn total_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len).sum()
    }

    /// One past the last byte any group covers.
    pub fn extent(&self) -> u64 {
        self.groups
            .iter()
            .map(|g| g.offset + g.len)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str, offset: u64, len: u64) -> Group {
        Group {
            name: name.into(),
            offset,
            len,
        }
    }

    #[test]
    fn chunks_cover_every_group_exactly_once() {
        let plan = CopyPlan::new(vec![g("a", 0, 100), g("b", 128, 7), g("c", 200, 0)], 30).unwrap();
        let mut covered = vec![0u8; 300];
        for c in &plan.chunks {
            assert!(c.len <= 30);
            for b in &mut covered[c.offset as usize..(c.offset + c.len) as usize] {
                *b += 1;
            }
        }
        assert!(covered[..100].iter().all(|&b| b == 1));
        assert!(covered[100..128].iter().all(|&b| b == 0));
        assert!(covered[128..135].iter().all(|&b| b == 1));
        assert_eq!(plan.total_bytes(), 107);
        assert_eq!(plan.extent(), 200);
    }

    #[test]
    fn overlapping_groups_are_rejected() {
        let err = CopyPlan::new(vec![g("a", 0, 100), g("b", 99, 7)], 30).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }

    #[test]
    fn zero_chunk_size_is_rejected() {
        assert!(CopyPlan::whole(10, 0).is_err());
    }
}
