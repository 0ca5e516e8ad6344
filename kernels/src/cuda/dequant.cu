// Weights to fp16 at load: GGUF Q4_0 / Q4_1 / Q8_0 blocks (32 weights each), BF16 and F32.
// One thread per block of 32 (or per element for the float formats); the arithmetic is the
// CPU engine's dequantize_row, rounded once to fp16 at the end.
#include "common.cuh"

__device__ __forceinline__ float read_f16(const unsigned char* p) {
    return h2f((f16_t)(p[0] | (p[1] << 8)));
}

// kind: 0 = Q4_0 (18-byte blocks), 1 = Q4_1 (20), 2 = Q8_0 (34).
extern "C" __global__ void dequant_blocks(const unsigned char* __restrict__ src, f16_t* __restrict__ dst,
                                          long long n_blocks, int kind) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    f16_t* o = dst + b * 32;
    if (kind == 0) {
        const unsigned char* blk = src + b * 18;
        const float d = read_f16(blk);
        for (int j = 0; j < 16; ++j) {
            o[j] = f2h((float)((int)(blk[2 + j] & 0x0F) - 8) * d);
            o[j + 16] = f2h((float)((int)(blk[2 + j] >> 4) - 8) * d);
        }
    } else if (kind == 1) {
        const unsigned char* blk = src + b * 20;
        const float d = read_f16(blk), m = read_f16(blk + 2);
        for (int j = 0; j < 16; ++j) {
            o[j] = f2h((float)(blk[4 + j] & 0x0F) * d + m);
            o[j + 16] = f2h((float)(blk[4 + j] >> 4) * d + m);
        }
    } else {
        const unsigned char* blk = src + b * 34;
        const float d = read_f16(blk);
        for (int j = 0; j < 32; ++j) o[j] = f2h((float)(signed char)blk[2 + j] * d);
    }
}

extern "C" __global__ void bf16_to_f16(const unsigned short* __restrict__ src, f16_t* __restrict__ dst,
                                       long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f2h(__int_as_float((int)src[i] << 16));
}

extern "C" __global__ void f32_to_f16(const float* __restrict__ src, f16_t* __restrict__ dst, long long n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = f2h(src[i]);
}
