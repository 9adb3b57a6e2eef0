// Lets a CUDA kernel's source compile as plain C++ for the CPU, so the tests can run it one
// emulated thread at a time (cuda_emul/mod.rs). Only for kernels written as grid-stride loops:
// no shared memory, no barriers, no warp functions. Force-included (g++ -include) before the
// kernel's source; this folder also stands in for <cuda_bf16.h>.
#pragma once
#include <cmath>
#include <cstdint>

#define __global__
#define __device__
#define __forceinline__ inline

struct ifp_emul_dim3 {
    unsigned x, y, z;
};
// One translation unit per shared library: the kernel's source and this header.
ifp_emul_dim3 blockIdx, threadIdx, blockDim, gridDim;

// Which thread the next call of a kernel is: block `block` of `grid`, thread `thread` of
// `block_dim`, all along x.
extern "C" void ifp_emul_set(unsigned block, unsigned thread, unsigned block_dim, unsigned grid) {
    blockIdx = {block, 0, 0};
    threadIdx = {thread, 0, 0};
    blockDim = {block_dim, 1, 1};
    gridDim = {grid, 1, 1};
}

// The correctly rounded float intrinsics; compiled with -ffp-contract=off, so nothing else
// fuses a product and a sum either.
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
