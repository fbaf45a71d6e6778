//! The demo pipeline and the CLI's inference commands, on the simulated device with tiny
//! models: the pipeline swaps models through a budget of two, the three runs agree, and
//! `generate --json` prints what it generated.
#![cfg(feature = "infer")]

mod common;

use std::process::Command;
use std::sync::Arc;

use vramswap::backend::sim::SimBackend;
use vramswap::infer::demo::{self, DemoConfig};
use vramswap::infer::{new_model, TinyModelSpec};

fn tiny(seed: u64) -> TinyModelSpec {
    TinyModelSpec {
        layers: 1,
        hidden: 32,
        heads: 2,
        kv_heads: 1,
        seed,
        ..Default::default()
    }
}

#[test]
fn pipeline_cycles_three_models_through_a_budget_of_two_and_agrees_with_both_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let models: Vec<_> = (0..3)
        .map(|i| {
            let p = tmp.path().join(format!("m{i}"));
            new_model(&p, &tiny(i)).unwrap();
            p
        })
        .collect();
    let cfg = DemoConfig {
        models,
        work_dir: tmp.path().to_path_buf(),
        cycles: 2,
        prompts: vec!["one".into(), "a second prompt".into(), "3".into()],
        max_new_tokens: 4,
        ..DemoConfig::default()
    };
    let mut seen = 0;
    let r = demo::run(
        Arc::new(SimBackend::with_capacity(256 << 20)),
        &cfg,
        &mut |_| seen += 1,
    )
    .unwrap();
    assert_eq!(seen, 6);
    assert_eq!(r.steps.len(), 6);
    let total: u64 = r.models.iter().map(|m| m.1).sum();
    assert!(
        r.device_budget < total + 2 * (2 << 20),
        "the budget must not hold all three"
    );
    // The first model loads from disk; from the second cycle on every model comes back from
    // the host arena (the budget evicted it), never from disk.
    assert_eq!(r.steps[0].source, "disk");
    for s in &r.steps[3..] {
        assert_eq!(s.source, "host", "step {}", s.step);
        assert!(s.bytes > 0 && s.swap_in_ms > 0.0);
    }
    assert!(r.outputs_agree);
    assert_eq!(r.pipeline.tokens, 6 * 3 * 4);
    assert_eq!(r.reload.tokens, r.pipeline.tokens);
    assert_eq!(r.final_texts.len(), 3);
}

#[test]
fn cli_new_model_then_generate_json_prints_prompts_texts_and_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let bin = env!("CARGO_BIN_EXE_vramswap");
    let st = Command::new(bin)
        .args([
            "new-model",
            dir.to_str().unwrap(),
            "--layers",
            "1",
            "--hidden",
            "32",
            "--heads",
            "2",
            "--kv-heads",
            "1",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let v = common::json_output(Command::new(bin).args([
        "--backend",
        "sim",
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "hi",
        "--prompt",
        "longer one",
        "--max-new-tokens",
        "5",
        "--greedy",
        "--json",
    ]));
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["prompt"], "longer one");
    let ids = rows[0]["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 5);
    // Greedy decoding of the tiny model gives printable bytes: the text is the ids as bytes.
    let text: String = ids
        .iter()
        .map(|i| i.as_u64().unwrap() as u8 as char)
        .collect();
    assert_eq!(rows[0]["text"], text);
    // A missing model directory is an error, not a panic.
    let out = Command::new(bin)
        .args([
            "--backend",
            "sim",
            "generate",
            "--model",
            "/nonexistent/model",
            "--prompt",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a model directory"));
}

#[test]
fn cli_generate_bench_reports_each_batch_size_with_its_kernel_and_equal_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    let bin = env!("CARGO_BIN_EXE_vramswap");
    new_model(&dir, &tiny(4)).unwrap();
    let mut args: Vec<String> = ["--backend", "sim", "generate", "--model"]
        .map(String::from)
        .to_vec();
    args.push(dir.to_str().unwrap().into());
    args.extend(["--bench", "--json", "--max-new-tokens", "3"].map(String::from));
    for p in ["a", "two words", "xyz", "a longer prompt", "q"] {
        args.extend(["--prompt".to_string(), p.to_string()]);
    }
    let v = common::json_output(Command::new(bin).args(&args));
    let rows = v.as_array().unwrap();
    let batches: Vec<u64> = rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
    assert_eq!(batches, [1, 4, 8, 16]);
    for r in rows {
        // Batches past the 5 prompts cycle through them; every row makes its 3 tokens.
        assert_eq!(r["tokens"], r["batch"].as_u64().unwrap() * 3, "{r}");
        assert_eq!(r["identical"], true, "{r}");
        assert!(r["batched_tok_s"].as_f64().unwrap() > 0.0);
        let kernel = r["linear_kernel"].as_str().unwrap();
        assert!(["avx512", "avx2", "portable"].contains(&kernel), "{kernel}");
    }
}

#[test]
fn cli_demo_over_given_model_directories_reports_every_step_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<String> = (0..3)
        .map(|i| {
            let p = tmp.path().join(format!("m{i}"));
            new_model(&p, &tiny(10 + i)).unwrap();
            p.to_string_lossy().into_owned()
        })
        .collect();
    let mut args = vec![
        "--backend",
        "sim",
        "demo",
        "--cycles",
        "1",
        "--max-new-tokens",
        "2",
        "--json",
        "--models",
    ];
    args.extend(dirs.iter().map(String::as_str));
    let v = common::json_output(Command::new(env!("CARGO_BIN_EXE_vramswap")).args(&args));
    assert_eq!(v["steps"].as_array().unwrap().len(), 3);
    assert_eq!(v["outputs_agree"], true);
    assert!(v["reload"]["total_s"].as_f64().unwrap() > 0.0);
}
