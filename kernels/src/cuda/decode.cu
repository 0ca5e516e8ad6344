// A decode step's decoder layers in one persistent launch (batch 1).
//
// Launched as one kernel per layer, a step of a small model is mostly launch gaps and ramp-up:
// seven kernels a layer, each a few microseconds of latency whatever its size. Here a grid
// of as many blocks as fit on the GPU at once walks every layer, phase after phase, with a
// grid-wide barrier between phases that depend on each other:
//
//   norm + Q/K/V (RoPE, cache write) | attention | output + residual | norm + up (GELU or
//   SwiGLU) | down + residual | next layer ...
//
// Each block computes the norm of the residual stream itself, into shared memory (a few KB,
// cheaper than a phase and a barrier of its own). The products, epilogues and attention are
// the same device code as the separate kernels (gemv.cu and attention.cu are spliced in before
// this file), so both paths compute the same sums in the same order, apart from the norm's
// reductions.
//
// The barrier needs every block resident at once: the engine launches it cooperatively (the
// driver guarantees co-residency or refuses), with the blocks the occupancy calculator allows
// per SM times the SMs, and zeroes the counter before each launch.
#include "common.cuh"

// Mirrored by agentrt_kernels::args::LayerArgs (#[repr(C)]).
struct LayerArgs {
    GemvArgs qkv;  // x unused: the block's normed copy is read instead
    GemvArgs out;  // residual = y = the residual stream
    GemvArgs up;   // x unused, as qkv
    GemvArgs down; // residual = y = the residual stream
    const float* norm1_w;
    const float* norm1_b;
    const float* norm2_w;
    const float* norm2_b;
};

// The PTX test compiles this file with the Rust mirror's size defined.
#ifdef LAYER_ARGS_BYTES
static_assert(sizeof(LayerArgs) == LAYER_ARGS_BYTES, "LayerArgs differs from its Rust mirror");
#endif

// Mirrored by agentrt_kernels::args::StepArgs (#[repr(C)]): pointers first, then 32-bit values.
struct StepArgs {
    const LayerArgs* layers;
    const float* x;        // the residual stream, [dim]
    const float* q;        // queries, written by the Q/K/V epilogue
    float* part_o;
    float* part_ml;
    int* done;
    float* attn;           // attention output, [n_head * head_dim]
    const int* pos0;
    unsigned int* barrier; // zero at launch
    int n_layers;
    int dim;
    int layer_norm;
    int n_head;
    int group;
    int head_dim;
    int capacity;
    int max_splits;
    float eps;
    float scale;
};

// Every block arrives, then waits until all have: the k-th barrier of the launch completes
// when the counter reaches k * gridDim.x. Writes before it are visible to every block after.
__device__ __forceinline__ void grid_barrier(unsigned int* counter, unsigned int& target) {
    target += gridDim.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1u);
        unsigned int seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
        __threadfence();
    }
    __syncthreads();
}

// The model's norm of x (RMSNorm, or LayerNorm with bias) into `out` (shared memory), by
// the whole block; the CPU engine's arithmetic (two passes, biased variance).
__device__ __forceinline__ void block_norm(const float* x, const float* w, const float* b, float* out, int dim,
                                           float eps, int layer_norm, float* scratch) {
    float s = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) s += x[c];
    const float mean = layer_norm ? block_sum(s, scratch) / (float)dim : 0.0f;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float d = x[c] - mean;
        ss += d * d;
    }
    const float sd = sqrtf(block_sum(ss, scratch) / (float)dim + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x)
        out[c] = layer_norm ? (x[c] - mean) / sd * w[c] + b[c] : x[c] / sd * w[c];
    __syncthreads();
}

// One GEMV over the grid. As the GEMV kernel: ksplit warps per pair of rows (rows 4096 and
// wider are split), 4 / ksplit pairs per block at a time, the blocks striding over the pairs.
//
// A warp's first round of weight loads (its first pair, GEMV_UNROLL words per lane and row) is
// issued by `preload` before the grid barrier the phase waits behind, while attention or a
// norm runs: weights depend on nothing, so DRAM starts on the phase's bytes before its inputs
// exist. `gemv_phase` finishes that round from the registers, then loads the rest.
struct Preload {
    uint4 wa[GEMV_UNROLL], wb[GEMV_UNROLL];
};

struct PhaseWork {
    int pairs, ks, per_block, n8;
};

__device__ __forceinline__ PhaseWork phase_work(const GemvArgs& a) {
    PhaseWork w;
    w.pairs = a.mode == MODE_SWIGLU ? a.rows / 2 : (a.rows + 1) / 2;
    w.ks = max(a.ksplit, 1);
    w.per_block = GEMV_WARPS / w.ks;
    w.n8 = a.cols >> 3;
    return w;
}

