"""Direct (no GEMM) kernels for the 2×2, stride-2, pad-0 transposed convolution.

This is the Meta-Reg U-Net's learned ×2 upsampler (``ConvTranspose2d(c, c, k=2, stride=2)``).
With kernel = stride = 2 the four output *phases* (a, b) = (row parity, column parity) never
overlap, so the op is four independent 1×1 convolutions::

    out[n, o, 2i + a, 2j + b] = bias[o] + Σ_c w[c, o, a, b] · x[n, c, i, j]
    dx[n, c, i, j]            = Σ_{o, a, b} w[c, o, a, b] · dout[n, o, 2i + a, 2j + b]
    dw[c, o, a, b]            = Σ_{n, i, j} x[n, c, i, j] · dout[n, o, 2i + a, 2j + b]
    db[o]                     = Σ dout[n, o]

Number the ``V = 4·Co`` (o, a, b) triples ``v = 4·o + 2·a + b``: then the forward is one 1×1
convolution from Ci to V "virtual" channels followed by an interleave, dx is a 1×1
convolution from the V de-interleaved phase planes of dout back to Ci, and dw is Ci × V dot
products. The generic path in ``conv.py`` does the same work as 4 GEMMs, but pays for a padded
copy of x, a phase buffer and a separate interleave pass, all through memory; here each
parallel job handles a block of ``R`` input rows (``R·W`` pixels, flattened — a 1×1
convolution has no shifts, so rows need no padding) and everything stays in L1/L2:

* forward (``convT2_fwd``): for each output channel o, 4 accumulator rows (its 4 phases) of
  length R·W get ``KB = 4`` input channels per pass: 4 loads, 4 load/stores and 16 FMAs per
  SIMD step with 16 weights in registers (AVX-512 has 32 vector registers). The finished rows
  get the bias and are interleaved straight into the two output rows 2i and 2i + 1.
* backward (``convT2_bwd``): a job first de-interleaves its 2R rows of dout into a tile of V
  phase planes (R·W each; the db sums come from the same pass), then computes dx from the
  tile (blocks of 4 input channels, 4 phase planes per pass: the forward loop with roles
  swapped) and its partial dw as 16 SIMD dot products (4 channels × 4 planes) per step over
  the tile and the job's x rows, summed over jobs afterwards. dout is read from memory once.

Numba details (as in ``_direct3x3.py``, measured there): hot loops index 1-D slices from 0
(``a[off + q]`` with an ``off`` of unknown sign becomes gather loads), float scalar sums start
from a zero of the array dtype (``zero`` argument: a float64 literal would promote float32
products), weights are hoisted into locals. Every kernel also runs in float64 (the tests check
that path against the loop references at round-off level and by gradient checks).

``conv.py`` sends only float32 transposed convolutions with k = 2, stride 2, pad 0,
output_padding 0 here; every other case (and float64) keeps the GEMM path unchanged.

Names: ``R`` = input rows per parallel job (``rows_per_job``), ``V = 4·Co`` virtual channels,
``KB``/``MB`` the channel blocks below, ``J`` = number of jobs.

Reading order: the slow references (the definition) first, then the Numba kernels and the
entry points ``forward`` / ``backward``, which must equal them.
"""
import numba
import numpy as np
from regnp.ops._fast.threads import run, share

KB = 4          # input channels (forward) / phase planes (dx) per accumulation pass
MB = 4          # input channels per dx block (zero-padded weights for the tail block)


# ---------------------------------------------------------------------------------------------
# The definition: slow references (straight from the phase formulas in the module docstring)
# ---------------------------------------------------------------------------------------------
def forward_reference(x, w, b):
    """out[n, o, 2i + a, 2j + b'] = b[o] + Σ_c w[c, o, a, b'] x[n, c, i, j], explicit phases:
    what ``forward`` must equal (and what ``conv.conv_transpose2d_forward_reference`` gives for
    k = 2, stride 2, pad 0; the tests check both)."""
    N, Ci, H, W = x.shape
    Co = w.shape[1]
    out = np.zeros((N, Co, 2 * H, 2 * W), x.dtype)
    for a in range(2):
        for bb in range(2):
            for o in range(Co):
                for c in range(Ci):
                    out[:, o, a::2, bb::2] += w[c, o, a, bb] * x[:, c]
    if b is not None:
        out += b[None, :, None, None]
    return out


