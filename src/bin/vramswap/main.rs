//! `vramswap`: the command-line face of the library. Every subcommand is a thin shell over
//! public API a Rust user could call the same way.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vramswap::backend::{self, BackendChoice};

mod bench;
#[cfg(feature = "infer")]
mod demo;
#[cfg(feature = "infer")]
mod generate;
mod info;
mod inspect;
mod load;
#[cfg(feature = "infer")]
mod new_model;
mod replay;
mod selftest;
#[cfg(target_os = "linux")]
mod store;
mod swap_bench;

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
    /// Three tiny models cycling through a device that holds two: batched generation,
    /// prefetch of the next model, per-step swap figures, beside reload-from-disk and
    /// one-prompt-at-a-time baselines.
    #[cfg(feature = "infer")]
    Demo(demo::Args),
    /// Batched text generation from a Hugging Face model directory (or `--bench`).
    #[cfg(feature = "infer")]
    Generate(generate::Args),
    /// Writes a tiny Llama model with seeded random weights and a byte-level tokenizer.
    #[cfg(feature = "infer")]
    NewModel(new_model::Args),
    /// Backend, device name, memory, VMM support and copy engines.
    Info(info::Args),
    /// Host/device bandwidth: pinned vs pageable, chunk size x streams, both directions at once.
    Bench(bench::Args),
    /// Whole-model swaps: swap-in, clean and dirty swap-out, both at once, prefetch behind compute.
    SwapBench(swap_bench::Args),
    /// Cycle weight sets through the device many times, checking every byte that comes back.
    Soak(swap_bench::SoakArgs),
    /// Tensors of a safetensors file or model directory: names, dtypes, shapes, bytes.
    Inspect(inspect::Args),
    /// Loads a checkpoint into a pinned host arena and reports the time and throughput.
    Load(load::Args),
    /// Verifies vramswap on this machine: conformance suite, engine round trip, bandwidth.
    Selftest(selftest::Args),
    /// Replays an allocation trace through the caching allocator: peaks, fragmentation, hits.
    Replay(replay::Args),
    /// The shared host store: one host copy of each set for every process of a machine
    /// (`serve`, `status`, `bench`).
    #[cfg(target_os = "linux")]
    Store(store::Args),
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    let open = || backend::open(cli.backend, cli.device);
    let result = match cli.command {
        #[cfg(feature = "infer")]
        Command::Demo(args) => open().and_then(|(b, _)| demo::run(b, &args)),
        #[cfg(feature = "infer")]
        Command::Generate(args) => open().and_then(|(b, _)| generate::run(b, &args)),
        #[cfg(feature = "infer")]
        Command::NewModel(args) => new_model::run(&args),
        Command::Info(args) => open().and_then(|(b, why)| info::run(b, &why, &args)),
        Command::Bench(args) => open().and_then(|(b, _)| bench::run(b, &args)),
        Command::SwapBench(args) => open().and_then(|(b, _)| swap_bench::run(b, &args)),
        Command::Soak(args) => open().and_then(|(b, _)| swap_bench::soak(b, &args)),
        Command::Inspect(args) => inspect::run(&args),
        Command::Load(args) => open().and_then(|(b, _)| load::run(b, &args)),
        Command::Selftest(args) => open().and_then(|(b, _)| selftest::run(b, &args)),
        Command::Replay(args) => open().and_then(|(b, _)| replay::run(b, &args)),
        #[cfg(target_os = "linux")]
        Command::Store(args) => store::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so a write to a closed pipe (`vramswap bench --json | head -1`) is an
/// error, and `println!` panics on it. A command-line tool should end quietly there, as `cat`
/// and `grep` do: restore the default action before printing anything.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: `signal` with a valid signal number and `SIG_DFL` only changes this process's
    // disposition of SIGPIPE; it runs first in `main`, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> vramswap::Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(vramswap::Error::Io {
            path: "stdout".into(),
            source: e,
        }),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Writes `value` to stdout as pretty JSON and a newline (see [`print`]).
