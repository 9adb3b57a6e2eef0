// Restormer's channel LayerNorm of x (B, C, H, W) over C, float32, and its gradients, in the
// CPU kernel's order of operations (kernels/norm.rs has the formulas). Compiled to PTX by
// trainer/build.rs with the `cuda` feature; launched from kernels/cuda/norm.rs. Grid-stride
// loops without shared memory, so that the tests can also run this file as C++ on a CPU.
//
// Layouts, contiguous: x, y, dy (B, C, HW); w, b (C); mean, rstd (B, HW), one per pixel.
#include <stdint.h>

#define IFP_EPS 1e-5f

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

// Per pixel q = (image, p): the mean over channels and 1 / sqrt(variance + eps), two-pass.
extern "C" __global__ void ifp_cln_stats_f32(const float* x, float* mean, float* rstd, int64_t B,
                                             int C, int64_t HW) {
    GRID_STRIDE(q, B * HW) {
        const int64_t bi = q / HW, p = q - bi * HW;
        const float* xp = x + bi * C * HW + p;
        float s = 0.0f;
        for (int c = 0; c < C; ++c) s += xp[c * HW];
        const float mu = s / (float)C;
        float v = 0.0f;
        for (int c = 0; c < C; ++c) {
            const float d = xp[c * HW] - mu;
            v = __fadd_rn(v, __fmul_rn(d, d));
        }
        mean[q] = mu;
        rstd[q] = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(v / (float)C, IFP_EPS)));
    }
}

// y = (x - mu) r w + b (with_bias) or x r w, one thread per element.
extern "C" __global__ void ifp_cln_apply_f32(const float* x, const float* w, const float* b,
                                             const float* mean, const float* rstd, float* y,
                                             int64_t B, int C, int64_t HW, int with_bias) {
    GRID_STRIDE(e, B * C * HW) {
        const int64_t p = e % HW, plane = e / HW;
        const int c = (int)(plane % C);
        const int64_t q = (plane / C) * HW + p;
        const float r = rstd[q];
        y[e] = with_bias ? __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x[e], mean[q]), r), w[c]), b[c])
                         : __fmul_rn(__fmul_rn(x[e], r), w[c]);
    }
}

// dx into out[0 .. B*C*HW), one thread per pixel: with g = dy w, k1 = mean_c(g) and
// k2 = mean_c(g xhat) (with_bias) or mean_c(g x), then dx = r (g - k1 - xc r k2) or
// r (g - xc r r k2), xc = x - mu.
extern "C" __global__ void ifp_cln_dx_f32(const float* x, const float* w, const float* dy,
                                          const float* mean, const float* rstd, float* out,
                                          int64_t B, int C, int64_t HW, int with_bias) {
    GRID_STRIDE(q, B * HW) {
        const int64_t bi = q / HW, p = q - bi * HW;
        const int64_t at = bi * C * HW + p;
        const float m = mean[q], r = rstd[q];
        float k1 = 0.0f, k2 = 0.0f;
        for (int c = 0; c < C; ++c) {
            const float x_ = x[at + c * HW];
            const float g = __fmul_rn(dy[at + c * HW], w[c]);
            k1 = __fadd_rn(k1, g);
            k2 = __fadd_rn(k2, with_bias ? __fmul_rn(__fmul_rn(g, __fsub_rn(x_, m)), r)
                                         : __fmul_rn(g, x_));
        }
        k1 = k1 / (float)C;
        k2 = k2 / (float)C;
        for (int c = 0; c < C; ++c) {
            const float g = __fmul_rn(dy[at + c * HW], w[c]);
            const float xc = __fsub_rn(x[at + c * HW], m);
            out[at + c * HW] =
                with_bias ? __fmul_rn(r, __fsub_rn(__fsub_rn(g, k1), __fmul_rn(__fmul_rn(xc, r), k2)))
                          : __fmul_rn(r, __fsub_rn(g, __fmul_rn(__fmul_rn(__fmul_rn(xc, r), r), k2)));
        }
    }
}

// Partial sums of dw = sum dy xhat (xhat = (x - mu) r, or x r) and db = sum dy per channel:
// thread t = c * J + j sums the pixels j, j + J, j + 2J, ... of all images into
// partial[t] (dw) and partial[C * J + t] (db).
extern "C" __global__ void ifp_cln_params_partial_f32(const float* x, const float* dy,
                                                      const float* mean, const float* rstd,
                                                      float* partial, int64_t B, int C,
                                                      int64_t HW, int J, int with_bias) {
    GRID_STRIDE(t, (int64_t)C * J) {
        const int c = (int)(t / J), j = (int)(t - (int64_t)c * J);
        float sw = 0.0f, sb = 0.0f;
        for (int64_t q = j; q < B * HW; q += J) {
            const int64_t bi = q / HW, p = q - bi * HW;
            const int64_t e = (bi * C + c) * HW + p;
            const float xn = with_bias ? __fmul_rn(__fsub_rn(x[e], mean[q]), rstd[q])
                                       : __fmul_rn(x[e], rstd[q]);
            sw = __fadd_rn(sw, __fmul_rn(dy[e], xn));
            sb = __fadd_rn(sb, dy[e]);
        }
        partial[t] = sw;
        partial[(int64_t)C * J + t] = sb;
    }
}

// dw and db into out[n .. n + C) and out[n + C .. n + 2C): each channel's J partial sums added
// in order, in double.
extern "C" __global__ void ifp_cln_params_reduce_f32(const float* partial, float* out, int64_t n,
                                                     int C, int J) {
    GRID_STRIDE(t, 2 * (int64_t)C) {
        const float* part = partial + t * J;
        double s = 0.0;
        for (int j = 0; j < J; ++j) s += (double)part[j];
        out[n + t] = (float)s;
    }
}
