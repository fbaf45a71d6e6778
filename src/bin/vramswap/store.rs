//! `vramswap store serve|status|bench`: the shared host store (`vramswap::store`), its report,
//! and the benchmark of a worker's restart with it against a cold start from disk.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde::Serialize;
use vramswap::backend::sim::SimBackend;
use vramswap::store::{StoreClient, StoreConfig, StoreServer, StoreStatus};
use vramswap::swap::{SwapConfig, SwapEngine};
use vramswap::weights::DType;
use vramswap::{Error, Result};

/// Arguments of `store`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Runs a store in the foreground: it holds weight sets' host copies in shared memory for
    /// every engine started with `VRAMSWAP_STORE=SOCKET`, loading each from disk once. Logs to
    /// stderr (`RUST_LOG`); exits with status 0 on SIGTERM or SIGINT. A restarted store starts
    /// empty.
    Serve(ServeArgs),
    /// What a store holds: host_used, host_budget, sets (name, bytes, clients), counters.
    Status(StatusArgs),
    /// Time from a worker process's start to its first acquired set, with the store against a
    /// cold start from disk; host memory of several engines with and without it.
    Bench(BenchArgs),
    /// One engine acquiring one set, for `bench` and the tests (not for users).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The Unix socket to listen on (a stale socket file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Bytes of shared memory the store may hold (e.g. `64GiB`); least recently used sets no
    /// client holds are dropped to stay under it. Default: no budget.
    #[arg(long, value_parser = crate::size_bytes)]
    host_budget: Option<u64>,
    /// Copy threads of each load from disk (default: up to 8, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds a client may take between putting a set and committing it, after which the
    /// half-filled set is discarded.
    #[arg(long, default_value_t = 300.0)]
    fill_timeout_s: f64,
    /// A pause before each load's copy, in ms (for tests that kill a client mid-load).
    #[arg(long, hide = true, default_value_t = 0)]
    load_delay_ms: u64,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The store's socket.
    #[arg(long, env = "VRAMSWAP_STORE")]
    socket: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Size of the model each worker acquires, in MiB.
    #[arg(long, default_value_t = 512)]
    mb: u64,
    /// Engines (worker processes, each on its own simulated device) for the memory figure.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Restarts timed per mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// The checkpoint to register.
    #[arg(long)]
    path: PathBuf,
    /// The set's name.
    #[arg(long, default_value = "model")]
    name: String,
    /// The store's socket (none: load from disk into the engine's own arena).
    #[arg(long)]
    store: Option<PathBuf>,
    /// After acquiring, hold the guard until stdin closes (tests kill it there); each line
    /// `check` on stdin prints `host <checksum>` of the first tensor's host bytes.
    #[arg(long)]
    hold: bool,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    match &args.command {
        StoreCommand::Serve(a) => serve(a),
        StoreCommand::Status(a) => status(a),
        StoreCommand::Bench(a) => bench(a),
        StoreCommand::Worker(a) => worker(a),
    }
}

fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let mut config = StoreConfig::new(&args.socket);
    config.host_budget = args.host_budget;
    if let Some(t) = args.threads {
        config.load_threads = t;
    }
    config.fill_timeout = Duration::try_from_secs_f64(args.fill_timeout_s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--fill-timeout-s {}: a positive number of seconds",
                args.fill_timeout_s
            ))
        })?;
    config.load_delay = Duration::from_millis(args.load_delay_ms);
    let server = StoreServer::bind(config)?;
    let socket = server.socket().to_path_buf();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| Error::InvalidState(format!("cannot handle SIGTERM and SIGINT: {e}")))?;
    std::thread::Builder::new()
        .name("vramswap-store-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "stopping; clients keep what they mapped");
                let _ = std::fs::remove_file(&socket);
                std::process::exit(0);
            }
        })
        .map_err(|e| Error::InvalidState(format!("cannot start the signal thread: {e}")))?;
    server.run()?;
    Ok(ExitCode::SUCCESS)
}

fn status(args: &StatusArgs) -> Result<ExitCode> {
    let s = StoreClient::new(&args.socket).status()?;
    if args.json {
        return crate::print_json(&s);
    }
    print_status(&args.socket, &s);
    Ok(ExitCode::SUCCESS)
}

fn print_status(socket: &Path, s: &StoreStatus) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("store {} (protocol {})", socket.display(), s.protocol);
    match s.host_budget {
        Some(b) => println!("host_used {:.1} MiB of {:.1} MiB", mib(s.host_used), mib(b)),
        None => println!("host_used {:.1} MiB (no budget)", mib(s.host_used)),
    }
    println!(
        "counters: loads {}, puts {}, attaches {}, evictions {}, discarded {}",
        s.counters.loads,
        s.counters.puts,
        s.counters.attaches,
        s.counters.evictions,
        s.counters.discarded
    );
    if s.sets.is_empty() {
        println!("no sets");
        return;
    }
    println!(
        "{:<24} {:>12} {:>8} {:>8}  source",
        "set", "MiB", "clients", "phase"
    );
    for set in &s.sets {
        println!(
            "{:<24} {:>12.1} {:>8} {:>8}  {}",
            set.name,
            mib(set.bytes),
            set.clients,
            set.phase,
            set.source
        );
    }
}

