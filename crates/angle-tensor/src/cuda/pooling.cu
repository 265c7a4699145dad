// Sentence pooling over packed sequences: mean over the tokens of each sequence, or its first
// ([CLS]) token. Pooled embeddings are f32 (the objectives run in f32).

template <typename T>
__device__ void pool_fwd(float* out, const T* x, const int* off, int B, int H, int mode) {
    const int b = blockIdx.x;
    if (b >= B) return;
    const int r0 = off[b], len = off[b + 1] - off[b];
    for (int c = threadIdx.x; c < H; c += blockDim.x) {
        float s = 0.0f;
        if (mode == 1) {
            s = len > 0 ? tof(x[(long long)r0 * H + c]) : 0.0f;
        } else {
            for (int t = 0; t < len; t++) s += tof(x[(long long)(r0 + t) * H + c]);
            s = len > 0 ? s * (1.0f / (float)len) : 0.0f;
        }
        out[(long long)b * H + c] = s;
    }
}

// dx rows of sequence b get dout[b] / len (mean) or dout[b] at the first row (cls); written
// (zeros elsewhere), or added when `accumulate`.
template <typename T>
__device__ void pool_bwd(T* dx, const float* dout, const int* off, int B, int H, int mode,
                         int accumulate) {
    const int b = blockIdx.x;
    if (b >= B) return;
    const int r0 = off[b], len = off[b + 1] - off[b];
    for (int t = 0; t < len; t++) {
        for (int c = threadIdx.x; c < H; c += blockDim.x) {
            const long long i = (long long)(r0 + t) * H + c;
            float g;
            if (mode == 1) {
                g = t == 0 ? dout[(long long)b * H + c] : 0.0f;
            } else {
                g = dout[(long long)b * H + c] * (1.0f / (float)len);
            }
            if (accumulate) g += tof(dx[i]);
            dx[i] = fromf<T>(g);
        }
    }
}

#define POOL(S, T)                                                                                 \
    extern "C" __global__ void pooling_forward_##S(float* out, const T* x, const int* off, int B,  \
                                                   int H, int mode) {                              \
        pool_fwd<T>(out, x, off, B, H, mode);                                                      \
    }                                                                                              \
    extern "C" __global__ void pooling_backward_##S(T* dx, const float* dout, const int* off,      \
                                                    int B, int H, int mode, int accumulate) {      \
        pool_bwd<T>(dx, dout, off, B, H, mode, accumulate);                                        \
    }
POOL(f32, float)
POOL(bf16, bf16)
