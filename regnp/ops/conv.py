"""2-D convolution and transposed convolution, forward and backward, written out by hand.

Definition (cross-correlation, as in every deep-learning framework), stride s, zero padding p:

    out[n, o, i, j] = b[o] + sum_{c, dy, dx} w[o, c, dy, dx] · xp[n, c, s·i + dy, s·j + dx]

where xp is x padded with p zeros on every side. Output size ``Ho = (H + 2p - kh)//s + 1``.

How it is computed fast: "shifted GEMMs", no im2col
------------------------------------------------------
Fix one tap (dy, dx). Its contribution to the whole output is a matrix product

    out[n] (Co, pixels)  +=  w[:, :, dy, dx] (Co, C)  @  xp[n, :, shifted pixels] (C, pixels).

With stride 1, pad x once and flatten each channel's padded image into a row of width
Wq = W + 2p. Then "the pixels shifted by (dy, dx)" is simply the *contiguous* slice starting at
flat offset dy·Wq + dx — a window of the padded buffer that BLAS can read in place (its row
stride is just larger than its width). We compute the output on the padded width Wq (the last
Wq - Wo columns of each output row are junk and get cropped), so a k×k convolution is k·k GEMMs
that accumulate into one output buffer (BLAS ``beta = 1``; see ``_blas.py``). Nothing is copied
k·k times, unlike im2col, whose (C·k·k, pixels) matrix is 9× the input for 3×3 kernels.

Stride 2 fits the same scheme after splitting the padded image into its 4 "phases"
(even/odd rows × even/odd columns): tap (dy, dx) reads phase (dy % 2, dx % 2) shifted by
(dy // 2, dx // 2), again a contiguous window. (Stride s: s·s phases.)

Backward, with g = dL/dout laid out the same wide way (junk columns set to 0):
* ``dw[:, :, dy, dx] = sum_n g[n] @ xp_shifted[n]ᵀ`` — a correlation of the input with dout,
  one GEMM per tap, reduced over pixels (the pixels are split between threads).
* ``dx`` is the adjoint of the forward: every tap's GEMM transposed, ``w_tapᵀ @ g``, added back
  at the same shift. Written as a gather (each phase pixel collects from g shifted the other
  way) it is a convolution of dout with the *flipped, transposed* weights — a transposed
  convolution — and its outputs are disjoint, so threads can split them.

A transposed convolution is *defined* as that adjoint, so ``conv_transpose2d_forward`` runs the
dx path and its backward runs the forward and dw paths. The bias and an optional LeakyReLU are
fused into the (memory-bound) crop pass, and the activation's mask into the gradient pass.

The U-Net's own layers (3×3, pad 1, stride 1 or 2) in float32: direct kernels
-------------------------------------------------------------------------------
At 256×256 with 16–48 channels the per-tap GEMMs above are memory-bound: each of the 9 taps
re-reads the whole input and re-reads/re-writes the whole output, and OpenBLAS packs skinny
matrices at about the cost of multiplying them (measured 40–60 GFLOP/s per core on these
shapes). So float32 3×3 pad-1 convolutions run direct Numba kernels instead
(``_direct3x3.py``, stride 1; ``_direct3x3_s2.py``, stride 2): a job copies the few input rows
its block of output rows needs into a zero-padded tile (fusing the padding, and in the backward
the LeakyReLU mask), then accumulates 4 output channels at once along each row with 12 weights
in registers — 12 FMAs per 3 loads and 4 load/stores, all in L1. dx is the same kernel on dz
with flipped, transposed weights (stride 2: a parity-split gather); dw is 12 SIMD dot products
per (4 output channels, input channel, kernel row) over the same tiles (2 channels per block
for the 2-channel flow head). Measured on 2 cores, old and new interleaved in one run: all
U-Net convolutions forward+backward 1.55–1.77× faster than the GEMM path (dec5 1.8–2.2×, the
flow head 2.6–3.5×), and 150–170 GFLOP/s of the ~200 peak on the big layers when the machine
is quiet.

float64 (gradient checks) keeps the GEMM path, so every float64 result is bit-for-bit what it
was before the direct kernels existed: whole-network gradient checks sit at the float64
round-off floor (≈1e-6 relative at h = 1e-6 for small entries), where any change of summation
order moves the measured error. The direct path is checked in float64 against the loop
references and by gradient checks in ``tests/test_ops_direct3x3.py`` (via ``_direct_forward``).

The Meta-Reg decoder's transposed convolution (k = 2, stride 2, pad 0, float32) likewise runs a
direct kernel (``_direct_convT2.py``): it is four 1×1 convolutions, one per output phase, computed
as one pass to 4·Co "virtual" channels and written straight into the interleaved output; its
backward reads dout once (phase split, db, dx and a per-job partial dw in one kernel). Note that
the direct paths keep a *reference* to their input in the cache (as the fused-activation paths
keep their output): do not modify x in place between forward and backward.

Slow, obviously correct loop versions (``*_reference``) sit at the bottom; tests assert agreement.
"""
import numpy as np

