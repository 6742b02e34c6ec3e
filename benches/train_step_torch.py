"""PyTorch CPU baseline for one 3DINO training step; it runs next to the Rust
(candle) bench `model/benches/train_step.rs` on the same machine in the same
session.

What is timed: one full self-supervised step, i.e. everything between two
optimiser updates, with the same tensor sizes as 3DINO (spec §2.5):
  * teacher (no grad): backbone on the 2B global crops, the DINO head on the
    swapped normed [CLS] tokens, the iBOT head on the masked patch tokens, and
    Sinkhorn-Knopp (3 iterations, fp32, temperature 0.07) on both;
  * student: backbone on the masked globals and, in a second call, on the 8B
    locals; the DINO head on every [CLS] and the iBOT head on the masked
    patch tokens; DINO cross-entropy over the 18 view pairs, iBOT with
    per-image weights / 2B, KoLeo (0.1 per global chunk); total = sum;
  * backward, gradient clipping to 3.0 separately for the backbone, the DINO
    head and the iBOT head, AdamW with 3DINO's parameter groups, and the EMA
    teacher update (momentum 0.992) over every parameter.
Data loading and augmentation are not timed. The inputs are fixed random
volumes and iBOT masks drawn once (spec §2.6) from a fixed seed. Everything
runs in fp32 on CPU. The final line is parsed by the comparison script.

This is an independent reimplementation written from the method description
in shared/spec/3dino-reference.md (§1, §2.4-§2.6). It is not 3DINO's, DINOv2's
or MONAI's code. It needs only torch (no timm, xformers or monai).

usage: python train_step_torch.py --arch small --batch 2 --threads 2
"""

