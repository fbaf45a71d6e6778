//! `swap-bench` under a failing driver: whichever `cuMemMap`, `cuMemCreate` or copy fails, the
//! bench returns (an error naming it, or its report) with nothing left behind: no thread still
//! running with the engine, no device memory, no mapping (issue 19).

use std::sync::Arc;
use std::time::Duration;

use vramswap::backend::sim::SimBackend;
use vramswap::bench::swap::{self, SwapBenchConfig};
use vramswap::swap::SwapConfig;
use vramswap_sim::FaultOp;

fn config() -> SwapBenchConfig {
    SwapBenchConfig {
        set_bytes: 4 << 20,
        sets: 2,
        compute: Some(Duration::from_millis(1)),
        reps: 1,
    }
}

#[test]
fn a_fault_at_any_point_leaves_nothing_behind() {
    let mut failed = 0;
    for op in [FaultOp::Map, FaultOp::PhysCreate, FaultOp::Copy] {
        for nth in 1..=24 {
            let sim = Arc::new(SimBackend::with_capacity(1 << 30));
            sim.inject_fault(op, nth);
            let backend: vramswap::backend::SharedBackend = sim.clone();
            let r = swap::run(&backend, SwapConfig::default(), &config());
            if let Err(e) = &r {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
            // Checked at once: a thread the bench left running would still hold the engine.
            let leaks = sim.device().leaks();
            assert!(leaks.is_clean(), "{op:?} #{nth} ({r:?}): {leaks:?}");
        }
    }
    assert!(
        failed > 0,
        "no injected fault made the bench fail: the sweep tests nothing"
    );
}
