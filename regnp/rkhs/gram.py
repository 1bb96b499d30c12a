"""The Gram product ``u = K α`` four ways: dense, Kronecker, FFT and the 13×13 convolution.

Setting (paper eq. 6–10). Pixels ``p = (row, col)`` of an H×W grid are numbered in NumPy's
C order, ``i = row·W + col``, so a field ``α`` of shape ``(H, W)`` is the vector ``α.ravel()``.
The Gram matrix of a kernel ``k`` is ``K[i, j] = k(p_i − p_j)``, shape ``(HW, HW)``; each channel
of a displacement (row offset, column offset) is ``u_c = K α_c``, the same ``K`` for both.

Structure. With C-order numbering, ``K`` is an H×H array of W×W blocks,
``B[a, b] = [k(a − b, c − e)]_{c,e}``: every block is Toeplitz and block ``(a, b)`` depends only on
``a − b`` — "doubly-block Toeplitz" as in eq. 8. For a separable kernel ``k = f(dy) f(dx)`` the
blocks are ``f(a − b) K_x``, so ``K = K_y ⊗ K_x`` (``np.kron`` order). The paper writes
``K = K^x ⊗ K^y`` (column-major numbering) and assumes a square grid, ``K = K^x ⊗ K^x``; for
square grids and the same kernel along both axes the two are the same matrix.

The four products (all return ``u`` with the shape and dtype of ``α``):

=============  ====================================  =======================  ==============
operator       what it computes                      cost / memory            kernels
=============  ====================================  =======================  ==============
DenseGram      ``K α`` with the explicit (HW)²       (HW)² per channel;       any, incl.
               matrix (one BLAS GEMM)                64×64: 16.7 M entries,   non-stationary
                                                     134 MB float64;
                                                     128×128: 2.1 GB
KroneckerGram  ``K_y A K_xᵀ`` (two GEMMs)            O(HW (H + W))            separable only
FFTGram        zero-padded *linear* convolution of   O(HW log HW); spectrum   any stationary
               ``α`` with the (2H−1)×(2W−1)          cached per kernel,
               stencil, by a circular FFT of size    grid and dtype
               ≥ (2H−1)×(2W−1) (smaller when the
               kernel's tail is below 1e-16)
ConvGram       the 13×13 filter ``K̃`` of eq. 10      169 MACs per pixel       approximation
               (same-size, zero padding) — the       (Numba depthwise op)     unless support
               meta-regularization layer                                      radius ≤ 7
=============  ====================================  =======================  ==============

Dense, Kronecker and FFT are *exact* and agree to round-off (tests: ≤ 1e-10 relative in float64).
``ConvGram`` equals them only when the kernel vanishes outside the 13×13 window.

Measured medians on the 2-core machine (``python -m regnp.rkhs.gram``), float32 (2, 2, 256, 256):
Kronecker (Gaussian σ=10) about 1.9 ms, FFT about 2.6–3.8 ms (Gaussian, 360² torus) and 7 ms
(Matérn, 512² torus); dense 64×64 K·α about 5 ms (K built once in 0.2–0.3 s). Multi-threaded
OpenBLAS calls can stall for a scheduler tick when other processes load the cores; the Kronecker
form therefore uses two large GEMMs for the whole batch rather than two per field.

Every operator is an op pair as everywhere in regnp: ``u, cache = op.forward(α)`` and
``dα = op.backward(du, cache)``. ``K`` is symmetric for every kernel (``k(d) = k(−d)``), so the
backward pass is one more product with ``K`` (``Kᵀ = K``); for the non-centrosymmetric filters a
:class:`~regnp.rkhs.kernels.StencilKernel` allows, it uses ``Kᵀ``.
"""
from functools import lru_cache

import numpy as np
import scipy.fft as sfft

from .._checks import check_array
from .kernels import Kernel, StencilKernel, make_kernel

