// The gate of Restormer's GDFN, y = gelu(x1) * x2 over the two channel halves of x, and its
// gradient, for float32 and bfloat16 tensors, computed in float32 (kernels/gate.rs has the CPU
// version and the formulas). Compiled to PTX by trainer/build.rs with the `cuda` feature;
// launched from kernels/cuda.rs.
//
// Layouts, contiguous: x and dx (B, 2h, H, W); y and dy (B, h, H, W). `half` = h * H * W.
#include <stdint.h>

#include "dtype.cuh"

// The normal CDF 0.5 (1 + erf(x / sqrt 2)).
__device__ __forceinline__ float cdf(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f));
}

// One thread per output element e = (image, offset within a half).
template <typename T>
__device__ void gate_fwd(const T* x, T* y, int64_t total, int64_t half) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = e / half;
        const int64_t at = b * 2 * half + (e - b * half);
        const float a = to_f(x[at]);
        y[e] = from_f<T>(a * cdf(a) * to_f(x[at + half]));
    }
}

// dx1 = dy x2 (Phi(x1) + x1 phi(x1)), dx2 = dy gelu(x1): one thread per output-gradient element.
template <typename T>
__device__ void gate_bwd(const T* x, const T* dy, T* dx, int64_t total, int64_t half) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = e / half;
        const int64_t at = b * 2 * half + (e - b * half);
        const float a = to_f(x[at]);
        const float v = to_f(x[at + half]);
        const float g = to_f(dy[e]);
        const float phi = cdf(a);
        const float pdf = 0.3989422804014327f * expf(-0.5f * a * a);
        dx[at] = from_f<T>(g * v * (phi + a * pdf));
        dx[at + half] = from_f<T>(g * a * phi);
    }
}

extern "C" __global__ void ifp_gate_fwd_f32(const float* x, float* y, int64_t total, int64_t half) {
    gate_fwd(x, y, total, half);
}
extern "C" __global__ void ifp_gate_fwd_bf16(const __nv_bfloat16* x, __nv_bfloat16* y,
                                             int64_t total, int64_t half) {
    gate_fwd(x, y, total, half);
}
extern "C" __global__ void ifp_gate_bwd_f32(const float* x, const float* dy, float* dx,
                                            int64_t total, int64_t half) {
    gate_bwd(x, dy, dx, total, half);
}
extern "C" __global__ void ifp_gate_bwd_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                             __nv_bfloat16* dx, int64_t total, int64_t half) {
    gate_bwd(x, dy, dx, total, half);
}
