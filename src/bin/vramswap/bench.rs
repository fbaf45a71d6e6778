//! `vramswap bench`: host/device bandwidth tables.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use vramswap::backend::sim::SimBackend;
use vramswap::backend::SharedBackend;
use vramswap::bench::bandwidth::{self, BandwidthConfig};
use vramswap::{Error, Result};

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// A short run (under 30 s on `sim`).
    #[arg(long)]
    quick: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Write one SVG chart per direction (GB/s against chunk size) into this folder.
    #[arg(long, value_name = "DIR")]
    svg: Option<PathBuf>,
    /// Bytes per copy, in MiB (default 1024, or 128 with --quick).
    #[arg(long, value_parser = crate::size_mib)]
    size_mb: Option<u64>,
}

/// On `sim` without a configured bandwidth model, copies run at memcpy speed and every figure
/// would be the host's memory bandwidth (and its thread count); the bench then turns on a link
/// model slower than any host's memcpy (4 GB/s each way, pageable at 40 %), so the tables show
/// the model's behaviour (chunking overheads, overlap of directions) rather than the host's. Set
/// `VRAMSWAP_SIM_CONF=h2d_gbps:...` to model another link.
fn with_model(b: SharedBackend) -> SharedBackend {
    match b.sim_device() {
        Some(sim) if sim.config().bandwidth.is_none() => {
            let mut c = sim.config().clone();
            c.bandwidth = Some(vramswap_sim::Bandwidth {
                h2d: 4e9,
                d2h: 4e9,
                d2d: 100e9,
                pageable_factor: 0.4,
            });
            Arc::new(SimBackend::new(c))
        }
        _ => b,
    }
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let b = with_model(b);
    let mut cfg = if args.quick {
        BandwidthConfig::quick()
    } else {
        BandwidthConfig::full()
    };
    if let Some(mb) = args.size_mb {
        cfg.buffer_bytes = mb << 20;
    }
    let quiet = args.json;
    let report = bandwidth::run(&b, &cfg, &mut |line| {
        if !quiet {
            eprintln!("  measuring {line}");
        }
    })?;
    if let Some(dir) = &args.svg {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.clone(),
            source: e,
        })?;
        for (file, chart) in report.charts() {
            let path = dir.join(file);
            std::fs::write(&path, chart.render()).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            if !quiet {
                eprintln!("wrote {}", path.display());
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
    } else {
        print!("{}", report.table());
    }
    Ok(ExitCode::SUCCESS)
}
