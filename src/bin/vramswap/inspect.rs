//! `vramswap inspect PATH`: the tensors of a safetensors file or model directory, from the
//! headers alone.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use vramswap::load;
use vramswap::Result;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a model.safetensors.index.json, or a model directory.
    path: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    let insp = load::inspect(&args.path)?;
    let desc = &insp.desc;
    let by_dtype = desc.bytes_by_dtype();
    let payload: u64 = desc.tensors.iter().map(|t| t.len).sum();
    let mut out = String::new();
    if args.json {
        let tensors: Vec<_> = desc
            .tensors
            .iter()
            .map(|t| serde_json::json!({"name": t.name, "dtype": t.dtype, "shape": t.shape, "bytes": t.len}))
            .collect();
        let dtypes: serde_json::Map<_, _> = by_dtype
            .iter()
            .map(|(d, (n, b))| {
                (
                    d.name().to_string(),
                    serde_json::json!({"tensors": n, "bytes": b}),
                )
            })
            .collect();
        let layers: Vec<_> = desc.layers().into_iter().map(|g| g.name).collect();
        let v = serde_json::json!({
            "path": insp.path,
            "files": insp.files,
            "tensors": tensors,
            "total_tensors": desc.tensors.len(),
            "total_bytes": payload,
            "dtypes": dtypes,
            "layers": layers,
        });
        out = serde_json::to_string_pretty(&v).unwrap_or_default();
        out.push('\n');
        return crate::print(&out);
    }
    // Names are padded by hand: `{:<width$}` panics on a width of 65536 or more ("Formatting
    // argument out of range"), and a tensor name may be that long.
    let width = desc
        .tensors
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let pad = |out: &mut String, text: &str| {
        out.push_str(text);
        out.extend(std::iter::repeat_n(' ', width - text.chars().count()));
    };
    pad(&mut out, "name");
    let _ = writeln!(out, "  {:<8}  {:<20}  {:>14}", "dtype", "shape", "bytes");
    for t in &desc.tensors {
        let shape = format!("{:?}", t.shape);
        pad(&mut out, &t.name);
        let _ = writeln!(out, "  {:<8}  {:<20}  {:>14}", t.dtype, shape, t.len);
    }
    let _ = writeln!(
        out,
        "\n{} tensors in {} file(s), {} bytes ({})",
        desc.tensors.len(),
        insp.files.len(),
        payload,
        crate::human(payload)
    );
    let _ = writeln!(out, "{} layer groups", desc.layers().len());
    let _ = writeln!(out, "\ndtype     tensors             bytes   share");
    for (d, (n, b)) in &by_dtype {
        let share = if payload > 0 {
            *b as f64 * 100.0 / payload as f64
        } else {
            0.0
        };
        let _ = writeln!(out, "{:<8}  {:>7}  {:>16}  {:>5.1}%", d.name(), n, b, share);
    }
    crate::print(&out)
}
