// Matrix-vector products with fp16 weights and fp32 activations, for decode (one token) and
// small groups of tokens (prefill, GEMV_TOKENS at a time), with what follows a projection
// fused into the epilogue: bias, GELU (tanh) and the residual add (PLAIN); silu(gate) * up
// (SWIGLU); for the Q/K/V projection, RoPE on query and key pairs and the fp16 KV-cache
// write (QKV), so a decoder layer is a handful of launches.
//
// One warp per pair of weight rows (adjacent rows, a gate row and its up row, or the two rows
// RoPE rotates together). For decode each lane issues all its 16-byte loads of a round before
// any arithmetic (GEMV_UNROLL per row, so a 2048-wide pair is in flight at once) with loads
// that do not allocate in L1, where the activations live; the warp's lane 0 runs the
// epilogue. Weights are read once per group of tokens.
#include "common.cuh"

#define GEMV_TOKENS 4
#define GEMV_THREADS 128
#define GEMV_WARPS (GEMV_THREADS / 32)
// Tuning constants, open to AGENTRT_CUDA_DEFINES for measuring variants without a rebuild:
// 16-byte loads per lane and row issued before their arithmetic (decode), and the blocks per
// SM the register allocation must leave room for.
#ifndef GEMV_UNROLL
#define GEMV_UNROLL 8
#endif
#ifndef GEMV_MIN_BLOCKS
#define GEMV_MIN_BLOCKS 1
#endif

#define MODE_PLAIN 0
#define MODE_SWIGLU 1
#define MODE_QKV 2

#define ROPE_NONE 0
#define ROPE_INTERLEAVED 1
#define ROPE_HALF_SPLIT 2

// Mirrored by agentrt_kernels::args::GemvArgs (#[repr(C)]): pointers first, then 32-bit values.
struct GemvArgs {
    const f16_t* w;          // [rows][cols]
    const float* x;          // [n_tokens][cols]
    float* y;                // [n_tokens][y_stride]
    const float* bias;       // [rows] or null
    const float* residual;   // [n_tokens][y_stride] or null (PLAIN; may equal y)
    const int* pos0;         // QKV: position of token 0
    const float* inv_freq;   // QKV with RoPE: [head_dim / 2]
    f16_t* kcache;           // QKV: [n_kv_head][capacity][head_dim]
    f16_t* vcache;
    int rows;                // weight rows
    int cols;
    int n_tokens;
    int y_stride;
    int mode;
    int act;                 // PLAIN: 0 none, 1 GELU (tanh)
    int n_head;              // QKV
    int n_kv_head;
    int head_dim;
    int capacity;
    int rope;
    int ksplit;              // warps sharing one pair's columns: 1, 2 or 4
};

__device__ __forceinline__ float gelu_tanh(float u) {
    const float k = 0.7978846f;  // sqrt(2/pi), as the CPU engine rounds it
    return 0.5f * u * (1.0f + tanhf(k * u * (1.0f + 0.044715f * u * u)));
}

// Streamed weights: read-only path, no L1 allocation.
__device__ __forceinline__ uint4 ld_weights(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// acc[tt] += dot(8 weights in w, x[tt][8j .. 8j+8]) for the first NT tokens.
template <int NT>
__device__ __forceinline__ void fma8(const uint4 w, const float* const* xs, int j, float* acc) {
    const float2 w0 = h2x2f(w.x), w1 = h2x2f(w.y), w2 = h2x2f(w.z), w3 = h2x2f(w.w);
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) {
        const float4* xv = (const float4*)xs[tt] + 2 * j;
        const float4 a = xv[0], b = xv[1];
        float s = acc[tt];
        s = fmaf(w0.x, a.x, s);
        s = fmaf(w0.y, a.y, s);
        s = fmaf(w1.x, a.z, s);
        s = fmaf(w1.y, a.w, s);
        s = fmaf(w2.x, b.x, s);
        s = fmaf(w2.y, b.y, s);
        s = fmaf(w3.x, b.z, s);
        s = fmaf(w3.y, b.w, s);
        acc[tt] = s;
    }
}

// This warp's share (`part` of `ks`) of two rows' dot products (a, b: cols/8 16-byte words
// each) with NT activation rows, summed over the warp. The ks warps of a pair read
// interleaved 512-byte runs; U words per lane and row are loaded before they are used.
template <int NT, int U>
__device__ __forceinline__ void pair_dots(const uint4* __restrict__ ra, const uint4* __restrict__ rb,
                                          int n8, int part, int ks, const float* const* xs, float* acc_a,
                                          float* acc_b) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) {
        acc_a[tt] = 0.0f;
        acc_b[tt] = 0.0f;
    }
    const int step = 32 * ks;
    for (int base = part * 32 + lane; base < n8; base += step * U) {
        uint4 wa[U], wb[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + step * u;
            if (j < n8) {
                wa[u] = ld_weights(ra + j);
                wb[u] = ld_weights(rb + j);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + step * u;
            if (j < n8) {
                fma8<NT>(wa[u], xs, j, acc_a);
                fma8<NT>(wb[u], xs, j, acc_b);
            }
        }
    }
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) {
        acc_a[tt] = warp_sum(acc_a[tt]);
        acc_b[tt] = warp_sum(acc_b[tt]);
    }
}

