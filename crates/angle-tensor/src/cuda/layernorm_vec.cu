// Residual + layer norm, vectorised warp-per-row kernels (their own file: NVRTC compiles a file
// at a time, and a model whose widths are multiples of 4 then never compiles the scalar ones).
// Same arguments, numbering and rounding as the warp kernels of layernorm.cu.

// Vectorised warp-per-row versions (dim % 4 == 0, T views 4-element aligned: the launcher
// checks): lane handles groups of 4 consecutive columns, 4 * (lane + 32 j), with one 16-byte (f32)
// or 8-byte (bf16) access each; weights and biases are read per element (their offsets in the
// parameter buffer are arbitrary). Element numbering (dropout) and rounding as above.
template <typename T, int VPL>
__device__ void res_ln_fwd_warp4(T* out, T* sum, float* mean, float* rstd, const T* a,
                                 const float* abias, const T* res, const float* w, const float* b,
                                 int rows, int dim, float eps, unsigned thr, float scale,
                                 unsigned long long seed, int dropout) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const long long base = (long long)row * dim;
    const float inv_dim = 1.0f / (float)dim;
    float x[VPL];
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < VPL / 4; j++) {
        const int c = 4 * (lane + 32 * j);
#pragma unroll
        for (int k = 0; k < 4; k++) x[4 * j + k] = 0.0f;
        if (c < dim) {
            const long long i = base + c;
            float v[4], r[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            load4(a + i, v);
            if (res) load4(res + i, r);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float t = v[k];
                if (abias) t += abias[c + k];
                if (dropout) t = rng_keep(seed, (unsigned long long)(i + k), thr) ? t * scale : 0.0f;
                if (res) t += r[k];
                v[k] = tof(fromf<T>(t));
                x[4 * j + k] = v[k];
                s += v[k];
            }
            store4(sum + i, v);
        }
    }
    const float mu = warp_sum(s) * inv_dim;
    float var = 0.0f;
#pragma unroll
    for (int j = 0; j < VPL / 4; j++) {
        if (4 * (lane + 32 * j) < dim) {
#pragma unroll
            for (int k = 0; k < 4; k++) var += (x[4 * j + k] - mu) * (x[4 * j + k] - mu);
        }
    }
    var = warp_sum(var) * inv_dim;
    const float r = 1.0f / sqrtf(var + eps);
#pragma unroll
    for (int j = 0; j < VPL / 4; j++) {
        const int c = 4 * (lane + 32 * j);
        if (c < dim) {
            float o[4];
#pragma unroll
            for (int k = 0; k < 4; k++) o[k] = (x[4 * j + k] - mu) * r * w[c + k] + b[c + k];
            store4(out + base + c, o);
        }
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

template <typename T, int VPL>
__device__ void res_ln_bwd_warp4(T* da, T* dres, float* dw, float* db, const T* dout, const T* inp,
                                 const float* mean, const float* rstd, const float* w, int rows,
                                 int dim, unsigned thr, float scale, unsigned long long seed,
                                 int dropout, int accumulate, int rows_per_warp) {
    extern __shared__ float sacc[];
    for (int c = threadIdx.x; c < 2 * dim; c += blockDim.x) sacc[c] = 0.0f;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const int wrp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const float inv_dim = 1.0f / (float)dim;
    float aw[VPL], ab[VPL];
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        aw[k] = 0.0f;
        ab[k] = 0.0f;
    }
    const long long r0 = (long long)wrp * rows_per_warp;
    const long long r1 = min((long long)rows, r0 + rows_per_warp);
    for (long long row = r0; row < r1; row++) {
        const long long base = row * dim;
        const float mu = mean[row], rs = rstd[row];
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int j = 0; j < VPL / 4; j++) {
            const int c = 4 * (lane + 32 * j);
            if (c < dim) {
                float dy[4], xv[4];
                load4(dout + base + c, dy);
                load4(inp + base + c, xv);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const float dn = dy[k] * w[c + k];
                    s1 += dn;
                    s2 += dn * (xv[k] - mu) * rs;
                }
            }
        }
        s1 = warp_sum(s1) * inv_dim;
        s2 = warp_sum(s2) * inv_dim;
#pragma unroll
        for (int j = 0; j < VPL / 4; j++) {
            const int c = 4 * (lane + 32 * j);
            if (c < dim) {
                const long long i = base + c;
                float dy[4], xv[4], gr[4], ga[4];
                float old_r[4] = {0.0f, 0.0f, 0.0f, 0.0f}, old_a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                load4(dout + i, dy);
                load4(inp + i, xv);
                if (accumulate && dres) load4(dres + i, old_r);
                if (accumulate && da) load4(da + i, old_a);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    const float xhk = (xv[k] - mu) * rs;
                    const float ds = rs * (dy[k] * w[c + k] - s1 - xhk * s2);
                    float g = ds;
                    if (dropout)
                        g = rng_keep(seed, (unsigned long long)(i + k), thr) ? ds * scale : 0.0f;
                    gr[k] = accumulate ? old_r[k] + ds : ds;
                    ga[k] = accumulate ? old_a[k] + g : g;
                    aw[4 * j + k] += dy[k] * xhk;
                    ab[4 * j + k] += dy[k];
                }
                if (dres) store4(dres + i, gr);
                if (da) store4(da + i, ga);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < VPL / 4; j++) {
        const int c = 4 * (lane + 32 * j);
        if (c < dim) {
#pragma unroll
            for (int k = 0; k < 4; k++) {
                atomicAdd(&sacc[c + k], aw[4 * j + k]);
                atomicAdd(&sacc[dim + c + k], ab[4 * j + k]);
            }
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        atomicAdd(dw + c, sacc[c]);
        atomicAdd(db + c, sacc[dim + c]);
    }
}

#define RESLN_WARP4(S, T, V)                                                                       \
    extern "C" __global__ void residual_layernorm_forward_v##V##_##S(                              \
        T* out, T* sum, float* mean, float* rstd, const T* a, const float* abias, const T* res,    \
        const float* w, const float* b, int rows, int dim, float eps, unsigned thr, float scale,   \
        unsigned long long seed, int dropout) {                                                    \
        res_ln_fwd_warp4<T, V>(out, sum, mean, rstd, a, abias, res, w, b, rows, dim, eps, thr,     \
                               scale, seed, dropout);                                              \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256, 2) residual_layernorm_backward_v##V##_##S(   \
        T* da, T* dres, float* dw, float* db, const T* dout, const T* inp, const float* mean,      \
        const float* rstd, const float* w, int rows, int dim, unsigned thr, float scale,           \
        unsigned long long seed, int dropout, int accumulate, int rows_per_warp) {                 \
        res_ln_bwd_warp4<T, V>(da, dres, dw, db, dout, inp, mean, rstd, w, rows, dim, thr, scale,  \
                               seed, dropout, accumulate, rows_per_warp);                          \
    }
RESLN_WARP4(f32, float, 4)
RESLN_WARP4(f32, float, 8)
RESLN_WARP4(f32, float, 12)
RESLN_WARP4(f32, float, 16)
RESLN_WARP4(f32, float, 24)
RESLN_WARP4(f32, float, 32)
RESLN_WARP4(bf16, bf16, 4)
RESLN_WARP4(bf16, bf16, 8)
RESLN_WARP4(bf16, bf16, 12)
RESLN_WARP4(bf16, bf16, 16)
RESLN_WARP4(bf16, bf16, 24)
RESLN_WARP4(bf16, bf16, 32)
