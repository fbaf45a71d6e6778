/*
 * vramswap_kernels.cu: vramswap's device kernels, thin grid-stride loops over the arithmetic
 * in vramswap_kernels.cuh (which the host check compares with the Rust implementations).
 *
 * The ABI below (names, parameter order and types) is fixed: src/backend/cuda_kernels.rs
 * launches these with exactly these parameters, and the emulated driver (emu/) finds the
 * `.entry` names and checks the `.param` sizes in the PTX. `extern "C"` keeps the names
 * unmangled.
 *
 * Launch shape: any grid, blockDim.x a multiple of 32 and at most 1024 (the launcher uses 256),
 * blockDim.y = blockDim.z = 1. All loops are grid-stride, so any grid size covers the range.
 *
 * Built to PTX by build.rs with nvcc (`-arch=compute_80`), or at run time with NVRTC, which
 * receives this file with the header pasted in place of the #include below.
 */
#include "vramswap_kernels.cuh"

/* Index of this thread in the grid and the grid's thread count, as 64-bit values. */
static __device__ __forceinline__ vs_u64 vs_thread_index(void) {
    return (vs_u64)blockIdx.x * blockDim.x + threadIdx.x;
}

static __device__ __forceinline__ vs_u64 vs_thread_count(void) {
    return (vs_u64)gridDim.x * blockDim.x;
}

/* Adds this thread's `v` into `*sum` once per block: warp shuffles, then one warp over the
 * per-warp sums, then one atomicAdd (wrapping, as the checksum's sum is). */
static __device__ __forceinline__ void vs_block_sum_into(vs_u64 v, vs_u64 *sum) {
    __shared__ vs_u64 warp_sums[32];
    unsigned lane = threadIdx.x & 31u;
    unsigned warp = threadIdx.x >> 5;
    unsigned warps = (blockDim.x + 31u) >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
    }
    if (lane == 0u) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    if (warp == 0u) {
        v = lane < warps ? warp_sums[lane] : 0ull;
        for (int offset = 16; offset > 0; offset >>= 1) {
            v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
        }
        if (lane == 0u) {
            atomicAdd(sum, v);
        }
    }
}

/* Adds the checksum terms of the `len` bytes at `src` into `*sum` (the caller zeroes `*sum`
 * first, then launches vramswap_checksum_finish). `src` may have any alignment. */
extern "C" __global__ void vramswap_checksum_partial(const unsigned char *src,
                                                     unsigned long long len,
                                                     unsigned long long *sum) {
    vs_u64 words = vs_checksum_words(len);
    vs_u64 full_words = len / 8u;
    int aligned = (((vs_u64)src) & 7u) == 0u;
    vs_u64 acc = 0;
    for (vs_u64 i = vs_thread_index(); i < words; i += vs_thread_count()) {
        vs_u64 w;
        if (aligned && i < full_words) {
            w = ((const vs_u64 *)src)[i]; /* the GPU is little-endian */
        } else {
            w = vs_load_word_le(src, len, i);
        }
        acc += vs_checksum_term(w, i);
    }
    vs_block_sum_into(acc, sum);
}

/* Turns the sum in `*sum` into the checksum of a `len`-byte range, in place. One thread. */
extern "C" __global__ void vramswap_checksum_finish(unsigned long long *sum,
                                                    unsigned long long len) {
    if (blockIdx.x == 0u && threadIdx.x == 0u) {
        *sum = vs_checksum_finish(*sum, len);
    }
}

/* Fills the `len` bytes at `dst` with the little-endian bytes of `pattern`, repeated from
 * `dst`. Whole 32-bit stores where `dst` is 4-byte aligned, byte stores otherwise. */
extern "C" __global__ void vramswap_fill_u32(unsigned char *dst, unsigned long long len,
                                             unsigned int pattern) {
    vs_u64 stride = vs_thread_count();
    if ((((vs_u64)dst) & 3u) == 0u) {
        vs_u64 words = len / 4u;
        for (vs_u64 i = vs_thread_index(); i < words; i += stride) {
            ((vs_u32 *)dst)[i] = pattern; /* little-endian: bytes in pattern order */
        }
        for (vs_u64 i = words * 4u + vs_thread_index(); i < len; i += stride) {
            dst[i] = vs_fill_byte(pattern, i);
        }
    } else {
        for (vs_u64 i = vs_thread_index(); i < len; i += stride) {
            dst[i] = vs_fill_byte(pattern, i);
        }
    }
}

/* Converts `count` elements of type `from` at `src` into type `to` at `dst` (type codes:
 * 0 = f32, 1 = f16, 2 = bf16). Typed loads and stores where both ranges are aligned to their
 * element size, byte loads and stores otherwise. Unknown codes do nothing (the launcher
 * rejects them). The ranges must not overlap. */
extern "C" __global__ void vramswap_cast(const unsigned char *src, unsigned int from,
                                         unsigned char *dst, unsigned int to,
                                         unsigned long long count) {
    vs_u32 from_size = vs_type_size(from);
    vs_u32 to_size = vs_type_size(to);
    vs_u64 stride = vs_thread_count();
    int aligned;
    if (from_size == 0u || to_size == 0u) {
        return;
    }
    aligned = (((vs_u64)src) % from_size) == 0u && (((vs_u64)dst) % to_size) == 0u;
    for (vs_u64 i = vs_thread_index(); i < count; i += stride) {
        vs_u32 in, out;
        if (aligned) {
            in = from_size == 4u ? ((const vs_u32 *)src)[i] : ((const vs_u16 *)src)[i];
        } else {
            in = vs_load_elem_le(src, from, i);
        }
        out = vs_cast_bits(in, from, to);
        if (aligned) {
            if (to_size == 4u) {
                ((vs_u32 *)dst)[i] = out;
            } else {
                ((vs_u16 *)dst)[i] = (vs_u16)out;
            }
        } else {
            vs_store_elem_le(dst, to, i, out);
        }
    }
}
