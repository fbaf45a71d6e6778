//! Weight sets: what tensors a set holds (name, dtype, shape, byte range) and where its bytes
//! live on the host.
//!
//! A [`WeightSetDesc`] describes a set; [`WeightSetDesc::layout`] packs tensors so that every
//! layer group ([`WeightSetDesc::layers`]) is one contiguous range and every tensor starts at a
//! multiple of [`TENSOR_ALIGN`], so the swap engine can copy a layer as one range and mark it
//! ready on its own. [`HostWeights`] is a set whose bytes are in the pinned arena (or, loaded in
//! direct mode, in registered file mappings).

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod dtype;
mod host;

pub use dtype::DType;
pub use host::{HostSegment, HostWeights, MappedFile};

/// Alignment of every tensor inside a laid-out set: 256 bytes, the alignment of device
/// allocations, so a tensor's device address is as aligned as any kernel expects.
pub const TENSOR_ALIGN: u64 = 256;

/// Name of the group that holds tensors outside any layer (embeddings, final norm, head).
pub const OTHER_GROUP: &str = "other";

/// Words that, followed by a number, mark a layer: `model.layers.3.`, `transformer.h.3.`,
/// `encoder.layer.3.`, `blocks.3.`.
const LAYER_WORDS: [&str; 5] = ["layers", "layer", "h", "blocks", "block"];

/// One tensor of a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Its name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Byte offset within the set.
    pub offset: u64,
    /// Bytes: product of `shape` times the dtype's size.
    pub len: u64,
}

impl TensorInfo {
    /// Elements: the product of the shape (1 for a scalar); `None` on overflow.
    pub fn elements(&self) -> Option<u64> {
        elements(&self.shape)
    }

    /// One past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// The product of `shape`, `None` on overflow.
pub fn elements(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
}

/// Bytes of a tensor of `dtype` and `shape`, `None` on overflow.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<u64> {
    elements(shape)?.checked_mul(dtype.size_bytes())
}

/// Tensors of one layer (or the tensors outside any layer), for layer-wise readiness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerGroup {
    /// The layer prefix (`model.layers.3`), or [`OTHER_GROUP`].
    pub name: String,
    /// Indices into [`WeightSetDesc::tensors`], by offset.
    pub tensor_indices: Vec<usize>,
    /// First byte of the group's first tensor.
    pub start: u64,
    /// One past the group's last byte. For a set made by [`WeightSetDesc::layout`] the group
    /// covers `[start, end)` alone; for other sets this is the hull of its tensors.
    pub end: u64,
}

/// A weight set's tensors and size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightSetDesc {
    /// Tensors, by offset for a laid-out set.
    pub tensors: Vec<TensorInfo>,
    /// Bytes of the set.
    pub total_bytes: u64,
}

/// A tensor to lay out: name, dtype and shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions.
    pub shape: Vec<u64>,
}

/// The layer a tensor name belongs to, as `(stack, index)`: `model.layers.3.mlp.w` gives
/// `("model.layers", 3)`; `None` outside any layer.
pub fn layer_of(name: &str) -> Option<(&str, u64)> {
    let mut pos = 0;
    let parts: Vec<&str> = name.split('.').collect();
    for w in parts.windows(2) {
        pos += w[0].len() + 1;
        if LAYER_WORDS.contains(&w[0]) {
            if let Ok(n) = w[1].parse::<u64>() {
                return Some((&name[..pos - 1], n));
            }
        }
    }
    None
}

/// Sort key of a tensor's group: outside-layer tensors first, then stacks by name, layers by
/// number.
fn group_key(name: &str) -> (u8, &str, u64) {
    match layer_of(name) {
        Some((stack, n)) => (1, stack, n),
        None => (0, "", 0),
    }
}

fn group_name(key: (u8, &str, u64)) -> String {
    match key {
        (0, _, _) => OTHER_GROUP.to_string(),
        (_, stack, n) => format!("{stack}.{n}"),
    }
}

impl WeightSetDesc {
    /// A description of tensors at given offsets, validated: unique names, each length equal to
    /// its shape's elements times the dtype size, each range inside `total_bytes`, no two
    /// ranges overlapping.
    pub fn new(tensors: Vec<TensorInfo>, total_bytes: u64) -> Result<WeightSetDesc> {
        validate(&tensors, total_bytes).map_err(Error::InvalidArgument)?;
        Ok(WeightSetDesc {
            tensors,
            total_bytes,
        })
    }

