"""Numba kernels of the depthwise convolution (``regnp.ops.depthwise``; the speed notes and the
names ``Wp``, ``Cw`` are in that module's docstring).

``corr`` (the forward, and dx with the rotated filter) must equal
``depthwise_conv2d_forward_reference``; ``dw_grad_w_kernel`` and ``backward13`` must equal
``depthwise_conv2d_backward_reference``. ``tests/test_ops_depthwise.py`` and
``tests/test_ops_direct3x3.py`` (every padding of the 13×13 path) check them through the
public functions.
"""
import numba
import numpy as np
from regnp.ops._fast.threads import run, share


@numba.njit(cache=True, nogil=True)
def dw_corr_kernel(part, parts, x, w, pad, out):
    """out[n,c] = x[n,c] cross-correlated with w[c or 0], zero padding ``pad`` (any k); must
    equal ``depthwise_conv2d_forward_reference``.

    Each task computes one output row in a local accumulator. The input rows it needs are
    copied one at a time into a zero-padded row buffer, so the innermost loop has fixed bounds
    and no branches (which is what lets LLVM vectorise it).
    """
    N, C, H, W = x.shape
    Cw, k, _ = w.shape
    _, _, Ho, Wo = out.shape
    job_lo, job_hi = share(N * C * Ho, part, parts)    # this thread's jobs
    for r in range(job_lo, job_hi):                    # one output row per task
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


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def dw_grad_w_kernel(part, parts, x, dout, pad, dw):
    """dw[cw, a, b] = sum over (n, channels using cw, i, j) of dout * shifted x (any k); must
    equal the dw of ``depthwise_conv2d_backward_reference``.

    One task per filter row (cw, a); the innermost loop is a dot product along a row over a
    zero-padded copy of the input row (``reassoc`` lets the compiler vectorise the sum). Row
    sums are accumulated in float64.
    """
    N, C, H, W = x.shape
    Cw, k, _ = dw.shape
    _, _, Ho, Wo = dout.shape
    job_lo, job_hi = share(Cw * k, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
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


def padded(x, top, left, Hp, Wp):
    """(N, C, Hp*Wp + 16) flattened zero planes with x[n, c] placed at (top, left), row-major
    (the 16-entry tail lets the 13-tap loops read a few entries past the last row).

    Plain NumPy: ``np.zeros`` gets pre-zeroed pages and one strided copy places x; measured
    several times faster than a parallel Numba kernel writing a fresh buffer (page faults and
    the thread launch dominate at this size, about 1 MB)."""
    N, C, H, W = x.shape
    out = np.zeros((N, C, Hp * Wp + 16), x.dtype)
    out[:, :, :Hp * Wp].reshape(N, C, Hp, Wp)[:, :, top:top + H, left:left + W] = x
    return out


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def dw13_corr_kernel(part, parts, P, Wp, w, out):
    """Depthwise correlation for k = 13 (the meta-regularization filter) on padded planes; must
    equal ``depthwise_conv2d_forward_reference`` (via ``corr``).

    Inputs:
    - P: (N, C, L) zero-padded input planes with row stride Wp, flattened (``padded``).
    - w: (Cw, 13, 13), Cw in (1, C).
    Writes out (N, C, Ho, Wo): out[n,c,i,j] = Σ_{a,b} w[cw, a, b] · P[n, c, (i + a)·Wp + j + b].

    The generic kernel does ``acc[j] += w[a, b] * xp[j + b]`` once per tap: a load and a store
    of ``acc`` per multiply-add. Here a filter row's 13 weights sit in registers and one pass
    along the row does ``acc[j] += w[a, 0]·xp[j] + ... + w[a, 12]·xp[j + 12]``: 13 FMAs per
    store, reading the padded plane in place (no per-row copy).
    """
    N, C, Ho, Wo = out.shape
    Cw = w.shape[0]
    job_lo, job_hi = share(N * C * Ho, part, parts)    # this thread's jobs
    for r in range(job_lo, job_hi):                    # one output row per task
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


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def dw13_grad_w_kernel(part, parts, xpf, gf, goff, Wp, Ho, zero, dw):
    """``dw_grad_w_kernel`` for k = 13 on flattened planes with one common row stride Wp; must
    equal the dw of ``depthwise_conv2d_backward_reference`` (via ``backward13``).

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
    job_lo, job_hi = share(Cw * 13, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
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


def corr(x, w, pad, out, xpf=None):
    """out = depthwise correlation of x with w (zero padding pad); k = 13 runs on a padded
    plane (``xpf``, built here when not given), other k on the generic kernel."""
    k = w.shape[1]
    if k != 13:
        run(dw_corr_kernel, x, w, pad, out)
        return
    H, W = x.shape[2:]
    if xpf is None:
        xpf = padded(x, pad, pad, H + 2 * pad, W + 2 * pad)
    run(dw13_corr_kernel, xpf, W + 2 * pad, w, out)


def backward13(x, w, pad, dout, xpf, dx, dw):
    """dx and dw for k = 13 (see ``depthwise_conv2d_backward``); must equal
    ``depthwise_conv2d_backward_reference``.

    dx correlates dout, padded by 12 - pad, with the rotated filter. dw needs dout with the
    same row stride Wp = W + 2 pad as the padded x and zeros in its extra columns: for the
    default pad = 6 that is a window of the padded dout plane itself.
    """
    N, C, H, W = x.shape
    Ho, Wo = dout.shape[2:]
    Wp = W + 2 * pad
    q = 12 - pad                                                      # dx's padding
    gpf = padded(dout, q, q, Ho + 2 * q, Wo + 2 * q)                 # (N, C, ...)
    run(dw13_corr_kernel, gpf, Wo + 2 * q, np.ascontiguousarray(w[:, ::-1, ::-1]), dx)
    if q == pad:                                                      # Wo + 2q == Wp
        gf, goff = gpf, q * Wp + q                                    # dout at row stride Wp
    else:
        gf, goff = padded(dout, 0, 0, Ho, Wp), 0
    if xpf is None:
        xpf = padded(x, pad, pad, H + 2 * pad, Wp)
    run(dw13_grad_w_kernel, xpf, gf, goff, Wp, Ho, x.dtype.type(0), dw)
