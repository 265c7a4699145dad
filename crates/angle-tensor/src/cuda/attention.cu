// Attention over packed sequences, through a padded [B, heads, T, d] layout so that cuBLAS's
// strided-batched products do the heavy work: permute (qkv + bias -> padded q, k, v), masked
// softmax (a row attends to the columns j < len_b of its own sequence; padded rows are zero),
// attention-probability dropout with the CPU op's element numbering, and the way back.
// Padding rows/columns are written as zeros, so products over them contribute nothing.

struct Geo {
    int B, nh, T, hd;
};

// 32-bit index arithmetic (the launchers refuse layouts of 2^31 elements or more): 64-bit
// division costs tens of instructions per element.
__device__ __forceinline__ void split4(long long idx64, Geo g, int& b, int& h, int& t, int& d) {
    const int idx = (int)idx64;
    d = idx % g.hd;
    int r = idx / g.hd;
    t = r % g.T;
    r /= g.T;
    h = r % g.nh;
    b = r / g.nh;
}

template <typename T>
__device__ void qkv_permute(T* q, T* k, T* v, const T* qkv, const float* bias, const int* off, Geo g) {
    const long long total = (long long)g.B * g.nh * g.T * g.hd;
    const int H = g.nh * g.hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d;
        split4(idx, g, b, h, t, d);
        const int len = off[b + 1] - off[b];
        float xq = 0.0f, xk = 0.0f, xv = 0.0f;
        if (t < len) {
            const long long src = (long long)(off[b] + t) * 3 * H + h * g.hd + d;
            const int c = h * g.hd + d;
            xq = tof(qkv[src]);
            xk = tof(qkv[src + H]);
            xv = tof(qkv[src + 2 * H]);
            if (bias) {
                xq += bias[c];
                xk += bias[c + H];
                xv += bias[c + 2 * H];
            }
        }
        q[idx] = fromf<T>(xq);
        k[idx] = fromf<T>(xk);
        v[idx] = fromf<T>(xv);
    }
}

// dqkv rows (written, or added when `accumulate`) from padded dq, dk, dv.
template <typename T>
__device__ void qkv_permute_bwd(T* dqkv, const T* dq, const T* dk, const T* dv, const int* off, Geo g,
                                int accumulate) {
    const long long total = (long long)g.B * g.nh * g.T * g.hd;
    const int H = g.nh * g.hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d;
        split4(idx, g, b, h, t, d);
        const int len = off[b + 1] - off[b];
        if (t >= len) continue;
        const long long dst = (long long)(off[b] + t) * 3 * H + h * g.hd + d;
        float a = tof(dq[idx]), bk = tof(dk[idx]), c = tof(dv[idx]);
        if (accumulate) {
            a += tof(dqkv[dst]);
            bk += tof(dqkv[dst + H]);
            c += tof(dqkv[dst + 2 * H]);
        }
        dqkv[dst] = fromf<T>(a);
        dqkv[dst + H] = fromf<T>(bk);
        dqkv[dst + 2 * H] = fromf<T>(c);
    }
}

// out[N, H] <- ctx[B, nh, T, d] (real rows only).
template <typename T>
__device__ void unpermute(T* out, const T* ctx, const int* off, Geo g) {
    const long long total = (long long)g.B * g.nh * g.T * g.hd;
    const int H = g.nh * g.hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d;
        split4(idx, g, b, h, t, d);
        if (t >= off[b + 1] - off[b]) continue;
        out[(long long)(off[b] + t) * H + h * g.hd + d] = ctx[idx];
    }
}

// dctx[B, nh, T, d] <- dout[N, H], zeros at padding.
template <typename T>
__device__ void unpermute_bwd(T* dctx, const T* dout, const int* off, Geo g) {
    const long long total = (long long)g.B * g.nh * g.T * g.hd;
    const int H = g.nh * g.hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d;
        split4(idx, g, b, h, t, d);
        T x = fromf<T>(0.0f);
        if (t < off[b + 1] - off[b]) x = dout[(long long)(off[b] + t) * H + h * g.hd + d];
        dctx[idx] = x;
    }
}

