// Rotary embeddings fused with the KV-cache write: one pass over a token's fresh Q/K/V row
// rotates the query heads in place, rotates the key heads and stores them, and stores the
// values. GPT-BigCode (learned positions) uses it with rotation off, as the cache write alone.
//
// Cache layout per layer: [kv_head][capacity][head_dim] in fp16, so decode attention reads
// each cached key or value row with contiguous loads.
#include "common.cuh"

// rope: 0 = none, 1 = interleaved pairs (2i, 2i+1) (GGUF Llama), 2 = half-split (i, i + d/2) (HF).
// inv_freq[i] = base^(-2i/d), computed once on the host exactly as the CPU engine does.
extern "C" __global__ void rope_store_kv(float* __restrict__ qkv, int qkv_stride,
                                         f16_t* __restrict__ kcache, f16_t* __restrict__ vcache,
                                         const int* __restrict__ pos0, const float* __restrict__ inv_freq,
                                         int n_head, int n_kv_head, int head_dim, int capacity, int rope) {
    const int t = blockIdx.x;
    const int pos = *pos0 + t;
    float* row = qkv + (size_t)t * qkv_stride;
    const int half = head_dim / 2;
    const int q_dim = n_head * head_dim, kv_dim = n_kv_head * head_dim;
    const float fpos = (float)pos;
    if (rope != 0) {
        for (int idx = threadIdx.x; idx < n_head * half; idx += blockDim.x) {
            const int h = idx / half, i = idx % half;
            const int ia = rope == 1 ? 2 * i : i, ib = rope == 1 ? 2 * i + 1 : i + half;
            float s, c;
            sincosf(fpos * inv_freq[i], &s, &c);
            float* head = row + h * head_dim;
            const float a = head[ia], b = head[ib];
            head[ia] = a * c - b * s;
            head[ib] = a * s + b * c;
        }
    }
    for (int idx = threadIdx.x; idx < n_kv_head * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        const int ia = rope == 2 ? i : 2 * i, ib = rope == 2 ? i + half : 2 * i + 1;
        const float* head = row + q_dim + h * head_dim;
        float a = head[ia], b = head[ib];
        if (rope != 0) {
            float s, c;
            sincosf(fpos * inv_freq[i], &s, &c);
            const float ra = a * c - b * s, rb = a * s + b * c;
            a = ra;
            b = rb;
        }
        f16_t* dst = kcache + ((size_t)h * capacity + pos) * head_dim;
        dst[ia] = f2h(a);
        dst[ib] = f2h(b);
    }
    for (int idx = threadIdx.x; idx < kv_dim; idx += blockDim.x) {
        const int h = idx / head_dim, d = idx % head_dim;
        vcache[((size_t)h * capacity + pos) * head_dim + d] = f2h(row[q_dim + kv_dim + idx]);
    }
}