// The two weight rows of `pair` (the first twice past the end of an odd PLAIN matrix).
__device__ __forceinline__ void row_pointers(const GemvArgs& a, int pair, const uint4*& ra, const uint4*& rb) {
    const int2 rows = pair_rows(a, pair);
    ra = (const uint4*)(a.w + (size_t)rows.x * a.cols);
    rb = (const uint4*)(a.w + (size_t)(rows.y < 0 ? rows.x : rows.y) * a.cols);
}

__device__ __forceinline__ void preload(const GemvArgs& a, Preload& p) {
    const PhaseWork w = phase_work(a);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int pair = blockIdx.x * w.per_block + warp / w.ks;
    if (pair >= w.pairs) return;
    const uint4 *ra, *rb;
    row_pointers(a, pair, ra, rb);
    const int base = (warp % w.ks) * 32 + lane, step = 32 * w.ks;
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; ++u) {
        const int j = base + step * u;
        if (j < w.n8) {
            p.wa[u] = ld_weights_now(ra + j);
            p.wb[u] = ld_weights_now(rb + j);
        }
    }
}

__device__ __forceinline__ void gemv_phase(const GemvArgs& a, const float* x, const Preload& p) {
    __shared__ float sums[GEMV_WARPS][2][GEMV_TOKENS];
    const PhaseWork w = phase_work(a);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int part = warp % w.ks, step = 32 * w.ks;
    const float* xs[1] = {x};
    bool first = true;
    for (int group = blockIdx.x * w.per_block; group < w.pairs; group += gridDim.x * w.per_block) {
        const int pair = group + warp / w.ks;
        const bool active = pair < w.pairs;
        float va[1] = {0.0f}, vb[1] = {0.0f};
        if (active) {
            const uint4 *ra, *rb;
            row_pointers(a, pair, ra, rb);
            int base = part * 32 + lane;
            if (first) {
                // The preloaded round, summed in the order pair_dots would.
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; ++u) {
                    const int j = base + step * u;
                    if (j < w.n8) {
                        fma8<1>(p.wa[u], xs, j, va);
                        fma8<1>(p.wb[u], xs, j, vb);
                    }
                }
                base += step * GEMV_UNROLL;
            }
            for (; base < w.n8; base += step * GEMV_UNROLL) {
                uint4 wa[GEMV_UNROLL], wb[GEMV_UNROLL];
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; ++u) {
                    const int j = base + step * u;
                    if (j < w.n8) {
                        wa[u] = ld_weights(ra + j);
                        wb[u] = ld_weights(rb + j);
                    }
                }
#pragma unroll
                for (int u = 0; u < GEMV_UNROLL; ++u) {
                    const int j = base + step * u;
                    if (j < w.n8) {
                        fma8<1>(wa[u], xs, j, va);
                        fma8<1>(wb[u], xs, j, vb);
                    }
                }
            }
            va[0] = warp_sum(va[0]);
            vb[0] = warp_sum(vb[0]);
        }
        first = false;
        finish(a, sums, pair, active, part, 0, 1, va, vb);
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) decode_layers(const StepArgs s) {
    extern __shared__ float4 normed4[];  // [dim] floats, 16-byte aligned for the GEMV's loads
    float* normed = (float*)normed4;
    __shared__ float scratch[32];
    pdl_wait();
    unsigned int target = 0;
    const int len = *s.pos0 + 1;
    const int splits = (len + ATTN_CHUNK - 1) / ATTN_CHUNK;
    Preload p;
    preload(s.layers[0].qkv, p);
    for (int l = 0; l < s.n_layers; ++l) {
        const LayerArgs& L = s.layers[l];
        block_norm(s.x, L.norm1_w, L.norm1_b, normed, s.dim, s.eps, s.layer_norm, scratch);
        gemv_phase(L.qkv, normed, p);
        grid_barrier(s.barrier, target);
        preload(L.out, p);
        for (int item = blockIdx.x; item < s.n_head * splits; item += gridDim.x) {
            attn_decode_item<false>(s.q, L.qkv.kcache, L.qkv.vcache, s.part_o, s.part_ml, s.done, s.attn, len,
                                    item / splits, item % splits, s.group, s.head_dim, s.capacity, s.max_splits,
                                    s.scale);
            __syncthreads();  // the item's shared arrays are the next one's
        }
        grid_barrier(s.barrier, target);
        gemv_phase(L.out, s.attn, p);
        preload(L.up, p);
        grid_barrier(s.barrier, target);
        block_norm(s.x, L.norm2_w, L.norm2_b, normed, s.dim, s.eps, s.layer_norm, scratch);
        gemv_phase(L.up, normed, p);
        preload(L.down, p);
        grid_barrier(s.barrier, target);
        gemv_phase(L.down, L.down.x, p);
        if (l + 1 < s.n_layers) preload(s.layers[l + 1].qkv, p);
        grid_barrier(s.barrier, target);
    }
}
