//! Whole-model swap measurements (`vramswap swap-bench`) and the integrity soak
//! (`vramswap soak`).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backend::{self, Backend, SharedBackend, Stream};
use crate::error::{Error, Result};
use crate::swap::{gbps, SwapConfig, SwapEngine};
use crate::weights::DType;

/// Tensors of a synthetic Llama-like model of about `bytes` bytes (f16): embeddings, `layers`
/// decoder layers (attention projections, a SwiGLU MLP, two norms), a final norm and an output
/// head. Returns (name, shape) pairs.
pub fn llama_like_shapes(bytes: u64, layers: usize) -> Vec<(String, Vec<u64>)> {
    // Per layer about 4h² (attention) + 3·h·(8h/3) (MLP) = 12h² elements, plus 2·vocab·h.
    let vocab = 32_000u64;
    let elems = (bytes / 2) as f64;
    let a = 12.0 * layers as f64;
    let b = 2.0 * vocab as f64;
    let h = ((-b + (b * b + 4.0 * a * elems).sqrt()) / (2.0 * a)).max(64.0);
    let h = ((h as u64) / 64).max(1) * 64;
    let inter = (h * 8 / 3).div_ceil(64) * 64;
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![vocab, h])];
    for l in 0..layers {
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            v.push((format!("model.layers.{l}.self_attn.{p}.weight"), vec![h, h]));
        }
        v.push((
            format!("model.layers.{l}.mlp.gate_proj.weight"),
            vec![inter, h],
        ));
        v.push((
            format!("model.layers.{l}.mlp.up_proj.weight"),
            vec![inter, h],
        ));
        v.push((
            format!("model.layers.{l}.mlp.down_proj.weight"),
            vec![h, inter],
        ));
        v.push((format!("model.layers.{l}.input_layernorm.weight"), vec![h]));
        v.push((
            format!("model.layers.{l}.post_attention_layernorm.weight"),
            vec![h],
        ));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    v.push(("lm_head.weight".to_string(), vec![vocab, h]));
    v
}

/// The most repetitions `swap-bench` runs per figure: each repetition moves every set at least
/// twice, so more could not finish in any reasonable time (and `reps + 1` cannot wrap).
pub const MAX_REPS: usize = 1000;
/// The most weight sets `swap-bench` and `soak` create (each is built in host memory).
pub const MAX_SETS: usize = 64;
/// The most swap-ins `soak` runs.
pub const MAX_SOAK_CYCLES: u64 = 1_000_000_000;

/// Registers a synthetic Llama-like set of about `bytes` bytes with pseudo-random contents.
pub fn register_synthetic(engine: &SwapEngine, name: &str, bytes: u64, seed: u64) -> Result<u64> {
    // The set is built in host memory before it is registered: refuse what could never be on
    // the device before allocating it (a typo of a size would otherwise exhaust host memory).
    let device = engine.backend().properties().total_memory;
    if bytes > device {
        return Err(Error::InvalidArgument(format!(
            "a set of {bytes} bytes cannot fit the device's {device} bytes"
        )));
    }
    let shapes = llama_like_shapes(bytes, 8);
    let mut bufs = Vec::with_capacity(shapes.len());
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (_, shape) in &shapes {
        let n = shape.iter().product::<u64>() as usize * 2;
        let mut b = vec![0u8; n];
        for chunk in b.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let w = x.to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        bufs.push(b);
    }
    let arrays = shapes
        .iter()
        .zip(&bufs)
        .map(|((n, s), b)| (n.clone(), DType::F16, s.clone(), &b[..]))
        .collect();
    engine.register_arrays(name, arrays)?;
    Ok(bufs.iter().map(|b| b.len() as u64).sum())
}

/// What `swap-bench` measures.
#[derive(Clone, Debug, Serialize)]
pub struct SwapBenchConfig {
    /// Bytes per weight set.
    pub set_bytes: u64,
    /// Number of sets (at least 2).
    pub sets: usize,
    /// Simulated compute for the prefetch measurement; `None` uses the measured swap-in time
    /// (compute = transfer, the goal's condition).
    pub compute: Option<Duration>,
    /// Repetitions (medians are reported).
    pub reps: usize,
}

