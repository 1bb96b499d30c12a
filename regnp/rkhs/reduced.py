"""The reduced matrix K̃ of paper eq. 9, the 13×13 approximation of eq. 10, and filter diagnostics.

**K̃ from the dense K (eq. 9).** Number pixels in C order (``i = row·W + col``), so ``K`` is an
H×H array of W×W Toeplitz blocks ``B[a, b]`` (see :mod:`regnp.rkhs.gram`). The paper takes the
*middle row of blocks* ``B[m, 0], B[m, 1], …`` and the *middle column* of each block, and puts
those columns side by side. "Middle" is index ``m = n // 2`` (0-based): the exact centre for odd
n, and for even n the paper's ``n/2``, i.e. the second of the two central indices (for n = 256:
index 128, not 127). Column ``b`` of the result is ``K[(m_r, ·), (b, m_c)] = k(m_r − b, · − m_c)``.

* ``layout="paper"`` returns exactly that matrix: shape ``(W, H)``, ``K̃[c, b] = k(m_r − b, c − m_c)``.
* ``layout="image"`` (default) returns the column of K belonging to the centre pixel, reshaped to
  the grid: shape ``(H, W)``, ``K̃[r, c] = k(r − m_r, c − m_c)`` — the impulse response of K, i.e.
  the kernel's stencil around the centre. For kernels even in each axis (every kernel of
  :mod:`regnp.rkhs.kernels`) it is the transpose of the paper layout, and for a square grid with
  an isotropic kernel the two are the same matrix.

``size=13`` cuts the 13×13 window around the centre; it equals ``kernel.window(13)``, the filter of
eq. 10 (it needs ``m − 6 ≥ 0`` and ``m + 6 ≤ n − 1``: n ≥ 13 odd, n ≥ 14 even).

**What the paper claims, and when it holds.** For a *separable* kernel the window is an outer
product ``f fᵀ`` (f = the 1-D factor around 0): rank 1, PSD *as a matrix*, trace ``fᵀf ≥ 0``, and
symmetric under transposition and under the anti-diagonal flip ("radially symmetric" in the
paper's sense). For non-separable kernels (Wendland, Matérn, exponential, IMQ) the window is
still symmetric in the dihedral sense, but generally *not* rank 1 and not necessarily PSD as a
matrix — :func:`filter_diagnostics` measures it.

**Matrix PSD versus operator PSD.** The paper's condition treats the 13×13 filter as a *matrix*
(eigenvalues of ``K̃``). What makes ``αᵀ(K̃ * α) ≥ 0`` for every field α is a different property:
the convolution *operator* is PSD iff the filter's 2-D Fourier transform (its symbol
``Σ_d w[d] cos(ω·d)`` for a centrosymmetric filter) is ≥ 0 at every frequency; the eigenvalues of
its Gram matrix on any finite grid lie between the symbol's min and max. The two notions differ:
a truncated Gaussian is a rank-1 PSD matrix but its symbol dips below 0 (truncation multiplies by
a box, whose transform oscillates); conversely a PSD operator need not be a PSD matrix.
"""
from dataclasses import dataclass
import numpy as np

from .._checks import check_array
from .gram import _check_shape, FFTGram, ConvGram

__all__ = ["reduced_gram", "mid_index", "filter_diagnostics", "FilterDiagnostics",
           "diagnostics_table", "truncation_error", "operator_symbol"]


def mid_index(n):
    """The "middle" index of eq. 9 for a side of n pixels: ``n // 2`` (the paper's n/2, 0-based;
    for even n the second of the two central pixels)."""
    return int(n) // 2


