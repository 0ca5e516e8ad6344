// Matrix-vector products with fp16 weights and fp32 activations, for decode (one token) and
// small batches of tokens (prefill in groups of GEMV_TOKENS).
//
// One warp per output row; each lane loads 16 bytes (8 weights) per step, four steps in flight,
// so a warp streams 2 KiB of its row per round and every weight byte is read once per group of
// tokens. Activations come through the read-only cache (every warp of an SM reads the same x).
// The epilogue fuses what follows a projection in both architectures: bias, GELU (tanh),
// residual add; the SwiGLU variant computes a gate row and an up row together.
#include "common.cuh"

#define GEMV_TOKENS 4
#define ACT_NONE 0
#define ACT_GELU_TANH 1

__device__ __forceinline__ float gelu_tanh(float u) {
    const float k = 0.7978846f;  // sqrt(2/pi), as the CPU engine rounds it
    return 0.5f * u * (1.0f + tanhf(k * u * (1.0f + 0.044715f * u * u)));
}

// acc[tt] += dot(8 weights in w, x[tt][8j .. 8j+8]) for the first NT tokens.
template <int NT>
__device__ __forceinline__ void fma8(const uint4 w, const float* const* xs, int j, float* acc) {
    const float2 w0 = h2x2f(w.x), w1 = h2x2f(w.y), w2 = h2x2f(w.z), w3 = h2x2f(w.w);
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) {
        const float4* xv = (const float4*)xs[tt] + 2 * j;
        const float4 a = __ldg(xv), b = __ldg(xv + 1);
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

// Dot products of one row (cols/8 16-byte words) with NT activation rows, summed over the warp.
template <int NT>
__device__ __forceinline__ void row_dots(const uint4* __restrict__ row, int n8, const float* const* xs,
                                         float* acc) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) acc[tt] = 0.0f;
    int j = lane;
    for (; j + 96 < n8; j += 128) {
        // Four independent 16-byte loads before any arithmetic keep enough bytes in flight.
        const uint4 w0 = __ldg(row + j), w1 = __ldg(row + j + 32), w2 = __ldg(row + j + 64),
                    w3 = __ldg(row + j + 96);
        fma8<NT>(w0, xs, j, acc);
        fma8<NT>(w1, xs, j + 32, acc);
        fma8<NT>(w2, xs, j + 64, acc);
        fma8<NT>(w3, xs, j + 96, acc);
    }
    for (; j < n8; j += 32) fma8<NT>(__ldg(row + j), xs, j, acc);
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) acc[tt] = warp_sum(acc[tt]);
}

template <int NT>
__device__ __forceinline__ void gemv_group(const f16_t* W, const float* x, float* y, const float* bias,
                                           const float* residual, int r, int rows, int cols, int t0,
                                           int nt, int act) {
    const float* xs[NT];
#pragma unroll
    for (int tt = 0; tt < NT; ++tt) xs[tt] = x + (size_t)(t0 + min(tt, nt - 1)) * cols;
    float acc[NT];
    row_dots<NT>((const uint4*)(W + (size_t)r * cols), cols >> 3, xs, acc);
    if ((threadIdx.x & 31) == 0) {
#pragma unroll
        for (int tt = 0; tt < NT; ++tt) {
            if (tt >= nt) break;
            float v = acc[tt];
            if (bias) v += bias[r];
            if (act == ACT_GELU_TANH) v = gelu_tanh(v);
            const size_t at = (size_t)(t0 + tt) * rows + r;
            if (residual) v += residual[at];
            y[at] = v;
        }
    }
}

// y[t][r] = act(W[r] · x[t] + bias[r]) + residual[t][r] for r < rows, t < n_tokens.
// cols must be a multiple of 8 and rows 16-byte aligned (checked by the host at load).
// y may alias residual (in-place residual add): each element is read, then written, by one lane.
extern "C" __global__ void gemv_f16(const f16_t* __restrict__ W, const float* __restrict__ x, float* y,
                                    const float* __restrict__ bias, const float* residual, int rows,
                                    int cols, int n_tokens, int act) {
    const int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (r >= rows) return;
    if (n_tokens == 1) {
        gemv_group<1>(W, x, y, bias, residual, r, rows, cols, 0, 1, act);
        return;
    }
    for (int t0 = 0; t0 < n_tokens; t0 += GEMV_TOKENS)
        gemv_group<GEMV_TOKENS>(W, x, y, bias, residual, r, rows, cols, t0,
                                min(GEMV_TOKENS, n_tokens - t0), act);
}

// SwiGLU feed-forward input: W holds the gate rows then the up rows ([2 * rows][cols]);
// y[t][r] = silu(gate[r] · x[t]) * (up[r] · x[t]).
extern "C" __global__ void gemv_swiglu_f16(const f16_t* __restrict__ W, const float* __restrict__ x,
                                           float* __restrict__ y, int rows, int cols, int n_tokens) {
    const int r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (r >= rows) return;
    const uint4* gate = (const uint4*)(W + (size_t)r * cols);
    const uint4* up = (const uint4*)(W + (size_t)(rows + r) * cols);
    for (int t0 = 0; t0 < n_tokens; t0 += GEMV_TOKENS) {
        const int nt = min(GEMV_TOKENS, n_tokens - t0);
        const float* xs[GEMV_TOKENS];
#pragma unroll
        for (int tt = 0; tt < GEMV_TOKENS; ++tt) xs[tt] = x + (size_t)(t0 + min(tt, nt - 1)) * cols;
        float g[GEMV_TOKENS], u[GEMV_TOKENS];
        if (nt == 1) {
            row_dots<1>(gate, cols >> 3, xs, g);
            row_dots<1>(up, cols >> 3, xs, u);
        } else {
            row_dots<GEMV_TOKENS>(gate, cols >> 3, xs, g);
            row_dots<GEMV_TOKENS>(up, cols >> 3, xs, u);
        }
        if ((threadIdx.x & 31) == 0) {
            for (int tt = 0; tt < nt; ++tt) {
                const float a = g[tt];
                y[(size_t)(t0 + tt) * rows + r] = a / (1.0f + expf(-a)) * u[tt];
            }
        }
    }
}
