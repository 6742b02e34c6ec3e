// AdamW over one parameter, in place: the CUDA twin of the CPU pass in
// model/src/optim/fused.rs, with the same f32 operations in the same order:
//   m' = m b1 + g (1 - b1);  v' = v b2 + g g (1 - b2)
//   p' = p decay - m' / (sqrt(v') / bc2_sqrt + eps) step
// Every product, sum, quotient and root is rounded on its own (the _rn
// intrinsics stop NVRTC from contracting them into FMAs), so the result is
// bit-identical to the CPU pass. Grid-stride loop.

extern "C" __global__ void adamw_f32(float* __restrict__ p,
                                     float* __restrict__ m,
                                     float* __restrict__ v,
                                     const float* __restrict__ g,
                                     float b1,
                                     float one_b1,
                                     float b2,
                                     float one_b2,
                                     float bc2_sqrt,
                                     float eps,
                                     float step,
                                     float decay,
                                     unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += stride) {
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(gi, one_b1));
        float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(gi, gi), one_b2));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        m[i] = mi;
        v[i] = vi;
        p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fmul_rn(__fdiv_rn(mi, denom), step));
    }
}
