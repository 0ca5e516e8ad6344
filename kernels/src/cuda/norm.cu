// RMSNorm (Llama) and LayerNorm (GPT-BigCode) of fp32 rows, one 1024-thread block per row.
// Each thread keeps its few values in registers, so the row is read once and written once;
// the arithmetic is the CPU engine's (divide by the root, biased variance, two passes).
#include "common.cuh"

#define NORM_THREADS 1024
#define NORM_PER_THREAD 16  // rows up to 16384 wide

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
row_norm(const float* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
     float* __restrict__ out, int dim, float eps, int layer_norm) {
    pdl_wait();
    __shared__ float scratch[32];
    const float* xr = x + (size_t)blockIdx.x * dim;
    float* o = out + (size_t)blockIdx.x * dim;
    float v[NORM_PER_THREAD];
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int c = threadIdx.x + k * NORM_THREADS;
        v[k] = c < dim ? xr[c] : 0.0f;
        s += v[k];
    }
    const float mean = layer_norm ? block_sum(s, scratch) / (float)dim : 0.0f;
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int c = threadIdx.x + k * NORM_THREADS;
        const float d = c < dim ? v[k] - mean : 0.0f;
        ss += d * d;
    }
    const float sd = sqrtf(block_sum(ss, scratch) / (float)dim + eps);
    pdl_launch_dependents();
#pragma unroll
    for (int k = 0; k < NORM_PER_THREAD; ++k) {
        const int c = threadIdx.x + k * NORM_THREADS;
        if (c < dim) o[c] = layer_norm ? (v[k] - mean) / sd * weight[c] + bias[c] : v[k] / sd * weight[c];
    }
}
