//! A generator of serving-shaped allocation traces: continuous batching of requests with mixed
//! batch sizes, prompt and generation lengths; a KV cache per request allocated on a second
//! stream and freed when the request ends (out of allocation order); activations on the
//! compute stream; logits used on a third stream through `record_stream` (a copy to the
//! host). The shape PyTorch's caching allocator fragments worst on.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::trace::TraceOp;

/// The compute stream.
const COMPUTE: u64 = 0;
/// The stream KV caches are allocated on.
const KV: u64 = 1;
/// The stream logits are copied to the host on.
const COPY: u64 = 2;

/// The model and load a serving trace is drawn for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServingShape {
    /// Seed of the random draws (same seed, same trace).
    pub seed: u64,
    /// Requests in all.
    pub requests: u32,
    /// Requests running at once at most.
    pub max_running: u32,
    /// Decoder layers (one K and one V cache per layer and request).
    pub layers: u32,
    /// Model width.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// Vocabulary size (logits).
    pub vocab: u64,
    /// Bytes per element.
    pub dtype_bytes: u64,
}

impl ServingShape {
    /// A 7B-like model scaled down so a trace replays in about a second: 8 layers, width
    /// 2048, 48 requests, at most 12 at once.
    pub fn new(seed: u64) -> Self {
        ServingShape {
            seed,
            requests: 48,
            max_running: 12,
            layers: 8,
            hidden: 2048,
            heads: 16,
            vocab: 32_000,
            dtype_bytes: 2,
        }
    }
}

struct Request {
    batch: u64,
    prompt: u64,
    left: u64,
    kv: Vec<u64>,
    prefilled: bool,
}

struct Ids {
    ops: Vec<TraceOp>,
    next: u64,
}

impl Ids {
    fn alloc(&mut self, size: u64, stream: u64) -> u64 {
        let id = self.next;
        self.next += 1;
        self.ops.push(TraceOp::Alloc {
            id,
            size: size.max(1),
            stream,
            addr: None,
        });
        id
    }

    fn free(&mut self, id: u64) {
        self.ops.push(TraceOp::Free { id });
    }
}

/// A serving trace for `shape`: requests are admitted while fewer than `max_running` run
/// (each with batch 1 to 8, a prompt of 32 to 2048 tokens and 8 to 256 generated tokens, drawn
/// log-uniformly); each step runs one forward pass over the running requests (prefill for the
/// new ones, one decode token for the others), layer by layer, with activations allocated and
/// freed on the compute stream; a finished request frees its KV caches. Every allocation is
/// freed by the end.
///
/// ```
/// use vramswap::alloc::serving::{serving_trace, ServingShape};
/// use vramswap::alloc::TraceOp;
/// let ops = serving_trace(&ServingShape::new(1));
/// let allocs = ops.iter().filter(|o| matches!(o, TraceOp::Alloc { .. })).count();
/// let frees = ops.iter().filter(|o| matches!(o, TraceOp::Free { .. })).count();
/// assert_eq!(allocs, frees);
/// assert!(ops.iter().any(|o| matches!(o, TraceOp::RecordStream { stream: 2, .. })));
/// assert_eq!(ops, serving_trace(&ServingShape::new(1)));
/// ```
pub fn serving_trace(shape: &ServingShape) -> Vec<TraceOp> {
    let mut rng = SmallRng::seed_from_u64(shape.seed);
    let mut log_uniform = |lo: f64, hi: f64| -> u64 {
        let x: f64 = rng.random_range(lo.ln()..=hi.ln());
        x.exp().round() as u64
    };
    let mut draws: Vec<(u64, u64, u64)> = (0..shape.requests)
        .map(|_| {
            let batch = 1u64 << log_uniform(1.0, 8.0).ilog2();
            (batch, log_uniform(32.0, 2048.0), log_uniform(8.0, 256.0))
        })
        .collect();
    draws.reverse();
    let (h, e) = (shape.hidden, shape.dtype_bytes);
    let mut ids = Ids {
        ops: Vec::new(),
        next: 0,
    };
    let mut running: Vec<Request> = Vec::new();
    while !draws.is_empty() || !running.is_empty() {
        while running.len() < shape.max_running as usize {
            let Some((batch, prompt, gen)) = draws.pop() else {
                break;
            };
            // K and V per layer, for the prompt and every token to come.
            let bytes = batch * (prompt + gen) * h * e;
            let kv = (0..2 * shape.layers)
                .map(|_| ids.alloc(bytes, KV))
                .collect();
            running.push(Request {
                batch,
                prompt,
                left: gen,
                kv,
                prefilled: false,
            });
        }
        // One forward pass: prefill tokens of new requests, one token of the others.
        let tokens: u64 = running
            .iter()
            .map(|r| r.batch * if r.prefilled { 1 } else { r.prompt })
            .sum();
        let mut hidden = ids.alloc(tokens * h * e, COMPUTE);
        for _ in 0..shape.layers {
            let qkv = ids.alloc(tokens * 3 * h * e, COMPUTE);
            let scores: Vec<u64> = running
                .iter()
                .filter(|r| !r.prefilled)
                .map(|r| ids.alloc(r.batch * shape.heads * r.prompt * r.prompt * e, COMPUTE))
                .collect();
            let attn = ids.alloc(tokens * h * e, COMPUTE);
            ids.free(qkv);
            for s in scores {
                ids.free(s);
            }
            let mlp = ids.alloc(tokens * 4 * h * e, COMPUTE);
            let out = ids.alloc(tokens * h * e, COMPUTE);
            ids.free(mlp);
            ids.free(attn);
            ids.free(hidden);
            hidden = out;
        }
        let batch: u64 = running.iter().map(|r| r.batch).sum();
        let logits = ids.alloc(batch * shape.vocab * 4, COMPUTE);
        ids.free(hidden);
        ids.ops.push(TraceOp::RecordStream {
            id: logits,
            stream: COPY,
        });
        ids.free(logits);
        for r in &mut running {
            if r.prefilled {
                r.left -= 1;
            }
            r.prefilled = true;
        }
        running.retain(|r| {
            if r.left == 0 {
                for &k in &r.kv {
                    ids.ops.push(TraceOp::Free { id: k });
                }
                false
            } else {
                true
            }
        });
    }
    ids.ops
}
