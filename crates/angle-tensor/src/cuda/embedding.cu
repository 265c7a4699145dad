// Token + position + type embedding gather (forward) and scatter-add (backward).
// Tables are f32 parameters; activations are T (f32 or bf16).

template <typename T>
__device__ void emb_fwd(T* out, const int* ids, const int* pos, const int* typ, const float* word,
                        const float* wpos, const float* wtyp, int n, int h) {
    const int t = blockIdx.x;
    if (t >= n) return;
    const float* w = word + (long long)ids[t] * h;
    const float* p = wpos + (long long)pos[t] * h;
    const float* y = wtyp + (long long)typ[t] * h;
    T* o = out + (long long)t * h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) o[c] = fromf<T>(w[c] + p[c] + y[c]);
}

// Atomic adds: rows of one id from many tokens meet in the same table row.
template <typename T>
__device__ void emb_bwd(float* dword, float* dpos, float* dtyp, const T* dout, const int* ids,
                        const int* pos, const int* typ, int n, int h) {
    const int t = blockIdx.x;
    if (t >= n) return;
    float* w = dword + (long long)ids[t] * h;
    float* p = dpos + (long long)pos[t] * h;
    float* y = dtyp + (long long)typ[t] * h;
    const T* d = dout + (long long)t * h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float g = tof(d[c]);
        atomicAdd(w + c, g);
        atomicAdd(p + c, g);
        atomicAdd(y + c, g);
    }
}

#define EMB(S, T)                                                                                  \
    extern "C" __global__ void embedding_forward_##S(T* out, const int* ids, const int* pos,       \
                                                     const int* typ, const float* word,            \
                                                     const float* wpos, const float* wtyp, int n,  \
                                                     int h) {                                      \
        emb_fwd<T>(out, ids, pos, typ, word, wpos, wtyp, n, h);                                    \
    }                                                                                              \
    extern "C" __global__ void embedding_backward_##S(float* dword, float* dpos, float* dtyp,      \
                                                      const T* dout, const int* ids,               \
                                                      const int* pos, const int* typ, int n,       \
                                                      int h) {                                     \
        emb_bwd<T>(dword, dpos, dtyp, dout, ids, pos, typ, n, h);                                  \
    }
EMB(f32, float)
EMB(bf16, bf16)