__all__ = ["MAX_DENSE_PIXELS", "gram_matrix", "kronecker_factors", "fft_plan", "fft_spectrum",
           "fft_sizes", "effective_radius",
           "GramOperator", "DenseGram", "KroneckerGram", "FFTGram", "ConvGram", "make_gram",
           "gram_apply_reference", "METHODS"]

#: Largest grid (in pixels) for which :class:`DenseGram` builds K unless told otherwise:
#: 64×64 = 4096 pixels → 16.7 M entries = 134 MB in float64. 128×128 would be 2.1 GB and
#: 256×256 34 GB.
MAX_DENSE_PIXELS = 64 * 64

METHODS = ("dense", "kronecker", "fft", "conv13")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _check_shape(shape):
    if (not isinstance(shape, (tuple, list)) or len(shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1
                   for s in shape)):
        raise ValueError(f"shape must be a grid size (H, W) of two positive integers, got {shape!r}")
    return int(shape[0]), int(shape[1])


def _as_kernel(kernel):
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a regnp.rkhs.kernels.Kernel (e.g. Gaussian(sigma=4) or "
                        f"make_kernel('gaussian', 4)), got {type(kernel).__name__}")
    return kernel


def _require_stationary(kernel, form):
    if not kernel.stationary:
        raise ValueError(f"the {form} form needs a stationary kernel, k(p, q) = k(p − q), but "
                         f"{kernel.describe()} is not stationary; use method='dense' (explicit "
                         f"Gram matrix, grids up to {MAX_DENSE_PIXELS} pixels = 64×64)")


def _dense_message(H, W, max_pixels, kernel):
    n = H * W
    gb = n * n * 8 / 1e9
    alt = ("method='kronecker' (exact, K_y A K_xᵀ) or method='fft' (exact, FFT convolution)"
           if kernel.separable else
           "method='fft' (exact, FFT convolution; any stationary kernel)")
    if not kernel.stationary:
        alt = ("a smaller grid: the Kronecker and FFT forms need a stationary kernel, and this "
               "one is not")
    return (f"the dense Gram matrix of a {H}×{W} grid has ({n})² = {n * n:,} entries "
            f"({gb:.2f} GB in float64), above the limit max_pixels={max_pixels} "
            f"({MAX_DENSE_PIXELS} = 64×64 → 134 MB by default). Use {alt}; or pass "
            f"max_pixels={n} if you really have the memory")


def _split_alpha(alpha, H, W, name="alpha"):
    """Validate ``(H, W)`` or ``(N, C, H, W)`` and return it as a contiguous ``(B, H, W)`` view."""
    if not isinstance(alpha, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (H, W) or (N, C, H, W), got "
                        f"{type(alpha).__name__}")
    if alpha.ndim not in (2, 4):
        raise ValueError(f"{name} must be a field (H, W) or a batch (N, C, H, W), got shape "
                         f"{alpha.shape}")
    check_array(name, alpha)
    if alpha.shape[-2:] != (H, W):
        raise ValueError(f"{name} has grid {alpha.shape[-2:]} but this Gram operator was built "
                         f"for a {H}×{W} grid; build one for the new size with "
                         f"make_gram(kernel, {alpha.shape[-2:]}, ...)")
    return np.ascontiguousarray(alpha).reshape(-1, H, W)                # (B, H, W)