def reduced_gram(K, shape, size=None, layout="image"):
    """The reduced matrix K̃ of eq. 9, cut from the dense Gram matrix exactly as the paper says.

    Inputs:
    - K: dense Gram matrix ``(H·W, H·W)`` of an H×W grid (C-order pixel numbering), e.g.
      :func:`regnp.rkhs.gram.gram_matrix` or ``DenseGram(...).K``.
    - shape: the grid ``(H, W)``.
    - size: None for the full K̃, or an odd window size (13) cut around the centre.
    - layout: ``"image"`` → ``(H, W)`` with ``K̃[m_r + dy, m_c + dx] = k(dy, dx)``;
      ``"paper"`` → the literal eq. 9 matrix ``(W, H)`` whose column b is the mid-column of block
      ``B[m_r, b]``.
    Returns: K̃ (float64), shape as above, or ``(size, size)``.
    """
    H, W = _check_shape(shape)
    K = check_array("K", K, ndim=2)
    if K.shape != (H * W, H * W):
        raise ValueError(f"K has shape {K.shape}, but an {H}×{W} grid needs ({H * W}, {H * W})")
    mr, mc = mid_index(H), mid_index(W)
    if layout == "paper":
        cols = []
        for b in range(H):
            block = K[mr * W:(mr + 1) * W, b * W:(b + 1) * W]             # B[m_r, b]: (W, W)
            cols.append(block[:, mc])                                    # its mid-column (W,)
        Kt = np.stack(cols, axis=1).astype(np.float64)                   # (W, H)
        centre = (mc, mr)
    elif layout == "image":
        Kt = np.array(K[:, mr * W + mc].reshape(H, W), dtype=np.float64)  # (H, W)
        centre = (mr, mc)
    else:
        raise ValueError(f"layout must be 'image' or 'paper', got {layout!r}")
    if size is None:
        return Kt
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd integer, got {size!r}")
    h = int(size) // 2
    (c0, c1), (n0, n1) = centre, Kt.shape
    if c0 - h < 0 or c0 + h >= n0 or c1 - h < 0 or c1 + h >= n1:
        raise ValueError(f"a {size}×{size} window around the centre pixel ({mr}, {mc}) does not fit "
                         f"in the {H}×{W} grid; use a grid of at least {size} (odd) or "
                         f"{size + 1} (even) pixels per side")
    return np.ascontiguousarray(Kt[c0 - h:c0 + h + 1, c1 - h:c1 + h + 1])


# --------------------------------------------------------------------------------------------
# diagnostics of any k×k filter
# --------------------------------------------------------------------------------------------
def operator_symbol(w, n_freq=256):
    """The 2-D Fourier transform (symbol) of a k×k filter on an ``n_freq × n_freq`` frequency grid.

    The filter acts as ``out[p] = Σ_d w[h + d] α[p + d]``; on a plane wave ``e^{iω·p}`` it multiplies
    by ``Σ_d w[h + d] e^{iω·d}``. Returns that complex array ``(n_freq, n_freq)`` at
    ``ω = 2π (ky, kx) / n_freq``. Its real part is the symbol of the symmetric part of the
    operator; the operator is PSD iff the real part is ≥ 0 everywhere (sampled here, so the
    returned minimum is an upper bound of the true one; n_freq = 256 resolves it to well below
    1e-3 of the peak for 13×13 filters).
    """
    k = w.shape[0]
    h = k // 2
    if n_freq < k:
        raise ValueError(f"n_freq must be at least the filter size {k}")
    pad = np.zeros((n_freq, n_freq))
    pad[:k, :k] = w
    pad = np.roll(pad, (-h, -h), axis=(0, 1))                            # tap d at index d mod n
    return np.conj(np.fft.fft2(pad))                                     # Σ w[h+d] e^{+iω·d}


