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

* x (and dout) are zero-padded once into flattened planes (``_padded``), so the kernels read
  rows in place instead of copying each input row 13 times;
* the correlation keeps a filter row's 13 weights in registers: one pass along the row does
  ``acc[j] += w[a, 0]·xp[j] + ... + w[a, 12]·xp[j + 12]`` (13 FMAs per store, not 1);
* dw runs 13 SIMD dot products per filter row over whole flattened planes: dout laid out with
  the padded input's row stride (zeros in the extra columns) pairs with the input plane shifted
  by ``a·Wp + b``; for the default pad = 6 that layout is a window of dx's padded dout plane.

Reading order: the loop references (the definition) first, then the kernels, then the public
``depthwise_conv2d_forward`` / ``backward``, which must equal the references (tests:
``test_ops_depthwise.py``, ``test_ops_direct3x3.py`` for every padding of the 13×13 path).
Names: ``Wp`` = padded row width W + 2·pad, ``Cw`` = number of filters (1 or C).
"""
from typing import NamedTuple

import numba
import numpy as np

from .._checks import check_array

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
# The fast path: Numba kernels (the public functions at the bottom must equal the references)
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


def _padded(x, top, left, Hp, Wp):
    """(N, C, Hp*Wp + 16) flattened zero planes with x[n, c] placed at (top, left), row-major
    (the 16-entry tail lets the 13-tap loops read a few entries past the last row).

    Plain NumPy: ``np.zeros`` gets pre-zeroed pages and one strided copy places x; measured
    several times faster than a parallel Numba kernel writing a fresh buffer (page faults and
    the thread launch dominate at this size, about 1 MB)."""
    N, C, H, W = x.shape
    out = np.zeros((N, C, Hp * Wp + 16), x.dtype)
    out[:, :, :Hp * Wp].reshape(N, C, Hp, Wp)[:, :, top:top + H, left:left + W] = x
    return out


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _dw13_corr_kernel(P, Wp, w, out):
    """Depthwise correlation for k = 13 (the meta-regularization filter) on padded planes.

    Inputs:
    - P: (N, C, L) zero-padded input planes with row stride Wp, flattened (``_padded``).
    - w: (Cw, 13, 13), Cw in (1, C).
    Writes out (N, C, Ho, Wo): out[n,c,i,j] = Σ_{a,b} w[cw, a, b] · P[n, c, (i + a)·Wp + j + b].

    The generic kernel does ``acc[j] += w[a, b] * xp[j + b]`` once per tap: a load and a store
    of ``acc`` per multiply-add. Here a filter row's 13 weights sit in registers and one pass
    along the row does ``acc[j] += w[a, 0]·xp[j] + ... + w[a, 12]·xp[j + 12]``: 13 FMAs per
    store, reading the padded plane in place (no per-row copy).
    """
    N, C, Ho, Wo = out.shape
    Cw = w.shape[0]
    for r in numba.prange(N * C * Ho):                    # one output row per task
        i = r % Ho
        nc = r // Ho
        c = nc % C
        n = nc // C
        cw = c if Cw > 1 else 0
        acc = np.zeros(Wo, dtype=out.dtype)                # (Wo,)
        for a in range(13):
            xp = P[n, c, (i + a) * Wp:]                    # padded input row i + a
            wa = w[cw, a]                                  # (13,)
            w0, w1, w2, w3, w4, w5, w6 = wa[0], wa[1], wa[2], wa[3], wa[4], wa[5], wa[6]
            w7, w8, w9, w10, w11, w12 = wa[7], wa[8], wa[9], wa[10], wa[11], wa[12]
            for j in range(Wo):                            # SIMD along the row
                acc[j] += (w0 * xp[j] + w1 * xp[j + 1] + w2 * xp[j + 2] + w3 * xp[j + 3]
                           + w4 * xp[j + 4] + w5 * xp[j + 5] + w6 * xp[j + 6]
                           + w7 * xp[j + 7] + w8 * xp[j + 8] + w9 * xp[j + 9]
                           + w10 * xp[j + 10] + w11 * xp[j + 11] + w12 * xp[j + 12])
        for j in range(Wo):
            out[n, c, i, j] = acc[j]


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _dw13_grad_w_kernel(xpf, gf, goff, Wp, Ho, zero, dw):
    """``_dw_grad_w_kernel`` for k = 13 on flattened planes with one common row stride Wp.

    Inputs:
    - xpf: (N, C, L) zero-padded input planes, row stride Wp = W + 2 pad, flattened
      (L >= (Ho + 12) * Wp + 12; the tail is zero).
    - gf, goff: (N, C, >= goff + Ho * Wp): from flat index goff on, dout with the same row
      stride; columns Wo..Wp-1 are zero (an offset, not a view: a non-contiguous view would
      compile to gather loads).
    - zero: 0 in the arrays' dtype (keeps float32 sums in float32 SIMD lanes).
    Writes dw (Cw, 13, 13): dw[cw, a, b] = Σ_q gf[q] · xpf[q + a·Wp + b] over the channels
    that use filter cw. Pairs that wrap past a row end meet a zero of gf, so each filter row a
    is 13 long SIMD dot products; they are summed in blocks of 8 image rows, then in float64.
    """
    N, C, _ = xpf.shape
    Cw = dw.shape[0]
    Q = Ho * Wp
    B = 8 * Wp                                              # block of q per partial sum
    for t in numba.prange(Cw * 13):
        cw = t // 13
        a = t - cw * 13
        acc = np.zeros(13)                                 # float64 totals, (13,)
        for c in range(C):
            if Cw > 1 and c != cw:
                continue
            for n in range(N):
                base = a * Wp                              # x shifted by filter row a
                for q0 in range(0, Q, B):
                    q1 = min(Q, q0 + B)
                    s0 = s1 = s2 = s3 = s4 = s5 = s6 = zero
                    s7 = s8 = s9 = s10 = s11 = s12 = zero
                    gq = gf[n, c, goff + q0:]                   # slices indexed from 0: LLVM
                    xa = xpf[n, c, base + q0:]             # sees unit-stride loads
                    for q in range(q1 - q0):               # 13 SIMD dot products
                        v = gq[q]
                        s0 += v * xa[q]
                        s1 += v * xa[q + 1]
                        s2 += v * xa[q + 2]
                        s3 += v * xa[q + 3]
                        s4 += v * xa[q + 4]
                        s5 += v * xa[q + 5]
                        s6 += v * xa[q + 6]
                        s7 += v * xa[q + 7]
                        s8 += v * xa[q + 8]
                        s9 += v * xa[q + 9]
                        s10 += v * xa[q + 10]
                        s11 += v * xa[q + 11]
                        s12 += v * xa[q + 12]
                    acc[0] += s0
                    acc[1] += s1
                    acc[2] += s2
                    acc[3] += s3
                    acc[4] += s4
                    acc[5] += s5
                    acc[6] += s6
                    acc[7] += s7
                    acc[8] += s8
                    acc[9] += s9
                    acc[10] += s10
                    acc[11] += s11
                    acc[12] += s12
        for b in range(13):
            dw[cw, a, b] = acc[b]


def _corr(x, w, pad, out, xpf=None):
    """out = depthwise correlation of x with w (zero padding pad); k = 13 runs on a padded
    plane (``xpf``, built here when not given), other k on the generic kernel."""
    k = w.shape[1]
    if k != 13:
        _dw_corr_kernel(x, w, pad, out)
        return
    H, W = x.shape[2:]
    if xpf is None:
        xpf = _padded(x, pad, pad, H + 2 * pad, W + 2 * pad)
    _dw13_corr_kernel(xpf, W + 2 * pad, w, out)


def _backward13(x, w, pad, dout, xpf, dx, dw):
    """dx and dw for k = 13 (see ``depthwise_conv2d_backward``).

    dx correlates dout, padded by 12 - pad, with the rotated filter. dw needs dout with the
    same row stride Wp = W + 2 pad as the padded x and zeros in its extra columns: for the
    default pad = 6 that is a window of the padded dout plane itself.
    """
    N, C, H, W = x.shape
    Ho, Wo = dout.shape[2:]
    Wp = W + 2 * pad
    q = 12 - pad                                                      # dx's padding
    gpf = _padded(dout, q, q, Ho + 2 * q, Wo + 2 * q)                 # (N, C, ...)
    _dw13_corr_kernel(gpf, Wo + 2 * q, np.ascontiguousarray(w[:, ::-1, ::-1]), dx)
    if q == pad:                                                      # Wo + 2q == Wp
        gf, goff = gpf, q * Wp + q                                    # dout at row stride Wp
    else:
        gf, goff = _padded(dout, 0, 0, Ho, Wp), 0
    if xpf is None:
        xpf = _padded(x, pad, pad, H + 2 * pad, Wp)
    _dw13_grad_w_kernel(xpf, gf, goff, Wp, Ho, x.dtype.type(0), dw)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
class DepthwiseCache(NamedTuple):
    """What ``depthwise_conv2d_backward`` needs from the forward."""
    x: np.ndarray              # (N, C, H, W) the input (contiguous; a reference, not a copy)
    w: np.ndarray              # (Cw, k, k) the filters
    pad: int
    x_planes: object           # k = 13: x's zero-padded flattened planes (``_padded``), else None


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
        xpf = _padded(x, pad, pad, x.shape[2] + 2 * pad, x.shape[3] + 2 * pad)
    _corr(x, w, pad, out, xpf)
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
        _backward13(x, w, pad, dout, xpf, dx, dw)
        return dx, dw
    w_rot = np.ascontiguousarray(w[:, ::-1, ::-1])                    # (Cw, k, k) rotated 180°
    _dw_corr_kernel(dout, w_rot, k - 1 - pad, dx)
    _dw_grad_w_kernel(x, dout, pad, dw)
    return dx, dw
