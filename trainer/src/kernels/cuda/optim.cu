// One AdamW step of one float32 parameter tensor in a single pass (kernels/optim.rs): the same
// float32 roundings, in the same order, as the composed tensor ops, where each scalar product is
// candle's CUDA `affine` (x * s + 0, contracted by nvcc to one fused multiply-add) and division
// and square root round correctly. Compiled to PTX by trainer/build.rs with the `cuda` feature;
// launched from kernels/cuda.rs. All tensors contiguous, n elements; outputs are fresh buffers.
#include <stdint.h>

// candle's affine(x, s, 0) as its kernel computes it: one rounding of x * s + 0.
__device__ __forceinline__ float scaled(float x, float s) { return __fmaf_rn(x, s, 0.0f); }

extern "C" __global__ void ifp_adamw_f32(const float* w, const float* g, const float* m,
                                         const float* v, float* w_out, float* m_out,
                                         float* v_out, int64_t n, int scale_grad,
                                         float grad_scale, int apply_decay, float decay,
                                         float one_minus_beta1, float beta2,
                                         float one_minus_beta2, float inv_bc2, float eps,
                                         float step_size) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        if (scale_grad) gi = scaled(gi, grad_scale);
        float wi = w[i];
        if (apply_decay) wi = scaled(wi, decay);
        const float mi = m[i];
        const float m2 = __fadd_rn(mi, scaled(__fsub_rn(gi, mi), one_minus_beta1));
        const float v2 = __fadd_rn(scaled(v[i], beta2), scaled(__fmul_rn(gi, gi), one_minus_beta2));
        // affine(r, 1, eps): fma(r, 1, eps) is r + eps rounded once.
        const float denom = __fadd_rn(scaled(__fsqrt_rn(v2), inv_bc2), eps);
        w_out[i] = __fsub_rn(wi, scaled(__fdiv_rn(m2, denom), step_size));
        m_out[i] = m2;
        v_out[i] = v2;
    }
}

// The squared 2-norms of T float32 tensors in two launches, whatever T is: tensor i starts at
// the address ptrs[i] and has lens[i] elements. Thread t = i * J + j adds the squares of
// elements j, j + J, j + 2J, ... of tensor i (a warp reads adjacent values) in double into
// partial[t]; then each tensor's J partial sums are added in order. Deterministic.
extern "C" __global__ void ifp_sumsq_partial_f32(const uint64_t* ptrs, const int64_t* lens,
                                                 double* partial, int T, int J) {
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < (int64_t)T * J;
         t += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = t / J, j = t - i * J;
        const float* x = (const float*)ptrs[i];
        double s = 0.0;
        for (int64_t e = j; e < lens[i]; e += J) {
            const double v = (double)x[e];
            s += v * v;
        }
        partial[t] = s;
    }
}

// out[r] = the J values of row r of partial (R, J), added in order.
extern "C" __global__ void ifp_sum_rows_f64(const double* partial, double* out, int64_t R, int J) {
    for (int64_t r = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; r < R;
         r += (int64_t)gridDim.x * blockDim.x) {
        double s = 0.0;
        for (int j = 0; j < J; ++j) s += partial[r * J + j];
        out[r] = s;
    }
}
