//! Extreme and silently-clamped values on the command line are clean errors, never panics
//! (issues 19 and 20): each case here panicked or was ignored before.

use std::process::{Command, Output};

fn vramswap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramswap"))
        .env_remove("VRAMSWAP_BACKEND")
        .env_remove("VRAMSWAP_CUDA_DRIVER")
        .args(args)
        .output()
        .unwrap()
}

/// The command failed with a one-line error that contains every word of `needles`, and did
/// not panic.
fn refused(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted; stderr: {err}");
    assert!(!err.contains("panicked"), "panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "error lacks `{n}`: {err}");
    }
}

#[test]
fn swap_bench_refuses_repetitions_that_cannot_run() {
    // `reps + 1` wrapped to 0 and indexed an empty vector.
    let max = u64::MAX.to_string();
    refused(
        &vramswap(&["swap-bench", "--backend", "sim", "--reps", &max]),
        &["--reps", "1..=1000"],
    );
    // 0 ran anyway (clamped to 1 in silence).
    refused(
        &vramswap(&["swap-bench", "--backend", "sim", "--reps", "0"]),
        &["--reps", "1..=1000"],
    );
    refused(
        &vramswap(&["swap-bench", "--backend", "sim", "--sets", "1"]),
        &["--sets", "2..=64"],
    );
}

#[test]
fn soak_refuses_zero_sets_and_cycles() {
    // `--sets 0` ran one set.
    refused(
        &vramswap(&["soak", "--backend", "sim", "--sets", "0"]),
        &["--sets", "1..=64"],
    );
    refused(
        &vramswap(&["soak", "--backend", "sim", "--cycles", "0"]),
        &["--cycles"],
    );
    refused(
        &vramswap(&["soak", "--backend", "sim", "--size-mb", "0"]),
        &["--size-mb"],
    );
}

#[test]
fn soak_says_the_size_of_the_sets_it_swapped() {
    let out = vramswap(&[
        "soak",
        "--backend",
        "sim",
        "--sets",
        "2",
        "--size-mb",
        "16",
        "--cycles",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sets"], 2);
    let set_bytes = v["set_bytes"].as_u64().unwrap();
    assert!(set_bytes > 0);
    // Swapped bytes include each tensor's device alignment, at most a few KiB per set.
    let swapped = v["bytes"].as_u64().unwrap();
    assert!(
        (2 * set_bytes..2 * set_bytes + (1 << 20)).contains(&swapped),
        "{swapped}"
    );

    let out = vramswap(&[
        "soak",
        "--backend",
        "sim",
        "--sets",
        "1",
        "--size-mb",
        "16",
        "--cycles",
        "1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("near the 16 MiB asked"), "{text}");
    let shown = format!("{:.1} MiB", set_bytes as f64 / (1u64 << 20) as f64);
    assert!(text.contains(&shown), "does not show {shown}: {text}");
}

#[test]
fn inspect_prints_a_tensor_name_of_64_kib_and_more() {
    // `{:<width$}` panicked with "Formatting argument out of range" for widths >= 65536.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.safetensors");
    let name = "w".repeat(70_000);
    let data = [0u8; 4];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).unwrap();
    safetensors::serialize_to_file([(name.as_str(), view)], None, &path).unwrap();
    let out = vramswap(&["inspect", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("name "), "{}", &lines[0][..40]);
    assert!(lines[1].starts_with(&name), "the long name is not printed");
    // The columns after the name line up with the header's.
    assert_eq!(lines[0].find("dtype"), lines[1].find("F32"));
}

#[cfg(feature = "infer")]
#[test]
fn new_model_refuses_a_non_empty_directory_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("notes.txt");
    std::fs::write(&keep, "mine").unwrap();
    let d = dir.path().to_str().unwrap();
    refused(&vramswap(&["new-model", d]), &["not empty", "--force"]);
    assert!(
        !dir.path().join("config.json").exists(),
        "wrote before refusing"
    );

    let out = vramswap(&["new-model", d, "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("config.json").exists());
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "mine");

    // An empty or missing directory needs no --force.
    let fresh = dir.path().join("fresh");
    let out = vramswap(&["new-model", fresh.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn size_flags_take_bytes_and_units() {
    // `load --budget` took bytes only; the configuration variables and Python take "24GiB".
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let data = [0u8; 4096];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1024], &data).unwrap();
    safetensors::serialize_to_file([("w", view)], None, &path).unwrap();
    let p = path.to_str().unwrap();
    for budget in ["1GiB", "1073741824", "64MB"] {
        let out = vramswap(&["load", "--backend", "sim", p, "--budget", budget]);
        assert!(
            out.status.success(),
            "--budget {budget}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    refused(
        &vramswap(&["load", "--backend", "sim", p, "--budget", "24 parsecs"]),
        &["--budget"],
    );
    // --size-mb takes MiB or a size with a unit that is whole MiB.
    let out = vramswap(&[
        "soak",
        "--backend",
        "sim",
        "--sets",
        "1",
        "--size-mb",
        "16MiB",
        "--cycles",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(
        &vramswap(&["soak", "--backend", "sim", "--size-mb", "1000KB"]),
        &["--size-mb", "not a whole number of MiB"],
    );
}

#[test]
fn cast_errors_list_the_valid_types() {
    refused(
        &vramswap(&["load", "--backend", "sim", "x.safetensors", "--cast", "i8"]),
        &["--cast", "f32, f16, bf16"],
    );
}

#[test]
fn swap_bench_leaves_cells_blank_where_nothing_is_meant() {
    // It printed `0.00 GB/s 0.00` for the clean swap-out and a ratio of `1.00` for the memcpy.
    let out = vramswap(&[
        "swap-bench",
        "--backend",
        "sim",
        "--size-mb",
        "16",
        "--reps",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let cells = |label: &str| -> Vec<String> {
        let line = text.lines().find(|l| l.starts_with(label)).unwrap();
        line[label.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(cells("clean swap-out (unmap, no copy)").len(), 1, "{text}");
    assert_eq!(cells("host memcpy of the same bytes").len(), 2, "{text}");
    assert_eq!(cells("swap-in (vs h2d ceiling)").len(), 3, "{text}");
    assert!(text.contains("MiB per set (a Llama-like mix of whole tensors near the size asked)"));
}

#[test]
fn info_states_the_granularity_in_binary_units() {
    let out = vramswap(&["info", "--backend", "sim"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("granularity 2 MiB"), "{text}");
}

#[test]
fn bench_says_it_created_the_chart_folder() {
    let dir = tempfile::tempdir().unwrap();
    let charts = dir.path().join("a").join("charts");
    let out = vramswap(&[
        "bench",
        "--backend",
        "sim",
        "--quick",
        "--size-mb",
        "8",
        "--json",
        "--svg",
        charts.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("created {}", charts.display())),
        "{err}"
    );
    // stdout stays one JSON object.
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    assert!(std::fs::read_dir(&charts).unwrap().count() > 0);
}

#[cfg(feature = "infer")]
#[test]
fn new_model_help_lists_no_device_flags() {
    // `--backend` and `--device` do nothing in new-model, which touches no device.
    let help = String::from_utf8(vramswap(&["new-model", "--help"]).stdout).unwrap();
    assert!(help.contains("--force"), "{help}");
    assert!(
        !help.contains("--backend") && !help.contains("--device"),
        "{help}"
    );
    let help = String::from_utf8(vramswap(&["info", "--help"]).stdout).unwrap();
    assert!(
        help.contains("--backend") && help.contains("--device"),
        "{help}"
    );
}
