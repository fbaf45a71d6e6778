//! `vramswap selftest`: verifies vramswap on the machine it runs on, with no Rust toolchain.
//!
//! It runs the backend conformance suite (the same checks the tests run on `sim` and on the
//! emulated driver), a swap-engine round trip of a few hundred MiB of random weights with
//! checksums on both sides, and a quick bandwidth table.

use serde::Serialize;

use crate::backend::{self, SharedBackend, Stream};
use crate::bench::bandwidth::{self, BandwidthConfig, BandwidthReport};
use crate::conformance::{self, CheckOutcome};
use crate::error::Result;
use crate::swap::{SwapConfig, SwapEngine};

/// What to run.
#[derive(Clone, Debug)]
pub struct SelftestOptions {
    /// Bytes of the round trip's weight set.
    pub round_trip_bytes: u64,
    /// Run the bandwidth table.
    pub bandwidth: bool,
}

impl Default for SelftestOptions {
    fn default() -> Self {
        SelftestOptions {
            round_trip_bytes: 256 << 20,
            bandwidth: true,
        }
    }
}

/// The swap-engine round trip.
#[derive(Clone, Debug, Serialize)]
pub struct RoundTrip {
    /// Whether every step held.
    pub passed: bool,
    /// What failed, if anything.
    pub message: Option<String>,
    /// Bytes of the set.
    pub bytes: u64,
    /// Swaps in (each verified by device checksums against the host copy).
    pub swaps_in: u64,
    /// Mean swap-in throughput, GB/s.
    pub swap_in_gbps: f64,
    /// Clean swap-out, milliseconds (unmap, no copy).
    pub clean_swap_out_ms: f64,
    /// Whether the set kept its device addresses across swaps.
    pub stable_addresses: bool,
}

/// The whole report (`vramswap selftest --json`).
#[derive(Clone, Debug, Serialize)]
pub struct SelftestReport {
    /// `cuda` or `sim`.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Whether the device is emulated (simulator or emulated driver), not hardware.
    pub emulated: bool,
    /// Driver version (e.g. 13000), 0 on `sim`.
    pub driver_version: i32,
    /// Device memory.
    pub total_memory: u64,
    /// Every conformance check.
    pub checks: Vec<CheckOutcome>,
    /// The engine round trip.
    pub round_trip: RoundTrip,
    /// The quick bandwidth table, if run.
    pub bandwidth: Option<BandwidthReport>,
    /// True when every check and the round trip passed.
    pub passed: bool,
}

fn round_trip(b: &SharedBackend, bytes: u64) -> RoundTrip {
    let mut rt = RoundTrip {
        passed: false,
        message: None,
        bytes: 0,
        swaps_in: 0,
        swap_in_gbps: 0.0,
        clean_swap_out_ms: 0.0,
        stable_addresses: false,
    };
    let r = (|| -> Result<()> {
        let mut config = SwapConfig::default();
        config.transfer.verify = true;
        let e = SwapEngine::new(b.clone(), config)?;
        rt.bytes = crate::bench::swap::register_synthetic(&e, "selftest", bytes, 42)?;
        let g = e.acquire("selftest")?;
        let base = g.base();
        let sum = backend::checksum(b.as_ref(), base, g.bytes(), Stream::DEFAULT)?;
        drop(g);
        let t = std::time::Instant::now();
        e.offload("selftest")?;
        rt.clean_swap_out_ms = t.elapsed().as_secs_f64() * 1e3;
        // Dirty round trip: change a byte on the device, copy back, swap in, compare.
        let g = e.acquire("selftest")?;
        rt.stable_addresses = g.base() == base && g.stable_addresses();
        let first = g.read(0, 1)?[0];
        backend::upload(b.as_ref(), g.base(), &[first ^ 0xFF], Stream::DEFAULT)?;
        drop(g);
        e.mark_dirty("selftest")?;
        e.offload("selftest")?;
        let g = e.acquire("selftest")?;
        let now = g.read(0, 1)?[0];
        if now != first ^ 0xFF {
            return Err(crate::Error::InvalidState(format!(
                "a dirty change did not survive a swap: wrote {:#04x}, read {now:#04x}",
                first ^ 0xFF
            )));
        }
        backend::upload(b.as_ref(), g.base(), &[first], Stream::DEFAULT)?;
        let back = backend::checksum(b.as_ref(), g.base(), g.bytes(), Stream::DEFAULT)?;
        if back != sum {
            return Err(crate::Error::ChecksumMismatch {
                what: "the round-trip set after its swaps".into(),
                expected: sum,
                actual: back,
            });
        }
        drop(g);
        e.offload("selftest")?;
        let c = e.status().counters;
        rt.swaps_in = c.h2d_swaps;
        rt.swap_in_gbps = c.mean_swap_in_gbps;
        Ok(())
    })();
    match r {
        Ok(()) => rt.passed = true,
        Err(e) => rt.message = Some(e.to_string()),
    }
    rt
}