// Vectorised permutes: 4 consecutive d per thread (hd % 4 == 0 and 4-element-aligned views:
// the launcher checks). `g4` is the geometry with hd replaced by hd / 4, so split4 yields the
// group d4 and the padded element index is 4 * idx; values and rounding as the kernels above.
template <typename T>
__device__ void qkv_permute4(T* q, T* k, T* v, const T* qkv, const float* bias, const int* off,
                             Geo g4) {
    const long long total = (long long)g4.B * g4.nh * g4.T * g4.hd;
    const int hd = 4 * g4.hd;
    const int H = g4.nh * hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d4;
        split4(idx, g4, b, h, t, d4);
        const int len = off[b + 1] - off[b];
        float xq[4] = {0.0f, 0.0f, 0.0f, 0.0f}, xk[4] = {0.0f, 0.0f, 0.0f, 0.0f},
              xv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (t < len) {
            const int c = h * hd + 4 * d4;
            const long long src = (long long)(off[b] + t) * 3 * H + c;
            load4(qkv + src, xq);
            load4(qkv + src + H, xk);
            load4(qkv + src + 2 * H, xv);
            if (bias) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    xq[e] += bias[c + e];
                    xk[e] += bias[c + H + e];
                    xv[e] += bias[c + 2 * H + e];
                }
            }
        }
        store4(q + 4 * idx, xq);
        store4(k + 4 * idx, xk);
        store4(v + 4 * idx, xv);
    }
}

template <typename T>
__device__ void qkv_permute_bwd4(T* dqkv, const T* dq, const T* dk, const T* dv, const int* off,
                                 Geo g4, int accumulate) {
    const long long total = (long long)g4.B * g4.nh * g4.T * g4.hd;
    const int hd = 4 * g4.hd;
    const int H = g4.nh * hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d4;
        split4(idx, g4, b, h, t, d4);
        if (t >= off[b + 1] - off[b]) continue;
        const long long dst = (long long)(off[b] + t) * 3 * H + h * hd + 4 * d4;
        float a[4], bk[4], c[4];
        load4(dq + 4 * idx, a);
        load4(dk + 4 * idx, bk);
        load4(dv + 4 * idx, c);
        if (accumulate) {
            float o[4];
            load4(dqkv + dst, o);
#pragma unroll
            for (int e = 0; e < 4; e++) a[e] += o[e];
            load4(dqkv + dst + H, o);
#pragma unroll
            for (int e = 0; e < 4; e++) bk[e] += o[e];
            load4(dqkv + dst + 2 * H, o);
#pragma unroll
            for (int e = 0; e < 4; e++) c[e] += o[e];
        }
        store4(dqkv + dst, a);
        store4(dqkv + dst + H, bk);
        store4(dqkv + dst + 2 * H, c);
    }
}

template <typename T>
__device__ void unpermute4(T* out, const T* ctx, const int* off, Geo g4) {
    const long long total = (long long)g4.B * g4.nh * g4.T * g4.hd;
    const int hd = 4 * g4.hd;
    const int H = g4.nh * hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d4;
        split4(idx, g4, b, h, t, d4);
        if (t >= off[b + 1] - off[b]) continue;
        float x[4];
        load4(ctx + 4 * idx, x);
        store4(out + (long long)(off[b] + t) * H + h * hd + 4 * d4, x);
    }
}

template <typename T>
__device__ void unpermute_bwd4(T* dctx, const T* dout, const int* off, Geo g4) {
    const long long total = (long long)g4.B * g4.nh * g4.T * g4.hd;
    const int hd = 4 * g4.hd;
    const int H = g4.nh * hd;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        int b, h, t, d4;
        split4(idx, g4, b, h, t, d4);
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (t < off[b + 1] - off[b]) load4(dout + (long long)(off[b] + t) * H + h * hd + 4 * d4, x);
        store4(dctx + 4 * idx, x);
    }
}

