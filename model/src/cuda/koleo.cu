// KoLeo forward (spec §2.5), f32: rows L2-normalised (norm clamped at eps),
// nearest neighbour = largest dot product with the diagonal set to -1 (the
// first maximum wins, as the CPU reference), distance with
// PairwiseDistance's eps added to the difference, loss = -mean log(d + eps).
//
// Launch order: koleo_normalize (block per row), koleo_nn_logdist (block per
// row), koleo_mean (one block); blocks have a power-of-two size <= 1024.

// xn[i] = x[i] / max(|x[i]|, eps), one block per row of length d.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
koleo_normalize(const float* __restrict__ x,
                float* __restrict__ xn,
                int d,
                float eps) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * d;
    float s = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float a = x[off + c];
        s += a * a;
    }
    s = d3_block_sum(s, buf);
    float norm = fmaxf(sqrtf(s), eps);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        xn[off + c] = x[off + c] / norm;
    }
}

// One block per row i: threads scan candidate rows j (one thread per j,
// each dot product sequential over d), an arg-max reduction keeps the
// largest dot and, among equal dots, the smallest j; then
// logd[i] = log(|xn[i] - xn[nn] + eps| + eps).
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
koleo_nn_logdist(const float* __restrict__ xn,
                 float* __restrict__ logd,
                 int n,
                 int d,
                 float eps) {
    __shared__ float bv[D3_MAX_BLOCK];
    __shared__ int bi[D3_MAX_BLOCK];
    int i = blockIdx.x;
    const float* xi = xn + (unsigned long long)i * d;

    float best = D3_NEG_MAX;
    int best_j = n;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float p;
        if (j == i) {
            p = -1.0f;
        } else {
            const float* xj = xn + (unsigned long long)j * d;
            p = 0.0f;
            for (int c = 0; c < d; ++c) {
                p += xi[c] * xj[c];
            }
        }
        if (p > best) {
            best = p;
            best_j = j;
        }
    }
    bv[threadIdx.x] = best;
    bi[threadIdx.x] = best_j;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = bv[threadIdx.x + s];
            int oi = bi[threadIdx.x + s];
            if (ov > bv[threadIdx.x] || (ov == bv[threadIdx.x] && oi < bi[threadIdx.x])) {
                bv[threadIdx.x] = ov;
                bi[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    int nn = bi[0];
    __syncthreads();

    // bv is free again: reuse it for the distance reduction.
    const float* xj = xn + (unsigned long long)nn * d;
    float s = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float diff = (xi[c] - xj[c]) + eps;
        s += diff * diff;
    }
    s = d3_block_sum(s, bv);
    if (threadIdx.x == 0) {
        logd[i] = logf(sqrtf(s) + eps);
    }
}

// out[0] = -mean(logd[0..n]), one block.
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
koleo_mean(const float* __restrict__ logd,
           float* __restrict__ out,
           int n) {
    __shared__ float buf[D3_MAX_BLOCK];
    float s = 0.0f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        s += logd[j];
    }
    s = d3_block_sum(s, buf);
    if (threadIdx.x == 0) {
        out[0] = -s / (float)n;
    }
}
