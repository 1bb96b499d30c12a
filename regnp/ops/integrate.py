"""Scaling and squaring: the deformation φ = exp(v) of a stationary velocity field v.

A velocity field ``v`` (N, 2, H, W), in pixels, generates the flow dφ/dt = v(φ), φ(0) = id; its
value at t = 1 is exp(v), a diffeomorphism when v is smooth enough — it cannot fold, whatever the
size of v. Scaling and squaring computes it in ``steps`` compositions:

    u_0 = v / 2^steps                       # a tiny step: id + u_0 ≈ exp(v / 2^steps)
    u_k = u_{k-1} + u_{k-1} ∘ (id + u_{k-1})  # φ_k = φ_{k-1} ∘ φ_{k-1}, so φ_k = exp(v / 2^(steps-k))

and returns the displacement u = u_steps of exp(v) (φ = id + u). The composition
``u ∘ (id + u)`` samples the field u at p + u(p): the project's bilinear pull-back warp of the
"image" u by the displacement u (``regnp.ops.warp``; zero outside the image, as VoxelMorph's
``VecInt`` layer with zero padding).

Backward. Each step is ``u_k = u_{k-1} + W(u_{k-1}, u_{k-1})`` where ``W(m, d)`` is the warp of m by
d; the field is both the thing warped and the displacement, so the gradient that reaches
u_{k-1} is the sum of three paths::

    du_{k-1} = du_k + dmoving(du_k) + ddisp(du_k)

with ``(dmoving, ddisp) = warp_backward(du_k, cache_k)``. After the ``steps`` compositions,
dv = du_0 / 2^steps.

Half resolution (VoxelMorph's ``int_downsize = 2``): :func:`integrate_velocity_forward` with
``downsize=2`` averages v over 2×2 blocks and halves it (a displacement of 2 px at full size is
1 px at half size), integrates there (4× fewer pixels per composition), then upsamples the
result bilinearly and doubles it.
"""
import numpy as np

from .._checks import check_array, check_positive_int
from .pool import (avgpool2x2_backward, avgpool2x2_forward, upsample_bilinear2x_backward,
                   upsample_bilinear2x_forward)
from .warp import warp_backward, warp_backward_reference, warp_forward, warp_forward_reference

__all__ = ["integrate_velocity_forward", "integrate_velocity_backward",
           "integrate_velocity_reference", "integrate_velocity_backward_reference"]


# ---------------------------------------------------------------------------------------------
# The definition, with the loop warp references (slow; the fast path must equal it)
# ---------------------------------------------------------------------------------------------
def integrate_velocity_reference(v, steps):
    """exp(v) by scaling and squaring with the loop references of the warp; returns u."""
    u = v / 2.0 ** steps
    for _ in range(steps):
        u = u + warp_forward_reference(u, u)
    return u


def integrate_velocity_backward_reference(du, v, steps):
    """dL/dv for upstream ``du`` = dL/du, through every composition, with the loop references."""
    us = [v / 2.0 ** steps]
    for _ in range(steps):
        us.append(us[-1] + warp_forward_reference(us[-1], us[-1]))
    g = du
    for k in range(steps, 0, -1):
        dmov, ddisp = warp_backward_reference(g, us[k - 1], us[k - 1])
        g = g + dmov + ddisp
    return g / 2.0 ** steps


# ---------------------------------------------------------------------------------------------
# Fast path: the same chain with the Numba warp kernels
# ---------------------------------------------------------------------------------------------
def integrate_velocity_forward(v, steps, downsize=1):
    """Displacement of exp(v); must equal :func:`integrate_velocity_reference` (at ``downsize=1``).

    Inputs:
    - v: ``(N, 2, H, W)`` float32/float64 stationary velocity field, pixels (channel 0 = rows).
    - steps: number of squarings T ≥ 1 (VoxelMorph uses 7: v is first divided by 128).
    - downsize: 1 (integrate at full resolution) or 2 (average-pool to half size, integrate there,
      upsample bilinearly; H and W must be even).

    Returns:
    - u: ``(N, 2, H, W)`` displacement of φ = exp(v), same dtype.
    - cache: for :func:`integrate_velocity_backward`.
    """
    check_array("v", v, ndim=4)
    if v.shape[1] != 2:
        raise ValueError(f"v must be a velocity field (N, 2, H, W), got shape {v.shape}")
    steps = check_positive_int("steps", steps)
    if downsize not in (1, 2):
        raise ValueError(f"downsize must be 1 or 2, got {downsize!r}")
    pool_cache = up_cache = None
    w = v
    if downsize == 2:
        if v.shape[2] % 2 or v.shape[3] % 2:
            raise ValueError(f"downsize=2 needs an even image size, got {v.shape[2]}×{v.shape[3]}")
        w, pool_cache = avgpool2x2_forward(v)                        # (N, 2, H/2, W/2)
        w = w * w.dtype.type(0.5)                                    # pixels at half size
    u = w * w.dtype.type(1.0 / 2 ** steps)
    warp_caches = []
    for _ in range(steps):
        comp, c = warp_forward(u, u)                                 # u ∘ (id + u)
        warp_caches.append(c)
        u = u + comp
    if downsize == 2:
        u, up_cache = upsample_bilinear2x_forward(u)                 # (N, 2, H, W)
        u *= u.dtype.type(2.0)                                       # back to full-size pixels
    return u, (steps, downsize, warp_caches, pool_cache, up_cache)


def integrate_velocity_backward(du, cache):
    """dL/dv from dL/du for :func:`integrate_velocity_forward`; must equal
    :func:`integrate_velocity_backward_reference` (at ``downsize=1``)."""
    steps, downsize, warp_caches, pool_cache, up_cache = cache
    g = du
    if downsize == 2:
        g = upsample_bilinear2x_backward(g * g.dtype.type(2.0), up_cache)
    for c in reversed(warp_caches):
        dmov, ddisp = warp_backward(g, c)
        g = g + dmov + ddisp                                         # identity + both warp inputs
    g = g * g.dtype.type(1.0 / 2 ** steps)
    if downsize == 2:
        g = avgpool2x2_backward(g * g.dtype.type(0.5), pool_cache)
    return g
