//! Allocation traces: the JSON-lines format `vramswap replay` reads, its parser and writer, and
//! a generator of transformer forward-pass traces.
//!
//! One op per line: `{"op":"alloc","id":N,"size":BYTES,"stream":S}`, `{"op":"free","id":N}`,
//! `{"op":"record_stream","id":N,"stream":S}`. Streams are small integers, created on first
//! use. Lines of the history's own events (`segment_alloc`, `segment_free`, `oom`) are
//! accepted and ignored by replay; blank lines are skipped.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One trace operation, and one event of the allocator's history (the one definition of
/// both: [`super::history::HistoryEvent`] is this type). In the history, streams are the
/// backend's handles and allocations carry their address; [`super::history::to_trace`] turns
/// handles into small stream numbers and drops addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum TraceOp {
    /// Allocate `size` bytes on stream `stream` as allocation `id`.
    Alloc {
        /// Allocation id.
        id: u64,
        /// Bytes.
        size: u64,
        /// Stream: a small number in a trace, the backend's handle in the history.
        stream: u64,
        /// Device address the block got (history only; absent from traces).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        addr: Option<u64>,
    },
    /// Free allocation `id`.
    Free {
        /// Allocation id.
        id: u64,
    },
    /// Allocation `id` is used on stream `stream` too.
    RecordStream {
        /// Allocation id.
        id: u64,
        /// Stream: a small number in a trace, the backend's handle in the history.
        stream: u64,
    },
    /// Memory obtained from the backend (a segment, or pages of an expandable one); replay
    /// ignores it.
    SegmentAlloc {
        /// First byte.
        addr: u64,
        /// Bytes.
        size: u64,
    },
    /// Memory returned to the backend; replay ignores it.
    SegmentFree {
        /// First byte.
        addr: u64,
        /// Bytes.
        size: u64,
    },
    /// A request that failed with out-of-memory; replay ignores it.
    Oom {
        /// Bytes.
        size: u64,
    },
}

/// Parses a trace; each op comes with its line number (from 1). A malformed line is
/// [`Error::Malformed`] naming `path` and the line.
///
/// ```
/// use vramswap::alloc::trace::{parse_trace, TraceOp};
/// let ops = parse_trace("{\"op\":\"alloc\",\"id\":1,\"size\":4096,\"stream\":0}\n\n{\"op\":\"free\",\"id\":1}\n", "t.jsonl").unwrap();
/// assert_eq!(ops[1], (3, TraceOp::Free { id: 1 }));
/// assert!(parse_trace("{\"op\":\"alloc\"}", "t.jsonl").unwrap_err().to_string().contains("line 1"));
/// ```
pub fn parse_trace(text: &str, path: impl AsRef<Path>) -> Result<Vec<(usize, TraceOp)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let op: TraceOp = serde_json::from_str(line).map_err(|e| Error::Malformed {
            path: path.as_ref().to_path_buf(),
            problem: format!("line {}: {e}", i + 1),
        })?;
        out.push((i + 1, op));
    }
    Ok(out)
}

/// Reads and parses a trace file.
pub fn read_trace(path: impl AsRef<Path>) -> Result<Vec<(usize, TraceOp)>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_trace(&text, path)
}

/// Writes ops as JSON lines.
pub fn write_trace(ops: &[TraceOp]) -> String {
    let mut s = String::with_capacity(ops.len() * 48);
    for op in ops {
        s.push_str(&serde_json::to_string(op).unwrap_or_default());
        s.push('\n');
    }
    s
}

/// The shape of a transformer whose forward passes [`transformer_trace`] writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransformerShape {
    /// Name used in file names and reports.
    pub name: String,
    /// Decoder layers.
    pub layers: u32,
    /// Sequences per batch.
    pub batch: u64,
    /// Prompt lengths, one per pass, cycled.
    pub seq: Vec<u64>,
    /// Model width.
    pub hidden: u64,
    /// Attention heads.
    pub heads: u64,
    /// MLP width as a multiple of `hidden`.
    pub ffn_mult: u64,
    /// Bytes per element.
    pub dtype_bytes: u64,
    /// Forward passes (requests).
    pub passes: u32,
    /// Generated tokens per pass (each grows the KV cache).
    pub decode_steps: u64,
}

impl TransformerShape {
    /// A small model with one prompt length.
    pub fn small() -> Self {
        TransformerShape {
            name: "small".into(),
            layers: 4,
            batch: 4,
            seq: vec![256],
            hidden: 1024,
            heads: 16,
            ffn_mult: 4,
            dtype_bytes: 2,
            passes: 4,
            decode_steps: 16,
        }
    }

    /// A wider model with prompt lengths that vary between passes.
    pub fn mixed_lengths() -> Self {
        TransformerShape {
            name: "mixed".into(),
            layers: 8,
            batch: 2,
            seq: vec![512, 128, 1024, 384],
            hidden: 2048,
            heads: 16,
            ffn_mult: 3,
            dtype_bytes: 2,
            passes: 8,
            decode_steps: 8,
        }
    }

