// attention.cu's kernels (forward with its log-sum-exp, the backward's row
// dot, dQ, and dK with dV), run unchanged under emulate.hpp, against the
// attention and its gradients in float64 with the whole score matrix:
// S = scale q kᵀ, P = softmax(S), O = P v, D = rowsum(dO ∘ O),
// dS = P ∘ (dO vᵀ − D), dQ = scale dS k, dK = scale dSᵀ q, dV = Pᵀ dO.
// Exit status 1 if any comparison is past its bound.
#include "emulate.hpp"

#include <random>

#include "attention.cu"

static std::mt19937_64 rng(20261209);

static std::vector<float> normal(size_t n, float sd) {
    std::normal_distribution<float> dist(0.0f, sd);
    std::vector<float> v(n);
    for (auto& x : v) {
        x = dist(rng);
    }
    return v;
}

static void check(int groups, int t, float scale) {
    const int hd = D3_HD;
    const size_t n = (size_t)groups * t * hd;
    auto q = normal(n, 1.0f), k = normal(n, 1.0f), v = normal(n, 1.0f), dout = normal(n, 1.0f);
    std::vector<float> o(n), lse(groups * t), dd(groups * t), dq(n), dk(n), dv(n);
    // The launchers' grid: (ceil(T / 8), G) blocks of 8 warps.
    const unsigned bx = (t + D3_WARPS - 1) / D3_WARPS, block = 32 * D3_WARPS;
    emu_launch(bx, block,
               [&] { attn_fwd_f32(q.data(), k.data(), v.data(), o.data(), lse.data(), t, scale); },
               groups);
    emu_launch(bx, block, [&] { attn_bwd_dot_f32(dout.data(), o.data(), dd.data(), t); }, groups);
    emu_launch(bx, block, [&] {
        attn_bwd_dq_f32(q.data(), k.data(), v.data(), dout.data(), lse.data(), dd.data(),
                        dq.data(), t, scale);
    }, groups);
    emu_launch(bx, block, [&] {
        attn_bwd_dkv_f32(q.data(), k.data(), v.data(), dout.data(), lse.data(), dd.data(),
                         dk.data(), dv.data(), t, scale);
    }, groups);

    std::vector<double> wo(n, 0.0), wlse(groups * t), wdd(groups * t), wdq(n, 0.0), wdk(n, 0.0),
        wdv(n, 0.0);
    std::vector<double> p(t * t), ds(t * t);
    for (int g = 0; g < groups; ++g) {
        const size_t base = (size_t)g * t * hd;
        auto at = [&](const std::vector<float>& m, int r, int c) { return (double)m[base + r * hd + c]; };
        for (int i = 0; i < t; ++i) {
            double mx = -INFINITY, z = 0.0;
            for (int j = 0; j < t; ++j) {
                double s = 0.0;
                for (int c = 0; c < hd; ++c) {
                    s += at(q, i, c) * at(k, j, c);
                }
                p[i * t + j] = scale * s;
                mx = std::fmax(mx, scale * s);
            }
            for (int j = 0; j < t; ++j) {
                z += std::exp(p[i * t + j] - mx);
            }
            for (int j = 0; j < t; ++j) {
                p[i * t + j] = std::exp(p[i * t + j] - mx) / z;
            }
            wlse[g * t + i] = mx + std::log(z);
            for (int c = 0; c < hd; ++c) {
                double acc = 0.0;
                for (int j = 0; j < t; ++j) {
                    acc += p[i * t + j] * at(v, j, c);
                }
                wo[base + i * hd + c] = acc;
            }
            double d = 0.0;
            for (int c = 0; c < hd; ++c) {
                d += at(dout, i, c) * wo[base + i * hd + c];
            }
            wdd[g * t + i] = d;
            for (int j = 0; j < t; ++j) {
                double dp = 0.0;
                for (int c = 0; c < hd; ++c) {
                    dp += at(dout, i, c) * at(v, j, c);
                }
                ds[i * t + j] = p[i * t + j] * (dp - d);
            }
        }
        for (int i = 0; i < t; ++i) {
            for (int j = 0; j < t; ++j) {
                for (int c = 0; c < hd; ++c) {
                    wdq[base + i * hd + c] += scale * ds[i * t + j] * at(k, j, c);
                    wdk[base + j * hd + c] += scale * ds[i * t + j] * at(q, i, c);
                    wdv[base + j * hd + c] += p[i * t + j] * at(dout, i, c);
                }
            }
        }
    }
    char name[80];
    std::snprintf(name, sizeof name, "attn_fwd_f32 G=%d T=%d (output)", groups, t);
    emu_check(name, o, wo, 1e-5);
    std::snprintf(name, sizeof name, "attn_fwd_f32 G=%d T=%d (log-sum-exp)", groups, t);
    emu_check(name, lse, wlse, 1e-5);
    std::snprintf(name, sizeof name, "attn_bwd_dot_f32 G=%d T=%d", groups, t);
    emu_check(name, dd, wdd, 1e-5);
    std::snprintf(name, sizeof name, "attn_bwd_dq_f32 G=%d T=%d", groups, t);
    emu_check(name, dq, wdq, 1e-5);
    std::snprintf(name, sizeof name, "attn_bwd_dkv_f32 G=%d T=%d (dK)", groups, t);
    emu_check(name, dk, wdk, 1e-5);
    std::snprintf(name, sizeof name, "attn_bwd_dkv_f32 G=%d T=%d (dV)", groups, t);
    emu_check(name, dv, wdv, 1e-5);
}

int main() {
    // Under one tile and one block; over two tiles with a last block whose
    // last three warps have no row (37 = 32 + 5: 5 blocks of 8 warps), in
    // 2 groups.
    check(1, 5, 0.125f);
    check(2, 37, 0.125f);
    std::printf("%d comparison(s) failed\n", emu_failures);
    return emu_failures == 0 ? 0 : 1;
}
