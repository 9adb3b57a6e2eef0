// Uformer's token ops, float32, in the CPU kernels' order of operations (kernels/token/ has
// the formulas): LayerNorm over the last dimension, softmax over the last dimension, exact (erf)
// GELU, the addition of a bias repeated over the leading dimensions, and a residual whose branch
// is scaled per sample (stochastic depth's), each with its gradient. Compiled to PTX by
// trainer/build.rs with the `cuda` feature; launched from kernels/cuda/token.rs. Grid-stride
// loops without shared memory, so that the tests can also run this file as C++ on a CPU.
//
// Layouts, contiguous: x, y, dy (R, C) (R rows of C values); w, b (C); mean, rstd (R).
// Parameter gradients come from J partial sums per column (thread t = j * K + k adds rows j,
// j + J, j + 2J, ... of column k, so a warp reads adjacent columns of one row), in double,
// then one fixed-order reduction per column: deterministic whatever the scheduling.
#include <math.h>
#include <stdint.h>

#define IFP_EPS 1e-5f

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

// ---- LayerNorm over the last dimension ----------------------------------------------------

// Per row: the mean and 1 / sqrt(variance + eps), two-pass like PyTorch.
extern "C" __global__ void ifp_rln_stats_f32(const float* x, float* mean, float* rstd, int64_t R,
                                             int C) {
    GRID_STRIDE(r, R) {
        const float* xr = x + r * C;
        float s = 0.0f;
        for (int c = 0; c < C; ++c) s += xr[c];
        const float mu = s / (float)C;
        float v = 0.0f;
        for (int c = 0; c < C; ++c) {
            const float d = xr[c] - mu;
            v += d * d;
        }
        mean[r] = mu;
        rstd[r] = 1.0f / sqrtf(v / (float)C + IFP_EPS);
    }
}

// y = (x - mu) r w + b, one thread per element.
extern "C" __global__ void ifp_rln_apply_f32(const float* x, const float* w, const float* b,
                                             const float* mean, const float* rstd, float* y,
                                             int64_t R, int C) {
    GRID_STRIDE(e, R * C) {
        const int64_t r = e / C;
        const int c = (int)(e - r * C);
        y[e] = (x[e] - mean[r]) * rstd[r] * w[c] + b[c];
    }
}

// dx = r (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat = (x - mu) r; one thread per row.
extern "C" __global__ void ifp_rln_dx_f32(const float* x, const float* w, const float* dy,
                                          const float* mean, const float* rstd, float* dx,
                                          int64_t R, int C) {
    GRID_STRIDE(r, R) {
        const float* xr = x + r * C;
        const float* gr = dy + r * C;
        const float m = mean[r], s = rstd[r];
        float mg = 0.0f, mgx = 0.0f;
        for (int c = 0; c < C; ++c) {
            const float g = gr[c] * w[c];
            mg += g;
            mgx += g * ((xr[c] - m) * s);
        }
        mg /= (float)C;
        mgx /= (float)C;
        for (int c = 0; c < C; ++c) {
            const float g = gr[c] * w[c];
            dx[r * C + c] = s * (g - mg - (xr[c] - m) * s * mgx);
        }
    }
}

// Partial sums of dw = sum dy xhat and db = sum dy: thread t = j * C + c writes its dw part to
// partial[j * 2C + c] and its db part to partial[j * 2C + C + c], so that the column
// reduction below with K = 2C gives [dw, db].
extern "C" __global__ void ifp_rln_params_partial_f32(const float* x, const float* dy,
                                                      const float* mean, const float* rstd,
                                                      double* partial, int64_t R, int C, int J) {
    GRID_STRIDE(t, (int64_t)J * C) {
        const int j = (int)(t / C), c = (int)(t - (int64_t)j * C);
        double sw = 0.0, sb = 0.0;
        for (int64_t r = j; r < R; r += J) {
            const float g = dy[r * C + c];
            sw += (double)(g * ((x[r * C + c] - mean[r]) * rstd[r]));
            sb += (double)g;
        }
        partial[(int64_t)j * 2 * C + c] = sw;
        partial[(int64_t)j * 2 * C + C + c] = sb;
    }
}

