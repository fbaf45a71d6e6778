//! The kernels' arithmetic, checked on the host: `kernels/vramswap_kernels.cuh` (what the CUDA
//! kernels run) is compiled for the host with the system C compiler (through `cc`) together
//! with `kernels/host_shim.c`, loaded, and compared bit for bit with the Rust implementations
//! (`vramswap_sim::kernels`, which the `sim` backend and the emulated driver run) and with the
//! `half` crate: random data plus every special case, and exhaustive sweeps of the 16-bit
//! formats.
//!
//! Needs a C compiler (`cc`, or `CC`); every Rust build on Linux has one for linking.

mod kernels_support;

use std::sync::OnceLock;

use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use vramswap_sim::kernels::{self as host, CastType};

/// The header's functions, through the shim's C ABI.
struct Shim {
    _lib: libloading::Library,
    mix64: unsafe extern "C" fn(u64) -> u64,
    checksum_partial: unsafe extern "C" fn(*const u8, u64, u64) -> u64,
    checksum_finish: unsafe extern "C" fn(u64, u64) -> u64,
    checksum_grid: unsafe extern "C" fn(*const u8, u64, u64) -> u64,
    fill_u32: unsafe extern "C" fn(*mut u8, u64, u32),
    cast: unsafe extern "C" fn(*const u8, u32, *mut u8, u32, u64) -> i32,
    f32_to_f16: unsafe extern "C" fn(u32) -> u16,
    f32_to_bf16: unsafe extern "C" fn(u32) -> u16,
    f16_to_f32: unsafe extern "C" fn(u16) -> u32,
    bf16_to_f32: unsafe extern "C" fn(u16) -> u32,
}

impl Shim {
    fn checksum_partial(&self, bytes: &[u8], first_word: u64) -> u64 {
        // SAFETY: the shim reads exactly `bytes.len()` bytes from the pointer.
        unsafe { (self.checksum_partial)(bytes.as_ptr(), bytes.len() as u64, first_word) }
    }

    fn checksum_grid(&self, bytes: &[u8], threads: u64) -> u64 {
        // SAFETY: as above.
        unsafe { (self.checksum_grid)(bytes.as_ptr(), bytes.len() as u64, threads) }
    }

    fn fill_u32(&self, dst: &mut [u8], pattern: u32) {
        // SAFETY: the shim writes exactly `dst.len()` bytes.
        unsafe { (self.fill_u32)(dst.as_mut_ptr(), dst.len() as u64, pattern) }
    }

    fn cast(&self, src: &[u8], from: u32, dst: &mut [u8], to: u32, count: usize) -> i32 {
        if let (Some(f), Some(t)) = (CastType::from_code(from), CastType::from_code(to)) {
            assert!(src.len() >= count * f.size() && dst.len() >= count * t.size());
        }
        // SAFETY: for known codes the lengths were checked above; for an unknown code the shim
        // touches no memory.
        unsafe { (self.cast)(src.as_ptr(), from, dst.as_mut_ptr(), to, count as u64) }
    }

    fn f32_to_f16(&self, x: u32) -> u16 {
        // SAFETY: pure function of its argument.
        unsafe { (self.f32_to_f16)(x) }
    }

    fn f32_to_bf16(&self, x: u32) -> u16 {
        // SAFETY: pure function of its argument.
        unsafe { (self.f32_to_bf16)(x) }
    }
}

