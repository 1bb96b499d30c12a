"""Numba kernels of the bilinear warp (``regnp.ops.warp``, whose docstring states the
convention and the maths).

``warp_fwd_kernel`` must equal ``warp_forward_reference``; ``warp_bwd_kernel`` (with
``sum_buffers`` when the rows are split into private buffers, see ``backward_plan``) must
equal ``warp_backward_reference``. ``tests/test_ops_warp.py`` checks them through the public
functions, every backward plan included.

Arithmetic on coordinates is float64 even for float32 inputs: ``i + u`` in float32 loses
~1e-5 of a pixel at i ~ 250, enough to move floor(y) across an integer and flip the kink's
side. Each kernel also counts the non-finite inputs it reads (fusing the NaN check into the
pass that reads the data anyway); the Python wrapper raises the usual message when the count
is > 0.
"""
import numba
import numpy as np
from regnp.ops._fast.threads import share


@numba.njit(cache=True, nogil=True)
def warp_fwd_kernel(part, parts, moving, u, out):
    """out = bilinear pull-back of moving by u; returns the number of NaN/Inf inputs seen. Must
    equal ``regnp.ops.warp.warp_forward_reference``."""
    N, C, H, W = moving.shape
    bad = 0
    job_lo, job_hi = share(N * H, part, parts)    # this thread's jobs
    for r in range(job_lo, job_hi):                         # one output row per task
        n = r // H
        i = r - n * H
        for c in range(C):                                # NaN check of moving's row i
            for j in range(W):
                if not np.isfinite(moving[n, c, i, j]):
                    bad += 1
        for j in range(W):
            uy = u[n, 0, i, j]
            ux = u[n, 1, i, j]
            if not (np.isfinite(uy) and np.isfinite(ux)):
                bad += 1
                for c in range(C):
                    out[n, c, i, j] = 0
                continue
            y = i + uy
            x = j + ux
            fy = np.floor(y)
            fx = np.floor(x)
            wy = y - fy
            wx = x - fx
            # neighbours as ints; clip the float first so a huge u cannot overflow the cast
            y0 = int(min(max(fy, -2.0), H + 1.0))
            x0 = int(min(max(fx, -2.0), W + 1.0))
            w00 = (1 - wy) * (1 - wx)
            w01 = (1 - wy) * wx
            w10 = wy * (1 - wx)
            w11 = wy * wx
            if y0 >= 0 and y0 < H - 1 and x0 >= 0 and x0 < W - 1:   # all 4 inside: no branches
                for c in range(C):
                    out[n, c, i, j] = (w00 * moving[n, c, y0, x0] + w01 * moving[n, c, y0, x0 + 1]
                                       + w10 * moving[n, c, y0 + 1, x0] + w11 * moving[n, c, y0 + 1, x0 + 1])
            else:                                         # near/outside the border
                y1 = y0 + 1
                x1 = x0 + 1
                iny0 = 0 <= y0 < H
                iny1 = 0 <= y1 < H
                inx0 = 0 <= x0 < W
                inx1 = 0 <= x1 < W
                for c in range(C):
                    v = 0.0 * wy
                    if iny0:
                        if inx0:
                            v += w00 * moving[n, c, y0, x0]
                        if inx1:
                            v += w01 * moving[n, c, y0, x1]
                    if iny1:
                        if inx0:
                            v += w10 * moving[n, c, y1, x0]
                        if inx1:
                            v += w11 * moving[n, c, y1, x1]
                    out[n, c, i, j] = v
    return bad


