//! The guard that keeps a weight set on the device.

use std::sync::Arc;

use crate::backend::{self, DevicePtr, Stream};
use crate::error::{Error, Result};
use crate::transfer::{Group, Transfer};
use crate::weights::{HostWeights, TensorInfo, WeightSetDesc};

use super::{Inner, Layout};

/// Keeps a weight set resident while it lives: no offload, eviction or idle timeout touches a
/// set a guard holds. Exposes the device address of every tensor.
///
/// A guard from [`super::SwapEngine::acquire_streaming`] may be handed out before every byte has
/// arrived: wait for a layer ([`WeightGuard::wait_layer`]) or order a compute stream after it
/// ([`WeightGuard::order_before`]) before reading it.
pub struct WeightGuard {
    inner: Arc<Inner>,
    name: String,
    base: DevicePtr,
    layout: Arc<Layout>,
    transfer: Option<Arc<Transfer>>,
    stable: bool,
    host: Arc<HostWeights>,
}

impl std::fmt::Debug for WeightGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightGuard")
            .field("name", &self.name)
            .field("base", &self.base)
            .field("bytes", &self.layout.desc.total_bytes)
            .finish()
    }
}

impl WeightGuard {
    pub(super) fn new(
        inner: Arc<Inner>,
        name: String,
        base: DevicePtr,
        layout: Arc<Layout>,
        transfer: Option<Arc<Transfer>>,
        stable: bool,
        host: Arc<HostWeights>,
    ) -> WeightGuard {
        WeightGuard {
            inner,
            name,
            base,
            layout,
            transfer,
            stable,
            host,
        }
    }

    /// The host copy of the set (in the pinned arena, or the mapped files in direct mode). It
    /// holds what the device holds, unless the set was changed on the device (dirty) and not
    /// yet copied back. A CPU compute path reads its weights from here.
    pub fn host(&self) -> &HostWeights {
        &self.host
    }

    /// The host copy of one tensor's bytes.
    pub fn host_tensor(&self, name: &str) -> Result<&[u8]> {
        self.host.tensor(name).ok_or_else(|| Error::NotFound {
            kind: "tensor",
            name: format!("{}/{name}", self.name),
        })
    }

    /// The set's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Device address of the set's first byte.
    pub fn base(&self) -> DevicePtr {
        self.base
    }

    /// Whether the addresses stay the same across offloads (reserved virtual range).
    pub fn stable_addresses(&self) -> bool {
        self.stable
    }

    /// Bytes of weights.
    pub fn bytes(&self) -> u64 {
        self.layout.desc.total_bytes
    }

    /// The set's description (tensors, dtypes, shapes, offsets).
    pub fn desc(&self) -> &WeightSetDesc {
        &self.layout.desc
    }

    /// The tensors.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.desc.tensors
    }

    /// The tensor called `name`, or [`Error::NotFound`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.layout
            .desc
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::NotFound {
                kind: "tensor",
                name: format!("{}/{name}", self.name),
            })
    }

    /// Device address of a tensor.
    pub fn tensor_ptr(&self, name: &str) -> Result<DevicePtr> {
        Ok(self.base.offset(self.tensor(name)?.offset))
    }

    /// The groups (layers) the set is copied in, in order.
    pub fn groups(&self) -> &[Group] {
        &self.layout.plan.groups
    }

    /// Index of the group that contains `tensor`.
    pub fn group_of(&self, tensor: &str) -> Result<usize> {
        let t = self.tensor(tensor)?;
        self.groups()
            .iter()
            .position(|g| t.offset >= g.offset && t.offset + t.len <= g.offset + g.len)
            .ok_or_else(|| Error::InvalidState(format!("tensor `{tensor}` lies in no group")))
    }

    /// True when group `g` has arrived on the device.
    pub fn is_layer_ready(&self, g: usize) -> Result<bool> {
        self.check_group(g)?;
        match &self.transfer {
            Some(t) => t.is_group_ready(g),
            None => Ok(true),
        }
    }

    /// Blocks until group `g` has arrived.
    pub fn wait_layer(&self, g: usize) -> Result<()> {
        self.check_group(g)?;
        match &self.transfer {
            Some(t) => t.wait_group(g),
            None => Ok(()),
        }
    }

    /// Blocks until the whole set has arrived.
    pub fn wait_all(&self) -> Result<()> {
        match &self.transfer {
            Some(t) => t.wait(),
            None => Ok(()),
        }
    }

    /// Makes later work on `stream` wait for group `g` (all groups with `None`), without
    /// blocking the host.
    pub fn order_before(&self, stream: Stream, g: Option<usize>) -> Result<()> {
        if let Some(g) = g {
            self.check_group(g)?;
        }
        match &self.transfer {
            Some(t) => t.order_before(stream, g),
            None => Ok(()),
        }
    }

    /// Records that work queued on `stream` uses the set: a later offload waits for that work
    /// before unmapping (like the allocator's `record_stream`).
    pub fn record_stream(&self, stream: Stream) -> Result<()> {
        self.inner.record_use(&self.name, stream)
    }

    /// Copies `len` bytes at `offset` of the set back from the device.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.bytes())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "range {offset}+{len} is outside the {}-byte set",
                    self.bytes()
                ))
            })?;
        let _ = end;
        self.wait_all()?;
        let mut out = vec![0u8; len as usize];
        backend::download(
            self.inner.backend.as_ref(),
            &mut out,
            self.base.offset(offset),
            Stream::DEFAULT,
        )?;
        Ok(out)
    }

    /// Copies a tensor's bytes back from the device.
    pub fn read_tensor(&self, name: &str) -> Result<Vec<u8>> {
        let t = self.tensor(name)?;
        self.read(t.offset, t.len)
    }

    fn check_group(&self, g: usize) -> Result<()> {
        if g >= self.groups().len() {
            return Err(Error::InvalidArgument(format!(
                "group {g} of a set with {} groups",
                self.groups().len()
            )));
        }
        Ok(())
    }
}

impl Drop for WeightGuard {
    fn drop(&mut self) {
        self.transfer = None;
        self.inner.release_guard(&self.name);
    }
}
