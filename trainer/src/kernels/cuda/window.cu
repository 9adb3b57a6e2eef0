// Uformer's window partition with its cyclic shift, and the window reverse that undoes both,
// as one permuting copy each (kernels/window.rs has the CPU version and the layouts), for
// float32 and bfloat16 (a copy: the bits move unchanged). Compiled to PTX by trainer/build.rs
// with the `cuda` feature; launched from kernels/cuda/window.rs. Grid-stride loops without
// shared memory, so that the tests can also run this file as C++.
//
// Image (B, H*W, C), pixels row-major; windows (B*nW, win*win, C). Window token (ty, tx) of
// window (wy, wx) is the pixel ((wy*win + ty + s) mod H, (wx*win + tx + s) mod W). Also, float32
// only: the reverse with the LeWin block's residual added, `x + scale[b] * reverse(windows)`,
// and its windows' gradient, `partition(dy * scale[b])` (scale[b]: image b's stochastic-depth
// scale, 1 without), each product and sum rounded one at a time as the composed version's ops
// round them.
#include <stdint.h>

#include "dtype.cuh"

// The source row of destination row r: partition (reverse == 0) or reverse.
__device__ __forceinline__ int64_t window_source_row(int64_t r, int win, int s, int H, int W,
                                                     int reverse) {
    const int64_t nh = H / win, nw = W / win, n = (int64_t)win * win;
    if (reverse) {
        const int64_t b = r / ((int64_t)H * W);
        int64_t y = (r / W) % H, x = r % W;
        y = (y + H - s % H) % H;
        x = (x + W - s % W) % W;
        return ((b * nh + y / win) * nw + x / win) * n + (y % win) * win + x % win;
    }
    const int64_t t = r % n, bw = r / n;
    const int64_t b = bw / (nh * nw), wy = (bw % (nh * nw)) / nw, wx = bw % nw;
    const int64_t y = (wy * win + t / win + s) % H;
    const int64_t x = (wx * win + t % win + s) % W;
    return (b * H + y) * W + x;
}

// One thread per element.
template <typename T>
__device__ void window_shuffle(const T* x, T* out, int64_t total, int64_t C, int win, int s,
                               int H, int W, int reverse) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / C, ch = e % C;
        out[e] = x[window_source_row(r, win, s, H, W, reverse) * C + ch];
    }
}

extern "C" __global__ void ifp_window_f32(const float* x, float* out, int64_t total, int64_t C,
                                          int win, int s, int H, int W, int reverse) {
    window_shuffle(x, out, total, C, win, s, H, W, reverse);
}
extern "C" __global__ void ifp_window_bf16(const __nv_bfloat16* x, __nv_bfloat16* out,
                                           int64_t total, int64_t C, int win, int s, int H,
                                           int W, int reverse) {
    window_shuffle(x, out, total, C, win, s, H, W, reverse);
}

// out = x + scale[b] * reverse(windows), one thread per element.
extern "C" __global__ void ifp_window_reverse_add_f32(const float* windows, const float* x,
                                                      const float* scale, float* out,
                                                      int64_t total, int64_t C, int win, int s,
                                                      int H, int W) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / C, ch = e % C;
        const float v = windows[window_source_row(r, win, s, H, W, 1) * C + ch];
        out[e] = __fadd_rn(x[e], __fmul_rn(v, scale[r / ((int64_t)H * W)]));
    }
}

// out = partition(dy * scale[b]), one thread per element (b: the image of the source row).
extern "C" __global__ void ifp_window_partition_scaled_f32(const float* dy, const float* scale,
                                                           float* out, int64_t total, int64_t C,
                                                           int win, int s, int H, int W) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = e / C, ch = e % C;
        const int64_t src = window_source_row(r, win, s, H, W, 0);
        out[e] = __fmul_rn(dy[src * C + ch], scale[src / ((int64_t)H * W)]);
    }
}
