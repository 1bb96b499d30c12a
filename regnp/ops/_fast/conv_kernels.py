"""Numba kernels for the memory-bound passes around the convolution GEMMs (see ``conv.py``).

Each is one parallel pass over an activation-sized array:

* ``to_phases``      x (N,C,H,W) -> zero-padded, stride-phase-split, flattened source rows
* ``from_phases``    the adjoint gather: phase rows -> (N,C,H,W), plus an optional bias
* ``crop_bias_act``  wide GEMM output (rows of width Wq) -> (N,Co,Ho,Wo), + bias, + LeakyReLU
* ``prep_grad``      dout (N,Co,Ho,Wo) -> zero-margined wide rows (× LeakyReLU slope mask),
                     plus the per-row sums that make the bias gradient

Layout of a "phase row" (see ``conv.py`` for the why): for stride s, padding p, the padded
image xp[y, x] = x[y - p, x - p] (0 outside) is split into s·s phases
``phase[a, b][r, c] = xp[s·r + a, s·c + b]``, each (Hq, Wq), flattened row-major into a row of
length S >= Hq·Wq (the tail is zero). Names as in ``conv._Geom``: Hq = ``phase_h`` (phase
rows), Wq = ``wide_w`` (phase row width = wide output width), S = ``phase_len``, M = ``margin``.

These passes have no loop reference of their own: they only move data around the GEMMs, and
the whole GEMM path is checked against ``conv.conv2d_forward_reference`` /
``conv2d_backward_reference`` (``tests/test_ops_conv.py``). Call them through the keyword
wrappers at the bottom; the Numba kernels take positional arguments.
"""
import numba
import numpy as np
from regnp.ops._fast.threads import run, share


