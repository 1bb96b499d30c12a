"""Direct (no GEMM) 3×3, stride-1, pad-1 convolution kernels: forward, dx and dw.

Why not GEMMs here? At 256×256 the U-Net layers have few channels (16–48). As per-tap GEMMs
(see ``conv.py``) every one of the 9 taps re-reads the whole input and re-reads/re-writes the
whole output from memory, and OpenBLAS's packing of such skinny matrices costs about as much
as the multiply. Measured in one run on this 2-core machine, these kernels make the 256×256
layers about 2× faster forward+backward than the shifted GEMMs (and reach 150–170 GFLOP/s of
the ~200 peak on the big layers when the machine is quiet), with no padded copy of the input,
no crop pass and no separate gradient-preparation pass.

How it works: the image is cut into blocks of ``R`` output rows (one parallel job each).

1. A job copies the ``R + 2`` input rows its block needs into a zero-padded *tile*
   ``(Ci, (R + 2)·(W + 2))`` (rows of width W + 2, flattened; the padding is fused, and an
   optional LeakyReLU mask is applied while copying — that is how the backward pass feeds
   ``dz = dout · mask`` without a separate pass).
2. For every block of ``MB = 4`` output channels it accumulates into 4 row buffers::

       for c, dy:                                  x0, x1, x2 = tile[c, r + dy, j + 0/1/2]
           acc_m[j] += w[m, c, dy, 0]·x0 + w[m, c, dy, 1]·x1 + w[m, c, dy, 2]·x2   (m = 0..3)

   The innermost loop runs along the row (j) with 12 weights held in registers, so LLVM turns
   it into SIMD fused multiply-adds: 3 loads and 4 load/stores feed 12 FMAs, all in L1 cache.
   ``conv3x3_rows`` does this one output row at a time (best for W >= 128);
   ``conv3x3_flat`` runs one loop over the job's flattened rows (best for narrow images,
   where per-row loops are too short); ``conv3x3_rows2`` is the per-row kernel with blocks of
   2 channels (the 2-channel flow head); ``conv3x3`` picks. (8 output channels per block
   spill registers: measured 1.6× slower.)
3. The accumulated rows get the bias and the LeakyReLU and are written to the output once.

``dx`` is the same kernel run on ``dz`` with the flipped, transposed weights
``w_dx[c, m, dy, dx] = w[m, c, 2 - dy, 2 - dx]`` (a stride-1 transposed convolution is a
convolution); its tiles are the dz tiles. ``dw[m, c, dy, dx] = Σ dz[m, i, j] · xpad[c, i + dy,
j + dx]`` reuses the forward's input tiles and the dz tiles: per job, 12 SIMD dot products
(4 output channels × 3 column shifts) per (c, dy) over the flattened rows give one partial
``dw`` per job, summed afterwards.

Numba details that matter (measured): the hot loops index 1-D slices from 0 (an index like
``a[off + q]`` with ``off`` of unknown sign compiles to gather loads), float32 sums start from
a float32 zero (a float64 literal promotes every product), and weights are hoisted into local
variables (else they are reloaded every iteration and the loop does not vectorise).

Weights are packed as ``(Cb, Ci, 3, 3, MB)``: output channels in blocks of MB, zero-padded.

Names used throughout: ``R`` = output rows per parallel job (``rows_per_job``), ``MB`` = output
channels per register block, ``Cb`` = number of such blocks, ``Wp = W + 2`` = padded row width,
``J`` = number of jobs (N·ceil(H/R)).

Reading order: the slow loop references (the definition) come first; then the Numba kernels
(positional arguments: what Numba compiles) and the two entry points ``conv3x3`` and
``conv3x3_dw`` (keyword arguments), which must equal the references —
``tests/test_ops_direct3x3.py`` checks it.
"""
import numba
import numpy as np
from regnp.ops._fast.threads import run, share

MB = 4          # output channels per register block (the kernels keep MB rows of
                # accumulators and 3·MB weights in registers)


# ---------------------------------------------------------------------------------------------
# The definition: slow references (explicit padding and loops). The kernels below must equal them.
# ---------------------------------------------------------------------------------------------
def conv3x3_reference(inp, w, *, bias=None, act=None, in_mask_of=None, in_slope=0.0):
    """What ``conv3x3`` computes, from the definition: with zp = z zero-padded by 1 and
    z = inp · (in_slope where in_mask_of <= 0, else 1)  (no mask when in_mask_of is None)::

        out[n, o, i, j] = LeakyReLU_act( bias[o] + Σ_{c, dy, dx} w[o, c, dy, dx] · zp[n, c, i + dy, j + dx] )

    w: (Co, Ci, 3, 3) unpacked; act None means no activation. (The conv2d loop reference with
    stride 1, pad 1; ``tests/test_ops_direct3x3.py`` checks the two references agree.)"""
    z = inp if in_mask_of is None else inp * np.where(in_mask_of <= 0, in_slope, 1.0)
    N, Ci, H, W = z.shape
    Co = w.shape[0]
    zp = np.zeros((N, Ci, H + 2, W + 2), z.dtype)
    zp[:, :, 1:H + 1, 1:W + 1] = z
    out = np.zeros((N, Co, H, W), z.dtype)
    for o in range(Co):
        for c in range(Ci):
            for dy in range(3):
                for dx in range(3):
                    out[:, o] += w[o, c, dy, dx] * zp[:, c, dy:dy + H, dx:dx + W]
        if bias is not None:
            out[:, o] += bias[o]
    if act is not None:
        out = np.where(out < 0, out * act, out)
    return out


