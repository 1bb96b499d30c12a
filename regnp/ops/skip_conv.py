"""The convolution after a U-Net skip join, reading the join in place: conv3x3(concat([up(a), s])).

At every decoder level the U-Net upsamples its features ``a`` (×2 nearest, or a learned
transposed convolution that has already run), concatenates the encoder's skip ``s`` along the
channels and convolves the result. Written as three ops, each pass goes through memory: the
upsampled copy (4× the size of ``a``), the concatenation (its own copy), and the convolution
reading it back; the backward writes dx for the concatenation, splits it into two copies and
sums the upsampled half over 2×2 blocks. At 256×256 that is the largest share of the bytes a
VoxelMorph-2 step moves (``python -m regnp.bench --roofline``).

Here the convolution reads ``a`` and ``s`` directly while it copies its input rows into the
zero-padded tiles it works on anyway (the upsampling is "row y reads row y // 2"), and its
backward writes the 2×2 block sums of the upsampled half and the skip's half straight into two
arrays. The maths is exactly that of the three ops; only the copies are gone.

Read top-down: the definition (``skip_conv3x3_forward_reference``: the three ops in a row),
then the fast pair the layers call, which must equal it.
"""
from typing import NamedTuple

import numpy as np

from .._checks import check_array
from ._fast import direct3x3
from .activation import leaky_relu_backward_reference, leaky_relu_forward_reference
from .conv import (Workspace, conv2d_backward, conv2d_backward_reference, conv2d_forward,
                   conv2d_forward_reference, direct3x3_dx_dw)
from .pool import (upsample_nearest2x_backward, upsample_nearest2x_backward_reference,
                   upsample_nearest2x_forward, upsample_nearest2x_forward_reference)


# =============================================================================================
# 1. The definition: upsample, concatenate, convolve (loop references)
# =============================================================================================
def skip_conv3x3_forward_reference(a, s, w, b=None, up=2, act=None):
    """out = LeakyReLU_act(conv3x3_pad1(concat([up(a), s], channels), w) + b), as the three ops.

    Inputs: a (N, Ca, H/up, W/up) the decoder's features; s (N, Cs, H, W) the skip; w
    (Co, Ca + Cs, 3, 3); b (Co,) or None; up 2 (nearest ×2) or 1 (a is already at H×W);
    act: LeakyReLU slope or None. Returns out (N, Co, H, W) and the cache for the backward.
    """
    ua = upsample_nearest2x_forward_reference(a)[0] if up == 2 else a      # (N, Ca, H, W)
    x = np.concatenate([ua, s], axis=1)                                    # (N, Ca + Cs, H, W)
    z, conv_cache = conv2d_forward_reference(x, w, b, 1, 1)
    if act is None:
        return z, (conv_cache, None, a.shape, up)
    out, act_cache = leaky_relu_forward_reference(z, act)
    return out, (conv_cache, act_cache, a.shape, up)


def skip_conv3x3_backward_reference(dout, cache):
    """(da, ds, dw, db): the conv's backward, the concatenation's split, the upsampling's 2×2
    block sums — in that order, as the three ops' backwards."""
    conv_cache, act_cache, a_shape, up = cache
    dz = dout if act_cache is None else leaky_relu_backward_reference(dout, act_cache)
    dx, dw, db = conv2d_backward_reference(dz, conv_cache)
    Ca = a_shape[1]
    dua, ds = dx[:, :Ca], dx[:, Ca:]
    da = upsample_nearest2x_backward_reference(dua, (a_shape, dua.dtype)) if up == 2 else dua
    return da, ds, dw, db


# =============================================================================================
# 2. The fast pair
# =============================================================================================
class _SkipConvCache(NamedTuple):
    """The fused path: the forward's tiles (the joined input, zero-padded) and its output."""
    x_tiles: np.ndarray        # (J, Ca + Cs, (R + 2)·(W + 2)) (workspace)
    w: np.ndarray
    has_bias: bool
    act: object
    y: object                  # activated output (for the LeakyReLU mask) or None
    rows: int
    a_shape: tuple
    s_shape: tuple
    up: int
    work: Workspace


class _SkipConvPlainCache(NamedTuple):
    """Any other case (float64, other paths): the join materialised, conv2d as usual."""
    conv: object
    a_shape: tuple
    up: int


def _check(a, s, w, b, up, act, finite):
    check_array("a", a, ndim=4, finite=finite)
    check_array("s", s, ndim=4, dtype=a.dtype, finite=finite)
    check_array("w", w, ndim=4, dtype=a.dtype)
    if b is not None:
        check_array("b", b, ndim=1, dtype=a.dtype, shape=(w.shape[0],))
    if up not in (1, 2):
        raise ValueError(f"up must be 1 (a already at the skip's size) or 2 (nearest x2), "
                         f"got {up!r}")
    if a.shape[0] != s.shape[0] or (a.shape[2] * up, a.shape[3] * up) != s.shape[2:]:
        raise ValueError(f"a {a.shape} upsampled x{up} must match the skip s {s.shape} in N, H "
                         f"and W")
    if w.shape[1:] != (a.shape[1] + s.shape[1], 3, 3):
        raise ValueError(f"w must be (Co, {a.shape[1] + s.shape[1]}, 3, 3) for {a.shape[1]} + "
                         f"{s.shape[1]} joined channels, got {w.shape}")
    if act is not None and not (act >= 0):
        raise ValueError(f"act (LeakyReLU slope) must be >= 0 or None, got {act!r}")


