// Attention without a stored score matrix (flash-style), head dimension 64,
// f32: the kernels of `kernels_ref::attention_fwd` / `attention_bwd` (see
// there for the algorithm). q, k, v, o, dO: (G, T, 64) row-major; lse, D:
// (G, T).
//
// One warp per row (a query row, or a key row for dK/dV); each lane holds
// dimensions 2·lane and 2·lane + 1, dot products are warp sums. A block of 8
// warps shares tiles of 32 rows of the other operand in shared memory.
// Grid: (ceil(T / 8), G).

#define D3_HD 64
#define D3_TILE 32
#define D3_WARPS 8

__device__ __forceinline__ float d3_warp_sum(float x) {
    for (int off = 16; off > 0; off >>= 1) {
        x += __shfl_xor_sync(0xffffffffu, x, off);
    }
    return x;
}

// Loads rows [r0, r0 + D3_TILE) of a (T, 64) matrix into `tile` (zeros past
// T), all threads of the block taking part.
__device__ __forceinline__ void d3_load_tile(const float* __restrict__ m, int t, int r0,
                                             float (*tile)[D3_HD]) {
    for (int i = threadIdx.x; i < D3_TILE * D3_HD; i += blockDim.x) {
        int r = i / D3_HD, c = i % D3_HD;
        tile[r][c] = (r0 + r < t) ? m[(long long)(r0 + r) * D3_HD + c] : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(D3_WARPS * 32)
attn_fwd_f32(const float* __restrict__ q, const float* __restrict__ k,
             const float* __restrict__ v, float* __restrict__ o,
             float* __restrict__ lse, int t, float scale) {
    __shared__ float ks[D3_TILE][D3_HD];
    __shared__ float vs[D3_TILE][D3_HD];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long long g = blockIdx.y;
    int i = blockIdx.x * D3_WARPS + warp;
    bool live = i < t;
    const float* kg = k + g * t * D3_HD;
    const float* vg = v + g * t * D3_HD;
    float q0 = 0.0f, q1 = 0.0f;
    if (live) {
        const float* qi = q + (g * t + i) * D3_HD;
        q0 = qi[2 * lane];
        q1 = qi[2 * lane + 1];
    }
    float m = -__int_as_float(0x7f800000), l = 0.0f, a0 = 0.0f, a1 = 0.0f;
    for (int j0 = 0; j0 < t; j0 += D3_TILE) {
        __syncthreads();
        d3_load_tile(kg, t, j0, ks);
        d3_load_tile(vg, t, j0, vs);
        __syncthreads();
        int n = min(D3_TILE, t - j0);
        if (live) {
            for (int j = 0; j < n; ++j) {
                float s = scale * d3_warp_sum(q0 * ks[j][2 * lane] + q1 * ks[j][2 * lane + 1]);
                float m_new = fmaxf(m, s);
                float corr = __expf(m - m_new);
                float p = __expf(s - m_new);
                l = l * corr + p;
                a0 = a0 * corr + p * vs[j][2 * lane];
                a1 = a1 * corr + p * vs[j][2 * lane + 1];
                m = m_new;
            }
        }
    }
    if (live) {
        float* oi = o + (g * t + i) * D3_HD;
        oi[2 * lane] = a0 / l;
        oi[2 * lane + 1] = a1 / l;
        if (lane == 0) {
            lse[g * t + i] = m + logf(l);
        }
    }
}

// D = dO · O per query row (one warp per row).
extern "C" __global__ void __launch_bounds__(D3_WARPS * 32)
attn_bwd_dot_f32(const float* __restrict__ d_out, const float* __restrict__ o,
                 float* __restrict__ dd, int t) {
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long long g = blockIdx.y;
    int i = blockIdx.x * D3_WARPS + warp;
    if (i >= t) {
        return;
    }
    const float* a = d_out + (g * t + i) * D3_HD;
    const float* b = o + (g * t + i) * D3_HD;
    float s = d3_warp_sum(a[2 * lane] * b[2 * lane] + a[2 * lane + 1] * b[2 * lane + 1]);
    if (lane == 0) {
        dd[g * t + i] = s;
    }
}

// dQ: one warp per query row, key and value tiles shared.
extern "C" __global__ void __launch_bounds__(D3_WARPS * 32)
attn_bwd_dq_f32(const float* __restrict__ q, const float* __restrict__ k,
                const float* __restrict__ v, const float* __restrict__ d_out,
                const float* __restrict__ lse, const float* __restrict__ dd,
                float* __restrict__ dq, int t, float scale) {
    __shared__ float ks[D3_TILE][D3_HD];
    __shared__ float vs[D3_TILE][D3_HD];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long long g = blockIdx.y;
    int i = blockIdx.x * D3_WARPS + warp;
    bool live = i < t;
    float q0 = 0.0f, q1 = 0.0f, d0 = 0.0f, d1 = 0.0f, li = 0.0f, di = 0.0f;
    if (live) {
        long long r = (g * t + i) * D3_HD;
        q0 = q[r + 2 * lane];
        q1 = q[r + 2 * lane + 1];
        d0 = d_out[r + 2 * lane];
        d1 = d_out[r + 2 * lane + 1];
        li = lse[g * t + i];
        di = dd[g * t + i];
    }
    float a0 = 0.0f, a1 = 0.0f;
    for (int j0 = 0; j0 < t; j0 += D3_TILE) {
        __syncthreads();
        d3_load_tile(k + g * t * D3_HD, t, j0, ks);
        d3_load_tile(v + g * t * D3_HD, t, j0, vs);
        __syncthreads();
        int n = min(D3_TILE, t - j0);
        if (live) {
            for (int j = 0; j < n; ++j) {
                float s = scale * d3_warp_sum(q0 * ks[j][2 * lane] + q1 * ks[j][2 * lane + 1]);
                float p = __expf(s - li);
                float dp = d3_warp_sum(d0 * vs[j][2 * lane] + d1 * vs[j][2 * lane + 1]);
                float ds = p * (dp - di);
                a0 += scale * ds * ks[j][2 * lane];
                a1 += scale * ds * ks[j][2 * lane + 1];
            }
        }
    }
    if (live) {
        long long r = (g * t + i) * D3_HD;
        dq[r + 2 * lane] = a0;
        dq[r + 2 * lane + 1] = a1;
    }
}

// dK and dV: one warp per key row, query, dO, lse and D tiles shared.
extern "C" __global__ void __launch_bounds__(D3_WARPS * 32)
attn_bwd_dkv_f32(const float* __restrict__ q, const float* __restrict__ k,
                 const float* __restrict__ v, const float* __restrict__ d_out,
                 const float* __restrict__ lse, const float* __restrict__ dd,
                 float* __restrict__ dk, float* __restrict__ dv, int t, float scale) {
    __shared__ float qs[D3_TILE][D3_HD];
    __shared__ float ds_[D3_TILE][D3_HD];
    __shared__ float ls[D3_TILE];
    __shared__ float dds[D3_TILE];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long long g = blockIdx.y;
    int j = blockIdx.x * D3_WARPS + warp;
    bool live = j < t;
    float k0 = 0.0f, k1 = 0.0f, v0 = 0.0f, v1 = 0.0f;
    if (live) {
        long long r = (g * t + j) * D3_HD;
        k0 = k[r + 2 * lane];
        k1 = k[r + 2 * lane + 1];
        v0 = v[r + 2 * lane];
        v1 = v[r + 2 * lane + 1];
    }
    float gk0 = 0.0f, gk1 = 0.0f, gv0 = 0.0f, gv1 = 0.0f;
    for (int i0 = 0; i0 < t; i0 += D3_TILE) {
        __syncthreads();
        d3_load_tile(q + g * t * D3_HD, t, i0, qs);
        d3_load_tile(d_out + g * t * D3_HD, t, i0, ds_);
        for (int r = threadIdx.x; r < D3_TILE; r += blockDim.x) {
            ls[r] = (i0 + r < t) ? lse[g * t + i0 + r] : 0.0f;
            dds[r] = (i0 + r < t) ? dd[g * t + i0 + r] : 0.0f;
        }
        __syncthreads();
        int n = min(D3_TILE, t - i0);
        if (live) {
            for (int i = 0; i < n; ++i) {
                float s = scale * d3_warp_sum(qs[i][2 * lane] * k0 + qs[i][2 * lane + 1] * k1);
                float p = __expf(s - ls[i]);
                gv0 += p * ds_[i][2 * lane];
                gv1 += p * ds_[i][2 * lane + 1];
                float dp = d3_warp_sum(ds_[i][2 * lane] * v0 + ds_[i][2 * lane + 1] * v1);
                float dsc = scale * p * (dp - dds[i]);
                gk0 += dsc * qs[i][2 * lane];
                gk1 += dsc * qs[i][2 * lane + 1];
            }
        }
    }
    if (live) {
        long long r = (g * t + j) * D3_HD;
        dk[r + 2 * lane] = gk0;
        dk[r + 2 * lane + 1] = gk1;
        dv[r + 2 * lane] = gv0;
        dv[r + 2 * lane + 1] = gv1;
    }
}
