//! # vramswap
//!
//! GPU memory for many models on one GPU: a caching device allocator, a pinned host arena, and
//! a swap engine that moves whole weight sets between host and device with asynchronous,
//! chunked, stream-overlapped copies.
//!
//! ## Layers
//!
//! Each layer uses only the ones below it. Every module of the crate is in the picture; those
//! marked `[cli]` are compiled only with the `cli` feature (the command-line tool and its
//! reports, on by default, off in the C library and the Python extension), `[infer]` only
//! with `infer`.
//!
//! ```text
//!   bin/vramswap [cli]   bench, selftest, svg [cli]   capi (C ABI)   python/ (PyO3, own crate)
//!          \__________________|__________________________|_______________/
//!                             |                 setup (one builder for C and Python)
//!             infer [infer] (candle: batched generation; demo, bench [cli])
//!                             |
//!             swap (SwapEngine: residency, budgets, LRU, prefetch)
//!            /                |\___ store (one host copy for     \
//!            |                |      many processes) |            \
//!            |                |______________________/             |
//!   transfer (chunked   load (safetensors -> arena)          alloc (caching
//!   copies)                   |                              device allocator)
//!       |               weights (sets, dtypes, host bytes)        |
//!       |                     |                                   |
//!       |               arena (pinned host slabs)                 |     conformance
//!        \____________________|__________________________________/     (backend checks)
//!                             |                                        /
//!           backend (trait: cuda/ over cudarc, sim over vramswap-sim; cuda_kernels)
//!                             |
//!           error (the crate's one Error; every layer uses it)
//! ```
//!
//! - [`backend`]: the [`Backend`] trait and its two implementations. `backend::cuda` follows
//!   cudarc's layers: `loader` (driver loading), `version` (version probe), `result` (checked
//!   calls), `device` (context), `ops` (the trait impl). `backend::sim` wraps the simulated
//!   device of the `vramswap-sim` crate (`sim/`), which the emulated driver (`emu/`) also
//!   exposes through the CUDA Driver API.
//! - [`alloc`], [`arena`]: device and pinned-host memory; bookkeeping is plain Rust over
//!   offsets ([`alloc::pool`], `arena::freelist`), property-tested without a backend.
//! - [`transfer`], [`load`], [`weights`]: moving bytes, reading checkpoints, describing sets.
//! - [`swap`]: the engine deciding what lives where; `store` (Linux): the shared host store
//!   that holds host copies once for every process of a machine.
//! - `infer`: a thin candle layer over the engine (feature `infer`).
//! - [`setup`]: one builder of backend, allocator and engine that the C ABI and Python share.
//! - [`capi`]: the C ABI (`ffi/include/vramswap.h`); the Python extension (`python/`) is a
//!   separate crate over the same public API.
//! - [`conformance`]: the backend conformance suite, run by the tests and by `selftest`.
//! - `bench`, `selftest`, `svg` (feature `cli`): the command-line tool's measurements and
//!   charts; the binary itself is `src/bin/vramswap/`.
//!
//! Everything above [`backend`] is written against `Arc<dyn Backend>` and tested on the `sim`
//! backend, a simulated device that enforces the CUDA driver's rules (capacity, opaque device
//! addresses, stream ordering, virtual-memory mapping rules) and checks stream ordering.

#![warn(missing_docs)]

pub mod alloc;
pub mod arena;
pub mod backend;
#[cfg(feature = "cli")]
pub mod bench;
pub mod capi;
pub mod conformance;
pub mod error;
#[cfg(feature = "infer")]
pub mod infer;
pub mod load;
#[cfg(feature = "cli")]
pub mod selftest;
pub mod setup;
#[cfg(target_os = "linux")]
pub mod store;
#[cfg(feature = "cli")]
pub mod svg;
pub mod swap;
pub mod transfer;
pub mod weights;

pub use backend::{Backend, BackendChoice, BackendKind, DevicePtr, Event, SharedBackend, Stream};
pub use error::{Error, ErrorKind, Result};
/// The one `key:value` configuration grammar and its vocabulary for booleans and sizes, shared
/// by every configuration string and every command-line flag that takes a size.
pub use vramswap_sim::kv as config;
