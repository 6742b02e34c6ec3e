// adamw.cu's kernel, run unchanged under emulate.hpp: bit for bit against
// its f32 operations written out in the same order (which the GPU test holds
// to the CPU pass of optim/fused.rs), and its step against float64.
// Exit status 1 if any comparison is past its bound.
#include "emulate.hpp"

#include <random>

#include "adamw.cu"

int main() {
    std::mt19937_64 rng(20261211);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const unsigned long long len = 1001;
    std::vector<float> p(len), m(len), v(len), g(len);
    for (size_t i = 0; i < len; ++i) {
        p[i] = normal(rng);
        m[i] = 0.1f * normal(rng);
        v[i] = 0.01f * std::fabs(normal(rng));
        g[i] = normal(rng);
    }
    // Step 7 of 3DINO's AdamW: betas (0.9, 0.999), lr 1e-3, weight decay 0.04.
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, lr = 1e-3f, wd = 0.04f;
    const int t = 7;
    const float bc1 = 1.0f - std::pow(b1, t), bc2_sqrt = std::sqrt(1.0f - std::pow(b2, t));
    const float step = lr / bc1, decay = 1.0f - lr * wd;
    auto p0 = p, m0 = m, v0 = v;
    emu_launch(3, 64, [&] {
        adamw_f32(p.data(), m.data(), v.data(), g.data(), b1, 1.0f - b1, b2, 1.0f - b2, bc2_sqrt,
                  eps, step, decay, len);
    });
    std::vector<double> same_p(len), same_m(len), same_v(len), exact_update(len), update(len);
    for (size_t i = 0; i < len; ++i) {
        // The CPU pass: the same f32 operations, in the same order.
        float mi = m0[i] * b1 + g[i] * (1.0f - b1);
        float vi = v0[i] * b2 + g[i] * g[i] * (1.0f - b2);
        float denom = std::sqrt(vi) / bc2_sqrt + eps;
        same_m[i] = mi;
        same_v[i] = vi;
        same_p[i] = p0[i] * decay - mi / denom * step;
        double me = (double)m0[i] * b1 + (double)g[i] * (1.0 - b1);
        double ve = (double)v0[i] * b2 + (double)g[i] * g[i] * (1.0 - b2);
        exact_update[i] = -me / (std::sqrt(ve) / bc2_sqrt + eps) * step;
        update[i] = (double)p[i] - (double)p0[i] * decay;
    }
    emu_check("adamw_f32 (p, bit for bit)", p, same_p, 0.0);
    emu_check("adamw_f32 (m, bit for bit)", m, same_m, 0.0);
    emu_check("adamw_f32 (v, bit for bit)", v, same_v, 0.0);
    // The step itself (p' - p decay), not p', so a slip in it is not lost
    // in p's size; rounding p' to f32 (|p| up to ~4) costs about 1e-4 of the
    // largest step here.
    emu_check("adamw_f32 (step, against float64)", update, exact_update, 1e-3);
    std::printf("%d comparison(s) failed\n", emu_failures);
    return emu_failures == 0 ? 0 : 1;
}