@dataclass
class FilterDiagnostics:
    """Numbers describing one k×k filter (see :func:`filter_diagnostics`)."""
    size: int
    sum: float                 # DC gain Σ w (the displacement gain on a constant field)
    centre: float              # centre tap
    trace: float               # Tr w (eq. 12)
    anti_trace: float          # Tr J w (eq. 12)
    transpose_asym: float      # ‖w − wᵀ‖ / ‖w‖ (eq. 12, first symmetry term)
    antidiag_asym: float       # ‖w J − J w‖ / ‖w‖ (eq. 12, second symmetry term)
    dihedral_asym: float       # max over the 8 symmetries of the square of ‖g(w) − w‖ / ‖w‖
    radial_asym: float         # max over rings |d|² = const of (max − min) / max|w|
    eig_min: float             # smallest eigenvalue of (w + wᵀ)/2  (matrix PSD if ≥ 0)
    eig_max: float
    rank: int                  # numerical rank (singular values > 1e-10 σ₁)
    rank1_residual: float      # σ₂ / σ₁ (0 for an outer product)
    symbol_min: float          # min of Re(2-D Fourier transform)  (operator PSD if ≥ 0)
    symbol_max: float
    psd_matrix: bool
    psd_operator: bool


_ROW_FIELDS = ("sum", "trace", "rank", "rank1_residual", "dihedral_asym", "radial_asym",
               "eig_min", "psd_matrix", "symbol_min", "psd_operator")


def diagnostics_table(rows, fields=_ROW_FIELDS):
    """A plain-text table of ``[(label, FilterDiagnostics), ...]`` for printing."""
    head = f"{'filter':<24}" + "".join(f"{f:>15}" for f in fields)
    lines = [head, "-" * len(head)]
    for label, d in rows:
        cells = []
        for f in fields:
            v = getattr(d, f)
            if isinstance(v, (bool, np.bool_)):
                cells.append(f"{'yes' if v else 'NO':>15}")
            elif isinstance(v, (int, np.integer)):
                cells.append(f"{v:>15d}")
            else:
                cells.append(f"{v:>15.3e}")
        lines.append(f"{label:<24}" + "".join(cells))
    return "\n".join(lines)


def filter_diagnostics(w, n_freq=256, tol=None):
    """Check the paper's claimed properties of K̃ on any k×k filter (kernel windows or learned ones).

    Inputs:
    - w: filter ``(k, k)``, k odd, float32/float64 (a learned meta-regularization filter, or
      ``kernel.window(13)``); or a stack ``(C, k, k)`` (one filter per displacement channel, as
      the 13×13 layer stores them) → a list of C results.
    - n_freq: frequency grid for the operator symbol.
    - tol: relative tolerance for PSD and rank decisions (of the largest |eigenvalue| / σ₁ /
      |symbol|); default 1e-10 for float64 filters and 1e-6 for float32 ones (a float32
      outer product has σ₂/σ₁ ≈ 1e-7 from rounding alone).
    Returns: :class:`FilterDiagnostics` — trace, symmetry errors (the two terms of eq. 12, the
    dihedral group of the square, and true radial symmetry: equal values on rings of equal
    distance), matrix eigenvalues, rank and rank-1 residual, and the min/max of the operator
    symbol (operator PSD).
    """
    if isinstance(w, np.ndarray) and w.ndim == 3:
        return [filter_diagnostics(wc, n_freq=n_freq, tol=tol) for wc in w]
    w = check_array("w", w, ndim=2)
    if tol is None:
        tol = 1e-6 if w.dtype == np.float32 else 1e-10
    k = w.shape[0]
    if w.shape != (k, k) or k % 2 == 0:
        raise ValueError(f"w must be a square filter with odd side (k, k), got shape {w.shape}")
    w = w.astype(np.float64)
    norm = float(np.linalg.norm(w))
    scale = norm if norm > 0 else 1.0
    J = np.eye(k)[::-1]
    sym = 0.5 * (w + w.T)
    eig = np.linalg.eigvalsh(sym)
    sv = np.linalg.svd(w, compute_uv=False)
    sv_ref = sv[0] if sv[0] > 0 else 1.0
    group = [w.T, w[::-1], w[:, ::-1], w[::-1, ::-1], w.T[::-1], w.T[:, ::-1], w.T[::-1, ::-1]]
    dihedral = max(float(np.linalg.norm(g - w)) for g in group) / scale
    h = k // 2
    dy, dx = np.meshgrid(np.arange(-h, h + 1), np.arange(-h, h + 1), indexing="ij")
    r2 = (dy * dy + dx * dx).ravel()
    flat = w.ravel()
    amax = float(np.max(np.abs(w))) or 1.0
    radial = 0.0
    for v in np.unique(r2):
        vals = flat[r2 == v]
        radial = max(radial, float(vals.max() - vals.min()) / amax)
    sym_re = operator_symbol(w, n_freq).real
    smin, smax = float(sym_re.min()), float(sym_re.max())
    eabs = max(float(np.max(np.abs(eig))), 1e-300)
    sabs = max(abs(smin), abs(smax), 1e-300)
    return FilterDiagnostics(
        size=k, sum=float(w.sum()), centre=float(w[h, h]), trace=float(np.trace(w)),
        anti_trace=float(np.trace(J @ w)),
        transpose_asym=float(np.linalg.norm(w - w.T)) / scale,
        antidiag_asym=float(np.linalg.norm(w @ J - J @ w)) / scale,
        dihedral_asym=dihedral, radial_asym=radial,
        eig_min=float(eig[0]), eig_max=float(eig[-1]),
        rank=int(np.sum(sv > tol * sv_ref)), rank1_residual=float(sv[1] / sv_ref) if k > 1 else 0.0,
        symbol_min=smin, symbol_max=smax,
        psd_matrix=bool(eig[0] >= -tol * eabs), psd_operator=bool(smin >= -tol * sabs))