def conv3x3_dw_reference(x, dz):
    """What ``conv3x3_dw`` computes (summed over its jobs), from the definition::

        dw[m, c, dy, dx] = Σ_{n,i,j} dz[n, m, i, j] · xpad[n, c, i + dy, j + dx];   db[m] = Σ dz[:, m]
    """
    N, Ci, H, W = x.shape
    Co = dz.shape[1]
    xp = np.zeros((N, Ci, H + 2, W + 2), x.dtype)
    xp[:, :, 1:H + 1, 1:W + 1] = x
    dw = np.zeros((Co, Ci, 3, 3), x.dtype)
    for m in range(Co):
        for c in range(Ci):
            for dy in range(3):
                for dx in range(3):
                    dw[m, c, dy, dx] = np.sum(dz[:, m] * xp[:, c, dy:dy + H, dx:dx + W])
    return dw, dz.sum(axis=(0, 2, 3))


def conv3x3_backward_reference(x, w, dz):
    """(dx, dw, db) of the stride-1 pad-1 convolution for the pre-activation gradient dz, by
    scattering each output's gradient back (xpad = x zero-padded by 1)::

        dxpad[n, c, i + dy, j + dx] += w[m, c, dy, dx] · dz[n, m, i, j]     (then crop the pad)
        dw[m, c, dy, dx] = Σ_{n,i,j} dz[n, m, i, j] · xpad[n, c, i + dy, j + dx];   db[m] = Σ dz[:, m]

    What ``conv3x3_few_out_backward`` must equal (dw and db summed over its jobs)."""
    N, Ci, H, W = x.shape
    Co = dz.shape[1]
    xp = np.zeros((N, Ci, H + 2, W + 2), x.dtype)
    xp[:, :, 1:H + 1, 1:W + 1] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros((Co, Ci, 3, 3), x.dtype)
    for m in range(Co):
        for c in range(Ci):
            for dy in range(3):
                for dx in range(3):
                    win = (slice(None), c, slice(dy, dy + H), slice(dx, dx + W))
                    dw[m, c, dy, dx] = np.sum(dz[:, m] * xp[win])
                    dxp[win] += w[m, c, dy, dx] * dz[:, m]
    return dxp[:, :, 1:H + 1, 1:W + 1], dw, dz.sum(axis=(0, 2, 3))


# ---------------------------------------------------------------------------------------------
# The fast path: Numba kernels (positional arguments), then the keyword entry points
# ---------------------------------------------------------------------------------------------


