// Standalone dropout (inverted), mask from the counter-based RNG: element i of the tensor is
// kept when rng_keep(seed, i, thr); backward regenerates the mask.

template <typename T>
__device__ void drop_fwd(T* out, const T* inp, long long n, unsigned thr, float scale,
                         unsigned long long seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = fromf<T>(rng_keep(seed, (unsigned long long)i, thr) ? tof(inp[i]) * scale : 0.0f);
    }
}

template <typename T>
__device__ void drop_bwd(T* dinp, const T* dout, long long n, unsigned thr, float scale,
                         unsigned long long seed, int accumulate) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        float g = rng_keep(seed, (unsigned long long)i, thr) ? tof(dout[i]) * scale : 0.0f;
        if (accumulate) g += tof(dinp[i]);
        dinp[i] = fromf<T>(g);
    }
}

#define DROP(S, T)                                                                                 \
    extern "C" __global__ void dropout_forward_##S(T* out, const T* inp, long long n,              \
                                                   unsigned thr, float scale,                      \
                                                   unsigned long long seed) {                      \
        drop_fwd<T>(out, inp, n, thr, scale, seed);                                                \
    }                                                                                              \
    extern "C" __global__ void dropout_backward_##S(T* dinp, const T* dout, long long n,           \
                                                    unsigned thr, float scale,                     \
                                                    unsigned long long seed, int accumulate) {     \
        drop_bwd<T>(dinp, dout, n, thr, scale, seed, accumulate);                                  \
    }
DROP(f32, float)
DROP(bf16, bf16)
