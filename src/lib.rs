//! # vramswap
//!
//! GPU memory for many models on one GPU: a caching device allocator, a pinned host arena, and
//! a swap engine that moves whole weight sets between host and device with asynchronous,
//! chunked, stream-overlapped copies.
//!
//! ## Layers
//!
//! Each layer uses only the ones below it:
//!
//! ```text
//!   bin/vramswap (CLI)        capi (C ABI)        python (PyO3)
//!                 \              |               /
//!                  infer (candle: batched generation)
//!                               |
//!                  swap (SwapEngine: residency, budgets, LRU, prefetch)
//!                  /                          \
//!        transfer (chunked copies)          load (safetensors -> arena)
//!            /            \                  /
//!   alloc (caching device allocator)    arena (pinned host slabs)
//!            \                              /
//!             backend (trait: `cuda` via cudarc, `sim` in host memory)
//! ```
//!
//! Everything above [`backend`] is written against `Arc<dyn Backend>` and tested on the `sim`
//! backend, a simulated device that enforces the CUDA driver's rules (capacity, opaque device
//! addresses, stream ordering, virtual-memory mapping rules) and checks stream ordering.

#![warn(missing_docs)]

pub mod alloc;
pub mod arena;
pub mod backend;
pub mod bench;
pub mod capi;
pub mod conformance;
pub mod error;
#[cfg(feature = "infer")]
pub mod infer;
pub mod load;
pub mod selftest;
pub mod setup;
pub mod svg;
pub mod swap;
pub mod transfer;
pub mod weights;

pub use backend::{Backend, BackendChoice, BackendKind, DevicePtr, Event, SharedBackend, Stream};
pub use error::{Error, ErrorKind, Result};
/// The one `key:value` configuration grammar and its vocabulary for booleans and sizes, shared
/// by every configuration string and every command-line flag that takes a size.
pub use vramswap_sim::kv as config;
