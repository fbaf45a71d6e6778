//! `vramswap info`.

use std::process::ExitCode;

use vramswap::backend::SharedBackend;
use vramswap::Result;

/// Arguments of `info`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(b: SharedBackend, why: &str, args: &Args) -> Result<ExitCode> {
    let p = b.properties();
    let m = b.mem_info()?;
    if args.json {
        let v = serde_json::json!({
            "backend": p.backend,
            "selected_because": why,
            "device": p,
            "memory": m,
        });
        return crate::print_json(&v);
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!("backend          {} ({why})", p.backend);
    println!(
        "device           {} #{}{}",
        p.name,
        p.ordinal,
        if p.emulated {
            " [emulated, not real hardware]"
        } else {
            ""
        }
    );
    if p.driver_version > 0 {
        println!(
            "driver version   {}.{}",
            p.driver_version / 1000,
            (p.driver_version % 1000) / 10
        );
    }
    println!(
        "compute          {}.{}",
        p.compute_capability.0, p.compute_capability.1
    );
    println!(
        "memory           {:.2} GiB free of {:.2} GiB",
        gib(m.free),
        gib(m.total)
    );
    println!(
        "virtual memory   {}",
        if p.vmm_supported {
            format!("supported, granularity {}", binary_size(p.vmm_granularity))
        } else {
            "not supported".into()
        }
    );
    println!("copy engines     {}", p.copy_engines);
    println!(
        "memory pools     {}",
        if p.memory_pools {
            "supported"
        } else {
            "not supported"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// A power-of-two-sized quantity in the largest binary unit that holds it whole: `2 MiB`,
/// `64 KiB`, `512 B`.
fn binary_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}
