//! Text generation over the swap engine: a thin Llama-architecture model written with candle
//! ops, reading its weights from an acquired weight set, and batched generation.
//!
//! - [`LlamaConfig`]: the Hugging Face `config.json` fields; [`ModelDir`]: a model directory as
//!   Hugging Face writes it (`config.json`, `model.safetensors` or shards with an index,
//!   `tokenizer.json`); [`new_model`] writes a tiny one with seeded random weights.
//! - [`LlamaParams::build`] turns an acquired [`crate::swap::WeightGuard`] into candle
//!   tensors; [`Llama`] runs the forward pass; [`generate`] runs a batch.
//! - [`demo`] is the round-robin pipeline of `vramswap demo`; [`mod@bench`] measures batched
//!   against one-prompt-at-a-time generation.
//!
//! ## Kernels
//! On the CPU the linears and the attention run two batch-invariant kernels of this crate
//! (`linear`, `attend`) instead of candle's matmul and generic ops: a row's logits have the
//! same bits in any batch, which is what makes greedy batched output equal one-prompt-at-a-time
//! output always, and a decode step reads each weight once per group of rows, not once per
//! row (a CPU batch runs as a few groups side by side, see [`generate`]). With candle's CUDA
//! device the model runs candle's generic ops (cuBLAS).
//!
//! ## Where the weights come from
//! On the CPU (candle's default device) the parameters are built from the set's host copy in
//! the pinned arena when the set is acquired, converted to f32 for compute. With the `cuda`
//! feature and a CUDA candle device the same host bytes are uploaded by candle into tensors it
//! owns. Building candle CUDA tensors directly over the set's stable device addresses would
//! need candle's storage internals (a `CudaStorage` around a foreign `cudarc` slice, in the
//! same context as our backend) that cannot be checked without a GPU, so that is not done: on
//! CUDA the engine's device copy is what the swap figures measure, and candle computes from its
//! own copy of the same bytes.

mod attend;
mod chat;
mod config;
#[cfg(feature = "cli")]
pub mod demo;
mod generate;
mod linear;
mod model;
mod model_dir;
mod params;
mod rope;
mod text;
mod tokenizer;

#[cfg(feature = "cli")]
pub mod bench;

pub use chat::{render_chat, ChatMessage, TokenizerConfig};
pub use config::{Activation, Family, FamilyTraits, LlamaConfig, TokenIds, WindowRule};
pub use generate::{argmax, generate, GenerateOptions, Generation, Sampling, StopReason};
pub use linear::{linear_kernel_name, matmul_t};
pub use model::{logits_rows, KvCache, Llama};
pub use model_dir::{new_model, ModelDir, TinyModelSpec};
pub use params::{BlockParams, LlamaParams, TensorSource};
pub use rope::{Rope, RopeKind, RopeTables};
pub use text::{generate_text, generate_text_as, load_model, PromptForm, TextGeneration};
pub use tokenizer::{byte_level_tokenizer_json, TextTokenizer};

pub use candle_core::Device;

use crate::error::Error;

/// A candle error as ours, keeping its kind: shapes, dimensions and indices are
/// [`Error::InvalidArgument`], an operation or dtype this build lacks is [`Error::Unsupported`],
/// an I/O error is [`Error::Io`] (with the path candle attached, if any), a CUDA error is
/// [`Error::Driver`] (`CUDA_ERROR_OUT_OF_MEMORY` when candle's device ran out, so its kind is
/// out of memory); what candle does not classify stays [`Error::InvalidState`]. The message is
/// candle's whole text, context included.
pub(crate) fn candle_err(e: candle_core::Error) -> Error {
    let text = format!("candle: {e}");
    candle_kind(e, None, text)
}

