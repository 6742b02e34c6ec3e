// fused.cu's kernels, run unchanged under emulate.hpp, against float64
// formulas written out here: GELU (f32 and bf16), softmax with a scale,
// LayerNorm with its weight and bias gradients, and the instance norm.
// Exit status 1 if any comparison is past its bound.
#include "emulate.hpp"

#include <random>

#include "reduce.cuh"
#include "fused.cu"

static std::mt19937_64 rng(20261208);

static std::vector<float> normal(size_t n, float sd, float mean = 0.0f) {
    std::normal_distribution<float> dist(mean, sd);
    std::vector<float> v(n);
    for (auto& x : v) {
        x = dist(rng);
    }
    return v;
}

// Threads per block for rows of n: a power of two from 32 up, as the
// launchers' row_block, but at most `max` (128 by default: on a CPU every
// __syncthreads of a 1024-thread block costs 1024 context switches; the
// kernels' code is the same for any power-of-two block, and one case below
// runs the launchers' 1024).
static unsigned row_block(int n, unsigned max = 128) {
    unsigned b = 32;
    while (b < (unsigned)n && b < max) {
        b *= 2;
    }
    return b;
}

static double phi_cdf(double v) { return 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))); }
static double phi_pdf(double v) { return std::exp(-0.5 * v * v) / std::sqrt(2.0 * M_PI); }

static void gelu() {
    const size_t len = 1000;
    auto x = normal(len, 2.0f), g = normal(len, 1.0f);
    std::vector<float> y(len), dx(len);
    // 3 blocks of 64 threads: each thread strides over the rest.
    emu_launch(3, 64, [&] { gelu_fwd_f32(x.data(), y.data(), len); });
    emu_launch(3, 64, [&] { gelu_bwd_f32(x.data(), g.data(), dx.data(), len); });
    std::vector<double> wy(len), wdx(len);
    for (size_t i = 0; i < len; ++i) {
        wy[i] = x[i] * phi_cdf(x[i]);
        wdx[i] = g[i] * (phi_cdf(x[i]) + x[i] * phi_pdf(x[i]));
    }
    emu_check("gelu_fwd_f32", y, wy, 1e-6);
    emu_check("gelu_bwd_f32", dx, wdx, 1e-6);

    // bf16: the inputs are bf16 values, the outputs one rounding from exact.
    std::vector<unsigned short> xb(len), gb(len), yb(len), dxb(len);
    for (size_t i = 0; i < len; ++i) {
        xb[i] = d3_f32_to_bf16(x[i]);
        gb[i] = d3_f32_to_bf16(g[i]);
    }
    emu_launch(3, 64, [&] { gelu_fwd_bf16(xb.data(), yb.data(), len); });
    emu_launch(3, 64, [&] { gelu_bwd_bf16(xb.data(), gb.data(), dxb.data(), len); });
    std::vector<float> yf(len), dxf(len);
    for (size_t i = 0; i < len; ++i) {
        double v = d3_bf16_to_f32(xb[i]), gv = d3_bf16_to_f32(gb[i]);
        wy[i] = v * phi_cdf(v);
        wdx[i] = gv * (phi_cdf(v) + v * phi_pdf(v));
        yf[i] = d3_bf16_to_f32(yb[i]);
        dxf[i] = d3_bf16_to_f32(dxb[i]);
    }
    emu_check("gelu_fwd_bf16 (one bf16 rounding)", yf, wy, 1.0 / 256);
    emu_check("gelu_bwd_bf16 (one bf16 rounding)", dxf, wdx, 1.0 / 256);
    // Round to nearest even, as half's bf16::from_f32: 1 + 2^-8 is a tie.
    unsigned short tie = d3_f32_to_bf16(1.0f + 1.0f / 256);
    unsigned short up = d3_f32_to_bf16(1.0f + 3.0f / 512);
    std::vector<float> rounded = {d3_bf16_to_f32(tie), d3_bf16_to_f32(up)};
    emu_check("bf16 rounding (ties to even)", rounded, {1.0, 1.0 + 1.0 / 128}, 0.0);
}

static void softmax() {
    for (int n : {7, 217, 3000}) {
        for (float scale : {0.125f, -0.5f}) {
            const int rows = 3;
            auto x = normal(rows * n, 4.0f), g = normal(rows * n, 1.0f);
            std::vector<float> y(rows * n), dx(rows * n);
            emu_launch(rows, row_block(n), [&] { softmax_fwd_f32(x.data(), y.data(), n, scale); });
            emu_launch(rows, row_block(n),
                       [&] { softmax_bwd_f32(y.data(), g.data(), dx.data(), n, scale); });
            std::vector<double> wy(rows * n), wdx(rows * n);
            for (int r = 0; r < rows; ++r) {
                double m = -INFINITY, z = 0.0, dot = 0.0;
                for (int c = 0; c < n; ++c) {
                    m = std::fmax(m, (double)scale * x[r * n + c]);
                }
                for (int c = 0; c < n; ++c) {
                    z += std::exp((double)scale * x[r * n + c] - m);
                }
                for (int c = 0; c < n; ++c) {
                    wy[r * n + c] = std::exp((double)scale * x[r * n + c] - m) / z;
                    dot += g[r * n + c] * wy[r * n + c];
                }
                for (int c = 0; c < n; ++c) {
                    wdx[r * n + c] = scale * wy[r * n + c] * (g[r * n + c] - dot);
                }
            }
            char name[80];
            std::snprintf(name, sizeof name, "softmax_fwd_f32 n=%d scale=%g", n, scale);
            emu_check(name, y, wy, 1e-5);
            std::snprintf(name, sizeof name, "softmax_bwd_f32 n=%d scale=%g", n, scale);
            emu_check(name, dx, wdx, 1e-5);
        }
    }
}

