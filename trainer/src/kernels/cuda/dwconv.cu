// Uformer's LeFF depthwise "same" convolution on tokens, channels last, float32: the forward
// pass with its bias and optionally the exact GELU, the input gradient (the same convolution
// of the output gradient with the taps mirrored), and the weight and bias gradients from
// fixed-order partial sums (deterministic). Compiled to PTX by trainer/build.rs with the `cuda`
// feature; launched from kernels/cuda/dwconv.rs. Grid-stride loops without shared memory, so
// that the tests can also run this file as C++ on a CPU.
//
// Layouts, contiguous: x, y, dy (B, H*W, C), tokens in rows of W pixels; weight (C, 1, k, k),
// k odd; bias (C). One thread per output value (channels fastest, so a warp reads adjacent
// channels of one pixel).
#include <math.h>
#include <stdint.h>

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

// y = bias + sum over taps of weight * shifted x, then x Phi(x) where gelu is 1. mirror = 1
// reads the taps mirrored and drops the bias (the input gradient; bias is then not read).
extern "C" __global__ void ifp_tdw_apply_f32(const float* x, const float* w, const float* bias,
                                             float* y, int64_t n, int H, int W, int C, int k,
                                             int mirror, int gelu) {
    const int p = k / 2, kk = k * k;
    GRID_STRIDE(e, n) {
        const int c = (int)(e % C);
        const int64_t pix = e / C;
        const int j = (int)(pix % W);
        const int i = (int)((pix / W) % H);
        const float* img = x + (pix - (int64_t)i * W - j) * C;  // this image's first token
        const float* wc = w + (int64_t)c * kk;
        float acc = mirror ? 0.0f : bias[c];
        for (int a = 0; a < k; ++a) {
            const int yy = i + a - p;
            if (yy < 0 || yy >= H) continue;
            for (int b = 0; b < k; ++b) {
                const int xx = j + b - p;
                if (xx < 0 || xx >= W) continue;
                const float t = mirror ? wc[kk - 1 - (a * k + b)] : wc[a * k + b];
                acc += t * img[((int64_t)yy * W + xx) * C + c];
            }
        }
        y[e] = gelu ? 0.5f * acc * (1.0f + erff(acc * 0.70710678118654752f)) : acc;
    }
}

// Partial sums of the weight and bias gradients: thread t = j * (k*k + 1) * C + u adds, over
// the image rows r = j, j + J, j + 2J, ... (B*H rows in all), dy times the tap's shifted x
// (u = tap * C + c, tap < k*k) or dy alone (u = k*k * C + c, the bias), in double. It writes
// its sum where the reduction's output wants it: partial[j * K + c * k*k + tap] for a tap,
// partial[j * K + k*k * C + c] for the bias, K = (k*k + 1) C. Channels vary fastest across
// threads, so their reads are adjacent.
extern "C" __global__ void ifp_tdw_params_partial_f32(const float* x, const float* dy,
                                                      double* partial, int64_t rows, int H,
                                                      int W, int C, int k, int J) {
    const int p = k / 2, kk = k * k;
    const int64_t K = (int64_t)(kk + 1) * C;
    GRID_STRIDE(t, (int64_t)J * K) {
        const int j = (int)(t / K);
        const int64_t u = t - (int64_t)j * K;
        const int tap = (int)(u / C), c = (int)(u - (int64_t)tap * C);
        const int a = tap / k, b = tap - (tap / k) * k;
        double s = 0.0;
        for (int64_t r = j; r < rows; r += J) {
            const int i = (int)(r % H);
            const float* g = dy + r * W * C;
            if (tap == kk) {
                for (int q = 0; q < W; ++q) s += (double)g[(int64_t)q * C + c];
                continue;
            }
            const int yy = i + a - p;
            if (yy < 0 || yy >= H) continue;
            const float* src = x + (r - i + yy) * W * C;
            for (int q = 0; q < W; ++q) {
                const int xx = q + b - p;
                if (xx < 0 || xx >= W) continue;
                s += (double)(g[(int64_t)q * C + c] * src[(int64_t)xx * C + c]);
            }
        }
        const int64_t at = tap == kk ? (int64_t)kk * C + c : (int64_t)c * kk + tap;
        partial[(int64_t)j * K + at] = s;
    }
}
