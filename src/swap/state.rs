//! Where a weight set's bytes are, as one enum whose variants carry what that place needs: a
//! set being uploaded always has its transfer, a set with a host copy always has its layout,
//! and a set on the source alone has neither. The flags and options this replaces let the
//! engine write down states it then had to rule out with `.expect(...)` (an `Uploading` set
//! without a transfer, a resident set without a host copy), and two bugs were such states.
//!
//! Device memory is not part of it: a set's address reservation outlives its residency (so a
//! swapped-in set keeps its addresses), and whether memory backs it is the `DeviceSpace`'s to
//! say. [`Residency`], what status reports, is derived from this.

use std::sync::Arc;
use std::time::Instant;

use super::layout::Layout;
use super::status::Residency;
use crate::transfer::Transfer;
use crate::weights::HostWeights;

/// A set's host copy and how it lies on the device.
#[derive(Clone, Debug)]
pub(super) struct Loaded {
    /// The host copy (pinned arena memory, or a registered file mapping).
    pub host: Arc<HostWeights>,
    /// Offsets, copy plan and checksums of the set on the device.
    pub layout: Arc<Layout>,
}

/// Where a set is.
#[derive(Debug)]
pub(super) enum SetState {
    /// On its source only (a file), or nowhere (a set registered from memory and released).
    OnDisk,
    /// In host memory only.
    InHost(Loaded),
    /// Being copied to the device by `transfer`, started at `started`.
    Uploading {
        /// The host copy and layout.
        loaded: Loaded,
        /// The copy; waited for (and verified) by the first acquire that needs the bytes.
        transfer: Arc<Transfer>,
        /// When the copy was queued (its time, where the copy's events cannot say).
        started: Instant,
    },
    /// On the device and in host memory.
    OnDevice(Loaded),
    /// Being copied back from the device into its host copy (a dirty offload).
    Downloading(Loaded),
}

impl SetState {
    /// What status reports.
    pub(super) fn residency(&self) -> Residency {
        match self {
            SetState::OnDisk => Residency::OnDisk,
            SetState::InHost(_) => Residency::InHost,
            SetState::Uploading { .. } => Residency::Uploading,
            SetState::OnDevice(_) => Residency::OnDevice,
            SetState::Downloading(_) => Residency::Downloading,
        }
    }

    /// The host copy and layout, where the set has them (everywhere but on disk).
    pub(super) fn loaded(&self) -> Option<&Loaded> {
        match self {
            SetState::OnDisk => None,
            SetState::InHost(l) | SetState::OnDevice(l) | SetState::Downloading(l) => Some(l),
            SetState::Uploading { loaded, .. } => Some(loaded),
        }
    }

    /// The same, to change (a dirty offload replaces the layout's checksums).
    pub(super) fn loaded_mut(&mut self) -> Option<&mut Loaded> {
        match self {
            SetState::OnDisk => None,
            SetState::InHost(l) | SetState::OnDevice(l) | SetState::Downloading(l) => Some(l),
            SetState::Uploading { loaded, .. } => Some(loaded),
        }
    }

    /// The transfer of an upload in flight.
    pub(super) fn transfer(&self) -> Option<&Arc<Transfer>> {
        match self {
            SetState::Uploading { transfer, .. } => Some(transfer),
            _ => None,
        }
    }

    /// Moves to the variant `to` with the same host copy (`OnDisk` keeps nothing). From
    /// `OnDisk` there is nothing to carry: it stays `OnDisk` (callers move from there by
    /// loading, with [`SetState::InHost`]).
    pub(super) fn become_(&mut self, to: fn(Loaded) -> SetState) {
        let old = std::mem::replace(self, SetState::OnDisk);
        *self = match old {
            SetState::OnDisk => SetState::OnDisk,
            SetState::InHost(l) | SetState::OnDevice(l) | SetState::Downloading(l) => to(l),
            SetState::Uploading { loaded, .. } => to(loaded),
        };
    }
}