/// One figure: time, GB/s and ratio to the ceiling of its direction.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct SwapFigure {
    /// Milliseconds.
    pub ms: f64,
    /// GB/s (0 where no bytes move).
    pub gbps: f64,
    /// Ratio to the same-run ceiling of that direction (0 where not meaningful).
    pub ratio: f64,
}

/// The report of `vramswap swap-bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct SwapBenchReport {
    /// Backend.
    pub backend: String,
    /// Device.
    pub device: String,
    /// Whether the device is emulated.
    pub emulated: bool,
    /// Bytes per set.
    pub set_bytes: u64,
    /// Host-to-device ceiling: one large pinned copy of the same bytes.
    pub ceiling_h2d: SwapFigure,
    /// Device-to-host ceiling.
    pub ceiling_d2h: SwapFigure,
    /// A plain host memcpy of the same bytes (the `sim` goal's reference).
    pub memcpy: SwapFigure,
    /// Swap-in of an in-host set (acquire until every byte arrived).
    pub swap_in: SwapFigure,
    /// Offload of a clean set (unmap, no copy).
    pub clean_swap_out: SwapFigure,
    /// Offload of a dirty set (copy back, then unmap).
    pub dirty_swap_out: SwapFigure,
    /// Dirty swap-out of A while B swaps in: aggregate GB/s; ratio to one direction's ceiling.
    pub concurrent_out_in: SwapFigure,
    /// Simulated compute used for the prefetch figure, ms.
    pub compute_ms: f64,
    /// Share of a swap-in hidden behind compute by prefetching (1 = fully hidden).
    pub prefetch_hidden: f64,
    /// Whether stable addresses (the virtual-memory API) were used.
    pub stable_addresses: bool,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn figure(bytes: u64, t: Duration, ceiling: f64) -> SwapFigure {
    let g = if bytes > 0 { gbps(bytes, t) } else { 0.0 };
    SwapFigure {
        ms: t.as_secs_f64() * 1e3,
        gbps: g,
        ratio: if ceiling > 0.0 && bytes > 0 {
            g / ceiling
        } else {
            0.0
        },
    }
}

fn ceiling(b: &dyn Backend, bytes: u64, reps: usize) -> Result<(Duration, Duration)> {
    let dev = b.alloc(bytes)?;
    let host = match b.host_alloc_pinned(bytes) {
        Ok(h) => h,
        Err(e) => {
            let _ = b.free(dev);
            return Err(e);
        }
    };
    let s = Stream::DEFAULT;
    let run = || -> Result<(Duration, Duration)> {
        let mut up = Vec::new();
        let mut down = Vec::new();
        for _ in 0..reps + 1 {
            let t = Instant::now();
            // SAFETY: `host` lives until freed below, after the synchronisations.
            unsafe { b.copy_htod_async(dev, host, bytes, s)? };
            b.stream_synchronize(s)?;
            up.push(t.elapsed());
            let t = Instant::now();
            // SAFETY: as above.
            unsafe { b.copy_dtoh_async(host, dev, bytes, s)? };
            b.stream_synchronize(s)?;
            down.push(t.elapsed());
        }
        up.remove(0);
        down.remove(0);
        Ok((median(up), median(down)))
    };
    let r = run();
    let _ = b.synchronize();
    // SAFETY: no copy is in flight.
    let _ = unsafe { b.host_free_pinned(host) };
    let _ = b.free(dev);
    r
}

