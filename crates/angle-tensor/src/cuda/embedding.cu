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

// Word and position rows: atomic adds (a row meets the few tokens that share its id or
// position). The type table, where every token of a batch meets one or two rows, goes through
// the column reduction below instead, unless `dtyp` is given here (more than 4 types).
template <typename T>
__device__ void emb_bwd(float* dword, float* dpos, float* dtyp, const T* dout, const int* ids,
                        const int* pos, const int* typ, int n, int h) {
    const int t = blockIdx.x;
    if (t >= n) return;
    float* w = dword + (long long)ids[t] * h;
    float* p = dpos + (long long)pos[t] * h;
    float* y = dtyp ? dtyp + (long long)typ[t] * h : nullptr;
    const T* d = dout + (long long)t * h;
    for (int c = threadIdx.x; c < h; c += blockDim.x) {
        const float g = tof(d[c]);
        atomicAdd(w + c, g);
        atomicAdd(p + c, g);
        if (y) atomicAdd(y + c, g);
    }
}

// dtyp[r, c] += sum over tokens of type r of dout[t, c], for up to 4 types: block of 32 columns
// x 8 token lanes over `rows_per_block` tokens, one atomic per (type, column) per block.
template <typename T>
__device__ void type_grad(float* dtyp, const T* dout, const int* typ, int n, int h, int ntypes,
                          int rows_per_block) {
    __shared__ float part[4][8][33];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int c = blockIdx.x * 32 + tx;
    const int r0 = blockIdx.y * rows_per_block;
    const int r1 = min(n, r0 + rows_per_block);
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < h) {
        for (int r = r0 + ty; r < r1; r += 8) {
            const float g = tof(dout[(long long)r * h + c]);
            const int y = typ[r];
#pragma unroll
            for (int k = 0; k < 4; k++) s[k] += (y == k) ? g : 0.0f;
        }
    }
#pragma unroll
    for (int k = 0; k < 4; k++) part[k][ty][tx] = s[k];
    __syncthreads();
    if (ty < ntypes && ty < 4 && c < h) {
        float t = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) t += part[ty][j][tx];
        atomicAdd(dtyp + (long long)ty * h + c, t);
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
    }                                                                                              \
    extern "C" __global__ void embedding_type_grad_##S(float* dtyp, const T* dout, const int* typ, \
                                                       int n, int h, int ntypes,                   \
                                                       int rows_per_block) {                       \
        type_grad<T>(dtyp, dout, typ, n, h, ntypes, rows_per_block);                               \
    }
EMB(f32, float)
EMB(bf16, bf16)