# --------------------------------------------------------------------------------------------
# the 13×13 approximation against exact K·α
# --------------------------------------------------------------------------------------------
def _smooth_field(rng, shape, n, corr):
    """n random fields (n, H, W) low-pass filtered with a Gaussian of ``corr`` pixels (FFT)."""
    H, W = shape
    x = rng.standard_normal((n, H, W))
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.rfftfreq(W)[None, :]
    g = np.exp(-2 * (np.pi * corr) ** 2 * (fy ** 2 + fx ** 2))
    return np.fft.irfft2(np.fft.rfft2(x) * g, s=(H, W))


def truncation_error(kernel, shape=(128, 128), size=13, alpha="noise", n_fields=2, seed=0,
                     conv=None):
    """Relative error of the ``size×size`` filter against exact K·α: ``‖K̃ * α − K α‖ / ‖K α‖``.

    Inputs:
    - kernel: a stationary Kernel.
    - shape: grid for the test fields.
    - size: window size (13).
    - alpha: ``"noise"`` (white Gaussian α: the error is then about the L2 norm of the kernel's
      tail outside the window over its full L2 norm), ``"smooth"`` (α low-passed with an
      8-pixel Gaussian, closer to a network output; the error is then about the tail's *sum*
      over the kernel's sum), or an explicit float64 array ``(N, C, H, W)``.
    - conv: operator computing the approximation; default :class:`ConvGram` (the Numba 13×13
      depthwise op, the layer the models use).
    Returns: the relative error (float). The exact side is :class:`FFTGram` in float64.
    """
    shape = _check_shape(shape)
    if isinstance(alpha, str):
        rng = np.random.default_rng(seed)
        if alpha == "noise":
            a = rng.standard_normal((n_fields,) + shape)
        elif alpha == "smooth":
            a = _smooth_field(rng, shape, n_fields, 8.0)
        else:
            raise ValueError(f"alpha must be 'noise', 'smooth' or an array, got {alpha!r}")
        a = a[:, None]                                                   # (n, 1, H, W)
    else:
        a = check_array("alpha", alpha, ndim=4)
    a = np.ascontiguousarray(a, dtype=np.float64)
    exact = FFTGram(kernel, shape).apply(a)
    approx = (conv if conv is not None else ConvGram(kernel, size=size)).apply(a)
    return float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-300))