# --------------------------------------------------------------------------------------------
# the explicit matrices
# --------------------------------------------------------------------------------------------
def gram_matrix(kernel, shape, max_pixels=MAX_DENSE_PIXELS, dtype=np.float64):
    """The explicit Gram matrix ``K[i, j] = k(p_i, p_j)`` of an H×W grid (paper eq. 8).

    Inputs:
    - kernel: a :class:`~regnp.rkhs.kernels.Kernel` (stationary or a non-stationary
      :class:`~regnp.rkhs.kernels.FunctionKernel`).
    - shape: grid size ``(H, W)``; pixel ``(r, c)`` is index ``r·W + c``.
    - max_pixels: refuse grids with more than this many pixels (memory: (HW)² × 8 bytes).
    - dtype: float64 (default) or float32.
    Returns: K, shape ``(H·W, H·W)``.

    Stationary kernels are filled block by block: block ``(a, b)`` is the W×W Toeplitz matrix
    ``[k(a − b, c − e)]_{c,e}`` cut from the (2H−1)×(2W−1) stencil, so only one row of blocks is
    ever materialised as a temporary.
    """
    kernel = _as_kernel(kernel)
    H, W = _check_shape(shape)
    if H * W > max_pixels:
        raise ValueError(_dense_message(H, W, max_pixels, kernel))
    dtype = np.dtype(dtype)
    n = H * W
    if not kernel.stationary:                                            # k(p, q) pair by pair
        rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        P = np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.float64)   # (HW, 2)
        K = np.empty((n, n), dtype=dtype)
        step = max(1, 2 ** 20 // n)
        for i0 in range(0, n, step):
            K[i0:i0 + step] = kernel.pair(P[i0:i0 + step, None, :], P[None, :, :])
        return K
    S = kernel.stencil(H, W)                                             # (2H-1, 2W-1)
    ce = np.arange(W)
    toe = ce[:, None] - ce[None, :] + (W - 1)                            # (W, W) index c - e
    blocks = S[:, toe]                                                   # (2H-1, W, W)
    K4 = np.empty((H, W, H, W), dtype=dtype)                             # K[(a,c),(b,e)]
    b = np.arange(H)
    for a in range(H):
        K4[a] = blocks[a - b + (H - 1)].transpose(1, 0, 2)               # (W, H, W)
    return K4.reshape(n, n)


def kronecker_factors(kernel, shape):
    """The factors of ``K = K_y ⊗ K_x`` for a separable kernel ``k(dy, dx) = f(dy) f(dx)``.

    Returns ``(K_y, K_x)`` with ``K_y[a, b] = f(a − b)`` (H×H) and ``K_x[c, e] = f(c − e)`` (W×W),
    float64, symmetric Toeplitz. Then ``(K α)`` as an image is ``K_y @ A @ K_xᵀ``.
    """
    kernel = _as_kernel(kernel)
    H, W = _check_shape(shape)
    _require_stationary(kernel, "Kronecker")
    if not kernel.separable:
        raise ValueError(f"the Kronecker form needs a separable kernel k(dy,dx) = f(dy) f(dx), "
                         f"and {kernel.describe()} is not separable; use method='fft' (exact for "
                         f"any stationary kernel) or method='dense' (grids up to 64×64)")
    a = np.arange(H, dtype=np.float64)
    c = np.arange(W, dtype=np.float64)
    Ky = kernel.factor(a[:, None] - a[None, :])                          # (H, H)
    Kx = kernel.factor(c[:, None] - c[None, :])                          # (W, W)
    return np.ascontiguousarray(Ky), np.ascontiguousarray(Kx)


#: Stencil values below this fraction of the peak are treated as 0 when sizing the FFT (they
#: change K α by less than float64 round-off).
TAIL_TOL = 1e-16


def effective_radius(kernel, shape, tail_tol=TAIL_TOL):
    """Largest row / column offset ``(Ry, Rx)`` at which the stencil of an H×W grid still exceeds
    ``tail_tol`` × its peak (at most ``(H−1, W−1)``). Gaussian σ = 10: (85, 85)."""
    H, W = _check_shape(shape)
    S = np.abs(kernel.stencil(H, W))                                     # (2H-1, 2W-1)
    peak = float(S.max())
    if peak == 0:
        return 0, 0
    rows = np.nonzero(S.max(axis=1) > tail_tol * peak)[0] - (H - 1)      # offsets kept
    cols = np.nonzero(S.max(axis=0) > tail_tol * peak)[0] - (W - 1)
    return int(np.abs(rows).max()), int(np.abs(cols).max())


def fft_sizes(shape, radius=None):
    """Circular FFT grid ``(Ly, Lx)`` for the exact linear product.

    With stencil radius ``(Ry, Rx)`` (default the full ``(H−1, W−1)``), the circular convolution
    equals the linear one on the H×W grid when ``Ly ≥ H + Ry`` and ``Lx ≥ W + Rx``: offsets
    ``|d| ≤ R`` land on distinct torus positions and every larger offset ``|d| < H`` lands on a
    zero. Returns the smallest fast sizes satisfying that (512×512 for a full 256×256 stencil,
    360×360 for a Gaussian σ = 10 whose effective radius is 85).
    """
    H, W = _check_shape(shape)
    Ry, Rx = (H - 1, W - 1) if radius is None else (min(int(radius[0]), H - 1),
                                                     min(int(radius[1]), W - 1))
    return (sfft.next_fast_len(H + Ry, real=True), sfft.next_fast_len(W + Rx, real=True))


@lru_cache(maxsize=32)
def _plan_cached(kernel, H, W, dtype_str):
    Ry, Rx = effective_radius(kernel, (H, W))
    Ly, Lx = fft_sizes((H, W), (Ry, Rx))
    S = kernel.stencil(H, W)[H - 1 - Ry:H + Ry, W - 1 - Rx:W + Rx]       # (2Ry+1, 2Rx+1)
    wrap = np.zeros((Ly, Lx))
    wrap[:2 * Ry + 1, :2 * Rx + 1] = S
    wrap = np.roll(wrap, (-Ry, -Rx), axis=(0, 1))                        # k(0,0) at [0, 0]
    spec = sfft.rfft2(wrap)                                              # (Ly, Lx//2+1) complex
    scale = max(1e-300, float(np.max(np.abs(spec))))
    if float(np.max(np.abs(spec.imag))) <= 1e-12 * scale:               # even stencil: real
        spec = spec.real
        spec = spec.astype(np.float32 if dtype_str == "float32" else np.float64)
    else:
        spec = spec.astype(np.complex64 if dtype_str == "float32" else np.complex128)
    spec.setflags(write=False)
    return spec, (Ly, Lx)


def fft_plan(kernel, shape, dtype=np.float64):
    """Cached ``(spectrum, (Ly, Lx))`` of the exact FFT product for a kernel and grid.

    The stencil ``k(dy, dx)``, cut to its effective radius (:func:`effective_radius`: taps below
    1e-16 of the peak are dropped — a float64 round-off-level change), is wrapped onto the
    ``Ly×Lx`` torus of :func:`fft_sizes` (offset ``d`` at index ``d mod L``) and transformed with
    ``rfft2``. The circular convolution of the zero-padded field with it equals the linear
    convolution on every pixel of the H×W grid, i.e. ``K α``. The spectrum ``(Ly, Lx//2 + 1)`` is
    real for even kernels (all Gram kernels), complex otherwise; read-only; 32 plans cached.

    Note: the spectrum's values are the eigenvalues of the *circulant embedding*, not of ``K``;
    they can be negative even when ``K`` is PSD.
    """
    kernel = _as_kernel(kernel)
    H, W = _check_shape(shape)
    _require_stationary(kernel, "FFT")
    return _plan_cached(kernel, H, W, np.dtype(dtype).name)


def fft_spectrum(kernel, shape, dtype=np.float64):
    """The cached spectrum of :func:`fft_plan` (without the grid size)."""
    return fft_plan(kernel, shape, dtype)[0]


# --------------------------------------------------------------------------------------------
# the slow reference
# --------------------------------------------------------------------------------------------
def gram_apply_reference(kernel, alpha):
    """Slow, obviously correct ``u[p] = Σ_q k(p, q) α[q]``, one output pixel at a time.

    Inputs: kernel; alpha ``(H, W)`` or ``(N, C, H, W)`` (tiny grids only: O((HW)²) work).
    Returns: u with alpha's shape, float64.
    """
    kernel = _as_kernel(kernel)
    H, W = alpha.shape[-2:]
    x = np.asarray(alpha, dtype=np.float64).reshape(-1, H, W)            # (B, H, W)
    rr, cc = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64),
                         indexing="ij")                                  # (H, W) each
    out = np.zeros_like(x)
    for r in range(H):
        for c in range(W):
            if kernel.stationary:
                kvals = kernel(r - rr, c - cc)                           # (H, W): k(p - q)
            else:
                p = np.array([r, c], dtype=np.float64)
                kvals = kernel.pair(p[None, None, :], np.stack([rr, cc], axis=-1))
            out[:, r, c] = np.sum(kvals[None] * x, axis=(1, 2))
    return out.reshape(alpha.shape)


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------
class GramOperator:
    """Base of the ``u = K α`` operators on one H×W grid.

    ``apply(α)`` / ``op(α)``: α ``(H, W)`` or ``(N, C, H, W)`` (every channel gets the same K),
    float32 or float64; returns u of the same shape and dtype.
    ``forward(α) -> (u, cache)`` and ``backward(du, cache) -> dα`` (= ``Kᵀ du`` = ``K du``).
    """
    method = "base"

    def __init__(self, kernel, shape):
        self.kernel = _as_kernel(kernel)
        self.shape = _check_shape(shape)

    # subclasses implement these on contiguous (B, H, W) arrays
    def _apply(self, x):
        raise NotImplementedError

    def _apply_t(self, x):
        return self._apply(x)

    def apply(self, alpha):
        """``u = K α`` for α ``(H, W)`` or ``(N, C, H, W)``; same shape and dtype."""
        x = _split_alpha(alpha, *self.shape)                             # (B, H, W)
        return self._apply(x).reshape(alpha.shape)

    __call__ = apply

    def apply_transpose(self, v):
        """``Kᵀ v`` (equal to ``K v`` for every symmetric kernel)."""
        x = _split_alpha(v, *self.shape, name="v")
        return self._apply_t(x).reshape(v.shape)

    def forward(self, alpha):
        """Inputs: alpha ``(H, W)`` or ``(N, C, H, W)``. Returns ``(u, cache)``, u like alpha."""
        u = self.apply(alpha)
        return u, {"shape": alpha.shape, "dtype": alpha.dtype}

    def backward(self, du, cache):
        """Inputs: du (dL/du, u's shape), the forward cache. Returns dα = Kᵀ du, alpha's shape."""
        if du.shape != cache["shape"]:
            raise ValueError(f"du has shape {du.shape} but the forward output had shape "
                             f"{cache['shape']}")
        if du.dtype != cache["dtype"]:
            raise TypeError(f"du has dtype {du.dtype} but the forward pass ran in "
                            f"{cache['dtype']}; use one float dtype")
        return self.apply_transpose(du)

    def __repr__(self):
        return f"{type(self).__name__}({self.kernel.describe()}, shape={self.shape})"


