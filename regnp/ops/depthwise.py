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

Speed (2 cores): direct Numba loops, parallel over output rows; the innermost loop runs along a
row with a fixed filter tap (``out[j] += w * x[j + shift]``), which the compiler vectorises. No
padded copy is made: each tap's valid ``j`` range is computed instead.
"""
import numba
import numpy as np

from .._checks import check_array

__all__ = ["depthwise_conv2d_forward", "depthwise_conv2d_backward",
           "depthwise_conv2d_forward_reference", "depthwise_conv2d_backward_reference"]


# ---------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True, nogil=True)
def _dw_corr_kernel(x, w, pad, out):
    """out[n,c] = x[n,c] cross-correlated with w[c or 0], zero padding ``pad``.

    Each task computes one output row in a local accumulator. The input rows it needs are
    copied one at a time into a zero-padded row buffer, so the innermost loop has fixed bounds
    and no branches (which is what lets LLVM vectorise it).
    """
    N, C, H, W = x.shape
    Cw, k, _ = w.shape
    _, _, Ho, Wo = out.shape
    for r in numba.prange(N * C * Ho):                    # one output row per task
        i = r % Ho
        nc = r // Ho
        c = nc % C
        n = nc // C
        cw = c if Cw > 1 else 0
        acc = np.zeros(Wo, dtype=out.dtype)                # (Wo,)
        xp = np.zeros(Wo + k - 1, dtype=x.dtype)           # padded input row, (W + 2 pad,)
        for a in range(k):
            yi = i + a - pad                               # input row feeding filter row a
            if yi < 0 or yi >= H:
                continue                                   # zero padding: contributes nothing
            for j in range(W):
                xp[j + pad] = x[n, c, yi, j]
            for b in range(k):
                wv = w[cw, a, b]
                for j in range(Wo):                        # vectorised: out[j] += w * x[j + b - pad]
                    acc[j] += wv * xp[j + b]
        for j in range(Wo):
            out[n, c, i, j] = acc[j]


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _dw_grad_w_kernel(x, dout, pad, dw):
    """dw[cw, a, b] = sum over (n, channels using cw, i, j) of dout * shifted x.

    One task per filter row (cw, a); the innermost loop is a dot product along a row over a
    zero-padded copy of the input row (``reassoc`` lets the compiler vectorise the sum). Row
    sums are accumulated in float64.
    """
    N, C, H, W = x.shape
    Cw, k, _ = dw.shape
    _, _, Ho, Wo = dout.shape
    for t in numba.prange(Cw * k):
        cw = t // k
        a = t - cw * k
        acc = np.zeros(k)                                  # float64 partial sums, (k,)
        xp = np.zeros(Wo + k - 1, dtype=x.dtype)           # padded input row
        for c in range(C):
            if Cw > 1 and c != cw:
                continue
            for n in range(N):
                for i in range(Ho):
                    yi = i + a - pad
                    if yi < 0 or yi >= H:
                        continue
                    for j in range(W):
                        xp[j + pad] = x[n, c, yi, j]
                    for b in range(k):
                        s = xp[0] * 0
                        for j in range(Wo):                # vectorised dot product
                            s += dout[n, c, i, j] * xp[j + b]
                        acc[b] += s
        for b in range(k):
            dw[cw, a, b] = acc[b]


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
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
    - cache: ``(x, w, pad)``.
    """
    pad, Ho, Wo = _check_inputs(x, w, pad)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    out = np.empty((x.shape[0], x.shape[1], Ho, Wo), dtype=x.dtype)   # (N, C, Ho, Wo)
    _dw_corr_kernel(x, w, pad, out)
    return out, (x, w, pad)


def depthwise_conv2d_backward(dout, cache):
    """Gradients of :func:`depthwise_conv2d_forward`.

    Inputs:
    - dout: ``(N, C, Ho, Wo)`` upstream gradient.
    - cache: from the forward.

    Returns:
    - dx: ``(N, C, H, W)``.
    - dw: w's shape, ``(C, k, k)`` or ``(1, k, k)`` (the shared filter's gradient sums over
      channels).
    """
    x, w, pad = cache
    N, C, H, W = x.shape
    k = w.shape[1]
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    check_array("dout", dout, dtype=x.dtype, shape=(N, C, Ho, Wo))
    dout = np.ascontiguousarray(dout)
    w_rot = np.ascontiguousarray(w[:, ::-1, ::-1])                    # (Cw, k, k) rotated 180°
    dx = np.empty_like(x)                                             # (N, C, H, W)
    _dw_corr_kernel(dout, w_rot, k - 1 - pad, dx)
    dw = np.empty_like(w)                                             # (Cw, k, k)
    _dw_grad_w_kernel(x, dout, pad, dw)
    return dx, dw


# ---------------------------------------------------------------------------------------------
# slow, obviously correct references
# ---------------------------------------------------------------------------------------------
def depthwise_conv2d_forward_reference(x, w, pad=None):
    """Loop version of the forward (explicitly padded copy, one output pixel at a time)."""
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
    """Loop version of the backward: scatter each ``dout`` pixel through the padded window."""
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
