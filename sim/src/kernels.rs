//! Host implementations of the device kernels in `kernels/`.
//!
//! The `sim` backend runs these on its stream workers; the emulated driver runs them for
//! `cuLaunchKernel`; the `.cu` kernels compute the same thing on a GPU, and a test pins the C
//! header they share to these functions bit for bit.

use half::{bf16, f16};

/// Element type of a cast kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CastType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl CastType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            CastType::F32 => 4,
            CastType::F16 | CastType::BF16 => 2,
        }
    }

    /// Code used in kernel parameters (0 = f32, 1 = f16, 2 = bf16).
    pub fn code(self) -> u32 {
        match self {
            CastType::F32 => 0,
            CastType::F16 => 1,
            CastType::BF16 => 2,
        }
    }

    /// Inverse of [`CastType::code`].
    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(CastType::F32),
            1 => Some(CastType::F16),
            2 => Some(CastType::BF16),
            _ => None,
        }
    }
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 finaliser: a bijective 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Partial checksum of `bytes`, which start at 64-bit word `first_word` of the whole range.
///
/// The checksum is a wrapping sum over the range's little-endian 64-bit words (the last one
/// zero-padded) of `mix64(word ^ index * GOLDEN)`. A sum is order-independent, so a GPU
/// reduces it with atomics and threads split it at any 8-byte boundary; partial sums add up
/// (wrapping) to the sum of the whole, which [`checksum_finish`] turns into the checksum.
pub fn checksum_partial(bytes: &[u8], first_word: u64) -> u64 {
    let mut sum = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    let mut index = first_word;
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("chunks_exact gives 8 bytes"));
        sum = sum.wrapping_add(mix64(w ^ index.wrapping_mul(GOLDEN)));
        index += 1;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        let w = u64::from_le_bytes(last);
        sum = sum.wrapping_add(mix64(w ^ index.wrapping_mul(GOLDEN)));
    }
    sum
}

/// Turns the sum of partial checksums over a range of `len` bytes into its checksum.
#[inline]
pub fn checksum_finish(sum: u64, len: u64) -> u64 {
    mix64(sum ^ len.wrapping_mul(GOLDEN))
}

/// Checksum of a byte range (see [`checksum_partial`]).
pub fn checksum(bytes: &[u8]) -> u64 {
    checksum_finish(checksum_partial(bytes, 0), bytes.len() as u64)
}

/// Fills `dst` with the little-endian bytes of `pattern`, repeated from the start of `dst`.
pub fn fill_u32(dst: &mut [u8], pattern: u32) {
    let p = pattern.to_le_bytes();
    for (i, b) in dst.iter_mut().enumerate() {
        *b = p[i % 4];
    }
}

/// Converts `count` elements from `src` (of type `from`) into `dst` (of type `to`), rounding to
/// nearest-even as `half` does. `src` and `dst` must hold at least `count` elements.
pub fn cast(src: &[u8], from: CastType, dst: &mut [u8], to: CastType, count: usize) {
    for i in 0..count {
        let s = &src[i * from.size()..(i + 1) * from.size()];
        let d = &mut dst[i * to.size()..(i + 1) * to.size()];
        cast_one(s, from, d, to);
    }
}

fn cast_one(s: &[u8], from: CastType, d: &mut [u8], to: CastType) {
    if from == to {
        d.copy_from_slice(s);
        return;
    }
    let bits16 = |s: &[u8]| u16::from_le_bytes([s[0], s[1]]);
    match (from, to) {
        (CastType::F32, CastType::F16) => {
            let v = f32::from_le_bytes(s.try_into().expect("4 bytes"));
            d.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
        }
        (CastType::F32, CastType::BF16) => {
            let v = f32::from_le_bytes(s.try_into().expect("4 bytes"));
            d.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
        }
        (CastType::F16, CastType::F32) => {
            d.copy_from_slice(&f16::from_bits(bits16(s)).to_f32().to_le_bytes());
        }
        (CastType::BF16, CastType::F32) => {
            d.copy_from_slice(&bf16::from_bits(bits16(s)).to_f32().to_le_bytes());
        }
        (CastType::F16, CastType::BF16) => {
            let v = f16::from_bits(bits16(s)).to_f32();
            d.copy_from_slice(&bf16::from_f32(v).to_bits().to_le_bytes());
        }
        (CastType::BF16, CastType::F16) => {
            let v = bf16::from_bits(bits16(s)).to_f32();
            d.copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
        }
        _ => unreachable!("equal types handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_checksums_add_up_to_the_whole() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let whole = checksum(&data);
        let split = 8 * 37;
        let sum = checksum_partial(&data[..split], 0)
            .wrapping_add(checksum_partial(&data[split..], (split / 8) as u64));
        assert_eq!(checksum_finish(sum, data.len() as u64), whole);
    }

    #[test]
    fn checksum_sees_swapped_words_and_length() {
        let a = [1u8, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0];
        let mut b = a;
        b.swap(0, 8);
        assert_ne!(checksum(&a), checksum(&b));
        assert_ne!(checksum(&a[..15]), checksum(&a));
    }

    #[test]
    fn cast_round_trips_f16_values_exactly() {
        let vals = [0.0f32, -1.5, 65504.0, 1e-7, f32::INFINITY];
        let src: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut h = vec![0u8; vals.len() * 2];
        cast(&src, CastType::F32, &mut h, CastType::F16, vals.len());
        let mut back = vec![0u8; vals.len() * 4];
        cast(&h, CastType::F16, &mut back, CastType::F32, vals.len());
        for (i, v) in vals.iter().enumerate() {
            let got = f32::from_le_bytes(back[i * 4..i * 4 + 4].try_into().unwrap());
            assert_eq!(got, f16::from_f32(*v).to_f32());
        }
    }
}
