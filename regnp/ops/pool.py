"""Down- and up-sampling by 2: nearest and bilinear upsampling, 2×2 average pooling (+ backward).

* ``upsample_nearest2x``: each pixel becomes a 2×2 block; backward sums each block.
* ``upsample_bilinear2x``: half-pixel centres, like ``align_corners=False``: output pixel o
  sits at input coordinate (o + 0.5)/2 - 0.5, i.e. o = 2i samples i - 1/4 (weights 1/4 on i-1,
  3/4 on i) and o = 2i + 1 samples i + 1/4 (3/4 on i, 1/4 on i+1); coordinates outside the
  image are clamped to the edge. It is separable, out = Ry · x · Rxᵀ, so its backward is
  Ryᵀ · dout · Rx (a scatter of each output's gradient with the same four weights).
  Used to bring a half-resolution displacement to full size (VoxelMorph-1): the *caller*
  multiplies the values by 2 (displacements are in pixels of the grid they live on).
* ``avgpool2x2``: the mean of each 2×2 block (DIRNet, FCN-SS); four strided NumPy adds.

Each section starts with its slow reference (the definition: NumPy repeats, explicit
interpolation matrices); the public functions after it run Numba kernels over (n, c)
planes, split over the threads, (``_fast/pool_kernels.py``), which must equal it.
"""
import numpy as np

from .._checks import check_array
from ._fast import pool_kernels as fast
from ._fast.threads import run


def _check_even(x):
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"2x2 pooling needs even H and W, got {x.shape[2]}x{x.shape[3]}; crop "
                         f"or pad the image to a multiple of 2**levels of the network")


# ------------------------------------------------------------------- nearest upsampling --------
def upsample_nearest2x_forward_reference(x):
    """out[n, c, i, j] = x[n, c, i // 2, j // 2] (NumPy's repeat). Returns (out, cache)."""
    return x.repeat(2, axis=2).repeat(2, axis=3), (x.shape, x.dtype)


def upsample_nearest2x_backward_reference(dout, cache):
    """dx[n, c, i, j] = the sum of dout over the 2×2 block (2i..2i+1, 2j..2j+1)."""
    (N, C, H, W), dt = cache
    return dout.reshape(N, C, H, 2, W, 2).sum(axis=(3, 5))


def upsample_nearest2x_forward(x):
    """Nearest-neighbour ×2 upsampling; must equal ``upsample_nearest2x_forward_reference``.

    Inputs: x (N, C, H, W).  Returns: out (N, C, 2H, 2W), cache (x's shape).
    """
    check_array("x", x, ndim=4)
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    out = np.empty((N, C, 2 * H, 2 * W), x.dtype)        # (N, C, 2H, 2W)
    run(fast.up_nearest_fwd, x, out)
    return out, (x.shape, x.dtype)


def upsample_nearest2x_backward(dout, cache):
    """Inputs: dout (N, C, 2H, 2W), cache.  Returns: dx (N, C, H, W), the 2×2 block sums
    (must equal ``upsample_nearest2x_backward_reference``)."""
    (N, C, H, W), dt = cache
    check_array("dout", dout, ndim=4, dtype=dt, shape=(N, C, 2 * H, 2 * W))
    dx = np.empty((N, C, H, W), dt)
    run(fast.up_nearest_bwd, np.ascontiguousarray(dout), dx)
    return dx


# ------------------------------------------------------------------- bilinear upsampling -------
def _bilinear_taps(n):
    """For output o in [0, 2n): the two source indices and weights (half-pixel, edge-clamped)."""
    o = np.arange(2 * n)
    src = np.maximum((o + 0.5) / 2 - 0.5, 0.0)             # clamp below at pixel 0's centre
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)                         # clamp above at the last pixel
    w1 = src - i0
    return i0, i1, 1.0 - w1, w1


def _bilinear_matrix(n):
    """The (2n, n) interpolation matrix R of one axis."""
    i0, i1, w0, w1 = _bilinear_taps(n)
    R = np.zeros((2 * n, n))
    for o in range(2 * n):
        R[o, i0[o]] += w0[o]
        R[o, i1[o]] += w1[o]
    return R