class DenseGram(GramOperator):
    """``K α`` with the explicit (HW)×(HW) Gram matrix: one GEMM ``(B, HW) @ Kᵀ``.

    Built once (float64, plus a float32 copy on first float32 use). Refuses grids above
    ``max_pixels`` (default 4096 = 64×64, 134 MB) with a message naming the exact alternatives.
    Works with non-stationary kernels too. ``K`` is exposed as ``op.K``.
    """
    method = "dense"

    def __init__(self, kernel, shape, max_pixels=MAX_DENSE_PIXELS):
        super().__init__(kernel, shape)
        self.K = gram_matrix(self.kernel, self.shape, max_pixels=max_pixels)   # (HW, HW)
        self._K32 = None

    def _mat(self, dtype):
        if dtype == np.float32:
            if self._K32 is None:
                self._K32 = self.K.astype(np.float32)
            return self._K32
        return self.K

    # (K @ Xᵀ)ᵀ rather than X @ Kᵀ: NumPy's float32 path for a skinny left operand was 10× slower
    # here (measured 79 ms vs 6.5 ms for (4, 4096) @ (4096, 4096)).
    def _apply(self, x):
        B, H, W = x.shape
        K = self._mat(x.dtype)
        return np.ascontiguousarray((K @ x.reshape(B, H * W).T).T).reshape(B, H, W)  # (B, HW)

    def _apply_t(self, x):
        B, H, W = x.shape
        K = self._mat(x.dtype)
        return np.ascontiguousarray((K.T @ x.reshape(B, H * W).T).T).reshape(B, H, W)


