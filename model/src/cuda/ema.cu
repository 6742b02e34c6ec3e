// Fused teacher EMA over one flat parameter buffer:
// teacher[i] <- momentum * teacher[i] + one_minus * student[i].
//
// The products and the sum are rounded separately (__fmul_rn/__fadd_rn stop
// the compiler from contracting them into an FMA), so the result is
// bit-identical to the CPU reference `kernels_ref::ema_update_flat`.
// Grid-stride loop: any grid size covers any length.

extern "C" __global__ void ema_update_f32(float* __restrict__ teacher,
                                          const float* __restrict__ student,
                                          float momentum,
                                          float one_minus,
                                          unsigned long long len) {
    unsigned long long stride = (unsigned long long)blockDim.x * gridDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < len; i += stride) {
        teacher[i] = __fadd_rn(__fmul_rn(teacher[i], momentum),
                               __fmul_rn(student[i], one_minus));
    }
}
