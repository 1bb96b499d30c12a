"""Depthwise 2-D convolution: one k×k filter per channel (the 13×13 meta-regularization layer).

The meta-regularization layer of the paper smooths each displacement channel with its own
13×13 filter ``K̃`` (eq. 11: ``u = K̃ * g_θ``). Each output channel depends only on the same input
channel, so this is a *depthwise* convolution::

    out[n, c, i, j] = sum_{a, b} w[c, a, b] * x[n, c, i + a - pad, j + b - pad]

with zero padding (values outside the image are 0). Like every deep-learning "convolution" this
is a **cross-correlation** (the filter is not flipped). For the filters this layer is meant to
learn — symmetric under ``w[a, b] -> w[k-1-a, k-1-b]``, e.g. radially symmetric ones — it
equals the true convolution.

``w`` is ``(C, k, k)`` (one filter per channel) or ``(1, k, k)`` (one filter shared by all
channels; its gradient sums over the channels). Default ``pad = (k - 1) // 2``: same-size output
for odd ``k``. Any ``0 <= pad <= k - 1`` is allowed; output size is ``H + 2 pad - k + 1``.

Gradients::

    dx[n, c, y, x] = sum_{a, b} w[c, a, b] * dout[n, c, y - a + pad, x - b + pad]
                   = (dout cross-correlated with the 180°-rotated filter, padding k-1-pad)
    dw[c, a, b]    = sum_{n, i, j} dout[n, c, i, j] * x[n, c, i + a - pad, j + b - pad]

so the forward kernel is reused for ``dx``, and ``dw`` is a set of k·k correlations between
``dout`` and shifted copies of ``x``.

Speed (2 cores): direct Numba loops. The generic kernels (any k) run per output row with the
innermost loop along the row for one filter tap (``out[j] += w * x[j + shift]``). The 13×13
meta-regularization filter has its own kernels, measured 2.2× faster forward+backward in one
run (13.6 -> 6.4 ms median for a (2, 2, 256, 256) field, batch 2):

* x (and dout) are zero-padded once into flattened planes (``padded``), so the kernels read
  rows in place instead of copying each input row 13 times;
* the correlation keeps a filter row's 13 weights in registers: one pass along the row does
  ``acc[j] += w[a, 0]·xp[j] + ... + w[a, 12]·xp[j + 12]`` (13 FMAs per store, not 1);
* dw runs 13 SIMD dot products per filter row over whole flattened planes: dout laid out with
  the padded input's row stride (zeros in the extra columns) pairs with the input plane shifted
  by ``a·Wp + b``; for the default pad = 6 that layout is a window of dx's padded dout plane.

Reading order: the loop references (the definition) first, then the public
``depthwise_conv2d_forward`` / ``backward``; the kernels they run live in
``_fast/depthwise_kernels.py``. Both must equal the references (tests:
``test_ops_depthwise.py``, ``test_ops_direct3x3.py`` for every padding of the 13×13 path).
Names: ``Wp`` = padded row width W + 2·pad, ``Cw`` = number of filters (1 or C).
"""
from typing import NamedTuple

import numpy as np

from .._checks import check_array
from ._fast import depthwise_kernels as fast
from ._fast.threads import run

__all__ = ["depthwise_conv2d_forward", "depthwise_conv2d_backward",
           "depthwise_conv2d_forward_reference", "depthwise_conv2d_backward_reference"]


# ---------------------------------------------------------------------------------------------
# The definition: slow, obviously correct references (the fast path below must equal them)
# ---------------------------------------------------------------------------------------------
def depthwise_conv2d_forward_reference(x, w, pad=None):
    """The definition, as loops (explicitly padded copy xp, one output pixel at a time)::

        out[n, c, i, j] = Σ_{a, b} w[c or 0, a, b] · xp[n, c, i + a, j + b]

    with xp = x zero-padded by ``pad`` (default (k - 1)//2). Returns out only."""
    N, C, H, W = x.shape
    k = w.shape[1]
    pad = (k - 1) // 2 if pad is None else pad
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    out = np.zeros((N, C, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            f = w[c] if w.shape[0] > 1 else w[0]
            for i in range(Ho):
                for j in range(Wo):
                    out[n, c, i, j] = np.sum(f * xp[n, c, i:i + k, j:j + k])
    return out


def depthwise_conv2d_backward_reference(dout, x, w, pad=None):
    """Gradients of the definition, by scattering each ``dout`` pixel through its window::

        dxp[n, c, i : i + k, j : j + k] += dout[n, c, i, j] · w[c or 0]      (then crop the pad)
        dw[c or 0]                      += dout[n, c, i, j] · xp[n, c, i : i + k, j : j + k]

    Returns (dx, dw); a shared filter (w of shape (1, k, k)) sums its gradient over channels."""
    N, C, H, W = x.shape
    k = w.shape[1]
    pad = (k - 1) // 2 if pad is None else pad
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad), dtype=x.dtype)
    xp[:, :, pad:pad + H, pad:pad + W] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(N):
        for c in range(C):
            cw = c if w.shape[0] > 1 else 0
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    g = dout[n, c, i, j]
                    dxp[n, c, i:i + k, j:j + k] += g * w[cw]
                    dw[cw] += g * xp[n, c, i:i + k, j:j + k]
    return dxp[:, :, pad:pad + H, pad:pad + W], dw


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
class DepthwiseCache(NamedTuple):
    """What ``depthwise_conv2d_backward`` needs from the forward."""
    x: np.ndarray              # (N, C, H, W) the input (contiguous; a reference, not a copy)
    w: np.ndarray              # (Cw, k, k) the filters
    pad: int
    x_planes: object           # k = 13: x's zero-padded flattened planes (``padded``), else None