// Mean and 1/sqrt(var + eps) of a row, in float64.
static void row_stats(const float* x, int d, double eps, double* mean, double* rstd) {
    double m = 0.0, v = 0.0;
    for (int c = 0; c < d; ++c) {
        m += x[c];
    }
    m /= d;
    for (int c = 0; c < d; ++c) {
        v += (x[c] - m) * (x[c] - m);
    }
    *mean = m;
    *rstd = 1.0 / std::sqrt(v / d + eps);
}

static void layer_norm() {
    // 70 rows: two partial chunks of 64 rows for the weight and bias sums.
    const int rows = 70, chunk = 64, chunks = 2;
    const float eps = 1e-6f;
    for (int d : {48, 1100}) {
        auto x = normal(rows * d, 2.0f, 0.7f), g = normal(rows * d, 1.0f);
        auto w = normal(d, 0.5f, 1.0f), b = normal(d, 0.2f);
        std::vector<float> y(rows * d), dx(rows * d), stats(2 * rows), partial(chunks * 2 * d),
            wb(2 * d);
        emu_launch(rows, row_block(d),
                   [&] { ln_fwd_f32(x.data(), w.data(), b.data(), y.data(), d, eps); });
        emu_launch(rows, row_block(d), [&] {
            ln_bwd_dx_f32(x.data(), w.data(), g.data(), dx.data(), stats.data(), d, eps);
        });
        emu_launch((d + 63) / 64, 64, [&] {
            ln_bwd_wb_partial_f32(x.data(), g.data(), stats.data(), partial.data(), rows, d,
                                  chunk);
        }, chunks);
        emu_launch((2 * d + 63) / 64, 64,
                   [&] { ln_bwd_wb_sum_f32(partial.data(), wb.data(), chunks, 2 * d); });
        std::vector<double> wy(rows * d), wdx(rows * d), wwb(2 * d, 0.0);
        for (int r = 0; r < rows; ++r) {
            const float* xr = &x[r * d];
            const float* gr = &g[r * d];
            double mean, rstd, sh = 0.0, shx = 0.0;
            row_stats(xr, d, eps, &mean, &rstd);
            for (int c = 0; c < d; ++c) {
                double xh = (xr[c] - mean) * rstd;
                wy[r * d + c] = xh * w[c] + b[c];
                sh += gr[c] * w[c];
                shx += gr[c] * w[c] * xh;
                wwb[c] += gr[c] * xh;
                wwb[d + c] += gr[c];
            }
            for (int c = 0; c < d; ++c) {
                double xh = (xr[c] - mean) * rstd;
                wdx[r * d + c] = rstd * (gr[c] * w[c] - sh / d - xh * shx / d);
            }
        }
        char name[80];
        std::snprintf(name, sizeof name, "ln_fwd_f32 d=%d", d);
        emu_check(name, y, wy, 1e-5);
        std::snprintf(name, sizeof name, "ln_bwd_dx_f32 d=%d", d);
        emu_check(name, dx, wdx, 1e-5);
        std::snprintf(name, sizeof name, "ln_bwd_wb_partial_f32 + ln_bwd_wb_sum_f32 d=%d", d);
        emu_check(name, wb, wwb, 1e-5);
    }
}

static void instance_norm() {
    const float eps = 1e-5f;
    // Rows under one block, a row the block strides over many times, and a
    // constant row (x̂ = 0: the gradient is (g - mean g) / sqrt(eps)).
    for (int d : {210, 13824, 9, 5000}) {
        // d = 9: one constant row alone (its gradient, ~1/sqrt(eps) times
        // the others', would swamp their errors); d = 5000: one row in a
        // block of 1024, the launchers' largest.
        const int rows = (d == 5000 || d == 9) ? 1 : 3;
        const unsigned block = row_block(d, d == 5000 ? 1024 : 128);
        auto x = normal(rows * d, 3.0f, 1.5f), g = normal(rows * d, 1.0f);
        if (d == 9) {
            std::fill(x.begin(), x.begin() + d, 0.25f);
        }
        std::vector<float> y(rows * d), dx(rows * d);
        emu_launch(rows, block, [&] { in_fwd_f32(x.data(), y.data(), d, eps); });
        emu_launch(rows, block, [&] { in_bwd_f32(x.data(), g.data(), dx.data(), d, eps); });
        std::vector<double> wy(rows * d), wdx(rows * d);
        for (int r = 0; r < rows; ++r) {
            const float* xr = &x[r * d];
            const float* gr = &g[r * d];
            double mean, rstd, sg = 0.0, sgx = 0.0;
            row_stats(xr, d, eps, &mean, &rstd);
            for (int c = 0; c < d; ++c) {
                sg += gr[c];
                sgx += gr[c] * (xr[c] - mean) * rstd;
            }
            for (int c = 0; c < d; ++c) {
                double xh = (xr[c] - mean) * rstd;
                wy[r * d + c] = xh;
                wdx[r * d + c] = rstd * (gr[c] - sg / d - xh * sgx / d);
            }
        }
        char name[80];
        std::snprintf(name, sizeof name, "in_fwd_f32 d=%d block=%u", d, block);
        emu_check(name, y, wy, 1e-5);
        std::snprintf(name, sizeof name, "in_bwd_f32 d=%d block=%u", d, block);
        emu_check(name, dx, wdx, 1e-5);
    }
}

int main() {
    gelu();
    softmax();
    layer_norm();
    instance_norm();
    std::printf("%d comparison(s) failed\n", emu_failures);
    return emu_failures == 0 ? 0 : 1;
}
