//! What the engine reports: per-set state and the counters of the seeds' status endpoint.

use std::time::Duration;

use serde::Serialize;

/// Where a weight set is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// Registered from a path; nothing loaded.
    OnDisk,
    /// In the pinned host arena only.
    InHost,
    /// Device memory backed and copies in flight.
    Uploading,
    /// Resident on the device (the host copy stays).
    OnDevice,
    /// A dirty set being copied back to the host.
    Downloading,
}

/// One set in [`EngineStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct SetStatus {
    /// Name.
    pub name: String,
    /// Where it is.
    pub state: Residency,
    /// Bytes of weights (0 while on disk and never loaded).
    pub bytes: u64,
    /// Bytes of device memory it occupies while resident (rounded to the granularity).
    pub device_bytes: u64,
    /// Seconds since it was last acquired or released by a guard.
    pub idle_secs: f64,
    /// Live guards.
    pub guards: usize,
    /// Whether it must be copied back before an offload.
    pub dirty: bool,
    /// Whether its device addresses survive offloads (reserved virtual range).
    pub stable_addresses: bool,
    /// Base device address while resident (or reserved).
    pub device_ptr: Option<u64>,
    /// Where it reloads from after a release: a path, or `memory` (no source: cannot release).
    pub source: String,
    /// The last error an operation on it hit, if any.
    pub last_error: Option<String>,
}

/// Counters of everything the engine has done.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Loads from a source into the host arena (this process's own reads from disk).
    pub loads: u64,
    /// Host copies attached from the shared host store instead of loaded
    /// ([`super::SwapConfig::store`]).
    pub store_attaches: u64,
    /// Host-to-device swaps (uploads).
    pub h2d_swaps: u64,
    /// Device-to-host swaps (offloads, clean or dirty).
    pub d2h_swaps: u64,
    /// Offloads that copied a dirty set back.
    pub dirty_copies: u64,
    /// Releases of host copies.
    pub releases: u64,
    /// Offloads made to fit a budget or relieve allocator pressure.
    pub evictions: u64,
    /// Bytes uploaded.
    pub bytes_h2d: u64,
    /// Bytes copied back.
    pub bytes_d2h: u64,
    /// Last swap-in, milliseconds (device time of the copies).
    pub last_swap_in_ms: f64,
    /// Mean swap-in, milliseconds.
    pub mean_swap_in_ms: f64,
    /// Last swap-in throughput, GB/s.
    pub last_swap_in_gbps: f64,
    /// Mean swap-in throughput (bytes over time), GB/s.
    pub mean_swap_in_gbps: f64,
    /// Last swap-out, milliseconds.
    pub last_swap_out_ms: f64,
    /// Mean swap-out, milliseconds.
    pub mean_swap_out_ms: f64,
    /// Last load from source, milliseconds.
    pub last_load_ms: f64,
    #[serde(skip)]
    pub(crate) swap_in_total: Duration,
    #[serde(skip)]
    pub(crate) swap_in_bytes: u64,
    #[serde(skip)]
    pub(crate) swap_out_total: Duration,
}

impl Counters {
    pub(crate) fn swap_in(&mut self, bytes: u64, t: Duration) {
        self.h2d_swaps += 1;
        self.bytes_h2d += bytes;
        self.swap_in_total += t;
        self.swap_in_bytes += bytes;
        self.last_swap_in_ms = t.as_secs_f64() * 1e3;
        self.last_swap_in_gbps = gbps(bytes, t);
        self.mean_swap_in_ms = self.swap_in_total.as_secs_f64() * 1e3 / self.h2d_swaps as f64;
        self.mean_swap_in_gbps = gbps(self.swap_in_bytes, self.swap_in_total);
    }

    pub(crate) fn swap_out(&mut self, copied: u64, t: Duration) {
        self.d2h_swaps += 1;
        self.bytes_d2h += copied;
        if copied > 0 {
            self.dirty_copies += 1;
        }
        self.swap_out_total += t;
        self.last_swap_out_ms = t.as_secs_f64() * 1e3;
        self.mean_swap_out_ms = self.swap_out_total.as_secs_f64() * 1e3 / self.d2h_swaps as f64;
    }
}

/// GB/s (10^9 bytes per second) of `bytes` in `t`.
pub fn gbps(bytes: u64, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if s > 0.0 {
        bytes as f64 / s / 1e9
    } else {
        0.0
    }
}

/// A snapshot of the engine, serialisable to JSON (the content of the Python `status()` and the
/// C `vramswap_engine_status_json`).
#[derive(Clone, Debug, Serialize)]
pub struct EngineStatus {
    /// `cuda` or `sim`.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Device budget, if any.
    pub device_budget: Option<u64>,
    /// Device bytes occupied by resident sets.
    pub device_used: u64,
    /// Free and total device memory now.
    pub device_free: u64,
    /// Total device memory.
    pub device_total: u64,
    /// Host budget, if any.
    pub host_budget: Option<u64>,
    /// Pinned host bytes in use by weight sets.
    pub host_used: u64,
    /// Every set, by name.
    pub sets: Vec<SetStatus>,
    /// Counters.
    pub counters: Counters,
}
