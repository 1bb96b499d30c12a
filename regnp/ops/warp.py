"""The spatial transformer: bilinear pull-back warping of an image by a displacement field.

Convention (the whole project uses it)::

    warped[n, c, i, j] = moving[n, c, i + u[n, 0, i, j], j + u[n, 1, i, j]]

``u`` is in pixels, channel 0 the row (y) offset, channel 1 the column (x) offset. Each output
pixel *pulls* its value from the sampling point ``(y, x) = (i + u_y, j + u_x)`` of the moving
image. So a constant ``u_x = +3`` gives ``warped[:, j] = moving[:, j + 3]``: the image content
moves 3 pixels to the **left**.

Bilinear interpolation. With ``y0 = floor(y)``, ``x0 = floor(x)``, ``wy = y - y0``, ``wx = x - x0``::

    warped = (1-wy)(1-wx) M[y0, x0]   + (1-wy) wx M[y0, x0+1]
           +   wy (1-wx) M[y0+1, x0]  +   wy  wx M[y0+1, x0+1]

**Zero outside:** each of the four neighbours that lies outside the image contributes 0 (as if
the image were padded with zeros). A sampling point half a pixel outside therefore gets half the
border value, one at least a full pixel outside gets 0.

Gradients (the two things the backward pass returns):

* ``dmoving``: ``warped`` is linear in ``moving``; its transpose *scatters* each ``dwarped``
  value back onto the four neighbours with the same bilinear weights.
* ``du``: with the neighbours fixed, ``warped`` is linear in ``wy`` and ``wx``, so
  ``d warped / d u_y = (1-wx)(M[y0+1,x0] - M[y0,x0]) + wx (M[y0+1,x0+1] - M[y0,x0+1])`` (the image's
  y-gradient at the sampled point, by finite differences of the neighbours) and likewise for x.
  At integer sampling coordinates the neighbours change, the derivative jumps (a kink); our
  backward uses the neighbours ``floor(y), floor(y)+1``, i.e. the right-hand derivative there.

Reading order: the slow loop references (``*_reference``, the definition) come first, then the
public ``warp_forward`` / ``warp_backward``, which run the Numba kernels of
``_fast/warp_kernels.py`` and must equal the references (tests assert it).
"""
import numba
import numpy as np

from .._checks import check_array, check_same_shape
from ._fast import warp_kernels as fast
from ._fast.threads import run

__all__ = ["warp_forward", "warp_backward", "warp_nearest", "warp_forward_reference",
           "warp_backward_reference"]


# ---------------------------------------------------------------------------------------------
# The definition: slow, obviously correct references (explicit loops); the fast path must equal
# them.
# ---------------------------------------------------------------------------------------------
def _pixel(m, y, x):
    """m[y, x] or 0 outside the image."""
    H, W = m.shape
    return m[y, x] if (0 <= y < H and 0 <= x < W) else 0.0


def warp_forward_reference(moving, u):
    """The definition of the warp, one pixel at a time (returns only ``warped``): the bilinear
    formula of the module docstring, each neighbour outside the image counting as 0."""
    N, C, H, W = moving.shape
    out = np.zeros_like(moving)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                y = i + float(u[n, 0, i, j])
                x = j + float(u[n, 1, i, j])
                y0, x0 = int(np.floor(y)), int(np.floor(x))
                wy, wx = y - y0, x - x0
                for c in range(C):
                    m = moving[n, c]
                    out[n, c, i, j] = ((1 - wy) * (1 - wx) * _pixel(m, y0, x0)
                                       + (1 - wy) * wx * _pixel(m, y0, x0 + 1)
                                       + wy * (1 - wx) * _pixel(m, y0 + 1, x0)
                                       + wy * wx * _pixel(m, y0 + 1, x0 + 1))
    return out