// One warp per row (b, h, i) of the [B, nh, T, T] scores. Writes the probabilities to `att`
// and, when `dropout`, the dropped-out ones to `attd` with the CPU op's numbering: element
// (i, j) of sequence b, head h is number pbase[b] + h len² + i len + j.
template <typename T>
__device__ void softmax_fwd(T* att, T* attd, const T* scores, const int* off, const long long* pbase,
                            Geo g, unsigned thr, float scale, unsigned long long seed, int dropout) {
    const long long rows = (long long)g.B * g.nh * g.T;
    const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int i = (int)row % g.T;
    const int bh = (int)row / g.T;
    const int b = bh / g.nh, h = bh % g.nh;
    const int len = off[b + 1] - off[b];
    const T* s = scores + row * g.T;
    T* p = att + row * g.T;
    T* pd = dropout ? attd + row * g.T : nullptr;
    if (i >= len) {
        for (int j = lane; j < g.T; j += 32) {
            p[j] = fromf<T>(0.0f);
            if (pd) pd[j] = fromf<T>(0.0f);
        }
        return;
    }
    float mx = -ANGLE_INF;
    for (int j = lane; j < len; j += 32) mx = fmaxf(mx, tof(s[j]));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < len; j += 32) sum += expf(tof(s[j]) - mx);
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    const unsigned long long rb = (unsigned long long)(pbase[b] + (long long)h * len * len + (long long)i * len);
    for (int j = lane; j < g.T; j += 32) {
        const float v = j < len ? expf(tof(s[j]) - mx) * inv : 0.0f;
        p[j] = fromf<T>(v);
        if (pd) pd[j] = fromf<T>(j < len && rng_keep(seed, rb + j, thr) ? tof(p[j]) * scale : 0.0f);
    }
}

// attd from att and the mask again (backward regenerates instead of storing).
template <typename T>
__device__ void dropout_regen(T* attd, const T* att, const int* off, const long long* pbase, Geo g,
                              unsigned thr, float scale, unsigned long long seed) {
    const long long total = (long long)g.B * g.nh * g.T * g.T;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total;
         idx += (long long)gridDim.x * blockDim.x) {
        const int j = (int)idx % g.T;
        const int row = (int)idx / g.T;
        const int i = row % g.T;
        const int bh = row / g.T;
        const int b = bh / g.nh, h = bh % g.nh;
        const int len = off[b + 1] - off[b];
        float v = 0.0f;
        if (i < len && j < len) {
            const unsigned long long n =
                (unsigned long long)(pbase[b] + (long long)h * len * len + (long long)i * len + j);
            v = rng_keep(seed, n, thr) ? tof(att[idx]) * scale : 0.0f;
        }
        attd[idx] = fromf<T>(v);
    }
}

// In place: dp (gradient of the dropped-out probabilities) -> gradient of the scores (before
// the 1/sqrt(d) scale, which the products apply).
template <typename T>
__device__ void softmax_bwd(T* dp, const T* att, const int* off, const long long* pbase, Geo g,
                            unsigned thr, float scale, unsigned long long seed, int dropout) {
    const long long rows = (long long)g.B * g.nh * g.T;
    const long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const int i = (int)row % g.T;
    const int bh = (int)row / g.T;
    const int b = bh / g.nh, h = bh % g.nh;
    const int len = off[b + 1] - off[b];
    T* d = dp + row * g.T;
    const T* p = att + row * g.T;
    if (i >= len) {
        for (int j = lane; j < g.T; j += 32) d[j] = fromf<T>(0.0f);
        return;
    }
    const unsigned long long rb = (unsigned long long)(pbase[b] + (long long)h * len * len + (long long)i * len);
    float dot = 0.0f;
    for (int j = lane; j < len; j += 32) {
        float dv = tof(d[j]);
        if (dropout) dv = rng_keep(seed, rb + j, thr) ? dv * scale : 0.0f;
        dot += tof(p[j]) * dv;
    }
    dot = warp_sum(dot);
    for (int j = lane; j < g.T; j += 32) {
        float r = 0.0f;
        if (j < len) {
            float dv = tof(d[j]);
            if (dropout) dv = rng_keep(seed, rb + j, thr) ? dv * scale : 0.0f;
            r = tof(p[j]) * (dv - dot);
        }
        d[j] = fromf<T>(r);
    }
}

