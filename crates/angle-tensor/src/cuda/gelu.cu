// Bias + GELU (erf form, BERT's "gelu"), fused. Forward adds the bias in place, keeping the
// pre-activation for backward, and writes gelu of it; backward multiplies by gelu'. Scalar
// kernels for any shape, vectorised ones (suffix 4) where widths and addresses allow.

__device__ __forceinline__ float gelu_f(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}
__device__ __forceinline__ float gelu_grad(float x) {
    const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

template <typename T>
__device__ void bias_gelu_fwd(T* out, T* pre, const float* bias, long long n, int cols) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float x = tof(pre[i]);
        if (bias) {
            x += bias[i % cols];
            pre[i] = fromf<T>(x);
            x = tof(pre[i]);
        }
        out[i] = fromf<T>(gelu_f(x));
    }
}

// dpre = dout * gelu'(pre), overwriting when `accumulate` is 0, adding otherwise.
template <typename T>
__device__ void bias_gelu_bwd(T* dpre, const T* pre, const T* dout, long long n, int accumulate) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float g = tof(dout[i]) * gelu_grad(tof(pre[i]));
        if (accumulate) g += tof(dpre[i]);
        dpre[i] = fromf<T>(g);
    }
}

// Vectorised forms (4 elements per access; the launcher checks cols % 4 == 0 and alignment).
// Forward walks rows (a block per row, grid-striding) so that a group's bias column is 4 * g
// with no 64-bit division; the values match the scalar kernels exactly (same rounding through T).
template <typename T>
__device__ void bias_gelu_fwd4(T* out, T* pre, const float* bias, int rows, int cols) {
    const int groups = cols >> 2;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const long long base = (long long)r * cols;
        for (int g = threadIdx.x; g < groups; g += blockDim.x) {
            const long long i = base + 4 * g;
            float x[4];
            load4(pre + i, x);
            if (bias) {
#pragma unroll
                for (int k = 0; k < 4; k++) x[k] = tof(fromf<T>(x[k] + bias[4 * g + k]));
                store4(pre + i, x);
            }
#pragma unroll
            for (int k = 0; k < 4; k++) x[k] = gelu_f(x[k]);
            store4(out + i, x);
        }
    }
}

// dpre may alias dout (the encoder overwrites the incoming gradient): each thread reads its
// group before writing it. The n % 4 tail goes to the first threads of block 0.
template <typename T>
__device__ void bias_gelu_bwd4(T* dpre, const T* pre, const T* dout, long long n, int accumulate) {
    const long long groups = n >> 2;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups;
         g += (long long)gridDim.x * blockDim.x) {
        const long long i = 4 * g;
        float p[4], d[4], o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        load4(pre + i, p);
        load4(dout + i, d);
        if (accumulate) load4(dpre + i, o);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float v = d[k] * gelu_grad(p[k]);
            o[k] = accumulate ? v + o[k] : v;
        }
        store4(dpre + i, o);
    }
    if (blockIdx.x == 0 && threadIdx.x < (int)(n & 3)) {
        const long long i = 4 * groups + threadIdx.x;
        float v = tof(dout[i]) * gelu_grad(tof(pre[i]));
        if (accumulate) v += tof(dpre[i]);
        dpre[i] = fromf<T>(v);
    }
}

#define GELU(S, T)                                                                                 \
    extern "C" __global__ void bias_gelu_forward_##S(T* out, T* pre, const float* bias,            \
                                                     long long n, int cols) {                      \
        bias_gelu_fwd<T>(out, pre, bias, n, cols);                                                 \
    }                                                                                              \
    extern "C" __global__ void bias_gelu_backward_##S(T* dpre, const T* pre, const T* dout,        \
                                                      long long n, int accumulate) {               \
        bias_gelu_bwd<T>(dpre, pre, dout, n, accumulate);                                          \
    }                                                                                              \
    extern "C" __global__ void bias_gelu_forward4_##S(T* out, T* pre, const float* bias, int rows, \
                                                      int cols) {                                  \
        bias_gelu_fwd4<T>(out, pre, bias, rows, cols);                                             \
    }                                                                                              \
    extern "C" __global__ void bias_gelu_backward4_##S(T* dpre, const T* pre, const T* dout,       \
                                                       long long n, int accumulate) {              \
        bias_gelu_bwd4<T>(dpre, pre, dout, n, accumulate);                                         \
    }
GELU(f32, float)
GELU(bf16, bf16)