fn shim() -> &'static Shim {
    static SHIM: OnceLock<Shim> = OnceLock::new();
    SHIM.get_or_init(|| {
        let lib = kernels_support::load("host_shim.c", false);
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is defined in host_shim.c with exactly the signature of
                // the field it is stored in; the library stays loaded in `_lib`.
                *unsafe { lib.get($name) }.expect(concat!(
                    "symbol ",
                    stringify!($name),
                    " in the shim"
                ))
            };
        }
        Shim {
            mix64: sym!(b"vs_shim_mix64\0"),
            checksum_partial: sym!(b"vs_shim_checksum_partial\0"),
            checksum_finish: sym!(b"vs_shim_checksum_finish\0"),
            checksum_grid: sym!(b"vs_shim_checksum_grid\0"),
            fill_u32: sym!(b"vs_shim_fill_u32\0"),
            cast: sym!(b"vs_shim_cast\0"),
            f32_to_f16: sym!(b"vs_shim_f32_to_f16\0"),
            f32_to_bf16: sym!(b"vs_shim_f32_to_bf16\0"),
            f16_to_f32: sym!(b"vs_shim_f16_to_f32\0"),
            bf16_to_f32: sym!(b"vs_shim_bf16_to_f32\0"),
            _lib: lib,
        }
    })
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    SmallRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// f32 bit patterns for every hard case of the 32 -> 16 conversions.
fn special_f32_bits() -> Vec<u32> {
    let positive = [
        // NaNs: quiet, signalling, payload in the kept and in the dropped bits, all ones.
        0x7FC0_0000,
        0x7FC0_0001,
        0x7F80_0001,
        0x7F80_1FFF,
        0x7F80_2000,
        0x7F81_0000,
        0x7FA0_0000,
        0x7FBF_FFFF,
        0x7FFF_FFFF,
        0x7F80_8000,
        // Infinity, zero, f32 subnormals, smallest normal, largest finite.
        0x7F80_0000,
        0x0000_0000,
        0x0000_0001,
        0x0000_8000,
        0x007F_FFFF,
        0x0080_0000,
        0x7F7F_FFFF,
        // f16: largest finite 65504, just below and at the tie to infinity (65520), above.
        0x477F_E000,
        0x477F_EFFF,
        0x477F_F000,
        0x477F_F001,
        0x4780_0000,
        // f16 subnormals: 2^-24 (smallest), 2^-25 (tie -> 0), just above, 1.5 * 2^-24 (tie
        // -> even 2^-23), 2^-14 (smallest normal), the largest subnormal and its round-up.
        0x3380_0000,
        0x3300_0000,
        0x3300_0001,
        0x33C0_0000,
        0x3420_0000,
        0x3880_0000,
        0x387F_C000,
        0x387F_E000,
        0x387F_F000,
        0x2F80_0000,
        // f16 ties in normals: 1 + 2^-11 (to even: 1), 1 + 3 * 2^-11 (to even: up), and just
        // off the tie on each side.
        0x3F80_1000,
        0x3F80_3000,
        0x3F80_0FFF,
        0x3F80_1001,
        // bf16 ties: even (down), odd (up), just off, and the tie that rounds to infinity.
        0x3F80_8000,
        0x3F81_8000,
        0x3F80_7FFF,
        0x3F80_8001,
        0x7F7F_8000,
        0x7F7F_7FFF,
        // 1.0, the conformance suite's 1.0009766 and 65520.0.
        0x3F80_0000,
        1.000_976_6f32.to_bits(),
        65520.0f32.to_bits(),
        1e-40f32.to_bits(),
    ];
    positive
        .iter()
        .flat_map(|&b: &u32| [b, b | 0x8000_0000])
        .collect()
}

/// Every sign and exponent with mantissas at and around each possible rounding position.
fn structured_f32_bits() -> Vec<u32> {
    let mut v = Vec::new();
    for sign_exp in 0u32..512 {
        let top = sign_exp << 23;
        v.push(top);
        v.push(top | 0x007F_FFFF);
        for k in 0..23 {
            let bit = 1u32 << k;
            for m in [bit, bit - 1, bit + 1, bit | (bit << 1), (bit << 1) - 1] {
                v.push(top | (m & 0x007F_FFFF));
            }
        }
    }
    v
}

fn assert_f32_to_16(bits: impl IntoIterator<Item = u32>) -> usize {
    let s = shim();
    let mut n = 0;
    for x in bits {
        let v = f32::from_bits(x);
        let (want16, want_b) = (f16::from_f32(v).to_bits(), bf16::from_f32(v).to_bits());
        let (got16, got_b) = (s.f32_to_f16(x), s.f32_to_bf16(x));
        assert_eq!(
            got16, want16,
            "f32 {x:#010x} -> f16: header {got16:#06x}, half {want16:#06x}"
        );
        assert_eq!(
            got_b, want_b,
            "f32 {x:#010x} -> bf16: header {got_b:#06x}, half {want_b:#06x}"
        );
        n += 1;
    }
    n
}

#[test]
fn f16_to_f32_matches_half_for_all_65536_patterns() {
    let s = shim();
    for h in 0..=u16::MAX {
        // SAFETY: pure function of its argument.
        let got = unsafe { (s.f16_to_f32)(h) };
        let want = f16::from_bits(h).to_f32().to_bits();
        assert_eq!(
            got, want,
            "f16 {h:#06x} -> f32: header {got:#010x}, half {want:#010x}"
        );
    }
}

#[test]
fn bf16_to_f32_matches_half_for_all_65536_patterns() {
    let s = shim();
    for h in 0..=u16::MAX {
        // SAFETY: pure function of its argument.
        let got = unsafe { (s.bf16_to_f32)(h) };
        let want = bf16::from_bits(h).to_f32().to_bits();
        assert_eq!(
            got, want,
            "bf16 {h:#06x} -> f32: header {got:#010x}, half {want:#010x}"
        );
    }
}

#[test]
fn f32_to_16_bit_formats_match_half_on_special_values() {
    assert_eq!(
        assert_f32_to_16(special_f32_bits()),
        special_f32_bits().len()
    );
}

#[test]
fn f32_to_16_bit_formats_match_half_at_every_rounding_position() {
    let bits = structured_f32_bits();
    assert_eq!(assert_f32_to_16(bits.iter().copied()), bits.len());
}

#[test]
fn f32_to_16_bit_formats_match_half_on_random_patterns() {
    let mut rng = SmallRng::seed_from_u64(0x05EE_DF16);
    let n = 1 << 21;
    assert_eq!(assert_f32_to_16((0..n).map(|_| rng.random::<u32>())), n);
}

