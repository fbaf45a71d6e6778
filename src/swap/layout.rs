//! How a set's bytes are laid out and copied: copy groups (layers, and padding between them),
//! the copy plan, and the host checksums that verified swap-ins compare against.

use crate::error::Result;
use crate::transfer::{host_checksums, CopyPlan, Group, HostPiece};
use crate::weights::{HostWeights, WeightSetDesc};

/// How a set's bytes are laid out and copied.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) desc: WeightSetDesc,
    pub(crate) plan: CopyPlan,
    pub(crate) checksums: Option<Vec<u64>>,
}

impl Layout {
    pub(super) fn new(host: &HostWeights, chunk_bytes: u64, verify: bool) -> Result<Layout> {
        let desc = host.desc().clone();
        let total = desc.total_bytes;
        let mut groups: Vec<Group> = desc
            .layers()
            .into_iter()
            .map(|l| Group {
                name: l.name,
                offset: l.start,
                len: l.end - l.start,
            })
            .collect();
        groups.sort_by_key(|g| g.offset);
        // Bytes no group covers (alignment padding) still move, in groups of their own, so the
        // device copy is byte-identical to the host copy and checksums cover everything.
        let mut filled = Vec::with_capacity(groups.len() + 1);
        let mut cur = 0u64;
        for g in groups {
            if g.offset > cur {
                filled.push(Group {
                    name: format!("(padding at {cur})"),
                    offset: cur,
                    len: g.offset - cur,
                });
            }
            cur = cur.max(g.offset + g.len);
            filled.push(g);
        }
        if cur < total {
            filled.push(Group {
                name: format!("(padding at {cur})"),
                offset: cur,
                len: total - cur,
            });
        }
        let plan = CopyPlan::new(filled, chunk_bytes)?;
        let checksums = verify.then(|| group_checksums(host, &plan.groups));
        Ok(Layout {
            desc,
            plan,
            checksums,
        })
    }
}

/// Checksums of each group of a host set (see [`host_checksums`]).
pub(super) fn group_checksums(host: &HostWeights, groups: &[Group]) -> Vec<u64> {
    if let Some(r) = host.host_range() {
        return host_checksums(&r.as_slice()[..host.total_bytes() as usize], groups);
    }
    // Direct mode: a group may span files; gather it.
    let segs = host.segments();
    groups
        .iter()
        .map(|g| {
            let mut buf = vec![0u8; g.len as usize];
            for s in &segs {
                let lo = g.offset.max(s.offset);
                let hi = (g.offset + g.len).min(s.offset + s.len);
                if lo < hi {
                    // SAFETY: `[lo, hi)` lies inside segment `s`, a live registered mapping.
                    let src = unsafe {
                        std::slice::from_raw_parts(
                            s.ptr.add((lo - s.offset) as usize),
                            (hi - lo) as usize,
                        )
                    };
                    buf[(lo - g.offset) as usize..(hi - g.offset) as usize].copy_from_slice(src);
                }
            }
            vramswap_sim::kernels::checksum(&buf)
        })
        .collect()
}

/// The host pieces of a set, for the copy engine.
pub(super) fn pieces(host: &HostWeights) -> Vec<HostPiece> {
    host.segments()
        .into_iter()
        .map(|s| HostPiece {
            offset: s.offset,
            len: s.len,
            ptr: s.ptr as *mut u8,
        })
        .collect()
}
