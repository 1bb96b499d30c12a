"""Direct kernels of the 2×2 stride-2 pad-0 transposed convolution (``_direct_convT2.py``).

float32 ``conv_transpose2d_forward/backward`` with k = 2, stride 2, pad 0 run these kernels;
here they are checked against the loop references (float32 through the public API, float64 by
calling the kernels directly), by float64 gradient checks, and the dispatch is checked to leave
every other case on the GEMM path.
"""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.ops._fast import direct_convT2 as T
from regnp.ops.conv import (Workspace, _DirectConvT2Cache, _GemmConvTCache,
                            conv_transpose2d_backward, conv_transpose2d_backward_reference,
                            conv_transpose2d_forward, conv_transpose2d_forward_reference)

# (N, Ci, Co, H, W): odd / non-square sizes, channel counts not multiples of 4, batch >= 2,
# and sizes where the last job holds fewer rows than the others
SHAPES = [(2, 5, 3, 7, 9), (3, 6, 7, 5, 4), (2, 1, 1, 3, 2), (2, 9, 10, 11, 6),
          (2, 32, 32, 8, 8)]


def _data(N, Ci, Co, H, W, dt, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, Ci, H, W)).astype(dt)
    w = rng.standard_normal((Ci, Co, 2, 2)).astype(dt)
    b = rng.standard_normal(Co).astype(dt)
    dout = rng.standard_normal((N, Co, 2 * H, 2 * W)).astype(dt)
    return x, w, b, dout


def _direct(x, w, b, dout):
    out, R = T.forward(x, w, b)
    tiles = np.full(T.tiles_shape(x.shape[0], x.shape[2], x.shape[3], w.shape[1], R), np.nan,
                    x.dtype)                                 # stale scratch must not leak in
    dx, dw, db = T.backward(dout, x, w, rows=R, tiles=tiles)
    return out, dx, dw, db


