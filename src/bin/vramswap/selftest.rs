//! `vramswap selftest`.

use std::process::ExitCode;

use vramswap::backend::SharedBackend;
use vramswap::selftest::{self, SelftestOptions};
use vramswap::Result;

/// Arguments of `selftest`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object (for pasting into an issue).
    #[arg(long)]
    json: bool,
    /// Size of the round trip's weight set in MiB, roughly: the set is made of whole Llama-like
    /// tensors, so it comes out near this size (at least a few MiB). MiB or with a unit (`1GiB`);
    /// at least 1 MiB.
    #[arg(long, default_value_t = 256, value_parser = crate::size_mib)]
    size_mb: u64,
    /// Skip the bandwidth table.
    #[arg(long)]
    no_bandwidth: bool,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let opts = SelftestOptions {
        round_trip_bytes: args.size_mb << 20,
        bandwidth: !args.no_bandwidth,
    };
    let quiet = args.json;
    let report = selftest::run(&b, &opts, &mut |step| {
        if !quiet {
            eprintln!("  running {step}");
        }
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
    } else {
        print!("{}", report.text());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