// ---- sums over rows -------------------------------------------------------------------------

// Partial column sums of g (R, K): thread t = j * K + k adds rows j, j + J, ... of column k.
extern "C" __global__ void ifp_col_sum_partial_f32(const float* g, double* partial, int64_t R,
                                                   int K, int J) {
    GRID_STRIDE(t, (int64_t)J * K) {
        const int j = (int)(t / K), k = (int)(t - (int64_t)j * K);
        double s = 0.0;
        for (int64_t r = j; r < R; r += J) s += (double)g[r * K + k];
        partial[t] = s;
    }
}

// out[at + k] = the J partial sums of column k (partial (J, K)) added in order.
extern "C" __global__ void ifp_col_sum_reduce_f32(const double* partial, float* out, int64_t at,
                                                  int K, int J) {
    GRID_STRIDE(k, (int64_t)K) {
        double s = 0.0;
        for (int j = 0; j < J; ++j) s += partial[(int64_t)j * K + k];
        out[at + k] = (float)s;
    }
}

// ---- softmax over the last dimension --------------------------------------------------------

// y = exp(x - max) / sum(exp(x - max)) per row of N values; one thread per row.
extern "C" __global__ void ifp_softmax_f32(const float* x, float* y, int64_t R, int N) {
    GRID_STRIDE(r, R) {
        const float* xr = x + r * N;
        float* yr = y + r * N;
        float mx = -INFINITY;
        for (int i = 0; i < N; ++i) mx = fmaxf(mx, xr[i]);
        float sum = 0.0f;
        for (int i = 0; i < N; ++i) {
            yr[i] = expf(xr[i] - mx);
            sum += yr[i];
        }
        const float inv = 1.0f / sum;
        for (int i = 0; i < N; ++i) yr[i] *= inv;
    }
}

// dx = y (dy - sum(dy y)) per row.
extern "C" __global__ void ifp_softmax_dx_f32(const float* y, const float* dy, float* dx,
                                              int64_t R, int N) {
    GRID_STRIDE(r, R) {
        const float* yr = y + r * N;
        const float* gr = dy + r * N;
        float dot = 0.0f;
        for (int i = 0; i < N; ++i) dot += yr[i] * gr[i];
        for (int i = 0; i < N; ++i) dx[r * N + i] = yr[i] * (gr[i] - dot);
    }
}

// ---- exact GELU and the bias ----------------------------------------------------------------

// y = x Phi(x), Phi(x) = 0.5 (1 + erf(x / sqrt 2)).
extern "C" __global__ void ifp_gelu_f32(const float* x, float* y, int64_t n) {
    GRID_STRIDE(e, n) {
        const float v = x[e];
        y[e] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// dx = dy (Phi(x) + x phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
extern "C" __global__ void ifp_gelu_dx_f32(const float* x, const float* dy, float* dx, int64_t n) {
    GRID_STRIDE(e, n) {
        const float v = x[e];
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[e] = dy[e] * (cdf + v * pdf);
    }
}

// y = x + b[e mod K]: b repeated over the rows of x (R, K).
extern "C" __global__ void ifp_add_rows_f32(const float* x, const float* b, float* y, int64_t n,
                                            int K) {
    GRID_STRIDE(e, n) { y[e] = x[e] + b[e % K]; }
}

// ---- stochastic depth's residual ----------------------------------------------------------

// y = x + b * s[e / per] (one scale per sample of `per` values). The product and the sum are
// rounded one at a time, as the composed version's two ops round them (no contraction to fma).
extern "C" __global__ void ifp_scaled_residual_f32(const float* x, const float* b, const float* s,
                                                   float* y, int64_t n, int64_t per) {
    GRID_STRIDE(e, n) { y[e] = __fadd_rn(x[e], __fmul_rn(b[e], s[e / per])); }
}

// dx = dy * s[e / per]: the branch's gradient.
extern "C" __global__ void ifp_scale_samples_f32(const float* dy, const float* s, float* dx,
                                                 int64_t n, int64_t per) {
    GRID_STRIDE(e, n) { dx[e] = __fmul_rn(dy[e], s[e / per]); }
}