class KroneckerGram(GramOperator):
    """``K α = K_y A K_xᵀ`` for a separable kernel (K = K_y ⊗ K_x): two GEMMs per field."""
    method = "kronecker"

    def __init__(self, kernel, shape):
        super().__init__(kernel, shape)
        self.Ky, self.Kx = kronecker_factors(self.kernel, self.shape)   # (H, H), (W, W)
        self._f32 = None

    def _factors(self, dtype):
        if dtype == np.float32:
            if self._f32 is None:
                self._f32 = (self.Ky.astype(np.float32), self.Kx.astype(np.float32))
            return self._f32
        return self.Ky, self.Kx

    # Two large GEMMs for the whole batch (not two per field): NumPy's stacked float32 matmul took
    # a slow non-BLAS path here (32 ms vs 0.8 ms for 4 fields of 256×256), and on a loaded
    # 2-core machine every multi-threaded OpenBLAS call can stall for a scheduler tick, so fewer
    # calls are more robust. The transposes are 1 MB copies.
    def _apply(self, x):
        B, H, W = x.shape
        Ky, Kx = self._factors(x.dtype)
        t = (x.reshape(B * H, W) @ Kx).reshape(B, H, W)                  # A K_xᵀ (K_x = K_xᵀ)
        t = np.ascontiguousarray(t.transpose(1, 0, 2)).reshape(H, B * W)  # (H, B·W)
        y = (Ky @ t).reshape(H, B, W)                                    # K_y (A K_xᵀ)
        return np.ascontiguousarray(y.transpose(1, 0, 2))                # (B, H, W)


