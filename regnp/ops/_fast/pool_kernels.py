"""Numba loops over (n, c) planes, split over threads by ``threads.run``, for ×2 upsampling (``regnp.ops.pool``).

Each kernel names the slow reference in ``regnp/ops/pool.py`` it must equal;
``tests/test_ops_pool.py`` checks them through the public functions.
"""
import numba
from regnp.ops._fast.threads import share


@numba.njit(cache=True, nogil=True)
def up_nearest_fwd(part, parts, x, out):
    """out (N, C, 2H, 2W) = x (N, C, H, W) with each pixel repeated in a 2×2 block; must equal
    ``regnp.ops.pool.upsample_nearest2x_forward_reference``."""
    N, C, H, W = x.shape
    job_lo, job_hi = share(N * C, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n, c = job // C, job % C
        for i in range(2 * H):
            for j in range(2 * W):
                out[n, c, i, j] = x[n, c, i // 2, j // 2]


@numba.njit(cache=True, nogil=True)
def up_nearest_bwd(part, parts, dout, dx):
    """dx (N, C, H, W) = the sums of dout's 2×2 blocks; must equal
    ``regnp.ops.pool.upsample_nearest2x_backward_reference``."""
    N, C, H, W = dx.shape
    job_lo, job_hi = share(N * C, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n, c = job // C, job % C
        for i in range(H):
            for j in range(W):
                dx[n, c, i, j] = (dout[n, c, 2 * i, 2 * j] + dout[n, c, 2 * i, 2 * j + 1]
                                  + dout[n, c, 2 * i + 1, 2 * j] + dout[n, c, 2 * i + 1, 2 * j + 1])


@numba.njit(cache=True, nogil=True)
def bilinear_fwd(part, parts, x, y0, y1, wy0, wy1, x0, x1, wx0, wx1, out):
    """out = Ry · x · Rxᵀ per plane, from the two taps and weights of every output row (y0, y1,
    wy0, wy1) and column (x0, x1, wx0, wx1); must equal
    ``regnp.ops.pool.upsample_bilinear2x_forward_reference``."""
    N, C, Ho, Wo = out.shape
    job_lo, job_hi = share(N * C, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):
        n, c = job // C, job % C
        for i in range(Ho):
            a, b, wa, wb = y0[i], y1[i], wy0[i], wy1[i]
            for j in range(Wo):
                p, q, wp, wq = x0[j], x1[j], wx0[j], wx1[j]
                out[n, c, i, j] = (wa * (wp * x[n, c, a, p] + wq * x[n, c, a, q])
                                   + wb * (wp * x[n, c, b, p] + wq * x[n, c, b, q]))


@numba.njit(cache=True, nogil=True)
def bilinear_bwd(part, parts, dout, y0, y1, wy0, wy1, x0, x1, wx0, wx1, dx):
    """dx = Ryᵀ · dout · Rx per plane: each output's gradient scattered with the same four weights;
    must equal ``regnp.ops.pool.upsample_bilinear2x_backward_reference``."""
    N, C, H, W = dx.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    job_lo, job_hi = share(N * C, part, parts)    # this thread's jobs
    for job in range(job_lo, job_hi):          # each (n, c) plane is scattered by one thread
        n, c = job // C, job % C
        for i in range(H):
            for j in range(W):
                dx[n, c, i, j] = 0.0
        for i in range(Ho):
            a, b, wa, wb = y0[i], y1[i], wy0[i], wy1[i]
            for j in range(Wo):
                p, q, wp, wq = x0[j], x1[j], wx0[j], wx1[j]
                g = dout[n, c, i, j]
                dx[n, c, a, p] += wa * wp * g
                dx[n, c, a, q] += wa * wq * g
                dx[n, c, b, p] += wb * wp * g
                dx[n, c, b, q] += wb * wq * g
