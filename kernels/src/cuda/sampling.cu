// Next-token choice on the device, so a decode step returns 4 bytes instead of the logits:
// the repeat penalty, greedy argmax, and top-k / top-p sampling over the best SAMPLE_MAX_K
// candidates with the same rules (and order of operations) as the CPU sampler.
#include "common.cuh"

#define SAMPLE_THREADS 1024
#define SAMPLE_MAX_K 64

// llama.cpp's rule, as the CPU sampler: divide positive logits, multiply negative ones.
// `tokens` holds distinct ids (the host removes repeats).
extern "C" __global__ void repeat_penalty(float* logits, const int* __restrict__ tokens, int n, int vocab,
                                          float penalty) {
    pdl_wait();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int t = tokens[i];
    if (t < 0 || t >= vocab) return;
    const float l = logits[t];
    logits[t] = l > 0.0f ? l / penalty : l * penalty;
}

// Is (v, i) ahead of (bv, bi) in the order "larger value first, then smaller index"?
__device__ __forceinline__ bool ahead(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

// The best (value, index) over the block among elements strictly behind (after_v, after_i).
__device__ void block_best(const float* v, int n, float after_v, int after_i, float* sv, int* si,
                           float* out_v, int* out_i) {
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = v[i];
        if (ahead(after_v, after_i, x, i) && ahead(x, i, bv, bi)) {
            bv = x;
            bi = i;
        }
    }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && ahead(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
            sv[threadIdx.x] = sv[threadIdx.x + s];
            si[threadIdx.x] = si[threadIdx.x + s];
        }
        __syncthreads();
    }
    *out_v = sv[0];
    *out_i = si[0];
    __syncthreads();
}

// Index of the largest logit, the first on ties (as the CPU's argmax). One block.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) argmax(const float* __restrict__ logits, int n,
                                                                    int* __restrict__ out) {
    pdl_wait();
    __shared__ float sv[SAMPLE_THREADS];
    __shared__ int si[SAMPLE_THREADS];
    float v;
    int i;
    block_best(logits, n, __int_as_float(0x7f800000), -1, sv, si, &v, &i);
    if (threadIdx.x == 0) *out = i;
}

// Temperature, top-k, top-p, then a draw with `uniform` in [0, 1). One block.
// Candidates are the best min(top_k, SAMPLE_MAX_K) logits (top_k = 0: SAMPLE_MAX_K) in order;
// probabilities are normalised over the whole vocabulary when top_k is 0 (as on the CPU).
// Writes -1 when top_k is 0 and the SAMPLE_MAX_K best do not reach top_p, or when top_k asks
// for more candidates than SAMPLE_MAX_K (and fewer than n): the caller then samples on the host
// from the full distribution.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_top(const float* __restrict__ logits, int n, float temperature, int top_k, float top_p,
           float uniform, int* __restrict__ out) {
    pdl_wait();
    // A cut at n or beyond is no cut; one this block cannot hold is the host's to make.
    if (top_k >= n) top_k = 0;
    if (top_k > SAMPLE_MAX_K) {
        if (threadIdx.x == 0) *out = -1;
        return;
    }
    __shared__ float sv[SAMPLE_THREADS];
    __shared__ int si[SAMPLE_THREADS];
    __shared__ float cand_v[SAMPLE_MAX_K];
    __shared__ int cand_i[SAMPLE_MAX_K];
    __shared__ float scratch[32];
    const int k = top_k <= 0 ? min(SAMPLE_MAX_K, n) : min(top_k, n);
    float after_v = __int_as_float(0x7f800000);
    int after_i = -1;
    for (int c = 0; c < k; ++c) {
        float v;
        int i;
        block_best(logits, n, after_v, after_i, sv, si, &v, &i);
        if (threadIdx.x == 0) {
            cand_v[c] = v / temperature;
            cand_i[c] = i;
        }
        after_v = v;
        after_i = i;
    }
    __syncthreads();
    const float top = cand_v[0];
    float total = 0.0f;
    if (top_k <= 0) {
        // Mass of the whole vocabulary, so top-p cuts where the CPU sampler would.
        float s = 0.0f;
        for (int i = threadIdx.x; i < n; i += blockDim.x) s += expf(logits[i] / temperature - top);
        total = block_sum(s, scratch);
    }
    if (threadIdx.x != 0) return;
    float p[SAMPLE_MAX_K];
    if (top_k > 0) {
        for (int c = 0; c < k; ++c) total += expf(cand_v[c] - top);
    }
    float cumulative = 0.0f;
    int keep = -1;
    for (int c = 0; c < k; ++c) {
        p[c] = expf(cand_v[c] - top) / total;
        cumulative += p[c];
        if (cumulative >= top_p) {
            keep = c + 1;
            break;
        }
    }
    if (keep < 0) {
        if (top_k <= 0 && k < n) {
            *out = -1;
            return;
        }
        keep = k;
    }
    float mass = 0.0f;
    for (int c = 0; c < keep; ++c) mass += p[c];
    float r = uniform * mass;
    for (int c = 0; c < keep; ++c) {
        r -= p[c];
        if (r <= 0.0f) {
            *out = cand_i[c];
            return;
        }
    }
    *out = cand_i[keep - 1];
}
