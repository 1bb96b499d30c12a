"""2-D convolution and transposed convolution, forward and backward, written out by hand.

Read this file top-down:

1. **The definition** — ``conv2d_forward_reference`` and friends: explicit loops, the maths in
   their docstrings. Everything else in the file must give the same numbers as these (the tests
   assert it), so they are the place to learn what a convolution and its gradients *are*.
2. **The fast paths** — ``conv2d_forward`` / ``conv2d_backward`` (and the transposed pair), which
   the layers call. Each says which reference it must equal. Three ways of computing the same
   thing live behind them: "shifted GEMMs" for any kernel size and dtype, and direct Numba
   kernels for the float32 3×3 layers and the 2×2 transposed convolution of the U-Net.
3. **Caches** — every forward returns a small named tuple whose *type* says which path produced
   it (``_GemmConvCache``, ``_Direct3x3Cache``, ...); the backward dispatches on that type.
"""
from typing import NamedTuple

import numpy as np

from .._checks import check_array, check_positive_int
from ._fast import blas as _blas
from ._fast import direct3x3
from ._fast import direct3x3_s2
from ._fast import direct_convT2
from ._fast.conv_kernels import crop_bias_act, from_phases, prep_grad, to_phases


# =============================================================================================
# 1. The definition: slow loop references
# =============================================================================================
def conv2d_forward_reference(x, w, b=None, stride=1, pad=None):
    """2-D convolution (cross-correlation, as in every deep-learning framework), as loops.

    With ``xp`` = x padded by ``pad`` zeros on every side and stride ``s``::

        out[n, o, i, j] = b[o] + Σ_{c, dy, dx} w[o, c, dy, dx] · xp[n, c, s·i + dy, s·j + dx]

    Inputs: x (N, C, H, W); w (Co, C, kh, kw); b (Co,) or None; pad default (kh - 1)//2.
    Returns: out (N, Co, Ho, Wo) with ``Ho = (H + 2·pad - kh)//s + 1`` (same for Wo), and the
    cache for ``conv2d_backward_reference``.
    """
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
    """Gradients of ``conv2d_forward_reference``, by scattering each output's gradient back.

    Output (o, i, j) read the window ``xp[:, s·i : s·i + kh, s·j : s·j + kw]`` with weights
    ``w[o]``, so with ``g = dout``::

        dxp[n, :, s·i + dy, s·j + dx] += w[o, :, dy, dx] · g[n, o, i, j]      (then crop the pad)
        dw[o, c, dy, dx]               = Σ_{n, i, j} g[n, o, i, j] · xp[n, c, s·i + dy, s·j + dx]
        db[o]                          = Σ_{n, i, j} g[n, o, i, j]

    Returns: dx (N, C, H, W), dw (Co, C, kh, kw), db (Co,) or None.
    """
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
    """Transposed convolution as loops: every input pixel scatters a weighted copy of the kernel.

    With w (Ci, Co, kh, kw) (PyTorch's layout)::

        full[n, :, s·r : s·r + kh, s·q : s·q + kw] += x[n, c, r, q] · w[c]     for every (c, r, q)
        out = full cropped by ``pad`` on every side (+ b)

    This is exactly the adjoint of ``conv2d`` (same w, s, pad) with respect to its input, which
    is why ``conv2d``'s dx and this op share one fast path below.
    Returns: out (N, Co, Ho, Wo), ``Ho = (H - 1)·s - 2·pad + kh + output_padding``; cache.
    """
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
    """Gradients of ``conv_transpose2d_forward_reference``: gather what each input pixel
    scattered. ``dx[n, c, r, q] = Σ w[c] · dfull[n, :, s·r : s·r + kh, s·q : s·q + kw]`` (a plain
    convolution of dout with w), ``dw[c] = Σ x[n, c, r, q] · (that window of dfull)``, ``db = Σ dout``.
    """
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


