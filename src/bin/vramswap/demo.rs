//! `vramswap demo`: several models in a round-robin pipeline on a device whose budget holds
//! fewer of them, prefetching the next while the current one computes, beside two baselines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vramswap::backend::sim::SimBackend;
use vramswap::backend::{BackendKind, SharedBackend};
use vramswap::infer::demo::{self, DemoConfig, StepRow};
use vramswap::swap::SwapConfig;
use vramswap::Result;

/// Arguments of `demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directories to cycle through instead of three tiny ones written to a temporary
    /// directory.
    #[arg(long, num_args = 1..)]
    models: Vec<PathBuf>,
    /// Rounds through every model.
    #[arg(long, default_value_t = 3)]
    cycles: usize,
    /// Tokens per prompt per step.
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let mut notes = Vec::new();
    // On the simulated device a copy is a memcpy; give it a PCIe-like link unless the user
    // configured the device, so swaps take the time they would take on a GPU.
    let b: SharedBackend = if b.properties().backend == BackendKind::Sim
        && std::env::var_os("VRAMSWAP_SIM_CONF").is_none()
    {
        notes.push(
            "simulated device with a PCIe Gen4-like link (25 GB/s each way; set VRAMSWAP_SIM_CONF \
             to change it); compute runs on the CPU through candle",
        );
        Arc::new(SimBackend::new(vramswap_sim::SimConfig {
            bandwidth: Some(vramswap_sim::Bandwidth::default()),
            ..vramswap_sim::SimConfig::default()
        }))
    } else {
        b
    };
    let tmp = tempfile_dir()?;
    let cfg = DemoConfig {
        models: args.models.clone(),
        work_dir: tmp.clone(),
        cycles: args.cycles,
        max_new_tokens: args.max_new_tokens,
        swap: SwapConfig::from_env()?,
        ..DemoConfig::default()
    };
    let props = b.properties();
    let mut out = String::new();
    if !args.json {
        out += &format!("device: {} ({})\n", props.name, props.backend);
        for n in &notes {
            out += &format!("note: {n}\n");
        }
        print!("{out}");
        println!(
            "{:>4} {:<14} {:>6} {:>9} {:>9} {:>7} {:>7} {:>9} {:>8}",
            "step", "model", "from", "swap ms", "bytes", "GB/s", "hidden", "compute", "tok/s"
        );
    }
    let json = args.json;
    let mut on_step = |r: &StepRow| {
        if !json {
            println!(
                "{:>4} {:<14} {:>6} {:>9.2} {:>9} {:>7.1} {:>6.0}% {:>7.1}ms {:>8.0}",
                r.step,
                r.model,
                r.source,
                r.swap_in_ms,
                crate::human(r.bytes),
                r.gbps,
                r.hidden * 100.0,
                r.compute_ms,
                r.tok_s
            );
        }
    };
    let result = demo::run(b, &cfg, &mut on_step);
    let _ = std::fs::remove_dir_all(&tmp);
    let report = result?;
    if json {
        return crate::print_json(&report);
    }
    let models: Vec<String> = report
        .models
        .iter()
        .map(|(n, s)| format!("{n} ({})", crate::human(*s)))
        .collect();
    let mut s = format!(
        "models: {}; device budget {} (two of them)\n",
        models.join(", "),
        crate::human(report.device_budget)
    );
    s += &report.summary();
    s += "last step's texts:\n";
    for t in report.final_texts.iter().take(3) {
        s += &format!("  {t:?}\n");
    }
    crate::print(&s)
}

/// A fresh directory under the system's temporary directory for the demo's models.
fn tempfile_dir() -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("vramswap-demo-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(|source| vramswap::Error::Io {
        path: p.clone(),
        source,
    })?;
    Ok(p)
}
