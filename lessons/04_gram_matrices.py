# %% Lesson 04 — Gram matrices on a pixel grid
"""Lesson 04 — Gram matrices on a pixel grid: dense, Kronecker and FFT, proven equal.

Section 4.1 of the paper writes the displacement as u = K α (eq. 6): α is a field of
coefficients, one per pixel and channel, and K is the Gram matrix of a reproducing kernel,
K[i, j] = k(p_i, p_j). For a 256×256 image K has 65,536² ≈ 4.3 billion entries (34 GB in
float64) — nobody can store it. This lesson builds it anyway on small grids, looks at its
structure (eq. 8: block-Toeplitz with Toeplitz blocks), and derives the two exact shortcuts that
make K α cheap at full size:

* Kronecker: a separable kernel (the Gaussian) gives K = K_y ⊗ K_x, so K α = K_y A K_xᵀ;
* FFT: any translation-invariant kernel makes K α a (zero-padded, linear) convolution of α with
  the kernel's (2H−1)×(2W−1) stencil, computed with FFTs of size ≥ (2H−1)×(2W−1).

Run:  python lessons/04_gram_matrices.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""
import time

import numpy as np

from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.rkhs.gram import (DenseGram, FFTGram, KroneckerGram, gram_matrix,
                             gram_apply_reference, kronecker_factors)
from regnp.rkhs.kernels import Gaussian, Matern32, Wendland

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


def _median_ms(f, reps):
    """Median milliseconds of f() after one warm-up call (FFT plans, caches)."""
    from regnp.metrics import Timer
    return 1e3 * Timer.measure(f, repeats=reps, warmup=1)


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
rng = np.random.default_rng(0)

# %%
# Step 1 — the Gram matrix of a tiny grid, entry by entry.
# Number the pixels of an H×W grid in C order, i = row·W + col (what α.ravel() does). Then
# K[i, j] = k(p_i − p_j) for a translation-invariant kernel. On a 4×3 grid K is 12×12.
print("Step 1 — the Gram matrix of a 4×3 grid, Gaussian kernel σ = 1.5")
g = Gaussian(1.5)
H, W = 4, 3
K = gram_matrix(g, (H, W))                                # (12, 12)
i, j = 5, 7                                               # pixels (1, 2) and (2, 1)
print(f"  K has shape {K.shape}; K[{i},{j}] = {K[i, j]:.6f} = k(1−2, 2−1) = "
      f"{float(g(1 - 2, 2 - 1)):.6f}")
print(f"  symmetric: max |K − Kᵀ| = {np.abs(K - K.T).max():.1e}")

# %%
# Step 2 — the structure of eq. 8. Group K into an H×H array of W×W blocks: block (a, b)
# holds k(a − b, c − e) for all columns c, e. It depends on a − b only (block-Toeplitz) and
# inside it the entries depend on c − e only (Toeplitz blocks). For the separable Gaussian
# every block is a multiple of one matrix: block (a, b) = f(a − b)·K_x, i.e. K = K_y ⊗ K_x.
# (The paper numbers pixels column by column and writes K = K^x ⊗ K^y on a square grid —
# the same matrix.)
print("Step 2 — block-Toeplitz structure and the Kronecker factorisation")
Hs, Ws = 6, 5                                             # a small (Hs × Ws) grid for the demo
Ks = gram_matrix(Matern32(2.0), (Hs, Ws)).reshape(Hs, Ws, Hs, Ws)
worst = max(np.abs(Ks[a, :, b, :] - Ks[abs(a - b), :, 0, :]).max()
            for a in range(Hs) for b in range(Hs))
print(f"  Matérn 6×5 grid: block (a,b) − block (|a−b|,0) differs by at most {worst:.1e}")
Ky, Kx = kronecker_factors(g, (H, W))
print(f"  Gaussian: max |K − kron(K_y, K_x)| = {np.abs(K - np.kron(Ky, Kx)).max():.1e}")

# %%
# Step 3 — symmetric and positive semi-definite. The kernels in regnp.rkhs.kernels are
# positive definite functions, so every Gram matrix they build has eigenvalues ≥ 0 (up to
# round-off: a wide Gaussian is so smooth that most eigenvalues are ~1e-16).
print("Step 3 — eigenvalues of K on a 12×12 grid")
ev = {}
for k in (Gaussian(2.0), Matern32(2.0), Wendland(5.0)):
    e = np.linalg.eigvalsh(gram_matrix(k, (12, 12)))
    ev[k.describe()] = e
    print(f"  {k.describe():<22} λ_min = {e[0]: .2e}   λ_max = {e[-1]:.2f}   "
          f"condition ≈ {e[-1] / max(e[0], 1e-300):.1e}")

# %%
# Step 4 — three ways to compute u = K α, one answer. The dense matrix is a matvec; the
# Kronecker form is two small matrix products; the FFT form pads α to (Ly, Lx) ≥ (2H−1, 2W−1)
# so the circular convolution never wraps around, multiplies by the kernel's cached spectrum
# and crops. (A kernel that falls below 1e-16 of its peak beyond R pixels only needs
# L ≥ H + R: the Gaussian σ = 2 below uses a smaller torus than the Matérn.) All three are
# exact, so they agree to round-off — and with the slow loop.
print("Step 4 — dense vs Kronecker vs FFT on rectangular grids (float64)")
shapes = [(16, 12), (32, 24)] if quick else [(16, 12), (32, 24), (48, 64), (64, 64)]
agree = 0.0                                               # worst relative disagreement
for shape in shapes:
    a = rng.standard_normal((2, 2) + shape)               # (N, 2, H, W): a batch of α
    ud = DenseGram(g, shape).apply(a)
    uk = KroneckerGram(g, shape).apply(a)
    fg, fm = FFTGram(g, shape), FFTGram(Matern32(3.0), shape)
    uf = fg.apply(a)
    um = fm.apply(a)
    umd = DenseGram(Matern32(3.0), shape).apply(a)
    r = lambda x, y: np.linalg.norm(x - y) / np.linalg.norm(y)
    agree = max(agree, r(uk, ud), r(uf, ud), r(um, umd))
    print(f"  {shape}: Kron vs dense {r(uk, ud):.1e}, FFT vs dense {r(uf, ud):.1e}, "
          f"Matérn FFT vs dense {r(um, umd):.1e}   (torus: Gaussian {fg.L}, Matérn {fm.L})")
small = rng.standard_normal((5, 4))
vs_loop = np.abs(FFTGram(g, (5, 4)).apply(small) - gram_apply_reference(g, small)).max()
print(f"  vs the slow pixel loop on 5×4: {vs_loop:.1e}")

# %%
# Step 4b — the FFT product written out: pad, multiply, crop. K α at pixel p is
# Σ_q k(p − q) α[q]: a linear convolution of α with the kernel's stencil s[d] = k(d), offsets
# d from −(H−1) to H−1 down and −(W−1) to W−1 across. The FFT computes *circular*
# convolutions, on a torus of Ly × Lx pixels: with Ly ≥ 2H − 1 and Lx ≥ 2W − 1 no sum wraps
# around onto the H × W pixels we keep. On the torus, index t holds offset t for t < H and
# t − Ly (negative) for the rest.
print("Step 4b — the FFT product by hand (Matérn ℓ = 3, 13×10 grid, float64)")
kern, (Hb, Wb) = Matern32(3.0), (13, 10)
Ly, Lx = 2 * Hb - 1, 2 * Wb - 1                           # the smallest torus that never wraps
ty, tx = np.arange(Ly), np.arange(Lx)
off_y = np.where(ty < Hb, ty, ty - Ly)                    # torus index → offset d_y
off_x = np.where(tx < Wb, tx, tx - Lx)
stencil = kern(off_y[:, None], off_x[None, :])            # (Ly, Lx) k(d) at every offset
alpha_b = rng.standard_normal((Hb, Wb))
padded = np.zeros((Ly, Lx))
padded[:Hb, :Wb] = alpha_b                                # 1. pad α with zeros
product = np.fft.fft2(stencil) * np.fft.fft2(padded)      # 2. multiply the spectra
u_hand = np.fft.ifft2(product).real[:Hb, :Wb]             # 3. back, and crop to H × W
fft_by_hand = np.abs(u_hand - FFTGram(kern, (Hb, Wb)).apply(alpha_b)).max()
print(f"  by hand vs FFTGram: max abs diff {fft_by_hand:.1e}; vs the dense K: "
      f"{np.abs(u_hand.ravel() - gram_matrix(kern, (Hb, Wb)) @ alpha_b.ravel()).max():.1e}")
# FFTGram does the same with a few savings: real FFTs, transforms only over the rows that are
# not zero, a torus rounded up to sizes the FFT likes (or smaller, Step 4, when the kernel
# has died out), and the stencil's spectrum computed once and cached.

# %%
# Step 5 — what it costs. Memory of the dense matrix grows as (HW)²; time of the Kronecker
# form as HW(H + W); the FFT form as HW log HW. Measured here, medians, float32 batch
# (2, 2, H, W) (two images × two displacement channels).
print("Step 5 — memory and time")
for n in (16, 32, 64, 128, 256):
    print(f"  dense K for {n}×{n}: {(n * n) ** 2 * 8 / 1e9:10.3f} GB in float64")
reps = 3 if quick else 20
a64 = rng.standard_normal((2, 2, 64, 64)).astype(np.float32)
t0 = time.perf_counter()
dense64 = DenseGram(g, (64, 64))
t_build = time.perf_counter() - t0
t_dense = _median_ms(lambda: dense64.apply(a64), reps)
n = 128 if quick else 256
a256 = rng.standard_normal((2, 2, n, n)).astype(np.float32)
kron = KroneckerGram(Gaussian(10.0), (n, n))
fft = FFTGram(Gaussian(10.0), (n, n))
t_kron = _median_ms(lambda: kron.apply(a256), reps)
t_fft = _median_ms(lambda: fft.apply(a256), reps)
print(f"  dense 64×64: built in {t_build:.2f} s, K·α {t_dense:.2f} ms")
print(f"  {n}×{n}: Kronecker {t_kron:.2f} ms, FFT {t_fft:.2f} ms")

# Figures: the dense K of a 6×5 Matérn grid with its block lines (eq. 8), the Kronecker
# factors, the FFT spectrum, and u = K α for an α made of a few spikes: every spike becomes a
# copy of the kernel, so K "spreads" sparse coefficients into a smooth displacement.
Kshow = gram_matrix(Matern32(2.0), (Hs, Ws))
Kyb, Kxb = kronecker_factors(Gaussian(2.0), (40, 40))
spec = np.fft.fftshift(FFTGram(Gaussian(2.0), (40, 40)).spectrum(), axes=0)
alpha = np.zeros((64, 64))
for (y, x, v) in [(16, 16, 1.0), (20, 44, -0.7), (44, 30, 0.8), (50, 52, 0.5)]:
    alpha[y, x] = v
u_g = FFTGram(Gaussian(4.0), (64, 64)).apply(alpha)
u_w = FFTGram(Wendland(10.0), (64, 64)).apply(alpha)

fig, ax = plt.subplots(2, 3, figsize=(13, 8.2))
im = ax[0, 0].imshow(Kshow, cmap="viridis")
for t in range(1, Hs):
    ax[0, 0].axhline(t * Ws - 0.5, color="w", lw=0.8)
    ax[0, 0].axvline(t * Ws - 0.5, color="w", lw=0.8)
ax[0, 0].set_title("dense K, Matérn ℓ=2, 6×5 grid\n(6×6 blocks of 5×5 Toeplitz, eq. 8)")
fig.colorbar(im, ax=ax[0, 0], fraction=0.046)
ax[0, 1].imshow(Kxb, cmap="viridis")
ax[0, 1].set_title("Gaussian σ=2: factor K_x (40×40)\nK = K_y ⊗ K_x, K·α = K_y A K_xᵀ")
im = ax[0, 2].imshow(spec, cmap="coolwarm", aspect="auto")
ax[0, 2].set_title("FFT form: cached spectrum of the\nwrapped stencil (Gaussian σ=2, 40×40)")
fig.colorbar(im, ax=ax[0, 2], fraction=0.046)
ax[1, 0].imshow(alpha, cmap="coolwarm", vmin=-1, vmax=1)
ax[1, 0].set_title("α: four spikes")
lim = np.abs(u_g).max()
ax[1, 1].imshow(u_g, cmap="coolwarm", vmin=-lim, vmax=lim)
ax[1, 1].set_title("u = K α, Gaussian σ=4 (FFT)")
lim = np.abs(u_w).max()
ax[1, 2].imshow(u_w, cmap="coolwarm", vmin=-lim, vmax=lim)
ax[1, 2].set_title("u = K α, Wendland ρ=10 (compact)")
for a_ in ax.ravel():
    a_.set_xticks([])
    a_.set_yticks([])
fig.tight_layout()
path = out_dir / "04_gram_matrices.png"
fig.savefig(path, dpi=100)
show_or_close(fig)
print(f"saved {path}")

fig, ax = plt.subplots(figsize=(6, 4))
for name, e in ev.items():
    ax.semilogy(np.arange(e.size), np.maximum(e[::-1], 1e-17), label=name)
ax.set_xlabel("eigenvalue index (descending)")
ax.set_ylabel("eigenvalue of K (12×12 grid)")
ax.set_title("Gram matrices are PSD; smooth kernels are ill-conditioned")
ax.legend()
fig.tight_layout()
path2 = out_dir / "04_gram_spectrum.png"
fig.savefig(path2, dpi=100)
show_or_close(fig)
print(f"saved {path2}")
numbers = {"fft_by_hand_vs_library": fft_by_hand, "dense_kron_fft_agreement": agree,
           "fft_vs_loop": vs_loop,
           "kron_factorisation": np.abs(K - np.kron(Ky, Kx)).max(),
           "block_toeplitz": worst, "min_eigenvalue": min(e[0] for e in ev.values()),
           "dense_ms": t_dense, "kron_ms": t_kron, "fft_ms": t_fft}
report_numbers(**numbers)
