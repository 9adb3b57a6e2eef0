// F.normalize over the last dimension, float32 (kernels/normalize.rs has the formulas and the
// CPU version): y = x / d, d = max(|x|, 1e-12), per row of N values, and its gradient
// dx = g / d - x (g . x) / d^3 (g / d where the clamp is active). MDTA normalises rows of
// H*W values, few rows of many values, so every row sum is split into J partial sums (thread
// t = r * J + j adds elements j, j + J, ..., so a warp reads adjacent values) added in double,
// then one fixed-order sum per row: deterministic whatever the scheduling. Compiled to PTX by
// trainer/build.rs with the `cuda` feature; launched from kernels/cuda/normalize.rs. Grid-stride
// loops without shared memory, so that the tests can also run this file as C++ on a CPU.
#include <math.h>
#include <stdint.h>

#define IFP_NORM_EPS 1e-12f

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

// partial[r * J + j] = sum of a[r, i] b[r, i] over i = j, j + J, j + 2J, ... < N.
extern "C" __global__ void ifp_row_dot_partial_f32(const float* a, const float* b, double* partial,
                                                   int64_t R, int64_t N, int J) {
    GRID_STRIDE(t, R * J) {
        const int64_t r = t / J, j = t - r * J;
        const float* ar = a + r * N;
        const float* br = b + r * N;
        double s = 0.0;
        for (int64_t i = j; i < N; i += J) s += (double)ar[i] * (double)br[i];
        partial[t] = s;
    }
}

// out[r] = row r's J partial sums added in order.
extern "C" __global__ void ifp_row_dot_reduce_f32(const double* partial, double* out, int64_t R,
                                                  int J) {
    GRID_STRIDE(r, R) {
        double s = 0.0;
        for (int j = 0; j < J; ++j) s += partial[r * J + j];
        out[r] = s;
    }
}

// y = x / max(sqrt(sumsq), eps), one thread per element.
extern "C" __global__ void ifp_l2n_apply_f32(const float* x, const double* sumsq, float* y,
                                             int64_t R, int64_t N) {
    GRID_STRIDE(e, R * N) {
        const float d = fmaxf(sqrtf((float)sumsq[e / N]), IFP_NORM_EPS);
        y[e] = x[e] / d;
    }
}

// dx = g / d - x (g . x) / d^3 where |x| > eps, else g / d; one thread per element.
extern "C" __global__ void ifp_l2n_dx_f32(const float* x, const float* g, const double* sumsq,
                                          const double* gx, float* dx, int64_t R, int64_t N) {
    GRID_STRIDE(e, R * N) {
        const int64_t r = e / N;
        const float n = sqrtf((float)sumsq[r]);
        const float d = fmaxf(n, IFP_NORM_EPS);
        const float along = n > IFP_NORM_EPS ? (float)(gx[r] / ((double)d * d * d)) : 0.0f;
        dx[e] = g[e] / d - x[e] * along;
    }
}
