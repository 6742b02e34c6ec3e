// Trilinear sampling of token-layout volumes at normalised locations: the
// CUDA twin of `DeformSample` in model/src/seg/adapter/deform_attn.rs (the
// ViT-Adapter's 3-D multi-scale deformable attention), forward and
// backward, in f32 (the CPU op accumulates in f64; the tests bound the
// difference).
//
// values (G, V, D): G groups, V = sum of the levels' voxels, each level
// row-major (last axis fastest), from its first row `start`;
// locations (G, S, 3) with S = Q * L * P samples, sample s in level
// (s / P) % L; out (G, S, D). Level l is `levels[4 l .. 4 l + 4]` =
// (size x, size y, size z, start). A coordinate is loc * size - 1/2
// (align_corners = False); corners outside the level count as zero.

// The up to 8 in-range corners around `loc` in a level: calls
// f(row, weight, dweight/dloc) for each. Returns without calling f when a
// coordinate is not finite (as the CPU op).
template <typename F>
__device__ void d3_corners(const int* __restrict__ level, const float* loc, F f) {
    int size[3] = {level[0], level[1], level[2]};
    int base[3];
    float frac[3];
    for (int k = 0; k < 3; ++k) {
        float c = loc[k] * (float)size[k] - 0.5f;
        if (!isfinite(c)) {
            return;
        }
        float f0 = floorf(c);
        base[k] = (int)f0;
        frac[k] = c - f0;
    }
    for (int corner = 0; corner < 8; ++corner) {
        int idx[3];
        float w[3], dw[3];
        bool inside = true;
        for (int k = 0; k < 3; ++k) {
            bool hi = (corner >> (2 - k)) & 1;
            int i = base[k] + (hi ? 1 : 0);
            if (i < 0 || i >= size[k]) {
                inside = false;
                break;
            }
            idx[k] = i;
            w[k] = hi ? frac[k] : 1.0f - frac[k];
            dw[k] = hi ? (float)size[k] : -(float)size[k];
        }
        if (!inside) {
            continue;
        }
        long long row = (long long)level[3] + ((long long)idx[0] * size[1] + idx[1]) * size[2] + idx[2];
        float grad[3] = {dw[0] * w[1] * w[2], w[0] * dw[1] * w[2], w[0] * w[1] * dw[2]};
        f(row, w[0] * w[1] * w[2], grad);
    }
}

// One thread per output value (g, s, d), grid-stride.
extern "C" __global__ void deform_fwd_f32(const float* __restrict__ values,
                                          const float* __restrict__ loc,
                                          const int* __restrict__ levels,
                                          float* __restrict__ out,
                                          int n_levels,
                                          int points,
                                          long long voxels,
                                          long long samples,
                                          int dim,
                                          unsigned long long total) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        int d = (int)(i % dim);
        unsigned long long gs = i / dim;
        long long s = (long long)(gs % samples);
        long long g = (long long)(gs / samples);
        int l = (int)((s / points) % n_levels);
        const float* vg = values + (unsigned long long)g * voxels * dim;
        float acc = 0.0f;
        d3_corners(levels + 4 * l, loc + gs * 3, [&](long long row, float w, const float*) {
            acc += w * vg[row * dim + d];
        });
        out[i] = acc;
    }
}

// d values: one thread per (g, s, d), scattered with atomicAdd (the order
// of the additions, and so the last bits, vary between runs). `dv` must be
// zeroed first.
extern "C" __global__ void deform_bwd_values_f32(const float* __restrict__ loc,
                                                 const float* __restrict__ grad,
                                                 const int* __restrict__ levels,
                                                 float* __restrict__ dv,
                                                 int n_levels,
                                                 int points,
                                                 long long voxels,
                                                 long long samples,
                                                 int dim,
                                                 unsigned long long total) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        int d = (int)(i % dim);
        unsigned long long gs = i / dim;
        long long s = (long long)(gs % samples);
        long long g = (long long)(gs / samples);
        int l = (int)((s / points) % n_levels);
        float gv = grad[i];
        float* dvg = dv + (unsigned long long)g * voxels * dim;
        d3_corners(levels + 4 * l, loc + gs * 3, [&](long long row, float w, const float*) {
            atomicAdd(&dvg[row * dim + d], w * gv);
        });
    }
}

// d locations: one warp per sample (g, s); the lanes split the channels and
// the three sums are reduced across the warp:
// dloc[k] = sum over corners of dweight_k * (value row . grad).
extern "C" __global__ void deform_bwd_loc_f32(const float* __restrict__ values,
                                              const float* __restrict__ loc,
                                              const float* __restrict__ grad,
                                              const int* __restrict__ levels,
                                              float* __restrict__ dloc,
                                              int n_levels,
                                              int points,
                                              long long voxels,
                                              long long samples,
                                              int dim,
                                              unsigned long long n_samples) {
    unsigned long long warp = ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (warp >= n_samples) {
        return;
    }
    long long s = (long long)(warp % samples);
    long long g = (long long)(warp / samples);
    int l = (int)((s / points) % n_levels);
    const float* vg = values + (unsigned long long)g * voxels * dim;
    const float* gr = grad + warp * dim;
    float dl[3] = {0.0f, 0.0f, 0.0f};
    d3_corners(levels + 4 * l, loc + warp * 3, [&](long long row, float, const float* dw) {
        float dot = 0.0f;
        for (int d = lane; d < dim; d += 32) {
            dot += vg[row * dim + d] * gr[d];
        }
        for (int k = 0; k < 3; ++k) {
            dl[k] += dw[k] * dot;
        }
    });
    for (int k = 0; k < 3; ++k) {
        float v = dl[k];
        for (int off = 16; off > 0; off >>= 1) {
            v += __shfl_xor_sync(0xffffffffu, v, off);
        }
        if (lane == 0) {
            dloc[warp * 3 + k] = v;
        }
    }
}
