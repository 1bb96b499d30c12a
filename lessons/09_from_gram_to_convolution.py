# %% Lesson 09 — From the Gram matrix to a 13×13 convolution (paper eq. 9–10), and what it keeps.
"""Lesson 09 — From the Gram matrix to a 13×13 convolution (paper eq. 9–10), and what it keeps.

Section 4.2 of the paper replaces the huge product K α by a small convolution: take the reduced
matrix K̃ — the middle column of every block in the middle row of blocks of K (eq. 9) — cut it
to 13×13 and convolve (eq. 10). The paper then claims K̃ is rank 1, PSD, radially symmetric and
has non-negative trace, and builds its meta-regularization penalty (eq. 12) on those properties.

This lesson checks each step with numbers:

1. K̃ cut from the dense K *is* the kernel's stencil around the centre pixel;
2. which claimed properties hold for which kernels (rank 1 only for separable ones);
3. how large the error of the 13×13 convolution is, as a function of the kernel width;
4. "PSD as a 13×13 matrix" (the paper's condition) versus "PSD as a convolution operator"
   (what makes αᵀ(K̃ * α) ≥ 0): they are different, and a truncated Gaussian has the first but
   not the second.

Run:  python lessons/09_from_gram_to_convolution.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""

import numpy as np

from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.rkhs.gram import gram_matrix, ConvGram
from regnp.rkhs.kernels import (Gaussian, Wendland, Matern32, Exponential,
                                InverseMultiquadric, StencilKernel)
from regnp.rkhs.reduced import (reduced_gram, mid_index, filter_diagnostics,
                                diagnostics_table, operator_symbol, truncation_error)

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])

# %%
# Step 1 — K̃ exactly as eq. 9 builds it. On an n×n grid (pixels numbered row by row) K is
# an n×n array of n×n blocks B[a, b]. Take the middle block row a = m and, from every block
# B[m, b], its middle column; put those columns side by side. "Middle" is m = n // 2: the
# centre for odd n, and for even n the paper's n/2 (0-based), the second of the two central
# indices. Column b of K̃ is then k(m − b, · − m): the kernel centred on pixel (m, m).
print("Step 1 — the reduced matrix K̃ of eq. 9 from the dense K")
k = Gaussian(2.0)
reduced_vs_window = 0.0
for n in (15, 16):
    K = gram_matrix(k, (n, n))                                  # (n², n²)
    Kt_paper = reduced_gram(K, (n, n), layout="paper")          # literal eq. 9, (n, n)
    Kt13 = reduced_gram(K, (n, n), size=13)                     # 13×13 around the centre
    diffs = (np.abs(Kt13 - k.window(13)).max(),
             np.abs(Kt_paper - reduced_gram(K, (n, n)).T).max())
    reduced_vs_window = max(reduced_vs_window, *diffs)
    print(f"  n = {n}: middle index {mid_index(n)}; K̃ is {Kt_paper.shape}, "
          f"max |K̃₁₃ − kernel window| = {diffs[0]:.1e}, "
          f"max |paper layout − image layoutᵀ| = {diffs[1]:.1e}")

# %%
# Step 2 — the claimed properties, kernel by kernel. For the separable Gaussian the window
# is an outer product f fᵀ of the 1-D factor: rank 1, PSD, trace fᵀf ≥ 0 — exactly the
# paper's argument. The argument needs separability: the other kernels are just as
# symmetric (dihedral and even truly radial: equal taps at equal distance) but not rank 1,
# and their 13×13 matrices need not be PSD.
print("Step 2 — properties of the 13×13 window K̃ for each kernel")
kernels = [Gaussian(2.0), Gaussian(4.0), Wendland(6.0), Matern32(3.0), Exponential(3.0),
           InverseMultiquadric(2.0)]
rows = [(kk.describe(), filter_diagnostics(kk.window(13))) for kk in kernels]
lap = np.zeros((13, 13))
lap[5:8, 5:8] = [[0, -1, 0], [-1, 4, -1], [0, -1, 0]]
box = np.zeros((13, 13))
box[5:8, 5:8] = 1.0
rows += [("discrete Laplacian", filter_diagnostics(lap)), ("3×3 box", filter_diagnostics(box))]
print(diagnostics_table(rows))

# %%
# Step 3 — the error of eq. 10. Convolving with the 13×13 window drops every kernel value
# at offsets beyond ±6 pixels. For a white-noise α the relative error is about the L2 norm
# of the dropped tail; for a smooth α (closer to what a network outputs) it is about the
# dropped *sum*. Compact kernels with support radius ≤ 7 (Wendland ρ ≤ 7) lose nothing.
# The convolution here is the real 13×13 layer (regnp.ops.depthwise); the exact side is
# the FFT form of lesson 04.
print("Step 3 — relative error of the 13×13 convolution vs exact K·α")
shape = (64, 64) if quick else (128, 128)
widths = [1, 2, 4, 8] if quick else [0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16]
families = [("gaussian σ", Gaussian), ("wendland ρ", Wendland), ("matern32 ℓ", Matern32),
            ("exponential ℓ", Exponential), ("imq c", InverseMultiquadric)]
table = {}
print(f"  grid {shape}; rows: kernel width in pixels; columns: error for white-noise α / "
      f"smooth α; min of the truncated filter's symbol / its max")
print(f"  {'kernel':<15}{'width':>7}{'noise α':>11}{'smooth α':>11}{'symbol min/max':>16}")
for label, cls in families:
    errs = []
    for wdt in widths:
        kk = cls(float(wdt))
        conv = ConvGram(kk)
        en = truncation_error(kk, shape, alpha="noise", conv=conv)
        es = truncation_error(kk, shape, alpha="smooth", conv=conv)
        d = filter_diagnostics(kk.window(13))
        errs.append((en, es, d.symbol_min / d.symbol_max))
        print(f"  {label:<15}{wdt:>7g}{en:>11.2e}{es:>11.2e}{d.symbol_min / d.symbol_max:>16.2e}")
    table[label] = np.array(errs)

# %%
# Step 4 — matrix PSD versus operator PSD. A 13×13 filter w acts on a field through
# convolution; on a plane wave e^{iω·p} it multiplies by its Fourier transform ŵ(ω) (the
# "symbol"). The operator is PSD — αᵀ(w * α) ≥ 0 for every α — iff ŵ(ω) ≥ 0 for all ω, and
# on any finite grid the eigenvalues of its Gram matrix lie between min ŵ and max ŵ.
# The paper's test looks at the eigenvalues of w as a 13×13 *matrix* instead. Two small
# counter-examples show the two notions are independent: the discrete Laplacian is a PSD
# operator (ŵ = 4 − 2cos ω_y − 2cos ω_x ≥ 0) but not a PSD matrix; the 3×3 box is a rank-1
# PSD matrix but its symbol (1 + 2cos ω_y)(1 + 2cos ω_x) reaches −3. And the truncated
# Gaussian — the paper's own K̃ — is a rank-1 PSD matrix whose operator is *not* PSD.
print("Step 4 — matrix PSD vs operator PSD")
g4 = Gaussian(4.0).window(13)
n = 24 if quick else 40
ev = np.linalg.eigvalsh(gram_matrix(StencilKernel(g4), (n, n)))
sym = operator_symbol(g4, 256).real
d = filter_diagnostics(g4)
print(f"  truncated Gaussian σ=4: matrix eigenvalues ≥ {d.eig_min:.1e} (PSD matrix, rank "
      f"{d.rank}); symbol min {sym.min():.3f} / max {sym.max():.1f}")
print(f"  its Gram matrix on a {n}×{n} grid: λ_min = {ev[0]:.3f}, λ_max = {ev[-1]:.1f} "
      f"(inside [{sym.min():.3f}, {sym.max():.1f}]): some fields α have αᵀ(K̃ * α) < 0")
w6 = Wendland(6.0).window(13)
print(f"  Wendland ρ=6 window (exact, nothing truncated): symbol min "
      f"{operator_symbol(w6).real.min():.2e} ≥ 0")

# Figure 1: error vs width.
fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
for label, errs in table.items():
    ax[0].loglog(widths, np.maximum(errs[:, 0], 1e-17), "o-", label=label)
    ax[1].loglog(widths, np.maximum(errs[:, 1], 1e-17), "o-", label=label)
for a_, t in zip(ax, ["white-noise α", "smooth α (8 px)"]):
    a_.set_xlabel("kernel width (pixels)")
    a_.set_ylabel("‖K̃₁₃ * α − K α‖ / ‖K α‖")
    a_.set_title(f"13×13 truncation error, {t}")
    a_.axhline(1e-2, color="k", ls=":", lw=1)
    a_.grid(True, which="both", alpha=0.3)
ax[0].legend(fontsize=8)
fig.tight_layout()
path = out_dir / "09_truncation_error.png"
fig.savefig(path, dpi=100)
show_or_close(fig)
print(f"saved {path}")

# Figure 2: matrix PSD vs operator PSD.
fig, ax = plt.subplots(1, 4, figsize=(15, 3.8))
ax[0].imshow(g4, cmap="viridis")
ax[0].set_title("K̃ = truncated Gaussian σ=4\n(rank-1 PSD matrix)")
s = np.fft.fftshift(sym)
lim = 2 * abs(sym.min())                                        # colour scale clipped so the
im = ax[1].imshow(s, cmap="coolwarm", vmin=-lim, vmax=lim,      # negative lobes show up
                  extent=[-np.pi, np.pi, np.pi, -np.pi])
ax[1].set_title(f"its symbol ŵ(ω) (clipped): min {sym.min():.2f}\n"
                f"blue = negative ⇒ not a PSD operator")
ax[1].set_xlabel("ω_x")
ax[1].set_ylabel("ω_y")
fig.colorbar(im, ax=ax[1], fraction=0.046)
mid = np.fft.fftshift(sym)[128]
ax[2].plot(np.linspace(-np.pi, np.pi, 256, endpoint=False), mid)
ax[2].axhline(0, color="k", lw=0.8)
ax[2].set_ylim(-2, 6)
ax[2].set_title("symbol along ω_y = 0 (zoom)")
ax[2].set_xlabel("ω_x")
ax[3].plot(ev, ".", ms=2)
ax[3].axhline(0, color="k", lw=0.8)
ax[3].set_yscale("symlog", linthresh=1e-2)
ax[3].set_title(f"eigenvalues of its Gram matrix\non a {n}×{n} grid")
fig.tight_layout()
path2 = out_dir / "09_psd_matrix_vs_operator.png"
fig.savefig(path2, dpi=100)
show_or_close(fig)
print(f"saved {path2}")
compact = [e for wdt, e in zip(widths, table["wendland ρ"]) if wdt <= 7]
numbers = {"reduced_vs_window": reduced_vs_window,
           "wendland_compact_truncation": max(max(e[0], e[1]) for e in compact),
           "gaussian4_matrix_eig_min": d.eig_min, "gaussian4_symbol_min": sym.min(),
           "wendland6_symbol_min": operator_symbol(w6).real.min()}
report_numbers(**numbers)
