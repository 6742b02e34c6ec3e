// CUDA's execution model on CPU threads, enough to run dino3d's block-level
// kernels (one-dimensional blocks, __shared__ arrays, __syncthreads, warp
// sums through __shfl_xor_sync with every lane taking part, atomicAdd on
// floats) unchanged: each block's
// threads are std::threads sharing the kernel's `static` __shared__ arrays,
// __syncthreads is a std::barrier, blocks run one after another on the same
// threads.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct EmuDim {
    unsigned x, y, z;
};
thread_local EmuDim threadIdx, blockIdx;
EmuDim blockDim, gridDim;
// This thread's block's barrier (__syncthreads) and its warp's (shuffles).
thread_local std::barrier<>* emu_sync;
thread_local std::barrier<>* emu_warp_sync;
// 32 exchange slots per warp, for __shfl_xor_sync.
constexpr unsigned EMU_MAX_WARPS = 32;
float emu_warp_slot[EMU_MAX_WARPS][32];

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
#define __launch_bounds__(n)

inline void __syncthreads() { emu_sync->arrive_and_wait(); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
// The GPU's fast exp differs in the last bits; the emulation checks the
// kernels' logic, not those bits.
inline float __expf(float v) { return std::exp(v); }
// Round-to-nearest f32 arithmetic, one rounding per operation (the host
// build keeps FMA contraction off: -ffp-contract=off).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
using std::isfinite;
using std::min;

// A warp's exchange: every lane of the warp takes part (as the kernels'
// full-mask calls require); a lane reads the value lane ^ off wrote.
inline float __shfl_xor_sync(unsigned, float v, int off) {
    unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    emu_warp_slot[w][lane] = v;
    emu_warp_sync->arrive_and_wait();
    float r = emu_warp_slot[w][lane ^ (unsigned)off];
    emu_warp_sync->arrive_and_wait();
    return r;
}

inline float atomicAdd(float* at, float v) { return std::atomic_ref<float>(*at).fetch_add(v); }

// Runs `kernel()` as a grid of `grid` x `grid_y` blocks of `block` threads:
// `block` threads take the blocks in turn, and none starts the next block
// before all have finished this one (its __shared__ arrays are reused).
// Each block and warp has barriers of its own, which a thread leaves when
// its kernel returns, as an exited CUDA thread no longer counts at
// __syncthreads; the end of a block is a third barrier.
template <class F>
void emu_launch(unsigned grid, unsigned block, F kernel, unsigned grid_y = 1) {
    blockDim = {block, 1, 1};
    gridDim = {grid, grid_y, 1};
    const unsigned blocks = grid * grid_y, warps = (block + 31) / 32;
    if (warps > EMU_MAX_WARPS) {
        std::fprintf(stderr, "emu_launch: %u threads a block, at most %u\n", block,
                     32 * EMU_MAX_WARPS);
        std::exit(2);
    }
    std::vector<std::unique_ptr<std::barrier<>>> syncs, warp_syncs;
    for (unsigned b = 0; b < blocks; ++b) {
        syncs.push_back(std::make_unique<std::barrier<>>(block));
        for (unsigned w = 0; w < warps; ++w) {
            warp_syncs.push_back(std::make_unique<std::barrier<>>(std::min(32u, block - 32 * w)));
        }
    }
    std::barrier<> block_end(block);
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            for (unsigned by = 0; by < grid_y; ++by) {
                for (unsigned bx = 0; bx < grid; ++bx) {
                    const unsigned b = by * grid + bx;
                    blockIdx = {bx, by, 0};
                    emu_sync = syncs[b].get();
                    emu_warp_sync = warp_syncs[b * warps + t / 32].get();
                    kernel();
                    emu_sync->arrive_and_drop();
                    emu_warp_sync->arrive_and_drop();
                    block_end.arrive_and_wait();
                }
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
}

// max |got - want| / max |want|, as kernels_ref::testing::max_rel_err.
template <class G>
double emu_rel_err(const std::vector<G>& got, const std::vector<double>& want) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
        diff = std::fmax(diff, std::fabs((double)got[i] - want[i]));
        scale = std::fmax(scale, std::fabs(want[i]));
    }
    return scale > 0.0 ? diff / scale : diff;
}

static int emu_failures = 0;

// Prints one comparison and counts it as failed past `bound`.
template <class G>
void emu_check(const char* what, const std::vector<G>& got, const std::vector<double>& want,
               double bound) {
    double err = emu_rel_err(got, want);
    bool ok = err <= bound && std::isfinite(err);
    std::printf("%-48s rel err %.3e (bound %.0e)%s\n", what, err, bound, ok ? "" : "  FAILED");
    if (!ok) {
        ++emu_failures;
    }
}
