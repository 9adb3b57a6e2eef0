// One AdamW step of one float32 parameter tensor in a single pass (kernels/optim.rs): the same
// float32 roundings, in the same order, as the composed tensor ops, where each scalar product is
// candle's CUDA `affine` (x * s + 0, contracted by nvcc to one fused multiply-add) and division
// and square root round correctly. Compiled to PTX by trainer/build.rs with the `cuda` feature;
// launched from kernels/cuda.rs. All tensors contiguous, n elements; outputs are fresh buffers.
#include <stdint.h>

// candle's affine(x, s, 0) as its kernel computes it: one rounding of x * s + 0.
__device__ __forceinline__ float scaled(float x, float s) { return __fmaf_rn(x, s, 0.0f); }

// The scalars of one AdamW step that all parameters share (AdamWStep less the decay).
struct AdamWScalars {
    int scale_grad;
    float grad_scale, one_minus_beta1, beta2, one_minus_beta2, inv_bc2, eps, step_size;
};

// One element's update: (w, g, m, v) -> (w', m', v'), decay applied where apply_decay.
__device__ __forceinline__ void adamw_element(float* w_out, float* m_out, float* v_out, float wi,
                                              float gi, float mi, float vi,
                                              const AdamWScalars& s, int apply_decay,
                                              float decay) {
    if (s.scale_grad) gi = scaled(gi, s.grad_scale);
    if (apply_decay) wi = scaled(wi, decay);
    const float m2 = __fadd_rn(mi, scaled(__fsub_rn(gi, mi), s.one_minus_beta1));
    const float v2 = __fadd_rn(scaled(vi, s.beta2), scaled(__fmul_rn(gi, gi), s.one_minus_beta2));
    // affine(r, 1, eps): fma(r, 1, eps) is r + eps rounded once.
    const float denom = __fadd_rn(scaled(__fsqrt_rn(v2), s.inv_bc2), s.eps);
    *w_out = __fsub_rn(wi, scaled(__fdiv_rn(m2, denom), s.step_size));
    *m_out = m2;
    *v_out = v2;
}

extern "C" __global__ void ifp_adamw_f32(const float* w, const float* g, const float* m,
                                         const float* v, float* w_out, float* m_out,
                                         float* v_out, int64_t n, int scale_grad,
                                         float grad_scale, int apply_decay, float decay,
                                         float one_minus_beta1, float beta2,
                                         float one_minus_beta2, float inv_bc2, float eps,
                                         float step_size) {
    const AdamWScalars s = {scale_grad,      grad_scale, one_minus_beta1, beta2,
                            one_minus_beta2, inv_bc2,    eps,             step_size};
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        adamw_element(&w_out[i], &m_out[i], &v_out[i], w[i], g[i], m[i], v[i], s, apply_decay,
                      decay);
    }
}

// AdamW steps of T float32 parameters in one launch, in place: parameter i has lens[i]
// elements at the addresses w[i], g[i], m[i], v[i] (its weights, gradient and moments; the
// weights and moments are overwritten) and is decayed by decay[i] where apply_decay[i]. Its
// threads are first[i] .. first[i + 1] (about the same number of elements each, whatever the
// tensor's size); thread first[i] + j updates elements j, j + J, j + 2J, ... (J = its thread
// count), so a warp reads adjacent values.
extern "C" __global__ void ifp_adamw_multi_f32(const uint64_t* w, const uint64_t* g,
                                               const uint64_t* m, const uint64_t* v,
                                               const int64_t* lens, const int64_t* first,
                                               const int* apply_decay, const float* decay, int T,
                                               int scale_grad, float grad_scale,
                                               float one_minus_beta1, float beta2,
                                               float one_minus_beta2, float inv_bc2, float eps,
                                               float step_size) {
    const AdamWScalars s = {scale_grad,      grad_scale, one_minus_beta1, beta2,
                            one_minus_beta2, inv_bc2,    eps,             step_size};
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < first[T];
         t += (int64_t)gridDim.x * blockDim.x) {
        // The parameter whose threads include t: the last i with first[i] <= t.
        int lo = 0, hi = T - 1;
        while (lo < hi) {
            const int mid = (lo + hi + 1) / 2;
            if (first[mid] <= t) lo = mid; else hi = mid - 1;
        }
        const int i = lo;
        const int64_t j = t - first[i], J = first[i + 1] - first[i];
        float* wi = (float*)w[i];
        const float* gi = (const float*)g[i];
        float* mi = (float*)m[i];
        float* vi = (float*)v[i];
        for (int64_t e = j; e < lens[i]; e += J) {
            adamw_element(&wi[e], &mi[e], &vi[e], wi[e], gi[e], mi[e], vi[e], s, apply_decay[i],
                          decay[i]);
        }
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