/// The worker: an engine on its own simulated device, one set registered from a path and
/// acquired; prints `acquired <checksum>` and, with `--hold`, holds the guard until stdin
/// closes; otherwise offloads (the device copy goes, the host copy stays) and waits for stdin
/// to close, so that a parent can read its memory.
fn worker(args: &WorkerArgs) -> Result<ExitCode> {
    let bytes = vramswap::load::inspect(&args.path)?.desc.total_bytes;
    let backend = Arc::new(SimBackend::with_capacity(
        (2 * bytes + (64 << 20)).next_multiple_of(2 << 20),
    ));
    let engine = SwapEngine::new(
        backend,
        SwapConfig {
            store: args.store.clone(),
            ..SwapConfig::default()
        },
    )?;
    engine.register_path(&args.name, &args.path, Default::default())?;
    let guard = engine.acquire(&args.name)?;
    let first = guard.host().desc().tensors[0].name.clone();
    let sum = vramswap_sim::kernels::checksum(&guard.read_tensor(&first)?);
    println!("acquired {sum:#018x}");
    std::io::stdout().flush().ok();
    let held = if args.hold {
        Some(guard)
    } else {
        drop(guard);
        engine.offload(&args.name)?;
        println!("offloaded");
        std::io::stdout().flush().ok();
        None
    };
    let mut line = String::new();
    loop {
        line.clear();
        if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.trim() == "check" {
            match held.as_ref().map(|g| g.host_tensor(&first)) {
                Some(Ok(bytes)) => {
                    println!("host {:#018x}", vramswap_sim::kernels::checksum(bytes))
                }
                _ => println!("host none"),
            }
            std::io::stdout().flush().ok();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A child process and its stdout, line by line.
struct Proc {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Proc {
    fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        self.out
            .read_line(&mut s)
            .map_err(|e| Error::InvalidState(format!("reading a worker: {e}")))?;
        if s.is_empty() {
            return Err(Error::InvalidState(
                "a worker ended before it acquired its set".into(),
            ));
        }
        Ok(s.trim().to_string())
    }

    /// Its proportional set size, bytes (`/proc/PID/smaps_rollup`).
    fn pss(&self) -> u64 {
        pss_of(self.child.id())
    }

    /// The part of it in the store's shared memory (mappings of `memfd:vramswap:*`).
    fn shared_pss(&self) -> u64 {
        shared_pss_of(self.child.id())
    }

    fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn pss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb << 10)
}

fn shared_pss_of(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return 0;
    };
    let mut in_shared = false;
    let mut kb = 0u64;
    for l in s.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: `start-end perms offset dev inode path`.
            in_shared = l.contains("memfd:vramswap:");
        } else if in_shared && first == "Pss:" {
            kb += l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    kb << 10
}

fn spawn_worker(path: &Path, store: Option<&Path>) -> Result<Proc> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::InvalidState(format!("cannot find this program: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["store", "worker", "--path"])
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(s) = store {
        cmd.arg("--store").arg(s);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::InvalidState(format!("cannot start a worker: {e}")))?;
    let out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    Ok(Proc { child, out })
}

/// Drops the checkpoint from the page cache, so that the next read comes from the disk.
fn drop_cached(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    }
}

#[derive(Serialize)]
struct BenchReport {
    model_bytes: u64,
    workers: usize,
    repeats: usize,
    /// Median ms from a worker's spawn to its first acquired set.
    cold_from_disk_ms: f64,
    first_with_store_ms: f64,
    restart_with_store_ms: f64,
    /// Sum of the workers' PSS, bytes, each holding its set in host memory (offloaded).
    workers_pss_without_store: u64,
    workers_pss_with_store: u64,
    /// The part of `workers_pss_with_store` in the store's shared memory.
    workers_shared_pss_with_store: u64,
    /// The store process's own PSS, bytes.
    store_pss: u64,
    /// The store's `host_used`.
    store_host_used: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(args: &BenchArgs) -> Result<ExitCode> {
    if args.mb == 0 || args.workers == 0 || args.repeats == 0 {
        return Err(Error::InvalidArgument(
            "--mb, --workers and --repeats must be at least 1".into(),
        ));
    }
    let dir = TempDir::new()?;
    let path = dir.path().join("model.safetensors");
    write_model(&path, args.mb)?;
    let bytes = vramswap::load::inspect(&path)?.desc.total_bytes;
    let socket = dir.path().join("store.sock");
    let time_one = |store: Option<&Path>, drop_cache: bool| -> Result<f64> {
        if drop_cache {
            drop_cached(&path);
        }
        let t = Instant::now();
        let mut w = spawn_worker(&path, store)?;
        w.line()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        w.finish();
        Ok(ms)
    };
    let cold = median(
        (0..args.repeats)
            .map(|_| time_one(None, true))
            .collect::<Result<_>>()?,
    );
    let mut store = StoreProc::start(&socket)?;
    drop_cached(&path);
    let first = time_one(Some(&socket), false)?;
    let restart = median(
        (0..args.repeats)
            .map(|_| time_one(Some(&socket), false))
            .collect::<Result<_>>()?,
    );
    let memory = |s: Option<&Path>| -> Result<(u64, u64, u64)> {
        let mut ws = Vec::new();
        for _ in 0..args.workers {
            let mut w = spawn_worker(&path, s)?;
            w.line()?;
            w.line()?; // offloaded
            ws.push(w);
        }
        let total: u64 = ws.iter().map(Proc::pss).sum();
        let shared: u64 = ws.iter().map(Proc::shared_pss).sum();
        let store_pss = pss_of(store.child.id());
        ws.into_iter().for_each(Proc::finish);
        Ok((total, shared, store_pss))
    };
    let (without, _, _) = memory(None)?;
    let (with_workers, with_shared, store_pss) = memory(Some(&socket))?;
    let host_used = StoreClient::new(&socket).status()?.host_used;
    store.stop();
    let r = BenchReport {
        model_bytes: bytes,
        workers: args.workers,
        repeats: args.repeats,
        cold_from_disk_ms: cold,
        first_with_store_ms: first,
        restart_with_store_ms: restart,
        workers_pss_without_store: without,
        workers_pss_with_store: with_workers,
        workers_shared_pss_with_store: with_shared,
        store_pss,
        store_host_used: host_used,
    };
    if args.json {
        return crate::print_json(&r);
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "model {:.0} MiB, {} workers on simulated devices, median of {} starts",
        mib(bytes),
        args.workers,
        args.repeats
    );
    println!("{:<46} {:>10}", "worker start to first acquired set", "ms");
    println!(
        "{:<46} {:>10.1}",
        "cold, from disk (page cache dropped)", cold
    );
    println!(
        "{:<46} {:>10.1}",
        "first worker with the store (store reads)", first
    );
    println!(
        "{:<46} {:>10.1}",
        "restarted worker with the store", restart
    );
    println!(
        "{:<46} {:>9.1}x",
        "cold / restart with the store",
        cold / restart
    );
    println!();
    println!(
        "{:<46} {:>13} {:>13}",
        format!("host memory of {} engines, MiB (PSS)", args.workers),
        "without store",
        "with store"
    );
    println!(
        "{:<46} {:>13.1} {:>13.1}",
        "workers",
        mib(without),
        mib(with_workers)
    );
    println!(
        "{:<46} {:>13} {:>13.1}",
        "  of which the store's shared copy",
        "-",
        mib(with_shared)
    );
    println!(
        "{:<46} {:>13} {:>13.1}",
        "store process",
        "-",
        mib(store_pss)
    );
    let with = with_workers + store_pss;
    println!("{:<46} {:>13.1} {:>13.1}", "total", mib(without), mib(with));
    println!(
        "{:<46} {:>13.1} {:>13.1}",
        "host copies (total less the workers' other memory)",
        mib(without.saturating_sub(with_workers - with_shared)),
        mib(with_shared + store_pss)
    );
    println!(
        "(each simulated device keeps its {:.0} MiB device copy in host memory, in both columns)",
        mib(bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// A Llama-shaped checkpoint of about `mb` MiB of F16 weights.
fn write_model(path: &Path, mb: u64) -> Result<()> {
    let layers = 8u64;
    let per = (mb << 20) / layers / 4 / 2; // four tensors a layer, two bytes an element
    let cols = 1024u64;
    let rows = (per / cols).max(1);
    let data: Vec<u8> = (0..rows * cols * 2).map(|i| (i * 31 % 251) as u8).collect();
    let names: Vec<String> = (0..layers)
        .flat_map(|l| {
            ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(|t| format!("model.layers.{l}.self_attn.{t}.weight"))
        })
        .collect();
    let shape = [rows, cols];
    let tensors: Vec<(&str, DType, &[u64], &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), DType::F16, &shape[..], &data[..]))
        .collect();
    vramswap::load::save(path, &tensors)
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let p = std::env::temp_dir().join(format!("vramswap-store-bench-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        Ok(TempDir(p))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A store child process.
struct StoreProc {
    child: Child,
}

impl StoreProc {
    fn start(socket: &Path) -> Result<StoreProc> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::InvalidState(format!("cannot find this program: {e}")))?;
        let child = Command::new(exe)
            .args(["store", "serve", "--socket"])
            .arg(socket)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Error::InvalidState(format!("cannot start a store: {e}")))?;
        StoreClient::new(socket)
            .wait_until_serving(Duration::from_secs(20))
            .map_err(|e| Error::InvalidState(format!("the store did not start in 20 s: {e}")))?;
        Ok(StoreProc { child })
    }

    fn stop(&mut self) {
        // SIGTERM: the store removes its socket and exits with status 0.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}