# =============================================================================================
# 2. The fast paths
# =============================================================================================
# How it is computed fast: "shifted GEMMs", no im2col
# ---------------------------------------------------
# Fix one tap (dy, dx). Its contribution to the whole output is a matrix product
#
#     out[n] (Co, pixels)  +=  w[:, :, dy, dx] (Co, C)  @  xp[n, :, shifted pixels] (C, pixels).
#
# With stride 1, pad x once and flatten each channel's padded image into a row of width
# W + 2p. Then "the pixels shifted by (dy, dx)" is simply the *contiguous* slice starting at
# flat offset dy·(W + 2p) + dx — a window of the padded buffer that BLAS can read in place (its
# row stride is just larger than its width). We compute the output on the padded width (the
# last few columns of each output row are junk and get cropped), so a k×k convolution is k·k
# GEMMs that accumulate into one output buffer (BLAS ``beta = 1``; see ``_blas.py``). Nothing is
# copied k·k times, unlike im2col, whose (C·k·k, pixels) matrix is 9× the input for 3×3 kernels.
#
# Stride 2 fits the same scheme after splitting the padded image into its 4 "phases"
# (even/odd rows × even/odd columns): tap (dy, dx) reads phase (dy % 2, dx % 2) shifted by
# (dy // 2, dx // 2), again a contiguous window. (Stride s: s·s phases.)
#
# Backward, with g = dL/dout laid out the same wide way (junk columns set to 0):
# * dw[:, :, dy, dx] = Σ_n g[n] @ xp_shifted[n]ᵀ — a correlation of the input with dout, one
#   GEMM per tap, reduced over pixels (the pixels are split between threads).
# * dx is the adjoint of the forward: every tap's GEMM transposed, w_tapᵀ @ g, added back at the
#   same shift. Written as a gather (each phase pixel collects from g shifted the other way) it
#   is a convolution of dout with the *flipped, transposed* weights — a transposed convolution —
#   and its outputs are disjoint, so threads can split them.
#
# A transposed convolution is *defined* as that adjoint, so ``conv_transpose2d_forward`` runs
# the dx path and its backward runs the forward and dw paths. The bias and an optional
# LeakyReLU are fused into the (memory-bound) crop pass, and the activation's mask into the
# gradient pass.
#
# The U-Net's own layers in float32: direct kernels
# -------------------------------------------------
# At 256×256 with 16–48 channels the per-tap GEMMs above are memory-bound: each of the 9 taps
# re-reads the whole input and re-reads/re-writes the whole output, and OpenBLAS packs skinny
# matrices at about the cost of multiplying them (measured 40–60 GFLOP/s per core on these
# shapes). So float32 3×3 pad-1 convolutions run direct Numba kernels instead (``_fast/direct3x3.py``,
# stride 1; ``_fast/direct3x3_s2.py``, stride 2): a job copies the few input rows its block of output
# rows needs into a zero-padded tile (fusing the padding, and in the backward the LeakyReLU
# mask), then accumulates 4 output channels at once along each row with 12 weights in registers.
# Layers with 1–2 output channels at W >= 128 (the flow head) skip the tiles: the forward reads
# x in place and the backward is one fused dx/dw pass (``conv3x3_few_out``).
# Measured on 2 cores, old and new interleaved in one run: all U-Net convolutions
# forward+backward 1.55–1.77× faster than the GEMM path (the flow head 2.6–3.5×).
#
# float64 (gradient checks) keeps the GEMM path, so every float64 result is bit-for-bit what it
# was before the direct kernels existed: whole-network gradient checks sit at the float64
# round-off floor, where any change of summation order moves the measured error. The direct
# path is checked in float64 against the loop references and by gradient checks in
# ``tests/test_ops_direct3x3.py`` (via ``_direct3x3_forward``).
#
# The Meta-Reg decoder's transposed convolution (k = 2, stride 2, pad 0, float32) likewise runs
# a direct kernel (``_fast/direct_convT2.py``): four 1×1 convolutions, one per output phase.
#
# The direct paths keep a *reference* to their input in the cache (as the fused-activation
# paths keep their output): do not modify x in place between forward and backward.

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
    """Sizes and tap offsets of one convolution on the GEMM path (input H×W, kernel kh×kw,
    stride s, pad p).

    Legend (the buffers are laid out as in the comment block above):

    - ``Ho, Wo``      output size.
    - ``phase_h``     rows of each phase image that the taps reach: Ho + (kh - 1)//s.
    - ``wide_w``      width of each phase image row = width of a "wide" output row
                      (Wo valid columns + (kw - 1)//s junk columns that are cropped).
    - ``phase_len``   length of one flattened phase image (phase_h·wide_w + a small spill so
                      the last tap's window stays inside the row).
    - ``wide_len``    length of one flattened wide output plane: Ho·wide_w.
    - ``n_phases``    s·s phase images.
    - ``taps``        for tap t = dy·kw + dx: (phase index, flat offset into that phase).
    - ``margin``      zero margin in front of each wide gradient row (the largest tap offset),
                      so dx's gather can read "before" the first pixel.
    - ``grad_len``    length of one wide gradient row: margin + phase_len.
    """

    def __init__(self, H, W, kh, kw, s, p):
        self.H, self.W, self.kh, self.kw, self.s, self.p = H, W, kh, kw, s, p
        self.Ho = (H + 2 * p - kh) // s + 1
        self.Wo = (W + 2 * p - kw) // s + 1
        if self.Ho < 1 or self.Wo < 1:
            raise ValueError(f"the {kh}x{kw} kernel (stride {s}, pad {p}) does not fit in a "
                             f"{H}x{W} input: the output would be {self.Ho}x{self.Wo}; use a "
                             f"bigger image or more padding")
        self.phase_h = self.Ho + (kh - 1) // s
        self.wide_w = self.Wo + (kw - 1) // s
        self.phase_len = self.phase_h * self.wide_w + (kw - 1) // s
        self.wide_len = self.Ho * self.wide_w
        self.n_phases = s * s
        # tap t = dy*kw + dx reads phase (dy % s, dx % s) at flat offset (dy//s)*wide_w + dx//s
        self.taps = [((dy % s) * s + dx % s, (dy // s) * self.wide_w + dx // s)
                     for dy in range(kh) for dx in range(kw)]
        self.margin = max(off for _, off in self.taps)
        self.grad_len = self.margin + self.phase_len


def _chunks(length, parts):
    """Split range(length) into `parts` near-equal [lo, hi) pieces of at most _MAX_COLS."""
    parts = max(parts, -(-length // _MAX_COLS))
    edges = np.linspace(0, length, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ---------------------------------------------------------------------------------------------
# The three GEMM passes, shared by conv2d and conv_transpose2d.
# ---------------------------------------------------------------------------------------------
def _gemm_forward(src, wt, g, wide):
    """wide[n] (Co, wide_len) = Σ_t wt[t] (Co, C) @ src[n, phase_t, :, off_t : off_t + wide_len]."""
    N = src.shape[0]
    L = g.wide_len
    per = max(1, -(-_blas.n_workers() // N))
    jobs = [(n, lo, hi) for n in range(N) for lo, hi in _chunks(L, per)]

    def job(j):
        n, lo, hi = j
        out = wide[n, :, lo:hi]                                     # (Co, hi-lo)
        for t, (ph, off) in enumerate(g.taps):
            _blas.gemm(out, wt[t], src[n, ph, :, off + lo:off + hi], beta=0.0 if t == 0 else 1.0)

    _blas.run_jobs(job, jobs)


def _gemm_dx(gpad, wt, g, dsrc):
    """dsrc[n, ph] (C, phase_len) = Σ_{t in ph} wt[t]ᵀ (C, Co) @ gpad[n, :, margin - off_t + m]
    (a gather)."""
    N = gpad.shape[0]
    by_phase = [[(t, off) for t, (ph, off) in enumerate(g.taps) if ph == q]
                for q in range(g.n_phases)]
    per = max(1, -(-_blas.n_workers() // (N * g.n_phases)))
    jobs = [(n, q, lo, hi) for n in range(N) for q in range(g.n_phases)
            for lo, hi in _chunks(g.phase_len, per)]
    M = g.margin

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
    """dwt[t] (Co, C) = Σ_n gpad[n, :, margin : margin + wide_len] @ src[n, phase_t, :, off_t : ...]ᵀ.

    The pixel range is split between workers; each sums into its own partial, then we add.
    """
    N = gpad.shape[0]
    nw = _blas.n_workers() if _blas.have_cblas() else 1
    parts = _chunks(g.wide_len, nw)
    nw = len(parts)
    partial = work.get("dw_partial", (nw,) + dwt.shape, dwt.dtype)   # (nw, T, Co, C)
    M = g.margin

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


def _check_common(x, w, b, stride, pad, w_in_axis, what, finite_x=True):
    check_array("x", x, ndim=4, finite=finite_x)
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
# Caches: one small named tuple per path; the backward dispatches on the cache's type.
# (A NamedTuple is a tuple: building one costs what the old positional tuple did, no copies.)
# ---------------------------------------------------------------------------------------------
class _GemmConvCache(NamedTuple):
    """conv2d on the shifted-GEMM path (any kernel, stride, pad; every float64 call)."""
    src: np.ndarray            # (N, n_phases, C, phase_len) padded phases of x (workspace)
    w: np.ndarray              # (Co, C, kh, kw)
    w_taps: np.ndarray         # (kh·kw, Co, C) one matrix per tap
    has_bias: bool
    act: object                # None or the fused LeakyReLU slope
    y: object                  # the activated output (for the LeakyReLU mask) or None
    geom: _Geom
    x_shape: tuple
    work: Workspace


class _Direct3x3Cache(NamedTuple):
    """conv2d on the direct 3×3 stride-1 pad-1 kernels (``_fast/direct3x3.py``)."""
    x_tiles: np.ndarray        # (jobs, C, (rows + 2)·(W + 2)) zero-padded input rows per job
    w: np.ndarray              # (Co, C, 3, 3)
    has_bias: bool
    act: object                # None or the fused LeakyReLU slope
    y: object                  # the activated output or None
    rows: int                  # output rows per parallel job
    x_shape: tuple
    work: Workspace


class _Direct3x3FewCache(NamedTuple):
    """conv2d with 3×3, stride 1, pad 1 and 1–2 output channels (the flow head) on the tile-free
    kernels of ``_fast/direct3x3.py`` (``conv3x3_few_out``)."""
    x: np.ndarray              # the input itself (not a copy)
    w: np.ndarray              # (Co <= 2, C, 3, 3)
    has_bias: bool
    act: object                # None or the fused LeakyReLU slope
    y: object                  # the activated output or None
    rows: int                  # output rows per parallel job
    work: Workspace


class _Direct3x3S2Cache(NamedTuple):
    """conv2d on the direct 3×3 stride-2 pad-1 kernels (``_fast/direct3x3_s2.py``)."""
    x_tiles: np.ndarray        # (jobs, C, 4·(rows + 1)·(Wo + 2)) phase rows of x per job
    w: np.ndarray
    has_bias: bool
    act: object
    y: object
    rows: int
    x_shape: tuple
    work: Workspace


class _GemmConvTCache(NamedTuple):
    """conv_transpose2d on the GEMM path (the adjoint of a conv2d with geometry ``geom``)."""
    gpad: np.ndarray           # (N, Ci, grad_len) x laid out as a wide "dout" (workspace)
    w: np.ndarray              # (Ci, Co, kh, kw)
    w_taps: np.ndarray         # (kh·kw, Ci, Co)
    has_bias: bool
    geom: _Geom
    x_shape: tuple
    work: Workspace


class _DirectConvT2Cache(NamedTuple):
    """conv_transpose2d with k = 2, stride 2, pad 0 on the direct kernels (``_fast/direct_convT2.py``)."""
    x: np.ndarray              # the input itself (not a copy)
    w: np.ndarray              # (Ci, Co, 2, 2)
    has_bias: bool
    rows: int                  # input rows per parallel job
    work: Workspace


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------
def conv2d_forward(x, w, b=None, stride=1, pad=None, act=None, work=None):
    """2-D convolution (cross-correlation) with zero padding; must equal
    ``conv2d_forward_reference`` (followed by LeakyReLU(act) when ``act`` is given).

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
    - cache: for ``conv2d_backward`` (its type names the path taken).
    """
    if pad is None and isinstance(w, np.ndarray) and w.ndim == 4:
        pad = (w.shape[2] - 1) // 2
    # x's NaN/Inf check: on the direct paths (``_direct3x3_forward``), else below
    stride, pad = _check_common(x, w, b, stride, 0 if pad is None else pad, 1, "conv2d",
                                finite_x=False)
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
    if (kh, kw, pad) == (3, 3, 1) and stride in (1, 2) and dt == np.float32:
        return _direct3x3_forward(x, w, b, stride=stride, act=act, work=work)
    check_array("x", x)                                        # NaN/Inf

    src = work.get("src", (N, g.n_phases, C, g.phase_len), dt)   # padded phases of x
    to_phases(x, src, stride=stride, pad=pad, phase_h=g.phase_h, wide_w=g.wide_w)
    wt = _taps_major(w)                                        # (T, Co, C)
    wide = work.get("wide", (N, Co, g.wide_len), dt)           # output on the padded width
    _gemm_forward(src, wt, g, wide)
    out = np.empty((N, Co, g.Ho, g.Wo), dtype=dt)              # (N, Co, Ho, Wo)
    crop_bias_act(wide, out, wide_w=g.wide_w, bias=b, act=act)
    cache = _GemmConvCache(src=src, w=w, w_taps=wt, has_bias=b is not None, act=act,
                           y=out if act is not None else None, geom=g, x_shape=x.shape,
                           work=work)
    return out, cache


def conv2d_backward(dout, cache):
    """Backward of ``conv2d_forward``; must equal ``conv2d_backward_reference`` (applied to
    dout · LeakyReLU'(out) when an activation was fused).

    Inputs:
    - dout: (N, Cout, Ho, Wo) upstream gradient (of the activated output when act was fused).
    - cache: from ``conv2d_forward``.
    Returns:
    - dx: (N, Cin, H, W);  dw: (Cout, Cin, kh, kw);  db: (Cout,) or None when b was None.
    """
    if isinstance(cache, _Direct3x3Cache):
        return _direct3x3_backward(dout, cache)
    if isinstance(cache, _Direct3x3S2Cache):
        return _direct3x3_s2_backward(dout, cache)
    if isinstance(cache, _Direct3x3FewCache):
        return _direct3x3_few_backward(dout, cache)
    return _gemm_conv2d_backward(dout, cache)


def _gemm_conv2d_backward(dout, c):
    """``conv2d_backward`` on the shifted-GEMM path (``c``: a ``_GemmConvCache``)."""
    g = c.geom
    N, C, H, W = c.x_shape
    Co = c.w.shape[0]
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, Co, g.Ho, g.Wo))
    dt = c.w.dtype
    gpad = c.work.get("gpad", (N, Co, g.grad_len), dt)         # wide dout with zero margins
    rowsum = np.empty((N, Co), dt)
    dout = np.ascontiguousarray(dout)
    prep_grad(dout, gpad, rowsum, wide_w=g.wide_w, margin=g.margin, act_out=c.y, act=c.act)
    db = rowsum.sum(axis=0) if c.has_bias else None            # (Co,)

    dwt = np.empty((g.kh * g.kw, Co, C), dt)                   # (T, Co, C)
    _gemm_dw(gpad, c.src, g, dwt, c.work)
    dw = np.ascontiguousarray(dwt.reshape(g.kh, g.kw, Co, C).transpose(2, 3, 0, 1))

    dsrc = c.work.get("dsrc", (N, g.n_phases, C, g.phase_len), dt)   # grad of the padded phases
    _gemm_dx(gpad, c.w_taps, g, dsrc)
    dx = np.empty(c.x_shape, dt)                               # (N, C, H, W)
    from_phases(dsrc, dx, stride=g.s, pad=g.p, phase_h=g.phase_h, wide_w=g.wide_w)
    return dx, dw, db


def _direct3x3_forward(x, w, b, *, stride, act, work):
    """``conv2d_forward`` for 3×3 kernels, pad 1, stride 1 or 2, on the direct kernels of
    ``_fast/direct3x3.py`` / ``_fast/direct3x3_s2.py`` (any float dtype; ``conv2d_forward`` sends float32
    here, and tests call it in float64 too). Must equal ``conv2d_forward_reference`` (+ act).
    Returns (out, cache) for ``conv2d_backward``."""
    N, C, H, W = x.shape
    Co = w.shape[0]
    dt = x.dtype
    if not (stride == 1 and (Co > 2 or W < 128)):
        check_array("x", x)          # NaN/Inf (the stride-1 tile copy checks while it reads)
    if stride == 1 and Co <= 2 and W >= 128:
        # the flow head: too few multiply-adds per input value for tiles to pay (see
        # ``_fast/direct3x3.py``, "Layers with 1 or 2 output channels")
        rows = direct3x3.rows_per_job(N, H, W, C)
        out = np.empty((N, Co, H, W), dtype=dt)                 # (N, Co, H, W)
        direct3x3.conv3x3_few_out(x, w, out, rows=rows, bias=b, act=act)
        return out, _Direct3x3FewCache(x=x, w=w, has_bias=b is not None, act=act,
                                       y=out if act is not None else None, rows=rows, work=work)
    if stride == 1:
        rows = direct3x3.rows_per_job(N, H, W, C)
        tiles = work.get("xtiles", (N * (-(-H // rows)), C, (rows + 2) * (W + 2)), dt)
        out = np.empty((N, Co, H, W), dtype=dt)                 # (N, Co, H, W)
        if not direct3x3.conv3x3(x, w, out, rows=rows, tiles=tiles, bias=b, act=act):
            check_array("x", x)                                 # raise the usual NaN message
        cache_type = _Direct3x3Cache
    else:
        Ho, Wo = (H + 1) // 2, (W + 1) // 2
        rows = direct3x3_s2.rows_per_job(N, Ho)
        tiles = work.get("xtiles2", (N * (-(-Ho // rows)), C, 4 * (rows + 1) * (Wo + 2)), dt)
        out = np.empty((N, Co, Ho, Wo), dtype=dt)               # (N, Co, Ho, Wo)
        direct3x3_s2.conv3x3s2_forward(x, w, out, rows=rows, tiles=tiles, bias=b, act=act)
        cache_type = _Direct3x3S2Cache
    cache = cache_type(x_tiles=tiles, w=w, has_bias=b is not None, act=act,
                       y=out if act is not None else None, rows=rows, x_shape=x.shape, work=work)
    return out, cache


def _direct3x3_backward(dout, c):
    """``conv2d_backward`` for the direct 3×3 stride-1 pad-1 path (``c``: ``_Direct3x3Cache``)."""
    N, C, H, W = c.x_shape
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, c.w.shape[0], H, W),
                finite=False)                                  # NaN/Inf: in the tile copy
    dx = np.empty(c.x_shape, c.w.dtype)                        # (N, C, H, W)
    dw, db = direct3x3_dx_dw(dout, c, dx)
    return dx, dw, db


def direct3x3_dx_dw(dout, c, dx, dx2=None, dx_up=1):
    """dx (written into ``dx``) and (dw, db) of a stride-1 direct 3×3 forward whose cache ``c``
    holds x_tiles, w, y, act, has_bias, rows and work (``_Direct3x3Cache``, or the skip-join
    conv's cache, which passes ``dx2``/``dx_up`` to split dx as ``direct3x3.conv3x3``'s
    ``out2``/``out_up`` do). dout: (N, Co, H, W), checked for shape and dtype; its NaN/Inf
    check happens here, in the pass that copies it into the gradient tiles."""
    Co = c.w.shape[0]
    H, W = dout.shape[2:]
    dt = c.w.dtype
    dout = np.ascontiguousarray(dout)
    jobs = c.x_tiles.shape[0]
    C = c.x_tiles.shape[1]
    # dx: the same kernel on dz = dout · LeakyReLU'(y), flipped and transposed weights; it
    # leaves dz's zero-padded rows in dz_tiles for the dw kernel
    dz_tiles = c.work.get("gtiles", (jobs, Co, (c.rows + 2) * (W + 2)), dt)
    if not direct3x3.conv3x3(dout, direct3x3.flip_transpose(c.w), dx, rows=c.rows,
                             tiles=dz_tiles, in_mask_of=c.y,
                             in_slope=0.0 if c.act is None else float(c.act), out2=dx2,
                             out_up=dx_up):
        check_array("dout", dout)                               # raise the usual NaN message
    n_blocks = -(-Co // direct3x3.MB)                          # output-channel register blocks
    dw_part = c.work.get("dw_partial3", (jobs, n_blocks * direct3x3.MB, C, 3, 3), dt)
    db_part = c.work.get("db_partial3", (jobs, Co), dt)
    direct3x3.conv3x3_dw(c.x_tiles, dz_tiles, dw_part, db_part, height=H, width=W, rows=c.rows)
    dw = dw_part[:, :Co].sum(axis=0)                           # (Co, C, 3, 3)
    db = db_part.sum(axis=0) if c.has_bias else None           # (Co,)
    return dw, db


def _direct3x3_few_backward(dout, c):
    """``conv2d_backward`` for the tile-free 1–2 output channel path (``c``:
    ``_Direct3x3FewCache``): dx, dw and db in one fused pass (``conv3x3_few_out_backward``)."""
    N, C, H, W = c.x.shape
    Co = c.w.shape[0]
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, Co, H, W))
    dt = c.w.dtype
    dout = np.ascontiguousarray(dout)
    jobs = N * (-(-H // c.rows))
    dw_part = c.work.get("dw_partial_few", (jobs, 2, C, 3, 3), dt)
    db_part = c.work.get("db_partial_few", (jobs, 2), dt)
    dx = np.empty(c.x.shape, dt)                               # (N, C, H, W)
    direct3x3.conv3x3_few_out_backward(dout, c.x, c.w, dx, dw_part, db_part, rows=c.rows,
                                       act_out=c.y, act=c.act)
    dw = dw_part[:, :Co].sum(axis=0)                           # (Co, C, 3, 3)
    db = db_part[:, :Co].sum(axis=0) if c.has_bias else None   # (Co,)
    return dx, dw, db


def _direct3x3_s2_backward(dout, c):
    """``conv2d_backward`` for the direct 3×3 stride-2 pad-1 path (``c``: ``_Direct3x3S2Cache``)."""
    N, C, H, W = c.x_shape
    Co = c.w.shape[0]
    Ho, Wo = (H + 1) // 2, (W + 1) // 2
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, Co, Ho, Wo))
    dt = c.w.dtype
    dout = np.ascontiguousarray(dout)
    dz_planes = c.work.get("gplanes2", (N, Co, (Ho + 2) * (Wo + 2)), dt)  # zero-bordered dz
    rowsum = np.empty((N, Co), dt)
    direct3x3_s2.conv3x3s2_grad_planes(dout, dz_planes, rowsum, act_out=c.y, act=c.act)
    db = rowsum.sum(axis=0) if c.has_bias else None            # (Co,)
    jobs = c.x_tiles.shape[0]
    dw_part = c.work.get("dw_partial3s2", (jobs, -(-Co // direct3x3.MB) * direct3x3.MB, C, 3, 3),
                         dt)
    direct3x3_s2.conv3x3s2_dw(c.x_tiles, dz_planes, dw_part, out_h=Ho, out_w=Wo, rows=c.rows)
    dw = dw_part[:, :Co].sum(axis=0)                           # (Co, C, 3, 3)
    dx = np.empty(c.x_shape, dt)                               # (N, C, H, W)
    direct3x3_s2.conv3x3s2_dx(dz_planes, c.w, dx, out_h=Ho, out_w=Wo, rows=c.rows)
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# conv_transpose2d: the adjoint of conv2d with respect to its input
# ---------------------------------------------------------------------------------------------
def conv_transpose2d_forward(x, w, b=None, stride=2, pad=0, output_padding=0, work=None):
    """Transposed convolution ("deconvolution"), PyTorch's layout and sizes; must equal
    ``conv_transpose2d_forward_reference``.

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
    - cache: for ``conv_transpose2d_backward`` (its type names the path taken).
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
        # (``_fast/direct_convT2.py``). The cache keeps x itself (not a copy), like the fused-act
        # paths keep their output: do not modify x in place before the backward.
        out, rows = direct_convT2.forward(x, w, b)             # (N, Co, 2H, 2W)
        return out, _DirectConvT2Cache(x=x, w=w, has_bias=b is not None, rows=rows, work=work)
    g = _Geom(Ho, Wo, kh, kw, stride, pad)     # the conv2d that maps (Ho, Wo) back to (H, W)
    assert (g.Ho, g.Wo) == (H, W)
    dt = x.dtype
    gpad = work.get("gpad", (N, Ci, g.grad_len), dt)           # x laid out as a wide "dout"
    rowsum = np.empty((N, Ci), dt)
    prep_grad(x, gpad, rowsum, wide_w=g.wide_w, margin=g.margin)
    wt = _taps_major(w)                                        # (T, Ci, Co)
    dsrc = work.get("dsrc", (N, g.n_phases, Co, g.phase_len), dt)
    _gemm_dx(gpad, wt, g, dsrc)
    out = np.empty((N, Co, Ho, Wo), dt)                        # (N, Co, Ho, Wo)
    from_phases(dsrc, out, stride=stride, pad=pad, phase_h=g.phase_h, wide_w=g.wide_w, bias=b)
    cache = _GemmConvTCache(gpad=gpad, w=w, w_taps=wt, has_bias=b is not None, geom=g,
                            x_shape=x.shape, work=work)
    return out, cache


def conv_transpose2d_backward(dout, cache):
    """Backward of ``conv_transpose2d_forward``; must equal ``conv_transpose2d_backward_reference``.

    dx is a plain convolution of dout with w; dw correlates dout with x.

    Inputs:
    - dout: (N, Cout, Ho, Wo).
    - cache: from ``conv_transpose2d_forward``.
    Returns:
    - dx: (N, Cin, H, W);  dw: (Cin, Cout, kh, kw);  db: (Cout,) or None.
    """
    if isinstance(cache, _DirectConvT2Cache):
        return _direct_convT2_backward(dout, cache)
    return _gemm_conv_transpose2d_backward(dout, cache)


def _direct_convT2_backward(dout, c):
    """``conv_transpose2d_backward`` on the direct k = 2 kernels (``c``: ``_DirectConvT2Cache``)."""
    N, Ci, H, W = c.x.shape
    Co = c.w.shape[1]
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, Co, 2 * H, 2 * W))
    tiles = c.work.get("convT2_tiles", direct_convT2.tiles_shape(N, H, W, Co, c.rows), c.w.dtype)
    dx, dw, db = direct_convT2.backward(np.ascontiguousarray(dout), c.x, c.w, rows=c.rows,
                                        tiles=tiles)
    return dx, dw, (db if c.has_bias else None)


def _gemm_conv_transpose2d_backward(dout, c):
    """``conv_transpose2d_backward`` on the GEMM path (``c``: ``_GemmConvTCache``)."""
    g = c.geom
    N, Ci, H, W = c.x_shape
    Co = c.w.shape[1]
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, Co, g.H, g.W))
    dt = c.w.dtype
    db = dout.sum(axis=(0, 2, 3)) if c.has_bias else None     # (Co,)
    src = c.work.get("src", (N, g.n_phases, Co, g.phase_len), dt)   # padded phases of dout
    dout = np.ascontiguousarray(dout)
    to_phases(dout, src, stride=g.s, pad=g.p, phase_h=g.phase_h, wide_w=g.wide_w)
    wide = c.work.get("wide", (N, Ci, g.wide_len), dt)
    _gemm_forward(src, c.w_taps, g, wide)                      # conv2d of dout with w
    dx = np.empty(c.x_shape, dt)                               # (N, Ci, H, W)
    crop_bias_act(wide, dx, wide_w=g.wide_w)
    dwt = np.empty((g.kh * g.kw, Ci, Co), dt)                  # (T, Ci, Co)
    _gemm_dw(c.gpad, src, g, dwt, c.work)
    dw = np.ascontiguousarray(dwt.reshape(g.kh, g.kw, Ci, Co).transpose(2, 3, 0, 1))
    return dx, dw, db
