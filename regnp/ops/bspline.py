"""Cubic B-spline upsampling: a coarse grid of control-point values → a dense field (+ adjoint).

DIRNet's decoder. The network predicts one displacement vector per control point on a grid with
spacing ``s = factor`` pixels; the dense field is the cubic B-spline *approximation* (free-form
deformation, Rueckert et al. 1999) with those values as coefficients::

    u(y, x) = Σ_k Σ_l  c[k, l] · β3(t_y − k) · β3(t_x − l)

    β3(r) = 2/3 − r² + |r|³/2      for |r| < 1
          = (2 − |r|)³ / 6          for 1 <= |r| < 2
          = 0                       otherwise

Grid geometry (the half-pixel convention of ``upsample_bilinear2x``): control point ``k`` sits at
the *centre* of the ``s × s`` block of pixels it stands for, pixel coordinate ``(k + 0.5)·s − 0.5``,
so output pixel ``o`` has grid coordinate ``t = (o + 0.5)/s − 0.5``. An encoder that halves the
image ``L`` times gives exactly one control point per ``2^L × 2^L`` block, and a grid of
``(Hc, Wc)`` points decodes to ``(Hc·s, Wc·s)`` pixels.

Each output pixel reads 4 × 4 control points (``floor(t) − 1 .. floor(t) + 2`` on each axis). Near
the border some of them lie outside the grid (indices −2, −1 and Hc, Hc+1). **Border convention**
(``border=``):

* ``"linear"`` (default): the missing coefficients continue the grid linearly,
  ``c[−j] = c[0] − j (c[1] − c[0])`` and ``c[n−1+j] = c[n−1] + j (c[n−1] − c[n−2])``. Because
  cubic B-splines reproduce polynomials of degree <= 1, constant **and linear** (affine) fields
  are then reproduced exactly everywhere, border included. Needs >= 2 control points per axis.
* ``"clamp"``: the missing coefficients repeat the edge value. Constants are reproduced
  everywhere; a linear field only where all 4 taps are inside the grid, ``1 <= t <= n − 2``
  (the field flattens within ~1.5 control spacings of the border).

Note that a B-spline approximates rather than interpolates: the field at control point ``k`` is
``(c[k−1] + 4 c[k] + c[k+1]) / 6``, equal to ``c[k]`` only where the coefficients are linear.
The values are displacements in output (full-resolution) pixels; no rescaling happens here.

The map is linear and separable, ``u = By · c · Bxᵀ`` with fixed ``(n·s, n)`` matrices (they
already contain the border rule), so the forward is two small matrix products per plane and the
backward — the exact adjoint — is ``dc = Byᵀ · du · Bx``. At ``(2, 2, 32, 32) → 256×256`` that is
~10 MFLOP, under a millisecond in all (the matrices are built once per size and cached); no Numba
kernel is needed. The slow reference — first in this file, the definition — evaluates β3 pixel by
pixel with explicit loops and the border rule tap by tap; ``bspline_upsample_forward`` /
``backward`` must equal ``bspline_upsample_forward_reference`` / ``backward_reference``.
"""
from functools import lru_cache

import numpy as np

from .._checks import check_array, check_positive_int

BORDERS = ("linear", "clamp")