@numba.njit(cache=True, nogil=True)
def warp_bwd_kernel(part, parts, dwarped, moving, u, dmov_bufs, du, row_lo, row_hi, buf_of_task):
    """du, and dmoving scattered into ``dmov_bufs[buf_of_task[t]]`` for the output rows
    [row_lo[t], row_hi[t]) of task t (``backward_plan``); returns the number of NaN/Inf values
    of dwarped seen. With the buffers summed, must equal
    ``regnp.ops.warp.warp_backward_reference``."""
    N, C, H, W = moving.shape
    bad = 0
    job_lo, job_hi = share(row_lo.size, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
        acc = dmov_bufs[buf_of_task[t]]
        nbad = 0
        for r in range(row_lo[t], row_hi[t]):
            n = r // H
            i = r - n * H
            for c in range(C):
                for j in range(W):
                    if not np.isfinite(dwarped[n, c, i, j]):
                        nbad += 1
            for j in range(W):
                y = i + u[n, 0, i, j]
                x = j + u[n, 1, i, j]
                fy = np.floor(y)
                fx = np.floor(x)
                wy = y - fy
                wx = x - fx
                y0 = int(min(max(fy, -2.0), H + 1.0))
                x0 = int(min(max(fx, -2.0), W + 1.0))
                w00 = (1 - wy) * (1 - wx)
                w01 = (1 - wy) * wx
                w10 = wy * (1 - wx)
                w11 = wy * wx
                gy = 0.0 * wy
                gx = 0.0 * wy
                if y0 >= 0 and y0 < H - 1 and x0 >= 0 and x0 < W - 1:
                    for c in range(C):
                        g = dwarped[n, c, i, j]
                        m00 = moving[n, c, y0, x0]
                        m01 = moving[n, c, y0, x0 + 1]
                        m10 = moving[n, c, y0 + 1, x0]
                        m11 = moving[n, c, y0 + 1, x0 + 1]
                        acc[n, c, y0, x0] += w00 * g
                        acc[n, c, y0, x0 + 1] += w01 * g
                        acc[n, c, y0 + 1, x0] += w10 * g
                        acc[n, c, y0 + 1, x0 + 1] += w11 * g
                        gy += g * ((1 - wx) * (m10 - m00) + wx * (m11 - m01))
                        gx += g * ((1 - wy) * (m01 - m00) + wy * (m11 - m10))
                else:
                    y1 = y0 + 1
                    x1 = x0 + 1
                    iny0 = 0 <= y0 < H
                    iny1 = 0 <= y1 < H
                    inx0 = 0 <= x0 < W
                    inx1 = 0 <= x1 < W
                    for c in range(C):
                        g = dwarped[n, c, i, j]
                        m00 = 0.0 * wy
                        m01 = 0.0 * wy
                        m10 = 0.0 * wy
                        m11 = 0.0 * wy
                        if iny0:
                            if inx0:
                                m00 = moving[n, c, y0, x0]
                                acc[n, c, y0, x0] += w00 * g
                            if inx1:
                                m01 = moving[n, c, y0, x1]
                                acc[n, c, y0, x1] += w01 * g
                        if iny1:
                            if inx0:
                                m10 = moving[n, c, y1, x0]
                                acc[n, c, y1, x0] += w10 * g
                            if inx1:
                                m11 = moving[n, c, y1, x1]
                                acc[n, c, y1, x1] += w11 * g
                        gy += g * ((1 - wx) * (m10 - m00) + wx * (m11 - m01))
                        gx += g * ((1 - wy) * (m01 - m00) + wy * (m11 - m10))
                du[n, 0, i, j] = gy
                du[n, 1, i, j] = gx
        bad += nbad
    return bad


@numba.njit(cache=True, nogil=True)
def sum_buffers(part, parts, bufs, out):
    """out = bufs.sum(axis=0), parallel over the flattened entries."""
    B = bufs.shape[0]
    flat = bufs.reshape(B, -1)
    o = out.reshape(-1)
    job_lo, job_hi = share(o.size, part, parts)    # this thread's jobs
    for p in range(job_lo, job_hi):
        s = flat[0, p]
        for b in range(1, B):
            s += flat[b, p]
        o[p] = s


def backward_plan(N, H, n_threads):
    """Split the N*H output rows into tasks; see :func:`warp_bwd_kernel`.

    When there are at least as many images as threads, a task is a whole image and all tasks
    share one dmoving buffer (no race: an image only scatters into itself). Otherwise the rows
    are cut into ``n_threads`` blocks, each with a private buffer.
    """
    if N >= n_threads or n_threads == 1:
        lo = np.arange(N, dtype=np.int64) * H
        return lo, lo + H, np.zeros(N, dtype=np.int64), 1
    T = min(n_threads, N * H)
    edges = np.linspace(0, N * H, T + 1).round().astype(np.int64)
    return edges[:-1].copy(), edges[1:].copy(), np.arange(T, dtype=np.int64), T
