// Uformer's window attention from packed q, k, v, float32: per window and head,
// out = softmax(q k^T + bias) v, and its backward, without the (N x N) attention matrix
// between ops. Compiled to PTX by trainer/build.rs with the `cuda` feature; launched from
// kernels/cuda/attention.rs. Grid-stride loops without shared memory, so that the tests can
// also run this file as C++ on a CPU.
//
// Layouts, contiguous: qkv (W, 3H, N, D) (W windows, the q of H heads, then their k, then
// their v; N tokens of D features), out and dout (W, H, N, D), bias (K values, K a multiple of
// N * N) repeated over the logits (W, H, N, N). One thread per row of the logits: the forward
// pass and the backward pass's dq run over the queries i, dk and dv over the keys j, so no
// thread adds into another's output and every sum has a fixed order.
//
// Each thread keeps its row's vectors (q, dout, the accumulators) in registers: arrays of a
// compile-time width MAXD (16, 32 or 64; Uformer's heads are 32 wide), of which the first D
// are used. Wider heads take the composed path.
//
// Backward, with P = softmax(S), S = q k^T + bias, dP = dout v^T:
//   rows:    per query i, the row's max m_i and 1 / sum_i, delta_i = sum_j P_ij dP_ij, and
//            dq_i = sum_j dS_ij k_j with dS_ij = P_ij (dP_ij - delta_i);
//   columns: per key j, from those row statistics, dk_j = sum_i dS_ij q_i,
//            dv_j = sum_i P_ij dout_i, and dS_ij written out for the bias's gradient (its
//            column sums, token.cu's ifp_col_sum_* kernels).
// Both recompute S the same way, so they see the same probabilities.
#include <math.h>
#include <stdint.h>

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

// One head of one window: its q, k and v (N x D each) and its bias (N x N).
struct WattHead {
    const float* q;
    const float* k;
    const float* v;
    const float* b;
    int64_t q_at;  // the offset of q in qkv (k is at q_at + H N D, v at q_at + 2 H N D)
};

// Head `wh` = w * H + h.
__device__ __forceinline__ WattHead watt_head(const float* qkv, const float* bias, int64_t wh,
                                              int H, int N, int D, int64_t K) {
    const int64_t w = wh / H;
    const int64_t h = wh - w * H;
    const int64_t nd = (int64_t)N * D;
    WattHead a;
    a.q_at = (w * 3 * H + h) * nd;
    a.q = qkv + a.q_at;
    a.k = a.q + H * nd;
    a.v = a.k + H * nd;
    a.b = bias + (wh * N * N) % K;
    return a;
}

template <int MAXD>
__device__ __forceinline__ void watt_load(float (&r)[MAXD], const float* x, int D) {
#pragma unroll
    for (int c = 0; c < MAXD; ++c) r[c] = c < D ? x[c] : 0.0f;
}

template <int MAXD>
__device__ __forceinline__ void watt_zero(float (&r)[MAXD]) {
#pragma unroll
    for (int c = 0; c < MAXD; ++c) r[c] = 0.0f;
}

template <int MAXD>
__device__ __forceinline__ void watt_store(float* y, const float (&r)[MAXD], float scale, int D) {
#pragma unroll
    for (int c = 0; c < MAXD; ++c)
        if (c < D) y[c] = r[c] * scale;
}

// sum_c a[c] x[c] over the first D features, in order.
template <int MAXD>
__device__ __forceinline__ float watt_dot(const float (&a)[MAXD], const float* x, int D) {
    float s = 0.0f;
#pragma unroll
    for (int c = 0; c < MAXD; ++c)
        if (c < D) s += a[c] * x[c];
    return s;
}

// acc += t x over the first D features.
template <int MAXD>
__device__ __forceinline__ void watt_axpy(float (&acc)[MAXD], float t, const float* x, int D) {
#pragma unroll
    for (int c = 0; c < MAXD; ++c)
        if (c < D) acc[c] += t * x[c];
}

// The max of query i's logits, and the reciprocal of the sum of their exponentials past it.
template <int MAXD>
__device__ __forceinline__ void watt_row_stats(const WattHead& a, const float (&q)[MAXD],
                                               const float* br, int N, int D, float* m_out,
                                               float* inv_out) {
    float m = -INFINITY;
    for (int j = 0; j < N; ++j) m = fmaxf(m, watt_dot(q, a.k + (int64_t)j * D, D) + br[j]);
    float l = 0.0f;
    for (int j = 0; j < N; ++j) l += expf(watt_dot(q, a.k + (int64_t)j * D, D) + br[j] - m);
    *m_out = m;
    *inv_out = 1.0f / l;
}

// out_i = sum_j P_ij v_j, one thread per query row r = (w H + h) N + i.
template <int MAXD>
__device__ void watt_forward(const float* qkv, const float* bias, float* out, int64_t rows,
                             int H, int N, int D, int64_t K) {
    GRID_STRIDE(r, rows) {
        const int64_t wh = r / N;
        const int i = (int)(r - wh * N);
        const WattHead a = watt_head(qkv, bias, wh, H, N, D, K);
        const float* br = a.b + (int64_t)i * N;
        float q[MAXD], acc[MAXD];
        watt_load(q, a.q + (int64_t)i * D, D);
        watt_zero(acc);
        float m, inv;
        watt_row_stats(a, q, br, N, D, &m, &inv);
        for (int j = 0; j < N; ++j) {
            const float p = expf(watt_dot(q, a.k + (int64_t)j * D, D) + br[j] - m) * inv;
            watt_axpy(acc, p, a.v + (int64_t)j * D, D);
        }
        watt_store(out + r * D, acc, 1.0f, D);
    }
}