fn candle_kind(e: candle_core::Error, path: Option<std::path::PathBuf>, text: String) -> Error {
    use candle_core::Error as C;
    match e {
        C::WithBacktrace { inner, .. } | C::Context { inner, .. } => {
            candle_kind(*inner, path, text)
        }
        C::WithPath { inner, path } => candle_kind(*inner, Some(path), text),
        C::Io(source) => Error::Io {
            path: path.unwrap_or_default(),
            source,
        },
        C::Cuda(cause) => {
            // candle's CUDA errors are cudarc's, whose text names the `CUresult`; only running
            // out of memory changes what a caller does, so only it is told apart.
            let oom = cause.to_string().contains("CUDA_ERROR_OUT_OF_MEMORY");
            let (code, name) = if oom {
                (2, "CUDA_ERROR_OUT_OF_MEMORY")
            } else {
                (999, "CUDA_ERROR_UNKNOWN")
            };
            Error::Driver {
                call: "candle",
                code,
                name: name.into(),
                detail: text,
            }
        }
        C::UnexpectedDType { .. }
        | C::DTypeMismatchBinaryOp { .. }
        | C::DimOutOfRange { .. }
        | C::DuplicateDimIndex { .. }
        | C::UnexpectedNumberOfDims { .. }
        | C::UnexpectedShape { .. }
        | C::ShapeMismatch { .. }
        | C::ShapeMismatchBinaryOp { .. }
        | C::ShapeMismatchCat { .. }
        | C::ShapeMismatchSplit { .. }
        | C::OnlySingleDimension { .. }
        | C::EmptyTensor { .. }
        | C::DeviceMismatchBinaryOp { .. }
        | C::NarrowInvalidArgs { .. }
        | C::InvalidIndex { .. }
        | C::BroadcastIncompatibleShapes { .. }
        | C::RequiresContiguous { .. }
        | C::OpRequiresAtLeastOneTensor { .. }
        | C::OpRequiresAtLeastTwoTensors { .. }
        | C::CannotFindTensor { .. } => Error::InvalidArgument(text),
        C::UnsupportedDTypeForOp(..)
        | C::BackwardNotSupported { .. }
        | C::NotCompiledWithCudaSupport
        | C::NotCompiledWithMetalSupport
        | C::UnsupportedSafeTensorDtype(_) => Error::Unsupported(text),
        _ => Error::InvalidState(text),
    }
}

/// The candle device that matches the engine's backend: CUDA device `ordinal` for the `cuda`
/// backend on a real driver (an error when this build has no `cuda` feature), the CPU otherwise
/// (the simulated device, and the emulated CUDA driver, which has no kernels to run).
pub fn device_for(backend: &crate::backend::SharedBackend) -> crate::error::Result<Device> {
    let props = backend.properties();
    match props.backend {
        crate::backend::BackendKind::Cuda if !props.emulated => {
            Device::new_cuda(props.ordinal.max(0) as usize).map_err(|e| {
                Error::Unsupported(format!(
                    "candle cannot use CUDA device {} ({e}); build with `--features cuda`, or use \
                     `--backend sim` to compute on the CPU",
                    props.ordinal
                ))
            })
        }
        _ => Ok(Device::Cpu),
    }
}

/// What the unit tests of `infer` share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;
    use std::sync::Arc;

    use super::{new_model, Device, Llama, LlamaParams, ModelDir, TinyModelSpec};
    use crate::backend::sim::SimBackend;
    use crate::swap::{SwapConfig, SwapEngine};

    /// Writes a tiny model to `dir`, loads it through a swap engine on the simulated device and
    /// builds it on the CPU.
    pub(crate) fn cpu_model(dir: &Path, spec: &TinyModelSpec) -> (ModelDir, Llama) {
        new_model(dir, spec).unwrap();
        let md = ModelDir::open(dir).unwrap();
        let e = SwapEngine::new(
            Arc::new(SimBackend::with_capacity(64 << 20)),
            SwapConfig::default(),
        )
        .unwrap();
        md.register(&e, "m").unwrap();
        let g = e.acquire("m").unwrap();
        let params = LlamaParams::build(&md.config, &g, &Device::Cpu).unwrap();
        let m = Llama::new(md.config.clone(), params, &Device::Cpu).unwrap();
        (md, m)
    }
}

#[cfg(test)]
mod candle_error_tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn candle_errors_keep_their_kind() {
        let shape = candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .matmul(
                &candle_core::Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap_err();
        assert_eq!(candle_err(shape).kind(), ErrorKind::InvalidArgument);
        let missing = candle_core::Error::NotCompiledWithCudaSupport;
        assert_eq!(candle_err(missing).kind(), ErrorKind::Unsupported);
        let io =
            candle_core::Error::Io(std::io::Error::other("gone")).with_path("/m/w.safetensors");
        match candle_err(io) {
            Error::Io { path, .. } => assert_eq!(path, std::path::Path::new("/m/w.safetensors")),
            other => panic!("{other:?}"),
        }
        let oom = candle_core::Error::Cuda(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        let e = candle_err(oom.context("allocating the KV cache"));
        assert_eq!(e.kind(), ErrorKind::OutOfMemory, "{e}");
        assert!(e.to_string().contains("KV cache"), "{e}");
        let other = candle_core::Error::Msg("something else".into());
        assert_eq!(candle_err(other).kind(), ErrorKind::InvalidState);
    }
}