class FFTGram(GramOperator):
    """Exact ``K α`` for any stationary kernel by FFT (zero-padded linear convolution).

    The field is zero-padded to ``(Ly, Lx)`` ≥ (H + Ry, W + Rx) (:func:`fft_plan`: 512×512 for a
    256×256 grid and a heavy-tailed kernel, 360×360 for a Gaussian σ = 10 whose taps beyond 85
    pixels are below 1e-16), multiplied by the cached kernel spectrum and cropped back.
    Pruned transforms: the row rFFT runs only on the H non-zero rows, the inverse column FFT is
    cropped to H rows before the last inverse rFFT. float32 inputs are transformed in single
    precision. ``workers`` is passed to scipy.fft (default: all cores).
    """
    method = "fft"

    def __init__(self, kernel, shape, workers=-1):
        super().__init__(kernel, shape)
        _require_stationary(self.kernel, "FFT")
        self.workers = workers
        self.L = fft_plan(self.kernel, self.shape)[1]                    # build + cache now

    def spectrum(self, dtype=np.float64):
        return fft_spectrum(self.kernel, self.shape, dtype)

    def _conv(self, x, spec):
        B, H, W = x.shape
        Ly, Lx = self.L
        X = sfft.rfft(x, n=Lx, axis=-1, workers=self.workers)            # (B, H, Lx//2+1)
        X = sfft.fft(X, n=Ly, axis=-2, workers=self.workers, overwrite_x=True)  # (B, Ly, .)
        X *= spec
        X = sfft.ifft(X, axis=-2, workers=self.workers, overwrite_x=True)[:, :H]  # (B, H, .)
        y = sfft.irfft(X, n=Lx, axis=-1, workers=self.workers)           # (B, H, Lx)
        return np.ascontiguousarray(y[:, :, :W])                         # (B, H, W)

    def _apply(self, x):
        return self._conv(x, self.spectrum(x.dtype))

    def _apply_t(self, x):
        spec = self.spectrum(x.dtype)
        return self._conv(x, spec if spec.dtype.kind == "f" else np.conj(spec))