@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_float64_match_reference_tightly(shape):
    x, w, b, dout = _data(*shape, np.float64)
    out, dx, dw, db = _direct(x, w, b, dout)
    ref, cache = conv_transpose2d_forward_reference(x, w, b, stride=2, pad=0)
    rdx, rdw, rdb = conv_transpose2d_backward_reference(dout, cache)
    for got, want in ((out, ref), (dx, rdx), (dw, rdw), (db, rdb)):
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_references_agree_with_conv_references(shape):
    x, w, b, dout = _data(*shape, np.float64, seed=1)
    ref, cache = conv_transpose2d_forward_reference(x, w, b, stride=2, pad=0)
    np.testing.assert_allclose(T.forward_reference(x, w, b), ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(T.backward_reference(dout, x, w),
                         conv_transpose2d_backward_reference(dout, cache)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("use_b", [True, False])
def test_float32_public_api_uses_direct_path_and_matches(shape, use_b):
    x, w, b, dout = _data(*shape, np.float32, seed=2)
    b = b if use_b else None
    out, cache = conv_transpose2d_forward(x, w, b, stride=2, pad=0, work=Workspace())
    assert isinstance(cache, _DirectConvT2Cache)
    dx, dw, db = conv_transpose2d_backward(dout, cache)
    x64, w64, d64 = (a.astype(np.float64) for a in (x, w, dout))
    b64 = None if b is None else b.astype(np.float64)
    ref, rc = conv_transpose2d_forward_reference(x64, w64, b64, stride=2, pad=0)
    rdx, rdw, rdb = conv_transpose2d_backward_reference(d64, rc)
    for got, want in ((out, ref), (dx, rdx), (dw, rdw)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    if use_b:
        assert db.dtype == np.float32
        np.testing.assert_allclose(db, rdb, rtol=1e-4, atol=1e-4 * np.abs(rdb).max())
    else:
        assert db is None


def test_float32_direct_matches_gemm_path_of_float64():
    """The float64 call stays on the GEMM path; the float32 direct result agrees with it."""
    x, w, b, dout = _data(2, 7, 5, 6, 9, np.float64, seed=3)
    out64, c64 = conv_transpose2d_forward(x, w, b, stride=2, pad=0)
    assert isinstance(c64, _GemmConvTCache)
    g64 = conv_transpose2d_backward(dout, c64)
    f = lambda a: a.astype(np.float32)                         # noqa: E731
    out32, c32 = conv_transpose2d_forward(f(x), f(w), f(b), stride=2, pad=0)
    g32 = conv_transpose2d_backward(f(dout), c32)
    for got, want in zip((out32,) + g32, (out64,) + g64):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("kw", [dict(stride=2, pad=1), dict(stride=2, pad=0, output_padding=1),
                                dict(stride=1, pad=0)])
def test_other_cases_keep_gemm_path(kw):
    x, w, b, dout = _data(2, 3, 4, 5, 6, np.float32)
    out, cache = conv_transpose2d_forward(x, w, b, **kw)
    assert isinstance(cache, _GemmConvTCache)
    x3 = x[:, :, :, :]
    w3 = np.random.default_rng(0).standard_normal((3, 4, 3, 3)).astype(np.float32)
    _, cache3 = conv_transpose2d_forward(x3, w3, b, stride=2, pad=0)   # k = 3
    assert isinstance(cache3, _GemmConvTCache)


def test_noncontiguous_input_and_dout():
    x, w, b, dout = _data(2, 4, 3, 5, 7, np.float32, seed=4)
    xt = np.asfortranarray(x)
    dt = np.asfortranarray(dout)
    out, cache = conv_transpose2d_forward(xt, w, b, stride=2, pad=0)
    dx, dw, db = conv_transpose2d_backward(dt, cache)
    ref, rc = conv_transpose2d_forward_reference(x, w, b, stride=2, pad=0)
    rdx, rdw, rdb = conv_transpose2d_backward_reference(dout, rc)
    for got, want in ((out, ref), (dx, rdx), (dw, rdw), (db, rdb)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_hand_computed_answer():
    """1 input channel, 1 output channel: every pixel paints v·w + b into its 2×2 block."""
    x = np.array([[[[1.0, 2.0]]]], np.float32)                  # (1, 1, 1, 2)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)      # (1, 1, 2, 2)
    out, cache = conv_transpose2d_forward(x, w, np.array([0.5], np.float32), stride=2, pad=0)
    np.testing.assert_array_equal(out[0, 0], [[1.5, 2.5, 2.5, 4.5], [3.5, 4.5, 6.5, 8.5]])
    dx, dw, db = conv_transpose2d_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx[0, 0], [[10.0, 10.0]])
    np.testing.assert_array_equal(dw[0, 0], [[3.0, 3.0], [3.0, 3.0]])
    np.testing.assert_array_equal(db, [8.0])


def test_bad_dout_shape_raises():
    x, w, b, dout = _data(2, 3, 4, 5, 6, np.float32)
    _, cache = conv_transpose2d_forward(x, w, b, stride=2, pad=0)
    with pytest.raises(ValueError, match="dout"):
        conv_transpose2d_backward(dout[:, :, :-1], cache)
    with pytest.raises(TypeError, match="dout"):
        conv_transpose2d_backward(dout.astype(np.float64), cache)


def test_workspace_reused_between_steps():
    x, w, b, dout = _data(2, 5, 6, 7, 5, np.float32, seed=5)
    work = Workspace()
    first = None
    for _ in range(3):
        out, cache = conv_transpose2d_forward(x, w, b, stride=2, pad=0, work=work)
        grads = conv_transpose2d_backward(dout, cache)
        if first is None:
            first = (out,) + grads
            nbytes = work.nbytes()
        for got, want in zip((out,) + grads, first):
            np.testing.assert_array_equal(got, want)
    assert work.nbytes() == nbytes > 0


@pytest.mark.parametrize("shape", [(2, 3, 5, 3, 5), (3, 5, 2, 4, 3)])
def test_gradcheck_float64_every_argument(shape):
    N, Ci, Co, H, W = shape
    x, w, b, dout = _data(N, Ci, Co, H, W, np.float64, seed=6)
    R = T.rows_per_job(N, H, W)
    tiles = np.empty(T.tiles_shape(N, H, W, Co, R), np.float64)
    f = lambda: T.forward(x, w, b)[0]                          # noqa: E731
    dx, dw, db = T.backward(dout, x, w, rows=R, tiles=tiles)
    assert check_vjp(f, x, dx, dout) < 1e-6
    assert check_vjp(f, w, dw, dout) < 1e-6
    assert check_vjp(f, b, db, dout) < 1e-6


def test_rows_per_job_covers_image():
    for N, H, W in [(1, 1, 1), (2, 16, 16), (2, 128, 128), (1, 7, 600), (3, 5, 9)]:
        R = T.rows_per_job(N, H, W)
        assert 1 <= R <= H
        assert N * (-(-H // R)) >= min(4, N * H)
