//! Fuzzes the safetensors header parser: any bytes, as a whole file. It must never panic, and
//! whatever it accepts must lie inside the file without overlaps.
//!
//! Run with `cargo +nightly fuzz run header` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = vramswap::load::parse_header(data) {
        assert_eq!(h.data_start + h.data_len, data.len() as u64);
        let mut spans: Vec<(u64, u64)> = h.tensors.iter().map(|t| (t.begin, t.end)).collect();
        spans.sort();
        for t in &spans {
            assert!(t.0 <= t.1 && t.1 <= h.data_len);
        }
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0 || w[0].0 == w[0].1 || w[1].0 == w[1].1);
        }
    }
});