@numba.njit(cache=True, nogil=True)
def _to_phases_kernel(part, parts, x, s, p, Hq, Wq, src):
    """x (N,C,H,W) -> src (N, s*s, C, S): padded phases, flattened; every entry written."""
    N, C, H, W = x.shape
    S = src.shape[3]
    job_lo, job_hi = share(N * C, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // C
        c = job % C
        for a in range(s):
            for b in range(s):
                row = src[n, a * s + b, c]                       # (S,)
                # columns cc whose source column s*cc + b - p lies inside [0, W)
                lo = max(0, -((b - p) // s))
                hi = min(Wq, (W - 1 - b + p) // s + 1) if W - 1 - b + p >= 0 else 0
                hi = max(hi, lo)
                for r in range(Hq):
                    y = s * r + a - p
                    base = r * Wq
                    if y < 0 or y >= H:
                        for cc in range(Wq):
                            row[base + cc] = 0.0
                        continue
                    for cc in range(lo):
                        row[base + cc] = 0.0
                    off = b - p
                    for cc in range(lo, hi):
                        row[base + cc] = x[n, c, y, s * cc + off]
                    for cc in range(hi, Wq):
                        row[base + cc] = 0.0
                for k in range(Hq * Wq, S):
                    row[k] = 0.0


@numba.njit(cache=True, nogil=True)
def _from_phases_kernel(part, parts, dsrc, s, p, Hq, Wq, bias, use_bias, out):
    """Adjoint of ``_to_phases_kernel``: out[n,c,y,x] = dsrc[n, phase, c, flat] (+ bias[c]).

    Walks the output the same way ``_to_phases_kernel`` walks its input (by phase row, then by phase
    column), so the inner loop has no divisions. Pixels whose padded position lies beyond the
    phase grid were never read by the convolution: their value (gradient) is 0 (+ bias).
    """
    N, C, H, W = out.shape
    job_lo, job_hi = share(N * C, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // C
        c = job % C
        bc = bias[c] if use_bias else 0.0
        for y in range(H):
            r = (y + p) // s
            a = (y + p) - r * s
            if r >= Hq:
                for xx in range(W):
                    out[n, c, y, xx] = bc
                continue
            for b in range(s):
                row = dsrc[n, a * s + b, c]                      # (S,)
                base = r * Wq
                # output columns xx = s*cc + b - p for cc in [lo, hi)
                lo = max(0, -((b - p) // s))
                hi = min(Wq, (W - 1 - b + p) // s + 1) if W - 1 - b + p >= 0 else 0
                off = b - p
                for cc in range(lo, hi):
                    out[n, c, y, s * cc + off] = row[base + cc] + bc
            # columns beyond the phase grid (never read by the convolution)
            for xx in range(s * Wq - p, W):
                out[n, c, y, xx] = bc


@numba.njit(cache=True, nogil=True)
def _crop_bias_act_kernel(part, parts, wide, Wq, bias, use_bias, slope, use_act, out):
    """wide (N,Co,>=Ho*Wq) -> out (N,Co,Ho,Wo) = wide[.., i*Wq + j] + bias, then LeakyReLU."""
    N, Co, Ho, Wo = out.shape
    job_lo, job_hi = share(N * Co, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // Co
        c = job % Co
        bc = bias[c] if use_bias else 0.0
        for i in range(Ho):
            base = i * Wq
            for j in range(Wo):
                v = wide[n, c, base + j] + bc
                if use_act and v < 0:
                    v = v * slope
                out[n, c, i, j] = v


@numba.njit(cache=True, nogil=True)
def _prep_grad_kernel(part, parts, dout, y, slope, use_act, Wq, M, gpad, rowsum):
    """dout (N,Co,Ho,Wo) -> gpad (N,Co,G): zeros, then at M + i*Wq + j the value
    dz = dout * (1 if y > 0 else slope) (just dout without the activation), zeros elsewhere.
    rowsum[n, c] = sum of dz over the image (for the bias gradient)."""
    N, Co, Ho, Wo = dout.shape
    G = gpad.shape[2]
    job_lo, job_hi = share(N * Co, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n = job // Co
        c = job % Co
        row = gpad[n, c]
        for k in range(M):
            row[k] = 0.0
        acc = 0.0
        for i in range(Ho):
            base = M + i * Wq
            for j in range(Wo):
                g = dout[n, c, i, j]
                if use_act and y[n, c, i, j] <= 0:
                    g = g * slope
                row[base + j] = g
                acc += g
            for j in range(Wo, Wq):
                row[base + j] = 0.0
        for k in range(M + Ho * Wq, G):
            row[k] = 0.0
        rowsum[n, c] = acc


# ---------------------------------------------------------------------------------------------
# Entry points (keyword arguments; None for "no bias" / "no activation")
# ---------------------------------------------------------------------------------------------
def _bias_array(bias, dtype):
    return bias if bias is not None else np.zeros(1, dtype)


def to_phases(x, src, *, stride, pad, phase_h, wide_w):
    """src (N, stride², C, phase_len) = the zero-padded, phase-split, flattened rows of x."""
    run(_to_phases_kernel, x, stride, pad, phase_h, wide_w, src)


def from_phases(dsrc, out, *, stride, pad, phase_h, wide_w, bias=None):
    """out (N, C, H, W) = the adjoint gather of ``to_phases`` applied to dsrc (+ bias[c])."""
    run(_from_phases_kernel, dsrc, stride, pad, phase_h, wide_w, _bias_array(bias, out.dtype),
                        bias is not None, out)


def crop_bias_act(wide, out, *, wide_w, bias=None, act=None):
    """out (N, Co, Ho, Wo) = LeakyReLU_act(wide[n, c, i·wide_w + j] + bias[c]); act None: none."""
    run(_crop_bias_act_kernel, wide, wide_w, _bias_array(bias, out.dtype), bias is not None,
                          0.0 if act is None else float(act), act is not None, out)


def prep_grad(dout, gpad, rowsum, *, wide_w, margin, act_out=None, act=None):
    """gpad (N, Co, grad_len) = dz laid out as zero-margined wide rows, rowsum[n, c] = Σ dz,
    with dz = dout · (1 where act_out > 0 else act) — the LeakyReLU backward through the
    activated output ``act_out`` — or dz = dout when ``act`` is None."""
    run(_prep_grad_kernel, dout, dout if act is None else act_out, 0.0 if act is None else float(act),
                      act is not None, wide_w, margin, gpad, rowsum)
