// Prepended to every kernel file (see context.rs): nothing here needs a CUDA header, so NVRTC
// compiles the kernels with no CUDA installation beside it.

// bf16 as raw bits: conversions written out so that no cuda_bf16.h is needed.
#define ANGLE_INF __int_as_float(0x7f800000)

struct bf16 {
    unsigned short x;
};

__device__ __forceinline__ float tof(float v) { return v; }
__device__ __forceinline__ float tof(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }

template <typename T> __device__ __forceinline__ T fromf(float v);
template <> __device__ __forceinline__ float fromf<float>(float v) { return v; }
// Round to nearest even, NaN kept quiet (what half::bf16::from_f32 does on the host).
template <> __device__ __forceinline__ bf16 fromf<bf16>(float v) {
    unsigned u = __float_as_uint(v);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.x = (unsigned short)((u >> 16) | 0x40u);
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        r.x = (unsigned short)(u >> 16);
    }
    return r;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block; every thread gets the result. `sh` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : -ANGLE_INF;
    return warp_max(v);
}

// The dropout RNG of angle_tensor::rng, bit for bit: SplitMix64 output `i` of state `seed`;
// element i is kept when its top 24 bits reach the threshold.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ bool rng_keep(unsigned long long seed, unsigned long long i, unsigned thr) {
    const unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    return (unsigned)(mix64(z) >> 40) >= thr;
}