/// Runs the self-test on `backend`.
pub fn run(
    b: &SharedBackend,
    opts: &SelftestOptions,
    progress: &mut dyn FnMut(&str),
) -> SelftestReport {
    let mut checks = Vec::new();
    for c in conformance::checks() {
        progress(c.name);
        checks.push(conformance::run_one(b.as_ref(), &c));
    }
    progress("engine round trip");
    let round_trip = round_trip(b, opts.round_trip_bytes);
    let bandwidth = opts.bandwidth.then(|| {
        progress("bandwidth");
        let mut cfg = BandwidthConfig::quick();
        cfg.chunk_sizes = vec![4 << 20, 16 << 20, 64 << 20];
        cfg.stream_counts = vec![1, 2];
        // On `sim` the figures are the link model's, as with `bench`: without one, copies run
        // at host memcpy speed on host threads and the sweep beats its own ceiling.
        bandwidth::run(&bandwidth::with_sim_model(b), &cfg, &mut |_| {}).ok()
    });
    let p = b.properties();
    let passed = checks.iter().all(|c| c.passed) && round_trip.passed;
    SelftestReport {
        backend: p.backend.to_string(),
        device: p.name.clone(),
        emulated: p.emulated,
        driver_version: p.driver_version,
        total_memory: p.total_memory,
        checks,
        round_trip,
        bandwidth: bandwidth.flatten(),
        passed,
    }
}

impl SelftestReport {
    /// The text report.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vramswap selftest on {} ({}{}), {:.1} GiB{}",
            self.device,
            self.backend,
            if self.emulated {
                ", emulated: not real hardware"
            } else {
                ""
            },
            self.total_memory as f64 / (1u64 << 30) as f64,
            if self.driver_version > 0 {
                format!(
                    ", driver {}.{}",
                    self.driver_version / 1000,
                    (self.driver_version % 1000) / 10
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(s, "\nconformance:");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "  [{}] {:<58} {:>8.1} ms{}",
                if c.passed { "pass" } else { "FAIL" },
                c.name,
                c.ms,
                c.message
                    .as_ref()
                    .map(|m| format!("\n         {m}"))
                    .unwrap_or_default()
            );
        }
        let r = &self.round_trip;
        let _ = writeln!(
            s,
            "\nengine round trip ({:.0} MiB, verified by checksums): [{}] {} swaps in at {:.2} GB/s, clean swap-out {:.3} ms, stable addresses: {}{}",
            r.bytes as f64 / (1 << 20) as f64,
            if r.passed { "pass" } else { "FAIL" },
            r.swaps_in,
            r.swap_in_gbps,
            r.clean_swap_out_ms,
            r.stable_addresses,
            r.message.as_ref().map(|m| format!("\n  {m}")).unwrap_or_default()
        );
        if let Some(bw) = &self.bandwidth {
            let _ = writeln!(s, "\nbandwidth (quick):");
            for line in bw.table().lines() {
                let _ = writeln!(s, "  {line}");
            }
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count() + usize::from(!r.passed);
        let _ = writeln!(
            s,
            "\n{}",
            if self.passed {
                "all checks passed".to_string()
            } else {
                format!("{failed} check(s) FAILED")
            }
        );
        s
    }
}