def backward_reference(dout, x, w):
    """(dx, dw, db) from the phase formulas, explicit loops over channels and phases: what
    ``backward`` must equal."""
    N, Ci, H, W = x.shape
    Co = w.shape[1]
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for a in range(2):
        for bb in range(2):
            for o in range(Co):
                g = dout[:, o, a::2, bb::2]                    # (N, H, W)
                for c in range(Ci):
                    dx[:, c] += w[c, o, a, bb] * g
                    dw[c, o, a, bb] = np.sum(x[:, c] * g)
    return dx, dw, dout.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# The fast path: Numba kernels (positional arguments); Python entry points at the bottom
# ---------------------------------------------------------------------------------------------


def rows_per_job(N, H, W):
    """Input rows per job: about 512 pixels (a 32-channel backward tile of 4·32 phase planes
    is then 256 KB, in L2), halved while there are fewer than 4 jobs."""
    R = max(1, min(H, 512 // W)) if W < 512 else 1
    while R > 1 and N * (-(-H // R)) < 4:
        R = (R + 1) // 2
    return R


def pack_forward(w):
    """(Ci, Co, 2, 2) -> (Co, Ci, 4): wpk[o, c, 2a + b] = w[c, o, a, b]."""
    Ci, Co = w.shape[:2]
    return np.ascontiguousarray(w.reshape(Ci, Co, 4).transpose(1, 0, 2))


def pack_dx(w, mb=MB):
    """(Ci, Co, 2, 2) -> (ceil(Ci/mb), 4·Co, mb): wdx[cb, v, m] = w[cb·mb + m, v // 4, v % 4]
    (zero for the padded channels of the tail block)."""
    Ci, Co = w.shape[:2]
    Cb = -(-Ci // mb)
    wp = np.zeros((Cb * mb, Co * 4), w.dtype)
    wp[:Ci] = w.reshape(Ci, Co * 4)
    return np.ascontiguousarray(wp.reshape(Cb, mb, Co * 4).transpose(0, 2, 1))


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def convT2_fwd(part, parts, xf, W, wpk, bias, R, out):
    """out = conv_transpose2d(x, w, bias), kernel 2, stride 2, pad 0.

    Inputs:
    - xf: (N, Ci, H·W) the input, each channel flattened (contiguous);  W: its width.
    - wpk: (Co, Ci, 4) weights from ``pack_forward``;  bias: (Co,) (zeros for no bias).
    - R: input rows per job (``rows_per_job``).
    - out: (N, Co, 2H, 2W), written.
    """
    N, Ci, HW = xf.shape
    H = HW // W
    Co = out.shape[1]
    nrb = (H + R - 1) // R
    C4 = Ci - Ci % KB
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        L = nr * W
        p0 = r0 * W                                            # the job's pixels p0 .. p0 + L
        acc = np.empty((4, R * W), out.dtype)                  # (phase, pixel)
        a0 = acc[0]
        a1 = acc[1]
        a2 = acc[2]
        a3 = acc[3]
        for o in range(Co):
            for q in range(L):
                a0[q] = 0.0
                a1[q] = 0.0
                a2[q] = 0.0
                a3[q] = 0.0
            for c in range(0, C4, KB):
                xa = xf[n, c, p0:p0 + L]                       # (slices of one row: LLVM
                xb = xf[n, c + 1, p0:p0 + L]                   # sees unit-stride loads; a
                xc = xf[n, c + 2, p0:p0 + L]                   # 2-D xf[n, :, a:b] would
                xd = xf[n, c + 3, p0:p0 + L]                   # give strided ones)
                wa = wpk[o, c]
                wb = wpk[o, c + 1]
                wc = wpk[o, c + 2]
                wd = wpk[o, c + 3]
                wa0 = wa[0]
                wa1 = wa[1]
                wa2 = wa[2]
                wa3 = wa[3]
                wb0 = wb[0]
                wb1 = wb[1]
                wb2 = wb[2]
                wb3 = wb[3]
                wc0 = wc[0]
                wc1 = wc[1]
                wc2 = wc[2]
                wc3 = wc[3]
                wd0 = wd[0]
                wd1 = wd[1]
                wd2 = wd[2]
                wd3 = wd[3]
                for q in range(L):                             # SIMD along the pixels
                    x0 = xa[q]
                    x1 = xb[q]
                    x2 = xc[q]
                    x3 = xd[q]
                    t0 = a0[q] + wa0 * x0
                    t1 = a1[q] + wa1 * x0
                    t2 = a2[q] + wa2 * x0
                    t3 = a3[q] + wa3 * x0
                    t0 = t0 + wb0 * x1
                    t1 = t1 + wb1 * x1
                    t2 = t2 + wb2 * x1
                    t3 = t3 + wb3 * x1
                    t0 = t0 + wc0 * x2
                    t1 = t1 + wc1 * x2
                    t2 = t2 + wc2 * x2
                    t3 = t3 + wc3 * x2
                    a0[q] = t0 + wd0 * x3
                    a1[q] = t1 + wd1 * x3
                    a2[q] = t2 + wd2 * x3
                    a3[q] = t3 + wd3 * x3
            for c in range(C4, Ci):                            # tail: Ci % KB channels
                xa = xf[n, c, p0:p0 + L]
                wa = wpk[o, c]
                wa0 = wa[0]
                wa1 = wa[1]
                wa2 = wa[2]
                wa3 = wa[3]
                for q in range(L):
                    x0 = xa[q]
                    a0[q] = a0[q] + wa0 * x0
                    a1[q] = a1[q] + wa1 * x0
                    a2[q] = a2[q] + wa2 * x0
                    a3[q] = a3[q] + wa3 * x0
            bo = bias[o]
            for rr in range(nr):                               # bias + interleave, one write
                top = out[n, o, 2 * (r0 + rr)]                 # (2W,) output row 2i
                bot = out[n, o, 2 * (r0 + rr) + 1]             # (2W,) output row 2i + 1
                e0 = a0[rr * W:rr * W + W]
                e1 = a1[rr * W:rr * W + W]
                e2 = a2[rr * W:rr * W + W]
                e3 = a3[rr * W:rr * W + W]
                for j in range(W):
                    top[2 * j] = e0[j] + bo
                    top[2 * j + 1] = e1[j] + bo
                    bot[2 * j] = e2[j] + bo
                    bot[2 * j + 1] = e3[j] + bo


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def convT2_bwd(part, parts, dout, xf, wdx, R, zero, tiles, dxf, dwp, dbp):
    """dx, and per-job partial dw and db, of ``convT2_fwd``.

    Inputs:
    - dout: (N, Co, 2H, 2W) upstream gradient;  xf: (N, Ci, H·W) the forward's input.
    - wdx: (Cb, 4·Co, MB) weights from ``pack_dx``;  R: input rows per job.
    - zero: 0 of the arrays' dtype (keeps float32 sums float32).
    - tiles: (J, 4·Co, R·W) scratch, J = N·ceil(H/R): tiles[job, 4o + 2a + b, rr·W + j] =
      dout[n, o, 2(r0 + rr) + a, 2j + b] (the job's phase planes).
    Returns (written):
    - dxf: (N, Ci, H·W) input gradient, flattened.
    - dwp: (J, Ci, 4·Co) partial dw: dwp[job, c, v] = Σ_job's pixels x[c] · plane v.
    - dbp: (J, Co) partial db.
    """
    N, Co, H2, W2 = dout.shape
    Ci = xf.shape[1]
    H = H2 // 2
    W = W2 // 2
    V = 4 * Co
    Cb = wdx.shape[0]
    nrb = (H + R - 1) // R
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        L = nr * W
        t = tiles[job]                                         # (V, R·W)
        # 1. de-interleave the 2·nr rows of dout into the V phase planes; db on the way
        for o in range(Co):
            s = zero
            for rr in range(nr):
                top = dout[n, o, 2 * (r0 + rr)]                # (2W,)
                bot = dout[n, o, 2 * (r0 + rr) + 1]
                p0 = t[4 * o, rr * W:rr * W + W]
                p1 = t[4 * o + 1, rr * W:rr * W + W]
                p2 = t[4 * o + 2, rr * W:rr * W + W]
                p3 = t[4 * o + 3, rr * W:rr * W + W]
                for j in range(W):
                    p0[j] = top[2 * j]
                    p1[j] = top[2 * j + 1]
                    p2[j] = bot[2 * j]
                    p3[j] = bot[2 * j + 1]
                for j in range(W2):
                    s += top[j] + bot[j]
            dbp[job, o] = s
        # 2. dx: blocks of MB input channels, KB phase planes per pass
        acc = np.empty((MB, R * W), dxf.dtype)
        a0 = acc[0]
        a1 = acc[1]
        a2 = acc[2]
        a3 = acc[3]
        for cb in range(Cb):
            for q in range(L):
                a0[q] = 0.0
                a1[q] = 0.0
                a2[q] = 0.0
                a3[q] = 0.0
            for v in range(0, V, KB):                      # V = 4·Co: no tail
                ga = t[v]
                gb = t[v + 1]
                gc = t[v + 2]
                gd = t[v + 3]
                wa = wdx[cb, v]
                wb = wdx[cb, v + 1]
                wc = wdx[cb, v + 2]
                wd = wdx[cb, v + 3]
                wa0 = wa[0]
                wa1 = wa[1]
                wa2 = wa[2]
                wa3 = wa[3]
                wb0 = wb[0]
                wb1 = wb[1]
                wb2 = wb[2]
                wb3 = wb[3]
                wc0 = wc[0]
                wc1 = wc[1]
                wc2 = wc[2]
                wc3 = wc[3]
                wd0 = wd[0]
                wd1 = wd[1]
                wd2 = wd[2]
                wd3 = wd[3]
                for q in range(L):
                    g0 = ga[q]
                    g1 = gb[q]
                    g2 = gc[q]
                    g3 = gd[q]
                    t0 = a0[q] + wa0 * g0
                    t1 = a1[q] + wa1 * g0
                    t2 = a2[q] + wa2 * g0
                    t3 = a3[q] + wa3 * g0
                    t0 = t0 + wb0 * g1
                    t1 = t1 + wb1 * g1
                    t2 = t2 + wb2 * g1
                    t3 = t3 + wb3 * g1
                    t0 = t0 + wc0 * g2
                    t1 = t1 + wc1 * g2
                    t2 = t2 + wc2 * g2
                    t3 = t3 + wc3 * g2
                    a0[q] = t0 + wd0 * g3
                    a1[q] = t1 + wd1 * g3
                    a2[q] = t2 + wd2 * g3
                    a3[q] = t3 + wd3 * g3
            for m in range(MB):
                c = cb * MB + m
                if c < Ci:
                    d = dxf[n, c, r0 * W:r0 * W + L]
                    am = acc[m]
                    for q in range(L):
                        d[q] = am[q]
        # 3. partial dw: 16 SIMD dot products (4 channels × 4 planes) per step
        p0 = r0 * W
        for c in range(0, Ci, 4):
            c0 = c
            c1 = min(c + 1, Ci - 1)                            # the tail block repeats the
            c2 = min(c + 2, Ci - 1)                            # last channel; those results
            c3 = min(c + 3, Ci - 1)                            # are not stored
            xa = xf[n, c0, p0:p0 + L]                          # the job's x pixels
            xb = xf[n, c1, p0:p0 + L]
            xc = xf[n, c2, p0:p0 + L]
            xd = xf[n, c3, p0:p0 + L]
            for v in range(0, V, 4):
                ga = t[v]
                gb = t[v + 1]
                gc = t[v + 2]
                gd = t[v + 3]
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
                for q in range(L):
                    x0 = xa[q]
                    x1 = xb[q]
                    x2 = xc[q]
                    x3 = xd[q]
                    g0 = ga[q]
                    g1 = gb[q]
                    g2 = gc[q]
                    g3 = gd[q]
                    s00 += x0 * g0
                    s01 += x0 * g1
                    s02 += x0 * g2
                    s03 += x0 * g3
                    s10 += x1 * g0
                    s11 += x1 * g1
                    s12 += x1 * g2
                    s13 += x1 * g3
                    s20 += x2 * g0
                    s21 += x2 * g1
                    s22 += x2 * g2
                    s23 += x2 * g3
                    s30 += x3 * g0
                    s31 += x3 * g1
                    s32 += x3 * g2
                    s33 += x3 * g3
                d = dwp[job, c0, v:v + 4]
                d[0] = s00
                d[1] = s01
                d[2] = s02
                d[3] = s03
                if c + 1 < Ci:
                    d = dwp[job, c1, v:v + 4]
                    d[0] = s10
                    d[1] = s11
                    d[2] = s12
                    d[3] = s13
                if c + 2 < Ci:
                    d = dwp[job, c2, v:v + 4]
                    d[0] = s20
                    d[1] = s21
                    d[2] = s22
                    d[3] = s23
                if c + 3 < Ci:
                    d = dwp[job, c3, v:v + 4]
                    d[0] = s30
                    d[1] = s31
                    d[2] = s32
                    d[3] = s33


# ---------------------------------------------------------------------------------------------
# Entry points (used by conv.py and the tests; any float dtype)
# ---------------------------------------------------------------------------------------------
def forward(x, w, b, work=None):
    """out (N, Co, 2H, 2W) = conv_transpose2d(x, w, b, stride 2, pad 0) for w (Ci, Co, 2, 2);
    must equal ``forward_reference``.

    x must be C-contiguous; b may be None. Returns (out, rows) (rows: input rows per parallel
    job, for ``backward``).
    """
    N, Ci, H, W = x.shape
    Co = w.shape[1]
    R = rows_per_job(N, H, W)
    bias = b if b is not None else np.zeros(Co, x.dtype)
    out = np.empty((N, Co, 2 * H, 2 * W), x.dtype)             # (N, Co, 2H, 2W)
    run(convT2_fwd, x.reshape(N, Ci, H * W), W, pack_forward(w), bias, R, out)
    return out, R


def backward(dout, x, w, *, rows, tiles):
    """(dx, dw, db) of ``forward`` for C-contiguous dout (N, Co, 2H, 2W) and x (N, Ci, H, W);
    must equal ``backward_reference``. rows: input rows per job (from ``forward``); tiles:
    (N·ceil(H/rows), 4·Co, rows·W) scratch of the dtype (``tiles_shape``). db is always returned."""
    R = rows
    N, Ci, H, W = x.shape
    Co = w.shape[1]
    dt = x.dtype
    J = tiles.shape[0]
    dx = np.empty((N, Ci, H, W), dt)                           # (N, Ci, H, W)
    dwp = np.empty((J, Ci, 4 * Co), dt)                        # per-job partial dw
    dbp = np.empty((J, Co), dt)
    run(convT2_bwd, dout, x.reshape(N, Ci, H * W), pack_dx(w), R, dt.type(0), tiles,
               dx.reshape(N, Ci, H * W), dwp, dbp)
    dw = dwp.sum(axis=0).reshape(Ci, Co, 2, 2)                 # (Ci, Co, 2, 2)
    db = dbp.sum(axis=0)                                       # (Co,)
    return dx, dw, db


def tiles_shape(N, H, W, Co, R):
    """Shape of the backward scratch: (jobs, 4·Co, R·W)."""
    return (N * (-(-H // R)), 4 * Co, R * W)