#define ATTN(S, T)                                                                                 \
    extern "C" __global__ void qkv_permute_##S(T* q, T* k, T* v, const T* qkv, const float* bias,  \
                                               const int* off, int B, int nh, int Tm, int hd) {    \
        qkv_permute<T>(q, k, v, qkv, bias, off, Geo{B, nh, Tm, hd});                               \
    }                                                                                              \
    extern "C" __global__ void qkv_permute_backward_##S(T* dqkv, const T* dq, const T* dk,         \
                                                        const T* dv, const int* off, int B,        \
                                                        int nh, int Tm, int hd, int accumulate) {  \
        qkv_permute_bwd<T>(dqkv, dq, dk, dv, off, Geo{B, nh, Tm, hd}, accumulate);                 \
    }                                                                                              \
    extern "C" __global__ void attn_unpermute_##S(T* out, const T* ctx, const int* off, int B,     \
                                                  int nh, int Tm, int hd) {                        \
        unpermute<T>(out, ctx, off, Geo{B, nh, Tm, hd});                                           \
    }                                                                                              \
    extern "C" __global__ void attn_unpermute_backward_##S(T* dctx, const T* dout, const int* off, \
                                                           int B, int nh, int Tm, int hd) {        \
        unpermute_bwd<T>(dctx, dout, off, Geo{B, nh, Tm, hd});                                     \
    }                                                                                              \
    extern "C" __global__ void qkv_permute4_##S(T* q, T* k, T* v, const T* qkv, const float* bias, \
                                                const int* off, int B, int nh, int Tm, int hd4) {  \
        qkv_permute4<T>(q, k, v, qkv, bias, off, Geo{B, nh, Tm, hd4});                             \
    }                                                                                              \
    extern "C" __global__ void qkv_permute_backward4_##S(T* dqkv, const T* dq, const T* dk,        \
                                                         const T* dv, const int* off, int B,       \
                                                         int nh, int Tm, int hd4,                  \
                                                         int accumulate) {                         \
        qkv_permute_bwd4<T>(dqkv, dq, dk, dv, off, Geo{B, nh, Tm, hd4}, accumulate);               \
    }                                                                                              \
    extern "C" __global__ void attn_unpermute4_##S(T* out, const T* ctx, const int* off, int B,    \
                                                   int nh, int Tm, int hd4) {                      \
        unpermute4<T>(out, ctx, off, Geo{B, nh, Tm, hd4});                                         \
    }                                                                                              \
    extern "C" __global__ void attn_unpermute_backward4_##S(T* dctx, const T* dout,                \
                                                            const int* off, int B, int nh, int Tm, \
                                                            int hd4) {                             \
        unpermute_bwd4<T>(dctx, dout, off, Geo{B, nh, Tm, hd4});                                   \
    }                                                                                              \
    extern "C" __global__ void attn_softmax_forward_##S(                                           \
        T* att, T* attd, const T* scores, const int* off, const long long* pbase, int B, int nh,   \
        int Tm, unsigned thr, float scale, unsigned long long seed, int dropout) {                 \
        softmax_fwd<T>(att, attd, scores, off, pbase, Geo{B, nh, Tm, 1}, thr, scale, seed,         \
                       dropout);                                                                   \
    }                                                                                              \
    extern "C" __global__ void attn_dropout_regen_##S(T* attd, const T* att, const int* off,       \
                                                      const long long* pbase, int B, int nh,       \
                                                      int Tm, unsigned thr, float scale,           \
                                                      unsigned long long seed) {                   \
        dropout_regen<T>(attd, att, off, pbase, Geo{B, nh, Tm, 1}, thr, scale, seed);              \
    }                                                                                              \
    extern "C" __global__ void attn_softmax_backward_##S(                                          \
        T* dp, const T* att, const int* off, const long long* pbase, int B, int nh, int Tm,        \
        unsigned thr, float scale, unsigned long long seed, int dropout) {                         \
        softmax_bwd<T>(dp, att, off, pbase, Geo{B, nh, Tm, 1}, thr, scale, seed, dropout);         \
    }
ATTN(f32, float)
ATTN(bf16, bf16)
