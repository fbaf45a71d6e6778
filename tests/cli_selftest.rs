//! `vramswap selftest` as a user runs it.

use std::process::Command;

#[test]
fn selftest_on_sim_passes_and_reports_every_check_as_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_vramswap"))
        .args([
            "selftest",
            "--backend",
            "sim",
            "--size-mb",
            "8",
            "--no-bandwidth",
            "--json",
        ])
        .env_remove("VRAMSWAP_SIM_CONF")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true);
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), vramswap::conformance::checks().len());
    assert!(checks.iter().all(|c| c["passed"] == true));
    assert_eq!(v["round_trip"]["passed"], true);
    assert_eq!(v["round_trip"]["swaps_in"], 3);
    assert_eq!(v["emulated"], true);
}

#[test]
fn selftest_exits_non_zero_when_a_check_fails() {
    // A device too small for the round trip's set makes that step fail.
    let out = Command::new(env!("CARGO_BIN_EXE_vramswap"))
        .args([
            "selftest",
            "--backend",
            "sim",
            "--size-mb",
            "64",
            "--no-bandwidth",
        ])
        .env("VRAMSWAP_SIM_CONF", "capacity_mb:48")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[FAIL]"), "{text}");
    assert!(text.contains("check(s) FAILED"), "{text}");
}
