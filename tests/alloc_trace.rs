//! Transformer traces through the allocator: the fragmentation goal, replay, and the
//! `vramswap replay` command.

mod common;

use std::process::Command;
use std::sync::Arc;

use vramswap::alloc::trace::{parse_trace, write_trace};
use vramswap::alloc::{
    replay, transformer_trace, AllocatorConfig, CachingAllocator, LargeBlocks, TransformerShape,
};
use vramswap::backend::{sim::SimBackend, SharedBackend};

fn replay_shape(
    shape: &TransformerShape,
    config: AllocatorConfig,
) -> vramswap::alloc::ReplayReport {
    replay_ops(transformer_trace(shape), config)
}

/// Replays `ops` through a fresh allocator on a large simulated device; checks for leaks.
fn replay_ops(
    ops: Vec<vramswap::alloc::TraceOp>,
    config: AllocatorConfig,
) -> vramswap::alloc::ReplayReport {
    let sb = Arc::new(SimBackend::with_capacity(64 << 30));
    let b: SharedBackend = sb.clone();
    let a = CachingAllocator::new(b, config).unwrap();
    let ops: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(i, o)| (i + 1, o))
        .collect();
    let r = replay(&a, &ops).unwrap();
    drop(a);
    common::assert_no_leaks(sb.device(), "replay");
    r
}

