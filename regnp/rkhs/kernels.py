"""Reproducing kernels on a pixel grid (paper section 4.1–4.2).

A kernel ``k(p, q)`` gives the Gram matrix ``K[i, j] = k(p_i, p_j)`` of eq. 6, and the
displacement is ``u = K α``. Every kernel here is

* **stationary** (translation invariant): ``k(p, q) = k(p − q)``, written ``k(dy, dx)`` with
  offsets in **pixels** (``dy`` along rows, ``dx`` along columns — the same axes as channel 0 and
  channel 1 of a displacement field);
* **even**: ``k(d) = k(−d)`` (so ``K`` is symmetric), and in fact even in each axis separately;
* **positive definite** as a function on R², so every Gram matrix it builds is PSD.

+---------------------------+----------------------------------------+-----------+-----------+
| class                     | k as a function of r = |d| (pixels)     | width     | separable |
+===========================+========================================+===========+===========+
| :class:`Gaussian`         | exp(−r² / 2σ²)                         | σ         | yes       |
| :class:`Wendland`         | (1 − r/ρ)₊⁴ (4 r/ρ + 1)   (ψ₃,₁)       | ρ support | no        |
| :class:`Matern32`         | (1 + √3 r/ℓ) exp(−√3 r/ℓ)              | ℓ         | no        |
| :class:`Exponential`      | exp(−r/ℓ)          (Matérn-1/2)        | ℓ         | no        |
| :class:`InverseMultiquadric` | (1 + r²/c²)^(−1/2)                  | c         | no        |
+---------------------------+----------------------------------------+-----------+-----------+

Only the Gaussian is separable, ``k(dy, dx) = f(dy) f(dx)``; that is what gives the Kronecker
form ``K = K_y ⊗ K_x`` of paper eq. 8. The Wendland function has compact support: ``k = 0`` at
distance ≥ ρ, so with ρ ≤ 7 a 13×13 filter represents ``K`` *exactly* (eq. 10 becomes an
equality). Thin-plate splines are left out on purpose: they are only *conditionally* positive
definite, so their Gram matrix is not PSD and ``αᵀKα`` is not a norm.

Two more kernel types exist for experiments:

* :class:`StencilKernel` — the stationary "kernel" of an arbitrary k×k filter ``w`` (e.g. a
  learned meta-regularization filter): its Gram matrix is exactly the matrix of the same-size,
  zero-padded cross-correlation with ``w`` (the 13×13 layer). It need not be PSD — that is the
  point of checking it.
* :class:`FunctionKernel` — any user function ``k(p, q)``, possibly **non-stationary**; only the
  dense Gram matrix can use it (the Kronecker and FFT forms refuse it with a clear message).

Every kernel is an immutable (hashable) object, so Gram spectra can be cached per kernel and grid.
"""
from dataclasses import dataclass, field
import math

import numpy as np

__all__ = ["Kernel", "Gaussian", "Wendland", "Matern32", "Exponential", "InverseMultiquadric",
           "StencilKernel", "FunctionKernel", "make_kernel", "KERNELS"]


