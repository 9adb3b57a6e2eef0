// The im2col gather of a "same" k x k convolution (stride 1, zero padding k/2) and its adjoint,
// col2im, for float32 and bfloat16 (kernels/conv.rs has the CPU version and the layout).
// Compiled to PTX by trainer/build.rs with the `cuda` feature; launched from kernels/cuda.rs.
// Grid-stride loops without shared memory, so that the tests can also run this file as C++.
//
// Layouts, contiguous: x (B, C, H, W); cols (B, C*k*k, H*W), row c*k*k + i*k + j holding the
// plane of channel c shifted by (i - k/2, j - k/2), zero outside.
#include <stdint.h>

#include "dtype.cuh"

// One thread per column element.
template <typename T>
__device__ void im2col(const T* x, T* cols, int64_t total, int C, int H, int W, int k) {
    const int64_t hw = (int64_t)H * W;
    const int kk = k * k, p = k / 2;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t pix = e % hw;
        const int64_t row = (e / hw) % ((int64_t)C * kk);
        const int64_t bi = e / (hw * C * kk);
        const int c = (int)(row / kk), t = (int)(row % kk);
        const int y = (int)(pix / W) + t / k - p;
        const int xx = (int)(pix % W) + t % k - p;
        cols[e] = (y < 0 || y >= H || xx < 0 || xx >= W)
                      ? from_f<T>(0.0f)
                      : x[((bi * C + c) * H + y) * W + xx];
    }
}

// One thread per input element: the sum of the k*k column entries it was copied to, taps in
// order (i, j), as the CPU adds them.
template <typename T>
__device__ void col2im(const T* cols, T* out, int64_t total, int C, int H, int W, int k) {
    const int64_t hw = (int64_t)H * W;
    const int kk = k * k, p = k / 2;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int xx = (int)(e % W);
        const int y = (int)((e / W) % H);
        const int64_t plane = e / hw;  // bi * C + c
        const T* rows = cols + plane * kk * hw;
        float acc = 0.0f;
        for (int i = 0; i < k; ++i) {
            const int sy = y - (i - p);
            if (sy < 0 || sy >= H) continue;
            for (int j = 0; j < k; ++j) {
                const int sx = xx - (j - p);
                if (sx < 0 || sx >= W) continue;
                acc += to_f(rows[(int64_t)(i * k + j) * hw + (int64_t)sy * W + sx]);
            }
        }
        out[e] = from_f<T>(acc);
    }
}

extern "C" __global__ void ifp_im2col_f32(const float* x, float* cols, int64_t total, int C,
                                          int H, int W, int k) {
    im2col(x, cols, total, C, H, W, k);
}
extern "C" __global__ void ifp_im2col_bf16(const __nv_bfloat16* x, __nv_bfloat16* cols,
                                           int64_t total, int C, int H, int W, int k) {
    im2col(x, cols, total, C, H, W, k);
}
extern "C" __global__ void ifp_col2im_f32(const float* cols, float* out, int64_t total, int C,
                                          int H, int W, int k) {
    col2im(cols, out, total, C, H, W, k);
}
extern "C" __global__ void ifp_col2im_bf16(const __nv_bfloat16* cols, __nv_bfloat16* out,
                                           int64_t total, int C, int H, int W, int k) {
    col2im(cols, out, total, C, H, W, k);
}
