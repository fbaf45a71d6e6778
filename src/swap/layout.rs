//! How a set's bytes are laid out and copied: copy groups (layers, and padding between them),
//! the copy plan, and the host checksums that verified swap-ins compare against.

use std::collections::HashMap;

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
        // Every tensor, in offset order, with its layer's name.
        let mut spans: Vec<(u64, u64, String)> = Vec::with_capacity(desc.tensors.len());
        for l in desc.layers() {
            for &i in &l.tensor_indices {
                let t = &desc.tensors[i];
                spans.push((t.offset, t.end(), l.name.clone()));
            }
        }
        spans.sort_by_key(|s| s.0);
        // Groups are runs of consecutive tensors of one layer. The copying loader lays each
        // layer out contiguously, so a run is a whole layer; direct mode keeps the files' own
        // order, where a layer may be interleaved with others (a file's `other` tensors before
        // and after its layers) or split across shards: the layer then becomes several groups
        // (`name (part 2)`, ...), and groups never overlap.
        let mut groups: Vec<Group> = Vec::new();
        let mut parts: HashMap<String, usize> = HashMap::new();
        let mut layer_of_last: Option<String> = None;
        for (start, end, layer) in spans {
            if let Some(g) = groups
                .last_mut()
                .filter(|_| layer_of_last.as_ref() == Some(&layer))
            {
                g.len = end.max(g.offset + g.len) - g.offset;
                continue;
            }
            let n = parts.entry(layer.clone()).or_insert(0);
            *n += 1;
            groups.push(Group {
                name: if *n == 1 {
                    layer.clone()
                } else {
                    format!("{layer} (part {n})")
                },
                offset: start,
                len: end - start,
            });
            layer_of_last = Some(layer);
        }
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
        // Only bytes some host piece holds can move: direct mode leaves alignment gaps between
        // files that no piece covers. Groups are cut at those gaps (a tensor never spans one).
        let pieces = pieces(host);
        let plan = CopyPlan::new(clip_to_pieces(filled, &pieces), chunk_bytes)?;
        let checksums = verify.then(|| group_checksums(host, &plan.groups));
        Ok(Layout {
            desc,
            plan,
            checksums,
        })
    }
}

/// Cuts `groups` (sorted, not overlapping) to the bytes `pieces` hold: a group that spans a
/// gap between pieces becomes one group per covered run (`name (cont.)` after the first), and
/// a group wholly in a gap is dropped.
fn clip_to_pieces(groups: Vec<Group>, pieces: &[HostPiece]) -> Vec<Group> {
    let mut covered: Vec<(u64, u64)> = pieces
        .iter()
        .filter(|p| p.len > 0)
        .map(|p| (p.offset, p.offset + p.len))
        .collect();
    covered.sort_unstable();
    // Merge touching pieces: one file's range may come in several pieces.
    let mut runs: Vec<(u64, u64)> = Vec::with_capacity(covered.len());
    for (lo, hi) in covered {
        match runs.last_mut() {
            Some(r) if lo <= r.1 => r.1 = r.1.max(hi),
            _ => runs.push((lo, hi)),
        }
    }
    let mut out = Vec::with_capacity(groups.len());
    for g in groups {
        let end = g.offset + g.len;
        let mut first = true;
        for &(lo, hi) in &runs {
            let (a, b) = (g.offset.max(lo), end.min(hi));
            if a < b {
                out.push(Group {
                    name: if first {
                        g.name.clone()
                    } else {
                        format!("{} (cont.)", g.name)
                    },
                    offset: a,
                    len: b - a,
                });
                first = false;
            }
        }
    }
    out
}

/// Checksums of each group of a host set (see [`host_checksums`]).
pub(super) fn group_checksums(host: &HostWeights, groups: &[Group]) -> Vec<u64> {
    if let Some(bytes) = host.contiguous() {
        return host_checksums(bytes, groups);
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