// Where a QKV pair sits: its two weight rows, its region (0 q, 1 k, 2 v) and its RoPE
// frequency index.
struct QkvPair {
    int ra, rb, region, freq;
};

__device__ __forceinline__ QkvPair qkv_pair(const GemvArgs& a, int pair) {
    const int hd = a.head_dim, half = hd / 2;
    const int q_dim = a.n_head * hd, kv_dim = a.n_kv_head * hd;
    QkvPair p;
    int base, l;
    if (pair < q_dim / 2) {
        p.region = 0;
        base = 0;
        l = pair;
    } else if (pair < (q_dim + kv_dim) / 2) {
        p.region = 1;
        base = q_dim;
        l = pair - q_dim / 2;
    } else {
        p.region = 2;
        base = q_dim + kv_dim;
        l = pair - (q_dim + kv_dim) / 2;
    }
    const int h = l / half, i = l % half;
    p.freq = i;
    if (p.region < 2 && a.rope == ROPE_HALF_SPLIT) {
        p.ra = base + h * hd + i;
        p.rb = p.ra + half;
    } else {
        p.ra = base + 2 * l;
        p.rb = p.ra + 1;
    }
    return p;
}

// The two weight rows of `pair` (the second is -1 past the end of an odd PLAIN matrix).
__device__ __forceinline__ int2 pair_rows(const GemvArgs& a, int pair) {
    if (a.mode == MODE_SWIGLU) return make_int2(pair, a.rows / 2 + pair);
    if (a.mode == MODE_QKV) {
        const QkvPair p = qkv_pair(a, pair);
        return make_int2(p.ra, p.rb);
    }
    return make_int2(2 * pair, 2 * pair + 1 < a.rows ? 2 * pair + 1 : -1);
}

__device__ void epilogue(const GemvArgs& a, int pair, int t, float v0, float v1) {
    float* y = a.y + (size_t)t * a.y_stride;
    if (a.mode == MODE_SWIGLU) {
        y[pair] = v0 / (1.0f + expf(-v0)) * v1;
        return;
    }
    if (a.mode == MODE_PLAIN) {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
            const int r = 2 * pair + s;
            if (r >= a.rows) break;
            float o = s == 0 ? v0 : v1;
            if (a.bias) o += a.bias[r];
            if (a.act == 1) o = gelu_tanh(o);
            if (a.residual) o += a.residual[(size_t)t * a.y_stride + r];
            y[r] = o;
        }
        return;
    }
    // QKV: bias, RoPE (queries and keys), then queries to y and keys / values to the cache.
    const QkvPair p = qkv_pair(a, pair);
    float x0 = v0, x1 = v1;
    if (a.bias) {
        x0 += a.bias[p.ra];
        x1 += a.bias[p.rb];
    }
    const int pos = *a.pos0 + t;
    if (p.region < 2 && a.rope != ROPE_NONE) {
        float s, c;
        sincosf((float)pos * a.inv_freq[p.freq], &s, &c);
        const float r0 = x0 * c - x1 * s, r1 = x0 * s + x1 * c;
        x0 = r0;
        x1 = r1;
    }
    if (p.region == 0) {
        y[p.ra] = x0;
        y[p.rb] = x1;
        return;
    }
    const int q_dim = a.n_head * a.head_dim, kv_dim = a.n_kv_head * a.head_dim;
    const int off = p.region == 1 ? q_dim : q_dim + kv_dim;
    f16_t* cache = p.region == 1 ? a.kcache : a.vcache;
    const int ka = p.ra - off, kb = p.rb - off;
    const int h = ka / a.head_dim;  // both rows of a pair are in one head
    f16_t* dst = cache + ((size_t)h * a.capacity + pos) * a.head_dim;
    dst[ka % a.head_dim] = f2h(x0);
    dst[kb % a.head_dim] = f2h(x1);
}

