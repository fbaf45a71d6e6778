//! Measurements users run: host/device bandwidth tables (`vramswap bench`).
//!
//! Every figure is reported beside a ceiling measured in the same run, since absolute numbers
//! on shared machines are noisy and ratios are what settings are chosen by.

pub mod bandwidth;
pub mod swap;
pub mod vmm;
