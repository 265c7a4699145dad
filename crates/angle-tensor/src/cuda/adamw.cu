// Global gradient norm, clipping and a fused AdamW over the flat f32 buffers, with no host
// round trip: the clip coefficient is computed from the device-side squared norm by every
// thread (as torch.nn.utils.clip_grad_norm_: max_norm / (norm + 1e-6) when below 1).

extern "C" __global__ void grad_norm_sq(float* out, const float* g, long long n) {
    __shared__ float red[32];
    float s = 0.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = g[i];
        s += x * x;
    }
    s = block_sum(s, red);
    if (threadIdx.x == 0) atomicAdd(out, s);
}

__device__ __forceinline__ float clip_coef(const float* norm_sq, float max_norm) {
    if (!norm_sq || !(max_norm > 0.0f)) return 1.0f;
    const float c = max_norm / (sqrtf(*norm_sq) + 1e-6f);
    return c < 1.0f ? c : 1.0f;
}

extern "C" __global__ void scale_by_norm(float* g, long long n, const float* norm_sq, float max_norm) {
    const float c = clip_coef(norm_sq, max_norm);
    if (c == 1.0f) return;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        g[i] *= c;
}

// Whether index i lies in one of the n sorted, disjoint ranges [r[2j], r[2j+1]): a binary search over
// a few hundred bounds per parameter group boundary, cheaper than a per-element mask.
__device__ __forceinline__ bool in_ranges(const long long* r, int n, long long i) {
    int lo = 0, hi = n;
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (r[2 * mid] <= i) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 && i < r[2 * (lo - 1) + 1];
}

// PyTorch's AdamW order: p *= 1 - lr wd; m, v update; p -= (lr/bc1) m / (sqrt(v)/sqrt(bc2) + eps).
// `pcopy` (optional) receives the updated weights in bf16 for the mixed-precision products. Indices in
// the `n_nd` ranges `no_decay` are not decayed (the Hugging Face Trainer's biases and norm weights).
extern "C" __global__ void adamw_update(float* p, const float* g, float* m, float* v, bf16* pcopy,
                                        long long n, float decay, float step, float rsqrt_bc2,
                                        float b1, float b2, float c1, float c2, float eps,
                                        const float* norm_sq, float max_norm,
                                        const long long* no_decay, int n_nd) {
    const float c = clip_coef(norm_sq, max_norm);
    const bool masked = n_nd > 0 && decay != 1.0f;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float gi = g[i] * c;
        float pi = p[i] * (masked && in_ranges(no_decay, n_nd, i) ? 1.0f : decay);
        const float mi = b1 * m[i] + c1 * gi;
        const float vi = b2 * v[i] + c2 * gi * gi;
        pi -= step * mi / (sqrtf(vi) * rsqrt_bc2 + eps);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
        if (pcopy) pcopy[i] = fromf<bf16>(pi);
    }
}
