/*
 * host_shim.c: the kernels' arithmetic (vramswap_kernels.cuh) compiled for the host, with C
 * linkage, so that tests/kernels_host.rs can compare it bit for bit with the Rust
 * implementations in vramswap_sim::kernels and with the `half` crate. Each loop here does
 * what one kernel does over the whole range, element by element through the header's
 * functions. Not part of the library.
 */
#include "vramswap_kernels.cuh"

vs_u64 vs_shim_mix64(vs_u64 z) { return vs_mix64(z); }

vs_u64 vs_shim_checksum_partial(const vs_u8 *src, vs_u64 len, vs_u64 first_word) {
    return vs_checksum_partial(src, len, first_word);
}

vs_u64 vs_shim_checksum_finish(vs_u64 sum, vs_u64 len) { return vs_checksum_finish(sum, len); }

/* What vramswap_checksum_partial + vramswap_checksum_finish compute with `threads` threads in
 * all: each thread sums the terms of words thread, thread + threads, ...; the per-thread sums
 * are then added (the block reduction and atomicAdd, in some order). */
vs_u64 vs_shim_checksum_grid(const vs_u8 *src, vs_u64 len, vs_u64 threads) {
    vs_u64 words = vs_checksum_words(len);
    vs_u64 total = 0;
    for (vs_u64 t = 0; t < threads; ++t) {
        vs_u64 acc = 0;
        for (vs_u64 i = t; i < words; i += threads) {
            acc += vs_checksum_term(vs_load_word_le(src, len, i), i);
        }
        total += acc;
    }
    return vs_checksum_finish(total, len);
}

void vs_shim_fill_u32(vs_u8 *dst, vs_u64 len, vs_u32 pattern) {
    for (vs_u64 i = 0; i < len; ++i) {
        dst[i] = vs_fill_byte(pattern, i);
    }
}

/* The cast kernel's byte-wise path; returns 0 on an unknown type code, 1 otherwise. */
int vs_shim_cast(const vs_u8 *src, vs_u32 from, vs_u8 *dst, vs_u32 to, vs_u64 count) {
    if (vs_type_size(from) == 0u || vs_type_size(to) == 0u) {
        return 0;
    }
    for (vs_u64 i = 0; i < count; ++i) {
        vs_store_elem_le(dst, to, i, vs_cast_bits(vs_load_elem_le(src, from, i), from, to));
    }
    return 1;
}

vs_u16 vs_shim_f32_to_f16(vs_u32 x) { return vs_f32_to_f16_bits(x); }
vs_u16 vs_shim_f32_to_bf16(vs_u32 x) { return vs_f32_to_bf16_bits(x); }
vs_u32 vs_shim_f16_to_f32(vs_u16 h) { return vs_f16_to_f32_bits(h); }
vs_u32 vs_shim_bf16_to_f32(vs_u16 h) { return vs_bf16_to_f32_bits(h); }