// Per query row: dq_i into dqkv, and (m_i, 1 / sum_i, delta_i) into stats[3 r ..].
template <int MAXD>
__device__ void watt_backward_rows(const float* qkv, const float* bias, const float* dout,
                                   float* dqkv, float* stats, int64_t rows, int H, int N, int D,
                                   int64_t K) {
    GRID_STRIDE(r, rows) {
        const int64_t wh = r / N;
        const int i = (int)(r - wh * N);
        const WattHead a = watt_head(qkv, bias, wh, H, N, D, K);
        const float* br = a.b + (int64_t)i * N;
        float q[MAXD], g[MAXD], dq[MAXD];
        watt_load(q, a.q + (int64_t)i * D, D);
        watt_load(g, dout + r * D, D);
        watt_zero(dq);
        float m, inv;
        watt_row_stats(a, q, br, N, D, &m, &inv);
        float delta = 0.0f;
        for (int j = 0; j < N; ++j) {
            const float p = expf(watt_dot(q, a.k + (int64_t)j * D, D) + br[j] - m) * inv;
            delta += p * watt_dot(g, a.v + (int64_t)j * D, D);
        }
        for (int j = 0; j < N; ++j) {
            const float p = expf(watt_dot(q, a.k + (int64_t)j * D, D) + br[j] - m) * inv;
            const float ds = p * (watt_dot(g, a.v + (int64_t)j * D, D) - delta);
            watt_axpy(dq, ds, a.k + (int64_t)j * D, D);
        }
        watt_store(dqkv + a.q_at + (int64_t)i * D, dq, 1.0f, D);
        stats[3 * r] = m;
        stats[3 * r + 1] = inv;
        stats[3 * r + 2] = delta;
    }
}

// Per key row r = (w H + h) N + j: dk_j and dv_j into dqkv, dS_ij into ds (W, H, N, N).
template <int MAXD>
__device__ void watt_backward_cols(const float* qkv, const float* bias, const float* dout,
                                   const float* stats, float* dqkv, float* ds, int64_t rows,
                                   int H, int N, int D, int64_t K) {
    GRID_STRIDE(r, rows) {
        const int64_t wh = r / N;
        const int j = (int)(r - wh * N);
        const WattHead a = watt_head(qkv, bias, wh, H, N, D, K);
        float k[MAXD], v[MAXD], dk[MAXD], dv[MAXD];
        watt_load(k, a.k + (int64_t)j * D, D);
        watt_load(v, a.v + (int64_t)j * D, D);
        watt_zero(dk);
        watt_zero(dv);
        for (int i = 0; i < N; ++i) {
            const int64_t ri = wh * N + i;
            const float* qi = a.q + (int64_t)i * D;
            const float* gi = dout + ri * D;
            // The same sum as the rows kernel's q . k_j (products commute, same order).
            const float s = watt_dot(k, qi, D) + a.b[(int64_t)i * N + j];
            const float p = expf(s - stats[3 * ri]) * stats[3 * ri + 1];
            const float dsij = p * (watt_dot(v, gi, D) - stats[3 * ri + 2]);
            watt_axpy(dv, p, gi, D);
            watt_axpy(dk, dsij, qi, D);
            ds[ri * N + j] = dsij;
        }
        const int64_t nd = (int64_t)N * D;
        watt_store(dqkv + a.q_at + H * nd + (int64_t)j * D, dk, 1.0f, D);
        watt_store(dqkv + a.q_at + 2 * H * nd + (int64_t)j * D, dv, 1.0f, D);
    }
}

// The entry points, one set per register width.
#define IFP_WATT_KERNELS(MAXD)                                                                 \
    extern "C" __global__ void ifp_watt_fwd_d##MAXD##_f32(const float* qkv, const float* bias,  \
                                                          float* out, int64_t rows, int H,      \
                                                          int N, int D, int64_t K) {            \
        watt_forward<MAXD>(qkv, bias, out, rows, H, N, D, K);                                  \
    }                                                                                          \
    extern "C" __global__ void ifp_watt_rows_d##MAXD##_f32(                                     \
        const float* qkv, const float* bias, const float* dout, float* dqkv, float* stats,     \
        int64_t rows, int H, int N, int D, int64_t K) {                                        \
        watt_backward_rows<MAXD>(qkv, bias, dout, dqkv, stats, rows, H, N, D, K);              \
    }                                                                                          \
    extern "C" __global__ void ifp_watt_cols_d##MAXD##_f32(                                     \
        const float* qkv, const float* bias, const float* dout, const float* stats,            \
        float* dqkv, float* ds, int64_t rows, int H, int N, int D, int64_t K) {                \
        watt_backward_cols<MAXD>(qkv, bias, dout, stats, dqkv, ds, rows, H, N, D, K);          \
    }

IFP_WATT_KERNELS(16)
IFP_WATT_KERNELS(32)
IFP_WATT_KERNELS(64)
