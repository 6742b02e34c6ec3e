// Block-wide reductions shared by the dino3d kernels (prepended to each
// kernel source before NVRTC compiles it; no #include needed).
//
// The reductions work on one-dimensional blocks whose size is a power of
// two up to D3_MAX_BLOCK (the Rust side launches ROW_BLOCK = 1024 threads
// per row). Only shared memory and __syncthreads are used (no warp
// shuffles), so the sources also run under a plain C++ emulation of the
// execution model.

#define D3_MAX_BLOCK 1024
#define D3_NEG_MAX (-3.402823466e+38f)

// Sum of `x` over the block; every thread gets the result. `buf` is a
// __shared__ array of at least blockDim.x floats, free again on return.
__device__ float d3_block_sum(float x, float* buf) {
    buf[threadIdx.x] = x;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            buf[threadIdx.x] += buf[threadIdx.x + s];
        }
        __syncthreads();
    }
    float r = buf[0];
    __syncthreads();
    return r;
}

// Maximum of `x` over the block; every thread gets the result.
__device__ float d3_block_max(float x, float* buf) {
    buf[threadIdx.x] = x;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            buf[threadIdx.x] = fmaxf(buf[threadIdx.x], buf[threadIdx.x + s]);
        }
        __syncthreads();
    }
    float r = buf[0];
    __syncthreads();
    return r;
}
