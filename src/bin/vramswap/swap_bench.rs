//! `vramswap swap-bench` and `vramswap soak`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use vramswap::backend::SharedBackend;
use vramswap::bench::swap::{self, SwapBenchConfig};
use vramswap::swap::SwapConfig;
use vramswap::{Error, Result};

/// Arguments of `swap-bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Weight sets to create (2 to 64).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=swap::MAX_SETS as u64))]
    sets: usize,
    /// Size of each set in MiB or with a unit (`1GiB`), at least 1 MiB and at most the device's
    /// memory (a Llama-like mix of whole tensors near this size; the table prints the size used).
    #[arg(long, default_value_t = 256, value_parser = crate::size_mib)]
    size_mb: u64,
    /// Simulated compute for the prefetch figure, ms (default: the measured swap-in time).
    #[arg(long)]
    compute_ms: Option<f64>,
    /// Repetitions per figure, 1 to 1000 (medians are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=swap::MAX_REPS as u64))]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let compute = match args.compute_ms {
        Some(ms) if !(ms.is_finite() && ms >= 0.0) => {
            return Err(Error::InvalidArgument(
                "--compute-ms must be a non-negative number".into(),
            ))
        }
        Some(ms) => Some(
            Duration::try_from_secs_f64(ms / 1e3)
                .map_err(|_| Error::InvalidArgument("--compute-ms is out of range".into()))?,
        ),
        None => None,
    };
    let cfg = SwapBenchConfig {
        set_bytes: args.size_mb << 20,
        sets: args.sets,
        compute,
        reps: args.reps,
    };
    let report = swap::run(&b, SwapConfig::from_env()?, &cfg)?;
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

/// Arguments of `soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// Swap-ins to run (1 to 1000000000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=swap::MAX_SOAK_CYCLES))]
    cycles: u64,
    /// Weight sets cycled (1 to 64).
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=swap::MAX_SETS as u64))]
    sets: usize,
    /// Size of each set in MiB or with a unit (`1GiB`), at least 1 MiB and at most the device's
    /// memory (a Llama-like mix of whole tensors near this size; the output prints the size used).
    #[arg(long, default_value_t = 16, value_parser = crate::size_mib)]
    size_mb: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn soak(b: SharedBackend, args: &SoakArgs) -> Result<ExitCode> {
    let mut config = SwapConfig::from_env()?;
    config.transfer.verify = true;
    // Progress goes to stderr; with `--json` only where stderr is a terminal.
    let quiet = args.json && !std::io::stderr().is_terminal();
    let every = (args.cycles / 20).max(1);
    let r = swap::soak(
        &b,
        config,
        args.sets,
        args.size_mb << 20,
        args.cycles,
        &mut |c| {
            if !quiet && c % every == 0 {
                eprintln!("  {c} / {} cycles, every checksum matched", args.cycles);
            }
        },
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("serialisable")
        );
    } else {
        println!(
            "{} cycles over {} sets of {:.1} MiB (a Llama-like mix of whole tensors near the {} MiB asked), {:.1} GiB swapped in, {} mismatches, {:.1} s",
            r.cycles,
            r.sets,
            r.set_bytes as f64 / (1u64 << 20) as f64,
            args.size_mb,
            r.bytes as f64 / (1u64 << 30) as f64,
            r.mismatches,
            r.secs
        );
    }
    Ok(ExitCode::SUCCESS)
}
