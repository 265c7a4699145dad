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

// Four consecutive elements in one access (16 bytes of f32, 8 of bf16), converted to f32. The
// caller guarantees the alignment (launchers check the address and that the row width is a
// multiple of 4). bf16 element 2k is the low half of 32-bit word k (little-endian).
__device__ __forceinline__ void load4(const float* p, float v[4]) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x;
    v[1] = t.y;
    v[2] = t.z;
    v[3] = t.w;
}
__device__ __forceinline__ void load4(const bf16* p, float v[4]) {
    const uint2 t = *reinterpret_cast<const uint2*>(p);
    v[0] = __uint_as_float(t.x << 16);
    v[1] = __uint_as_float(t.x & 0xffff0000u);
    v[2] = __uint_as_float(t.y << 16);
    v[3] = __uint_as_float(t.y & 0xffff0000u);
}
__device__ __forceinline__ void store4(float* p, const float v[4]) {
    float4 t;
    t.x = v[0];
    t.y = v[1];
    t.z = v[2];
    t.w = v[3];
    *reinterpret_cast<float4*>(p) = t;
}
__device__ __forceinline__ void store4(bf16* p, const float v[4]) {
    uint2 t;
    t.x = (unsigned)fromf<bf16>(v[0]).x | ((unsigned)fromf<bf16>(v[1]).x << 16);
    t.y = (unsigned)fromf<bf16>(v[2]).x | ((unsigned)fromf<bf16>(v[3]).x << 16);
    *reinterpret_cast<uint2*>(p) = t;
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