def upsample_bilinear2x_forward_reference(x):
    """out[n, c] = Ry @ x[n, c] @ Rxᵀ with the explicit (2H, H) and (2W, W) interpolation
    matrices (two nonzero weights per row, see the module docstring)."""
    Ry, Rx = _bilinear_matrix(x.shape[2]), _bilinear_matrix(x.shape[3])
    out = np.einsum("ip,ncpq,jq->ncij", Ry, x, Rx).astype(x.dtype)
    return out, (Ry, Rx, x.dtype)


def upsample_bilinear2x_backward_reference(dout, cache):
    """dx[n, c] = Ryᵀ @ dout[n, c] @ Rx (the transpose of the forward's linear map)."""
    Ry, Rx, dt = cache
    return np.einsum("ip,ncij,jq->ncpq", Ry, dout, Rx).astype(dt)


def upsample_bilinear2x_forward(x):
    """Bilinear ×2 upsampling with half-pixel centres (``align_corners=False``), edge-clamped;
    must equal ``upsample_bilinear2x_forward_reference``.

    Inputs: x (N, C, H, W).  Returns: out (N, C, 2H, 2W), cache.
    A constant image stays constant; a linear ramp stays linear away from the border.
    """
    check_array("x", x, ndim=4)
    x = np.ascontiguousarray(x)
    N, C, H, W = x.shape
    ty, tx = _bilinear_taps(H), _bilinear_taps(W)
    ty = ty[:2] + tuple(t.astype(x.dtype) for t in ty[2:])
    tx = tx[:2] + tuple(t.astype(x.dtype) for t in tx[2:])
    out = np.empty((N, C, 2 * H, 2 * W), x.dtype)        # (N, C, 2H, 2W)
    run(fast.bilinear_fwd, x, *ty, *tx, out)
    return out, (x.shape, x.dtype, ty, tx)


def upsample_bilinear2x_backward(dout, cache):
    """Inputs: dout (N, C, 2H, 2W), cache.  Returns: dx (N, C, H, W) = Ryᵀ · dout · Rx
    (must equal ``upsample_bilinear2x_backward_reference``)."""
    (N, C, H, W), dt, ty, tx = cache
    check_array("dout", dout, ndim=4, dtype=dt, shape=(N, C, 2 * H, 2 * W))
    dx = np.empty((N, C, H, W), dt)
    run(fast.bilinear_bwd, np.ascontiguousarray(dout), *ty, *tx, dx)
    return dx


# ------------------------------------------------------------------- 2×2 average pooling -------
def avgpool2x2_forward(x):
    """2×2 average pooling (DIRNet's downsampling; FCN-SS's coarse-scale images):
    out[n, c, i, j] = mean of x[n, c, 2i:2i+2, 2j:2j+2]. Short enough to be its own definition
    (the tests compare it with ``x.reshape(...).mean(...)``).

    Inputs: x (N, C, H, W) with H, W even.  Returns: out (N, C, H/2, W/2), cache.
    Four strided adds in NumPy: already memory-bound, and used on small maps only.
    """
    check_array("x", x, ndim=4)
    _check_even(x)
    out = x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2]        # (N, C, H/2, W/2)
    out += x[:, :, 0::2, 1::2]
    out += x[:, :, 1::2, 1::2]
    out *= x.dtype.type(0.25)
    return out, (x.shape, x.dtype)


def avgpool2x2_backward(dout, cache):
    """Each input pixel receives a quarter of its block's gradient. Returns dx (N, C, H, W)."""
    shape, dt = cache
    N, C, H, W = shape
    check_array("dout", dout, ndim=4, dtype=dt, shape=(N, C, H // 2, W // 2))
    dx = np.empty(shape, dt)
    dx.reshape(N, C, H // 2, 2, W // 2, 2)[...] = (dout * dt.type(0.25))[:, :, :, None, :, None]
    return dx
