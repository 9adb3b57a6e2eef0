// Restormer's channel attention (MDTA after its depthwise convolution), float32: the kernels
// around its cuBLAS products (kernels/gemm_heads.rs plans those; kernels/attention.rs has the
// formulas and the CPU op). The rows' squared norms come as float64 row sums
// (normalize.cu's fixed-order partial sums); per image b, head h and row i of the small
// (ch x ch) matrices, one thread: the probabilities from the products of rows, their gradient
// and the temperature's, the coefficients of the rows' gradients, and F.normalize's gradient
// in place. Compiled to PTX by trainer/build.rs with the `cuda` feature; launched from
// kernels/cuda/mdta.rs. Grid-stride loops without shared memory, so that the tests can also
// run this file as C++ on a CPU.
//
// Layouts, contiguous: qkv (B, 3C, N) (q, k, v the parts 0, 1, 2; head h's rows h*ch ..),
// sumsq (B*3C) per row of qkv; S, A, dA/dS, Mq, Mk (B, heads, ch, ch); t (heads);
// dt_rows (B*heads*ch); dt (B*heads).
#include <math.h>
#include <stdint.h>

#define IFP_MDTA_EPS 1e-12f

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

// max(|row|, eps) of row `row` of qkv, as F.normalize clamps it.
__device__ __forceinline__ float mdta_norm(const double* sumsq, int64_t row) {
    return fmaxf(sqrtf((float)sumsq[row]), IFP_MDTA_EPS);
}

// Where small-matrix row r = (b * heads + h) * ch + i finds its q and k norms: qkv rows
// q0 + i and k0 + j.
struct MdtaRow {
    int64_t bh, q0, k0;
    int h, i;
};

__device__ __forceinline__ MdtaRow mdta_row(int64_t r, int C, int heads, int ch) {
    MdtaRow m;
    m.bh = r / ch;
    m.i = (int)(r - m.bh * ch);
    const int64_t b = m.bh / heads;
    m.h = (int)(m.bh - b * heads);
    m.q0 = b * 3 * C + (int64_t)m.h * ch;
    m.k0 = m.q0 + C;
    return m;
}

// A = softmax_j(t_h P), P_ij = S_ij / (|q_i| |k_j|), per row.
extern "C" __global__ void ifp_mdta_probs_f32(const float* S, const double* sumsq, const float* t,
                                              float* A, int64_t rows, int C, int heads, int ch) {
    GRID_STRIDE(r, rows) {
        const MdtaRow m = mdta_row(r, C, heads, ch);
        const float nq = mdta_norm(sumsq, m.q0 + m.i), th = t[m.h];
        const float* sr = S + r * ch;
        float* ar = A + r * ch;
        float mx = -INFINITY;
        for (int j = 0; j < ch; ++j) {
            ar[j] = sr[j] / (nq * mdta_norm(sumsq, m.k0 + j));
            mx = fmaxf(mx, th * ar[j]);
        }
        float sum = 0.0f;
        for (int j = 0; j < ch; ++j) {
            ar[j] = expf(th * ar[j] - mx);
            sum += ar[j];
        }
        for (int j = 0; j < ch; ++j) ar[j] /= sum;
    }
}

// From dA (in D, overwritten with dS): dS_ij = A_ij (dA_ij - sum_k A_ik dA_ik); the row's part
// of the temperature's gradient, sum_j dS_ij P_ij; Mq_ij = t_h dS_ij / |k_j|.
extern "C" __global__ void ifp_mdta_ds_f32(const float* S, const double* sumsq, const float* t,
                                           const float* A, float* D, float* Mq, float* dt_rows,
                                           int64_t rows, int C, int heads, int ch) {
    GRID_STRIDE(r, rows) {
        const MdtaRow m = mdta_row(r, C, heads, ch);
        const float nq = mdta_norm(sumsq, m.q0 + m.i), th = t[m.h];
        const float* ar = A + r * ch;
        float* dr = D + r * ch;
        float s = 0.0f;
        for (int j = 0; j < ch; ++j) s += ar[j] * dr[j];
        float acc = 0.0f;
        for (int j = 0; j < ch; ++j) {
            const float nk = mdta_norm(sumsq, m.k0 + j);
            const float ds = ar[j] * (dr[j] - s);
            acc += ds * (S[r * ch + j] / (nq * nk));
            dr[j] = ds;
            Mq[r * ch + j] = th * ds / nk;
        }
        dt_rows[r] = acc;
    }
}

// Mk_ij = t_h dS_ji / |q_j|; the thread of row 0 of each (b, h) also adds its rows' parts of
// the temperature's gradient, in order.
extern "C" __global__ void ifp_mdta_mk_f32(const float* dS, const double* sumsq, const float* t,
                                           const float* dt_rows, float* Mk, float* dt,
                                           int64_t rows, int C, int heads, int ch) {
    GRID_STRIDE(r, rows) {
        const MdtaRow m = mdta_row(r, C, heads, ch);
        const float th = t[m.h];
        const float* block = dS + m.bh * ch * ch;
        for (int j = 0; j < ch; ++j)
            Mk[r * ch + j] = th * block[(int64_t)j * ch + m.i] / mdta_norm(sumsq, m.q0 + j);
        if (m.i == 0) {
            float s = 0.0f;
            for (int k = 0; k < ch; ++k) s += dt_rows[m.bh * ch + k];
            dt[m.bh] = s;
        }
    }
}

// F.normalize's gradient in place on the q and k rows of dqkv (holding the gradients of the
// normalised rows): d = d / n - x (x . d) / n^3 with n = max(|x|, eps), d / eps where the
// clamp is active; xd holds the rows' x . d. One thread per element of the q and k parts.
extern "C" __global__ void ifp_mdta_norm_dx_f32(const float* x, float* d, const double* sumsq,
                                                const double* xd, int64_t B, int C, int64_t N) {
    const int64_t per_image = 2 * (int64_t)C * N;
    GRID_STRIDE(e, B * per_image) {
        const int64_t b = e / per_image, rem = e - b * per_image;
        const int64_t row = b * 3 * C + rem / N;
        const int64_t at = b * 3 * C * N + rem;
        const float n = sqrtf((float)sumsq[row]);
        const float nd = fmaxf(n, IFP_MDTA_EPS);
        const float along = n > IFP_MDTA_EPS ? (float)(xd[row] / ((double)nd * nd * nd)) : 0.0f;
        d[at] = d[at] / nd - x[at] * along;
    }
}
