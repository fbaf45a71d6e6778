//! The command-line tool over the emulated CUDA driver with one driver call made to fail
//! (`VRAMSWAP_EMU_FAULTS=op:N`) at many points of an allocator replay (expandable segments, the
//! page pool) and of `swap-bench`: every run either succeeds or exits non-zero with an error that
//! names the failed driver call, and in both cases the emulator's exit report is clean (no
//! device memory, mapping, reservation or handle left behind; issue 19 item 7).

mod common;

use std::process::Command;

use common::emulator;

/// Runs the tool with `args` over the emulator with `fault` planted; returns (success,
/// stderr, the exit report's JSON).
fn run(args: &[&str], fault: &str, alloc_conf: &str) -> (bool, String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vramswap"))
        .args(args)
        .env("VRAMSWAP_CUDA_DRIVER", emulator())
        .env("VRAMSWAP_EMU_FAULTS", fault)
        .env("VRAMSWAP_EMU_REPORT", &report)
        .env("VRAMSWAP_ALLOC_CONF", alloc_conf)
        .env_remove("VRAMSWAP_EMU_CONF")
        .env_remove("VRAMSWAP_SWAP_CONF")
        .env_remove("VRAMSWAP_BACKEND")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no exit report ({e}); stderr:\n{stderr}"));
    (
        out.status.success(),
        stderr,
        serde_json::from_str(&text).unwrap(),
    )
}

fn sweep(name: &str, args: &[&str], alloc_conf: &str) -> usize {
    let mut failed = 0;
    for op in ["create", "map", "unmap", "release"] {
        for n in [1, 2, 3, 5, 8, 13] {
            let fault = format!("{op}:{n}");
            let (ok, stderr, report) = run(args, &fault, alloc_conf);
            let what = format!("{name} with {fault}");
            if !ok {
                failed += 1;
                // The error names the driver call that failed (`cuMemCreate`, `cuMemMap`, ...).
                assert!(
                    stderr.contains("error:") && stderr.contains("cuMem"),
                    "{what}: {stderr}"
                );
            }
            assert_eq!(
                report["clean"], true,
                "{what} left: {report}; stderr:\n{stderr}"
            );
        }
    }
    failed
}

#[test]
fn replays_with_a_failing_driver_call_leave_nothing_behind() {
    let args = ["replay", "--backend", "cuda", "--generate", "mixed"];
    let mut failed = 0;
    for conf in ["expandable_segments:true", "page_pool:true"] {
        failed += sweep(conf, &args, conf);
    }
    assert!(
        failed > 0,
        "no planted fault failed a replay: the sweep tests nothing"
    );
}

#[test]
fn swap_bench_with_a_failing_driver_call_leaves_nothing_behind() {
    let args = [
        "swap-bench",
        "--backend",
        "cuda",
        "--size-mb",
        "8",
        "--sets",
        "2",
        "--reps",
        "1",
    ];
    let failed = sweep("swap-bench", &args, "");
    assert!(
        failed > 0,
        "no planted fault failed swap-bench: the sweep tests nothing"
    );
}