fn print_json(value: &impl serde::Serialize) -> vramswap::Result<ExitCode> {
    print(&format!(
        "{}\n",
        serde_json::to_string_pretty(value).expect("serialisable")
    ))
}

/// A size flag in bytes with the library's one size vocabulary ([`vramswap::config::parse_bytes`]):
/// plain bytes, `1.5GB` (decimal) or `24GiB` (binary).
fn size_bytes(s: &str) -> std::result::Result<u64, String> {
    vramswap::config::parse_bytes("size", s).map_err(|e| e.problem)
}

/// Parses a `--size-mb` value: a whole number of MiB (`256`), or a size with a unit that is a
/// whole number of MiB (`1GiB`, `512MiB`); at least 1 MiB, whose bytes fit in a `u64` (so
/// `n << 20` cannot wrap).
fn size_mib(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let n: u64 = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse()
            .map_err(|_| format!("`{s}` MiB is out of range (1 to {})", u64::MAX >> 20))?
    } else {
        let bytes = size_bytes(s)?;
        if bytes % (1 << 20) != 0 {
            return Err(format!(
                "`{s}` is {bytes} bytes, not a whole number of MiB (1 MiB = 1048576 bytes)"
            ));
        }
        bytes >> 20
    };
    if n == 0 || n > u64::MAX >> 20 {
        return Err(format!(
            "`{s}` MiB is out of range (1 to {})",
            u64::MAX >> 20
        ));
    }
    Ok(n)
}

/// Bytes in decimal units (GB, MB, kB), as throughput figures use.
fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};
    use proptest::prelude::*;

    /// Every option of every subcommand that takes a value, with the subcommand's required
    /// positional arguments filled in: `(["vramswap", sub, positionals...], "--flag")`.
    fn valued_flags() -> Vec<(Vec<String>, String)> {
        let mut cli = Cli::command();
        // Building propagates the global flags into each subcommand and settles value counts.
        cli.build();
        let mut out = Vec::new();
        for sub in cli.get_subcommands() {
            let mut base = vec!["vramswap".to_string(), sub.get_name().to_string()];
            base.extend(
                sub.get_positionals()
                    .filter(|a| a.is_required_set())
                    .map(|_| "x".to_string()),
            );
            for arg in sub.get_arguments() {
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                if let (Some(long), true) = (arg.get_long(), takes_value) {
                    out.push((base.clone(), format!("--{long}")));
                }
            }
        }
        out
    }

    /// The numbers that broke the CLI before (u64::MAX, 0, the edges of each integer type),
    /// negative, fractional and non-finite values, and arbitrary text.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| x.to_string()),
            prop::sample::select(vec![
                "0",
                "-0",
                "1",
                "-1",
                "18446744073709551615",
                "18446744073709551616",
                "9223372036854775808",
                "4294967296",
                "1e400",
                "NaN",
                "inf",
                "-inf",
                "24GiB",
                "0x10",
                "",
                " 3 ",
            ])
            .prop_map(str::to_string),
            "\\PC{0,12}",
        ]
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
        assert!(valued_flags().len() > 20, "{:?}", valued_flags());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Parsing any value of any flag is a result, never a panic; the values that cannot
        /// run are refused here, before a device is opened (tests/cli_extreme.rs runs them).
        #[test]
        fn any_value_of_any_flag_parses_or_is_a_clean_error(
            pick in any::<prop::sample::Index>(),
            v in value(),
        ) {
            let flags = valued_flags();
            let (base, flag) = &flags[pick.index(flags.len())];
            let mut argv = base.clone();
            argv.push(format!("{flag}={v}"));
            let parsed = std::panic::catch_unwind(|| Cli::try_parse_from(&argv).map(|_| ()));
            prop_assert!(parsed.is_ok(), "parsing {argv:?} panicked");
        }
    }
}