from .._checks import check_array, check_positive_int
from . import _blas
from . import _direct3x3 as _d3
from . import _direct3x3_s2 as _s2
from . import _direct_convT2 as _t2
from ._conv_kernels import crop_bias_act, from_phases, prep_grad, to_phases

# Largest number of output columns per GEMM call: keeps one call's output block (Co × 16384
# floats = 1 MB for Co = 16) near the 1 MB L2 of this machine's cores while the 9 taps add in.
_MAX_COLS = 16384


class Workspace:
    """Reusable scratch buffers, keyed by name (a layer owns one; see ``regnp.nn.layers``).

    Fresh large arrays are expensive on this machine (the OS zero-fills every new page), so a
    layer keeps its padded input, wide output and wide gradient buffers between steps.
    The cache returned by a forward call points into these buffers: run that call's backward
    before the next forward that uses the same workspace.
    """

    def __init__(self):
        self._bufs = {}

    def get(self, name, shape, dtype):
        a = self._bufs.get(name)
        if a is None or a.shape != tuple(shape) or a.dtype != dtype:
            a = np.empty(shape, dtype=dtype)
            self._bufs[name] = a
        return a

    def nbytes(self):
        return sum(a.nbytes for a in self._bufs.values())


class _Geom:
    """Sizes and tap offsets of one convolution (input H×W, kernel kh×kw, stride s, pad p)."""

    def __init__(self, H, W, kh, kw, s, p):
        self.H, self.W, self.kh, self.kw, self.s, self.p = H, W, kh, kw, s, p
        self.Ho = (H + 2 * p - kh) // s + 1
        self.Wo = (W + 2 * p - kw) // s + 1
        if self.Ho < 1 or self.Wo < 1:
            raise ValueError(f"the {kh}x{kw} kernel (stride {s}, pad {p}) does not fit in a "
                             f"{H}x{W} input: the output would be {self.Ho}x{self.Wo}; use a "
                             f"bigger image or more padding")
        self.Hq = self.Ho + (kh - 1) // s            # phase image rows that the taps reach
        self.Wq = self.Wo + (kw - 1) // s            # phase image width = wide output width
        self.S = self.Hq * self.Wq + (kw - 1) // s   # flattened phase row length (+ spill)
        self.L = self.Ho * self.Wq                   # wide output length
        self.P = s * s                               # number of phases
        # tap t = dy*kw + dx reads phase (dy % s, dx % s) at flat offset (dy//s)*Wq + dx//s
        self.taps = [((dy % s) * s + dx % s, (dy // s) * self.Wq + dx // s)
                     for dy in range(kh) for dx in range(kw)]
        self.M = max(off for _, off in self.taps)   # front margin of the wide gradient rows
        self.G = self.M + self.S                    # wide gradient row length


def _chunks(length, parts):
    """Split range(length) into `parts` near-equal [lo, hi) pieces of at most _MAX_COLS."""
    parts = max(parts, -(-length // _MAX_COLS))
    edges = np.linspace(0, length, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ---------------------------------------------------------------------------------------------
# The three GEMM passes, shared by conv2d and conv_transpose2d.
# ---------------------------------------------------------------------------------------------
def _gemm_forward(src, wt, g, wide):
    """wide[n] (Co, L) = sum_t wt[t] (Co, C) @ src[n, phase_t, :, off_t : off_t + L]."""
    N = src.shape[0]
    L = g.L
    per = max(1, -(-_blas.n_workers() // N))
    jobs = [(n, lo, hi) for n in range(N) for lo, hi in _chunks(L, per)]

    def job(j):
        n, lo, hi = j
        out = wide[n, :, lo:hi]                                     # (Co, hi-lo)
        for t, (ph, off) in enumerate(g.taps):
            _blas.gemm(out, wt[t], src[n, ph, :, off + lo:off + hi], beta=0.0 if t == 0 else 1.0)

    _blas.run_jobs(job, jobs)


def _gemm_dx(gpad, wt, g, dsrc):
    """dsrc[n, ph] (C, S) = sum_{t in ph} wt[t]ᵀ (C, Co) @ gpad[n, :, M - off_t + m] (gather)."""
    N = gpad.shape[0]
    by_phase = [[(t, off) for t, (ph, off) in enumerate(g.taps) if ph == q] for q in range(g.P)]
    per = max(1, -(-_blas.n_workers() // (N * g.P)))
    jobs = [(n, q, lo, hi) for n in range(N) for q in range(g.P) for lo, hi in _chunks(g.S, per)]
    M = g.M

    def job(j):
        n, q, lo, hi = j
        out = dsrc[n, q, :, lo:hi]                                  # (C, hi-lo)
        if not by_phase[q]:
            out[...] = 0.0
            return
        for k, (t, off) in enumerate(by_phase[q]):
            _blas.gemm(out, wt[t], gpad[n, :, M - off + lo:M - off + hi], trans_a=True,
                       beta=0.0 if k == 0 else 1.0)

    _blas.run_jobs(job, jobs)


def _gemm_dw(gpad, src, g, dwt, work):
    """dwt[t] (Co, C) = sum_n gpad[n, :, M : M + L] @ src[n, phase_t, :, off_t : off_t + L]ᵀ.

    The pixel range is split between workers; each sums into its own partial, then we add.
    """
    N = gpad.shape[0]
    nw = _blas.n_workers() if _blas.have_cblas() else 1
    parts = _chunks(g.L, nw)
    nw = len(parts)
    partial = work.get("dw_partial", (nw,) + dwt.shape, dwt.dtype)   # (nw, T, Co, C)
    M = g.M

    def job(w):
        lo, hi = parts[w]
        for t, (ph, off) in enumerate(g.taps):
            for n in range(N):
                _blas.gemm(partial[w, t], gpad[n, :, M + lo:M + hi],
                           src[n, ph, :, off + lo:off + hi], trans_b=True,
                           beta=0.0 if n == 0 else 1.0)

    _blas.run_jobs(job, list(range(nw)))
    np.sum(partial, axis=0, out=dwt)


def _taps_major(w):
    """(A, B, kh, kw) -> (kh*kw, A, B) contiguous: one small matrix per tap."""
    A, B, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1)).reshape(kh * kw, A, B)


def _check_common(x, w, b, stride, pad, w_in_axis, what):
    check_array("x", x, ndim=4)
    check_array("w", w, ndim=4, dtype=x.dtype)
    if b is not None:
        check_array("b", b, ndim=1, dtype=x.dtype)
    stride = check_positive_int("stride", stride)
    if not isinstance(pad, (int, np.integer)) or isinstance(pad, bool) or pad < 0:
        raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
    if w.shape[w_in_axis] != x.shape[1]:
        raise ValueError(f"{what}: x has {x.shape[1]} channels but w has shape {w.shape} "
                         f"(axis {w_in_axis} must equal the input channels)")
    return stride, int(pad)


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------
def conv2d_forward(x, w, b=None, stride=1, pad=None, act=None, work=None):
    """2-D convolution (cross-correlation) with zero padding.

    Inputs:
    - x: (N, Cin, H, W) input.
    - w: (Cout, Cin, kh, kw) filters.
    - b: (Cout,) bias or None.
    - stride: positive int (1 or 2 in the U-Net).
    - pad: zero padding on every side; default (k-1)//2 ("same" size for odd k, stride 1).
    - act: None, or a LeakyReLU slope (>= 0) fused into the output pass.
    - work: optional ``Workspace`` whose buffers are reused (layers pass their own).
    Returns:
    - out: (N, Cout, Ho, Wo), Ho = (H + 2*pad - kh)//stride + 1.
    - cache: for ``conv2d_backward``.
    """
    if pad is None and isinstance(w, np.ndarray) and w.ndim == 4:
        pad = (w.shape[2] - 1) // 2
    stride, pad = _check_common(x, w, b, stride, 0 if pad is None else pad, 1, "conv2d")
    if b is not None and b.shape[0] != w.shape[0]:
        raise ValueError(f"b has shape {b.shape} but w has {w.shape[0]} output channels")
    if act is not None and not (act >= 0):
        raise ValueError(f"act (LeakyReLU slope) must be >= 0 or None, got {act!r}")
    work = Workspace() if work is None else work
    x = np.ascontiguousarray(x)                # (a view such as x[:, 1:3] is copied once)
    N, C, H, W = x.shape
    Co, _, kh, kw = w.shape
    g = _Geom(H, W, kh, kw, stride, pad)
    dt = x.dtype
    bias = b if b is not None else np.zeros(Co, dt)
    if (kh, kw, pad) == (3, 3, 1) and stride in (1, 2) and dt == np.float32:
        return _direct_forward(x, w, b, stride, act, work)

    src = work.get("src", (N, g.P, C, g.S), dt)                # padded phases of x
    to_phases(x, stride, pad, g.Hq, g.Wq, src)
    wt = _taps_major(w)                                        # (T, Co, C)
    wide = work.get("wide", (N, Co, g.L), dt)                  # output on the padded width
    _gemm_forward(src, wt, g, wide)
    out = np.empty((N, Co, g.Ho, g.Wo), dtype=dt)              # (N, Co, Ho, Wo)
    crop_bias_act(wide, g.Wq, bias, b is not None, 0.0 if act is None else float(act),
                  act is not None, out)
    cache = (src, w, wt, b is not None, act, out if act is not None else None, g, x.shape, work)
    return out, cache


def conv2d_backward(dout, cache):
    """Backward of ``conv2d_forward``.

    Inputs:
    - dout: (N, Cout, Ho, Wo) upstream gradient (of the activated output when act was fused).
    - cache: from ``conv2d_forward``.
    Returns:
    - dx: (N, Cin, H, W);  dw: (Cout, Cin, kh, kw);  db: (Cout,) or None when b was None.
    """
    if isinstance(cache[0], str) and cache[0] == "direct3x3":
        return _conv3x3_direct_backward(dout, cache)
    if isinstance(cache[0], str) and cache[0] == "direct3x3s2":
        return _conv3x3s2_direct_backward(dout, cache)
    src, w, wt, has_b, act, y, g, xshape, work = cache
    N, C, H, W = xshape
    Co = w.shape[0]
    check_array("dout", dout, ndim=4, dtype=w.dtype, shape=(N, Co, g.Ho, g.Wo))
    dt = w.dtype
    gpad = work.get("gpad", (N, Co, g.G), dt)                  # wide dout with zero margins
    rowsum = np.empty((N, Co), dt)
    dout = np.ascontiguousarray(dout)
    prep_grad(dout, dout if y is None else y, 0.0 if act is None else float(act),
              act is not None, g.Wq, g.M, gpad, rowsum)
    db = rowsum.sum(axis=0) if has_b else None                 # (Co,)

    dwt = np.empty((g.kh * g.kw, Co, C), dt)                   # (T, Co, C)
    _gemm_dw(gpad, src, g, dwt, work)
    dw = np.ascontiguousarray(dwt.reshape(g.kh, g.kw, Co, C).transpose(2, 3, 0, 1))

    dsrc = work.get("dsrc", (N, g.P, C, g.S), dt)              # gradient of the padded phases
    _gemm_dx(gpad, wt, g, dsrc)
    dx = np.empty(xshape, dt)                                  # (N, C, H, W)
    from_phases(dsrc, g.s, g.p, g.Hq, g.Wq, np.zeros(1, dt), False, dx)
    return dx, dw, db


def _direct_forward(x, w, b, stride, act, work):
    """``conv2d_forward`` for 3×3 kernels, pad 1, stride 1 or 2, on the direct kernels of
    ``_direct3x3.py`` / ``_direct3x3_s2.py`` (any float dtype; ``conv2d_forward`` sends float32
    here, and tests call it in float64 too). Returns (out, cache) for ``conv2d_backward``."""
    N, C, H, W = x.shape
    Co = w.shape[0]
    dt = x.dtype
    bias = b if b is not None else np.zeros(Co, dt)
    slope = 0.0 if act is None else float(act)
    if stride == 1:
        R = _d3.rows_per_job(N, H, W, C)
        tiles = work.get("xtiles", (N * (-(-H // R)), C, (R + 2) * (W + 2)), dt)
        out = np.empty((N, Co, H, W), dtype=dt)                 # (N, Co, H, W)
        _d3.conv3x3(x, x, 0.0, False, w, bias, b is not None, slope, act is not None, R,
                    tiles, out)
        tag = "direct3x3"
    else:
        Ho, Wo = (H + 1) // 2, (W + 1) // 2
        R = _s2.rows_per_job(N, Ho)
        tiles = work.get("xtiles2", (N * (-(-Ho // R)), C, 4 * (R + 1) * (Wo + 2)), dt)
        out = np.empty((N, Co, Ho, Wo), dtype=dt)               # (N, Co, Ho, Wo)
        _s2.conv3x3s2_fwd(x, _d3.pack_weights(w), bias, b is not None, slope, act is not None,
                          R, tiles, out)
        tag = "direct3x3s2"
    cache = (tag, tiles, w, b is not None, act, out if act is not None else None, R, x.shape,
             work)
    return out, cache


def _conv3x3_direct_backward(dout, cache):
    """``conv2d_backward`` for the direct 3×3 stride-1 pad-1 path (see ``_direct3x3.py``)."""
    _, xtiles, w, has_b, act, y, R, xshape, work = cache
    N, C, H, W = xshape
    Co = w.shape[0]
    check_array("dout", dout, ndim=4, dtype=w.dtype, shape=(N, Co, H, W))
    dt = w.dtype
    dout = np.ascontiguousarray(dout)
    J = xtiles.shape[0]
    gtiles = work.get("gtiles", (J, Co, (R + 2) * (W + 2)), dt)  # dz = dout·mask, tiles
    dx = np.empty(xshape, dt)                                  # (N, C, H, W)
    _d3.conv3x3(dout, dout if y is None else y, 0.0 if act is None else float(act),
                     act is not None, _d3.flip_transpose(w), np.zeros(1, dt), False, 0.0,
                     False, R, gtiles, dx)
    Cb = -(-Co // _d3.MB)
    dwp = work.get("dw_partial3", (J, Cb * _d3.MB, C, 3, 3), dt)
    dbp = work.get("db_partial3", (J, Co), dt)
    _d3.conv3x3_dw(xtiles, gtiles, H, W, R, dt.type(0), dwp, dbp)
    dw = dwp[:, :Co].sum(axis=0)                               # (Co, C, 3, 3)
    db = dbp.sum(axis=0) if has_b else None                    # (Co,)
    return dx, dw, db


def _conv3x3s2_direct_backward(dout, cache):
    """``conv2d_backward`` for the direct 3×3 stride-2 pad-1 path (see ``_direct3x3_s2.py``)."""
    _, tiles, w, has_b, act, y, R, xshape, work = cache
    N, C, H, W = xshape
    Co = w.shape[0]
    Ho, Wo = (H + 1) // 2, (W + 1) // 2
    check_array("dout", dout, ndim=4, dtype=w.dtype, shape=(N, Co, Ho, Wo))
    dt = w.dtype
    dout = np.ascontiguousarray(dout)
    gp = work.get("gplanes2", (N, Co, (Ho + 2) * (Wo + 2)), dt)  # dz, zero-bordered planes
    rowsum = np.empty((N, Co), dt)
    _s2.s2_grad_planes(dout, dout if y is None else y, 0.0 if act is None else float(act),
                       act is not None, gp, rowsum)
    db = rowsum.sum(axis=0) if has_b else None                 # (Co,)
    J = tiles.shape[0]
    dwp = work.get("dw_partial3s2", (J, -(-Co // _d3.MB) * _d3.MB, C, 3, 3), dt)
    _s2.conv3x3s2_dw(tiles, gp, Ho, Wo, R, dt.type(0), dwp)
    dw = dwp[:, :Co].sum(axis=0)                               # (Co, C, 3, 3)
    dx = np.empty(xshape, dt)                                  # (N, C, H, W)
    _s2.conv3x3s2_dx(gp, _d3.pack_weights(np.ascontiguousarray(w.transpose(1, 0, 2, 3))),
                     Ho, Wo, R, dx)
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# conv_transpose2d: the adjoint of conv2d with respect to its input
# ---------------------------------------------------------------------------------------------
def conv_transpose2d_forward(x, w, b=None, stride=2, pad=0, output_padding=0, work=None):
    """Transposed convolution ("deconvolution"), PyTorch's layout and sizes.

    It is exactly the adjoint of ``conv2d_forward(., w, stride, pad)`` w.r.t. its input: each
    input pixel scatters ``x[n, i, r, c] * w[i, :, :, :]`` into the output at (s·r - p, s·c - p).

    Inputs:
    - x: (N, Cin, H, W).
    - w: (Cin, Cout, kh, kw)  (note: input channels first, as PyTorch's ConvTranspose2d).
    - b: (Cout,) or None.
    - stride, pad: as in the conv2d it is the transpose of.
    - output_padding: extra rows/cols at the bottom/right (0 <= output_padding < stride), to
      pick the output size when several input sizes give the same conv2d output size.
    - work: optional ``Workspace``.
    Returns:
    - out: (N, Cout, Ho, Wo), Ho = (H - 1)*stride - 2*pad + kh + output_padding.
    - cache: for ``conv_transpose2d_backward``.
    """
    stride, pad = _check_common(x, w, b, stride, pad, 0, "conv_transpose2d")
    if not isinstance(output_padding, (int, np.integer)) or not 0 <= output_padding < stride:
        raise ValueError(f"output_padding must be an integer in [0, stride={stride}), got "
                         f"{output_padding!r}")
    if b is not None and b.shape[0] != w.shape[1]:
        raise ValueError(f"b has shape {b.shape} but w has {w.shape[1]} output channels "
                         f"(w is (Cin, Cout, kh, kw))")
    work = Workspace() if work is None else work
    x = np.ascontiguousarray(x)
    N, Ci, H, W = x.shape
    _, Co, kh, kw = w.shape
    Ho = (H - 1) * stride - 2 * pad + kh + output_padding
    Wo = (W - 1) * stride - 2 * pad + kw + output_padding
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv_transpose2d output would be {Ho}x{Wo}; reduce pad")
    if (x.dtype == np.float32 and (kh, kw) == (2, 2) and stride == 2 and pad == 0
            and output_padding == 0):
        # the U-Net's ×2 upsampler: 4 independent 1×1 convolutions, direct kernels
        # (``_direct_convT2.py``). The cache keeps x itself (not a copy), like the fused-act
        # paths keep their output: do not modify x in place before the backward.
        out, R = _t2.forward(x, w, b)                          # (N, Co, 2H, 2W)
        return out, ("directT2", x, w, b is not None, R, work)
    g = _Geom(Ho, Wo, kh, kw, stride, pad)     # the conv2d that maps (Ho, Wo) back to (H, W)
    assert (g.Ho, g.Wo) == (H, W)
    dt = x.dtype
    gpad = work.get("gpad", (N, Ci, g.G), dt)                  # x laid out as a wide "dout"
    rowsum = np.empty((N, Ci), dt)
    prep_grad(x, x, 0.0, False, g.Wq, g.M, gpad, rowsum)
    wt = _taps_major(w)                                        # (T, Ci, Co)
    dsrc = work.get("dsrc", (N, g.P, Co, g.S), dt)
    _gemm_dx(gpad, wt, g, dsrc)
    out = np.empty((N, Co, Ho, Wo), dt)                        # (N, Co, Ho, Wo)
    from_phases(dsrc, stride, pad, g.Hq, g.Wq, b if b is not None else np.zeros(1, dt),
                b is not None, out)
    cache = (gpad, w, wt, b is not None, g, x.shape, work)
    return out, cache


def conv_transpose2d_backward(dout, cache):
    """Backward of ``conv_transpose2d_forward``.

    dx is a plain convolution of dout with w; dw correlates dout with x.

    Inputs:
    - dout: (N, Cout, Ho, Wo).
    - cache: from ``conv_transpose2d_forward``.
    Returns:
    - dx: (N, Cin, H, W);  dw: (Cin, Cout, kh, kw);  db: (Cout,) or None.
    """
    if isinstance(cache[0], str) and cache[0] == "directT2":
        _, x, w, has_b, R, work = cache
        N, Ci, H, W = x.shape
        Co = w.shape[1]
        check_array("dout", dout, ndim=4, dtype=w.dtype, shape=(N, Co, 2 * H, 2 * W))
        tiles = work.get("convT2_tiles", _t2.tiles_shape(N, H, W, Co, R), w.dtype)
        dx, dw, db = _t2.backward(np.ascontiguousarray(dout), x, w, R, tiles)
        return dx, dw, (db if has_b else None)
    gpad, w, wt, has_b, g, xshape, work = cache
    N, Ci, H, W = xshape
    Co = w.shape[1]
    check_array("dout", dout, ndim=4, dtype=w.dtype, shape=(N, Co, g.H, g.W))
    dt = w.dtype
    db = dout.sum(axis=(0, 2, 3)) if has_b else None           # (Co,)
    src = work.get("src", (N, g.P, Co, g.S), dt)               # padded phases of dout
    dout = np.ascontiguousarray(dout)
    to_phases(dout, g.s, g.p, g.Hq, g.Wq, src)
    wide = work.get("wide", (N, Ci, g.L), dt)
    _gemm_forward(src, wt, g, wide)                            # conv2d of dout with w
    dx = np.empty(xshape, dt)                                  # (N, Ci, H, W)
    crop_bias_act(wide, g.Wq, np.zeros(1, dt), False, 0.0, False, dx)
    dwt = np.empty((g.kh * g.kw, Ci, Co), dt)                  # (T, Ci, Co)
    _gemm_dw(gpad, src, g, dwt, work)
    dw = np.ascontiguousarray(dwt.reshape(g.kh, g.kw, Ci, Co).transpose(2, 3, 0, 1))
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# Slow references: explicit loops straight from the definitions.
# ---------------------------------------------------------------------------------------------
def conv2d_forward_reference(x, w, b=None, stride=1, pad=None):
    """Loop version of ``conv2d_forward`` (no act). Returns (out, cache)."""
    Co, C, kh, kw = w.shape
    pad = (kh - 1) // 2 if pad is None else pad
    N, _, H, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho = (H + 2 * pad - kh) // stride + 1
    Wo = (W + 2 * pad - kw) // stride + 1
    out = np.zeros((N, Co, Ho, Wo), x.dtype)
    for n in range(N):
        for o in range(Co):
            for i in range(Ho):
                for j in range(Wo):
                    patch = xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    out[n, o, i, j] = np.sum(patch * w[o]) + (b[o] if b is not None else 0)
    return out, (x, w, b, stride, pad)


def conv2d_backward_reference(dout, cache):
    """Loop version of ``conv2d_backward``: scatter each output's gradient back."""
    x, w, b, stride, pad = cache
    Co, C, kh, kw = w.shape
    N, _, Ho, Wo = dout.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(N):
        for o in range(Co):
            for i in range(Ho):
                for j in range(Wo):
                    ys, xs = i * stride, j * stride
                    dxp[n, :, ys:ys + kh, xs:xs + kw] += w[o] * dout[n, o, i, j]
                    dw[o] += xp[n, :, ys:ys + kh, xs:xs + kw] * dout[n, o, i, j]
    H, W = x.shape[2:]
    dx = dxp[:, :, pad:pad + H, pad:pad + W]
    db = dout.sum(axis=(0, 2, 3)) if b is not None else None
    return dx, dw, db


def conv_transpose2d_forward_reference(x, w, b=None, stride=2, pad=0, output_padding=0):
    """Loop version of ``conv_transpose2d_forward``: every input pixel scatters a weighted kernel."""
    N, Ci, H, W = x.shape
    _, Co, kh, kw = w.shape
    Hf = (H - 1) * stride + kh + output_padding                 # un-cropped output size
    Wf = (W - 1) * stride + kw + output_padding
    full = np.zeros((N, Co, Hf, Wf), x.dtype)
    for n in range(N):
        for c in range(Ci):
            for r in range(H):
                for q in range(W):
                    full[n, :, r * stride:r * stride + kh, q * stride:q * stride + kw] += \
                        x[n, c, r, q] * w[c]
    Ho, Wo = Hf - 2 * pad, Wf - 2 * pad
    out = full[:, :, pad:pad + Ho, pad:pad + Wo].copy()
    if b is not None:
        out += b[None, :, None, None]
    return out, (x, w, b, stride, pad, output_padding)


def conv_transpose2d_backward_reference(dout, cache):
    """Loop version of ``conv_transpose2d_backward``: gather what each input pixel scattered."""
    x, w, b, stride, pad, output_padding = cache
    N, Ci, H, W = x.shape
    _, Co, kh, kw = w.shape
    Hf, Wf = dout.shape[2] + 2 * pad, dout.shape[3] + 2 * pad
    dfull = np.zeros((N, Co, Hf, Wf), dout.dtype)
    dfull[:, :, pad:pad + dout.shape[2], pad:pad + dout.shape[3]] = dout
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(N):
        for c in range(Ci):
            for r in range(H):
                for q in range(W):
                    patch = dfull[n, :, r * stride:r * stride + kh, q * stride:q * stride + kw]
                    dx[n, c, r, q] = np.sum(patch * w[c])
                    dw[c] += x[n, c, r, q] * patch
    db = dout.sum(axis=(0, 2, 3)) if b is not None else None
    return dx, dw, db