class ConvGram(GramOperator):
    """The approximation of eq. 10: a same-size, zero-padded 13×13 (``size``) filter.

    The filter is ``kernel.window(size)``, ``w[h + dy, h + dx] = k(dy, dx)`` (the reduced K̃ of
    eq. 9 cut to 13×13), or an explicit ``weights`` array ``(k, k)``. It runs through the Numba
    depthwise op (:func:`regnp.ops.depthwise.depthwise_conv2d_forward`, cross-correlation, the
    meta-regularization layer's op); for the even filters of a kernel that is the convolution
    ``K̃ * α`` of eq. 10. It equals exact ``K α`` when the kernel is 0 outside the window
    (e.g. Wendland with radius ≤ h + 1 = 7). Works on any grid size; ``shape`` may be None.
    """
    method = "conv13"

    def __init__(self, kernel=None, shape=None, size=13, weights=None):
        if weights is not None:
            if kernel is not None:
                raise ValueError("give either a kernel or weights, not both")
            kernel = StencilKernel(np.asarray(weights))
        if kernel is None:
            raise ValueError("ConvGram needs a kernel (its 13×13 window is used) or weights")
        self.kernel = _as_kernel(kernel)
        _require_stationary(self.kernel, "convolution")
        self.shape = None if shape is None else _check_shape(shape)
        if isinstance(self.kernel, StencilKernel) and weights is not None:
            self.weights = np.array(self.kernel.weights)
        else:
            # the StencilKernel convention is w[h - d] = k(d): flip so the layer computes K α
            self.weights = np.ascontiguousarray(self.kernel.window(size)[::-1, ::-1])
        self.size = self.weights.shape[0]
        self._w = {}

    def _filt(self, dtype):
        key = np.dtype(dtype).name
        if key not in self._w:
            self._w[key] = np.ascontiguousarray(self.weights[None].astype(dtype))   # (1, k, k)
        return self._w[key]

    def _as4(self, alpha, name):
        if not isinstance(alpha, np.ndarray):
            raise TypeError(f"{name} must be a numpy array (H, W) or (N, C, H, W), got "
                            f"{type(alpha).__name__}")
        if alpha.ndim not in (2, 4):
            raise ValueError(f"{name} must be a field (H, W) or a batch (N, C, H, W), got shape "
                             f"{alpha.shape}")
        check_array(name, alpha)
        if self.shape is not None and alpha.shape[-2:] != self.shape:
            raise ValueError(f"{name} has grid {alpha.shape[-2:]} but this operator was built for "
                             f"{self.shape}")
        return alpha[None, None] if alpha.ndim == 2 else alpha

    def forward(self, alpha):
        """Inputs: alpha ``(H, W)`` or ``(N, C, H, W)``. Returns ``(u, cache)``."""
        from ..ops.depthwise import depthwise_conv2d_forward
        x = self._as4(alpha, "alpha")
        u, cache = depthwise_conv2d_forward(np.ascontiguousarray(x), self._filt(x.dtype))
        return u.reshape(alpha.shape), {"conv": cache, "shape": alpha.shape,
                                        "dtype": alpha.dtype}

    def backward(self, du, cache):
        """Inputs: du (u's shape), cache. Returns dα (the filter is fixed here: dw is dropped)."""
        from ..ops.depthwise import depthwise_conv2d_backward
        if du.shape != cache["shape"]:
            raise ValueError(f"du has shape {du.shape} but the forward output had shape "
                             f"{cache['shape']}")
        d4 = du[None, None] if du.ndim == 2 else du
        dx, _ = depthwise_conv2d_backward(np.ascontiguousarray(d4), cache["conv"])
        return dx.reshape(cache["shape"])

    def apply(self, alpha):
        return self.forward(alpha)[0]

    __call__ = apply

    def apply_transpose(self, v):
        return self.backward(v, self.forward(np.zeros_like(v))[1])

    def __repr__(self):
        return f"ConvGram({self.kernel.describe()}, size={self.size})"


