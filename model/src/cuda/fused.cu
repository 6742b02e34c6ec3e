// CUDA twins of the fused CPU ops in model/src/fused/ (their results are the
// references): exact GELU, softmax over the last axis with a folded-in
// scale, affine LayerNorm over the last axis and the segmentation's instance
// norm (rows of voxels, no affine), each forward and backward,
// in f32 with f32 block reductions (the CPU sums rows in f64; the tests
// bound the difference); GELU also on bf16 values, computed in f32.
//
// Row kernels run one block of D3_MAX_BLOCK or fewer threads (a power of
// two) per row; elementwise kernels are grid-stride loops.

#define D3_INV_SQRT2 0.70710678118654752440f
#define D3_INV_SQRT_2PI 0.39894228040143267794f

// y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
extern "C" __global__ void gelu_fwd_f32(const float* __restrict__ x,
                                        float* __restrict__ y,
                                        unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += stride) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * D3_INV_SQRT2));
    }
}

// dx = g * (Phi(x) + x phi(x)).
extern "C" __global__ void gelu_bwd_f32(const float* __restrict__ x,
                                        const float* __restrict__ g,
                                        float* __restrict__ dx,
                                        unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += stride) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * D3_INV_SQRT2));
        float pdf = expf(-0.5f * v * v) * D3_INV_SQRT_2PI;
        dx[i] = g[i] * (cdf + v * pdf);
    }
}

// bf16 carried as its 16 bits (no header): widened to f32 exactly, and
// rounded back to nearest even with NaN kept quiet, as the `half` crate's
// bf16::from_f32 (the CPU path's rounding).
__device__ __forceinline__ float d3_bf16_to_f32(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

__device__ __forceinline__ unsigned short d3_f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

// gelu_fwd_f32 on bf16 values: computed in f32, rounded once.
extern "C" __global__ void gelu_fwd_bf16(const unsigned short* __restrict__ x,
                                         unsigned short* __restrict__ y,
                                         unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += stride) {
        float v = d3_bf16_to_f32(x[i]);
        y[i] = d3_f32_to_bf16(0.5f * v * (1.0f + erff(v * D3_INV_SQRT2)));
    }
}

// gelu_bwd_f32 on bf16 values: computed in f32, rounded once.
extern "C" __global__ void gelu_bwd_bf16(const unsigned short* __restrict__ x,
                                         const unsigned short* __restrict__ g,
                                         unsigned short* __restrict__ dx,
                                         unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += stride) {
        float v = d3_bf16_to_f32(x[i]);
        float cdf = 0.5f * (1.0f + erff(v * D3_INV_SQRT2));
        float pdf = expf(-0.5f * v * v) * D3_INV_SQRT_2PI;
        dx[i] = d3_f32_to_bf16(d3_bf16_to_f32(g[i]) * (cdf + v * pdf));
    }
}

// One block per row of n: y = softmax(scale * x). The max is of scale * x,
// so a negative scale works too.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
softmax_fwd_f32(const float* __restrict__ x,
                float* __restrict__ y,
                int n,
                float scale) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * n;
    const float* xr = x + off;
    float* yr = y + off;
    float m = D3_NEG_MAX;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        m = fmaxf(m, scale * xr[c]);
    }
    m = d3_block_max(m, buf);
    float z = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        float e = expf(scale * xr[c] - m);
        yr[c] = e;
        z += e;
    }
    z = d3_block_sum(z, buf);
    float inv = 1.0f / z;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        yr[c] *= inv;
    }
}

// One block per row: dx = scale * y (g - sum(g y)).
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
softmax_bwd_f32(const float* __restrict__ y,
                const float* __restrict__ g,
                float* __restrict__ dx,
                int n,
                float scale) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * n;
    const float* yr = y + off;
    const float* gr = g + off;
    float dot = 0.0f;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        dot += gr[c] * yr[c];
    }
    dot = d3_block_sum(dot, buf);
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
        dx[off + c] = scale * yr[c] * (gr[c] - dot);
    }
}

// Mean and 1/sqrt(var + eps) of a row of d (biased variance, two passes, as
// the CPU op), for every thread of the block.
__device__ void d3_row_stats(const float* __restrict__ xr, int d, float eps,
                             float* buf, float* mean, float* rstd) {
    float s = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        s += xr[c];
    }
    float mu = d3_block_sum(s, buf) / (float)d;
    float q = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float t = xr[c] - mu;
        q += t * t;
    }
    float var = d3_block_sum(q, buf) / (float)d;
    *mean = mu;
    *rstd = rsqrtf(var + eps);
}

