# %% Lesson 06 — Convolution
"""Lesson 06 — Convolution: the slow loop, the fast version, and both backward passes.

A convolution layer slides a small filter over the image. Deep-learning "convolution" is really
cross-correlation (the filter is not flipped):

    out[n, o, i, j] = b[o] + sum_{c, dy, dx} w[o, c, dy, dx] · xpad[n, c, s·i + dy, s·j + dx]

Every U-Net in this project is almost nothing but these, so they must be right *and* fast.
This lesson (1) runs the slow loop version on a small picture with three hand-made filters,
(2) vectorises it in plain NumPy — im2col and one matrix product, written out, (3) shows the
library's fast version gives the same numbers, (4) derives the backward pass — dx is a
*transposed convolution* of dout with the flipped filters, dw a *correlation* of x with dout —
and checks both, and (5) times slow against fast.

Run:  python lessons/06_convolution.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""
import time

import numpy as np

from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.ops.conv import (conv2d_backward, conv2d_backward_reference, conv2d_forward,
                            conv2d_forward_reference, conv_transpose2d_forward)

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


def _picture(n=48):
    """A small test picture: a bright disc and a dimmer square on a dark background."""
    yy, xx = np.mgrid[:n, :n] / n
    img = 1.0 * ((yy - 0.35) ** 2 + (xx - 0.35) ** 2 < 0.04)
    img += 0.5 * ((np.abs(yy - 0.7) < 0.15) & (np.abs(xx - 0.7) < 0.15))
    return img


def _best_of(fn, repeats):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
rng = np.random.default_rng(0)

# %%
# Step 1 — the definition, as loops. Three 3×3 filters that each "ask a question" of every
# pixel's neighbourhood: how much brighter is the right than the left (vertical edges)?
# the bottom than the top (horizontal edges)? what is the local average (blur)?
# conv2d_forward_reference is the formula above with four nested loops over (n, o, i, j).
img = _picture(32 if quick else 48)
print(f"Step 1 — three filters on a {img.shape[0]}×{img.shape[1]} picture, slow loop version")
x = img[None, None]                                         # (1, 1, H, W)
sobel = np.array([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 4
w = np.stack([sobel, sobel.T, np.full((3, 3), 1 / 9)])[:, None]   # (3, 1, 3, 3)
y_slow, _ = conv2d_forward_reference(x, w, None, stride=1, pad=1)  # (1, 3, H, W)
for name, ch in zip(("vertical edges", "horizontal edges", "blur"), y_slow[0]):
    print(f"  {name:17s} min {ch.min():+.3f}  max {ch.max():+.3f}")

# %%
# Step 2 — vectorised NumPy: im2col and one matrix product. The loop does one small dot
# product per output pixel. Gather instead, for every output pixel, the C·k·k input values its
# filter reads into one column ("image to columns"); then all output pixels of all filters
# are a single matrix product (Cout, C·k·k) @ (C·k·k, pixels). Memory grows k² times (each
# input value is copied into up to k² columns), but the arithmetic is one big BLAS call.
def im2col(x, k, stride, pad):
    """(N, C, H, W) → columns (N, C·k·k, Ho·Wo): column p holds the k×k patch output p reads."""
    N, C, H, W = x.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    cols = np.empty((N, C, k, k, Ho, Wo), x.dtype)
    for dy in range(k):                                     # k² strided slices, not H·W loops
        for dx in range(k):
            cols[:, :, dy, dx] = xpad[:, :, dy:dy + stride * Ho:stride, dx:dx + stride * Wo:stride]
    return cols.reshape(N, C * k * k, Ho * Wo), (Ho, Wo)


def conv2d_im2col(x, w, b, stride, pad):
    Co, C, k, _ = w.shape
    cols, (Ho, Wo) = im2col(x, k, stride, pad)             # (N, C·k·k, Ho·Wo)
    out = w.reshape(Co, C * k * k) @ cols                   # (N, Co, Ho·Wo): one matmul per image
    if b is not None:
        out += b[:, None]
    return out.reshape(x.shape[0], Co, Ho, Wo)


print("Step 2 — im2col + matmul vs the loop")
xs = rng.standard_normal((2, 3, 11, 9))                     # odd sizes, batch 2, stride 2
ws = rng.standard_normal((4, 3, 3, 3))
bs = rng.standard_normal(4)
y_cols = conv2d_im2col(x, w, None, 1, 1)
im2col_diff = max(np.abs(y_cols - y_slow).max(),
                  np.abs(conv2d_im2col(xs, ws, bs, 2, 1)
                         - conv2d_forward_reference(xs, ws, bs, 2, 1)[0]).max())
print(f"  by hand (im2col) vs library loop (conv2d_forward_reference): max abs diff "
      f"{im2col_diff:.2e}  (the picture, and an 11×9 batch at stride 2)")

# %%
# Step 3 — the fast path. regnp's conv2d_forward goes one step further than im2col: (in
# float64, and for any kernel size) it treats each of the k² taps as one matrix product over
# *all* pixels at once, (Cout, Cin) @ (Cin, pixels), where the pixel matrix is the zero-padded
# input read at a shifted offset — im2col's columns, one tap at a time, without building the
# k²-times-larger matrix (see the comments in regnp/ops/conv.py). Same numbers, up to float
# rounding:
print("Step 3 — fast vs slow forward")
y_fast, _ = conv2d_forward(x, w, None, stride=1, pad=1)
fwd_diff = np.abs(y_fast - y_slow).max()
print(f"  max |fast - slow| = {fwd_diff:.2e}")
d2 = np.abs(conv2d_forward(xs, ws, None, 2, 1)[0] - conv2d_forward_reference(xs, ws, None, 2, 1)[0])
print(f"  stride 2, 11×9 input: max |fast - slow| = {d2.max():.2e}")

# %%
# Step 4 — the backward pass. Write L for the loss and g = dL/dout.
# * dw: out[o,i,j] contains w[o,c,dy,dx]·xpad[c, i+dy, j+dx], so
#       dL/dw[o,c,dy,dx] = sum_{n,i,j} g[n,o,i,j] · xpad[n,c,i+dy,j+dx]
#   — the input correlated with g (the filter that "would have matched" g best).
# * dx: input pixel (c, p) was read by every output pixel within the filter's reach, each
#   time with weight w[o, c, p - i]. Summing those: dx = g convolved with the *flipped*
#   filters, with input and output channels swapped — a "transposed convolution". For
#   stride 1 that is literally conv2d(g, flip(w)ᵀ); in general it is the adjoint of conv2d.
print("Step 4 — backward: dx and dw, three ways")
N, C, Co, H, W = 2, 3, 4, 9, 8
xb = rng.standard_normal((N, C, H, W))
wb = rng.standard_normal((Co, C, 3, 3))
yb, cache = conv2d_forward(xb, wb, None, 1, 1)
g = rng.standard_normal(yb.shape)                           # (N, Co, H, W) upstream grad
dx, dw, _ = conv2d_backward(g, cache)
dx_ref, dw_ref, _ = conv2d_backward_reference(g, conv2d_forward_reference(xb, wb, None, 1, 1)[1])
bwd_diff = max(np.abs(dx - dx_ref).max(), np.abs(dw - dw_ref).max())
print(f"  fast vs loop reference: max |dx diff| = {np.abs(dx - dx_ref).max():.2e}, "
      f"max |dw diff| = {np.abs(dw - dw_ref).max():.2e}")
w_flipped = np.ascontiguousarray(wb[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, Co, 3, 3)
dx_conv = conv2d_forward(g, w_flipped, None, 1, 1)[0]
dx_ct = conv_transpose2d_forward(g, wb, None, stride=1, pad=1)[0]
print(f"  dx = conv2d(g, flipped & transposed w):  max diff {np.abs(dx - dx_conv).max():.2e}")
print(f"  dx = conv_transpose2d(g, w):             max diff {np.abs(dx - dx_ct).max():.2e}")
xpad = np.pad(xb, ((0, 0), (0, 0), (1, 1), (1, 1)))
dw_corr = np.zeros_like(wb)
for dy in range(3):
    for dxx in range(3):                                    # correlate x (shifted) with g
        dw_corr[:, :, dy, dxx] = np.einsum("noij,ncij->oc", g, xpad[:, :, dy:dy + H, dxx:dxx + W])
print(f"  dw = correlation of x with g:            max diff {np.abs(dw - dw_corr).max():.2e}")

# %%
# Step 5 — how much faster? A moderate layer, float32, forward and forward+backward.
# The loop version does one small NumPy call per output pixel. A float32 3×3 pad-1 layer —
# the U-Net's own kind — does not even take the 9 matrix products of Step 3: it runs the
# direct Numba kernels of regnp/ops/_fast/direct3x3.py (each parallel job copies the few padded
# input rows it needs into a small tile and accumulates 4 output channels at once along each
# row, in registers), checked against the same loop reference.
N, C, Co, S = (2, 4, 4, 24) if quick else (2, 8, 8, 48)
print(f"Step 5 — timing: batch {N}, {C}->{Co} channels, {S}×{S}, 3×3")
xt = rng.standard_normal((N, C, S, S)).astype(np.float32)
wt = rng.standard_normal((Co, C, 3, 3)).astype(np.float32)
bt = np.zeros(Co, np.float32)
dt = rng.standard_normal((N, Co, S, S)).astype(np.float32)
conv2d_backward(dt, conv2d_forward(xt, wt, bt)[1])        # warm-up (Numba compiles once)
times = {
    "slow forward": _best_of(lambda: conv2d_forward_reference(xt, wt, bt), 1),
    "im2col forward": _best_of(lambda: conv2d_im2col(xt, wt, bt, 1, 1), 5),
    "fast forward": _best_of(lambda: conv2d_forward(xt, wt, bt), 5),
    "slow fwd+bwd": _best_of(lambda: conv2d_backward_reference(
        dt, conv2d_forward_reference(xt, wt, bt)[1]), 1),
    "fast fwd+bwd": _best_of(lambda: conv2d_backward(dt, conv2d_forward(xt, wt, bt)[1]), 5),
}
for k, v in times.items():
    print(f"  {k:14s} {1e3 * v:9.2f} ms")
print(f"  speed-up: forward ×{times['slow forward'] / times['im2col forward']:.0f} (im2col), "
      f"×{times['slow forward'] / times['fast forward']:.0f} (fast), "
      f"forward+backward ×{times['slow fwd+bwd'] / times['fast fwd+bwd']:.0f}")
# Timings of a layer this small (and on a busy machine) say little about the U-Net's 256×256
# layers, where im2col's k²-times-larger column matrix makes it memory-bound; there the fast
# path's direct kernels win. python -m regnp.bench measures the whole network.
print("  (the whole U-Net's convolutions: python -m regnp.bench)")

# Figure: the picture, the filters, their outputs, and the timings.
fig = plt.figure(figsize=(12, 5.5))
ax = fig.add_subplot(2, 5, 1)
ax.imshow(img, cmap="gray")
ax.set_title("input")
names = ("vertical edges", "horizontal edges", "blur")
for k in range(3):
    ax = fig.add_subplot(2, 5, 2 + k)
    ax.imshow(w[k, 0], cmap="RdBu_r", vmin=-0.5, vmax=0.5)
    ax.set_title(f"filter: {names[k]}", fontsize=9)
    for (i, j), v in np.ndenumerate(w[k, 0]):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax = fig.add_subplot(2, 5, 7 + k)
    ax.imshow(y_fast[0, k], cmap="RdBu_r" if k < 2 else "gray")
    ax.set_title(f"output: {names[k]}", fontsize=9)
for a in fig.axes:
    a.set_xticks([])
    a.set_yticks([])
ax = fig.add_subplot(1, 5, 5)
ax.bar(range(len(times)), [1e3 * v for v in times.values()], color=["C3", "C1", "C2", "C3", "C2"])
ax.set_xticks(range(len(times)), list(times), rotation=45, ha="right", fontsize=8)
ax.set_yscale("log")
ax.set_ylabel("ms (log scale)")
ax.set_title(f"{C}->{Co}, {S}×{S}, batch {N}", fontsize=9)
fig.tight_layout()
path = out_dir / "06_convolution.png"
fig.savefig(path, dpi=110)
show_or_close(fig)
print(f"saved {path}")
report_numbers(im2col_vs_loop=im2col_diff, forward_vs_loop=max(fwd_diff, d2.max()),
               backward_vs_loop=bwd_diff,
               dx_as_conv=np.abs(dx - dx_conv).max(),
               dx_as_conv_transpose=np.abs(dx - dx_ct).max(),
               dw_as_correlation=np.abs(dw - dw_corr).max(),
               speedup_forward=times["slow forward"] / times["fast forward"])