def make_gram(kernel, shape, method="auto", width=None, **options):
    """Build a Gram operator.

    Inputs:
    - kernel: a Kernel, or a name (``gaussian``, ``wendland``, ...) together with ``width``.
    - shape: grid ``(H, W)``.
    - method: ``auto`` (Kronecker for separable kernels, else FFT), ``dense``, ``kronecker``,
      ``fft`` or ``conv13`` (the 13×13 approximation; ``size=`` changes the window).
    - options: passed to the operator (``max_pixels`` for dense, ``workers`` for fft, ``size``
      for conv13).
    Returns: a :class:`GramOperator` (``ConvGram`` for conv13).
    """
    if not isinstance(kernel, Kernel):
        if width is None:
            raise ValueError("give a Kernel object, or a kernel name together with width=")
        kernel = make_kernel(kernel, width)
    m = str(method).lower()
    if m == "auto":
        if not kernel.stationary:
            m = "dense"
        else:
            m = "kronecker" if kernel.separable else "fft"
    if m == "dense":
        return DenseGram(kernel, shape, **options)
    if m == "kronecker":
        return KroneckerGram(kernel, shape, **options)
    if m == "fft":
        return FFTGram(kernel, shape, **options)
    if m in ("conv13", "conv"):
        return ConvGram(kernel, shape, **options)
    raise ValueError(f"unknown method {method!r}; choose one of ('auto',) + {METHODS}")


# --------------------------------------------------------------------------------------------
# timing (python -m regnp.rkhs.gram): medians of the K·α products at the sizes the models use
# --------------------------------------------------------------------------------------------
def benchmark(reps=50, seed=0):
    """Median milliseconds of K·α at 256×256 (Kronecker, FFT, 13×13 conv) and 64×64 (dense);
    returns a dict and prints a table.

    - Kronecker and FFT (Gaussian σ = 10; FFT also Matérn-3/2) on a float32 (2, 2, 256, 256)
      field, spectrum / factors cached (built before timing);
    - dense matvec on a float32 (2, 2, 64, 64) field, K built once (build time reported).
    """
    import time

    from ..metrics import Timer
    from .kernels import Gaussian, Matern32

    def med(f):
        return 1e3 * Timer.measure(f, repeats=reps, warmup=1)     # median ms after a warm-up

    rng = np.random.default_rng(seed)
    a256 = rng.standard_normal((2, 2, 256, 256)).astype(np.float32)
    a64 = rng.standard_normal((2, 2, 64, 64)).astype(np.float32)
    out = {}
    g = Gaussian(10.0)
    kr = KroneckerGram(g, (256, 256))
    out["kronecker_256_f32"] = med(lambda: kr.apply(a256))
    ff = FFTGram(g, (256, 256))
    out["fft_256_f32"] = med(lambda: ff.apply(a256))
    fm = FFTGram(Matern32(5.0), (256, 256))
    out["fft_matern_256_f32"] = med(lambda: fm.apply(a256))
    a256d = a256.astype(np.float64)
    out["fft_256_f64"] = med(lambda: ff.apply(a256d))
    t = time.perf_counter()
    de = DenseGram(g, (64, 64))
    out["dense_64_build_s"] = time.perf_counter() - t
    out["dense_64_f32"] = med(lambda: de.apply(a64))
    a64d = a64.astype(np.float64)
    out["dense_64_f64"] = med(lambda: de.apply(a64d))
    cv = ConvGram(g)
    out["conv13_256_f32"] = med(lambda: cv.apply(a256))
    for key, v in out.items():
        unit = "s" if key.endswith("_s") else "ms"
        print(f"{key:<22} {v:8.2f} {unit}")
    return out


if __name__ == "__main__":
    benchmark()              # `python -m` imports regnp first: its threading defaults apply
