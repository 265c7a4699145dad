// Bias + GELU (erf form, BERT's "gelu"), fused. Forward adds the bias in place, keeping the
// pre-activation for backward, and writes gelu of it; backward multiplies by gelu'.

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

#define GELU(S, T)                                                                                 \
    extern "C" __global__ void bias_gelu_forward_##S(T* out, T* pre, const float* bias,            \
                                                     long long n, int cols) {                      \
        bias_gelu_fwd<T>(out, pre, bias, n, cols);                                                 \
    }                                                                                              \
    extern "C" __global__ void bias_gelu_backward_##S(T* dpre, const T* pre, const T* dout,        \
                                                      long long n, int accumulate) {               \
        bias_gelu_bwd<T>(dpre, pre, dout, n, accumulate);                                          \
    }
GELU(f32, float)
GELU(bf16, bf16)