def skip_conv3x3_forward(a, s, w, b=None, *, up=2, act=None, work=None):
    """conv3x3(concat([up(a), s])) (+ b, LeakyReLU) without building the concatenation; must
    equal ``skip_conv3x3_forward_reference``.

    Inputs:
    - a: (N, Ca, H/up, W/up) the decoder's features; s: (N, Cs, H, W) the skip.
    - w: (Co, Ca + Cs, 3, 3); b: (Co,) or None; up: 2 (nearest ×2 upsampling of a) or 1.
    - act: LeakyReLU slope fused into the output, or None.
    - work: optional ``Workspace`` (a layer passes its own; the tiles are reused across steps).
    Returns:
    - out: (N, Co, H, W).
    - cache: for ``skip_conv3x3_backward``. Like every fast path it keeps references to its
      inputs' data (in its tiles) and output: run the backward before reusing the workspace.

    float32 runs the direct kernels (``_fast/direct3x3.py`` with ``inp2``/``in_up``); any other
    dtype materialises the join and calls ``conv2d_forward`` (in float64 that is the GEMM path,
    so gradient checks of a whole U-Net see the same numbers as the three separate ops).
    """
    # float32: a's and s's NaN/Inf check happens in the kernel's tile copy
    _check(a, s, w, b, up, act, finite=a.dtype != np.float32)
    work = Workspace() if work is None else work
    if a.dtype == np.float32:
        return _skip_conv_direct(a, s, w, b, up=up, act=act, work=work)
    ua = upsample_nearest2x_forward(a)[0] if up == 2 else a
    x = np.concatenate([ua, s], axis=1)                        # (N, Ca + Cs, H, W)
    out, conv_cache = conv2d_forward(x, w, b, 1, 1, act=act, work=work)
    return out, _SkipConvPlainCache(conv=conv_cache, a_shape=a.shape, up=up)


def _skip_conv_direct(a, s, w, b, *, up, act, work):
    """The fused forward on the direct kernels (any float dtype: the tests run it in float64)."""
    a, s = np.ascontiguousarray(a), np.ascontiguousarray(s)
    N, Cs, H, W = s.shape
    C = a.shape[1] + Cs
    rows = direct3x3.rows_per_job(N, H, W, C)
    rows += rows % 2 if up == 2 else 0         # the backward's 2×2 sums need row pairs per job
    tiles = work.get("xtiles", (N * (-(-H // rows)), C, (rows + 2) * (W + 2)), a.dtype)
    out = np.empty((N, w.shape[0], H, W), a.dtype)             # (N, Co, H, W)
    if not direct3x3.conv3x3(a, w, out, rows=rows, tiles=tiles, bias=b, act=act, inp2=s,
                             in_up=up):
        check_array("a", a)                                     # raise the usual NaN message
        check_array("s", s)
    return out, _SkipConvCache(x_tiles=tiles, w=w, has_bias=b is not None, act=act,
                               y=out if act is not None else None, rows=rows, a_shape=a.shape,
                               s_shape=s.shape, up=up, work=work)


def skip_conv3x3_backward(dout, cache, full_res=False):
    """Backward of ``skip_conv3x3_forward``; must equal ``skip_conv3x3_backward_reference``.

    Inputs:
    - dout: (N, Co, H, W) upstream gradient (of the activated output when act was fused).
    - cache: from ``skip_conv3x3_forward``.
    - full_res: with up = 2, return the gradient of the *upsampled* a, (N, Ca, H, W), instead
      of its 2×2 block sums (``UNet.backward(return_skip_grads=True)`` shows it).
    Returns:
    - da: (N, Ca, H/up, W/up) (or (N, Ca, H, W) with full_res); ds: (N, Cs, H, W);
      dw: (Co, Ca + Cs, 3, 3); db: (Co,) or None.
    """
    if isinstance(cache, _SkipConvPlainCache):
        dx, dw, db = conv2d_backward(dout, cache.conv)
        Ca = cache.a_shape[1]
        dua, ds = np.ascontiguousarray(dx[:, :Ca]), np.ascontiguousarray(dx[:, Ca:])
        if cache.up == 2 and not full_res:
            dua = upsample_nearest2x_backward(dua, (cache.a_shape, dua.dtype))
        return dua, ds, dw, db
    c = cache
    N, Cs, H, W = c.s_shape
    Ca = c.a_shape[1]
    check_array("dout", dout, ndim=4, dtype=c.w.dtype, shape=(N, c.w.shape[0], H, W),
                finite=False)                                  # NaN/Inf: in the tile copy
    # dx of the joined input, as in conv2d's direct backward, but written as two arrays: the
    # skip's channels, and the upsampled channels summed over 2×2 blocks (or kept full size)
    up = 1 if full_res else c.up
    da = np.empty((N, Ca, H // up, W // up), c.w.dtype)
    ds = np.empty((N, Cs, H, W), c.w.dtype)
    dw, db = direct3x3_dx_dw(dout, c, da, dx2=ds, dx_up=up)
    return da, ds, dw, db
