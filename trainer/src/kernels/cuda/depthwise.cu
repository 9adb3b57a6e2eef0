// Depthwise "same" k x k convolution (stride 1, zero padding k/2) and its two gradients, for
// float32 and bfloat16 tensors, accumulating in float32 (as cuDNN does). Compiled to PTX by
// trainer/build.rs with the `cuda` feature; launched from kernels/cuda.rs.
//
// Layouts: x, y, g (B, C, H, W) contiguous; w (C, 1, k, k) contiguous.
#include <stdint.h>

#include "dtype.cuh"

// y[n,c,i,j] = sum_{a,b} w[c,a,b] * x[n,c,i+s*(a-p),j+s*(b-p)] with s = 1 (forward) or s = -1
// (the input gradient: the same sum with the taps mirrored). One thread per output element.
template <typename T>
__device__ void dw_apply(const T* x, const T* w, T* y, int64_t total, int C, int H, int W, int k,
                         int s) {
    const int p = k / 2;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int j = (int)(e % W);
        const int i = (int)((e / W) % H);
        const int64_t plane = e / ((int64_t)H * W);
        const int c = (int)(plane % C);
        const T* xp = x + plane * H * W;
        const T* wc = w + (int64_t)c * k * k;
        float acc = 0.f;
        for (int a = 0; a < k; ++a) {
            const int yy = i + s * (a - p);
            if (yy < 0 || yy >= H) continue;
            for (int b = 0; b < k; ++b) {
                const int xx = j + s * (b - p);
                if (xx < 0 || xx >= W) continue;
                acc += to_f(wc[a * k + b]) * to_f(xp[yy * W + xx]);
            }
        }
        y[e] = from_f<T>(acc);
    }
}

// Partial weight gradients: block (c, chunk) sums g[n,c,i,j] * x[n,c,i+a-p,j+b-p] over its
// chunk of the B*H*W positions of channel c, for every tap, into part[(c*chunks + chunk)*kk + t].
// Up to 7x7 taps. A second kernel adds the chunks in a fixed order (deterministic, no atomics).
#define DW_MAX_TAPS 49
#define DW_THREADS 256
template <typename T>
__device__ void dw_weight_partial(const T* x, const T* g, float* part, int B, int C, int H, int W,
                                  int k, int chunks) {
    const int p = k / 2, kk = k * k;
    const int c = blockIdx.x, chunk = blockIdx.y;
    const int64_t hw = (int64_t)H * W, n_pos = (int64_t)B * hw;
    const int64_t per = (n_pos + chunks - 1) / chunks;
    const int64_t lo = chunk * per, hi = min(n_pos, lo + per);
    float acc[DW_MAX_TAPS];
    for (int t = 0; t < kk; ++t) acc[t] = 0.f;
    for (int64_t q = lo + threadIdx.x; q < hi; q += blockDim.x) {
        const int n = (int)(q / hw);
        const int64_t r = q % hw;
        const int i = (int)(r / W), j = (int)(r % W);
        const int64_t off = ((int64_t)n * C + c) * hw;
        const float gv = to_f(g[off + r]);
        for (int a = 0; a < k; ++a) {
            const int yy = i + a - p;
            if (yy < 0 || yy >= H) continue;
            for (int b = 0; b < k; ++b) {
                const int xx = j + b - p;
                if (xx < 0 || xx >= W) continue;
                acc[a * k + b] += gv * to_f(x[off + yy * W + xx]);
            }
        }
    }
    __shared__ float red[DW_THREADS];
    for (int t = 0; t < kk; ++t) {
        red[threadIdx.x] = acc[t];
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
            __syncthreads();
        }
        if (threadIdx.x == 0) part[((int64_t)c * chunks + chunk) * kk + t] = red[0];
        __syncthreads();
    }
}

template <typename T>
__device__ void dw_weight_reduce(const float* part, T* gw, int C, int kk, int chunks) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= C * kk) return;
    const int c = e / kk, t = e % kk;
    float acc = 0.f;
    for (int q = 0; q < chunks; ++q) acc += part[((int64_t)c * chunks + q) * kk + t];
    gw[e] = from_f<T>(acc);
}

#define DW_INSTANTIATE(T, SUFFIX)                                                                  \
    extern "C" __global__ void ifp_dw_apply_##SUFFIX(const T* x, const T* w, T* y, int64_t total, \
                                                     int C, int H, int W, int k, int s) {          \
        dw_apply<T>(x, w, y, total, C, H, W, k, s);                                                \
    }                                                                                              \
    extern "C" __global__ void ifp_dw_weight_partial_##SUFFIX(                                     \
        const T* x, const T* g, float* part, int B, int C, int H, int W, int k, int chunks) {      \
        dw_weight_partial<T>(x, g, part, B, C, H, W, k, chunks);                                   \
    }                                                                                              \
    extern "C" __global__ void ifp_dw_weight_reduce_##SUFFIX(const float* part, T* gw, int C,      \
                                                             int kk, int chunks) {                 \
        dw_weight_reduce<T>(part, gw, C, kk, chunks);                                              \
    }

DW_INSTANTIATE(float, f32)
DW_INSTANTIATE(__nv_bfloat16, bf16)