/// The goal (≤ 1.10) holds with expandable segments. Fixed segments (PyTorch's default
/// layout) fragment more on these traces; their bound is a regression guard, not the goal.
#[test]
fn transformer_traces_replay_with_fragmentation_under_1_10_on_expandable_segments() {
    let mut results: Vec<(String, bool, f64, f64)> = Vec::new();
    for shape in TransformerShape::presets() {
        for expandable in [false, true] {
            let r = replay_shape(
                &shape,
                AllocatorConfig {
                    large_blocks: if expandable {
                        LargeBlocks::Expandable
                    } else {
                        LargeBlocks::Fixed
                    },
                    ..Default::default()
                },
            );
            eprintln!(
                "{} expandable={expandable}: peak alloc {} reserved {} frag {:.3} hits {:.3}",
                shape.name,
                r.peak_allocated_bytes,
                r.peak_reserved_bytes,
                r.fragmentation,
                r.cache_hit_rate
            );
            results.push((
                shape.name.clone(),
                expandable,
                r.fragmentation,
                r.cache_hit_rate,
            ));
        }
    }
    for (name, expandable, frag, hits) in results {
        let bound = if expandable { 1.10 } else { 1.35 };
        assert!(frag <= bound, "{name} expandable={expandable}: {frag:.3}");
        assert!(
            hits > 0.5,
            "{name} expandable={expandable}: hit rate {hits:.3}"
        );
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vramswap"));
    c.env("VRAMSWAP_BACKEND", "sim")
        .env("VRAMSWAP_SIM_CONF", "capacity_gb:64");
    c
}

#[test]
#[cfg(feature = "cli")] // runs the `vramswap` binary
fn replay_command_prints_json_and_draws_svg() {
    let dir = std::env::temp_dir().join(format!("vramswap-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("small.jsonl");
    std::fs::write(
        &trace,
        write_trace(&transformer_trace(&TransformerShape::small())),
    )
    .unwrap();
    let svg = dir.join("small.svg");
    let v = common::json_output(bin().args([
        "replay",
        trace.to_str().unwrap(),
        "--json",
        "--svg",
        svg.to_str().unwrap(),
    ]));
    for k in [
        "peak_allocated_bytes",
        "peak_reserved_bytes",
        "backend_allocs",
        "cache_hits",
        "ops",
    ] {
        assert!(v[k].as_u64().is_some(), "{k} in {v}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.matches("<polyline").count() == 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_command_names_the_malformed_line_and_fails() {
    let dir = std::env::temp_dir().join(format!("vramswap-replay-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("bad.jsonl");
    std::fs::write(
        &trace,
        "{\"op\":\"alloc\",\"id\":1,\"size\":100,\"stream\":0}\n{\"op\":\"free\",\"id\":\n",
    )
    .unwrap();
    let out = bin()
        .args(["replay", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains("line 2"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    // A well-formed line that does not fit the trace (a free of an unknown id) also names it.
    std::fs::write(&trace, "{\"op\":\"free\",\"id\":5}\n").unwrap();
    let out = bin()
        .args(["replay", trace.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_command_generates_a_transformer_trace() {
    let v = common::json_output(bin().args(["replay", "--generate", "small", "--json"]));
    assert!(v["ops"].as_u64().unwrap() > 100);
    let ops = parse_trace(
        &write_trace(&transformer_trace(&TransformerShape::small())),
        "x",
    )
    .unwrap();
    assert_eq!(v["ops"].as_u64().unwrap(), ops.len() as u64);
}

#[test]
fn serving_traces_free_kv_caches_out_of_order_on_a_second_stream() {
    use vramswap::alloc::{serving_trace, ServingShape, TraceOp};
    let ops = serving_trace(&ServingShape::new(7));
    assert_ne!(ops, serving_trace(&ServingShape::new(8)), "seeds differ");
    let kv: Vec<u64> = ops
        .iter()
        .filter_map(|o| match o {
            TraceOp::Alloc { id, stream: 1, .. } => Some(*id),
            _ => None,
        })
        .collect();
    let kv_frees: Vec<u64> = ops
        .iter()
        .filter_map(|o| match o {
            TraceOp::Free { id } if kv.contains(id) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(kv_frees.len(), kv.len(), "every KV cache is freed");
    assert!(
        kv_frees.windows(2).any(|w| w[0] > w[1]),
        "some KV caches are freed before older ones"
    );
    // Batch sizes and lengths vary: the KV caches have many sizes.
    let sizes: std::collections::BTreeSet<u64> = ops
        .iter()
        .filter_map(|o| match o {
            TraceOp::Alloc {
                size, stream: 1, ..
            } => Some(*size),
            _ => None,
        })
        .collect();
    assert!(sizes.len() > 10, "{} KV sizes", sizes.len());
}

#[test]
fn replay_compare_sets_the_three_modes_side_by_side() {
    let v = common::json_output(bin().args([
        "replay",
        "--generate",
        "serving",
        "--seed",
        "2",
        "--compare",
        "--json",
    ]));
    let rows = v.as_array().unwrap();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(
        modes,
        ["fixed segments", "expandable segments", "page pool"]
    );
    for r in rows {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["fragmentation"].as_f64().unwrap() >= 1.0, "{r}");
        assert_eq!(r["ooms"].as_u64(), Some(0), "{r}");
    }
    assert_eq!(
        rows[0]["maps"].as_u64(),
        Some(0),
        "fixed segments map nothing"
    );
    assert!(rows[2]["maps"].as_u64().unwrap() > 0);
    // The page pool holds less than fixed segments on this trace.
    assert!(
        rows[2]["peak_reserved_bytes"].as_u64() < rows[0]["peak_reserved_bytes"].as_u64(),
        "{v}"
    );
}

/// Issue 21's goal: at the default configuration, on a device with the virtual-memory API
/// (expandable segments, which take free pages back before growing), peak reserved over peak
/// allocated stays within 1.10 on serving-shaped traces: mixed batch sizes and lengths, KV
/// caches on a second stream freed out of order, `record_stream` onto a third.
#[test]
fn serving_traces_stay_within_1_10_at_the_default_configuration() {
    use vramswap::alloc::{serving_trace, ServingShape};
    for seed in 1..=6 {
        let r = replay_ops(
            serving_trace(&ServingShape::new(seed)),
            AllocatorConfig::default(),
        );
        eprintln!(
            "seed {seed}: peak allocated {} reserved {} ratio {:.3}",
            r.peak_allocated_bytes, r.peak_reserved_bytes, r.fragmentation
        );
        assert!(
            r.fragmentation <= 1.10,
            "seed {seed}: {:.3}",
            r.fragmentation
        );
    }
}
