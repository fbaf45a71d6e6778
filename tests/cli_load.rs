//! `vramswap inspect` and `vramswap load`, as a user runs them.

mod common;

use std::path::Path;
use std::process::Command;

use vramswap::load::save;
use vramswap::weights::DType;

fn vramswap() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vramswap"));
    c.env_remove("VRAMSWAP_BACKEND")
        .env_remove("VRAMSWAP_CUDA_DRIVER")
        .env("RUST_BACKTRACE", "1");
    c
}

fn model(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("m.safetensors");
    let w = vec![0u8; 48];
    let h = vec![0u8; 24];
    save(
        &f,
        &[
            ("model.embed_tokens.weight", DType::F32, &[4, 3], &w),
            ("model.layers.0.mlp.weight", DType::F16, &[3, 4], &h),
            ("model.layers.1.mlp.weight", DType::F16, &[3, 4], &h),
        ],
    )
    .unwrap();
    f
}

#[test]
fn inspect_prints_a_table_with_totals_and_dtype_breakdown() {
    let dir = tempfile::tempdir().unwrap();
    let f = model(dir.path());
    let out = vramswap().arg("inspect").arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.contains("model.layers.1.mlp.weight  F16       [3, 4]"),
        "{s}"
    );
    assert!(s.contains("3 tensors in 1 file(s), 96 bytes"), "{s}");
    assert!(s.contains("3 layer groups"), "{s}");
    assert!(
        s.lines()
            .any(|l| l.starts_with("F16") && l.contains("48") && l.contains("50.0%")),
        "{s}"
    );
}

#[test]
fn inspect_json_lists_tensors_and_dtypes_of_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    model(dir.path());
    let v = common::json_output(vramswap().args(["inspect", "--json"]).arg(dir.path()));
    assert_eq!(v["total_tensors"], 3);
    assert_eq!(v["total_bytes"], 96);
    assert_eq!(v["dtypes"]["F16"]["tensors"], 2);
    assert_eq!(v["tensors"][0]["name"], "model.embed_tokens.weight");
    assert_eq!(v["layers"][1], "model.layers.0");
}

#[test]
fn inspect_of_a_malformed_file_fails_with_one_error_line_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.safetensors");
    let mut bytes = 9u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{\"a\": 1}");
    std::fs::write(&f, &bytes).unwrap();
    for args in [
        vec!["inspect"],
        vec!["inspect", "--json"],
        vec!["--backend", "sim", "load"],
    ] {
        let out = vramswap().args(&args).arg(&f).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains("bad.safetensors"), "{err}");
        assert!(err.contains("runs past the end of the file"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn inspect_of_a_missing_path_fails_cleanly() {
    let out = vramswap()
        .args(["inspect", "/no/such/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("error: /no/such/model"), "{err}");
}

#[test]
fn load_on_sim_reports_bytes_and_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let f = model(dir.path());
    for extra in [
        vec!["--cast", "bf16"],
        vec!["--direct"],
        vec!["--source", "mmap-register"],
        vec!["--budget", "1GiB"],
        vec!["--budget", "0.5GB"],
    ] {
        let v = common::json_output(
            vramswap()
                .args(["--backend", "sim", "load", "--json"])
                .args(&extra)
                .arg(&f),
        );
        assert_eq!(v["tensors"], 3);
        assert_eq!(v["direct"], extra[0] == "--direct");
        assert!(v["gb_per_s"].as_f64().unwrap() >= 0.0);
        // The copy alone, without the one-time pinning inside the same command, is never slower.
        assert!(v["copy_gb_per_s"].as_f64().unwrap() >= v["gb_per_s"].as_f64().unwrap());
        assert!(v["pin_seconds"].as_f64().unwrap() >= 0.0);
    }
    let out = vramswap()
        .args(["--backend", "sim", "load"])
        .arg(&f)
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.starts_with("loaded 3 tensors") && s.contains("GB/s"),
        "{s}"
    );
    let out = vramswap()
        .args(["--backend", "sim", "load", "--budget", "12parsecs"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unknown unit `parsecs`"), "{err}");
}
