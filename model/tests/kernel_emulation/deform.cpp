// deform.cu's kernels (the ViT-Adapter's trilinear sampling: forward, the
// values' gradient by atomicAdd, the locations' gradient by warp sums), run
// unchanged under emulate.hpp, against trilinear interpolation written out
// in float64 (align_corners = False, corners outside a level count as zero,
// a location that is not finite samples nothing).
// Exit status 1 if any comparison is past its bound.
#include "emulate.hpp"

#include <random>

#include "deform.cu"

int main() {
    std::mt19937_64 rng(20261210);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> unit(-0.1f, 1.1f);
    // Two levels, row-major with z fastest, one after the other.
    const std::vector<int> levels = {6, 5, 4, 0, 3, 3, 2, 120};
    const int n_levels = 2, points = 3, queries = 7, groups = 2, dim = 40;
    const long long voxels = 120 + 18, samples = (long long)queries * n_levels * points;
    std::vector<float> values(groups * voxels * dim), loc(groups * samples * 3),
        grad(groups * samples * dim);
    for (auto& v : values) v = normal(rng);
    for (auto& v : loc) v = unit(rng);
    for (auto& v : grad) v = normal(rng);
    loc[5 * 3 + 1] = NAN;  // one sample with a coordinate that is not finite

    const unsigned long long total = (unsigned long long)groups * samples * dim;
    const unsigned long long n_samples = (unsigned long long)groups * samples;
    std::vector<float> out(total), dv(values.size(), 0.0f), dloc(loc.size());
    emu_launch(4, 64, [&] {
        deform_fwd_f32(values.data(), loc.data(), levels.data(), out.data(), n_levels, points,
                       voxels, samples, dim, total);
    });
    emu_launch(4, 64, [&] {
        deform_bwd_values_f32(loc.data(), grad.data(), levels.data(), dv.data(), n_levels, points,
                              voxels, samples, dim, total);
    });
    // The launcher's: one warp per sample, 256 threads a block.
    emu_launch((unsigned)((n_samples * 32 + 255) / 256), 256, [&] {
        deform_bwd_loc_f32(values.data(), loc.data(), grad.data(), levels.data(), dloc.data(),
                           n_levels, points, voxels, samples, dim, n_samples);
    });

    std::vector<double> wout(total, 0.0), wdv(values.size(), 0.0), wdloc(loc.size(), 0.0);
    for (int g = 0; g < groups; ++g) {
        for (long long s = 0; s < samples; ++s) {
            const int* lv = &levels[4 * ((s / points) % n_levels)];
            const float* l = &loc[(g * samples + s) * 3];
            if (!std::isfinite(l[0]) || !std::isfinite(l[1]) || !std::isfinite(l[2])) {
                continue;
            }
            double c[3], f[3];
            int b[3];
            for (int k = 0; k < 3; ++k) {
                c[k] = (double)l[k] * lv[k] - 0.5;
                b[k] = (int)std::floor(c[k]);
                f[k] = c[k] - b[k];
            }
            for (int dx = 0; dx < 2; ++dx) {
                for (int dy = 0; dy < 2; ++dy) {
                    for (int dz = 0; dz < 2; ++dz) {
                        int i = b[0] + dx, j = b[1] + dy, h = b[2] + dz;
                        if (i < 0 || i >= lv[0] || j < 0 || j >= lv[1] || h < 0 || h >= lv[2]) {
                            continue;
                        }
                        double wx = dx ? f[0] : 1 - f[0], wy = dy ? f[1] : 1 - f[1],
                               wz = dz ? f[2] : 1 - f[2];
                        // d weight / d location: d frac / d loc = size.
                        double gx = (dx ? 1 : -1) * lv[0] * wy * wz;
                        double gy = (dy ? 1 : -1) * lv[1] * wx * wz;
                        double gz = (dz ? 1 : -1) * lv[2] * wx * wy;
                        long long row = lv[3] + ((long long)i * lv[1] + j) * lv[2] + h;
                        const size_t vrow = ((size_t)g * voxels + row) * dim;
                        const size_t srow = ((size_t)g * samples + s) * dim;
                        double dot = 0.0;
                        for (int d = 0; d < dim; ++d) {
                            wout[srow + d] += wx * wy * wz * values[vrow + d];
                            wdv[vrow + d] += wx * wy * wz * grad[srow + d];
                            dot += (double)values[vrow + d] * grad[srow + d];
                        }
                        double* dl = &wdloc[(g * samples + s) * 3];
                        dl[0] += gx * dot;
                        dl[1] += gy * dot;
                        dl[2] += gz * dot;
                    }
                }
            }
        }
    }
    emu_check("deform_fwd_f32", out, wout, 1e-5);
    emu_check("deform_bwd_values_f32", dv, wdv, 1e-5);
    emu_check("deform_bwd_loc_f32", dloc, wdloc, 1e-5);
    bool nothing = out[5 * dim] == 0.0f && dloc[5 * 3] == 0.0f && dloc[5 * 3 + 2] == 0.0f;
    std::printf("%-48s %s\n", "deform: a non-finite location samples nothing",
                nothing ? "ok" : "FAILED");
    emu_failures += nothing ? 0 : 1;
    std::printf("%d comparison(s) failed\n", emu_failures);
    return emu_failures == 0 ? 0 : 1;
}