    /// Long prompts: attention scores dominate.
    pub fn long_context() -> Self {
        TransformerShape {
            name: "long".into(),
            layers: 4,
            batch: 2,
            seq: vec![2048],
            hidden: 1024,
            heads: 8,
            ffn_mult: 4,
            dtype_bytes: 2,
            passes: 3,
            decode_steps: 4,
        }
    }

    /// The three shapes above.
    pub fn presets() -> Vec<TransformerShape> {
        vec![Self::small(), Self::mixed_lengths(), Self::long_context()]
    }

    /// The preset named `name`.
    pub fn preset(name: &str) -> Option<TransformerShape> {
        Self::presets().into_iter().find(|s| s.name == name)
    }
}

struct Gen {
    ops: Vec<TraceOp>,
    next: u64,
}

impl Gen {
    fn alloc(&mut self, size: u64) -> u64 {
        let id = self.next;
        self.next += 1;
        self.ops.push(TraceOp::Alloc {
            id,
            size: size.max(1),
            stream: 0,
            addr: None,
        });
        id
    }
    fn free(&mut self, id: u64) {
        self.ops.push(TraceOp::Free { id });
    }
}

/// The allocations of `shape`'s forward passes, in the order a framework makes them: per
/// pass, a prefill over the prompt (per layer: norm, q/k/v, attention scores and
/// probabilities, context, projection, residual, MLP up/activation/down, freed as soon as the
/// next op consumed them; k and v stay as the layer's KV cache), then decode steps in which
/// each layer's KV cache grows by one token (a new, larger cache and a free of the old one) and
/// small one-token activations come and go. Everything is freed at the end of the pass.
pub fn transformer_trace(shape: &TransformerShape) -> Vec<TraceOp> {
    let mut g = Gen {
        ops: Vec::new(),
        next: 0,
    };
    let e = shape.dtype_bytes;
    let (b, h, nh) = (shape.batch, shape.hidden, shape.heads);
    for pass in 0..shape.passes as usize {
        let s = shape.seq[pass % shape.seq.len().max(1)];
        let act = b * s * h * e;
        let mut x = g.alloc(act);
        let mut kv: Vec<(u64, u64)> = Vec::new();
        for _ in 0..shape.layers {
            let ln = g.alloc(act);
            let q = g.alloc(act);
            let k = g.alloc(act);
            let v = g.alloc(act);
            let scores = g.alloc(b * nh * s * s * e);
            let probs = g.alloc(b * nh * s * s * e);
            g.free(scores);
            let ctx = g.alloc(act);
            g.free(probs);
            g.free(q);
            g.free(ln);
            let proj = g.alloc(act);
            g.free(ctx);
            let x2 = g.alloc(act);
            g.free(x);
            g.free(proj);
            let ln2 = g.alloc(act);
            let up = g.alloc(act * shape.ffn_mult);
            let a = g.alloc(act * shape.ffn_mult);
            g.free(up);
            let down = g.alloc(act);
            g.free(a);
            g.free(ln2);
            x = g.alloc(act);
            g.free(x2);
            g.free(down);
            kv.push((k, v));
        }
        g.free(x);
        for t in 1..=shape.decode_steps {
            let len = s + t;
            let tok = b * h * e;
            let mut y = g.alloc(tok);
            for layer in kv.iter_mut() {
                let ln = g.alloc(tok);
                let nk = g.alloc(b * len * h * e);
                g.free(layer.0);
                let nv = g.alloc(b * len * h * e);
                g.free(layer.1);
                *layer = (nk, nv);
                let scores = g.alloc(b * nh * len * e);
                let ctx = g.alloc(tok);
                g.free(scores);
                g.free(ln);
                let up = g.alloc(tok * shape.ffn_mult);
                let y2 = g.alloc(tok);
                g.free(up);
                g.free(ctx);
                g.free(y);
                y = y2;
            }
            g.free(y);
        }
        for (k, v) in kv {
            g.free(k);
            g.free(v);
        }
    }
    g.ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_traces_free_everything_exactly_once() {
        for shape in TransformerShape::presets() {
            let ops = transformer_trace(&shape);
            let mut live = HashSet::new();
            for op in &ops {
                match op {
                    TraceOp::Alloc { id, .. } => assert!(live.insert(*id)),
                    TraceOp::Free { id } => {
                        assert!(live.remove(id), "{}: free of {id}", shape.name)
                    }
                    _ => {}
                }
            }
            assert!(live.is_empty(), "{}", shape.name);
        }
    }

    #[test]
    fn traces_round_trip_through_the_text_format() {
        let ops = transformer_trace(&TransformerShape::small());
        let text = write_trace(&ops);
        let back: Vec<TraceOp> = parse_trace(&text, "x")
            .unwrap()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(back, ops);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "{\"op\":\"alloc\",\"id\":1,\"size\":-4,\"stream\":0}",
            "{\"op\":\"teleport\",\"id\":1}",
            "not json",
            "{\"op\":\"free\",\"id\":1,\"extra\":2}",
        ] {
            let text = format!("{{\"op\":\"free\",\"id\":9}}\n{bad}\n");
            let e = parse_trace(&text, "t.jsonl").unwrap_err().to_string();
            assert!(e.contains("t.jsonl") && e.contains("line 2"), "{e}");
        }
    }
}