def rows_per_job(N, H, W, C):
    """Output rows per job (measured): 8 for W >= 128 (a 34-channel tile is then 350 KB, in
    L2), 4 at W = 64, 8 below (longer flat loops); halved until there are >= 4 jobs."""
    R = 8 if W >= 128 else (4 if W >= 64 else 8)
    while R > 1 and N * (-(-H // R)) < 4:
        R //= 2
    return R


def pack_weights(w, mb=MB):
    """(Co, Ci, 3, 3) -> (ceil(Co/mb), Ci, 3, 3, mb): output channels innermost, zero-padded."""
    Co, Ci = w.shape[:2]
    Cb = -(-Co // mb)
    wp = np.zeros((Cb * mb, Ci, 3, 3), w.dtype)
    wp[:Co] = w
    return np.ascontiguousarray(wp.reshape(Cb, mb, Ci, 3, 3).transpose(0, 2, 3, 4, 1))


def flip_transpose(w):
    """Weights of the convolution that computes dx: w_dx[c, m] = w[m, c] rotated 180°."""
    return np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _fill_tile(inp, inp2, in_up, ysrc, in_slope, in_mask, n, r0, R, H, W, t):
    """t (Ca + Cb, (R + 2) * (W + 2)) = zero-padded input rows r0 - 1 .. r0 + R of image n,
    flattened, of the channel concatenation [up(inp), inp2] — which is never built:

    - channels 0 .. Ca - 1 come from inp (N, Ca, H / in_up, W / in_up), nearest-upsampled by
      ``in_up`` (1 or 2) while copying: row y reads inp row y // 2, column j reads j // 2;
    - channels Ca .. Ca + Cb - 1 come from inp2 (N, Cb, H, W) (Cb = 0: no second input);
    - with in_mask (in_up 1, no inp2) inp is multiplied by in_slope where ysrc <= 0 (the
      LeakyReLU backward).

    Returns the sum of (v - v) over the input values read: 0 when all are finite, NaN when one
    is NaN or ±Inf — the NaN/Inf check of the input, fused into the pass that reads it anyway
    (``reassoc`` lets that sum vectorise; NaN and Inf keep their IEEE meaning)."""
    Ca = inp.shape[1]
    Wp = W + 2
    chk = 0.0
    for c in range(t.shape[0]):
        for rr in range(R + 2):
            y = r0 - 1 + rr
            row = t[c, rr * Wp:(rr + 1) * Wp]              # (W + 2,)
            if y < 0 or y >= H:
                for j in range(W + 2):
                    row[j] = 0.0
                continue
            row[0] = 0.0
            row[W + 1] = 0.0
            if c >= Ca:
                src = inp2[n, c - Ca, y]                   # (W,)
                for j in range(W):
                    v = src[j]
                    chk += v - v
                    row[j + 1] = v
            elif in_up == 2:
                src = inp[n, c, y // 2]                    # (W / 2,)
                for jj in range(W // 2):
                    v = src[jj]
                    chk += v - v
                    row[2 * jj + 1] = v
                    row[2 * jj + 2] = v
            elif in_mask:
                for j in range(W):
                    v = inp[n, c, y, j]
                    chk += v - v
                    if ysrc[n, c, y, j] <= 0:
                        v = v * in_slope
                    row[j + 1] = v
            else:
                src = inp[n, c, y]
                for j in range(W):
                    v = src[j]
                    chk += v - v
                    row[j + 1] = v
    return chk


@numba.njit(cache=True, nogil=True)
def _store_row(acc, bo, slope, use_act, n, o, y, out, out2, out_up):
    """Write one finished output row ``acc`` (W,) (+ bias bo, LeakyReLU) of channel o, row y.

    Channels o < out.shape[1] go to ``out``; the rest to ``out2`` (channel o - out.shape[1]).
    With out_up == 2, ``out`` is at half resolution and receives the 2×2 block sums (the
    backward of nearest upsampling): an even row writes its pair sums, the odd row after it
    adds its own — the two rows of a pair always belong to the same job (R even)."""
    W = acc.shape[0]
    Ca = out.shape[1]
    if o >= Ca:
        dst = out2[n, o - Ca, y]
        for j in range(W):
            v = acc[j] + bo
            if use_act and v < 0:
                v = v * slope
            dst[j] = v
    elif out_up == 1:
        dst = out[n, o, y]
        for j in range(W):
            v = acc[j] + bo
            if use_act and v < 0:
                v = v * slope
            dst[j] = v
    else:
        dst = out[n, o, y // 2]
        for jj in range(W // 2):
            v0 = acc[2 * jj] + bo
            v1 = acc[2 * jj + 1] + bo
            if use_act and v0 < 0:
                v0 = v0 * slope
            if use_act and v1 < 0:
                v1 = v1 * slope
            if y % 2 == 0:
                dst[jj] = v0 + v1
            else:
                dst[jj] += v0 + v1


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def conv3x3_rows(part, parts, inp, inp2, in_up, ysrc, in_slope, in_mask, wpk, bias, use_bias, slope, use_act, R,
                 tiles, out, out2, out_up):
    """out = LeakyReLU(conv3x3(inp · mask) + bias), stride 1, zero padding 1.

    Inputs:
    - inp: (N, Ci, H, W);  ysrc: same shape (read only when ``in_mask``): where ysrc <= 0 the
      input is multiplied by ``in_slope`` (the LeakyReLU backward mask).
    - wpk: (Cb, Ci, 3, 3, MB) packed weights (``pack_weights``);  bias: (>= Co,) if use_bias.
    - slope, use_act: LeakyReLU applied to the output.
    - R: output rows per job;  tiles: (N * ceil(H / R), Ci, (R + 2) * (W + 2)) scratch,
      filled with the zero-padded input rows of each job, flattened (kept: the dw kernel reads
      them later).
    - out: (N, Co, H, W), written.
    """
    N = inp.shape[0]
    Ci = tiles.shape[1]                                        # Ca + Cb input channels
    H, W = inp2.shape[2], inp2.shape[3]                        # the (virtual) input size
    Co = out.shape[1] + out2.shape[1]
    Cb = wpk.shape[0]
    nrb = (H + R - 1) // R
    Wp = W + 2
    chk = 0.0                                                  # NaN iff an input is NaN/Inf
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        t = tiles[job]                                         # (Ci, (R + 2) * (W + 2))
        chk += _fill_tile(inp, inp2, in_up, ysrc, in_slope, in_mask, n, r0, R, H, W, t)
        # 2. 4 output channels x one row at a time, accumulated in L1-resident rows
        acc = np.empty((MB, W), out.dtype)                     # (MB, W)
        a0 = acc[0]
        a1 = acc[1]
        a2 = acc[2]
        a3 = acc[3]
        for b in range(Cb):
            for rr in range(nr):
                for j in range(W):
                    a0[j] = 0.0
                    a1[j] = 0.0
                    a2[j] = 0.0
                    a3[j] = 0.0
                for c in range(Ci):
                    for dy in range(3):
                        xr = t[c, (rr + dy) * Wp:(rr + dy + 1) * Wp]   # padded row (W + 2,)
                        wv = wpk[b, c, dy]                     # (3, MB): [dx, m]
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
                        for j in range(W):                     # SIMD along the row
                            x0 = xr[j]
                            x1 = xr[j + 1]
                            x2 = xr[j + 2]
                            # written as chains a += w·x so each step is one FMA
                            t0 = a0[j] + w00 * x0
                            t1 = a1[j] + w01 * x0
                            t2 = a2[j] + w02 * x0
                            t3 = a3[j] + w03 * x0
                            t0 = t0 + w10 * x1
                            t1 = t1 + w11 * x1
                            t2 = t2 + w12 * x1
                            t3 = t3 + w13 * x1
                            a0[j] = t0 + w20 * x2
                            a1[j] = t1 + w21 * x2
                            a2[j] = t2 + w22 * x2
                            a3[j] = t3 + w23 * x2
                # 3. bias + LeakyReLU, one write of the finished rows
                for m in range(MB):
                    o = b * MB + m
                    if o < Co:
                        bo = bias[o] if use_bias else 0.0
                        _store_row(acc[m], bo, slope, use_act, n, o, r0 + rr, out, out2, out_up)
    return chk


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def conv3x3_rows2(part, parts, inp, inp2, in_up, ysrc, in_slope, in_mask, wpk, bias, use_bias, slope, use_act, R,
                 tiles, out, out2, out_up):
    """``conv3x3_rows`` for 1 or 2 output channels (the flow head): blocks of 2 channels,
    so no multiply-adds are spent on zero-padded channels. wpk: (Cb, Ci, 3, 3, 2)."""
    N = inp.shape[0]
    Ci = tiles.shape[1]                                        # Ca + Cb input channels
    H, W = inp2.shape[2], inp2.shape[3]                        # the (virtual) input size
    Co = out.shape[1] + out2.shape[1]
    Cb = wpk.shape[0]
    nrb = (H + R - 1) // R
    Wp = W + 2
    chk = 0.0                                                  # NaN iff an input is NaN/Inf
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        t = tiles[job]                                         # (Ci, (R + 2) * (W + 2))
        chk += _fill_tile(inp, inp2, in_up, ysrc, in_slope, in_mask, n, r0, R, H, W, t)
        acc = np.empty((2, W), out.dtype)                      # (2, W)
        a0 = acc[0]
        a1 = acc[1]
        for b in range(Cb):
            for rr in range(nr):
                for j in range(W):
                    a0[j] = 0.0
                    a1[j] = 0.0
                for c in range(Ci):
                    for dy in range(3):
                        xr = t[c, (rr + dy) * Wp:(rr + dy + 1) * Wp]   # padded row (W + 2,)
                        wv = wpk[b, c, dy]                     # (3, 2): [dx, m]
                        w00 = wv[0, 0]
                        w01 = wv[0, 1]
                        w10 = wv[1, 0]
                        w11 = wv[1, 1]
                        w20 = wv[2, 0]
                        w21 = wv[2, 1]
                        for j in range(W):                     # SIMD along the row
                            x0 = xr[j]
                            x1 = xr[j + 1]
                            x2 = xr[j + 2]
                            t0 = a0[j] + w00 * x0
                            t1 = a1[j] + w01 * x0
                            t0 = t0 + w10 * x1
                            t1 = t1 + w11 * x1
                            a0[j] = t0 + w20 * x2
                            a1[j] = t1 + w21 * x2
                # 3. bias + LeakyReLU, one write of the finished rows
                for m in range(2):
                    o = b * 2 + m
                    if o < Co:
                        bo = bias[o] if use_bias else 0.0
                        _store_row(acc[m], bo, slope, use_act, n, o, r0 + rr, out, out2, out_up)
    return chk


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def conv3x3_flat(part, parts, inp, inp2, in_up, ysrc, in_slope, in_mask, wpk, bias, use_bias, slope, use_act, R,
                 tiles, out, out2, out_up):
    """``conv3x3_rows`` computed over the flattened rows of the tile (same arguments).

    Output (rr, j) of the job is flat index q = rr·Wp + j and reads the tile at
    q + dy·Wp + dx, so each (c, dy) is one loop over nr·Wp - 2 outputs (the 2 junk columns per
    row are computed and dropped). For narrow images (W <= 64) this long loop beats one short
    loop per row (measured 1.5x at W = 16..32); for W >= 128 the per-row kernel is faster.
    """
    N = inp.shape[0]
    Ci = tiles.shape[1]                                        # Ca + Cb input channels
    H, W = inp2.shape[2], inp2.shape[3]                        # the (virtual) input size
    Co = out.shape[1] + out2.shape[1]
    Cb = wpk.shape[0]
    nrb = (H + R - 1) // R
    Wp = W + 2
    chk = 0.0                                                  # NaN iff an input is NaN/Inf
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        t = tiles[job]                                         # (Ci, (R + 2) * (W + 2))
        chk += _fill_tile(inp, inp2, in_up, ysrc, in_slope, in_mask, n, r0, R, H, W, t)
        L = nr * Wp - 2                                        # flat outputs (junk at j >= W)
        acc = np.empty((MB, R * Wp), out.dtype)
        a0 = acc[0]
        a1 = acc[1]
        a2 = acc[2]
        a3 = acc[3]
        for b in range(Cb):
            for q in range(L):
                a0[q] = 0.0
                a1[q] = 0.0
                a2[q] = 0.0
                a3[q] = 0.0
            for c in range(Ci):
                for dy in range(3):
                    xr = t[c, dy * Wp:]
                    wv = wpk[b, c, dy]
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
                    for j in range(L):
                        x0 = xr[j]
                        x1 = xr[j + 1]
                        x2 = xr[j + 2]
                        t0 = a0[j] + w00 * x0
                        t1 = a1[j] + w01 * x0
                        t2 = a2[j] + w02 * x0
                        t3 = a3[j] + w03 * x0
                        t0 = t0 + w10 * x1
                        t1 = t1 + w11 * x1
                        t2 = t2 + w12 * x1
                        t3 = t3 + w13 * x1
                        a0[j] = t0 + w20 * x2
                        a1[j] = t1 + w21 * x2
                        a2[j] = t2 + w22 * x2
                        a3[j] = t3 + w23 * x2
            for m in range(MB):
                o = b * MB + m
                if o < Co:
                    bo = bias[o] if use_bias else 0.0
                    for rr in range(nr):
                        _store_row(acc[m, rr * Wp:rr * Wp + W], bo, slope, use_act, n, o,
                                   r0 + rr, out, out2, out_up)
    return chk


def conv3x3(inp, w, out, *, rows, tiles, bias=None, act=None, in_mask_of=None, in_slope=0.0,
            inp2=None, in_up=1, out2=None, out_up=1):
    """out = LeakyReLU_act(conv3x3_pad1(inp · mask, w) + bias), stride 1; must equal
    ``conv3x3_reference`` with the same arguments.

    Inputs:
    - inp: (N, Ci, H, W);  w: (Co, Ci, 3, 3) unpacked weights (packed here);  out: (N, Co, H, W).
    - rows: output rows per parallel job (``rows_per_job``);  tiles: (N·ceil(H/rows), Ci,
      (rows + 2)·(W + 2)) scratch, left holding each job's zero-padded input rows (the dw kernel
      reads them).
    - bias: (Co,) or None;  act: LeakyReLU slope of the output, or None.
    - in_mask_of, in_slope: where ``in_mask_of <= 0`` the input is multiplied by ``in_slope``
      (the LeakyReLU backward, dz = dout · mask, with in_mask_of the activated forward output);
      None: no mask.

    The U-Net's skip joins, read and written in place (``regnp.ops.skip_conv``; must equal
    ``conv3x3_reference`` on the concatenation / the split of its output):
    - inp2, in_up: the input is the channel concatenation [up(inp), inp2] with inp
      (N, Ca, H/in_up, W/in_up) nearest-upsampled by in_up (1 or 2) and inp2 (N, Cb, H, W);
      tiles then have Ca + Cb channels and w has Ca + Cb input channels.
    - out2, out_up: the output's channels are split: the first ``out.shape[1]`` go to ``out``,
      summed over 2×2 blocks when out_up = 2 (out is then (N, ·, H/2, W/2); ``rows`` must be
      even), the rest to out2 (N, ·, H, W).

    Picks ``conv3x3_rows2`` (W >= 128, Co <= 2), ``conv3x3_rows`` (W >= 128) or ``conv3x3_flat``
    (narrow images); they compute the same thing.

    Returns True when every value read from inp and inp2 was finite (the NaN/Inf check, fused
    into the tile copy; callers raise ``check_array``'s message when it is False).
    """
    N = inp.shape[0]
    H, W = inp.shape[2] * in_up, inp.shape[3] * in_up
    if inp2 is None:
        inp2 = np.empty((N, 0, H, W), inp.dtype)
    if out2 is None:
        out2 = np.empty((N, 0, H, W), inp.dtype)
    if out_up == 2 and rows % 2:
        raise ValueError(f"rows must be even when the output is summed over 2x2 blocks, got {rows}")
    wide = W >= 128
    ysrc = inp if in_mask_of is None else in_mask_of
    use_bias = bias is not None
    bias = bias if use_bias else np.zeros(1, inp.dtype)
    slope = 0.0 if act is None else float(act)
    Co = w.shape[0]
    args = (inp, inp2, in_up, ysrc, float(in_slope), in_mask_of is not None)
    tail = (bias, use_bias, slope, act is not None, rows, tiles, out, out2, out_up)
    if wide and Co <= 2:
        chk = run(conv3x3_rows2, *args, pack_weights(w, 2), *tail)
    else:
        chk = run(conv3x3_rows if wide else conv3x3_flat, *args, pack_weights(w), *tail)
    return bool(chk == 0.0)


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def conv3x3_dw_rows(part, parts, xt, gt, H, W, R, zero, dwp, dbp):
    """Per-job partial weight and bias gradients from the input tiles and the dz tiles.

    Inputs:
    - xt: (J, Ci, (R + 2) * Wp) zero-padded input tiles, Wp = W + 2 (from the forward
      ``conv3x3_rows``), flattened row-major.
    - gt: (J, Co, (R + 2) * Wp) dz tiles (from the dx ``conv3x3_rows``; rows 1..R, columns
      1..W hold the job's dz rows, the border columns are 0).
    - H, W: image size (the last job may hold fewer than R rows);  R: rows per job.

    The dot products run over the flattened rows: dz at flat index q pairs with x at
    q - Wp - 1 + dy·Wp + dx. The border columns of dz are zero, so the pairs that wrap around
    a row end contribute nothing, and each (c, dy) is one long SIMD loop (few horizontal sums).
    - zero: 0 of the arrays' dtype (a float32 0 keeps the sums float32: a float64 literal
      would promote every product and halve the SIMD width).
    Returns (written):
    - dwp: (J, Cb * MB, Ci, 3, 3): dwp[job, m, c, dy, dx] = Σ_rows,j dz[m] · xpad[c] shifted.
    - dbp: (J, Co): Σ dz[m] over the job's rows.
    """
    J, Ci, _ = xt.shape
    Wp = W + 2
    Co = gt.shape[1]
    Cb = dwp.shape[1] // MB
    nrb = (H + R - 1) // R
    job_lo, job_hi = share(J, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        r0 = (job % nrb) * R
        nr = min(H, r0 + R) - r0
        for m in range(Co):
            s = zero
            g = gt[job, m, Wp:]
            for q in range(nr * Wp):
                s += g[q]
            dbp[job, m] = s
        for b in range(Cb):
            m0 = min(b * MB, Co - 1)                           # the tail block repeats the
            m1 = min(b * MB + 1, Co - 1)                       # last channel; those results
            m2 = min(b * MB + 2, Co - 1)                       # are not stored
            m3 = min(b * MB + 3, Co - 1)
            for c in range(Ci):
                for dy in range(3):
                    s00 = s01 = s02 = s10 = s11 = s12 = zero
                    s20 = s21 = s22 = s30 = s31 = s32 = zero
                    xr = xt[job, c, dy * Wp:]                  # x[q + dx] meets dz[q + Wp + 1]
                    g0 = gt[job, m0, Wp + 1:]                  # (slices indexed from 0: LLVM
                    g1 = gt[job, m1, Wp + 1:]                  # then sees unit-stride loads,
                    g2 = gt[job, m2, Wp + 1:]                  # not gathers)
                    g3 = gt[job, m3, Wp + 1:]
                    for q in range(nr * Wp - 2):               # 12 SIMD dot products
                        x0 = xr[q]
                        x1 = xr[q + 1]
                        x2 = xr[q + 2]
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
                    o = b * MB
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


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def conv3x3_dw_rows2(part, parts, xt, gt, H, W, R, zero, dwp, dbp):
    """``conv3x3_dw_rows`` for 1 or 2 output channels (6 dot products per (c, dy)); writes
    dwp[:, :2] (dwp has >= 2 rows) and dbp."""
    J, Ci, _ = xt.shape
    Wp = W + 2
    Co = gt.shape[1]
    nrb = (H + R - 1) // R
    job_lo, job_hi = share(J, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        r0 = (job % nrb) * R
        nr = min(H, r0 + R) - r0
        for m in range(Co):
            s = zero
            g = gt[job, m, Wp:]
            for q in range(nr * Wp):
                s += g[q]
            dbp[job, m] = s
        g0 = gt[job, 0, Wp + 1:]
        g1 = gt[job, min(1, Co - 1), Wp + 1:]
        for c in range(Ci):
            for dy in range(3):
                xr = xt[job, c, dy * Wp:]
                s00 = s01 = s02 = s10 = s11 = s12 = zero
                for q in range(nr * Wp - 2):                   # 6 SIMD dot products
                    x0 = xr[q]
                    x1 = xr[q + 1]
                    x2 = xr[q + 2]
                    v0 = g0[q]
                    v1 = g1[q]
                    s00 += v0 * x0
                    s01 += v0 * x1
                    s02 += v0 * x2
                    s10 += v1 * x0
                    s11 += v1 * x1
                    s12 += v1 * x2
                dwp[job, 0, c, dy, 0] = s00
                dwp[job, 0, c, dy, 1] = s01
                dwp[job, 0, c, dy, 2] = s02
                dwp[job, 1, c, dy, 0] = s10
                dwp[job, 1, c, dy, 1] = s11
                dwp[job, 1, c, dy, 2] = s12


def conv3x3_dw(x_tiles, dz_tiles, dw_partial, db_partial, *, height, width, rows):
    """Per-job partial dw and db; summed over jobs they must equal ``conv3x3_dw_reference``.

    Inputs: x_tiles, dz_tiles: the tiles the forward and the dx ``conv3x3`` calls left behind;
    height, width: the image size;  rows: output rows per job.
    Writes dw_partial (jobs, ceil(Co/MB)·MB, Ci, 3, 3) (rows :Co are the result) and
    db_partial (jobs, Co). Runs ``conv3x3_dw_rows2`` (Co <= 2) or ``conv3x3_dw_rows``.
    """
    kern = conv3x3_dw_rows2 if dz_tiles.shape[1] <= 2 else conv3x3_dw_rows
    run(kern, x_tiles, dz_tiles, height, width, rows, x_tiles.dtype.type(0), dw_partial, db_partial)


# ---------------------------------------------------------------------------------------------
# Layers with 1 or 2 output channels (the flow head): no tiles, fused backward
# ---------------------------------------------------------------------------------------------
# With Co <= 2 the forward does few multiply-adds per input value (18 per x), so the tiled
# kernels above spend most of their time moving memory: the forward writes a padded copy of x
# (25 % larger than x, kept for dw), and the backward reads it back, writes dz tiles and runs dx
# and dw as two passes. Here the forward reads x in place (the zero padding is handled by
# skipping taps at the image border), and the backward is one pass per row block that reads
# x once, keeps the block's dz in L1 and writes dx and the partial dw. Measured interleaved
# (medians of 25-41, 2 cores shared with other jobs) at (2, 16, 256, 256) -> 2 channels, as a
# fraction of the tiled path's time: forward kernel alone 0.5x; through conv2d (which also
# scans x for NaN/Inf) forward 0.65-0.75x, backward 0.84-1.0x, forward+backward 0.81-0.85x.
# The backward is near the memory floor: it must read x (8.4 MB) and write dx (8.4 MB) for
# 151 MFLOP.


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def conv3x3_co2_fwd(part, parts, x, wp, bias, use_bias, slope, use_act, R, out):
    """out = LeakyReLU(conv3x3(x, stride 1, pad 1) + bias) for Co <= 2, read straight from x.

    Inputs:
    - x: (N, Ci, H, W);  wp: (Ci, 3, 3, 2) weights ``wp[c, dy, dx, m] = w[m, c, dy, dx]`` (zero
      for m >= Co; ``pack_weights(w, 2)[0]``);  bias: (>= Co,) if use_bias.
    - slope, use_act: LeakyReLU of the output;  R: output rows per job.
    - out: (N, Co, H, W), written.

    Per output row, two accumulator rows (L1). For each input channel whose three rows
    i - 1, i, i + 1 all exist, one loop over the interior columns j = 1 .. W - 2 adds the 9 taps
    for both channels (9 loads, 18 FMAs per 2 stores); at the top and bottom rows each
    existing row is added separately. Columns 0 and W - 1 (whose taps partly read the zero
    padding) are added by a short scalar loop that skips the padded taps.
    """
    N, Ci, H, W = x.shape
    Co = out.shape[1]
    nrb = (H + R - 1) // R
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        acc = np.empty((2, W), out.dtype)                      # (2, W)
        a0 = acc[0]
        a1 = acc[1]
        b0 = a0[1:]                                            # b[q] = output column q + 1
        b1 = a1[1:]
        for rr in range(nr):
            i = r0 + rr
            for j in range(W):
                a0[j] = 0.0
                a1[j] = 0.0
            for c in range(Ci):
                if i >= 1 and i + 1 < H:                     # all three rows: one pass
                    xa = x[n, c, i - 1]
                    xb = x[n, c, i]
                    xc = x[n, c, i + 1]
                    wv = wp[c]                                 # (3, 3, 2): [dy, dx, m]
                    u000 = wv[0, 0, 0]
                    u001 = wv[0, 0, 1]
                    u010 = wv[0, 1, 0]
                    u011 = wv[0, 1, 1]
                    u020 = wv[0, 2, 0]
                    u021 = wv[0, 2, 1]
                    u100 = wv[1, 0, 0]
                    u101 = wv[1, 0, 1]
                    u110 = wv[1, 1, 0]
                    u111 = wv[1, 1, 1]
                    u120 = wv[1, 2, 0]
                    u121 = wv[1, 2, 1]
                    u200 = wv[2, 0, 0]
                    u201 = wv[2, 0, 1]
                    u210 = wv[2, 1, 0]
                    u211 = wv[2, 1, 1]
                    u220 = wv[2, 2, 0]
                    u221 = wv[2, 2, 1]
                    for q in range(W - 2):                     # SIMD over interior columns
                        p0 = xa[q]
                        p1 = xa[q + 1]
                        p2 = xa[q + 2]
                        t0 = b0[q] + u000 * p0
                        t1 = b1[q] + u001 * p0
                        t0 = t0 + u010 * p1
                        t1 = t1 + u011 * p1
                        t0 = t0 + u020 * p2
                        t1 = t1 + u021 * p2
                        p0 = xb[q]
                        p1 = xb[q + 1]
                        p2 = xb[q + 2]
                        t0 = t0 + u100 * p0
                        t1 = t1 + u101 * p0
                        t0 = t0 + u110 * p1
                        t1 = t1 + u111 * p1
                        t0 = t0 + u120 * p2
                        t1 = t1 + u121 * p2
                        p0 = xc[q]
                        p1 = xc[q + 1]
                        p2 = xc[q + 2]
                        t0 = t0 + u200 * p0
                        t1 = t1 + u201 * p0
                        t0 = t0 + u210 * p1
                        t1 = t1 + u211 * p1
                        b0[q] = t0 + u220 * p2
                        b1[q] = t1 + u221 * p2
                else:                                          # top / bottom row of the image
                    for dy in range(3):
                        y = i + dy - 1
                        if y < 0 or y >= H:
                            continue
                        xr = x[n, c, y]
                        wv2 = wp[c, dy]                        # (3, 2): [dx, m]
                        w00 = wv2[0, 0]
                        w01 = wv2[0, 1]
                        w10 = wv2[1, 0]
                        w11 = wv2[1, 1]
                        w20 = wv2[2, 0]
                        w21 = wv2[2, 1]
                        for q in range(W - 2):
                            x0 = xr[q]
                            x1 = xr[q + 1]
                            x2 = xr[q + 2]
                            t0 = b0[q] + w00 * x0
                            t1 = b1[q] + w01 * x0
                            t0 = t0 + w10 * x1
                            t1 = t1 + w11 * x1
                            b0[q] = t0 + w20 * x2
                            b1[q] = t1 + w21 * x2
                # columns 0 and W - 1: the taps that read inside the image (all when W <= 2,
                # where the loops above do nothing)
                for e in range(2 if W > 1 else 1):
                    j = 0 if e == 0 else W - 1
                    s0 = a0[j]
                    s1 = a1[j]
                    for dy in range(3):
                        y = i + dy - 1
                        if y < 0 or y >= H:
                            continue
                        for dx in range(3):
                            k = j + dx - 1
                            if 0 <= k < W:
                                v = x[n, c, y, k]
                                s0 += wp[c, dy, dx, 0] * v
                                s1 += wp[c, dy, dx, 1] * v
                    a0[j] = s0
                    a1[j] = s1
            for m in range(Co):                                # bias + LeakyReLU, one write
                bo = bias[m] if use_bias else 0.0
                for j in range(W):
                    v = acc[m, j] + bo
                    if use_act and v < 0:
                        v = v * slope
                    out[n, m, i, j] = v


@numba.njit(cache=True, nogil=True, fastmath={"contract", "reassoc"})
def conv3x3_co2_bwd(part, parts, dout, ysrc, in_slope, in_mask, x, wf, R, zero, dx, dwp, dbp):
    """Fused backward of ``conv3x3_co2_fwd``: dx, per-job partial dw and db in one pass.

    Inputs:
    - dout: (N, Co <= 2, H, W);  ysrc: same shape (read only when ``in_mask``): where
      ysrc <= 0 the gradient is multiplied by ``in_slope`` (dz = dout · LeakyReLU mask).
    - x: (N, Ci, H, W) the forward's input;  wf: (Ci, 3, 3, 2) flipped weights
      ``wf[c, dy, dx, m] = w[m, c, 2 - dy, 2 - dx]`` (zero for m >= Co).
    - R: rows per job;  zero: 0 of the arrays' dtype (keeps float32 sums float32).
    Returns (written):
    - dx: (N, Ci, H, W);  dwp: (J, 2, Ci, 3, 3) per-job dw;  dbp: (J, 2) per-job db (rows
      >= Co are junk).

    A job puts dz rows r0 - 1 .. r0 + R, zero-padded, in a (2, (R + 2)·Wp) tile (L1), then per
    input channel c copies x rows r0 - 1 .. r0 + R into a padded (R + 2)·Wp row buffer and runs
    - dw: 18 SIMD dot products (2 channels × 9 taps) in one flat loop over the job's rows:
      dz at tile index Wp + 1 + q pairs with xpad at dy·Wp + dx + q (the zero border columns of
      dz cancel the pairs that wrap around a row end);
    - dx rows: dx[c, i, j] = Σ_{m, dy, dx} wf[c, dy, dx, m] · dzpad[m, i + dy, j + dx] (a
      stride-1 transposed convolution is a convolution with flipped weights), 18 FMAs per
      output, written straight into dx.
    """
    N, Ci, H, W = x.shape
    Co = dout.shape[1]
    nrb = (H + R - 1) // R
    Wp = W + 2
    job_lo, job_hi = share(N * nrb, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // nrb
        r0 = (job - n * nrb) * R
        nr = min(H, r0 + R) - r0
        gt = np.zeros((2, (R + 2) * Wp), dx.dtype)             # dz tile, zero-padded
        xs = np.empty((R + 2) * Wp, dx.dtype)                  # one channel of x, padded
        for m in range(Co):
            s = zero
            for rr in range(-1, nr + 1):
                y = r0 + rr
                if y < 0 or y >= H:
                    continue
                row = gt[m, (rr + 1) * Wp + 1:]
                for j in range(W):
                    v = dout[n, m, y, j]
                    if in_mask and ysrc[n, m, y, j] <= 0:
                        v = v * in_slope
                    row[j] = v
                    if 0 <= rr < nr:
                        s += v
            dbp[job, m] = s
        g0 = gt[0]
        g1 = gt[1]
        h0 = gt[0, Wp + 1:]                                    # dz[0, r0 + q // Wp, q % Wp]
        h1 = gt[1, Wp + 1:]
        L = nr * Wp - 2
        for c in range(Ci):
            # dw: x rows r0 - 1 .. r0 + nr of channel c, zero-padded
            for rr in range(nr + 2):
                y = r0 - 1 + rr
                row = xs[rr * Wp:(rr + 1) * Wp]
                if y < 0 or y >= H:
                    for j in range(Wp):
                        row[j] = 0.0
                    continue
                row[0] = 0.0
                row[W + 1] = 0.0
                for j in range(W):
                    row[j + 1] = x[n, c, y, j]
            x0 = xs[0:]
            x1 = xs[Wp:]
            x2 = xs[2 * Wp:]
            a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = zero
            b00 = b01 = b02 = b10 = b11 = b12 = b20 = b21 = b22 = zero
            for q in range(L):                                 # 18 SIMD dot products
                v = h0[q]
                u = h1[q]
                p = x0[q]
                a00 += v * p
                b00 += u * p
                p = x0[q + 1]
                a01 += v * p
                b01 += u * p
                p = x0[q + 2]
                a02 += v * p
                b02 += u * p
                p = x1[q]
                a10 += v * p
                b10 += u * p
                p = x1[q + 1]
                a11 += v * p
                b11 += u * p
                p = x1[q + 2]
                a12 += v * p
                b12 += u * p
                p = x2[q]
                a20 += v * p
                b20 += u * p
                p = x2[q + 1]
                a21 += v * p
                b21 += u * p
                p = x2[q + 2]
                a22 += v * p
                b22 += u * p
            d = dwp[job, 0, c]
            d[0, 0] = a00
            d[0, 1] = a01
            d[0, 2] = a02
            d[1, 0] = a10
            d[1, 1] = a11
            d[1, 2] = a12
            d[2, 0] = a20
            d[2, 1] = a21
            d[2, 2] = a22
            d = dwp[job, 1, c]
            d[0, 0] = b00
            d[0, 1] = b01
            d[0, 2] = b02
            d[1, 0] = b10
            d[1, 1] = b11
            d[1, 2] = b12
            d[2, 0] = b20
            d[2, 1] = b21
            d[2, 2] = b22
            # dx rows of channel c
            wv = wf[c]                                         # (3, 3, 2): [dy, dx, m]
            u000 = wv[0, 0, 0]
            u001 = wv[0, 0, 1]
            u010 = wv[0, 1, 0]
            u011 = wv[0, 1, 1]
            u020 = wv[0, 2, 0]
            u021 = wv[0, 2, 1]
            u100 = wv[1, 0, 0]
            u101 = wv[1, 0, 1]
            u110 = wv[1, 1, 0]
            u111 = wv[1, 1, 1]
            u120 = wv[1, 2, 0]
            u121 = wv[1, 2, 1]
            u200 = wv[2, 0, 0]
            u201 = wv[2, 0, 1]
            u210 = wv[2, 1, 0]
            u211 = wv[2, 1, 1]
            u220 = wv[2, 2, 0]
            u221 = wv[2, 2, 1]
            for rr in range(nr):
                p0 = g0[rr * Wp:]                              # dz rows rr - 1, rr, rr + 1
                p1 = g0[(rr + 1) * Wp:]                        # of the block, padded
                p2 = g0[(rr + 2) * Wp:]
                q0 = g1[rr * Wp:]
                q1 = g1[(rr + 1) * Wp:]
                q2 = g1[(rr + 2) * Wp:]
                dr = dx[n, c, r0 + rr]
                for j in range(W):
                    s = u000 * p0[j] + u001 * q0[j]
                    s += u010 * p0[j + 1] + u011 * q0[j + 1]
                    s += u020 * p0[j + 2] + u021 * q0[j + 2]
                    s += u100 * p1[j] + u101 * q1[j]
                    s += u110 * p1[j + 1] + u111 * q1[j + 1]
                    s += u120 * p1[j + 2] + u121 * q1[j + 2]
                    s += u200 * p2[j] + u201 * q2[j]
                    s += u210 * p2[j + 1] + u211 * q2[j + 1]
                    s += u220 * p2[j + 2] + u221 * q2[j + 2]
                    dr[j] = s


def conv3x3_few_out(x, w, out, *, rows, bias=None, act=None):
    """out (N, Co, H, W) = LeakyReLU_act(conv3x3_pad1(x, w) + bias) for Co <= 2 output channels,
    without tiles (``conv3x3_co2_fwd``); must equal ``conv3x3_reference`` with the same
    arguments. w: (Co, Ci, 3, 3) (packed here); rows: output rows per job."""
    assert w.shape[0] <= 2
    use_bias = bias is not None
    run(conv3x3_co2_fwd, x, pack_weights(w, 2)[0], bias if use_bias else np.zeros(1, x.dtype),
                    use_bias, 0.0 if act is None else float(act), act is not None, rows, out)


def conv3x3_few_out_backward(dout, x, w, dx, dw_partial, db_partial, *, rows, act_out=None,
                             act=None):
    """Backward of ``conv3x3_few_out`` (``conv3x3_co2_bwd``): writes dx (N, Ci, H, W), the
    per-job dw_partial (jobs, 2, Ci, 3, 3) and db_partial (jobs, 2); with dz = dout · (1 where
    act_out > 0 else act) (dz = dout when act is None), dx, dw_partial[:, :Co].sum(0) and
    db_partial[:, :Co].sum(0) must equal ``conv3x3_backward_reference(x, w, dz)``."""
    assert w.shape[0] <= 2
    wf = pack_weights(flip_transpose(w).transpose(1, 0, 2, 3), 2)[0]    # (Ci, 3, 3, 2)
    run(conv3x3_co2_bwd, dout, dout if act is None else act_out, 0.0 if act is None else float(act),
                    act is not None, x, wf, rows, x.dtype.type(0), dx, dw_partial, db_partial)