// One block per row: y = (x - mean) * rstd * w + b.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
ln_fwd_f32(const float* __restrict__ x,
           const float* __restrict__ w,
           const float* __restrict__ b,
           float* __restrict__ y,
           int d,
           float eps) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * d;
    float mean, rstd;
    d3_row_stats(x + off, d, eps, buf, &mean, &rstd);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        y[off + c] = (x[off + c] - mean) * rstd * w[c] + b[c];
    }
}

// The input gradient of a normalised row of d, for every thread of the
// block: with h = g w (h = g where w is null) and xh = (x - mean) rstd,
// dx = rstd (h - mean(h) - xh mean(h xh)).
__device__ void d3_norm_row_bwd(const float* __restrict__ xr, const float* __restrict__ gr,
                                const float* __restrict__ w, float* __restrict__ dxr, int d,
                                float mean, float rstd, float* buf) {
    float sh = 0.0f, shx = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float h = w ? gr[c] * w[c] : gr[c];
        sh += h;
        shx += h * (xr[c] - mean) * rstd;
    }
    float mh = d3_block_sum(sh, buf) / (float)d;
    float mhx = d3_block_sum(shx, buf) / (float)d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float h = w ? gr[c] * w[c] : gr[c];
        float xh = (xr[c] - mean) * rstd;
        dxr[c] = rstd * (h - mh - xh * mhx);
    }
}

// One block per row: LayerNorm's dx (d3_norm_row_bwd with the weight). Also
// stores the row's (mean, rstd) in stats[2 row], [2 row + 1] for the weight
// and bias gradients.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
ln_bwd_dx_f32(const float* __restrict__ x,
              const float* __restrict__ w,
              const float* __restrict__ g,
              float* __restrict__ dx,
              float* __restrict__ stats,
              int d,
              float eps) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * d;
    const float* xr = x + off;
    const float* gr = g + off;
    float mean, rstd;
    d3_row_stats(xr, d, eps, buf, &mean, &rstd);
    d3_norm_row_bwd(xr, gr, w, dx + off, d, mean, rstd, buf);
    if (threadIdx.x == 0) {
        stats[2ull * blockIdx.x] = mean;
        stats[2ull * blockIdx.x + 1] = rstd;
    }
}

// Partial weight and bias gradients: blockIdx.y is a chunk of `chunk` rows,
// each thread one column c; partial[chunk][c] = sum g xh and
// partial[chunk][d + c] = sum g over the chunk's rows, in row order.
extern "C" __global__ void ln_bwd_wb_partial_f32(const float* __restrict__ x,
                                                 const float* __restrict__ g,
                                                 const float* __restrict__ stats,
                                                 float* __restrict__ partial,
                                                 int rows,
                                                 int d,
                                                 int chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) {
        return;
    }
    int r0 = blockIdx.y * chunk;
    int r1 = min(rows, r0 + chunk);
    float dw = 0.0f, db = 0.0f;
    for (int r = r0; r < r1; ++r) {
        unsigned long long i = (unsigned long long)r * d + c;
        float xh = (x[i] - stats[2 * r]) * stats[2 * r + 1];
        dw += g[i] * xh;
        db += g[i];
    }
    unsigned long long p = (unsigned long long)blockIdx.y * 2 * d;
    partial[p + c] = dw;
    partial[p + d + c] = db;
}

// out[j] = sum over chunks of partial[chunk][j], for j < 2 d, in chunk
// order (so the result does not depend on the launch).
extern "C" __global__ void ln_bwd_wb_sum_f32(const float* __restrict__ partial,
                                             float* __restrict__ out,
                                             int chunks,
                                             int width) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width) {
        return;
    }
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) {
        s += partial[(unsigned long long)k * width + j];
    }
    out[j] = s;
}

// Instance norm without affine (InstanceNorm3d(affine=False), the twin of
// seg/instance_norm.rs): one block per (sample, channel) row of d voxels,
// y = (x - mean) rstd.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
in_fwd_f32(const float* __restrict__ x,
           float* __restrict__ y,
           int d,
           float eps) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * d;
    float mean, rstd;
    d3_row_stats(x + off, d, eps, buf, &mean, &rstd);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        y[off + c] = (x[off + c] - mean) * rstd;
    }
}

// Its backward, one block per row: d3_norm_row_bwd without a weight.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
in_bwd_f32(const float* __restrict__ x,
           const float* __restrict__ g,
           float* __restrict__ dx,
           int d,
           float eps) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * d;
    const float* xr = x + off;
    const float* gr = g + off;
    float mean, rstd;
    d3_row_stats(xr, d, eps, buf, &mean, &rstd);
    d3_norm_row_bwd(xr, gr, nullptr, dx + off, d, mean, rstd, buf);
}
