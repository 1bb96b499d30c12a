# %% Lesson 01 — Bilinear warping
"""Lesson 01 — Bilinear warping: the spatial transformer and its two gradients.

The rule of these lessons: read them in order, 01 to 11 — each one uses only what this lesson or
an earlier one has taught, along the paper's own arc (the field and its warp → how we check
gradients → what σ means → the RKHS side classically → the network → from Gram to convolution →
meta-regularization → beyond the paper).

Every learning-based registration network ends in the same layer: given a moving image ``M``
and a displacement field ``u`` it produces ``M ∘ (id + u)``, the moving image resampled at the
displaced points. Training needs the derivative of that resampled image with respect to both
``M`` (rarely used, but cheap) and ``u`` (the signal that teaches the network where to move).

The convention used throughout regnp::

    warped[n, c, i, j] = moving[n, c, i + u[n, 0, i, j], j + u[n, 1, i, j]]

``u`` is in pixels; channel 0 moves along rows (y), channel 1 along columns (x). Each output
pixel *pulls* its value from a point of the moving image ("pull-back" or "backward" warping),
so there are no holes in the output. The point is rarely on the grid, so we interpolate
bilinearly from its four neighbours, and a neighbour outside the image counts as zero.

This lesson builds that layer by hand on a tiny image, then derives its two gradients, and
ends with the one thing to remember when checking them: bilinear interpolation has kinks at
integer displacements.

Run:  python lessons/01_bilinear_warp.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""
import time

import numpy as np

from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.ops.warp import (warp_backward, warp_backward_reference, warp_forward,
                            warp_forward_reference, warp_nearest)

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


def bilinear_by_hand(m, y, x):
    """Sample a 2-D image at (y, x): four neighbours, four weights, zero outside."""
    H, W = m.shape
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    wy, wx = y - y0, x - x0
    total = 0.0
    parts = []
    for dy, dx, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                      (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yy, xx = y0 + dy, x0 + dx
        inside = 0 <= yy < H and 0 <= xx < W
        val = m[yy, xx] if inside else 0.0
        parts.append((yy, xx, w, val, inside))
        total += w * val
    return total, parts


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
np.set_printoptions(precision=3, suppress=True)

# %%
# Step 1 — A tiny moving image.
# A 5×6 image whose value tells you where it came from: 10·row + column.
H, W = 5, 6
moving = (10.0 * np.arange(H)[:, None] + np.arange(W)[None, :])      # (H, W)
print("Step 1 — the moving image (value = 10*row + col):\n", moving)

# %%
# Step 2 — One output pixel, by hand.
# Output pixel (i, j) = (2, 1) with u = (0.25, 1.5) samples M at (2.25, 2.5).
# Its neighbours are rows 2..3 and columns 2..3; the weights are products of the fractional
# distances and always sum to 1.
i, j, uy, ux = 2, 1, 0.25, 1.5
val, parts = bilinear_by_hand(moving, i + uy, j + ux)
print(f"\nStep 2 — pixel ({i},{j}) with u=({uy},{ux}) samples M at ({i + uy}, {j + ux})")
for yy, xx, w, v, inside in parts:
    print(f"   neighbour ({yy},{xx})  weight {w:.4f}  value {v:5.1f}  inside={inside}")
u = np.zeros((1, 2, H, W)); u[0, 0, i, j] = uy; u[0, 1, i, j] = ux
warped, _ = warp_forward(moving[None, None], u)
warped_pixel = warped[0, 0, i, j]
print(f"   by hand: {val:.4f}   warp_forward: {warped_pixel:.4f}"
      "   (a linear image is reproduced exactly: 10*2.25 + 2.5 = 25)")

# %%
# Step 3 — The zero-outside rule.
# Half a pixel left of column 0 the two left neighbours are outside and count as 0, so we get
# half the border value; a full pixel outside gives 0. This is zero padding, and it is what
# makes content that moves in from outside the image black.
for x in (-0.5, -1.0, W - 0.5):
    v, _ = bilinear_by_hand(moving, 1.0, x)
    print(f"Step 3 — sample at (1, {x:4.1f}) -> {v:5.2f}")

# %%
# Step 4 — An integer shift: u_x = +3 everywhere.
# Pulling from j + 3 moves the *content* 3 pixels to the LEFT; the last 3 columns pull from
# outside the image and become 0.
u = np.zeros((1, 2, H, W)); u[:, 1] = 3.0
shifted, _ = warp_forward(moving[None, None], u)
print("\nStep 4 — u_x = +3: warped[:, j] = moving[:, j+3]\n", shifted[0, 0])

# %%
# Step 5 — A sub-pixel shift: u_x = +0.5 averages horizontal neighbours.
u[:, 1] = 0.5
half, _ = warp_forward(moving[None, None], u)
print("Step 5 — u_x = +0.5 (averages of neighbours; last column half of the border value)\n",
      half[0, 0])

# %%
# Step 6 — The slow loop version and the fast Numba kernel agree.
rng = np.random.default_rng(0)
n = 64 if quick else 256
yy, xx = np.mgrid[0:n, 0:n] / n
img = (0.5 + 0.5 * np.sin(12 * xx) * np.cos(9 * yy)) * ((xx - .5) ** 2 + (yy - .5) ** 2 < .16)
img = img[None, None].astype(np.float64)                             # (1, 1, n, n)
# a smooth swirl: displacement perpendicular to the radius, largest mid-way out
r2 = (xx - .5) ** 2 + (yy - .5) ** 2
amp = 0.08 * n * np.exp(-r2 / 0.05)
field = np.stack([amp * (xx - .5), -amp * (yy - .5)])[None] * 4      # (1, 2, n, n)
small = (slice(None), slice(None), slice(0, 24), slice(0, 24))
ref = warp_forward_reference(img[small], field[small])
fast, _ = warp_forward(img[small], field[small])
ref_vs_fast = np.abs(ref - fast).max()
print(f"\nStep 6 — reference vs Numba on 24x24: max |diff| = {ref_vs_fast:.2e}")
img32, field32 = img.astype(np.float32), field.astype(np.float32)
w_, c_ = warp_forward(img32, field32)                                 # compile / warm up
warp_backward(np.ones_like(w_), c_)
reps = 5 if quick else 50
t0 = time.perf_counter()
for _ in range(reps):
    swirled, cache = warp_forward(img32, field32)
    warp_backward(np.ones_like(swirled), cache)
print(f"   forward+backward on {n}x{n} float32: {(time.perf_counter() - t0) / reps * 1e3:.2f} ms")

# %%
# Step 7 — Gradient with respect to the moving image: a scatter.
# warped is linear in M, so dL/dM is the transpose: each dL/dwarped value is spread back
# onto the four neighbours it was read from, with the same weights.
u = np.zeros((1, 2, H, W)); u[0, 0, i, j] = uy; u[0, 1, i, j] = ux
_, cache = warp_forward(moving[None, None], u)
d = np.zeros((1, 1, H, W)); d[0, 0, i, j] = 1.0                       # only pixel (2, 1)
dM, du = warp_backward(d, cache)
print("\nStep 7 — dL/dM for dL/dwarped = 1 at pixel (2,1): the four weights of step 2\n",
      dM[0, 0])

# %%
# Step 8 — Gradient with respect to u: the image gradient at the sampled point.
# With the neighbours fixed, warped is linear in the fractional parts (wy, wx), so
# d warped / d u_y = (1-wx)(M[y0+1,x0] - M[y0,x0]) + wx (M[y0+1,x0+1] - M[y0,x0+1]):
# a finite-difference image gradient, interpolated along the other axis. For our linear
# image that is exactly (10, 1).
print(f"Step 8 — dL/du at (2,1) = ({du[0, 0, i, j]:.3f}, {du[0, 1, i, j]:.3f})"
      "  (the image's slope along rows and columns)")
m_r = rng.standard_normal((2, 1, 5, 6))
u_r = rng.uniform(-2, 2, (2, 2, 5, 6)) + 0.013                       # keep away from integers
dout = rng.standard_normal(m_r.shape)
_, c = warp_forward(m_r, u_r)
g_m, g_u = warp_backward(dout, c)
rm, ru = warp_backward_reference(dout, m_r, u_r)
# Are they right? The backward claims dL/dx for the scalar L = <dout, warped>. Nudge one entry
# of x by ±h and watch L: (L(x + h) − L(x − h)) / 2h is that entry's derivative, up to O(h²).
# Lesson 02 turns these two lines into the tool every later lesson uses, and explains h.
def central_difference_error(x, analytic, L, h=1e-5):
    """Max relative error |a − n| / max(1e-8, |a| + |n|) of the analytic gradient a against
    n = (L(x + h e_k) − L(x − h e_k)) / 2h, over every entry k of x."""
    worst = 0.0
    for k in np.ndindex(x.shape):
        e = np.zeros_like(x); e[k] = h
        numeric = (L(x + e) - L(x - e)) / (2 * h)                   # the two lines
        worst = max(worst, abs(numeric - analytic[k]) / max(1e-8, abs(numeric) + abs(analytic[k])))
    return worst


fd_moving = central_difference_error(m_r, g_m, lambda m: np.sum(dout * warp_forward(m, u_r)[0]))
fd_u = central_difference_error(u_r, g_u, lambda uu: np.sum(dout * warp_forward(m_r, uu)[0]))
grad_vs_ref = max(np.abs(g_m - rm).max(), np.abs(g_u - ru).max())
print(f"   central differences (float64, every entry): max relative error moving "
      f"{fd_moving:.1e}, u {fd_u:.1e};  vs loop reference {grad_vs_ref:.1e}")

# %%
# Step 9 — Kinks at integer displacements.
# Sweep u_x at one pixel from -2 to 2. Between integers the four neighbours stay the same and
# the warped value is linear in u_x; crossing an integer swaps in new neighbours, so the
# slope (the image's local difference) jumps. A central-difference check straddling an
# integer averages two slopes and disagrees with either one — so gradient checks use
# non-integer displacements, and the backward pass takes the right-hand slope at integers.
row = np.array([[0.0, 2.0, 3.0, 7.0, 4.0, 4.0, 1.0]])                 # (1, 7)
j0 = 3
sweep = np.linspace(-2, 2, 81 if quick else 401)
values, slopes = [], []
for s in sweep:
    uu = np.zeros((1, 2, 1, 7)); uu[0, 1, 0, j0] = s
    w_, c_ = warp_forward(row[None, None], uu)
    dd = np.zeros((1, 1, 1, 7)); dd[0, 0, 0, j0] = 1.0
    values.append(w_[0, 0, 0, j0])
    slopes.append(warp_backward(dd, c_)[1][0, 1, 0, j0])
print("\nStep 9 — slope of warped(u_x) on each unit interval:",
      [float(row[0, j0 + k + 1] - row[0, j0 + k]) for k in range(-2, 2)])

# %%
# Step 10 — Labels are warped with nearest neighbour (for Dice), not bilinear.
labels = (img[0, 0] > 0.6).astype(np.int32)[None, None]
warped_labels = warp_nearest(labels, field)
print(f"Step 10 — nearest-neighbour label warp keeps integer labels: "
      f"{np.unique(warped_labels).tolist()}")

# Figures.
fig, ax = plt.subplots(1, 4, figsize=(13, 3.4))
ax[0].imshow(img[0, 0], cmap="gray"); ax[0].set_title("moving M")
ax[1].imshow(warp_forward(img, np.concatenate([np.zeros_like(field[:, :1]),
                                               np.full_like(field[:, :1], n / 8)], 1))[0][0, 0],
             cmap="gray"); ax[1].set_title(f"u_x = +{n // 8}: content moves left")
ax[2].imshow(swirled[0, 0], cmap="gray"); ax[2].set_title("M ∘ (id + u), swirl")
step = max(n // 16, 1)
# arrows point from each output pixel to the point it pulls from (data coordinates, rows down)
ax[2].quiver(np.arange(0, n, step), np.arange(0, n, step), field[0, 1, ::step, ::step],
             field[0, 0, ::step, ::step], color="tab:red", angles="xy", scale_units="xy", scale=1)
ax[2].set_xlim(-0.5, n - 0.5)                  # keep the image frame (quiver autoscales)
ax[2].set_ylim(n - 0.5, -0.5)
ax[3].imshow(warped_labels[0, 0], cmap="viridis"); ax[3].set_title("labels, nearest warp")
for a in ax:
    a.set_xticks([]); a.set_yticks([])
fig.tight_layout()
fig.savefig(out_dir / "01_bilinear_warp.png", dpi=90, bbox_inches="tight")
show_or_close(fig)

fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
ax[0].plot(sweep, values); ax[0].set_xlabel("u_x at one pixel"); ax[0].set_ylabel("warped value")
ax[0].set_title("piecewise linear in u_x")
ax[1].plot(sweep, slopes, drawstyle="steps-post", color="tab:orange")
ax[1].set_xlabel("u_x"); ax[1].set_ylabel("d warped / d u_x (backward)")
ax[1].set_title("derivative jumps at integers")
for a in ax:
    for k in range(-2, 3):
        a.axvline(k, color="0.85", lw=0.8, zorder=0)
fig.tight_layout()
fig.savefig(out_dir / "01_bilinear_warp_kinks.png", dpi=90, bbox_inches="tight")
show_or_close(fig)
print(f"\nSaved {out_dir / '01_bilinear_warp.png'} and {out_dir / '01_bilinear_warp_kinks.png'}")
report_numbers(by_hand_vs_warp=abs(val - warped_pixel), reference_vs_fast=ref_vs_fast,
               gradcheck_moving=fd_moving, gradcheck_u=fd_u, gradient_vs_reference=grad_vs_ref,
               du_y=du[0, 0, i, j], du_x=du[0, 1, i, j])
