// Probes of how fast the card streams weights, for the decode benchmark (benches/gpu.rs), not
// used by the engine: the GEMV's read pattern without its arithmetic (probe_rows), a
// grid-stride stream over a whole buffer (probe_stream), and a one-block kernel standing in
// for a norm (probe_tiny). Timed as the 1B decode step's sequence of launches, they say how
// much of the copy rate a kernel per operation can reach at all, and what the launches between
// them cost, whatever the GEMV does with the bytes.
#include "common.cuh"

#define PROBE_UNROLL 8

// The eight halves of a word added up, so that no load is dead code.
__device__ __forceinline__ float fold(uint4 v) {
    const float2 a = h2x2f(v.x), b = h2x2f(v.y), c = h2x2f(v.z), d = h2x2f(v.w);
    return ((a.x + a.y) + (b.x + b.y)) + ((c.x + c.y) + (d.x + d.y));
}

// One warp per pair of rows of `row_words` 16-byte words, as the GEMV assigns them: each lane
// issues PROBE_UNROLL loads per row before adding any (a 2048-wide fp16 pair in flight at
// once), in rounds for wider rows. One sum per pair in `out`.
extern "C" __global__ void probe_rows(const uint4* __restrict__ w, int rows, int row_words,
                                      float* __restrict__ out) {
    pdl_wait();
    const int lane = threadIdx.x & 31;
    const int pair = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
    const int r0 = pair * 2;
    float s = 0.0f;
    if (r0 < rows) {
        const uint4* a = w + (size_t)r0 * row_words;
        const uint4* b = r0 + 1 < rows ? a + row_words : a;
        for (int base = lane; base < row_words; base += 32 * PROBE_UNROLL) {
            uint4 va[PROBE_UNROLL], vb[PROBE_UNROLL];
#pragma unroll
            for (int u = 0; u < PROBE_UNROLL; ++u) {
                const int j = base + 32 * u;
                va[u] = j < row_words ? ld_weights_now(a + j) : make_uint4(0, 0, 0, 0);
                vb[u] = j < row_words ? ld_weights_now(b + j) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < PROBE_UNROLL; ++u) s += fold(va[u]) + fold(vb[u]);
        }
    }
    // As the engine's kernels do: the next launch may begin once the main work is done.
    pdl_launch_dependents();
    s = warp_sum(s);
    if (lane == 0 && r0 < rows) out[pair] = s;
}

// Every word of `w` once, grid-stride, four loads per thread in flight; one sum per block.
extern "C" __global__ void probe_stream(const uint4* __restrict__ w, long long words,
                                        float* __restrict__ out) {
    __shared__ float scratch[32];
    pdl_wait();
    const long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.0f;
    for (; i + 3 * stride < words; i += 4 * stride) {
        const uint4 v0 = ld_weights_now(w + i), v1 = ld_weights_now(w + i + stride);
        const uint4 v2 = ld_weights_now(w + i + 2 * stride), v3 = ld_weights_now(w + i + 3 * stride);
        s += (fold(v0) + fold(v1)) + (fold(v2) + fold(v3));
    }
    for (; i < words; i += stride) s += fold(ld_weights_now(w + i));
    pdl_launch_dependents();
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// One block: `n` floats of `x` read, scaled by their root mean square into `y` (a norm's
// latency, none of its bytes worth counting).
extern "C" __global__ void probe_tiny(const float* __restrict__ x, int n, float* __restrict__ y) {
    __shared__ float scratch[32];
    pdl_wait();
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss, scratch);
    pdl_launch_dependents();
    const float k = rsqrtf(ss / (float)n + 1e-5f);
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = x[i] * k;
}
