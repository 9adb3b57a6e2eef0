// A convolution's bias with the activation after it, y = act(x + b[c]) on (B, C, H, W), and its
// gradients, float32 (kernels/bias.rs has the CPU version): act is the identity (has_slope 0)
// or max(t, 0) + slope * min(t, 0) (ReLU for slope 0). Compiled to PTX by trainer/build.rs with
// the `cuda` feature; launched from kernels/cuda/bias.rs. Grid-stride loops without shared
// memory, so that the tests can also run this file as C++ on a CPU.
#include <stdint.h>

#define GRID_STRIDE(i, n)                                                                  \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n);              \
         i += (int64_t)gridDim.x * blockDim.x)

extern "C" __global__ void ifp_bias_act_f32(const float* x, const float* b, float* y,
                                            int64_t total, int C, int64_t HW, int has_slope,
                                            float slope) {
    GRID_STRIDE(e, total) {
        const float t = x[e] + b[(e / HW) % C];
        y[e] = (has_slope && !(t > 0.0f)) ? slope * t : t;
    }
}

// dx into out[0 .. total): dy where the output is positive (or without an activation), else
// slope * dy; read off the output's sign, which is the pre-activation's for slopes >= 0.
extern "C" __global__ void ifp_bias_act_dx_f32(const float* y, const float* dy, float* out,
                                               int64_t total, int has_slope, float slope) {
    GRID_STRIDE(e, total) {
        out[e] = (has_slope && !(y[e] > 0.0f)) ? slope * dy[e] : dy[e];
    }
}

// Partial sums of each channel of g (B, C, HW): thread t = c * J + j adds the pixels j, j + J,
// j + 2J, ... of all images, in double, into partial[t].
extern "C" __global__ void ifp_channel_sum_partial_f32(const float* g, double* partial, int64_t B,
                                                       int C, int64_t HW, int J) {
    GRID_STRIDE(t, (int64_t)C * J) {
        const int c = (int)(t / J), j = (int)(t - (int64_t)c * J);
        double s = 0.0;
        for (int64_t q = j; q < B * HW; q += J) {
            const int64_t bi = q / HW, p = q - bi * HW;
            s += (double)g[(bi * C + c) * HW + p];
        }
        partial[t] = s;
    }
}

// Each channel's J partial sums added in order into out[n + c].
extern "C" __global__ void ifp_channel_sum_reduce_f32(const double* partial, float* out, int64_t n,
                                                      int C, int J) {
    GRID_STRIDE(c, (int64_t)C) {
        double s = 0.0;
        for (int j = 0; j < J; ++j) s += partial[c * J + j];
        out[n + c] = (float)s;
    }
}
