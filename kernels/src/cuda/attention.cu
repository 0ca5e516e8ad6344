// Causal attention over the fp16 KV cache for multi-, grouped- and multi-head attention
// (`group` query heads share one K/V head).
//
// Decode (one new token) uses a split-K ("Flash-Decoding") scheme: the visible positions are
// cut into chunks of ATTN_CHUNK, one block per (query head, chunk) computes a partial softmax
// (its max, its sum and its weighted values), and the last block of each head to finish
// combines them. A model with a single K/V head and a long context still spreads over every
// SM, in one launch.
//
// Prefill (several new tokens) walks the keys in tiles with an online softmax: the score
// matrix is never materialised, only one tile of scores per (token, head) at a time.
#include "common.cuh"

#define ATTN_CHUNK 128
#define ATTN_THREADS 128
#define MAX_HEAD_DIM 256

// q · k for one cached key row (head_dim a multiple of 8, the row 16-byte aligned), q in
// shared memory; the products are summed in dimension order.
// kNc: through the read-only cache, for kernels that never write the cache they read (the
// fused decode step writes keys in the same launch, so it reads them coherently).
template <bool kNc = true>
__device__ __forceinline__ float key_dot(const float* qs, const f16_t* key, int head_dim) {
    const uint4* kr = (const uint4*)key;
    float acc = 0.0f;
#pragma unroll 4
    for (int d8 = 0; d8 < head_dim / 8; ++d8) {
        const uint4 k = kNc ? __ldg(kr + d8) : kr[d8];
        const float2 k0 = h2x2f(k.x), k1 = h2x2f(k.y), k2 = h2x2f(k.z), k3 = h2x2f(k.w);
        const float* qd = qs + 8 * d8;
        acc = fmaf(qd[0], k0.x, acc);
        acc = fmaf(qd[1], k0.y, acc);
        acc = fmaf(qd[2], k1.x, acc);
        acc = fmaf(qd[3], k1.y, acc);
        acc = fmaf(qd[4], k2.x, acc);
        acc = fmaf(qd[5], k2.y, acc);
        acc = fmaf(qd[6], k3.x, acc);
        acc = fmaf(qd[7], k3.y, acc);
    }
    return acc;
}

// part_o: [n_head][max_splits][head_dim]; part_ml: [n_head][max_splits][2] (max, sum);
// done: [n_head] counters, zero between launches. Grid (n_head, splits); chunks past the
// visible length do nothing, so one launch shape serves a range of positions and can be
// captured in a graph. The last chunk of a head to finish (counted with an atomic after a
// fence) combines every chunk's partial result into `out` and rearms the counter:
//   out[d] = Σ_s exp(m_s - M) o_s[d] / Σ_s exp(m_s - M) l_s.
//
// attn_decode_item is one block's work, chunk `split` of query head `h` for a sequence of `len`
// positions: the kernel runs it for (blockIdx.x, blockIdx.y), the fused decode step
// (decode.cu) for the items its persistent blocks take in turn. kStandalone: a kernel of its
// own (read-only-cache key loads, PDL trigger).
template <bool kStandalone>
__device__ __forceinline__ void attn_decode_item(const float* q, const f16_t* kcache, const f16_t* vcache,
                                                 float* part_o, float* part_ml, int* done, float* out, int len,
                                                 int h, int split, int group, int head_dim, int capacity,
                                                 int max_splits, float scale) {
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float sc[ATTN_CHUNK];
    __shared__ float scratch[32];
    __shared__ bool last;
    const int splits = (len + ATTN_CHUNK - 1) / ATTN_CHUNK;
    const int start = split * ATTN_CHUNK;
    if (start >= len) return;
    const int n = min(ATTN_CHUNK, len - start);
    const int kvh = h / group;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[h * head_dim + d];
    __syncthreads();
    const f16_t* kbase = kcache + ((size_t)kvh * capacity + start) * head_dim;
    // One thread per position (the whole chunk at once), its key row in 16-byte loads that
    // do not wait on each other.
    for (int p = threadIdx.x; p < n; p += blockDim.x)
        sc[p] = key_dot<kStandalone>(qs, kbase + (size_t)p * head_dim, head_dim) * scale;
    __syncthreads();
    float m = NEG_INF;
    for (int p = threadIdx.x; p < n; p += blockDim.x) m = fmaxf(m, sc[p]);
    m = block_max(m, scratch);
    float l = 0.0f;
    for (int p = threadIdx.x; p < n; p += blockDim.x) {
        const float e = expf(sc[p] - m);
        sc[p] = e;
        l += e;
    }
    l = block_sum(l, scratch);
    if (kStandalone) pdl_launch_dependents();
    const f16_t* vbase = vcache + ((size_t)kvh * capacity + start) * head_dim;
    if (splits == 1) {
        // A single chunk is the whole softmax: write the result directly.
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
            float o = 0.0f;
#pragma unroll 8
            for (int p = 0; p < n; ++p) o += sc[p] * h2f(vbase[(size_t)p * head_dim + d]);
            out[h * head_dim + d] = o / l;
        }
        return;
    }
    const size_t slot = (size_t)h * max_splits + split;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll 8
        for (int p = 0; p < n; ++p) o += sc[p] * h2f(vbase[(size_t)p * head_dim + d]);
        part_o[slot * head_dim + d] = o;
    }
    if (threadIdx.x == 0) {
        part_ml[slot * 2] = m;
        part_ml[slot * 2 + 1] = l;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&done[h], 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float* ml = part_ml + (size_t)h * max_splits * 2;
    float big = NEG_INF;
    for (int s = 0; s < splits; ++s) big = fmaxf(big, __ldcg(ml + 2 * s));
    float total = 0.0f;
    for (int s = 0; s < splits; ++s) total += __ldcg(ml + 2 * s + 1) * expf(__ldcg(ml + 2 * s) - big);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o = 0.0f;
        for (int s = 0; s < splits; ++s)
            o += __ldcg(part_o + ((size_t)h * max_splits + s) * head_dim + d) * expf(__ldcg(ml + 2 * s) - big);
        out[h * head_dim + d] = o / total;
    }
    if (threadIdx.x == 0) done[h] = 0;
}

extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
attn_decode(const float* __restrict__ q, const f16_t* __restrict__ kcache,
            const f16_t* __restrict__ vcache, float* __restrict__ part_o, float* __restrict__ part_ml,
            int* __restrict__ done, float* __restrict__ out, const int* __restrict__ pos0, int group,
            int head_dim, int capacity, int max_splits, float scale) {
    pdl_wait();
    attn_decode_item<true>(q, kcache, vcache, part_o, part_ml, done, out, *pos0 + 1, blockIdx.x, blockIdx.y,
                           group, head_dim, capacity, max_splits, scale);
}

// One block per (token, query head): token t sits at position *pos0 + t and sees positions
// 0..=that. Scores are made a tile of ATTN_THREADS keys at a time (one key per thread) and
// folded into a running max, sum and output (online softmax). Each thread owns output
// dimensions threadIdx.x and threadIdx.x + ATTN_THREADS.
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
attn_prefill(const float* __restrict__ qkv, int qkv_stride, const f16_t* __restrict__ kcache,
             const f16_t* __restrict__ vcache, float* __restrict__ out, int out_stride,
             const int* __restrict__ pos0, int group, int head_dim, int capacity, float scale) {
    pdl_wait();
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float sc[ATTN_THREADS];
    __shared__ float scratch[32];
    const int t = blockIdx.x, h = blockIdx.y;
    const int visible = *pos0 + t + 1;
    const int kvh = h / group;
    const float* q = qkv + (size_t)t * qkv_stride + h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[d];
    __syncthreads();
    const f16_t* kbase = kcache + (size_t)kvh * capacity * head_dim;
    const f16_t* vbase = vcache + (size_t)kvh * capacity * head_dim;
    const int d0 = threadIdx.x, d1 = threadIdx.x + ATTN_THREADS;
    float m = NEG_INF, l = 0.0f, acc0 = 0.0f, acc1 = 0.0f;
    for (int tile = 0; tile < visible; tile += ATTN_THREADS) {
        const int p = tile + threadIdx.x;
        float s = NEG_INF;
        if (p < visible) s = key_dot(qs, kbase + (size_t)p * head_dim, head_dim) * scale;
        const float tile_max = block_max(s, scratch);
        const float new_m = fmaxf(m, tile_max);
        const float e = p < visible ? expf(s - new_m) : 0.0f;
        sc[threadIdx.x] = e;
        const float tile_sum = block_sum(e, scratch);  // its barriers publish sc
        const float corr = expf(m - new_m);
        l = l * corr + tile_sum;
        acc0 *= corr;
        acc1 *= corr;
        const int n = min(ATTN_THREADS, visible - tile);
#pragma unroll 4
        for (int j = 0; j < n; ++j) {
            const f16_t* vr = vbase + (size_t)(tile + j) * head_dim;
            const float w = sc[j];
            if (d0 < head_dim) acc0 += w * h2f(vr[d0]);
            if (d1 < head_dim) acc1 += w * h2f(vr[d1]);
        }
        m = new_m;
        __syncthreads();  // sc is rewritten by the next tile
    }
    pdl_launch_dependents();
    float* o = out + (size_t)t * out_stride + h * head_dim;
    if (d0 < head_dim) o[d0] = acc0 / l;
    if (d1 < head_dim) o[d1] = acc1 / l;
}
