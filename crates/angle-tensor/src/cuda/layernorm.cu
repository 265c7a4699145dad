// Residual + layer norm, fused: s = dropout(a + abias) + res; out = LN(s) * w + b.
// Each of abias, res and dropout is optional. `sum` saves s (as T, and the normalisation reads
// the saved value back so that backward sees exactly what forward used); mean and rstd are f32.

#define LN_THREADS 256
#define LN_MAX_PER_THREAD 8 // dim <= 2048

template <typename T>
__device__ void res_ln_fwd(T* out, T* sum, float* mean, float* rstd, const T* a, const float* abias,
                           const T* res, const float* w, const float* b, int rows, int dim, float eps,
                           unsigned thr, float scale, unsigned long long seed, int dropout) {
    __shared__ float red[32];
    extern __shared__ float xs[];
    const int row = blockIdx.x;
    if (row >= rows) return;
    const long long base = (long long)row * dim;
    const float inv_dim = 1.0f / (float)dim;
    float s = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const long long i = base + c;
        float x = tof(a[i]);
        if (abias) x += abias[c];
        if (dropout) x = rng_keep(seed, (unsigned long long)i, thr) ? x * scale : 0.0f;
        if (res) x += tof(res[i]);
        sum[i] = fromf<T>(x);
        x = tof(sum[i]);
        xs[c] = x;
        s += x;
    }
    const float mu = block_sum(s, red) * inv_dim;
    float v = 0.0f;
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        const float d = xs[c] - mu;
        v += d * d;
    }
    const float var = block_sum(v, red) * inv_dim;
    const float r = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        out[base + c] = fromf<T>((xs[c] - mu) * r * w[c] + b[c]);
    }
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// da = dropout'(ds) and dres = ds, where ds is the layer-norm input gradient (each written,
// or added when `accumulate`); dw, db += (atomically, once per block of rows).
template <typename T>
__device__ void res_ln_bwd(T* da, T* dres, float* dw, float* db, const T* dout, const T* inp,
                           const float* mean, const float* rstd, const float* w, int rows, int dim,
                           unsigned thr, float scale, unsigned long long seed, int dropout,
                           int accumulate, int rows_per_block) {
    __shared__ float red[32];
    float acc_w[LN_MAX_PER_THREAD], acc_b[LN_MAX_PER_THREAD];
#pragma unroll
    for (int k = 0; k < LN_MAX_PER_THREAD; k++) {
        acc_w[k] = 0.0f;
        acc_b[k] = 0.0f;
    }
    const float inv_dim = 1.0f / (float)dim;
    const int r0 = blockIdx.x * rows_per_block;
    const int r1 = min(rows, r0 + rows_per_block);
    for (int row = r0; row < r1; row++) {
        const long long base = (long long)row * dim;
        const float mu = mean[row], rs = rstd[row];
        float dy[LN_MAX_PER_THREAD], xh[LN_MAX_PER_THREAD];
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int k = 0; k < LN_MAX_PER_THREAD; k++) {
            const int c = threadIdx.x + k * LN_THREADS;
            dy[k] = 0.0f;
            xh[k] = 0.0f;
            if (c < dim) {
                dy[k] = tof(dout[base + c]);
                xh[k] = (tof(inp[base + c]) - mu) * rs;
                const float dn = dy[k] * w[c];
                s1 += dn;
                s2 += dn * xh[k];
            }
        }
        s1 = block_sum(s1, red) * inv_dim;
        s2 = block_sum(s2, red) * inv_dim;
#pragma unroll
        for (int k = 0; k < LN_MAX_PER_THREAD; k++) {
            const int c = threadIdx.x + k * LN_THREADS;
            if (c < dim) {
                const long long i = base + c;
                const float ds = rs * (dy[k] * w[c] - s1 - xh[k] * s2);
                if (dres) dres[i] = fromf<T>(accumulate ? tof(dres[i]) + ds : ds);
                if (da) {
                    float g = ds;
                    if (dropout) g = rng_keep(seed, (unsigned long long)i, thr) ? ds * scale : 0.0f;
                    da[i] = fromf<T>(accumulate ? tof(da[i]) + g : g);
                }
                acc_w[k] += dy[k] * xh[k];
                acc_b[k] += dy[k];
            }
        }
    }
#pragma unroll
    for (int k = 0; k < LN_MAX_PER_THREAD; k++) {
        const int c = threadIdx.x + k * LN_THREADS;
        if (c < dim && r0 < r1) {
            atomicAdd(dw + c, acc_w[k]);
            atomicAdd(db + c, acc_b[k]);
        }
    }
}