def bspline_kernel(r):
    """The cubic B-spline β3(r) (vectorised): support (−2, 2), sums to 1 over integer shifts."""
    a = np.abs(np.asarray(r, dtype=np.float64))
    return np.where(a < 1, 2.0 / 3.0 - a ** 2 + a ** 3 / 2,
                    np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _check_border(border, n, axis):
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    if border == "linear" and n < 2:
        raise ValueError(f"the control grid has {n} point(s) along {axis}; border='linear' "
                         f"extrapolates from the two outermost points and needs at least 2 (use a "
                         f"larger image or a smaller spacing, or border='clamp')")


def _grid_coordinates(n, factor):
    """Grid coordinate t of each of the n·factor output pixels, and the first tap floor(t) − 1."""
    o = np.arange(n * factor)
    t = (o + 0.5) / factor - 0.5                                  # (n·s,)
    return t, np.floor(t).astype(np.int64) - 1


# ---------------------------------------------------------------------------------------------
# The definition: slow references (β3 evaluated pixel by pixel, the border rule tap by tap).
# The matrix form below must equal them.
# ---------------------------------------------------------------------------------------------
def _coef_reference(c2d, k, l, border):
    """Coefficient (k, l) of one plane with the border rule applied tap by tap (k, l may be
    outside the grid)."""
    Hc, Wc = c2d.shape

    def axis_terms(i, n):                     # list of (index, weight) giving the extended value
        if 0 <= i < n:
            return [(i, 1.0)]
        if border == "clamp":
            return [(min(max(i, 0), n - 1), 1.0)]
        if i < 0:
            j = -i
            return [(0, 1.0 + j), (1, -float(j))]
        j = i - (n - 1)
        return [(n - 1, 1.0 + j), (n - 2, -float(j))]

    return sum(wa * wb * c2d[a, b] for a, wa in axis_terms(k, Hc) for b, wb in axis_terms(l, Wc))


def bspline_upsample_forward_reference(c, factor, border="linear"):
    """Pixel-by-pixel evaluation of ``u(o) = Σ_kl c_kl β3(t_y − k) β3(t_x − l)`` (slow)."""
    factor = _check_inputs(c, factor, border)
    N, C, Hc, Wc = c.shape
    H, W = Hc * factor, Wc * factor
    u = np.zeros((N, C, H, W))
    for n in range(N):
        for ch in range(C):
            for i in range(H):
                ty = (i + 0.5) / factor - 0.5
                for j in range(W):
                    tx = (j + 0.5) / factor - 0.5
                    acc = 0.0
                    for k in range(int(np.floor(ty)) - 1, int(np.floor(ty)) + 3):
                        for l in range(int(np.floor(tx)) - 1, int(np.floor(tx)) + 3):
                            w = float(bspline_kernel(ty - k) * bspline_kernel(tx - l))
                            acc += w * _coef_reference(c[n, ch], k, l, border)
                    u[n, ch, i, j] = acc
    return u.astype(c.dtype), (c.shape, c.dtype, factor, border)


def bspline_upsample_backward_reference(du, cache):
    """Adjoint by brute force: dc[e] = <du, forward(e)> for every unit control grid e (slow)."""
    shape, dt, factor, border = cache
    N, C, Hc, Wc = shape
    dc = np.zeros(shape)
    e = np.zeros((1, 1, Hc, Wc))
    for k in range(Hc):
        for l in range(Wc):
            e[...] = 0
            e[0, 0, k, l] = 1
            basis = bspline_upsample_forward_reference(e, factor, border)[0][0, 0]   # (H, W)
            dc[:, :, k, l] = np.einsum("ncij,ij->nc", du, basis)
    return dc.astype(dt)


# ---------------------------------------------------------------------------------------------
# The fast path: the separable matrix form u = By · c · Bxᵀ (must equal the references above)
# ---------------------------------------------------------------------------------------------
def bspline_matrix(n, factor, border="linear"):
    """The ``(n·factor, n)`` float64 matrix B of one axis: ``u_axis = B · c_axis``.

    Row o holds the four weights β3(t_o − k) of output pixel o, with the taps outside the grid
    folded back onto the grid by the border rule (see the module docstring)."""
    n = check_positive_int("n", n)
    factor = check_positive_int("factor", factor)
    _check_border(border, n, "this axis")
    t, k0 = _grid_coordinates(n, factor)
    B = np.zeros((n * factor, n))
    rows = np.arange(n * factor)
    for d in range(4):
        k = k0 + d                                                # (n·s,) tap index, may be outside
        w = bspline_kernel(t - k)
        lo, hi = k < 0, k > n - 1
        inside = ~(lo | hi)
        np.add.at(B, (rows[inside], k[inside]), w[inside])
        if border == "clamp":
            np.add.at(B, (rows[lo], np.zeros(lo.sum(), np.int64)), w[lo])
            np.add.at(B, (rows[hi], np.full(hi.sum(), n - 1)), w[hi])
        else:
            j = -k[lo]                                            # c[-j] = (1+j) c[0] - j c[1]
            np.add.at(B, (rows[lo], np.zeros(j.size, np.int64)), w[lo] * (1 + j))
            np.add.at(B, (rows[lo], np.ones(j.size, np.int64)), -w[lo] * j)
            j = k[hi] - (n - 1)                                   # c[n-1+j] = (1+j) c[n-1] - j c[n-2]
            np.add.at(B, (rows[hi], np.full(j.size, n - 1)), w[hi] * (1 + j))
            np.add.at(B, (rows[hi], np.full(j.size, n - 2)), -w[hi] * j)
    return B


@lru_cache(maxsize=64)
def _cached_matrix(n, factor, border, dtype):
    """bspline_matrix in the given dtype, built once per (n, factor, border, dtype), read-only."""
    B = bspline_matrix(n, factor, border).astype(dtype)
    B.setflags(write=False)
    return B


def _check_inputs(c, factor, border):
    check_array("c", c, ndim=4)
    factor = check_positive_int("factor", factor)
    N, C, Hc, Wc = c.shape
    _check_border(border, Hc, "the rows (axis 2)")
    _check_border(border, Wc, "the columns (axis 3)")
    return factor


def bspline_upsample_forward(c, factor, border="linear"):
    """Cubic B-spline decoding of control-point values to a dense field; must equal
    ``bspline_upsample_forward_reference``.

    Inputs:
    - c: control-point values ``(N, C, Hc, Wc)`` (float32/float64), e.g. C = 2 displacement
      components in output pixels.
    - factor: control-point spacing in output pixels (positive int, e.g. 8 or 16).
    - border: ``"linear"`` (default) or ``"clamp"``, the rule for taps outside the grid.
    Returns: u ``(N, C, Hc·factor, Wc·factor)`` of c's dtype, cache.
    """
    factor = _check_inputs(c, factor, border)
    N, C, Hc, Wc = c.shape
    By = _cached_matrix(Hc, factor, border, c.dtype.str)             # (H, Hc)
    Bx = _cached_matrix(Wc, factor, border, c.dtype.str)             # (W, Wc)
    planes = np.ascontiguousarray(c).reshape(N * C, Hc, Wc)          # (M, Hc, Wc)
    tmp = planes @ Bx.T                                               # (M, Hc, W)
    u = By @ tmp                                                      # (M, H, W)
    return u.reshape(N, C, Hc * factor, Wc * factor), (c.shape, c.dtype, By, Bx)


def bspline_upsample_backward(du, cache):
    """The exact adjoint of :func:`bspline_upsample_forward`; must equal
    ``bspline_upsample_backward_reference``.

    Inputs: du ``(N, C, Hc·factor, Wc·factor)``, cache.
    Returns: dc ``(N, C, Hc, Wc)`` = ``Byᵀ · du · Bx`` per plane.
    """
    (N, C, Hc, Wc), dt, By, Bx = cache
    H, W = By.shape[0], Bx.shape[0]
    check_array("du", du, ndim=4, dtype=dt, shape=(N, C, H, W))
    planes = np.ascontiguousarray(du).reshape(N * C, H, W)            # (M, H, W)
    tmp = By.T @ planes                                               # (M, Hc, W)
    dc = tmp @ Bx                                                     # (M, Hc, Wc)
    return dc.reshape(N, C, Hc, Wc)
