// Matrix-vector products with fp16 weights and fp32 activations, for decode (one token) and
// small groups of tokens (prefill, GEMV_TOKENS at a time), with what surrounds a projection
// fused in so a decoder layer is a handful of launches:
//   - the input norm (RMSNorm or LayerNorm): each block normalises the activations into shared
//     memory itself, so no separate norm pass is launched and waited for;
//   - the epilogue: bias, GELU (tanh) and the residual add (PLAIN); silu(gate) * up (SWIGLU);
//     for the Q/K/V projection, RoPE on query and key pairs and the fp16 KV-cache write (QKV).
//
// Every block computes two weight rows (a "pair": adjacent rows, a gate row and its up row, or
// the two rows RoPE rotates together), each split over GEMV_KSPLIT warps along the columns so
// even a 2048-row matrix keeps thousands of warps and enough 16-byte loads in flight to stream
// the weights at memory speed. Weights are read once per group of tokens, with loads that do
// not allocate in L1 (the activations live there).
#include "common.cuh"

#define GEMV_TOKENS 4
#define GEMV_THREADS 256
#define GEMV_KSPLIT 4
#define GEMV_WARPS (GEMV_THREADS / 32)

#define MODE_PLAIN 0
#define MODE_SWIGLU 1
#define MODE_QKV 2

#define NORM_NONE 0
#define NORM_RMS 1
#define NORM_LAYER 2

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
    const float* norm_w;     // [cols] when norm != NORM_NONE
    const float* norm_b;     // [cols] for NORM_LAYER
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
    int norm;
    float eps;
    int n_head;              // QKV
    int n_kv_head;
    int head_dim;
    int capacity;
    int rope;
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

// This warp's share (`part` of GEMV_KSPLIT) of one row's dot products with NT activation rows.
// The KSPLIT warps of a row read interleaved 512-byte runs, so together they read 2 KiB
// contiguous per step; four steps are issued before any arithmetic.
template <int NT>
__device__ __forceinline__ void row_dots(const uint4* __restrict__ row, int n8, int part,
                                         const float* const* xs, float* acc) {
    const int lane = threadIdx.x & 31;
    const int stride = 32 * GEMV_KSPLIT;
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) acc[tt] = 0.0f;
    int j = part * 32 + lane;
    for (; j + 3 * stride < n8; j += 4 * stride) {
        const uint4 w0 = ld_weights(row + j), w1 = ld_weights(row + j + stride),
                    w2 = ld_weights(row + j + 2 * stride), w3 = ld_weights(row + j + 3 * stride);
        fma8<NT>(w0, xs, j, acc);
        fma8<NT>(w1, xs, j + stride, acc);
        fma8<NT>(w2, xs, j + 2 * stride, acc);
        fma8<NT>(w3, xs, j + 3 * stride, acc);
    }
    for (; j < n8; j += stride) fma8<NT>(ld_weights(row + j), xs, j, acc);
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) acc[tt] = warp_sum(acc[tt]);
}

// Normalise activation rows t0 .. t0+nt into `out` ([nt][cols]) as the CPU engine does:
// x / rms * w, or (x - mean) / sd * w + b with the biased variance.
__device__ void normalise(const GemvArgs& a, int t0, int nt, float* out, float* scratch) {
    const int cols = a.cols;
    for (int tt = 0; tt < nt; ++tt) {
        const float* xr = a.x + (size_t)(t0 + tt) * cols;
        float mean = 0.0f;
        if (a.norm == NORM_LAYER) {
            float s = 0.0f;
            for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
            mean = block_sum(s, scratch) / (float)cols;
        }
        float v = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float d = xr[c] - mean;
            v += d * d;
        }
        const float sd = sqrtf(block_sum(v, scratch) / (float)cols + a.eps);
        float* o = out + (size_t)tt * cols;
        if (a.norm == NORM_LAYER) {
            for (int c = threadIdx.x; c < cols; c += blockDim.x)
                o[c] = (xr[c] - mean) / sd * a.norm_w[c] + a.norm_b[c];
        } else {
            for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = xr[c] / sd * a.norm_w[c];
        }
    }
    __syncthreads();
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

// The weight row a block's `slot` (0 or 1) computes, or -1 past the end.
__device__ __forceinline__ int slot_row(const GemvArgs& a, int pair, int slot) {
    if (a.mode == MODE_SWIGLU) return slot == 0 ? pair : a.rows / 2 + pair;
    if (a.mode == MODE_QKV) {
        const QkvPair p = qkv_pair(a, pair);
        return slot == 0 ? p.ra : p.rb;
    }
    const int r = 2 * pair + slot;
    return r < a.rows ? r : -1;
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

// One block per pair; dynamic shared memory holds the normalised activations when a.norm is
// set (min(n_tokens, GEMV_TOKENS) * cols floats).
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) gemv(const GemvArgs a) {
    extern __shared__ float normed[];
    __shared__ float sums[GEMV_WARPS][GEMV_TOKENS];
    __shared__ float scratch[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int slot = warp / GEMV_KSPLIT, part = warp % GEMV_KSPLIT;
    const int pair = blockIdx.x;
    const int row = slot_row(a, pair, slot);
    const uint4* wrow = (const uint4*)(a.w + (size_t)(row < 0 ? 0 : row) * a.cols);
    const int n8 = a.cols >> 3;
    for (int t0 = 0; t0 < a.n_tokens; t0 += GEMV_TOKENS) {
        const int nt = min(GEMV_TOKENS, a.n_tokens - t0);
        const float* xs[GEMV_TOKENS];
        if (a.norm != NORM_NONE) {
            normalise(a, t0, nt, normed, scratch);
#pragma unroll
            for (int tt = 0; tt < GEMV_TOKENS; ++tt) xs[tt] = normed + (size_t)min(tt, nt - 1) * a.cols;
        } else {
#pragma unroll
            for (int tt = 0; tt < GEMV_TOKENS; ++tt) xs[tt] = a.x + (size_t)(t0 + min(tt, nt - 1)) * a.cols;
        }
        float acc[GEMV_TOKENS] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (row >= 0) {
            if (nt == 1)
                row_dots<1>(wrow, n8, part, xs, acc);
            else
                row_dots<GEMV_TOKENS>(wrow, n8, part, xs, acc);
        }
        if (lane == 0) {
#pragma unroll
            for (int tt = 0; tt < GEMV_TOKENS; ++tt) sums[warp][tt] = acc[tt];
        }
        __syncthreads();
        if (threadIdx.x < nt) {
            const int tt = threadIdx.x;
            float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
            for (int p = 0; p < GEMV_KSPLIT; ++p) {
                v0 += sums[p][tt];
                v1 += sums[GEMV_KSPLIT + p][tt];
            }
            epilogue(a, pair, t0 + tt, v0, v1);
        }
        __syncthreads();  // `sums` and `normed` are rewritten by the next group
    }
}
