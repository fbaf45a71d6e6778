//! `vramswap`: the command-line face of the library. Every subcommand is a thin shell over
//! public API a Rust user could call the same way.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vramswap::backend::{self, BackendChoice};

mod info;
mod replay;

/// GPU memory for many models on one GPU.
#[derive(Parser)]
#[command(name = "vramswap", version, about, long_about = None)]
struct Cli {
    /// Backend: auto (CUDA when a device answers, else the simulated device), cuda, or sim.
    #[arg(long, global = true, env = "VRAMSWAP_BACKEND", default_value = "auto")]
    backend: BackendChoice,
    /// CUDA device ordinal.
    #[arg(long, global = true, default_value_t = 0)]
    device: i32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Backend, device name, memory, VMM support and copy engines.
    Info(info::Args),
    /// Replays an allocation trace through the caching allocator: peaks, fragmentation, hits.
    Replay(replay::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info(args) => {
            backend::open(cli.backend, cli.device).and_then(|(b, why)| info::run(b, &why, &args))
        }
        Command::Replay(args) => {
            backend::open(cli.backend, cli.device).and_then(|(b, _)| replay::run(b, &args))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
