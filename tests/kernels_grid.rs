//! The CUDA kernels themselves (`kernels/vramswap_kernels.cu`, unchanged), run on host threads
//! by `kernels/host_grid.cpp` (one host thread per CUDA thread, warps in lock step for the
//! shuffles), against the Rust implementations: grid-stride loops with more and fewer threads
//! than work items, the aligned fast paths and the byte paths, tails, the block reduction with
//! one and several warps, and the atomicAdd across blocks.
//!
//! Needs a C++20 compiler (`c++`, or `CXX`).

mod kernels_support;

use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use vramswap_sim::kernels::{self as host, CastType};

type ChecksumFn = unsafe extern "C" fn(*const u8, u64, u32, u32) -> u64;
type FillFn = unsafe extern "C" fn(*mut u8, u64, u32, u32, u32);
type CastFn = unsafe extern "C" fn(*const u8, u32, *mut u8, u32, u64, u32, u32);

struct Grid {
    _lib: libloading::Library,
    checksum: ChecksumFn,
    fill: FillFn,
    cast: CastFn,
}

fn grid() -> &'static Grid {
    static GRID: OnceLock<Grid> = OnceLock::new();
    GRID.get_or_init(|| {
        let lib = kernels_support::load("host_grid.cpp", true);
        // SAFETY: the symbols are defined in host_grid.cpp with exactly these signatures; the
        // library stays loaded in `_lib` for as long as the pointers are used.
        unsafe {
            Grid {
                checksum: *lib
                    .get::<ChecksumFn>(b"vs_grid_checksum\0")
                    .expect("symbol"),
                fill: *lib.get::<FillFn>(b"vs_grid_fill_u32\0").expect("symbol"),
                cast: *lib.get::<CastFn>(b"vs_grid_cast\0").expect("symbol"),
                _lib: lib,
            }
        }
    })
}

/// Launch shapes: (blocks, threads per block); threads a multiple of 32 as the kernels require.
const SHAPES: [(u32, u32); 4] = [(1, 32), (3, 64), (2, 256), (5, 96)];

/// A buffer of `len` random bytes starting `misalign` bytes past an 8-byte boundary, with
/// `guard` bytes of 0xA5 after it; returns the buffer and the start of the range.
fn buffer(len: usize, misalign: usize, seed: u64) -> (Vec<u8>, usize) {
    let mut v = vec![0xA5u8; len + misalign + 8 + 16];
    let start = v.as_ptr().align_offset(8) + misalign;
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v[start..start + len]);
    (v, start)
}

#[test]
fn checksum_kernels_match_host_for_every_shape_alignment_and_tail() {
    let g = grid();
    for (i, len) in [0usize, 1, 7, 8, 9, 64, 65, 4099, 100_003]
        .into_iter()
        .enumerate()
    {
        for misalign in [0usize, 5] {
            let (buf, start) = buffer(len, misalign, 40 + i as u64);
            let data = &buf[start..start + len];
            let want = host::checksum(data);
            for (blocks, threads) in SHAPES {
                // SAFETY: the kernel reads exactly `len` bytes from the pointer.
                let got = unsafe { (g.checksum)(data.as_ptr(), len as u64, blocks, threads) };
                assert_eq!(
                    got, want,
                    "checksum of {len} bytes (misaligned by {misalign}) on {blocks}x{threads}"
                );
            }
        }
    }
}

#[test]
fn fill_kernel_matches_host_and_stays_inside_the_range() {
    let g = grid();
    for len in [0usize, 1, 3, 4, 5, 31, 1001, 4096] {
        for misalign in [0usize, 1, 2, 3] {
            for (blocks, threads) in [(1u32, 32u32), (3, 64)] {
                let (mut buf, start) = buffer(len, misalign, 7);
                let mut want = buf.clone();
                host::fill_u32(&mut want[start..start + len], 0xDEAD_BEEF);
                // SAFETY: the kernel writes exactly `len` bytes at the pointer.
                unsafe {
                    (g.fill)(
                        buf[start..].as_mut_ptr(),
                        len as u64,
                        0xDEAD_BEEF,
                        blocks,
                        threads,
                    )
                };
                assert!(
                    buf == want,
                    "fill of {len} bytes (misaligned by {misalign}) on {blocks}x{threads}"
                );
            }
        }
    }
}

fn cast_input(from: CastType, count: usize) -> Vec<u8> {
    let specials: [f32; 9] = [
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        1e-40,
        1.000_976_6,
        65520.0,
        f32::MAX,
    ];
    let mut src32 = vec![0u8; count * 4];
    SmallRng::seed_from_u64(3).fill_bytes(&mut src32);
    for (i, v) in specials.iter().enumerate() {
        src32[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mut input = vec![0u8; count * from.size()];
    host::cast(&src32, CastType::F32, &mut input, from, count);
    input
}

#[test]
fn cast_kernel_matches_host_for_every_pair_aligned_and_not() {
    let g = grid();
    let types = [CastType::F32, CastType::F16, CastType::BF16];
    let count = 777usize;
    for from in types {
        let input = cast_input(from, count);
        for to in types {
            for (src_mis, dst_mis) in [(0usize, 0usize), (1, 0), (0, 1), (3, 2)] {
                let (mut src_buf, s) = buffer(input.len(), src_mis, 1);
                src_buf[s..s + input.len()].copy_from_slice(&input);
                let out_len = count * to.size();
                let (mut dst_buf, d) = buffer(out_len, dst_mis, 2);
                let mut want = dst_buf.clone();
                host::cast(&input, from, &mut want[d..d + out_len], to, count);
                // SAFETY: the kernel reads `count` elements of `from` at the source and writes
                // `count` elements of `to` at the destination; both buffers hold them.
                unsafe {
                    (g.cast)(
                        src_buf[s..].as_ptr(),
                        from.code(),
                        dst_buf[d..].as_mut_ptr(),
                        to.code(),
                        count as u64,
                        2,
                        64,
                    )
                };
                assert!(
                    dst_buf == want,
                    "cast {from:?} -> {to:?} (misaligned by {src_mis}/{dst_mis}) differs"
                );
            }
        }
    }
}

#[test]
fn cast_kernel_with_an_unknown_type_code_writes_nothing() {
    let g = grid();
    let src = [0x11u8; 16];
    let mut dst = [0x22u8; 16];
    // SAFETY: for an unknown code the kernel returns before touching memory; both buffers
    // hold 4 elements of any known type anyway.
    unsafe { (g.cast)(src.as_ptr(), 9, dst.as_mut_ptr(), 0, 4, 1, 32) };
    assert_eq!(dst, [0x22u8; 16]);
}
