"""The PyTorch side of ``python -m regnp.bench --compare-torch`` (benchmark code only).

The package never imports torch; this module does, inside its functions, and only the benchmark
calls it. It builds **the same networks and loss** as regnp's Meta-Reg and VoxelMorph-2 — the
VoxelMorph U-Net (encoder 16-32-32-32 stride-2 3×3 convs, decoder 32-32-32-32-32-16-16, LeakyReLU
0.2, skips by concatenation; nearest ×2 upsampling for VM-2, k = 2 stride-2 transposed convs for
Meta-Reg), a 3×3 flow head, Meta-Reg's shared 13×13 unit-sum depthwise filter with eq. 12's
symmetry terms and hinge trace penalty, a bilinear zero-padded warp (``grid_sample``), MSE +
λ·diffusion — and times, at batch 2 and 256×256:

- ``step``: one training step (forward, loss, backward, Adam update);
- ``infer``: registration of one pair (forward only, no gradient).

Each measurement runs in a fresh process (``python -m regnp.bench.torch_side ...`` or the regnp
equivalent in ``regnp.bench``) so neither library's thread pools, caches or allocator state leak
into the other; ``regnp.bench`` alternates the two for several rounds and reports medians.
"""
import json
import sys
import time


def build(model, N=2, S=256):
    """(infer, step) callables for the torch twin of ``model`` ("metareg" or "vm2")."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Up(nn.Module):
        def __init__(self, c, transpose):
            super().__init__()
            self.t = nn.ConvTranspose2d(c, c, 2, stride=2) if transpose else None

        def forward(self, x):
            return self.t(x) if self.t is not None else F.interpolate(x, scale_factor=2,
                                                                      mode="nearest")

    class UNet(nn.Module):
        def __init__(self, transpose):
            super().__init__()
            enc, dec = [16, 32, 32, 32], [32, 32, 32, 32, 32, 16, 16]
            self.enc = nn.ModuleList()
            c = 2
            for w in enc:
                self.enc.append(nn.Conv2d(c, w, 3, stride=2, padding=1))
                c = w
            skips = [enc[2], enc[1], enc[0]]
            self.up_convs, self.ups = nn.ModuleList(), nn.ModuleList()
            for i in range(3):
                self.up_convs.append(nn.Conv2d(c, dec[i], 3, padding=1))
                self.ups.append(Up(dec[i], transpose))
                c = dec[i] + skips[i]
            self.d3 = nn.Conv2d(c, dec[3], 3, padding=1)
            self.d4 = nn.Conv2d(dec[3], dec[4], 3, padding=1)
            self.up_full = Up(dec[4], transpose)
            self.d5 = nn.Conv2d(dec[4] + 2, dec[5], 3, padding=1)
            self.d6 = nn.Conv2d(dec[5], dec[6], 3, padding=1)
            self.flow = nn.Conv2d(dec[6], 2, 3, padding=1)

        def forward(self, x):
            act = lambda t: F.leaky_relu(t, 0.2)
            feats, h = [x], x
            for conv in self.enc:
                h = act(conv(h))
                feats.append(h)
            for i in range(3):
                h = self.ups[i](act(self.up_convs[i](h)))
                h = torch.cat([h, feats[3 - i]], 1)
            h = act(self.d4(act(self.d3(h))))
            h = torch.cat([self.up_full(h), x], 1)
            h = act(self.d6(act(self.d5(h))))
            return self.flow(h)

    class Net(nn.Module):
        def __init__(self, meta):
            super().__init__()
            self.unet = UNet(transpose=meta)
            self.meta = meta
            if meta:
                r = torch.arange(13, dtype=torch.float32) - 6
                g = torch.exp(-0.5 * (r / 2.0) ** 2)
                self.k = nn.Parameter(torch.outer(g, g) / torch.outer(g, g).sum())
            H = torch.arange(S, dtype=torch.float32)
            yy, xx = torch.meshgrid(H, H, indexing="ij")
            self.register_buffer("grid", torch.stack([yy, xx]))

        def filt(self):
            return self.k + (1 - self.k.sum()) / 169.0            # unit sum (affine projection)

        def forward(self, fixed, moving):
            u = self.unet(torch.cat([fixed, moving], 1))
            if self.meta:
                K = self.filt()
                u = F.conv2d(u, K.expand(2, 1, 13, 13), padding=6, groups=2)
            p = self.grid + u                                     # sampling points (y, x)
            gx = 2 * p[:, 1] / (S - 1) - 1
            gy = 2 * p[:, 0] / (S - 1) - 1
            warped = F.grid_sample(moving, torch.stack([gx, gy], -1), mode="bilinear",
                                   padding_mode="zeros", align_corners=True)
            return warped, u

        def penalty(self, rho1=10.0, rho2=1e-3):
            if not self.meta:
                return 0.0
            K = self.filt()
            Kf = torch.flip(K, [1])                               # K J
            JK = torch.flip(K, [0])
            sym = ((K - K.t()) ** 2).sum() + ((Kf - JK) ** 2).sum()
            tr = torch.relu(-torch.trace(K)) + torch.relu(-torch.trace(JK))
            return rho1 * sym + rho2 * tr

    torch.manual_seed(0)
    net = Net(meta=(model == "metareg"))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    Fi, Mi = torch.rand(N, 1, S, S), torch.rand(N, 1, S, S)

    def step():
        opt.zero_grad()
        warped, u = net(Fi, Mi)
        dy, dx = u[:, :, 1:] - u[:, :, :-1], u[:, :, :, 1:] - u[:, :, :, :-1]
        loss = F.mse_loss(warped, Fi) + 0.04 * 0.5 * ((dy ** 2).mean() + (dx ** 2).mean()) \
            + net.penalty()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            net(Fi[:1], Mi[:1])
    return infer, step


def _median_seconds(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def measure(side, model, what, repeats, numpy_first=True):
    """Median seconds of ``what`` ("step"/"infer") for ``side`` ("regnp"/"torch"), in this
    process. ``numpy_first``: import NumPy before regnp, as most user scripts do."""
    if side == "torch":
        import torch
        infer, step = build(model)
        info = {"threads": torch.get_num_threads(), "version": torch.__version__}
    else:
        if numpy_first:
            import numpy  # noqa: F401
        from .setups import prep_model as _prep_model
        import numba
        infer, step = _prep_model(model)
        info = {"threads": numba.get_num_threads(), "numpy_first": numpy_first}
    fn = step if what == "step" else infer
    return _median_seconds(fn, repeats), info


def _command(side, model, what, repeats, numpy_first=True):
    """The command measuring one side in a fresh process. ``python -m regnp.X`` would import the
    regnp package (and its thread settings) before anything else, so the NumPy-first variant
    imports NumPy and then runs this module by name, as a user's script would."""
    args = [side, model, what, str(repeats)]
    if not numpy_first:
        return [sys.executable, "-m", "regnp.bench.torch_side", *args]
    code = ("import numpy, runpy, sys; sys.argv = ['bench_torch'] + sys.argv[1:]; "
            "runpy.run_module('regnp.bench.torch_side', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


def compare(models=("metareg", "vm2"), whats=("step", "infer"), rounds=5, repeats=10,
            progress=True):
    """Alternate regnp and torch, each in its own fresh process, for ``rounds`` rounds (the
    order flips every round). Returns rows {model, what, regnp: [s...], torch: [s...]}."""
    import subprocess
    from tqdm import tqdm
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    rows = {(m, w): {"model": m, "what": w, "regnp": [], "torch": []} for m in models
            for w in whats}
    plan = [(r, m, w) for r in range(rounds) for m in models for w in whats]
    for r, m, w in tqdm(plan, desc="A/B rounds", disable=not progress):
        sides = ("regnp", "torch") if r % 2 == 0 else ("torch", "regnp")
        for side in sides:
            out = subprocess.run(_command(side, m, w, repeats, numpy_first=True),
                                 capture_output=True, text=True, check=True)
            rows[(m, w)][side].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    return list(rows.values())


def format_compare(rows):
    """Medians and the regnp/torch ratio per round and overall."""
    import numpy as np
    lines = [f"{'model':<9}{'what':<7}{'regnp ms':>10}{'torch ms':>10}{'ratio':>8}   "
             f"ratio per round (min–max)"]
    for r in rows:
        a, b = np.array(r["regnp"]), np.array(r["torch"])
        per = a / b
        lines.append(f"{r['model']:<9}{r['what']:<7}{1e3 * np.median(a):>10.1f}"
                     f"{1e3 * np.median(b):>10.1f}{np.median(a) / np.median(b):>8.2f}   "
                     + " ".join(f"{x:.2f}" for x in per) + f"  ({per.min():.2f}–{per.max():.2f})")
    return "\n".join(lines)


if __name__ == "__main__":               # python -m regnp.bench.torch_side SIDE MODEL WHAT REPEATS
    side, m, w, r = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sec, info = measure(side, m, w, r)
    print(json.dumps({"side": side, "model": m, "what": w, "seconds": sec, **info}))
