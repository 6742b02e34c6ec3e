// Sinkhorn-Knopp teacher targets fused with the student cross-entropy
// (3DINO's DINO/iBOT centring, spec §2.5), all in f32.
//
// Logits are (n rows = samples, k columns = prototypes), row-major. With
// E = exp(teacher / T), Sinkhorn's iterates are Q[i][c] = E[i][c] u[c] v[i]
// for a prototype scale u (k) and a sample scale v (n), so the n x k matrix
// is never rescaled in memory:
//   prototype step  u[c] = 1 / (k * sum_i E[i][c] v[i])
//   sample step     v[i] = 1 / (n * sum_c E[i][c] u[c])
//   targets         t[i][c] = E[i][c] u[c] v[i] n        (each row sums to 1)
// 3DINO's first division by the global sum cancels in the first prototype
// step, so it is skipped (v starts at 1).
//
// Launch order (one stream): sk_exp (grid-stride); iterations x
// (sk_proto_scale with (32, 8) blocks, one column per x; sk_sample_scale,
// one block per row); sk_finish_ce or sk_finish_ce_grad (one block per
// row), which turns E into t in place and computes, per row,
// ce = -sum_c t log_softmax(s / tau) (and optionally the gradient of
// mean_i ce_i w.r.t. s); or sk_targets (grid-stride) when only the
// targets are wanted. Per-row blocks have a power-of-two size <= 1024.

// e[j] = exp(logits[j] * inv_temp) for j < len (grid-stride).
extern "C" __global__ void sk_exp(const float* __restrict__ logits,
                                  float* __restrict__ e,
                                  float inv_temp,
                                  unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < len; j += stride) {
        e[j] = expf(__fmul_rn(logits[j], inv_temp));
    }
}

// Blocks of (32 columns) x (SK_PROTO_ROWS row groups): thread (x, y) sums
// rows y, y + SK_PROTO_ROWS, ... of column c (consecutive x read
// consecutive columns, so row reads coalesce), then the row groups are
// added in a fixed order: u[c] = 1 / (k * sum_i e[i][c] v[i]) (INVERT),
// or the sum itself, this rank's part of data-parallel Sinkhorn-Knopp's
// prototype sums (u follows from all ranks' total as 1 / (k * total)).
#define SK_PROTO_COLS 32
#define SK_PROTO_ROWS 8
template <bool INVERT>
__device__ void sk_proto(const float* __restrict__ e,
                         const float* __restrict__ v,
                         float* __restrict__ out,
                         int n,
                         int k) {
    __shared__ float part[SK_PROTO_ROWS][SK_PROTO_COLS];
    int c = blockIdx.x * SK_PROTO_COLS + threadIdx.x;
    float s = 0.0f;
    if (c < k) {
        for (int i = threadIdx.y; i < n; i += SK_PROTO_ROWS) {
            s += e[(unsigned long long)i * k + c] * v[i];
        }
    }
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && c < k) {
        float total = 0.0f;
        for (int y = 0; y < SK_PROTO_ROWS; ++y) {
            total += part[y][threadIdx.x];
        }
        out[c] = INVERT ? 1.0f / (total * (float)k) : total;
    }
}

extern "C" __global__ void __launch_bounds__(SK_PROTO_COLS * SK_PROTO_ROWS)
sk_proto_scale(const float* __restrict__ e,
               const float* __restrict__ v,
               float* __restrict__ u,
               int n,
               int k) {
    sk_proto<true>(e, v, u, n, k);
}

extern "C" __global__ void __launch_bounds__(SK_PROTO_COLS * SK_PROTO_ROWS)
sk_proto_sums(const float* __restrict__ e,
              const float* __restrict__ v,
              float* __restrict__ sums,
              int n,
              int k) {
    sk_proto<false>(e, v, sums, n, k);
}

// One block per sample row i: v[i] = 1 / (n * sum_c e[i][c] u[c]).
extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
sk_sample_scale(const float* __restrict__ e,
                const float* __restrict__ u,
                float* __restrict__ v,
                int k,
                float n_f) {
    __shared__ float buf[D3_MAX_BLOCK];
    const float* er = e + (unsigned long long)blockIdx.x * k;
    float s = 0.0f;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        s += er[c] * u[c];
    }
    s = d3_block_sum(s, buf);
    if (threadIdx.x == 0) {
        v[blockIdx.x] = 1.0f / (s * n_f);
    }
}

// One block per row i. e_t holds E on entry and the targets t on exit.
// grad (GRAD only): (softmax(s/tau) - t) * grad_scale, grad_scale = 1/(tau n).
template <bool GRAD>
__device__ void sk_finish(float* __restrict__ e_t,
                          const float* __restrict__ u,
                          const float* __restrict__ v,
                          const float* __restrict__ student,
                          float* __restrict__ ce,
                          float* __restrict__ grad,
                          int k,
                          float n_f,
                          float inv_tau,
                          float grad_scale) {
    __shared__ float buf[D3_MAX_BLOCK];
    unsigned long long off = (unsigned long long)blockIdx.x * k;
    float* tr = e_t + off;
    const float* sr = student + off;

    float m = D3_NEG_MAX;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        m = fmaxf(m, __fmul_rn(sr[c], inv_tau));
    }
    m = d3_block_max(m, buf);

    float z = 0.0f;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        z += expf(__fmul_rn(sr[c], inv_tau) - m);
    }
    z = d3_block_sum(z, buf);
    float lse = m + logf(z);

    float scale = v[blockIdx.x] * n_f;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < k; c += blockDim.x) {
        float t = tr[c] * u[c] * scale;
        tr[c] = t;
        float ls = __fmul_rn(sr[c], inv_tau) - lse;
        acc += t * ls;
        if (GRAD) {
            grad[off + c] = (expf(ls) - t) * grad_scale;
        }
    }
    acc = d3_block_sum(acc, buf);
    if (threadIdx.x == 0) {
        ce[blockIdx.x] = -acc;
    }
}

extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
sk_finish_ce(float* __restrict__ e_t,
             const float* __restrict__ u,
             const float* __restrict__ v,
             const float* __restrict__ student,
             float* __restrict__ ce,
             int k,
             float n_f,
             float inv_tau) {
    sk_finish<false>(e_t, u, v, student, ce, 0, k, n_f, inv_tau, 0.0f);
}

extern "C" __global__ void __launch_bounds__(D3_MAX_BLOCK)
sk_finish_ce_grad(float* __restrict__ e_t,
                  const float* __restrict__ u,
                  const float* __restrict__ v,
                  const float* __restrict__ student,
                  float* __restrict__ ce,
                  float* __restrict__ grad,
                  int k,
                  float n_f,
                  float inv_tau,
                  float grad_scale) {
    sk_finish<true>(e_t, u, v, student, ce, grad, k, n_f, inv_tau, grad_scale);
}

// The targets alone (no student): t[i][c] = e[i][c] u[c] (v[i] n), in place
// over e_t, for `len` = n k values (grid-stride). The same products in the
// same order as sk_finish, so both give the same targets.
extern "C" __global__ void sk_targets(float* __restrict__ e_t,
                                      const float* __restrict__ u,
                                      const float* __restrict__ v,
                                      int k,
                                      float n_f,
                                      unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long j = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         j < len; j += stride) {
        unsigned long long i = j / (unsigned long long)k;
        int c = (int)(j - i * (unsigned long long)k);
        e_t[j] = e_t[j] * u[c] * (v[i] * n_f);
    }
}