#[test]
fn cast_matches_host_for_every_type_pair_including_unaligned_ranges() {
    let s = shim();
    let types = [CastType::F32, CastType::F16, CastType::BF16];
    let mut specials: Vec<u8> = special_f32_bits()
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
    specials.extend(random_bytes(4 * 3001, 7));
    let n32 = specials.len() / 4;
    for from in types {
        // Inputs of type `from`: the f32 specials cast on the host, then raw random bits too
        // (every 16-bit NaN payload shows up there).
        let mut input = vec![0u8; n32 * from.size()];
        host::cast(&specials, CastType::F32, &mut input, from, n32);
        input.extend(random_bytes(2 * 4096, 11 + from.code() as u64));
        let count = input.len() / from.size();
        for to in types {
            for offset in [0usize, 1, 3] {
                let src = {
                    let mut v = vec![0u8; offset];
                    v.extend_from_slice(&input);
                    v
                };
                let mut got = vec![0xA5u8; count * to.size() + offset];
                let ok = s.cast(
                    &src[offset..],
                    from.code(),
                    &mut got[offset..],
                    to.code(),
                    count,
                );
                assert_eq!(ok, 1);
                let mut want = vec![0xA5u8; count * to.size() + offset];
                host::cast(&src[offset..], from, &mut want[offset..], to, count);
                assert!(
                    got == want,
                    "cast {from:?} -> {to:?} (offset {offset}) differs from the host"
                );
            }
        }
    }
}

#[test]
fn cast_rejects_unknown_type_codes_without_touching_memory() {
    let s = shim();
    let src = [0x11u8; 8];
    let mut dst = [0x22u8; 8];
    assert_eq!(s.cast(&src, 3, &mut dst, 0, 2), 0);
    assert_eq!(s.cast(&src, 0, &mut dst, 7, 2), 0);
    assert_eq!(dst, [0x22u8; 8]);
}

#[test]
fn mix64_matches_host() {
    let s = shim();
    let mut rng = SmallRng::seed_from_u64(64);
    for z in [0u64, 1, u64::MAX, 0x9E37_79B9_7F4A_7C15]
        .into_iter()
        .chain((0..10_000).map(|_| rng.random::<u64>()))
    {
        // SAFETY: pure function of its argument.
        assert_eq!(unsafe { (s.mix64)(z) }, host::mix64(z), "mix64({z:#x})");
    }
}

#[test]
fn checksum_matches_host_for_every_short_length_and_random_lengths() {
    let s = shim();
    let mut rng = SmallRng::seed_from_u64(5);
    let lengths: Vec<usize> = (0..=64)
        .chain((0..40).map(|_| rng.random_range(65..200_000)))
        .collect();
    for (i, &len) in lengths.iter().enumerate() {
        let data = random_bytes(len, 1000 + i as u64);
        let first_word = if i % 3 == 0 { 0 } else { rng.random::<u64>() };
        let got = s.checksum_partial(&data, first_word);
        let want = host::checksum_partial(&data, first_word);
        assert_eq!(
            got, want,
            "partial checksum of {len} bytes from word {first_word}"
        );
        // SAFETY: pure function of its arguments.
        let fin = unsafe { (s.checksum_finish)(got, len as u64) };
        assert_eq!(fin, host::checksum_finish(want, len as u64));
        assert_eq!(
            host::checksum_finish(s.checksum_partial(&data, 0), len as u64),
            host::checksum(&data),
            "checksum of {len} bytes"
        );
    }
}

#[test]
fn checksum_split_over_grid_threads_matches_host() {
    let s = shim();
    for (len, seed) in [
        (0usize, 1u64),
        (1, 2),
        (7, 3),
        (8, 4),
        (4096, 5),
        (1_000_003, 6),
    ] {
        let data = random_bytes(len, seed);
        let want = host::checksum(&data);
        for threads in [1u64, 3, 32, 256, 1000, 256 * 4096] {
            assert_eq!(
                s.checksum_grid(&data, threads),
                want,
                "checksum of {len} bytes over {threads} threads"
            );
        }
    }
}

#[test]
fn checksum_detects_a_flipped_bit() {
    let s = shim();
    let mut data = random_bytes(1000, 9);
    let before = s.checksum_grid(&data, 256);
    data[517] ^= 0x10;
    assert_ne!(s.checksum_grid(&data, 256), before);
    assert_eq!(s.checksum_grid(&data, 256), host::checksum(&data));
}

#[test]
fn fill_matches_host_for_short_and_odd_lengths() {
    let s = shim();
    let mut rng = SmallRng::seed_from_u64(4);
    for len in (0..=33).chain([4095, 4096, 10_001]) {
        let pattern = if len % 2 == 0 {
            0xDEAD_BEEF
        } else {
            rng.random()
        };
        let mut got = vec![0u8; len];
        s.fill_u32(&mut got, pattern);
        let mut want = vec![0xFFu8; len];
        host::fill_u32(&mut want, pattern);
        assert_eq!(got, want, "fill of {len} bytes with {pattern:#010x}");
    }
}