// Warp-per-row versions (dim <= 32 * VPL): no block-wide barriers, a row's values in registers.
template <typename T, int VPL>
__device__ void res_ln_fwd_warp(T* out, T* sum, float* mean, float* rstd, const T* a,
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
    for (int k = 0; k < VPL; k++) {
        const int c = lane + 32 * k;
        x[k] = 0.0f;
        if (c < dim) {
            const long long i = base + c;
            float v = tof(a[i]);
            if (abias) v += abias[c];
            if (dropout) v = rng_keep(seed, (unsigned long long)i, thr) ? v * scale : 0.0f;
            if (res) v += tof(res[i]);
            const T sv = fromf<T>(v);
            sum[i] = sv;
            x[k] = tof(sv);
            s += x[k];
        }
    }
    const float mu = warp_sum(s) * inv_dim;
    float var = 0.0f;
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int c = lane + 32 * k;
        if (c < dim) var += (x[k] - mu) * (x[k] - mu);
    }
    var = warp_sum(var) * inv_dim;
    const float r = 1.0f / sqrtf(var + eps);
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int c = lane + 32 * k;
        if (c < dim) out[base + c] = fromf<T>((x[k] - mu) * r * w[c] + b[c]);
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// Each warp takes `rows_per_warp` consecutive rows and keeps its dw, db partials in registers;
// the block sums them in shared memory (2 * dim floats) and adds to dw, db once.
template <typename T, int VPL>
__device__ void res_ln_bwd_warp(T* da, T* dres, float* dw, float* db, const T* dout, const T* inp,
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
        // Two passes over the row (the second re-reads it from L1) instead of holding it in
        // registers: the dw, db partials already take 2 * VPL of them.
        float s1 = 0.0f, s2 = 0.0f;
#pragma unroll
        for (int k = 0; k < VPL; k++) {
            const int c = lane + 32 * k;
            if (c < dim) {
                const float dn = tof(dout[base + c]) * w[c];
                s1 += dn;
                s2 += dn * (tof(inp[base + c]) - mu) * rs;
            }
        }
        s1 = warp_sum(s1) * inv_dim;
        s2 = warp_sum(s2) * inv_dim;
#pragma unroll
        for (int k = 0; k < VPL; k++) {
            const int c = lane + 32 * k;
            if (c < dim) {
                const long long i = base + c;
                const float dyk = tof(dout[i]);
                const float xhk = (tof(inp[i]) - mu) * rs;
                const float ds = rs * (dyk * w[c] - s1 - xhk * s2);
                if (dres) dres[i] = fromf<T>(accumulate ? tof(dres[i]) + ds : ds);
                if (da) {
                    float g = ds;
                    if (dropout) g = rng_keep(seed, (unsigned long long)i, thr) ? ds * scale : 0.0f;
                    da[i] = fromf<T>(accumulate ? tof(da[i]) + g : g);
                }
                aw[k] += dyk * xhk;
                ab[k] += dyk;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < VPL; k++) {
        const int c = lane + 32 * k;
        if (c < dim) {
            atomicAdd(&sacc[c], aw[k]);
            atomicAdd(&sacc[dim + c], ab[k]);
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < dim; c += blockDim.x) {
        atomicAdd(dw + c, sacc[c]);
        atomicAdd(db + c, sacc[dim + c]);
    }
}

#define RESLN_WARP(S, T, V)                                                                        \
    extern "C" __global__ void residual_layernorm_forward_w##V##_##S(                              \
        T* out, T* sum, float* mean, float* rstd, const T* a, const float* abias, const T* res,    \
        const float* w, const float* b, int rows, int dim, float eps, unsigned thr, float scale,   \
        unsigned long long seed, int dropout) {                                                    \
        res_ln_fwd_warp<T, V>(out, sum, mean, rstd, a, abias, res, w, b, rows, dim, eps, thr,      \
                              scale, seed, dropout);                                               \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256, 2) residual_layernorm_backward_w##V##_##S(   \
        T* da, T* dres, float* dw, float* db, const T* dout, const T* inp, const float* mean,      \
        const float* rstd, const float* w, int rows, int dim, unsigned thr, float scale,           \
        unsigned long long seed, int dropout, int accumulate, int rows_per_warp) {                 \
        res_ln_bwd_warp<T, V>(da, dres, dw, db, dout, inp, mean, rstd, w, rows, dim, thr, scale,   \
                              seed, dropout, accumulate, rows_per_warp);                           \
    }
RESLN_WARP(f32, float, 4)
RESLN_WARP(f32, float, 8)
RESLN_WARP(f32, float, 12)
RESLN_WARP(f32, float, 16)
RESLN_WARP(f32, float, 24)
RESLN_WARP(f32, float, 32)
RESLN_WARP(bf16, bf16, 4)
RESLN_WARP(bf16, bf16, 8)
RESLN_WARP(bf16, bf16, 12)
RESLN_WARP(bf16, bf16, 16)
RESLN_WARP(bf16, bf16, 24)
RESLN_WARP(bf16, bf16, 32)

#define RESLN(S, T)                                                                                \
    extern "C" __global__ void residual_layernorm_forward_##S(                                     \
        T* out, T* sum, float* mean, float* rstd, const T* a, const float* abias, const T* res,    \
        const float* w, const float* b, int rows, int dim, float eps, unsigned thr, float scale,   \
        unsigned long long seed, int dropout) {                                                    \
        res_ln_fwd<T>(out, sum, mean, rstd, a, abias, res, w, b, rows, dim, eps, thr, scale, seed, \
                      dropout);                                                                    \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(LN_THREADS) residual_layernorm_backward_##S(      \
        T* da, T* dres, float* dw, float* db, const T* dout, const T* inp, const float* mean,      \
        const float* rstd, const float* w, int rows, int dim, unsigned thr, float scale,           \
        unsigned long long seed, int dropout, int accumulate, int rows_per_block) {                \
        res_ln_bwd<T>(da, dres, dw, db, dout, inp, mean, rstd, w, rows, dim, thr, scale, seed,     \
                      dropout, accumulate, rows_per_block);                                        \
    }
RESLN(f32, float)
RESLN(bf16, bf16)
