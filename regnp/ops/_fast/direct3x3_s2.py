"""Direct 3×3, stride-2, pad-1 convolution kernels (the U-Net encoder): forward, dx and dw.

Same idea as ``_direct3x3.py`` (stride 1), adapted to stride 2 with the *phase* trick of
``conv.py``: split the zero-padded input ``xpad[Y, X] = x[Y - 1, X - 1]`` into its 4 phases
``P_ab[r, s] = xpad[2r + a, 2s + b]``. Then

    out[o, i, j] = Σ_{c, dy, dx} w[o, c, dy, dx] · P_{dy%2, dx%2}[c, i + dy//2, j + dx//2]

so every tap reads a phase image at unit stride (no strided SIMD loads).

Sizes: Ho = ceil(H / 2), Wo = ceil(W / 2); phase rows hold Wq = Wo + 2 columns (the last two
are junk outputs in the flat loops and zero in the gradient planes).

* Forward, per job of R output rows: a tile ``(Ci, 2, 2, R + 1, Wq)`` holds the phase rows the
  job needs; for each (c, dy) one flat loop over the job's R·Wq outputs does, for 4 output
  channels, ``acc += w[dy,0]·E[q] + w[dy,1]·O[q] + w[dy,2]·E[q + 1]`` (E, O: the even / odd
  column phase of row-phase dy % 2, shifted by dy // 2 rows).
* The gradient dz = dout · LeakyReLU mask is laid out once as zero-bordered planes
  ``(N, Co, (Ho + 2)·Wq)`` with dz[i, j] at row i + 1, column j + 1 (``conv3x3s2_grad_planes``).
* dw: 12 SIMD dot products per (4 output channels, c, dy) between the dz plane and the forward
  tiles, as in the stride-1 kernel.
* dx (the adjoint) as a gather: input pixel (y, x) has padded coordinates Y = y + 1, X = x + 1,
  and receives w[m, c, dy, dx] · dz[m, (Y - dy)/2, (X - dx)/2] for the taps with matching
  parity: odd Y takes dy = 1, even Y takes dy ∈ {0, 2}; the same for columns. Each dx row is
  computed as its even and odd columns (two short SIMD loops) and interleaved on output.

Names: ``R`` = output rows per parallel job, ``MB`` = output channels per register block,
``Cb`` = number of blocks, ``Wq = Wo + 2`` = phase row width, ``PL = (R + 1)·Wq`` = one phase
plane of a tile, ``J`` = number of jobs.

Reading order: slow references first (the definition); then the Numba kernels and, at the
bottom, the keyword entry points ``conv3x3s2_forward``, ``conv3x3s2_grad_planes``,
``conv3x3s2_dw`` and ``conv3x3s2_dx``, which must equal the references
(``tests/test_ops_direct3x3.py`` checks agreement).
"""
import numba
import numpy as np

from .direct3x3 import MB, pack_weights
from regnp.ops._fast.threads import run, share


# ---------------------------------------------------------------------------------------------
# The definition: slow references (explicit padding and strided slicing)
# ---------------------------------------------------------------------------------------------
def conv3x3s2_forward_reference(x, w, *, bias=None, act=None):
    """What ``conv3x3s2_forward`` computes, from the definition (xpad = x zero-padded by 1)::

        out[n, o, i, j] = LeakyReLU_act( bias[o] + Σ_{c, dy, dx} w[o, c, dy, dx] · xpad[n, c, 2i + dy, 2j + dx] )

    (The conv2d loop reference with stride 2, pad 1; the tests check the two agree.)"""
    N, Ci, H, W = x.shape
    Co = w.shape[0]
    Ho, Wo = (H + 1) // 2, (W + 1) // 2
    xp = np.zeros((N, Ci, 2 * Ho + 2, 2 * Wo + 2), x.dtype)
    xp[:, :, 1:H + 1, 1:W + 1] = x
    out = np.zeros((N, Co, Ho, Wo), x.dtype)
    for o in range(Co):
        for c in range(Ci):
            for dy in range(3):
                for dx in range(3):
                    out[:, o] += w[o, c, dy, dx] * xp[:, c, dy:dy + 2 * Ho:2, dx:dx + 2 * Wo:2]
        if bias is not None:
            out[:, o] += bias[o]
    if act is not None:
        out = np.where(out < 0, out * act, out)
    return out