/// Runs the swap measurements. Sets are registered in a fresh engine over `backend`.
pub fn run(
    backend: &SharedBackend,
    config: SwapConfig,
    cfg: &SwapBenchConfig,
) -> Result<SwapBenchReport> {
    if !(2..=MAX_SETS).contains(&cfg.sets) {
        return Err(Error::InvalidArgument(format!(
            "swap-bench needs 2 to {MAX_SETS} sets, not {}",
            cfg.sets
        )));
    }
    if !(1..=MAX_REPS).contains(&cfg.reps) {
        return Err(Error::InvalidArgument(format!(
            "swap-bench runs 1 to {MAX_REPS} repetitions, not {}",
            cfg.reps
        )));
    }
    let reps = cfg.reps;
    let engine = SwapEngine::new(backend.clone(), config)?;
    let mut bytes = 0;
    for i in 0..cfg.sets {
        bytes = register_synthetic(&engine, &format!("set{i}"), cfg.set_bytes, i as u64 + 1)?;
    }
    let b = backend.as_ref();
    let (up, down) = ceiling(b, bytes, reps)?;
    let ceil_up = gbps(bytes, up);
    let ceil_down = gbps(bytes, down);
    let memcpy = {
        let src = vec![1u8; bytes as usize];
        let mut dst = vec![0u8; bytes as usize];
        let mut v = Vec::new();
        for _ in 0..reps + 1 {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&dst);
            v.push(t.elapsed());
        }
        v.remove(0);
        median(v)
    };
    // Swap-in and clean swap-out.
    let (mut ins, mut outs, mut dirty) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..reps + 1 {
        let name = format!("set{}", r % cfg.sets);
        let t = Instant::now();
        drop(engine.acquire(&name)?);
        ins.push(t.elapsed());
        let t = Instant::now();
        engine.offload(&name)?;
        outs.push(t.elapsed());
        drop(engine.acquire(&name)?);
        engine.mark_dirty(&name)?;
        let t = Instant::now();
        engine.offload(&name)?;
        dirty.push(t.elapsed());
    }
    ins.remove(0);
    outs.remove(0);
    dirty.remove(0);
    let swap_in = median(ins);
    // Concurrent: A dirty out, B in.
    let mut conc = Vec::new();
    for _ in 0..reps {
        drop(engine.acquire("set0")?);
        engine.mark_dirty("set0")?;
        let t = Instant::now();
        // A scoped thread: joined before this returns, also when the acquire fails (a thread
        // left running would hold the engine and its device memory past the bench's end).
        let (offloaded, acquired) = std::thread::scope(|s| {
            let h = s.spawn(|| engine.offload("set0"));
            let g = engine.acquire("set1");
            let offloaded = h
                .join()
                .map_err(|_| Error::InvalidState("offload thread panicked".into()));
            (offloaded, g)
        });
        let g = acquired?;
        offloaded??;
        conc.push(t.elapsed());
        drop(g);
        engine.offload("set1")?;
    }
    // Prefetch hidden behind compute.
    let compute = cfg.compute.unwrap_or(swap_in);
    let mut hidden = Vec::new();
    for _ in 0..reps {
        engine.prefetch("set1")?;
        std::thread::sleep(compute); // the current model computes
        let t = Instant::now();
        drop(engine.acquire("set1")?);
        let waited = t.elapsed();
        hidden.push(1.0 - (waited.as_secs_f64() / swap_in.as_secs_f64()).min(1.0));
        engine.offload("set1")?;
    }
    hidden.sort_by(f64::total_cmp);
    let p = b.properties();
    Ok(SwapBenchReport {
        backend: p.backend.to_string(),
        device: p.name.clone(),
        emulated: p.emulated,
        set_bytes: bytes,
        ceiling_h2d: figure(bytes, up, ceil_up),
        ceiling_d2h: figure(bytes, down, ceil_down),
        memcpy: figure(bytes, memcpy, gbps(bytes, memcpy)),
        swap_in: figure(bytes, swap_in, ceil_up),
        clean_swap_out: figure(0, median(outs), 0.0),
        dirty_swap_out: figure(bytes, median(dirty), ceil_down),
        concurrent_out_in: figure(2 * bytes, median(conc), ceil_up.max(ceil_down)),
        compute_ms: compute.as_secs_f64() * 1e3,
        prefetch_hidden: hidden[hidden.len() / 2],
        stable_addresses: engine.stable_addresses(),
    })
}