import argparse
import copy
import math
import random
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = {
    # name: (embed dim, depth, heads)
    "tiny": (192, 4, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
PATCH = 16
MLP_RATIO = 4
LN_EPS = 1e-6
LAYERSCALE_INIT = 1e-5

# Schedule values for the timed steps (the Rust bench uses the same ones).
LR = 1e-4
LAST_LAYER_LR = 1e-4
WD = 0.04
MOMENTUM = 0.992
TEACHER_TEMP = 0.07
STUDENT_TEMP = 0.1
CLIP_GRAD = 3.0
KOLEO_WEIGHT = 0.1
LAYERWISE_DECAY = 0.9
PATCH_EMBED_LR_MULT = 0.2


def trunc_normal_(t, std=0.02):
    # Truncated at +-2 std (the usual ViT initialisation).
    return nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


def init_linear(m):
    trunc_normal_(m.weight)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------


def drop_path(x, rate, training):
    """Per-sample stochastic depth: keep each sample's branch with
    probability 1 - rate and rescale it by 1 / (1 - rate)."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), LAYERSCALE_INIT))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim, heads, sdpa):
        super().__init__()
        self.heads = heads
        self.sdpa = sdpa
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x):
        b, n, e = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, e // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (b, heads, n, head_dim)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q * (q.shape[-1] ** -0.5)) @ k.transpose(-2, -1)
            y = a.softmax(dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, e))


class Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, MLP_RATIO * dim, bias=True)
        self.fc2 = nn.Linear(MLP_RATIO * dim, dim, bias=True)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    """Pre-norm block: x += LS1*Attn(LN1(x)); x += LS2*MLP(LN2(x))."""

    def __init__(self, dim, heads, drop_path_rate, sdpa):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, sdpa)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim)
        self.ls2 = LayerScale(dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x):
        r, t = self.drop_path_rate, self.training
        x = x + drop_path(self.ls1(self.attn(self.norm1(x))), r, t)
        x = x + drop_path(self.ls2(self.mlp(self.norm2(x))), r, t)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, dim):
        super().__init__()
        # Conv3d keeps PyTorch's default initialisation (spec §1.1).
        self.proj = nn.Conv3d(1, dim, kernel_size=PATCH, stride=PATCH, bias=True)

    def forward(self, x):
        # (B, E, h, w, d) -> (B, h*w*d, E), last spatial axis fastest.
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT3d(nn.Module):
    def __init__(self, dim, depth, heads, pos_grid, drop_path_rate, sdpa):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + pos_grid**3, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, heads, drop_path_rate, sdpa) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        trunc_normal_(self.pos_embed)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                init_linear(m)

    def interpolated_pos_embed(self, grid):
        """Position embedding for a (w0, h0, d0) token grid (spec §1.1):
        trilinear, align_corners=False, scale factors (g + 0.1) / s' with s'
        the unrounded cube root of the stored patch count."""
        n_pos = self.pos_embed.shape[1] - 1
        w0, h0, d0 = grid
        s = round(n_pos ** (1.0 / 3.0))
        if w0 * h0 * d0 == n_pos and w0 == h0 == d0 == s:
            return self.pos_embed
        s_float = n_pos ** (1.0 / 3.0)
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        e = patch_pos.shape[-1]
        cube = patch_pos.float().reshape(1, s, s, s, e).permute(0, 4, 1, 2, 3)
        out = F.interpolate(
            cube,
            scale_factor=((w0 + 0.1) / s_float, (h0 + 0.1) / s_float, (d0 + 0.1) / s_float),
            mode="trilinear",
            align_corners=False,
        )
        assert out.shape[-3:] == (w0, h0, d0), (out.shape, grid)
        out = out.permute(0, 2, 3, 4, 1).reshape(1, -1, e).to(self.pos_embed.dtype)
        return torch.cat((cls_pos, out), dim=1)

    def forward(self, x, masks=None):
        """Returns (normed [CLS] (B, E), normed patch tokens (B, N, E))."""
        grid = tuple(s // PATCH for s in x.shape[-3:])
        x = self.patch_embed(x)
        if masks is not None:
            # Mask token substituted before [CLS] and the position embedding.
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolated_pos_embed(grid)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:]


# --------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """3-layer MLP (GELU) -> L2 normalise -> weight-normalised prototypes."""

    def __init__(self, dim, hidden, bottleneck, prototypes):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                init_linear(m)
        last = nn.Linear(bottleneck, prototypes, bias=False)
        init_linear(last)
        # weight = g * v / ||v|| per prototype row; g (K, 1) starts at 1 and
        # is trainable.
        self.last_layer = nn.utils.parametrizations.weight_norm(last, dim=0)
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x):
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-12)
        return self.last_layer(x)


class Networks(nn.Module):
    def __init__(self, args, sdpa):
        super().__init__()
        dim, depth, heads = ARCHS[args.arch]
        self.backbone = ViT3d(
            dim, depth, heads, args.global_size // PATCH, args.drop_path, sdpa
        )
        self.dino_head = ProjectionHead(dim, args.hidden, args.bottleneck, args.prototypes)
        self.ibot_head = ProjectionHead(dim, args.hidden, args.bottleneck, args.prototypes)


# --------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------


@torch.no_grad()
def sinkhorn_knopp(logits, temp, iters=3):
    """Sinkhorn-Knopp centring in fp32, no max-subtraction (spec §2.5)."""
    q = torch.exp(logits.float() / temp).t()  # (K, n)
    k, n = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    q *= n
    return q.t()


def cross_entropy(student_logits, teacher_probs):
    """-mean over rows of sum_k t_k log_softmax(s / T_s)_k."""
    lsm = F.log_softmax(student_logits.float() / STUDENT_TEMP, dim=-1)
    return -(teacher_probs * lsm).sum(dim=-1).mean()


def koleo(x):
    """Kozachenko-Leonenko entropy estimator term on the rows of x (fp32)."""
    x = F.normalize(x.float(), p=2, dim=-1, eps=1e-8)
    with torch.no_grad():
        dots = x @ x.t()
        n = x.shape[0]
        dots.view(-1)[:: n + 1].fill_(-1.0)
        nn_idx = dots.argmax(dim=1)
    d = F.pairwise_distance(x, x[nn_idx], p=2, eps=1e-8)
    return -torch.log(d + 1e-8).mean()


# --------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------


def multipliers(name, depth):
    """(lr_mult, wd_mult, is_last_layer) for one parameter (spec §2.4)."""
    lr_mult = 1.0
    if name.startswith("backbone."):
        rest = name[len("backbone."):]
        first = rest.split(".")[0]
        if first in ("pos_embed", "patch_embed", "cls_token", "mask_token"):
            layer_id = 0
        elif first == "blocks":
            layer_id = int(rest.split(".")[1]) + 1
        else:
            layer_id = depth + 1
        lr_mult = LAYERWISE_DECAY ** (depth + 1 - layer_id)
        if first == "patch_embed":
            lr_mult *= PATCH_EMBED_LR_MULT
    no_wd = name.endswith("bias") or "norm" in name or "gamma" in name
    return lr_mult, 0.0 if no_wd else 1.0, "last_layer" in name


def param_groups(model, depth):
    groups = {}
    for name, p in model.named_parameters():
        key = multipliers(name, depth)
        groups.setdefault(key, []).append(p)
    out = []
    for (lr_mult, wd_mult, last), params in groups.items():
        lr = (LAST_LAYER_LR if last else LR) * lr_mult
        out.append({"params": params, "lr": lr, "weight_decay": WD * wd_mult})
    return out


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_masks(b, n_tokens, rng):
    """iBOT masks for 2B global crops (spec §2.6): B of them masked with
    ratios stratified over [0.2, 0.75], tokens uniform without replacement;
    the other B empty; the list shuffled."""
    n_crops = 2 * b
    n_masked = int(n_crops * 0.5)
    probs = torch.linspace(0.2, 0.75, n_masked + 1).tolist()
    masks = []
    for i in range(n_masked):
        count = int(n_tokens * rng.uniform(probs[i], probs[i + 1]))
        m = torch.zeros(n_tokens, dtype=torch.bool)
        m[rng.sample(range(n_tokens), count)] = True
        masks.append(m)
    masks += [torch.zeros(n_tokens, dtype=torch.bool)] * (n_crops - n_masked)
    rng.shuffle(masks)
    masks = torch.stack(masks)  # (2B, N)
    flat = masks.flatten()
    mask_indices = flat.nonzero().flatten()
    per_image = masks.sum(dim=1).clamp(min=1).float()
    weights = (1.0 / per_image).unsqueeze(1).expand_as(masks).flatten()[flat]
    return masks, mask_indices, weights


# --------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------


def train_step(student, teacher, opt, batch, b, n_locals):
    globals_, locals_, masks, mask_indices, mask_weights = batch
    n_global_crops = 2

    # Teacher on the unmasked global crops.
    with torch.no_grad():
        t_cls, t_patch = teacher.backbone(globals_)
        c0, c1 = t_cls.chunk(n_global_crops)
        t_cls = torch.cat((c1, c0))  # each student view faces the other view
        t_dino = sinkhorn_knopp(teacher.dino_head(t_cls), TEACHER_TEMP)
        t_masked = t_patch.flatten(0, 1)[mask_indices]
        t_ibot = sinkhorn_knopp(teacher.ibot_head(t_masked), TEACHER_TEMP)

    # Student: masked globals, then locals (two forward calls).
    s_gcls, s_gpatch = student.backbone(globals_, masks)
    terms = n_global_crops * (n_global_crops - 1) + n_locals * n_global_crops
    if n_locals > 0:
        s_lcls, _ = student.backbone(locals_)
        s_dino = student.dino_head(torch.cat((s_lcls, s_gcls)))
        s_dino_local, s_dino_global = s_dino[: n_locals * b], s_dino[n_locals * b:]
    else:
        s_dino_global = student.dino_head(s_gcls)
    s_ibot = student.ibot_head(s_gpatch.flatten(0, 1)[mask_indices])

    # DINO: mean over the 18 (student view, other teacher view) pairs.
    t_chunks = t_dino.chunk(n_global_crops)
    dino_local = s_gcls.new_zeros(())
    if n_locals > 0:
        for s in s_dino_local.chunk(n_locals):
            for t in t_chunks:
                dino_local = dino_local + cross_entropy(s, t)
    dino_local = dino_local / terms
    dino_global = cross_entropy(s_dino_global, t_dino) * n_global_crops / terms

    # KoLeo on each global chunk of the student's normed [CLS].
    koleo_loss = KOLEO_WEIGHT * sum(koleo(c) for c in s_gcls.chunk(n_global_crops))

    # iBOT: per-image weighted CE over masked tokens, / 2B.
    lsm = F.log_softmax(s_ibot.float() / STUDENT_TEMP, dim=-1)
    per_token = (t_ibot * lsm).sum(dim=-1)
    ibot_loss = -(per_token * mask_weights).sum() / (n_global_crops * b)

    loss = dino_local + dino_global + koleo_loss + ibot_loss

    opt.zero_grad(set_to_none=True)
    loss.backward()
    for module in (student.backbone, student.dino_head, student.ibot_head):
        nn.utils.clip_grad_norm_(module.parameters(), CLIP_GRAD)
    opt.step()

    # EMA teacher update over every parameter.
    with torch.no_grad():
        t_params = list(teacher.parameters())
        s_params = list(student.parameters())
        torch._foreach_mul_(t_params, MOMENTUM)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - MOMENTUM)
    return loss.item()


def step_flops(args, n_global_tokens, n_masked):
    """Model FLOPs of one step (matmuls only): student forward + backward (3x)
    on globals and locals, teacher forward (1x) on globals, both heads."""
    dim, depth, _ = ARCHS[args.arch]
    b = args.batch

    def vit(crops, side):
        n = 1 + (side // PATCH) ** 3
        per_token = depth * (2 * 12 * dim * dim + 4 * n * dim) + 2 * PATCH**3 * dim
        return crops * n * per_token

    def head(rows):
        h, bn, k = args.hidden, args.bottleneck, args.prototypes
        return rows * 2 * (dim * h + h * h + h * bn + bn * k)

    g = vit(2 * b, args.global_size)
    loc = vit(args.locals * b, args.local_size)
    heads = head(2 * b + args.locals * b) + head(n_masked)
    teacher = g + head(2 * b) + head(n_masked)
    return 3 * (g + loc + heads) + teacher


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="small")
    ap.add_argument("--batch", type=int, default=2, help="samples B (2B globals, LOCALS*B locals)")
    ap.add_argument("--global-size", type=int, default=96)
    ap.add_argument("--local-size", type=int, default=48)
    ap.add_argument("--locals", type=int, default=8)
    ap.add_argument("--prototypes", type=int, default=65536)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--bottleneck", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--drop-path", type=float, default=0.0, help="student per-sample drop path")
    ap.add_argument(
        "--attention",
        choices=("sdpa", "math"),
        default="sdpa",
        help="F.scaled_dot_product_attention or explicit softmax(QK^T/sqrt(d))V",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the GPU reference for issue 9)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and losses")
    ap.add_argument("--tf32", action="store_true", help="fp32 matmuls in TF32 on tensor cores")
    ap.add_argument(
        "--peak-tflops", type=float, default=989.0,
        help="dense bf16 peak for the MFU line (H100 SXM: 989)",
    )
    args = ap.parse_args()
    for s in (args.global_size, args.local_size):
        if s % PATCH:
            ap.error(f"crop size {s} is not a multiple of {PATCH}")

    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.manual_seed(args.seed)
    b = args.batch

    device = torch.device(args.device)
    student = Networks(args, sdpa=args.attention == "sdpa").to(device)
    student.train()
    teacher = copy.deepcopy(student)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    depth = ARCHS[args.arch][1]
    groups = param_groups(student, depth)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

    gen = torch.Generator().manual_seed(args.seed)
    gs, ls = args.global_size, args.local_size
    globals_ = torch.rand((2 * b, 1, gs, gs, gs), generator=gen) * 2 - 1
    locals_ = torch.rand((args.locals * b, 1, ls, ls, ls), generator=gen) * 2 - 1
    n_tokens = (gs // PATCH) ** 3
    masks, mask_indices, mask_weights = make_masks(b, n_tokens, random.Random(args.seed))
    batch = tuple(
        t.to(device) for t in (globals_, locals_, masks, mask_indices, mask_weights)
    )

    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print(
        f"arch={args.arch} backbone={n_params(student.backbone)} "
        f"dino_head={n_params(student.dino_head)} ibot_head={n_params(student.ibot_head)} "
        f"param_groups={len(groups)} globals={tuple(globals_.shape)} "
        f"locals={tuple(locals_.shape)} masked_tokens={mask_indices.numel()} "
        f"attention={args.attention} drop_path={args.drop_path}",
        flush=True,
    )

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = train_step(student, teacher, opt, batch, b, args.locals)
        dt = time.perf_counter() - t0  # loss.item() waited for the device
        if not math.isfinite(loss):
            raise SystemExit(f"non-finite loss {loss} at step {i}")
        if i >= args.warmup:
            print(f"step {i - args.warmup}: {dt:.3f} s, loss {loss:.4f}", flush=True)
            times.append(dt)
        else:
            print(f"warmup {i}: {dt:.3f} s, loss {loss:.4f}", flush=True)

    mean = sum(times) / max(len(times), 1)
    low = min(times) if times else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.type == "cuda":
        flops = step_flops(args, n_tokens, mask_indices.numel())
        print(
            f"gpu step: device={torch.cuda.get_device_name()} bf16={args.bf16} "
            f"model_tflop_per_step={flops / 1e12:.2f} tflops={flops / mean / 1e12:.1f} "
            f"mfu={flops / mean / 1e12 / args.peak_tflops:.3f} "
            f"peak_gpu_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f}"
        )
    print(
        f"torch step: arch={args.arch} batch={b} mean_s={mean:.4f} min_s={low:.4f} "
        f"samples_per_s={b / mean if mean > 0 else float('nan'):.4f} "
        f"peak_rss_mib={peak:.1f} threads={args.threads} torch={torch.__version__}"
    )


if __name__ == "__main__":
    main()
