# %% Lesson 05 — Classical RKHS registration
"""Lesson 05 — Classical RKHS registration: solving eq. 6 for one pair with L-BFGS.

Before any network, the paper's starting point (eq. 6) is an optimisation problem per pair:

    α* = argmin_α  S(F, M ∘ K α) + λ R,

with u = K α the displacement written in the RKHS of a kernel k (lesson 04). Here we solve it
directly: α has one number per pixel and channel (2 × 65,536 unknowns at 256×256), the gradient
is written out by hand, and SciPy's L-BFGS does the rest. The gradient needs exactly one product
with K per evaluation (besides the forward u = K α), because K is symmetric:

    ∂f/∂α = Kᵀ ∂f/∂u = K (dS/du + λ dR/du).

Steps: (1) one phantom pair with a σ = 10 synthetic deformation; (2) the objective and its
gradient written out by hand, then checked against central differences; (3) solve with the
default settings and watch objective and Dice; (4) compare other regularisers, kernels and
similarities; (5) look at the result.

Run:  python lessons/05_classical_rkhs_registration.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""
import time

import numpy as np

from regnp.data.datasets import load_dataset
from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.gradcheck import check_vjp
from regnp.metrics import dice, folding_stats, jacobian_determinant
from regnp.ops.warp import warp_backward, warp_forward, warp_nearest
from regnp.rkhs.gram import gram_matrix, make_gram
from regnp.rkhs.kernels import Gaussian
from regnp.rkhs.solver import RKHSObjective, register_rkhs, upsample_field

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
size = 128 if quick else 256

# %%
# Step 1 — one pair. The phantom set's test pairs are a base image F and M = F ∘ (id + v)
# for a random Gaussian-mixture field v with RMS displacement σ = 10 px over the body (at
# 256×256; scaled with the image size). Dice is over liver and spleen.
print(f"Step 1 — a phantom pair, σ = 10, {size}×{size}")
ds = load_dataset("phantom", "test", size=size, sigma=10, n_pairs=3)
b = ds.batch([0])
F, M = b["fixed"], b["moving"]                                       # (1, 1, H, W) float32
labels = ds.eval_labels


def pair_dice(u, batch=b):
    return dice(batch["fixed_mask"][0, 0], warp_nearest(batch["moving_mask"], u)[0, 0],
                labels)["mean"]


d_before = pair_dice(np.zeros((1, 2, size, size), np.float32))
print(f"  Dice before registration: {d_before:.3f}")

# %%
# Step 2a — f(α) and ∂f/∂α written out, on a 16×16 crop in float64 (P = 256 pixels), with the
# dense K of lesson 04 and a scale c (u = c K α; the solver picks c to give K unit DC gain):
#     u = c K α                          (each channel: a matrix-vector product)
#     S = mean((M∘(id + u) − F)²)        dS/dwarped = 2 (warped − F) / #entries
#     dS/du                              lesson 01's warp backward
#     R = αᵀ u / P = c αᵀ K α / P        dR/dα = 2 c K α / P = 2 u / P   (K is symmetric)
#     ∂f/∂α = c Kᵀ dS/du + λ · 2u / P    (the chain rule through u = c K α: one product with K)
# RKHSObjective is exactly what L-BFGS sees: f(α) and ∂f/∂α as flat float64 vectors.
print("Step 2a — the objective and its gradient by hand (float64, 16×16 crop)")
crop = (slice(None), slice(None), slice(size // 2 - 8, size // 2 + 8),
        slice(size // 2 - 8, size // 2 + 8))
Fc, Mc = F[crop].astype(np.float64), M[crop].astype(np.float64)
c, lam, P = 0.05, 0.01, 16 * 16
K = gram_matrix(Gaussian(2.0), (16, 16))                             # (P, P)
rng = np.random.default_rng(0)
x = rng.standard_normal(2 * P)                                       # α, flat, as L-BFGS has it
alpha = x.reshape(2, P)                                              # (channel, pixel)
u = c * (alpha @ K.T).reshape(1, 2, 16, 16)                          # u_ch = c K α_ch
warped, wcache = warp_forward(Mc, u)
S = np.mean((warped - Fc) ** 2)
_, dS_du = warp_backward(2 * (warped - Fc) / warped.size, wcache)    # (1, 2, 16, 16)
R = np.sum(alpha * u.reshape(2, P)) / P
f_hand = S + lam * R
g_hand = c * dS_du.reshape(2, P) @ K + lam * 2 * u.reshape(2, P) / P  # rows: c Kᵀ dS/du_ch + …
f_lib, g_lib = RKHSObjective(Fc, Mc, make_gram(Gaussian(2.0), (16, 16)), scale=c, lam=lam,
                             regularizer="rkhs")(x)
grad_by_hand = float(np.abs(g_hand.ravel() - g_lib).max() / np.abs(g_lib).max())
print(f"  by hand vs regnp.rkhs.solver.RKHSObjective: |Δf| = {abs(f_hand - f_lib):.1e}, "
      f"max |Δ∂f/∂α| / max |∂f/∂α| = {grad_by_hand:.1e}")

# %%
# Step 2b — is the gradient right? Compare ∂f/∂α with central differences along 40 random
# coordinates (the warp has kinks at integer displacements, so α is random: u is almost
# surely non-integer), for R = the RKHS norm above and R = diffusion (the mean squared
# forward differences of u: a smoothness penalty on u itself, no K). Step h = 1e-5, the
# smooth optimum of lesson 02 rather than the library's 1e-6: some entries of ∂f/∂α are 1e-7
# of f, and at h = 1e-6 round-off alone (~1e-11 absolute) would read as a relative error of
# 1e-5 there.
print("Step 2b — gradient check of the objective (float64, 16×16 crop)")
grad_errs = {}
for reg in ("rkhs", "diffusion"):
    obj = RKHSObjective(Fc, Mc, make_gram(Gaussian(2.0), (16, 16)), scale=0.05, lam=0.01,
                        regularizer=reg)
    x = rng.standard_normal(2 * 16 * 16)
    _, g = obj(x)
    err = check_vjp(lambda: np.array(obj(x)[0]), x, g, np.array(1.0), max_entries=40,
                    h=1e-5)
    grad_errs[reg] = err
    print(f"  R = {reg:<9}: max relative error {err:.1e}")

# %%
# Step 3 — solve. Defaults: Gaussian kernel 16 px wide (at 256×256), K scaled to unit DC
# gain, λ = 1e-4 on the RKHS norm (1/P) αᵀKα, MSE similarity, a 3-level pyramid (64² → 128²
# → 256² at full size; each finer level adds a new K α to the upsampled field of the coarser
# one). The callback records Dice after every iteration (coarse fields upsampled to full
# size), to see how fast the answer settles. (The Dice bookkeeping costs time too, so the
# "seconds" here are a little pessimistic.)
print("Step 3 — L-BFGS on eq. 6 (Gaussian kernel, exact Kronecker K·α, float32)")
width = 16.0 * size / 256
trace = []
t0 = time.perf_counter()


def record(level, it, u, f):                                         # u: this level's grid
    u_full = u if level == 0 else upsample_field(u, (size, size)).astype(np.float32)
    trace.append((time.perf_counter() - t0, level, f, pair_dice(u_full)))


res = register_rkhs(F, M, width=width, callback=record)
d_after = pair_dice(res.u)
fold = folding_stats(res.u)
# the first time after which Dice stays within 1 point of its final value
t_within = next(trace[i][0] for i in range(len(trace))
                if all(d >= d_after - 0.01 for *_, d in trace[i:]))
print(f"  {res.seconds:.1f} s, {res.n_evals} evaluations; " + "; ".join(res.messages))
print(f"  Dice {d_before:.3f} → {d_after:.3f} (closes {(d_after - d_before) / (1 - d_before):.0%} "
      f"of the gap); within 1 Dice point of the final value (and staying there) after "
      f"{t_within:.1f} s")
print(f"  det J > 0 on {float(fold['pct_positive'][0]):.2f} % of pixels, min det "
      f"{float(fold['min_det'][0]):.2f}")

# %%
# Step 4 — other choices on the same pair: the diffusion penalty on K α instead of the RKHS
# norm, a non-separable kernel through the FFT (lesson 04), NCC (normalised cross-correlation,
# blind to an intensity scale and offset) instead of MSE. Quick mode runs fewer. (Without the
# pyramid, levels=1, the same pair needs about ten times longer and stops at a lower Dice: the
# fine level alone sees only the local image gradient, the coarse levels move the organs
# first.) Lesson 09 asks what is lost when K becomes the paper's 13×13 convolution (eq. 10).
print("Step 4 — variants on the same pair")
variants = [("exact K (Kronecker)", dict())]
if not quick:                              # (the diffusion variant alone takes ~1 min)
    variants += [("diffusion R, λ=1e-2", dict(regularizer="diffusion", lam=1e-2)),
                 ("Matérn-3/2 (FFT)", dict(kernel="matern32", width=width / 2)),
                 ("NCC similarity", dict(similarity="ncc", lam=1e-3))]
rows = []
for name, kw in variants:
    kw = {"width": width, **kw}
    r = res if not kw.keys() - {"width"} else register_rkhs(F, M, **kw)
    fs = folding_stats(r.u)
    rows.append((name, pair_dice(r.u), r.seconds, float(fs["pct_positive"][0]),
                 float(fs["min_det"][0])))
    print(f"  {name:<22} Dice {rows[-1][1]:.3f}   {r.seconds:5.1f} s   det>0 {rows[-1][3]:6.2f} %"
          f"   min det {rows[-1][4]:5.2f}")
if not quick:
    print("  more pairs (defaults): ", end="")
    for i in (1, 2):
        bi = ds.batch([i])
        ri = register_rkhs(bi["fixed"], bi["moving"], width=width)
        print(f"pair {i}: {pair_dice(np.zeros_like(ri.u), bi):.3f} → {pair_dice(ri.u, bi):.3f} "
              f"in {ri.seconds:.1f} s; ", end="")
    print()

# Figure 1: the objective per level and Dice against time.
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
for lev in sorted({e["level"] for e in res.log}, reverse=True):
    ent = [e for e in res.log if e["level"] == lev]
    ax[0].semilogy([e["seconds"] for e in ent], [e["objective"] for e in ent], ".-",
                   label=f"level {lev} ({ent[0]['shape'][0]}²)")
ax[0].set_xlabel("seconds")
ax[0].set_ylabel("objective S + λR")
ax[0].set_title("L-BFGS on eq. 6: monotone on every level")
ax[0].legend()
for lev in sorted({lv for _, lv, _, _ in trace}, reverse=True):
    pts = [(t, d) for t, lv, _, d in trace if lv == lev]
    ax[1].plot([t for t, _ in pts], [d for _, d in pts], ".-", label=f"level {lev}")
ax[1].axhline(d_before, color="gray", ls=":", label="before")
ax[1].axhline(d_after - 0.01, color="k", ls="--", lw=0.8, label="final − 1 point")
ax[1].set_xlabel("seconds")
ax[1].set_ylabel("Dice (liver, spleen)")
ax[1].set_title("Dice during the solve (coarse levels upsampled)")
ax[1].legend()
fig.tight_layout()
path = out_dir / "05_rkhs_objective.png"
fig.savefig(path, dpi=100)
show_or_close(fig)
print(f"saved {path}")

# Figure 2: the result.
det = jacobian_determinant(res.u)[0]
fig, ax = plt.subplots(2, 3, figsize=(12, 8))
ax[0, 0].imshow(F[0, 0], cmap="gray")
ax[0, 0].set_title("fixed F")
ax[0, 1].imshow(M[0, 0], cmap="gray")
ax[0, 1].set_title("moving M")
ax[0, 2].imshow(res.warped[0, 0], cmap="gray")
ax[0, 2].set_title(f"warped M ∘ (id + K α), Dice {d_after:.3f}")
ax[1, 0].imshow(np.abs(M - F)[0, 0], cmap="magma", vmin=0, vmax=0.5)
ax[1, 0].set_title(f"|M − F| (Dice {d_before:.3f})")
ax[1, 1].imshow(np.abs(res.warped - F)[0, 0], cmap="magma", vmin=0, vmax=0.5)
ax[1, 1].set_title("|warped − F|")
step = max(1, size // 32)
yy, xx = np.mgrid[0:size:step, 0:size:step]
ax[1, 2].imshow(det, cmap="RdBu", vmin=0, vmax=2)
ax[1, 2].quiver(xx, yy, res.u[0, 1, ::step, ::step], res.u[0, 0, ::step, ::step],
                angles="xy", scale_units="xy", scale=1, width=0.003)
ax[1, 2].set_title("u (arrows, pixels) on det J (colour)")
for a_ in ax.ravel():
    a_.set_xticks([])
    a_.set_yticks([])
fig.tight_layout()
path2 = out_dir / "05_rkhs_result.png"
fig.savefig(path2, dpi=80)
show_or_close(fig)
print(f"saved {path2}")
report_numbers(gradient_by_hand_vs_library=grad_by_hand,
               objective_by_hand_vs_library=abs(f_hand - f_lib),
               gradcheck_rkhs=grad_errs["rkhs"], gradcheck_diffusion=grad_errs["diffusion"],
               dice_before=d_before, dice_after=d_after, seconds=res.seconds,
               pct_positive_jacobian=fold["pct_positive"][0])