def _positive_width(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a positive number (pixels), got {type(v).__name__}")
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive, finite number of pixels, got {v!r}")
    return v


class Kernel:
    """Base class of the stationary kernels: ``k(dy, dx)`` on pixel offsets.

    Subclasses define :meth:`radial` (a function of the distance r in pixels) or override
    :meth:`__call__`. Attributes: ``name``, ``separable``, ``stationary``, ``width`` (the width
    parameter in pixels), ``support_radius`` (``inf`` unless compactly supported).
    """
    name = "kernel"
    separable = False
    stationary = True

    @property
    def width(self):
        raise NotImplementedError

    @property
    def support_radius(self):
        """Distance (pixels) beyond which ``k`` is exactly 0; ``inf`` when never."""
        return math.inf

    def radial(self, r):
        raise NotImplementedError

    def __call__(self, dy, dx):
        """Kernel value at pixel offsets ``(dy, dx)`` (broadcasting arrays), float64."""
        dy = np.asarray(dy, dtype=np.float64)
        dx = np.asarray(dx, dtype=np.float64)
        return self.radial(np.sqrt(dy * dy + dx * dx))

    def factor(self, d):
        """1-D factor ``f`` with ``k(dy, dx) = f(dy) f(dx)`` (separable kernels only)."""
        raise ValueError(f"the {self.name} kernel is not separable, so it has no 1-D factor "
                         f"k(dy,dx) = f(dy) f(dx); use the FFT form (method='fft') instead of "
                         f"the Kronecker form")

    def stencil(self, H, W):
        """The kernel on all offsets of an H×W grid: array ``(2H−1, 2W−1)``, float64.

        ``stencil[H−1 + dy, W−1 + dx] = k(dy, dx)`` for ``|dy| < H``, ``|dx| < W``: the centre
        entry ``[H−1, W−1]`` is ``k(0, 0)``. Every entry of the Gram matrix of the H×W grid is one
        of these values (``K[(a,c),(b,e)] = stencil[H−1 + a−b, W−1 + c−e]``).
        """
        dy = np.arange(-(H - 1), H, dtype=np.float64)[:, None]        # (2H-1, 1)
        dx = np.arange(-(W - 1), W, dtype=np.float64)[None, :]        # (1, 2W-1)
        return np.ascontiguousarray(np.broadcast_to(self(dy, dx), (2 * H - 1, 2 * W - 1)),
                                    dtype=np.float64)

    def window(self, size=13):
        """The ``size×size`` filter centred on ``k(0, 0)``: ``w[h+dy, h+dx] = k(dy, dx)``, h = size//2.

        This is the truncated filter of paper eq. 10 (the reduced K̃ cut to 13×13).
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 \
                or size % 2 == 0:
            raise ValueError(f"size must be a positive odd integer (the filter has a centre "
                             f"tap), got {size!r}")
        h = int(size) // 2
        d = np.arange(-h, h + 1, dtype=np.float64)
        return np.ascontiguousarray(self(d[:, None], d[None, :]), dtype=np.float64)

    def describe(self):
        return f"{self.name}(width={self.width:g})"


@dataclass(frozen=True)
class Gaussian(Kernel):
    """Gaussian kernel ``k(d) = exp(−|d|² / (2σ²))``, σ in pixels. Separable:
    ``k(dy, dx) = f(dy) f(dx)`` with ``f(t) = exp(−t² / 2σ²)``."""
    sigma: float
    name = "gaussian"
    separable = True

    def __post_init__(self):
        object.__setattr__(self, "sigma", _positive_width("sigma", self.sigma))

    @property
    def width(self):
        return self.sigma

    def radial(self, r):
        return np.exp(-0.5 * (np.asarray(r, dtype=np.float64) / self.sigma) ** 2)

    def __call__(self, dy, dx):
        return self.factor(dy) * self.factor(dx)

    def factor(self, d):
        return np.exp(-0.5 * (np.asarray(d, dtype=np.float64) / self.sigma) ** 2)


@dataclass(frozen=True)
class Wendland(Kernel):
    """Wendland's compactly supported ψ₃,₁: ``k = (1 − r/ρ)₊⁴ (4 r/ρ + 1)``, ρ = support radius.

    Positive definite on R^d for d ≤ 3 (so on 2-D grids), C² at the origin, and exactly 0 for
    distances ≥ ρ. With ρ ≤ 7 all its non-zero taps fit in a 13×13 window.
    """
    radius: float
    name = "wendland"

    def __post_init__(self):
        object.__setattr__(self, "radius", _positive_width("radius", self.radius))

    @property
    def width(self):
        return self.radius

    @property
    def support_radius(self):
        return self.radius

    def radial(self, r):
        t = np.asarray(r, dtype=np.float64) / self.radius
        s = np.clip(1.0 - t, 0.0, None)
        return s ** 4 * (4.0 * t + 1.0)


@dataclass(frozen=True)
class Matern32(Kernel):
    """Matérn-3/2 kernel ``k = (1 + √3 r/ℓ) exp(−√3 r/ℓ)``, ℓ in pixels. Not separable."""
    length: float
    name = "matern32"

    def __post_init__(self):
        object.__setattr__(self, "length", _positive_width("length", self.length))

    @property
    def width(self):
        return self.length

    def radial(self, r):
        t = math.sqrt(3.0) * np.asarray(r, dtype=np.float64) / self.length
        return (1.0 + t) * np.exp(-t)


@dataclass(frozen=True)
class Exponential(Kernel):
    """Exponential (Matérn-1/2) kernel ``k = exp(−r/ℓ)``, ℓ in pixels. Not separable
    (``exp(−|dy|/ℓ) exp(−|dx|/ℓ)`` would be, but that is a different, L1-distance kernel)."""
    length: float
    name = "exponential"

    def __post_init__(self):
        object.__setattr__(self, "length", _positive_width("length", self.length))

    @property
    def width(self):
        return self.length

    def radial(self, r):
        return np.exp(-np.asarray(r, dtype=np.float64) / self.length)


@dataclass(frozen=True)
class InverseMultiquadric(Kernel):
    """Inverse multiquadric ``k = (1 + r²/c²)^(−1/2)``, c in pixels. Positive definite in every
    dimension; heavy-tailed (decays like c/r), so truncating it to 13×13 loses a lot."""
    c: float
    name = "imq"

    def __post_init__(self):
        object.__setattr__(self, "c", _positive_width("c", self.c))

    @property
    def width(self):
        return self.c

    def radial(self, r):
        r = np.asarray(r, dtype=np.float64)
        return 1.0 / np.sqrt(1.0 + (r / self.c) ** 2)


@dataclass(frozen=True, eq=False)
class StencilKernel(Kernel):
    """The stationary kernel whose Gram matrix is the matrix of a k×k filter ``w`` (k odd).

    The 13×13 layer computes the zero-padded, same-size cross-correlation
    ``out[p] = Σ_d w[h + d] α[p + d]`` (h = k // 2). Written as ``out = K α`` that is
    ``K[p, q] = w[h + q − p]``, i.e. ``k(dy, dx) = w[h − dy, h − dx]`` and 0 for offsets outside
    the filter. For a centrosymmetric filter (``w == w[::-1, ::-1]``, true for every radially
    symmetric one) this is simply ``w[h + dy, h + dx]`` and ``K`` is symmetric; for other filters
    ``K`` is not symmetric and is not a Gram matrix (``symmetric`` tells which).

    The filter is copied to float64 and frozen (read-only); kernels compare equal by content.
    """
    weights: np.ndarray = field(repr=False)
    name = "stencil"

    def __post_init__(self):
        w = self.weights
        if not isinstance(w, np.ndarray):
            raise TypeError(f"weights must be a numpy array (k, k), got {type(w).__name__}")
        if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[0] % 2 == 0:
            raise ValueError(f"weights must be a square filter with odd side (k, k), got shape "
                             f"{w.shape}; a batch of C filters (C, k, k) needs one kernel per "
                             f"channel: StencilKernel(w[c])")
        if w.dtype.kind != "f":
            raise TypeError(f"weights has dtype {w.dtype}; pass a float filter")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights contains NaN/Inf values")
        w = np.array(w, dtype=np.float64)
        w.setflags(write=False)
        object.__setattr__(self, "weights", w)

    @property
    def size(self):
        return self.weights.shape[0]

    @property
    def width(self):
        return float(self.size)

    @property
    def support_radius(self):
        h = self.size // 2
        return math.hypot(h, h)

    @property
    def symmetric(self):
        """True when ``k(d) = k(−d)``, i.e. the filter is centrosymmetric and K is symmetric."""
        return bool(np.array_equal(self.weights, self.weights[::-1, ::-1]))

    def __call__(self, dy, dx):
        dy = np.asarray(dy)
        dx = np.asarray(dx)
        if np.any(dy != np.round(dy)) or np.any(dx != np.round(dx)):
            raise ValueError("a StencilKernel is only defined at integer pixel offsets")
        h = self.size // 2
        iy = h - np.rint(dy).astype(np.int64)
        ix = h - np.rint(dx).astype(np.int64)
        iy, ix = np.broadcast_arrays(iy, ix)
        inside = (iy >= 0) & (iy < self.size) & (ix >= 0) & (ix < self.size)
        out = np.zeros(iy.shape, dtype=np.float64)
        out[inside] = self.weights[iy[inside], ix[inside]]
        return out

    def __eq__(self, other):
        return isinstance(other, StencilKernel) and np.array_equal(self.weights, other.weights)

    def __hash__(self):
        return hash((self.weights.shape, self.weights.tobytes()))

    def describe(self):
        return f"stencil({self.size}x{self.size})"


@dataclass(frozen=True)
class FunctionKernel(Kernel):
    """A user kernel ``fn(p, q)`` on pixel coordinates, possibly **non-stationary**.

    ``fn`` receives two float64 arrays of points with shape ``(..., 2)`` (row, column) that
    broadcast against each other and returns the kernel values with the broadcast shape. Only
    the dense Gram matrix can use a non-stationary kernel. Declare ``stationary=True`` only when
    ``fn(p, q)`` depends on ``p − q`` alone; then ``k(dy, dx) = fn((dy, dx), (0, 0))``.
    """
    fn: object
    stationary: bool = False
    name = "function"

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"fn must be callable fn(p, q) -> values, got {type(self.fn).__name__}")

    @property
    def width(self):
        return math.nan

    def pair(self, p, q):
        return np.asarray(self.fn(np.asarray(p, np.float64), np.asarray(q, np.float64)),
                          dtype=np.float64)

    def __call__(self, dy, dx):
        if not self.stationary:
            raise ValueError("this FunctionKernel is not stationary: k(p, q) depends on more "
                             "than p − q, so it has no offset form k(dy, dx); only the dense "
                             "Gram matrix (method='dense') can use it")
        dy, dx = np.broadcast_arrays(np.asarray(dy, np.float64), np.asarray(dx, np.float64))
        p = np.stack([dy, dx], axis=-1)
        return self.pair(p, np.zeros_like(p))

    def describe(self):
        return f"function({getattr(self.fn, '__name__', 'fn')}, stationary={self.stationary})"


KERNELS = {
    "gaussian": Gaussian,
    "wendland": Wendland,
    "matern32": Matern32,
    "exponential": Exponential,
    "imq": InverseMultiquadric,
}


def make_kernel(name, width):
    """Kernel by name (``gaussian``, ``wendland``, ``matern32``, ``exponential``, ``imq``) and its
    width in pixels (σ, support radius ρ, length ℓ, length ℓ, scale c respectively)."""
    if isinstance(name, Kernel):
        return name
    key = str(name).lower().replace("-", "").replace("_", "")
    key = {"matern": "matern32", "matern3/2": "matern32", "inversemultiquadric": "imq",
           "laplace": "exponential", "rbf": "gaussian"}.get(key, key)
    if key not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose one of {sorted(KERNELS)}")
    return KERNELS[key](width)
