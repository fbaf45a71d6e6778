//! `vramswap selftest` as a user runs it.

mod common;

use std::process::Command;

#[test]
fn selftest_on_sim_passes_and_reports_every_check_as_json() {
    let v = common::json_output(
        Command::new(env!("CARGO_BIN_EXE_vramswap"))
            .args([
                "selftest",
                "--backend",
                "sim",
                "--size-mb",
                "8",
                "--no-bandwidth",
                "--json",
            ])
            .env_remove("VRAMSWAP_SIM_CONF"),
    );
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

#[test]
fn selftest_bandwidth_on_sim_is_the_link_models_and_never_beats_its_ceiling() {
    // Without a configured link the simulator copies at host memcpy speed on host threads, and
    // the sweep used to report up to ~190 % of its own ceiling under a header saying the figures
    // came from the model. Selftest now measures the same modelled link `bench` does.
    let v = common::json_output(
        Command::new(env!("CARGO_BIN_EXE_vramswap"))
            .args(["selftest", "--backend", "sim", "--size-mb", "8", "--json"])
            .env_remove("VRAMSWAP_SIM_CONF"),
    );
    let bw = &v["bandwidth"];
    for dir in ["h2d", "d2h"] {
        let d = &bw[dir];
        for p in d["sweep"].as_array().unwrap() {
            let r = p["ratio"].as_f64().unwrap();
            assert!(r > 0.0 && r <= 1.0 + 1e-6, "{dir}: {p}");
        }
        let ceiling = d["pinned"]["gbps"].as_f64().unwrap();
        assert!((ceiling - 4.0).abs() < 0.01, "{dir} ceiling {ceiling}");
    }
    assert_eq!(bw["model"]["h2d_gbps"], 4.0, "{bw}");
    assert_eq!(bw["model"]["d2h_gbps"], 4.0, "{bw}");
}
