// host_grid.cpp: runs the CUDA kernels of vramswap_kernels.cu, unchanged, on host threads (one
// host thread per CUDA thread, a block at a time), so that tests/kernels_grid.rs checks the
// kernels themselves (grid-stride loops, aligned fast paths, tails, the block reduction and the
// atomicAdd) against the Rust implementations without a GPU. Test-only; not part of the library.
//
// What it models: blockIdx/blockDim/gridDim/threadIdx per thread; __syncthreads as a barrier of
// the block; __shfl_down_sync as a lock-step exchange within a warp of 32 lanes (every lane of
// the warp must take part, as the full mask promises); __shared__ as storage shared by the
// block (blocks run one after another); atomicAdd as an atomic fetch-add. Needs C++20.

#include <atomic>
#include <barrier>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct vs_dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace {

struct Block {
    explicit Block(unsigned threads)
        : sync(threads), warps((threads + 31) / 32), slots((threads + 31) / 32 * 32) {
        for (auto &w : warps) {
            w = std::make_unique<std::barrier<>>(32);
        }
    }
    std::barrier<> sync;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<unsigned long long> slots;
};

thread_local Block *tl_block = nullptr;

}  // namespace

thread_local vs_dim3 blockIdx, blockDim, gridDim, threadIdx;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

static void __syncthreads() { tl_block->sync.arrive_and_wait(); }

template <typename T>
static T __shfl_down_sync(unsigned mask, T v, int offset) {
    (void)mask;
    unsigned lane = threadIdx.x & 31u;
    unsigned warp = threadIdx.x >> 5;
    auto &slots = tl_block->slots;
    std::barrier<> &b = *tl_block->warps[warp];
    static_assert(sizeof(T) <= sizeof(unsigned long long), "shuffle of a wider type");
    unsigned long long mine = 0;
    std::memcpy(&mine, &v, sizeof(T));
    slots[warp * 32 + lane] = mine;
    b.arrive_and_wait();
    T out = v;
    if (lane + offset < 32u) {
        std::memcpy(&out, &slots[warp * 32 + lane + offset], sizeof(T));
    }
    b.arrive_and_wait();
    return out;
}

static unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}

#include "vramswap_kernels.cu"

// Runs `kernel` on a grid of `grid` blocks of `block` threads (block a multiple of 32).
static void vs_launch(unsigned grid, unsigned block, const std::function<void()> &kernel) {
    for (unsigned b = 0; b < grid; ++b) {
        Block state(block);
        std::vector<std::thread> threads;
        threads.reserve(block);
        for (unsigned t = 0; t < block; ++t) {
            threads.emplace_back([&, b, t] {
                tl_block = &state;
                blockIdx.x = b;
                threadIdx.x = t;
                blockDim.x = block;
                gridDim.x = grid;
                kernel();
            });
        }
        for (auto &th : threads) {
            th.join();
        }
    }
}

extern "C" {

// What CudaBackend::checksum_async does: zero *out, launch partial, launch finish (1 x 32).
unsigned long long vs_grid_checksum(const unsigned char *src, unsigned long long len,
                                    unsigned grid, unsigned block) {
    unsigned long long sum = 0;
    if (len > 0) {
        vs_launch(grid, block, [&] { vramswap_checksum_partial(src, len, &sum); });
    }
    vs_launch(1, 32, [&] { vramswap_checksum_finish(&sum, len); });
    return sum;
}

void vs_grid_fill_u32(unsigned char *dst, unsigned long long len, unsigned pattern,
                      unsigned grid, unsigned block) {
    vs_launch(grid, block, [&] { vramswap_fill_u32(dst, len, pattern); });
}

void vs_grid_cast(const unsigned char *src, unsigned from, unsigned char *dst, unsigned to,
                  unsigned long long count, unsigned grid, unsigned block) {
    vs_launch(grid, block, [&] { vramswap_cast(src, from, dst, to, count); });
}

}  // extern "C"