def conv3x3s2_backward_reference(x, w, dz):
    """(dx, dw, db) of the stride-2 pad-1 conv for the pre-activation gradient dz, by scattering:
    what ``conv3x3s2_dx``, ``conv3x3s2_dw`` (summed over jobs) and the row sums of
    ``conv3x3s2_grad_planes`` must equal."""
    N, Ci, H, W = x.shape
    _, Co, Ho, Wo = dz.shape
    xp = np.zeros((N, Ci, 2 * Ho + 2, 2 * Wo + 2), x.dtype)
    xp[:, :, 1:H + 1, 1:W + 1] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for m in range(Co):
        for c in range(Ci):
            for dy in range(3):
                for dx in range(3):
                    win = (slice(None), c, slice(dy, dy + 2 * Ho, 2), slice(dx, dx + 2 * Wo, 2))
                    dw[m, c, dy, dx] = np.sum(dz[:, m] * xp[win])
                    dxp[win] += w[m, c, dy, dx] * dz[:, m]
    return dxp[:, :, 1:H + 1, 1:W + 1], dw, dz.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# The fast path: Numba kernels (positional arguments); keyword entry points at the bottom
# ---------------------------------------------------------------------------------------------


def rows_per_job(N, Ho):
    """Output rows per job: 8, halved until there are >= 4 jobs."""
    R = 8
    while R > 1 and N * (-(-Ho // R)) < 4:
        R //= 2
    return R


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _conv3x3s2_fwd_kernel(part, parts, x, wpk, bias, use_bias, slope, use_act, R, tiles, out):
    """out = LeakyReLU(conv3x3(x, stride 2, pad 1) + bias).

    Inputs:
    - x: (N, Ci, H, W);  wpk: (Cb, Ci, 3, 3, MB) (``_direct3x3.pack_weights``);
      bias: (>= Co,) if use_bias;  slope, use_act: LeakyReLU of the output.
    - R: output rows per job;  tiles: (N·ceil(Ho/R), Ci, 4·(R + 1)·Wq) scratch, filled with
      each job's phase rows (index ((a·2 + b)·(R + 1) + rr)·Wq + s); kept for the dw kernel.
    - out: (N, Co, Ho, Wo), written.
    """
    N, Ci, H, W = x.shape
    _, Co, Ho, Wo = out.shape
    Cb = wpk.shape[0]
    Wq = Wo + 2
    PL = (R + 1) * Wq                                          # one phase plane of a tile
    nrb = (Ho + R - 1) // R
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(Ho, r0 + R) - r0
        t = tiles[job]                                         # (Ci, 4 * PL)
        # 1. phase rows r0 .. r0 + R of the padded input: P_ab[r, s] = x[2r + a - 1, 2s + b - 1]
        for c in range(Ci):
            for a in range(2):
                for b in range(2):
                    for rr in range(R + 1):
                        y = 2 * (r0 + rr) + a - 1
                        base = (a * 2 + b) * PL + rr * Wq
                        if y < 0 or y >= H:
                            for s in range(Wq):
                                t[c, base + s] = 0.0
                            continue
                        # column 2s + b - 1 of x for s in [lo, hi), zeros elsewhere
                        lo = 1 - b
                        hi = min(Wq, W // 2 + 1) if b == 0 else min(Wq, (W + 1) // 2)
                        for s in range(lo):
                            t[c, base + s] = 0.0
                        for s in range(lo, hi):
                            t[c, base + s] = x[n, c, y, 2 * s + b - 1]
                        for s in range(hi, Wq):
                            t[c, base + s] = 0.0
        # 2. flat loops over the job's outputs, 4 output channels at a time
        L = nr * Wq - 2                                        # outputs j >= Wo are junk
        acc = np.empty((MB, R * Wq), out.dtype)
        a0 = acc[0]
        a1 = acc[1]
        a2 = acc[2]
        a3 = acc[3]
        for bb in range(Cb):
            for q in range(L):
                a0[q] = 0.0
                a1[q] = 0.0
                a2[q] = 0.0
                a3[q] = 0.0
            for c in range(Ci):
                for dy in range(3):
                    off = (dy % 2) * 2 * PL + (dy // 2) * Wq
                    E = t[c, off:]                             # even padded columns
                    O = t[c, off + PL:]                        # odd padded columns
                    wv = wpk[bb, c, dy]
                    w00 = wv[0, 0]
                    w01 = wv[0, 1]
                    w02 = wv[0, 2]
                    w03 = wv[0, 3]
                    w10 = wv[1, 0]
                    w11 = wv[1, 1]
                    w12 = wv[1, 2]
                    w13 = wv[1, 3]
                    w20 = wv[2, 0]
                    w21 = wv[2, 1]
                    w22 = wv[2, 2]
                    w23 = wv[2, 3]
                    for q in range(L):                         # SIMD over the flat outputs
                        x0 = E[q]
                        x1 = O[q]
                        x2 = E[q + 1]
                        t0 = a0[q] + w00 * x0
                        t1 = a1[q] + w01 * x0
                        t2 = a2[q] + w02 * x0
                        t3 = a3[q] + w03 * x0
                        t0 = t0 + w10 * x1
                        t1 = t1 + w11 * x1
                        t2 = t2 + w12 * x1
                        t3 = t3 + w13 * x1
                        a0[q] = t0 + w20 * x2
                        a1[q] = t1 + w21 * x2
                        a2[q] = t2 + w22 * x2
                        a3[q] = t3 + w23 * x2
            for m in range(MB):
                o = bb * MB + m
                if o < Co:
                    bo = bias[o] if use_bias else 0.0
                    for rr in range(nr):
                        for j in range(Wo):
                            v = acc[m, rr * Wq + j] + bo
                            if use_act and v < 0:
                                v = v * slope
                            out[n, o, r0 + rr, j] = v


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _grad_planes_kernel(part, parts, dout, y, slope, use_act, gp, rowsum):
    """gp (N, Co, (Ho + 2)·Wq): zeros, with dz = dout · (1 if y > 0 else slope) (just dout
    without the activation) at row i + 1, column j + 1;  rowsum[n, m] = Σ dz.

    Only the border is zeroed (the interior is overwritten anyway), and the sum may be
    reassociated (float64 partial sums, so it vectorises): a zero-fill of the whole plane and
    one serial chain of float64 adds made this pass as slow as the dx kernel on enc0
    (measured 0.29× the time at (2, 16, 128, 128), 0.45× at (2, 32, 64, 64))."""
    N, Co, Ho, Wo = dout.shape
    Wq = Wo + 2
    job_lo, job_hi = share(N * Co, part, parts)    # this thread's jobs
    for nm in range(job_lo, job_hi):
        n = nm // Co
        m = nm - n * Co
        g = gp[n, m]
        for q in range(Wq + 1):                                # row 0 and row 1's left border
            g[q] = 0.0
        s = 0.0
        for i in range(Ho):
            r = g[(i + 1) * Wq + 1:]                           # r[j] = plane row i + 1, col j + 1
            d = dout[n, m, i]
            if use_act:
                yr = y[n, m, i]
                for j in range(Wo):
                    v = d[j]
                    if yr[j] <= 0:
                        v = v * slope
                    r[j] = v
                    s += v
            else:
                for j in range(Wo):
                    v = d[j]
                    r[j] = v
                    s += v
            r[Wo] = 0.0                                        # right border of this row and
            r[Wo + 1] = 0.0                                    # left border of the next one
        for q in range((Ho + 1) * Wq + 1, g.shape[0]):         # the last row
            g[q] = 0.0
        rowsum[n, m] = s


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def _conv3x3s2_dw_kernel(part, parts, tiles, gp, Ho, Wo, R, zero, dwp):
    """Per-job partial weight gradients: dwp[job, m, c, dy, dx] = Σ dz[m] · P shifted.

    dz at plane index (r0 + 1 + rr)·Wq + 1 + j pairs with the tile's phase (dy%2, dx%2) at
    (rr + dy//2)·Wq + j + dx//2; both are walked as one flat loop per (c, dy) (the junk
    columns of dz are zero). dwp: (J, Cb·MB, Ci, 3, 3).
    """
    J, Ci, _ = tiles.shape
    N, Co, _ = gp.shape
    Wq = Wo + 2
    PL = (R + 1) * Wq
    Cb = dwp.shape[1] // MB
    nrb = (Ho + R - 1) // R
    job_lo, job_hi = share(J, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(Ho, r0 + R) - r0
        L = nr * Wq - 2
        g0ff = (r0 + 1) * Wq + 1
        for bb in range(Cb):
            m0 = min(bb * MB, Co - 1)                          # tail block: repeats the last
            m1 = min(bb * MB + 1, Co - 1)                      # channel, results not stored
            m2 = min(bb * MB + 2, Co - 1)
            m3 = min(bb * MB + 3, Co - 1)
            g0 = gp[n, m0, g0ff:]
            g1 = gp[n, m1, g0ff:]
            g2 = gp[n, m2, g0ff:]
            g3 = gp[n, m3, g0ff:]
            for c in range(Ci):
                for dy in range(3):
                    off = (dy % 2) * 2 * PL + (dy // 2) * Wq
                    E = tiles[job, c, off:]
                    O = tiles[job, c, off + PL:]
                    s00 = s01 = s02 = s10 = s11 = s12 = zero
                    s20 = s21 = s22 = s30 = s31 = s32 = zero
                    for q in range(L):                         # 12 SIMD dot products
                        x0 = E[q]
                        x1 = O[q]
                        x2 = E[q + 1]
                        v0 = g0[q]
                        v1 = g1[q]
                        v2 = g2[q]
                        v3 = g3[q]
                        s00 += v0 * x0
                        s01 += v0 * x1
                        s02 += v0 * x2
                        s10 += v1 * x0
                        s11 += v1 * x1
                        s12 += v1 * x2
                        s20 += v2 * x0
                        s21 += v2 * x1
                        s22 += v2 * x2
                        s30 += v3 * x0
                        s31 += v3 * x1
                        s32 += v3 * x2
                    o = bb * MB
                    dwp[job, o, c, dy, 0] = s00
                    dwp[job, o, c, dy, 1] = s01
                    dwp[job, o, c, dy, 2] = s02
                    dwp[job, o + 1, c, dy, 0] = s10
                    dwp[job, o + 1, c, dy, 1] = s11
                    dwp[job, o + 1, c, dy, 2] = s12
                    dwp[job, o + 2, c, dy, 0] = s20
                    dwp[job, o + 2, c, dy, 1] = s21
                    dwp[job, o + 2, c, dy, 2] = s22
                    dwp[job, o + 3, c, dy, 0] = s30
                    dwp[job, o + 3, c, dy, 1] = s31
                    dwp[job, o + 3, c, dy, 2] = s32


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _conv3x3s2_dx_kernel(part, parts, gp, wpt, Ho, Wo, R, dx):
    """dx (N, Ci, H, W) of the stride-2 conv from the dz planes (gather form, see the module
    docstring). wpt: (Cb, Co, 3, 3, MB) = ``pack_weights(w.transpose(1, 0, 2, 3))`` (input
    channels of the forward in blocks of MB, not flipped).

    A job takes R consecutive k and computes the dx rows y = 2k (odd padded row Y = 2k + 1:
    only dy = 1, dz row k) and y = 2k + 1 (even Y = 2k + 2: dy = 0 with dz row k + 1, dy = 2
    with dz row k). For each parity the job's rows are one flat loop over the dz planes (row
    stride Wq), accumulating the even output columns x = 2u (dx = 1, dz column u) and the odd
    ones x = 2u + 1 (dx = 0 with column u + 1, dx = 2 with column u) of 4 channels at once;
    they are interleaved when written out.
    """
    N, Ci, H, W = dx.shape
    Co = gp.shape[1]
    Cb = wpt.shape[0]
    Wq = Wo + 2
    We = (W + 1) // 2                                          # even columns x = 2u
    Wd = W // 2                                                # odd columns x = 2u + 1
    nrb = (Ho + R - 1) // R
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        k0 = (job - n * nrb) * R
        acc = np.empty((2 * MB, R * Wq), dx.dtype)             # even / odd columns, 4 channels
        e0 = acc[0]
        e1 = acc[1]
        e2 = acc[2]
        e3 = acc[3]
        o0 = acc[4]
        o1 = acc[5]
        o2 = acc[6]
        o3 = acc[7]
        for par in range(2):                                   # 0: rows y = 2k, 1: y = 2k + 1
            nk = (min(Ho, k0 + R) if par == 0 else min(H // 2, k0 + R)) - k0
            if nk <= 0:
                continue
            L = nk * Wq - 2                                    # flat (k, u); u < Wo needed
            for bb in range(Cb):
                for q in range(L):
                    e0[q] = 0.0
                    e1[q] = 0.0
                    e2[q] = 0.0
                    e3[q] = 0.0
                    o0[q] = 0.0
                    o1[q] = 0.0
                    o2[q] = 0.0
                    o3[q] = 0.0
                for m in range(Co):
                    if par == 0:
                        g = gp[n, m, (k0 + 1) * Wq + 1:]       # g[q] = dz[k0 + kk, u]
                        wv = wpt[bb, m, 1]
                        w00 = wv[0, 0]
                        w01 = wv[0, 1]
                        w02 = wv[0, 2]
                        w03 = wv[0, 3]
                        w10 = wv[1, 0]
                        w11 = wv[1, 1]
                        w12 = wv[1, 2]
                        w13 = wv[1, 3]
                        w20 = wv[2, 0]
                        w21 = wv[2, 1]
                        w22 = wv[2, 2]
                        w23 = wv[2, 3]
                        for q in range(L):
                            g1 = g[q]
                            g2 = g[q + 1]
                            e0[q] += w10 * g1
                            e1[q] += w11 * g1
                            e2[q] += w12 * g1
                            e3[q] += w13 * g1
                            o0[q] += w00 * g2 + w20 * g1
                            o1[q] += w01 * g2 + w21 * g1
                            o2[q] += w02 * g2 + w22 * g1
                            o3[q] += w03 * g2 + w23 * g1
                    else:
                        gA = gp[n, m, (k0 + 2) * Wq + 1:]      # dz row k + 1 (dy = 0)
                        gB = gp[n, m, (k0 + 1) * Wq + 1:]      # dz row k (dy = 2)
                        wv = wpt[bb, m, 0]
                        wu = wpt[bb, m, 2]
                        w00 = wv[0, 0]
                        w01 = wv[0, 1]
                        w02 = wv[0, 2]
                        w03 = wv[0, 3]
                        w10 = wv[1, 0]
                        w11 = wv[1, 1]
                        w12 = wv[1, 2]
                        w13 = wv[1, 3]
                        w20 = wv[2, 0]
                        w21 = wv[2, 1]
                        w22 = wv[2, 2]
                        w23 = wv[2, 3]
                        u00 = wu[0, 0]
                        u01 = wu[0, 1]
                        u02 = wu[0, 2]
                        u03 = wu[0, 3]
                        u10 = wu[1, 0]
                        u11 = wu[1, 1]
                        u12 = wu[1, 2]
                        u13 = wu[1, 3]
                        u20 = wu[2, 0]
                        u21 = wu[2, 1]
                        u22 = wu[2, 2]
                        u23 = wu[2, 3]
                        for q in range(L):
                            a1 = gA[q]
                            a2 = gA[q + 1]
                            b1 = gB[q]
                            b2 = gB[q + 1]
                            e0[q] += w10 * a1 + u10 * b1
                            e1[q] += w11 * a1 + u11 * b1
                            e2[q] += w12 * a1 + u12 * b1
                            e3[q] += w13 * a1 + u13 * b1
                            o0[q] += w00 * a2 + w20 * a1 + u00 * b2 + u20 * b1
                            o1[q] += w01 * a2 + w21 * a1 + u01 * b2 + u21 * b1
                            o2[q] += w02 * a2 + w22 * a1 + u02 * b2 + u22 * b1
                            o3[q] += w03 * a2 + w23 * a1 + u03 * b2 + u23 * b1
                for kc in range(MB):
                    c = bb * MB + kc
                    if c < Ci:
                        for kk in range(nk):
                            y = 2 * (k0 + kk) + par
                            for u in range(We):
                                dx[n, c, y, 2 * u] = acc[kc, kk * Wq + u]
                            for u in range(Wd):
                                dx[n, c, y, 2 * u + 1] = acc[MB + kc, kk * Wq + u]


# ---------------------------------------------------------------------------------------------
# Entry points (keyword arguments; None for "no bias" / "no activation")
# ---------------------------------------------------------------------------------------------
def conv3x3s2_forward(x, w, out, *, rows, tiles, bias=None, act=None):
    """out (N, Co, Ho, Wo) = LeakyReLU_act(conv3x3(x, w, stride 2, pad 1) + bias); must equal
    ``conv3x3s2_forward_reference``. w: (Co, Ci, 3, 3) (packed here); rows: output rows per job;
    tiles: (N·ceil(Ho/rows), Ci, 4·(rows + 1)·(Wo + 2)) scratch, left holding each job's phase
    rows for ``conv3x3s2_dw``."""
    use_bias = bias is not None
    run(_conv3x3s2_fwd_kernel, x, pack_weights(w), bias if use_bias else np.zeros(1, x.dtype),
                          use_bias, 0.0 if act is None else float(act), act is not None, rows,
                          tiles, out)


def conv3x3s2_grad_planes(dout, dz_planes, rowsum, *, act_out=None, act=None):
    """dz_planes (N, Co, (Ho + 2)·(Wo + 2)) = dz = dout · (1 where act_out > 0 else act) with a
    zero border (dz = dout when act is None); rowsum[n, m] = Σ dz (the bias gradient's parts)."""
    run(_grad_planes_kernel, dout, dout if act is None else act_out,
                        0.0 if act is None else float(act), act is not None, dz_planes, rowsum)


def conv3x3s2_dw(x_tiles, dz_planes, dw_partial, *, out_h, out_w, rows):
    """Per-job partial dw (jobs, ceil(Co/MB)·MB, Ci, 3, 3); rows :Co summed over jobs must equal
    the dw of ``conv3x3s2_backward_reference``."""
    run(_conv3x3s2_dw_kernel, x_tiles, dz_planes, out_h, out_w, rows, x_tiles.dtype.type(0),
                         dw_partial)


def conv3x3s2_dx(dz_planes, w, dx, *, out_h, out_w, rows):
    """dx (N, Ci, H, W) from the dz planes and the forward weights w (Co, Ci, 3, 3) (packed
    here, input channels in blocks); must equal the dx of ``conv3x3s2_backward_reference``."""
    run(_conv3x3s2_dx_kernel, dz_planes, pack_weights(np.ascontiguousarray(w.transpose(1, 0, 2, 3))),
                         out_h, out_w, rows, dx)
