/*
 * vramswap_kernels.cuh: the arithmetic of vramswap's device kernels, one function per
 * element or word, shared by the CUDA kernels (vramswap_kernels.cu) and the host check
 * (host_shim.c, compiled with the system C compiler by tests/kernels_host.rs).
 *
 * Every function here must give, bit for bit, what `vramswap_sim::kernels` (Rust) gives:
 *   - checksum: wrapping sum over the range's little-endian 64-bit words, the last one
 *     zero-padded, of mix64(word ^ index * GOLDEN); finish: mix64(sum ^ len * GOLDEN);
 *   - fill: byte i of the range is byte (i % 4) of the little-endian pattern;
 *   - casts between f32, f16 and bf16: those of the `half` crate 2.x (round to nearest,
 *     ties to even; NaNs quieted, payload truncated; overflow to infinity), written with
 *     integer operations only so that host and device cannot differ (no intrinsics, no
 *     floating-point arithmetic, no flush-to-zero).
 *
 * The header depends on nothing: no <stdint.h> (NVRTC has no system headers), only the C
 * integer types, whose widths are checked below. It compiles as C99, C++ and CUDA C++.
 */
#ifndef VRAMSWAP_KERNELS_CUH
#define VRAMSWAP_KERNELS_CUH

#ifdef __CUDACC__
#define VS_HD static __host__ __device__ __forceinline__
#else
#define VS_HD static inline
#endif

typedef unsigned long long vs_u64;
typedef unsigned int vs_u32;
typedef unsigned short vs_u16;
typedef unsigned char vs_u8;

/* Compile-time width checks (an array of negative size fails to compile). */
typedef char vs_check_u64[(sizeof(vs_u64) == 8) ? 1 : -1];
typedef char vs_check_u32[(sizeof(vs_u32) == 4) ? 1 : -1];
typedef char vs_check_u16[(sizeof(vs_u16) == 2) ? 1 : -1];

/* Element type codes of the cast kernel (vramswap_sim::CastType::code). */
#define VS_TYPE_F32 0u
#define VS_TYPE_F16 1u
#define VS_TYPE_BF16 2u

#define VS_GOLDEN 0x9E3779B97F4A7C15ull

/* ---------------------------------------------------------------- checksum */

/* The splitmix64 finaliser: a bijective 64-bit mix. */
VS_HD vs_u64 vs_mix64(vs_u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Number of 64-bit words in a range of `len` bytes (the last one possibly partial). */
VS_HD vs_u64 vs_checksum_words(vs_u64 len) {
    return len / 8u + ((len % 8u) != 0u ? 1u : 0u);
}

/* Little-endian 64-bit word `index` of the `len` bytes at `src`, zero-padded past `len`.
 * Byte loads only: `src` needs no alignment. `index` must be below vs_checksum_words(len). */
VS_HD vs_u64 vs_load_word_le(const vs_u8 *src, vs_u64 len, vs_u64 index) {
    vs_u64 w = 0;
    vs_u64 base = index * 8u;
    for (unsigned k = 0; k < 8u; ++k) {
        if (base + k < len) {
            w |= (vs_u64)src[base + k] << (8u * k);
        }
    }
    return w;
}

/* The checksum's term for word `word` at word index `index`. */
VS_HD vs_u64 vs_checksum_term(vs_u64 word, vs_u64 index) {
    return vs_mix64(word ^ (index * VS_GOLDEN));
}

/* Turns the (wrapping) sum of all terms of a `len`-byte range into its checksum. */
VS_HD vs_u64 vs_checksum_finish(vs_u64 sum, vs_u64 len) {
    return vs_mix64(sum ^ (len * VS_GOLDEN));
}

/* Sum of the terms of the `len` bytes at `src`, whose first word is word `first_word` of the
 * whole range (vramswap_sim::kernels::checksum_partial). Sequential; the kernel splits it. */
VS_HD vs_u64 vs_checksum_partial(const vs_u8 *src, vs_u64 len, vs_u64 first_word) {
    vs_u64 sum = 0;
    vs_u64 words = vs_checksum_words(len);
    for (vs_u64 i = 0; i < words; ++i) {
        sum += vs_checksum_term(vs_load_word_le(src, len, i), first_word + i);
    }
    return sum;
}

/* ---------------------------------------------------------------- fill */

/* Byte `index` of a range filled with the little-endian bytes of `pattern`, repeated. */
VS_HD vs_u8 vs_fill_byte(vs_u32 pattern, vs_u64 index) {
    return (vs_u8)((pattern >> (8u * (unsigned)(index % 4u))) & 0xFFu);
}

/* ---------------------------------------------------------------- casts */

/* Leading zeros of a 16-bit value (16 for 0). */
VS_HD vs_u32 vs_clz16(vs_u16 x) {
    vs_u32 n = 0;
    vs_u32 v = x;
    while (n < 16u && (v & 0x8000u) == 0u) {
        v <<= 1;
        ++n;
    }
    return n;
}

/* half::f16::from_f32(f32::from_bits(x)).to_bits() */
VS_HD vs_u16 vs_f32_to_f16_bits(vs_u32 x) {
    vs_u32 sign = x & 0x80000000u;
    vs_u32 exp = x & 0x7F800000u;
    vs_u32 man = x & 0x007FFFFFu;
    vs_u32 half_sign = sign >> 16;
    int half_exp;

    /* Infinity or NaN: a NaN keeps its top mantissa bits and is quieted. */
    if (exp == 0x7F800000u) {
        vs_u32 nan_bit = man == 0u ? 0u : 0x0200u;
        return (vs_u16)(half_sign | 0x7C00u | nan_bit | (man >> 13));
    }
    half_exp = (int)(exp >> 23) - 127 + 15;
    /* Overflow: infinity. */
    if (half_exp >= 0x1F) {
        return (vs_u16)(half_sign | 0x7C00u);
    }
    /* Underflow: a subnormal or zero, rounded to nearest even. */
    if (half_exp <= 0) {
        vs_u32 half_man, round_bit;
        if (14 - half_exp > 24) {
            return (vs_u16)half_sign;
        }
        man |= 0x00800000u;
        half_man = man >> (14 - half_exp);
        round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) {
            half_man += 1u;
        }
        return (vs_u16)(half_sign | half_man);
    }
    {
        /* Normal: a carry out of the mantissa correctly bumps the exponent (to infinity at
         * the top). */
        vs_u32 bits = half_sign | ((vs_u32)half_exp << 10) | (man >> 13);
        vs_u32 round_bit = 0x00001000u;
        if ((man & round_bit) != 0u && (man & (3u * round_bit - 1u)) != 0u) {
            bits += 1u;
        }
        return (vs_u16)bits;
    }
}