def _check_inputs(x, w, pad):
    check_array("x", x, ndim=4)
    check_array("w", w, ndim=3, dtype=x.dtype)
    Cw, k, k2 = w.shape
    if k != k2:
        raise ValueError(f"w must hold square filters (C, k, k), got shape {w.shape}")
    C = x.shape[1]
    if Cw not in (1, C):
        raise ValueError(f"w has {Cw} filters but x has {C} channels; pass one filter per channel "
                         f"(shape ({C}, {k}, {k})) or one shared filter (shape (1, {k}, {k}))")
    if pad is None:
        pad = (k - 1) // 2
    if not isinstance(pad, (int, np.integer)) or isinstance(pad, bool) or not 0 <= pad <= k - 1:
        raise ValueError(f"pad must be an integer in [0, k-1] = [0, {k - 1}], got {pad!r}")
    Ho, Wo = x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"x of spatial size {x.shape[2:]} is too small for a {k}x{k} filter with "
                         f"pad={pad} (output would be {Ho}x{Wo})")
    return int(pad), Ho, Wo


def depthwise_conv2d_forward(x, w, pad=None):
    """Depthwise cross-correlation with zero padding.

    Inputs:
    - x: ``(N, C, H, W)`` float32/float64.
    - w: ``(C, k, k)`` one filter per channel, or ``(1, k, k)`` shared by all channels; same dtype.
    - pad: zero padding on every side, integer in ``[0, k-1]``; default ``(k-1)//2``.

    Returns:
    - out: ``(N, C, H + 2 pad - k + 1, W + 2 pad - k + 1)`` (``(N, C, H, W)`` by default, odd k).
    - cache: a ``DepthwiseCache``.

    Must equal ``depthwise_conv2d_forward_reference``.
    """
    pad, Ho, Wo = _check_inputs(x, w, pad)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    out = np.empty((x.shape[0], x.shape[1], Ho, Wo), dtype=x.dtype)   # (N, C, Ho, Wo)
    xpf = None
    if w.shape[1] == 13:
        xpf = fast.padded(x, pad, pad, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad)
    fast.corr(x, w, pad, out, xpf)
    return out, DepthwiseCache(x=x, w=w, pad=pad, x_planes=xpf)


def depthwise_conv2d_backward(dout, cache):
    """Gradients of :func:`depthwise_conv2d_forward`.

    Inputs:
    - dout: ``(N, C, Ho, Wo)`` upstream gradient.
    - cache: from the forward.

    Returns:
    - dx: ``(N, C, H, W)``.
    - dw: w's shape, ``(C, k, k)`` or ``(1, k, k)`` (the shared filter's gradient sums over
      channels).

    Must equal ``depthwise_conv2d_backward_reference``.
    """
    x, w, pad, xpf = cache.x, cache.w, cache.pad, cache.x_planes
    N, C, H, W = x.shape
    k = w.shape[1]
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    check_array("dout", dout, dtype=x.dtype, shape=(N, C, Ho, Wo))
    dout = np.ascontiguousarray(dout)
    dx = np.empty_like(x)                                             # (N, C, H, W)
    dw = np.empty_like(w)                                             # (Cw, k, k)
    if k == 13:
        fast.backward13(x, w, pad, dout, xpf, dx, dw)
        return dx, dw
    w_rot = np.ascontiguousarray(w[:, ::-1, ::-1])                    # (Cw, k, k) rotated 180°
    run(fast.dw_corr_kernel, dout, w_rot, k - 1 - pad, dx)
    run(fast.dw_grad_w_kernel, x, dout, pad, dw)
    return dx, dw
