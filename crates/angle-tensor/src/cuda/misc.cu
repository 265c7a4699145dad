// Small helpers: bias add, bias gradient (column sums), f32 <-> bf16 casts, fills.

template <typename T>
__device__ void add_bias_k(T* out, const float* bias, long long n, int cols) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = fromf<T>(tof(out[i]) + bias[i % cols]);
    }
}

// db[c] += sum over rows of dout[r, c]. Block (32 columns x 8 row lanes) over a chunk of
// `rows_per_block` rows; coalesced loads, one atomic per column per block.
template <typename T>
__device__ void bias_grad_k(float* db, const T* dout, int rows, int cols, int rows_per_block) {
    __shared__ float part[8][33];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int c = blockIdx.x * 32 + tx;
    const int r0 = blockIdx.y * rows_per_block;
    const int r1 = min(rows, r0 + rows_per_block);
    float s = 0.0f;
    if (c < cols) {
        for (int r = r0 + ty; r < r1; r += 8) s += tof(dout[(long long)r * cols + c]);
    }
    part[ty][tx] = s;
    __syncthreads();
    if (ty == 0 && c < cols) {
        float t = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) t += part[k][tx];
        atomicAdd(db + c, t);
    }
}

// The same sums with 4 consecutive columns per thread (cols % 4 == 0, dout aligned: the
// launcher checks): a block covers 128 columns x 8 row lanes, one 16-byte (f32) or 8-byte
// (bf16) load per thread and row.
template <typename T>
__device__ void bias_grad4_k(float* db, const T* dout, int rows, int cols, int rows_per_block) {
    __shared__ float part[8][129];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
    const int c = blockIdx.x * 128 + 4 * tx;
    const int r0 = blockIdx.y * rows_per_block;
    const int r1 = min(rows, r0 + rows_per_block);
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < cols) {
        for (int r = r0 + ty; r < r1; r += 8) {
            float v[4];
            load4(dout + (long long)r * cols + c, v);
#pragma unroll
            for (int k = 0; k < 4; k++) s[k] += v[k];
        }
    }
#pragma unroll
    for (int k = 0; k < 4; k++) part[ty][4 * tx + k] = s[k];
    __syncthreads();
    if (threadIdx.x < 128) {
        const int cc = blockIdx.x * 128 + threadIdx.x;
        if (cc < cols) {
            float t = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++) t += part[k][threadIdx.x];
            atomicAdd(db + cc, t);
        }
    }
}

#define MISC(S, T)                                                                                 \
    extern "C" __global__ void add_bias_##S(T* out, const float* bias, long long n, int cols) {    \
        add_bias_k<T>(out, bias, n, cols);                                                         \
    }                                                                                              \
    extern "C" __global__ void bias_grad_##S(float* db, const T* dout, int rows, int cols,         \
                                             int rows_per_block) {                                 \
        bias_grad_k<T>(db, dout, rows, cols, rows_per_block);                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(256) bias_grad4_##S(                              \
        float* db, const T* dout, int rows, int cols, int rows_per_block) {                        \
        bias_grad4_k<T>(db, dout, rows, cols, rows_per_block);                                     \
    }                                                                                              \
    extern "C" __global__ void fill_##S(T* out, long long n, float v) {                            \
        for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;                \
             i += (long long)gridDim.x * blockDim.x)                                               \
            out[i] = fromf<T>(v);                                                                  \
    }
MISC(f32, float)
MISC(bf16, bf16)

extern "C" __global__ void cast_f32_to_bf16(bf16* out, const float* in, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = fromf<bf16>(in[i]);
}
extern "C" __global__ void cast_bf16_to_f32(float* out, const bf16* in, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x)
        out[i] = tof(in[i]);
}
