//! `vramswap bench`: host/device bandwidth tables.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Bytes per copy, in MiB or with a unit (`1GiB`); at least 1 MiB, and no more than the
    /// device holds (default 1024, or 128 with --quick).
    #[arg(long, value_parser = crate::size_mib)]
    size_mb: Option<u64>,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    // On `sim` with no link configured, the bench measures a modelled 4 GB/s link.
    let b = bandwidth::with_sim_model(&b);
    let mut cfg = if args.quick {
        BandwidthConfig::quick()
    } else {
        BandwidthConfig::full()
    };
    if let Some(mb) = args.size_mb {
        cfg.buffer_bytes = mb << 20;
    }
    // Progress goes to stderr, so `--json` keeps stdout clean; with `--json` it still shows on
    // a terminal (a full sweep runs for more than a minute).
    let quiet = args.json && !std::io::stderr().is_terminal();
    // The chart folder is made before the sweep (a path that cannot be made fails at once, not
    // after it), and a folder that had to be made is named.
    if let Some(dir) = &args.svg {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io {
                path: dir.clone(),
                source: e,
            })?;
            eprintln!("created {} for the charts", dir.display());
        }
    }
    let report = bandwidth::run(&b, &cfg, &mut |line| {
        if !quiet {
            eprintln!("  measuring {line}");
        }
    })?;
    if let Some(dir) = &args.svg {
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