// Sum the ks warps' shares of each pair (through shared memory) and run the epilogue.
__device__ __forceinline__ void finish(const GemvArgs& a, float (*sums)[2][GEMV_TOKENS], int pair, bool active,
                                       int part, int t0, int nt, const float* va, const float* vb) {
    const int warp = threadIdx.x >> 5;
    const bool lead = (threadIdx.x & 31) == 0;
    if (a.ksplit == 1) {
        if (active && lead)
            for (int tt = 0; tt < nt; ++tt) epilogue(a, pair, t0 + tt, va[tt], vb[tt]);
        return;
    }
    if (lead)
        for (int tt = 0; tt < nt; ++tt) {
            sums[warp][0][tt] = va[tt];
            sums[warp][1][tt] = vb[tt];
        }
    __syncthreads();
    if (active && lead && part == 0)
        for (int tt = 0; tt < nt; ++tt) {
            float x0 = 0.0f, x1 = 0.0f;
            for (int k = 0; k < a.ksplit; ++k) {
                x0 += sums[warp + k][0][tt];
                x1 += sums[warp + k][1][tt];
            }
            epilogue(a, pair, t0 + tt, x0, x1);
        }
    __syncthreads();  // `sums` is rewritten by the next group of tokens
}

// One pair of rows per `ksplit` warps (rows wider than a warp streams well alone are split
// along their columns), GEMV_WARPS / ksplit pairs per block.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MIN_BLOCKS) gemv(const GemvArgs a) {
    pdl_wait();
    __shared__ float sums[GEMV_WARPS][2][GEMV_TOKENS];
    const int warp = threadIdx.x >> 5;
    const int ks = a.ksplit;
    const int pair = blockIdx.x * (GEMV_WARPS / ks) + warp / ks;
    const int part = warp % ks;
    const int pairs = a.mode == MODE_SWIGLU ? a.rows / 2 : (a.rows + 1) / 2;
    // Warps past the last pair still meet the block's barriers (ksplit > 1).
    const bool active = pair < pairs;
    const int2 rows = active ? pair_rows(a, pair) : make_int2(0, 0);
    const uint4* ra = (const uint4*)(a.w + (size_t)rows.x * a.cols);
    // A missing second row (odd PLAIN matrix) reads the first again; its result is dropped.
    const uint4* rb = (const uint4*)(a.w + (size_t)(rows.y < 0 ? rows.x : rows.y) * a.cols);
    const int n8 = a.cols >> 3;
    if (a.n_tokens == 1) {
        const float* xs[1] = {a.x};
        float va[1] = {0.0f}, vb[1] = {0.0f};
        if (active) pair_dots<1, GEMV_UNROLL>(ra, rb, n8, part, ks, xs, va, vb);
        pdl_launch_dependents();
        finish(a, sums, pair, active, part, 0, 1, va, vb);
        return;
    }
    for (int t0 = 0; t0 < a.n_tokens; t0 += GEMV_TOKENS) {
        const int nt = min(GEMV_TOKENS, a.n_tokens - t0);
        const float* xs[GEMV_TOKENS];
#pragma unroll
        for (int tt = 0; tt < GEMV_TOKENS; ++tt) xs[tt] = a.x + (size_t)(t0 + min(tt, nt - 1)) * a.cols;
        float va[GEMV_TOKENS] = {0.0f, 0.0f, 0.0f, 0.0f}, vb[GEMV_TOKENS] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (active) pair_dots<GEMV_TOKENS, 2>(ra, rb, n8, part, ks, xs, va, vb);
        finish(a, sums, pair, active, part, t0, nt, va, vb);
    }
    pdl_launch_dependents();
}

// Prefill through cuBLAS (the engine's cuda/blas.rs): tensor cores multiply fp16 by fp16, so
// each fp32 activation is split into two fp16 values, hi = fp16(x) and lo = fp16(x - hi),
// whose products are summed in fp32 (W hi + W lo): activations keep ~22 bits, not fp16's 11.
extern "C" __global__ void split_halves(const float* __restrict__ x, f16_t* __restrict__ hi,
                                        f16_t* __restrict__ lo, int n) {
    pdl_wait();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float v = x[i];
        const f16_t h = f2h(v);
        hi[i] = h;
        lo[i] = f2h(v - h2f(h));
    }
    pdl_launch_dependents();
}

// The GEMV's epilogue over products cuBLAS computed: prod is [n_tokens][a.rows] (W x per
// token), grid (blocks, n_tokens); every pair of rows gets exactly what the GEMV would do
// with the same sums (bias, activation, residual, SwiGLU, RoPE and the cache write).
extern "C" __global__ void gemm_epilogue(const GemvArgs a, const float* __restrict__ prod) {
    pdl_wait();
    const int pairs = a.mode == MODE_SWIGLU ? a.rows / 2 : (a.rows + 1) / 2;
    const int t = blockIdx.y;
    const float* p = prod + (size_t)t * a.rows;
    for (int pair = blockIdx.x * blockDim.x + threadIdx.x; pair < pairs; pair += gridDim.x * blockDim.x) {
        const int2 r = pair_rows(a, pair);
        epilogue(a, pair, t, p[r.x], r.y >= 0 ? p[r.y] : 0.0f);
    }
    pdl_launch_dependents();
}