/* half::f16::from_bits(h).to_f32().to_bits() */
VS_HD vs_u32 vs_f16_to_f32_bits(vs_u16 h) {
    vs_u32 half_sign = (vs_u32)(h & 0x8000u);
    vs_u32 half_exp = (vs_u32)(h & 0x7C00u);
    vs_u32 half_man = (vs_u32)(h & 0x03FFu);
    vs_u32 sign = half_sign << 16;

    if ((h & 0x7FFFu) == 0u) {
        return (vs_u32)h << 16;
    }
    if (half_exp == 0x7C00u) {
        if (half_man == 0u) {
            return sign | 0x7F800000u;
        }
        return sign | 0x7FC00000u | (half_man << 13);
    }
    if (half_exp == 0u) {
        /* Subnormal: normalise. */
        vs_u32 e = vs_clz16((vs_u16)half_man) - 6u;
        vs_u32 exp = (127u - 15u - e) << 23;
        vs_u32 man = (half_man << (14u + e)) & 0x007FFFFFu;
        return sign | exp | man;
    }
    return sign | (((half_exp >> 10) - 15u + 127u) << 23) | (half_man << 13);
}

/* half::bf16::from_f32(f32::from_bits(x)).to_bits() */
VS_HD vs_u16 vs_f32_to_bf16_bits(vs_u32 x) {
    vs_u32 round_bit = 0x00008000u;
    /* NaN: keep the top mantissa bits and set the quiet bit. */
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        return (vs_u16)((x >> 16) | 0x0040u);
    }
    /* Round to nearest even; a carry bumps the exponent (to infinity at the top). */
    if ((x & round_bit) != 0u && (x & (3u * round_bit - 1u)) != 0u) {
        return (vs_u16)((x >> 16) + 1u);
    }
    return (vs_u16)(x >> 16);
}

/* half::bf16::from_bits(h).to_f32().to_bits() */
VS_HD vs_u32 vs_bf16_to_f32_bits(vs_u16 h) {
    if ((h & 0x7FFFu) > 0x7F80u) {
        return ((vs_u32)h | 0x0040u) << 16;
    }
    return (vs_u32)h << 16;
}

/* Size in bytes of an element of type `code`, or 0 for an unknown code. */
VS_HD vs_u32 vs_type_size(vs_u32 code) {
    return code == VS_TYPE_F32 ? 4u : (code == VS_TYPE_F16 || code == VS_TYPE_BF16) ? 2u : 0u;
}

/* An element of type `from` (raw bits, zero-extended) as f32 bits. */
VS_HD vs_u32 vs_to_f32_bits(vs_u32 bits, vs_u32 from) {
    if (from == VS_TYPE_F16) {
        return vs_f16_to_f32_bits((vs_u16)bits);
    }
    if (from == VS_TYPE_BF16) {
        return vs_bf16_to_f32_bits((vs_u16)bits);
    }
    return bits;
}

/* Converts one element's raw bits (zero-extended) from type `from` to type `to`, as
 * vramswap_sim::kernels::cast does: equal types are copied unchanged; f16 <-> bf16 goes
 * through f32. Unknown codes give 0 (the launcher rejects them before a launch). */
VS_HD vs_u32 vs_cast_bits(vs_u32 bits, vs_u32 from, vs_u32 to) {
    vs_u32 f;
    if (vs_type_size(from) == 0u || vs_type_size(to) == 0u) {
        return 0u;
    }
    if (from == to) {
        return bits;
    }
    f = vs_to_f32_bits(bits, from);
    if (to == VS_TYPE_F16) {
        return vs_f32_to_f16_bits(f);
    }
    if (to == VS_TYPE_BF16) {
        return vs_f32_to_bf16_bits(f);
    }
    return f;
}

/* Reads little-endian element `i` of type `code` from `src` (byte loads: any alignment). */
VS_HD vs_u32 vs_load_elem_le(const vs_u8 *src, vs_u32 code, vs_u64 i) {
    vs_u32 size = vs_type_size(code);
    vs_u32 v = 0;
    for (vs_u32 k = 0; k < size; ++k) {
        v |= (vs_u32)src[i * size + k] << (8u * k);
    }
    return v;
}

/* Writes little-endian element `i` of type `code` to `dst` (byte stores: any alignment). */
VS_HD void vs_store_elem_le(vs_u8 *dst, vs_u32 code, vs_u64 i, vs_u32 v) {
    vs_u32 size = vs_type_size(code);
    for (vs_u32 k = 0; k < size; ++k) {
        dst[i * size + k] = (vs_u8)((v >> (8u * k)) & 0xFFu);
    }
}

#endif /* VRAMSWAP_KERNELS_CUH */
