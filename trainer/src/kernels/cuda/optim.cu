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
