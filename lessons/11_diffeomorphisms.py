# %% Lesson 11 — Diffeomorphisms
"""Lesson 11 — Diffeomorphisms: integrate a velocity field, and the warp cannot fold.

The paper's networks predict a displacement u and warp by φ(p) = p + u(p). Nothing stops φ from
folding (det J < 0: neighbouring pixels swap order); only the smoothness term λ·R(u) discourages
it. The diffeomorphic alternative, used by VoxelMorph-diff and many classical methods, reads the
network's field as a stationary *velocity* v and warps by the end point of its flow,

    dφ_t/dt = v(φ_t),  φ_0 = id,   φ = φ_1 = exp(v).

Flows of smooth velocity fields are diffeomorphisms: smooth, invertible (φ⁻¹ = exp(−v)), and
they cannot fold whatever the size of v. Scaling and squaring computes exp(v) in T steps:
φ = exp(v/2^T)^(2^T), i.e. start from the tiny displacement v/2^T and compose the map with
itself T times.

1. a displacement that folds: a swirl;
2. the same field as a velocity, integrated by scaling and squaring on the page (checked against
   ``regnp.ops.integrate``), and how many squarings it needs;
3. the Jacobian determinants side by side;
4. the inverse for free: exp(−v);
5. what it costs in time (at 256×256, in a training step);
6. a short training of Meta-Reg with and without ``--integrate 7``: folding against Dice.

Run:  python lessons/11_diffeomorphisms.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""
import tempfile
import time
from pathlib import Path

import numpy as np

from regnp.data import load_dataset
from regnp.evaluate import evaluate_pairs, summarize_records
from regnp.figures import (draw_deformed_grid, lesson_options, report_numbers, show_or_close,
                           use_script_backend)
from regnp.metrics import jacobian_determinant
from regnp.models import Objective, build_model
from regnp.nn.optim import Adam
from regnp.ops.integrate import integrate_velocity_backward, integrate_velocity_forward
from regnp.ops.warp import warp_backward, warp_forward
from regnp.train import make_config, train

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


def det_map(ax, det, title):
    """det J as an image: white = 1 (area kept), red < 1 (compressed), blue > 1 (expanded);
    folded pixels (det J ≤ 0) in grey."""
    im = ax.imshow(det, cmap="RdBu", vmin=-1, vmax=3)
    ax.imshow(np.ma.masked_where(det > 0, np.ones_like(det)), cmap="gray", vmin=0, vmax=2)
    ax.set_title(f"{title}: min {det.min():.2f}, {100 * np.mean(det <= 0):.2g} % ≤ 0")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def interleaved_ms(a, b, reps):
    """Median milliseconds of a() and of b(), timed alternately (a b, b a, a b, ...) after one
    warm-up of each, and the median of the per-round ratios b/a: a machine that is busy with
    other work slows both alike."""
    a(), b()
    ta, tb = [], []
    for r in range(reps):
        for f, times in ([(a, ta), (b, tb)] if r % 2 == 0 else [(b, tb), (a, ta)]):
            t0 = time.perf_counter()
            f()
            times.append(1e3 * (time.perf_counter() - t0))
    return float(np.median(ta)), float(np.median(tb)), float(np.median(np.divide(tb, ta)))


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR. In a notebook the kernel's
# own arguments are ignored (a full run into figures/); set quick = True here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
S = 64 if quick else 128

# %%
# Step 1 — a displacement that folds. A swirl around the image centre c: a rotation whose rate
# falls off with the distance from c,
#     v(p) = θ · g(p) · (x − c, −(y − c))   in (row, column) order,   g = exp(−|p − c|² / 2s²).
# As a *displacement*, each point steps off along the tangent of its circle by θ·g·r pixels. Where
# g falls off, neighbours step by very different amounts and cross: det J < 0 on a ring.
theta, s = 3.0, S / 6
yy, xx = np.mgrid[0:S, 0:S].astype(np.float64)
c = (S - 1) / 2
g = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * s * s))
v = np.stack([theta * g * (xx - c), -theta * g * (yy - c)])[None]     # (1, 2, S, S)
det_disp = jacobian_determinant(v)[0]                                 # of φ = id + v
print(f"Step 1 — a swirl of θ = {theta} rad on {S}×{S}: |v| up to {np.abs(v).max():.1f} px; as a "
      f"displacement det J < 0 on {100 * np.mean(det_disp <= 0):.1f} % of the pixels "
      f"(min det {det_disp.min():.2f})")

# %%
# Step 2 — the same field as a velocity, by scaling and squaring. v/2^T is a small displacement
# (for T = 7, |v|/128: about 0.30 px at most for the full run's 128×128 swirl, 0.15 px in the
# quick run's 64×64): id + v/2^T ≈ exp(v/2^T), and so small a step cannot fold. Composing a map with
# itself doubles its time: exp(w)∘exp(w) = exp(2w). In displacements, φ∘φ(p) = φ(p) + u(φ(p)),
# i.e. u ← u + u∘(id + u), and u∘(id + u) is the bilinear warp of the "image" u by u itself.
T = 7
u = v / 2 ** T                                        # (1, 2, S, S) a tiny step
min_det_by_step = [jacobian_determinant(u)[0].min()]
for k in range(T):
    u = u + warp_forward(u, u)[0]                     # φ ← φ∘φ
    min_det_by_step.append(jacobian_determinant(u)[0].min())
u_exp = u
first_step = float(np.hypot(v[0, 0], v[0, 1]).max() / 2 ** T)        # px, the step of id + v/2^T
u_op, _ = integrate_velocity_forward(v, T)            # the library op: the same loop
by_hand_vs_op = float(np.abs(u_exp - u_op).max())
det_exp = jacobian_determinant(u_exp)[0]
print(f"Step 2 — the first step v/2^{T} moves a pixel by at most {first_step:.2f} px; min det J "
      f"{min_det_by_step[0]:.3f}")
print(f"  exp(v) by {T} squarings: by hand vs regnp.ops.integrate max |Δ| = "
      f"{by_hand_vs_op:.1e}; min det J after each squaring: "
      + ", ".join(f"{d:.3f}" for d in min_det_by_step))
# How many squarings? Compare with T = 12 (a step of |v|/4096 px).
u_ref, _ = integrate_velocity_forward(v, 12)
steps_range = list(range(0, 11))
conv = [float(np.abs(integrate_velocity_forward(v, t)[0] - u_ref).max()) if t else
        float(np.abs(v - u_ref).max()) for t in steps_range]
print("  max |u_T − u_12| (px) for T = 0..10: " + ", ".join(f"{e:.2g}" for e in conv))

# %%
# Step 3 — the Jacobian determinants side by side. The displacement folds on a ring where the
# swirl's rate falls off; exp(v) twists the centre by θ = 3 rad (172°) and stays one-to-one:
# det J stays near 1 (a rotation preserves area; this flow is almost divergence-free).
print(f"Step 3 — det J: displacement [{det_disp.min():.2f}, {det_disp.max():.2f}], "
      f"{100 * np.mean(det_disp <= 0):.1f} % ≤ 0;  exp(v) [{det_exp.min():.2f}, "
      f"{det_exp.max():.2f}], {100 * np.mean(det_exp <= 0):.1f} % ≤ 0")

# %%
# Step 4 — the inverse for free. exp(−v) undoes exp(v): φ⁻¹∘φ(p) = p, i.e. the displacement
# u(p) + u_inv(p + u(p)) is 0. The naive inverse of a displacement, −u, is wrong by far more.
u_inv, _ = integrate_velocity_forward(-v, T)
inside = (0, slice(None), slice(4, -4), slice(4, -4))
residual = float(np.abs((u_exp + warp_forward(u_inv, u_exp)[0])[inside]).max())
naive = float(np.abs((u_exp + warp_forward(-u_exp, u_exp)[0])[inside]).max())
print(f"Step 4 — |φ⁻¹∘φ − id| with φ⁻¹ = exp(−v): {residual:.3f} px; with the naive −u: "
      f"{naive:.2f} px")

# %%
# Step 5 — the cost in time, at the paper's 256×256, batch 2, float32. The backward goes through
# every composition (three paths per squaring: identity, the warped field, the displacement).
# Half resolution (VoxelMorph's int_downsize = 2, our default) does each squaring on 4× fewer
# pixels. Then one Meta-Reg training step with and without --integrate 7, timed alternately
# (this machine may be busy with other work; alternating slows both alike).
reps = 3 if quick else 20
rng = np.random.default_rng(0)
v256 = (4 * rng.standard_normal((2, 2, 256, 256))).astype(np.float32)
dv256 = rng.standard_normal((2, 2, 256, 256)).astype(np.float32)
img256 = rng.random((2, 1, 256, 256), dtype=np.float32)


def warp_fb():
    warp_backward(dv256[:, :1], warp_forward(img256, v256)[1])


def integrate_fb(downsize):
    def fb():
        out, cache = integrate_velocity_forward(v256, T, downsize)
        integrate_velocity_backward(dv256, cache)
    return fb


ms_warp, ms_half, _ = interleaved_ms(warp_fb, integrate_fb(2), reps)
_, ms_full, _ = interleaved_ms(warp_fb, integrate_fb(1), reps)


def training_step(integrate):
    model = build_model("metareg", seed=0, integrate=integrate)
    obj, opt = Objective(), Adam(model, lr=1e-4)

    def step():
        model.zero_grad()
        obj(model, img256, img256[::-1].copy())
        opt.step()
    return step


ms_step, ms_step_int, step_ratio = interleaved_ms(training_step(0), training_step(T), reps)
print(f"Step 5 — forward+backward, (2, 2, 256, 256), median of {reps}: one warp {ms_warp:.1f} ms; "
      f"exp(v) with {T} squarings at half resolution {ms_half:.1f} ms, at full resolution "
      f"{ms_full:.1f} ms.\n  Meta-Reg training step {ms_step:.0f} ms → {ms_step_int:.0f} ms with "
      f"--integrate {T} ({100 * (step_ratio - 1):+.0f} %, median of the per-round ratios; a "
      f"busy machine moves single steps by more than that)")

# %%
# Step 6 — training with and without integration. Meta-Reg on phantom pairs with large (σ = 16)
# deformations; --integrate 7 makes the filtered field a velocity (the 13×13 filter now smooths
# v, and λ·R regularises v). Scored on held-out pairs: Dice, % of det J > 0, min det J.
size, steps = (32, 60) if quick else (128, 1000)
lambdas = (0.04,) if quick else (0.002, 0.04)
sigma, n_eval = 16, (8 if quick else 16)
test_ds = load_dataset("phantom", "test", size=size, sigma=sigma, n_pairs=n_eval)
print(f"Step 6 — Meta-Reg, {size}×{size} phantom, σ = {sigma}, {steps} steps, "
      f"{n_eval} held-out pairs")
runs = {}
with tempfile.TemporaryDirectory() as tmp:
    for lam in lambdas:
        for integrate in (0, T):
            cfg = make_config(model="metareg", size=size, sigma=sigma, lam=lam, lr=2e-3,
                              pairs=400, integrate=integrate)
            res = train(cfg, steps, Path(tmp) / f"{lam}_{integrate}", save_every=steps,
                        val_every=0, log_every=50, progress=False)
            summ = summarize_records(evaluate_pairs(res["model"], test_ds))
            runs[lam, integrate] = (res["model"], summ)
            print(f"  λ = {lam:<6} {'--integrate 7' if integrate else 'displacement '}: Dice "
                  f"{summ['dice_before']['mean']:.1f} → {summ['dice_after']['mean']:.1f} %, "
                  f"det J > 0 on {summ['pct_positive_jacobian']['mean']:.3f} %, min det J "
                  f"{summ['min_jacobian']['mean']:.2f} (mean over pairs), "
                  f"{res['seconds']:.0f} s")
# The trade-off: integration removes (nearly) all folding; how much Dice it costs depends on λ —
# λ now regularises the velocity, and the same λ on v smooths more than on a displacement. Where
# a little folding remains, it is the *discrete* exp: the continuous flow cannot fold, but a
# weakly regularised velocity that changes on the scale of a pixel, composed by bilinear
# sampling and differentiated by finite differences, can still give det J < 0 at a few pixels
# (integrating at full resolution, --int-downsize 1, did not remove it in our runs).

# %%
# The figure: the swirl, its Jacobians, convergence and cost (top); training results (bottom).
lam_show = lambdas[0]
b = test_ds.batch([0])
dets = {k: jacobian_determinant(runs[lam_show, k][0].forward(b["fixed"], b["moving"])[1])[0]
        for k in (0, T)}
fig, ax = plt.subplots(2, 5, figsize=(21, 8.4))
step = max(2, S // 32)
for a, field, color in ((ax[0, 0], v[0], "C3"), (ax[0, 2], u_exp[0], "C0")):
    draw_deformed_grid(a, field, step, color)
    a.set_aspect("equal")
    a.set_xticks([])
    a.set_yticks([])
ax[0, 0].set_title("φ = id + v (displacement): folds")
plt.colorbar(det_map(ax[0, 1], det_disp, "det J of id + v"), ax=ax[0, 1], fraction=0.046)
ax[0, 2].set_title(f"φ = exp(v), {T} squarings")
plt.colorbar(det_map(ax[0, 3], det_exp, "det J of exp(v)"), ax=ax[0, 3], fraction=0.046)
ax[0, 4].semilogy(steps_range, conv, "o-", label="max |u_T − u_12| (px)")
ax[0, 4].axvline(T, color="gray", ls=":")
ax[0, 4].set_xlabel("squarings T")
ax[0, 4].set_title("how many squarings?")
ax[0, 4].legend(fontsize=8)
labels = ["warp", "exp, half res", "exp, full res"]
ax[1, 0].bar(labels, [ms_warp, ms_half, ms_full], color=["C7", "C0", "C1"])
ax[1, 0].set_ylabel("ms, forward + backward")
ax[1, 0].set_title(f"cost at 256×256, batch 2 (training step {100 * (step_ratio - 1):+.0f} %)")
for lam, integrate in runs:
    summ = runs[lam, integrate][1]
    ax[1, 1].scatter(100 - summ["pct_positive_jacobian"]["mean"], summ["dice_after"]["mean"],
                     marker="o" if integrate else "s", color=f"C{lambdas.index(lam)}",
                     label=f"λ = {lam}, {'exp(v)' if integrate else 'displacement'}", s=50)
ax[1, 1].set_xlabel("% of pixels with det J ≤ 0")
ax[1, 1].set_ylabel("held-out Dice (%)")
ax[1, 1].set_title("folding vs Dice")
ax[1, 1].legend(fontsize=8)
ax[1, 2].imshow(b["fixed"][0, 0], cmap="gray")
ax[1, 2].set_title("a held-out fixed image")
for a, k in ((ax[1, 3], 0), (ax[1, 4], T)):
    name = "--integrate 7" if k else "displacement"
    plt.colorbar(det_map(a, dets[k], f"λ = {lam_show}, {name}"), ax=a, fraction=0.046)
ax[1, 2].set_xticks([])
ax[1, 2].set_yticks([])
fig.suptitle("det J maps: white = 1 (area kept), red < 1 (compressed), blue > 1 (expanded), "
             "grey = folded (det J ≤ 0)", fontsize=10)
fig.tight_layout()
path = out_dir / "11_diffeomorphisms.png"
fig.savefig(path, dpi=90)
print(f"saved {path}")
show_or_close(fig)

# %%
numbers = dict(by_hand_vs_op=by_hand_vs_op, first_step_px=first_step, disp_min_det=det_disp.min(),
               disp_pct_folded=100 * np.mean(det_disp <= 0), exp_min_det=det_exp.min(),
               exp_pct_folded=100 * np.mean(det_exp <= 0), inverse_residual=residual,
               naive_inverse_residual=naive, ms_warp=ms_warp, ms_integrate_half=ms_half,
               ms_integrate_full=ms_full, step_ratio=step_ratio)
for (lam, integrate), (_, summ) in runs.items():
    key = f"{'exp' if integrate else 'disp'}_lam{lam:g}"
    numbers[f"dice_before_{key}"] = summ["dice_before"]["mean"]
    numbers[f"dice_{key}"] = summ["dice_after"]["mean"]
    numbers[f"pct_positive_{key}"] = summ["pct_positive_jacobian"]["mean"]
    numbers[f"min_det_{key}"] = summ["min_jacobian"]["mean"]
report_numbers(**numbers)
