//! `vramswap bench` as a user runs it on the simulated device.

mod common;

use std::process::Command;

#[test]
fn quick_bench_json_has_sane_figures_for_every_direction() {
    let dir = std::env::temp_dir().join(format!("vramswap-bench-svg-{}", std::process::id()));
    let v = common::json_output(
        Command::new(env!("CARGO_BIN_EXE_vramswap"))
            .args([
                "bench",
                "--backend",
                "sim",
                "--quick",
                "--size-mb",
                "32",
                "--json",
                "--svg",
            ])
            .arg(&dir)
            // On the bandwidth model the bench times copies by the model's schedule, not the
            // host clock, so these figures hold on a loaded machine too.
            .env("VRAMSWAP_SIM_CONF", "h2d_gbps:4,d2h_gbps:4"),
    );
    for dir_key in ["h2d", "d2h"] {
        let d = &v[dir_key];
        let pinned = d["pinned"]["gbps"].as_f64().unwrap();
        let pageable = d["pageable"]["gbps"].as_f64().unwrap();
        assert!(pinned > 0.0 && pageable > 0.0);
        assert!(
            pinned >= pageable,
            "{dir_key}: pinned {pinned} < pageable {pageable}"
        );
        for p in d["sweep"].as_array().unwrap() {
            let r = p["ratio"].as_f64().unwrap();
            // Timed by the model's schedule, a chunked copy never beats one large copy.
            assert!(
                r > 0.0 && r <= 1.0 + 1e-6,
                "{dir_key} sweep ratio {r} is above the ceiling: {p}"
            );
        }
        assert!(d["best"]["chunk_bytes"].as_u64().unwrap() >= 1 << 20);
    }
    // Two independent links: both directions at once carry twice one direction.
    let bidir = v["bidir"]["ratio"].as_f64().unwrap();
    assert!((1.9..=2.0001).contains(&bidir), "bidir ratio {bidir}");
    for f in ["bandwidth-h2d.svg", "bandwidth-d2h.svg"] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(svg.contains("<polyline"), "{f}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sizes_of_zero_or_past_u64_bytes_are_clean_usage_errors() {
    // 2^44 MiB is 2^64 bytes: it must be refused, not wrapped to 0.
    for cmd in ["bench", "selftest", "swap-bench", "soak"] {
        for size in ["0", "17592186044416"] {
            let out = Command::new(env!("CARGO_BIN_EXE_vramswap"))
                .args([cmd, "--backend", "sim", "--size-mb", size])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {size}: {err}");
            assert!(err.contains("out of range"), "{cmd} {size}: {err}");
        }
    }
}

#[test]
fn a_set_larger_than_the_device_is_refused_before_it_is_built() {
    // 100 000 MiB on the simulated 8 GiB device: refused at once (it used to be built in host
    // memory first, until the machine ran out).
    let out = Command::new(env!("CARGO_BIN_EXE_vramswap"))
        .args(["swap-bench", "--backend", "sim", "--size-mb", "100000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot fit the device"), "{err}");
}