    /// Lays `specs` out: tensors grouped by layer (outside-layer tensors first, then layers in
    /// numeric order; by name inside a group), each at a multiple of [`TENSOR_ALIGN`], so each
    /// group is one contiguous range.
    pub fn layout(specs: Vec<TensorSpec>) -> Result<WeightSetDesc> {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by(|&a, &b| {
            (group_key(&specs[a].name), &specs[a].name)
                .cmp(&(group_key(&specs[b].name), &specs[b].name))
        });
        let mut tensors = Vec::with_capacity(specs.len());
        let mut cursor = 0u64;
        let overflow = |n: &str| Error::InvalidArgument(format!("tensor `{n}` is too large"));
        for i in order {
            let s = &specs[i];
            let len = byte_len(s.dtype, &s.shape).ok_or_else(|| overflow(&s.name))?;
            let offset = cursor
                .checked_next_multiple_of(TENSOR_ALIGN)
                .ok_or_else(|| overflow(&s.name))?;
            cursor = offset.checked_add(len).ok_or_else(|| overflow(&s.name))?;
            tensors.push(TensorInfo {
                name: s.name.clone(),
                dtype: s.dtype,
                shape: s.shape.clone(),
                offset,
                len,
            });
        }
        WeightSetDesc::new(tensors, cursor)
    }

    /// The index of the tensor called `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// The tensor called `name`.
    pub fn find(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Tensors grouped by layer: the outside-layer group ([`OTHER_GROUP`]) first when there is
    /// one, then layers by stack name and number.
    pub fn layers(&self) -> Vec<LayerGroup> {
        let mut groups: BTreeMap<(u8, &str, u64), Vec<usize>> = BTreeMap::new();
        for (i, t) in self.tensors.iter().enumerate() {
            groups.entry(group_key(&t.name)).or_default().push(i);
        }
        groups
            .into_iter()
            .map(|(key, mut idx)| {
                idx.sort_by_key(|&i| self.tensors[i].offset);
                let start = idx.iter().map(|&i| self.tensors[i].offset).min();
                let end = idx.iter().map(|&i| self.tensors[i].end()).max();
                LayerGroup {
                    name: group_name(key),
                    start: start.unwrap_or(0),
                    end: end.unwrap_or(0),
                    tensor_indices: idx,
                }
            })
            .collect()
    }

    /// Bytes per dtype, by dtype.
    pub fn bytes_by_dtype(&self) -> BTreeMap<DType, (usize, u64)> {
        let mut m: BTreeMap<DType, (usize, u64)> = BTreeMap::new();
        for t in &self.tensors {
            let e = m.entry(t.dtype).or_default();
            e.0 += 1;
            e.1 += t.len;
        }
        m
    }
}

/// Checks a set of tensors; the error is one line naming the tensor(s) at fault.
pub(crate) fn validate(
    tensors: &[TensorInfo],
    total_bytes: u64,
) -> std::result::Result<(), String> {
    let mut names = HashSet::with_capacity(tensors.len());
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(format!("duplicate tensor name `{}`", t.name));
        }
        let Some(want) = byte_len(t.dtype, &t.shape) else {
            return Err(format!(
                "tensor `{}`: shape {:?} overflows",
                t.name, t.shape
            ));
        };
        if want != t.len {
            return Err(format!(
                "tensor `{}`: shape {:?} of {} needs {want} bytes but its range holds {}",
                t.name, t.shape, t.dtype, t.len
            ));
        }
        match t.offset.checked_add(t.len) {
            Some(end) if end <= total_bytes => {}
            _ => {
                return Err(format!(
                    "tensor `{}`: bytes {}..{} lie past the end of the data ({total_bytes} bytes)",
                    t.name,
                    t.offset,
                    t.offset.saturating_add(t.len)
                ))
            }
        }
    }
    let mut by_off: Vec<&TensorInfo> = tensors.iter().filter(|t| t.len > 0).collect();
    by_off.sort_by_key(|t| t.offset);
    for w in by_off.windows(2) {
        if w[0].end() > w[1].offset {
            return Err(format!(
                "tensors `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap",
                w[0].name,
                w[0].offset,
                w[0].end(),
                w[1].name,
                w[1].offset,
                w[1].end()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
