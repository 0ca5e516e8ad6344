// Shared by every agentrt kernel: fp16 conversions, warp and block reductions.
//
// Compiled by NVRTC at run time with no CUDA headers on the include path, so fp16 values are
// plain `unsigned short` bit patterns converted with the PTX cvt instructions (round to nearest
// even, as cuda_fp16.h's __float2half_rn does). Storage is fp16, arithmetic fp32 throughout.
#pragma once

// -infinity without math.h.
#define NEG_INF __int_as_float(0xff800000)

typedef unsigned short f16_t;

__device__ __forceinline__ float h2f(f16_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ f16_t f2h(float f) {
    f16_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Two fp16 values packed in one 32-bit word, low half first (memory order).
__device__ __forceinline__ float2 h2x2f(unsigned int w) {
    return make_float2(h2f((f16_t)(w & 0xffffu)), h2f((f16_t)(w >> 16)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// `scratch` holds 32 floats; the trailing barrier lets callers reuse it at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float t = lane < warps ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    __syncthreads();
    return t;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    float t = lane < warps ? scratch[lane] : NEG_INF;
    t = warp_max(t);
    __syncthreads();
    return t;
}

// A 16-byte streaming load of read-only data (weights) that does not allocate in L1, issued
// where it is written: the compiler may not move it (plain asm may sink to its first use, which
// would undo a load meant to overlap a barrier or to be timed).
__device__ __forceinline__ uint4 ld_weights_now(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

// Programmatic dependent launch (Hopper and later; no-ops before). A kernel launched with the
// programmatic-serialisation attribute may start while the previous kernel of its stream is
// still running: pdl_wait() blocks until that kernel has finished and its writes are visible,
// so every kernel calls it first; pdl_launch_dependents() lets the next kernel begin launching
// once every block has called it (or exited). Kernels call it after their main work, so the
// next kernel's launch overlaps only their tail, not their whole run.
__device__ __forceinline__ void pdl_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
