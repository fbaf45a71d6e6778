//! `vramswap replay`: a trace through the caching allocator.

use std::path::PathBuf;
use std::process::ExitCode;

use vramswap::alloc::trace::{read_trace, write_trace};
use vramswap::alloc::{
    replay, serving_trace, transformer_trace, AllocatorConfig, CachingAllocator, LargeBlocks,
    ReplayReport, ServingShape, TransformerShape,
};
use vramswap::backend::SharedBackend;
use vramswap::{Error, Result};

/// Arguments of `replay`.
#[derive(clap::Args)]
pub struct Args {
    /// Trace file: JSON lines of {"op":"alloc","id":N,"size":BYTES,"stream":S},
    /// {"op":"free","id":N}, {"op":"record_stream","id":N,"stream":S}.
    #[arg(required_unless_present = "generate", conflicts_with = "generate")]
    trace: Option<PathBuf>,
    /// Replay a generated trace instead: small, mixed or long (one transformer's forward
    /// passes), or serving (continuous batching of mixed requests, KV caches on a second
    /// stream freed out of order, logits used on a third; drawn from --seed).
    #[arg(long, value_name = "SHAPE")]
    generate: Option<String>,
    /// Seed of --generate serving.
    #[arg(long, default_value_t = 1, requires = "generate")]
    seed: u64,
    /// Replay the trace under fixed segments, expandable segments and the page pool (each
    /// over the rest of the allocator configuration) and print them side by side.
    #[arg(long)]
    compare: bool,
    /// With --generate, also write the trace to this file.
    #[arg(long, value_name = "FILE", requires = "generate")]
    write: Option<PathBuf>,
    /// Allocator configuration (`key:value,...`); defaults to VRAMSWAP_ALLOC_CONF.
    #[arg(long, value_name = "CONF")]
    alloc_conf: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Draw allocated and reserved bytes over the ops into this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

pub fn run(b: SharedBackend, args: &Args) -> Result<ExitCode> {
    let (ops, title) = match (&args.trace, &args.generate) {
        (Some(path), _) => (read_trace(path)?, path.display().to_string()),
        (None, Some(name)) => {
            let ops = if name == "serving" {
                serving_trace(&ServingShape::new(args.seed))
            } else {
                let shape = TransformerShape::preset(name).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown trace shape `{name}` (known: small, mixed, long, serving)"
                    ))
                })?;
                transformer_trace(&shape)
            };
            if let Some(w) = &args.write {
                std::fs::write(w, write_trace(&ops)).map_err(|source| Error::Io {
                    path: w.clone(),
                    source,
                })?;
            }
            let numbered = ops
                .into_iter()
                .enumerate()
                .map(|(i, o)| (i + 1, o))
                .collect();
            let title = if name == "serving" {
                format!("serving trace (seed {})", args.seed)
            } else {
                format!("transformer trace `{name}`")
            };
            (numbered, title)
        }
        (None, None) => return Err(Error::InvalidArgument("no trace given".into())),
    };
    let config = match &args.alloc_conf {
        Some(c) => AllocatorConfig::parse(c)?,
        None => AllocatorConfig::from_env()?,
    };
    if args.compare {
        return compare(b, &config, &ops, &title, args);
    }
    let alloc = CachingAllocator::new(b, config)?;
    let report = replay(&alloc, &ops)?;
    if let Some(path) = &args.svg {
        std::fs::write(path, report.chart(&title).render()).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if args.json {
        return crate::print_json(&report);
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("trace            {title}");
    println!("ops              {}", report.ops);
    println!(
        "peak allocated   {:.1} MiB",
        mib(report.peak_allocated_bytes)
    );
    println!(
        "peak reserved    {:.1} MiB",
        mib(report.peak_reserved_bytes)
    );
    println!(
        "fragmentation    {:.3} (peak reserved / peak allocated)",
        report.fragmentation
    );
    println!("backend allocs   {}", report.backend_allocs);
    println!(
        "maps / unmaps    {} / {} ({:.1} / {:.1} per 1000 ops)",
        report.maps,
        report.unmaps,
        per_1000(report.maps, report.ops),
        per_1000(report.unmaps, report.ops)
    );
    println!(
        "cache hit rate   {:.1} % ({} hits, {} misses)",
        100.0 * report.cache_hit_rate,
        report.cache_hits,
        report.cache_misses
    );
    println!("ops per second   {:.0}", report.ops_per_sec);
    Ok(ExitCode::SUCCESS)
}

fn per_1000(n: u64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        n as f64 * 1000.0 / ops as f64
    }
}

/// The three ways of holding large blocks that `--compare` sets side by side.
const MODES: [(&str, LargeBlocks); 3] = [
    ("fixed segments", LargeBlocks::Fixed),
    ("expandable segments", LargeBlocks::Expandable),
    ("page pool", LargeBlocks::PagePool),
];

/// One mode's replay: its report, or why it failed (an out-of-memory stops a replay).
#[derive(serde::Serialize)]
struct Row {
    mode: &'static str,
    config: String,
    #[serde(flatten)]
    report: Option<ReplayReport>,
    error: Option<String>,
}

/// `replay --compare`: the trace under each of [`MODES`], as a table, `--json` or SVG.
fn compare(
    b: SharedBackend,
    base: &AllocatorConfig,
    ops: &[(usize, vramswap::alloc::TraceOp)],
    title: &str,
    args: &Args,
) -> Result<ExitCode> {
    let mut rows = Vec::new();
    for (mode, large_blocks) in MODES {
        let config = AllocatorConfig {
            large_blocks,
            ..base.clone()
        };
        let alloc = CachingAllocator::new(b.clone(), config.clone())?;
        let result = replay(&alloc, ops);
        drop(alloc);
        let (report, error) = match result {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        };
        rows.push(Row {
            mode,
            config: format!("{config:?}"),
            report,
            error,
        });
    }
    if let Some(path) = &args.svg {
        let mut svg = String::from(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"1200\">\n",
        );
        for (i, row) in rows.iter().enumerate() {
            // A mode that failed has no timeline: its slot stays empty (the table names its error).
            let Some(report) = &row.report else { continue };
            let chart = report.chart(&format!("{title}: {}", row.mode)).render();
            svg.push_str(&chart.replacen("<svg ", &format!("<svg y=\"{}\" ", i * 400), 1));
        }
        svg.push_str("</svg>\n");
        std::fs::write(path, svg).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    }
    if args.json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::InvalidState(format!("the comparison as JSON: {e}")))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("trace  {title}");
    println!(
        "{:<20} {:>12} {:>12} {:>7} {:>10} {:>10} {:>5}",
        "mode", "peak alloc", "peak resv", "ratio", "maps/1k", "unmaps/1k", "OOMs"
    );
    for row in &rows {
        match &row.report {
            Some(r) => println!(
                "{:<20} {:>8.1} MiB {:>8.1} MiB {:>7.3} {:>10.1} {:>10.1} {:>5}",
                row.mode,
                mib(r.peak_allocated_bytes),
                mib(r.peak_reserved_bytes),
                r.fragmentation,
                per_1000(r.maps, r.ops),
                per_1000(r.unmaps, r.ops),
                r.ooms
            ),
            None => println!(
                "{:<20} failed: {}",
                row.mode,
                row.error.as_deref().unwrap_or("")
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