def warp_backward_reference(dwarped, moving, u):
    """Gradients of the definition, one pixel at a time; returns ``(dmoving, du)``:
    dmoving scatters dwarped with the four bilinear weights, du is dwarped times the image's
    finite-difference slope between the neighbours (see the module docstring)."""
    N, C, H, W = moving.shape
    dmoving = np.zeros_like(moving)
    du = np.zeros_like(u)
    for n in range(N):
        for i in range(H):
            for j in range(W):
                y = i + float(u[n, 0, i, j])
                x = j + float(u[n, 1, i, j])
                y0, x0 = int(np.floor(y)), int(np.floor(x))
                wy, wx = y - y0, x - x0
                for c in range(C):
                    g = dwarped[n, c, i, j]
                    m = moving[n, c]
                    for dy, dx, w in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                                      (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
                        if 0 <= y0 + dy < H and 0 <= x0 + dx < W:
                            dmoving[n, c, y0 + dy, x0 + dx] += w * g
                    m00, m01 = _pixel(m, y0, x0), _pixel(m, y0, x0 + 1)
                    m10, m11 = _pixel(m, y0 + 1, x0), _pixel(m, y0 + 1, x0 + 1)
                    du[n, 0, i, j] += g * ((1 - wx) * (m10 - m00) + wx * (m11 - m01))
                    du[n, 1, i, j] += g * ((1 - wy) * (m01 - m00) + wy * (m11 - m10))
    return dmoving, du


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_pair(moving, u):
    """Shapes and dtypes; the NaN/Inf check is fused into the forward kernel."""
    check_array("moving", moving, ndim=4, finite=False)
    check_array("u", u, ndim=4, dtype=moving.dtype, finite=False)
    if u.shape[1] != 2:
        raise ValueError(f"u has {u.shape[1]} channels, expected 2 (channel 0 = row/y offset, "
                         f"channel 1 = column/x offset): shape {u.shape}")
    check_same_shape("moving", moving, "u", u, axes=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def warp_forward(moving, u):
    """Bilinear pull-back warp, zero outside the image; must equal ``warp_forward_reference``.

    Inputs:
    - moving: ``(N, C, H, W)`` float32/float64 image or feature map.
    - u: ``(N, 2, H, W)`` displacement in pixels, same dtype; channel 0 = y (rows), 1 = x (columns).

    Returns:
    - warped: ``(N, C, H, W)``, ``warped[n,c,i,j] = moving[n,c, i+u[n,0,i,j], j+u[n,1,i,j]]``.
    - cache: ``(moving, u)`` for :func:`warp_backward` (references, not copies: do not modify
      them in place before the backward pass).
    """
    _check_pair(moving, u)
    moving_c = np.ascontiguousarray(moving)
    u_c = np.ascontiguousarray(u)
    warped = np.empty_like(moving_c)                                  # (N, C, H, W)
    if run(fast.warp_fwd_kernel, moving_c, u_c, warped):
        check_array("moving", moving_c)                              # raise the usual NaN message
        check_array("u", u_c)
    return warped, (moving_c, u_c)


def warp_backward(dwarped, cache, _n_tasks=None):
    """Gradients of :func:`warp_forward`; must equal ``warp_backward_reference``.

    Inputs:
    - dwarped: ``(N, C, H, W)`` upstream gradient dL/d(warped).
    - cache: from :func:`warp_forward`.

    Returns:
    - dmoving: ``(N, C, H, W)`` — the bilinear weights' scatter of ``dwarped``.
    - du: ``(N, 2, H, W)`` — ``sum_c dwarped * (image gradient at the sampling point)``.

    (``_n_tasks`` is for tests only: it forces the row-split plan used with that many threads.)
    """
    moving, u = cache
    check_array("dwarped", dwarped, dtype=moving.dtype, shape=moving.shape, finite=False)
    dw = np.ascontiguousarray(dwarped)
    N, C, H, W = moving.shape
    nt = numba.get_num_threads() if _n_tasks is None else int(_n_tasks)
    lo, hi, buf_of, B = fast.backward_plan(N, H, nt)
    bufs = np.zeros((B, N, C, H, W), dtype=moving.dtype)              # (B, N, C, H, W)
    du = np.empty_like(u)                                             # (N, 2, H, W)
    if run(fast.warp_bwd_kernel, dw, moving, u, bufs, du, lo, hi, buf_of):
        check_array("dwarped", dw)                                   # raise the usual NaN message
    if B == 1:
        dmoving = bufs[0]
    else:
        dmoving = np.empty_like(moving)
        run(fast.sum_buffers, bufs, dmoving)
    return dmoving, du


def warp_nearest(labels, u):
    """Nearest-neighbour pull-back warp of label maps (for Dice), 0 outside the image.

    Inputs:
    - labels: ``(N, C, H, W)`` integer (or float) label maps.
    - u: ``(N, 2, H, W)`` float displacement in pixels (same convention as :func:`warp_forward`).

    Returns ``(N, C, H, W)`` of ``labels``' dtype: ``labels[n, c, round(i+u_y), round(j+u_x)]``
    with ``round(v) = floor(v + 0.5)`` (halves round *up*, towards +inf), and 0 where the rounded
    point is outside the image.
    """
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"labels must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 4:
        raise ValueError(f"labels must have 4 dimensions laid out as (N, C, H, W), got shape "
                         f"{labels.shape}")
    if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.number)):
        raise TypeError(f"labels has dtype {labels.dtype}; pass an integer label map")
    check_array("u", u, ndim=4)
    if u.shape[1] != 2:
        raise ValueError(f"u has {u.shape[1]} channels, expected 2 (y, x): shape {u.shape}")
    check_same_shape("labels", labels, "u", u, axes=(0, 2, 3))
    N, C, H, W = labels.shape
    ii, jj = np.mgrid[0:H, 0:W]                                       # (H, W) each
    ys = np.floor(ii + u[:, 0] + 0.5)                                 # (N, H, W)
    xs = np.floor(jj + u[:, 1] + 0.5)
    inside = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)              # (N, H, W)
    yi = np.where(inside, ys, 0).astype(np.intp)
    xi = np.where(inside, xs, 0).astype(np.intp)
    nn = np.arange(N)[:, None, None]
    out = labels[nn[:, None], np.arange(C)[None, :, None, None], yi[:, None], xi[:, None]]
    out[~np.broadcast_to(inside[:, None], out.shape)] = 0             # (N, C, H, W)
    return out
