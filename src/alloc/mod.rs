//! The caching device allocator.
//!
//! [`CachingAllocator`] serves device memory the way PyTorch's `CUDACachingAllocator` and
//! RMM's stream-ordered pool do: requests are rounded to 512 bytes (optionally to power-of-two
//! divisions), served best-fit from per-stream free lists of a small pool (≤ 1 MiB, 2 MiB
//! segments) and a large pool, with splitting and coalescing inside segments. Cross-stream
//! reuse goes through an event wait, never a host sync; `record_stream` delays a block's return
//! until other streams are done with it. Running short, it frees empty cached segments, then
//! asks registered pressure handlers, then fails with [`crate::Error::AllocatorOutOfMemory`].
//!
//! The pieces, bottom up:
//!
//! - [`sizing`]: rounding, segment sizes, split rules;
//! - [`pool`]: the block bookkeeping, pure Rust over addresses (no backend), property-tested;
//! - [`CachingAllocator`]: the pool over a [`crate::Backend`], with events, limits, the
//!   out-of-memory ladder and expandable segments;
//! - [`stats`], [`history`]: statistics, snapshots, the event ring;
//! - [`trace`], [`serving`], [`mod@replay`]: the trace format, transformer and serving trace
//!   generators, replay and its chart.
//!
//! Configuration: [`AllocatorConfig`], or `VRAMSWAP_ALLOC_CONF` such as
//! `max_split_size_mb:128,expandable_segments:true,limit_mb:4096`.

mod caching;
pub mod config;
pub mod history;
pub mod pool;
pub mod replay;
pub mod serving;
pub mod sizing;
pub mod stats;
pub mod trace;

pub use caching::{CachingAllocator, PressureHandler, PressureHandlerId};
pub use config::{AllocatorConfig, LargeBlocks, MemoryLimit, ALLOC_CONF_VAR, POISON_PATTERN};
pub use history::HistoryEvent;
pub use replay::{replay, ReplayReport};
pub use serving::{serving_trace, ServingShape};
pub use sizing::{round_size, PoolKind};
pub use stats::{AllocatorStats, BlockInfo, SegmentInfo, Snapshot, Stat};
pub use trace::{transformer_trace, TraceOp, TransformerShape};