impl SwapBenchReport {
    /// The table `swap-bench` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "device: {} ({}{}), {:.1} MiB per set (a Llama-like mix of whole tensors near the size asked), stable addresses: {}",
            self.device,
            self.backend,
            if self.emulated { ", emulated" } else { "" },
            self.set_bytes as f64 / (1 << 20) as f64,
            self.stable_addresses
        );
        let _ = writeln!(
            s,
            "\n{:<34} {:>10} {:>9} {:>9}",
            "operation", "ms", "GB/s", "ratio"
        );
        // A cell with nothing to say is blank, as in the README's table: no bytes move in a
        // clean swap-out (no GB/s, no ratio), and the memcpy is a reference, not a ratio.
        let cell = |x: Option<f64>| x.map_or_else(String::new, |x| format!("{x:.2}"));
        let row = |s: &mut String, n: &str, f: &SwapFigure, gbps: bool, ratio: bool| {
            let _ = writeln!(
                s,
                "{:<34} {:>10.3} {:>9} {:>9}",
                n,
                f.ms,
                cell(gbps.then_some(f.gbps)),
                cell(ratio.then_some(f.ratio))
            );
        };
        let h2d = "ceiling h2d (one pinned copy)";
        row(&mut s, h2d, &self.ceiling_h2d, true, true);
        let d2h = "ceiling d2h (one pinned copy)";
        row(&mut s, d2h, &self.ceiling_d2h, true, true);
        let memcpy = "host memcpy of the same bytes";
        row(&mut s, memcpy, &self.memcpy, true, false);
        let swap_in = "swap-in (vs h2d ceiling)";
        row(&mut s, swap_in, &self.swap_in, true, true);
        let clean = "clean swap-out (unmap, no copy)";
        row(&mut s, clean, &self.clean_swap_out, false, false);
        let dirty = "dirty swap-out (vs d2h ceiling)";
        row(&mut s, dirty, &self.dirty_swap_out, true, true);
        let both = "out(A) + in(B) at once (aggregate)";
        row(&mut s, both, &self.concurrent_out_in, true, true);
        let _ = writeln!(
            s,
            "prefetch behind {:.1} ms of compute hides {:.0}% of a swap-in",
            self.compute_ms,
            self.prefetch_hidden * 100.0
        );
        let _ = writeln!(
            s,
            "swap-in vs memcpy of the same bytes: {:.0}%",
            self.swap_in.gbps / self.memcpy.gbps.max(1e-12) * 100.0
        );
        s
    }
}

/// Outcome of [`soak`].
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Cycles run.
    pub cycles: u64,
    /// Sets cycled.
    pub sets: usize,
    /// Bytes of each set: a Llama-like mix of whole tensors near the size asked for.
    pub set_bytes: u64,
    /// Bytes swapped in.
    pub bytes: u64,
    /// Mismatches found (0 on success).
    pub mismatches: u64,
    /// Seconds.
    pub secs: f64,
}

/// Cycles `sets` synthetic sets through the device `cycles` times, comparing the checksum of
/// every set on the device with its source after each swap-in, and copying one set back dirty
/// every few cycles. Stops at the first mismatch with an error naming it.
pub fn soak(
    backend: &SharedBackend,
    config: SwapConfig,
    sets: usize,
    set_bytes: u64,
    cycles: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<SoakReport> {
    if !(1..=MAX_SETS).contains(&sets) {
        return Err(Error::InvalidArgument(format!(
            "soak cycles 1 to {MAX_SETS} sets, not {sets}"
        )));
    }
    if !(1..=MAX_SOAK_CYCLES).contains(&cycles) {
        return Err(Error::InvalidArgument(format!(
            "soak runs 1 to {MAX_SOAK_CYCLES} cycles, not {cycles}"
        )));
    }
    let engine = SwapEngine::new(backend.clone(), config)?;
    let mut expected = Vec::new();
    let mut made_bytes = 0;
    for i in 0..sets {
        let name = format!("soak{i}");
        made_bytes = register_synthetic(&engine, &name, set_bytes, 1000 + i as u64)?;
        let g = engine.acquire(&name)?;
        let sum = backend::checksum(backend.as_ref(), g.base(), g.bytes(), Stream::DEFAULT)?;
        expected.push(sum);
        drop(g);
        engine.offload(&name)?;
    }
    let t = Instant::now();
    let mut bytes = 0;
    for c in 0..cycles {
        let i = (c as usize) % expected.len();
        let name = format!("soak{i}");
        let g = engine.acquire(&name)?;
        let got = backend::checksum(backend.as_ref(), g.base(), g.bytes(), Stream::DEFAULT)?;
        bytes += g.bytes();
        if got != expected[i] {
            return Err(Error::ChecksumMismatch {
                what: format!("set `{name}` after cycle {c}"),
                expected: expected[i],
                actual: got,
            });
        }
        drop(g);
        if c % 7 == 3 {
            // Exercise the copy-back path: the bytes are unchanged, so the checksum must hold.
            engine.mark_dirty(&name)?;
        }
        engine.offload(&name)?;
        progress(c + 1);
    }
    Ok(SoakReport {
        cycles,
        sets,
        set_bytes: made_bytes,
        bytes,
        mismatches: 0,
        secs: t.elapsed().as_secs_f64(),
    })
}
