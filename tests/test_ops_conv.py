"""conv2d / conv_transpose2d: agreement with the loop references, gradient checks for every
argument on odd non-square sizes and every stride/padding path, hand-computable answers, the
adjoint identity, and bad inputs."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.ops.conv import (Workspace, conv2d_backward, conv2d_backward_reference, conv2d_forward,
                            conv2d_forward_reference, conv_transpose2d_backward,
                            conv_transpose2d_backward_reference, conv_transpose2d_forward,
                            conv_transpose2d_forward_reference)

# (N, Cin, Cout, H, W, k, stride, pad)
CONV_CASES = [
    (2, 3, 4, 7, 5, 3, 1, 1),      # "same" 3x3, odd non-square
    (2, 3, 4, 8, 9, 3, 2, 1),      # the U-Net's encoder path
    (3, 2, 5, 7, 6, 3, 2, 0),      # stride 2, no padding, odd H
    (2, 3, 2, 9, 6, 5, 1, 2),      # 5x5
    (2, 2, 3, 6, 7, 2, 2, 0),      # even kernel
    (2, 3, 2, 7, 7, 1, 2, 0),      # 1x1 stride 2: three of the four phases have no tap
    (2, 2, 3, 5, 8, 3, 3, 2),      # stride 3
    (2, 2, 3, 7, 5, 3, 1, 0),      # valid conv
]


def _rand(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_reference_float64(case):
    N, C, Co, H, W, k, s, p = case
    rng = np.random.default_rng(1)
    x, w, b = _rand(rng, N, C, H, W), _rand(rng, Co, C, k, k), _rand(rng, Co)
    out, cache = conv2d_forward(x, w, b, s, p)
    ref, rcache = conv2d_forward_reference(x, w, b, s, p)
    assert out.shape == ref.shape == (N, Co, (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = _rand(rng, *out.shape)
    for got, want in zip(conv2d_backward(dout, cache), conv2d_backward_reference(dout, rcache)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv2d_float32_matches_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 5, 11, 9)).astype(np.float32)
    w = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    for s in (1, 2):
        out, cache = conv2d_forward(x, w, b, s)
        assert out.dtype == np.float32
        ref, rc = conv2d_forward_reference(x.astype(np.float64), w.astype(np.float64),
                                           b.astype(np.float64), s, 1)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        got = conv2d_backward(dout, cache)
        want = conv2d_backward_reference(dout.astype(np.float64), rc)
        for g_, w_ in zip(got, want):
            assert g_.dtype == np.float32
            np.testing.assert_allclose(g_, w_, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[1], CONV_CASES[4]])
@pytest.mark.parametrize("act", [None, 0.2])
def test_conv2d_gradcheck_every_argument(case, act):
    N, C, Co, H, W, k, s, p = case
    rng = np.random.default_rng(3)
    x, w, b = _rand(rng, N, C, H, W), _rand(rng, Co, C, k, k), _rand(rng, Co)
    out, cache = conv2d_forward(x, w, b, s, p, act=act)
    dout = _rand(rng, *out.shape)
    dx, dw, db = conv2d_backward(dout, cache)

    def f():
        return conv2d_forward(x, w, b, s, p, act=act)[0]
    assert check_vjp(f, x, dx, dout, max_entries=40) < 1e-6
    assert check_vjp(f, w, dw, dout, max_entries=40) < 1e-6
    assert check_vjp(f, b, db, dout) < 1e-6


def test_conv2d_without_bias_returns_none_db():
    rng = np.random.default_rng(4)
    x, w = _rand(rng, 2, 2, 5, 6), _rand(rng, 3, 2, 3, 3)
    out, cache = conv2d_forward(x, w)
    np.testing.assert_allclose(out, conv2d_forward_reference(x, w)[0], atol=1e-12)
    dx, dw, db = conv2d_backward(np.ones_like(out), cache)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape


def test_conv2d_fused_leaky_relu_equals_separate():
    rng = np.random.default_rng(5)
    x, w, b = _rand(rng, 2, 3, 6, 7), _rand(rng, 4, 3, 3, 3), _rand(rng, 4)
    out, _ = conv2d_forward(x, w, b, act=0.2)
    z = conv2d_forward_reference(x, w, b)[0]
    np.testing.assert_allclose(out, np.where(z > 0, z, 0.2 * z), atol=1e-12)


def test_conv2d_hand_computable():
    x = np.arange(2 * 1 * 4 * 5, dtype=np.float64).reshape(2, 1, 4, 5)
    ident = np.zeros((1, 1, 3, 3))
    ident[0, 0, 1, 1] = 1.0
    out, _ = conv2d_forward(x, ident)                  # centre tap = identity
    np.testing.assert_array_equal(out, x)
    shift = np.zeros((1, 1, 3, 3))
    shift[0, 0, 1, 2] = 1.0                            # reads the right neighbour
    out, _ = conv2d_forward(x, shift)
    np.testing.assert_array_equal(out[..., :-1], x[..., 1:])
    np.testing.assert_array_equal(out[..., -1], 0)     # zero padding
    ones = np.ones((1, 1, 3, 3))
    out, _ = conv2d_forward(np.ones((1, 1, 4, 5)), ones)
    assert out[0, 0, 0, 0] == 4 and out[0, 0, 0, 2] == 6 and out[0, 0, 1, 1] == 9
    out, _ = conv2d_forward(np.ones((1, 1, 6, 6)), ones, stride=2, pad=1)
    np.testing.assert_array_equal(out[0, 0], [[4, 6, 6], [6, 9, 9], [6, 9, 9]])


def test_default_pad_keeps_size():
    x = np.zeros((2, 3, 9, 7), np.float32)
    for k in (1, 3, 5):
        out, _ = conv2d_forward(x, np.zeros((2, 3, k, k), np.float32))
        assert out.shape == (2, 2, 9, 7)


CT_CASES = [  # (N, Cin, Cout, H, W, k, stride, pad, output_padding)
    (2, 3, 4, 4, 5, 2, 2, 0, 0),   # the Meta-Reg upsampler
    (2, 3, 2, 4, 3, 3, 2, 1, 1),   # "same"-style x2 with output_padding
    (2, 2, 3, 5, 4, 3, 2, 1, 0),   # odd output
    (3, 2, 3, 5, 6, 3, 1, 1, 0),   # stride 1
    (2, 2, 2, 3, 4, 4, 2, 1, 1),
]


@pytest.mark.parametrize("case", CT_CASES)
def test_conv_transpose2d_matches_reference_and_gradcheck(case):
    N, C, Co, H, W, k, s, p, op = case
    rng = np.random.default_rng(6)
    x, w, b = _rand(rng, N, C, H, W), _rand(rng, C, Co, k, k), _rand(rng, Co)
    out, cache = conv_transpose2d_forward(x, w, b, s, p, op)
    ref, rcache = conv_transpose2d_forward_reference(x, w, b, s, p, op)
    assert out.shape == (N, Co, (H - 1) * s - 2 * p + k + op, (W - 1) * s - 2 * p + k + op)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = _rand(rng, *out.shape)
    grads = conv_transpose2d_backward(dout, cache)
    for got, want in zip(grads, conv_transpose2d_backward_reference(dout, rcache)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dx, dw, db = grads

    def f():
        return conv_transpose2d_forward(x, w, b, s, p, op)[0]
    assert check_vjp(f, x, dx, dout, max_entries=30) < 1e-6
    assert check_vjp(f, w, dw, dout, max_entries=30) < 1e-6
    assert check_vjp(f, b, db, dout) < 1e-6


@pytest.mark.parametrize("k,s,p,op,H,W", [(3, 1, 1, 0, 7, 5), (3, 2, 1, 1, 8, 6),
                                          (3, 2, 1, 0, 7, 9), (2, 2, 0, 0, 6, 8)])
def test_conv_transpose_is_adjoint_of_conv(k, s, p, op, H, W):
    """<conv2d(x), y> == <x, conv_transpose2d(y)> with the same weights."""
    rng = np.random.default_rng(7)
    C, Co = 3, 4
    x = rng.standard_normal((2, C, H, W))
    w = rng.standard_normal((Co, C, k, k))         # conv2d layout (Cout, Cin, ...)
    y_shape = conv2d_forward(x, w, None, s, p)[0].shape
    y = rng.standard_normal(y_shape)
    lhs = np.sum(conv2d_forward(x, w, None, s, p)[0] * y)
    # the transposed conv maps Co -> C; its weight layout (Cin_ct=Co, Cout_ct=C) is w itself
    xt, _ = conv_transpose2d_forward(y, w, None, s, p, op)
    assert xt.shape == x.shape
    assert abs(lhs - np.sum(x * xt)) < 1e-9 * max(1.0, abs(lhs))


def test_workspace_reuse_gives_same_answers_across_shapes():
    rng = np.random.default_rng(8)
    ws = Workspace()
    w = rng.standard_normal((3, 2, 3, 3))
    for shape in [(2, 2, 6, 7), (2, 2, 9, 5), (2, 2, 6, 7)]:
        x = rng.standard_normal(shape)
        out, cache = conv2d_forward(x, w, None, 2, 1, work=ws)
        np.testing.assert_allclose(out, conv2d_forward_reference(x, w, None, 2, 1)[0], atol=1e-12)
        dout = rng.standard_normal(out.shape)
        dx, dw, _ = conv2d_backward(dout, cache)
        rdx, rdw, _ = conv2d_backward_reference(dout, conv2d_forward_reference(x, w, None, 2, 1)[1])
        np.testing.assert_allclose(dx, rdx, atol=1e-12)
        np.testing.assert_allclose(dw, rdw, atol=1e-12)


def test_u_net_sized_float32_layer_runs():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 34, 64, 64)).astype(np.float32)
    w = (rng.standard_normal((16, 34, 3, 3)) * 0.1).astype(np.float32)
    out, cache = conv2d_forward(x, w, np.zeros(16, np.float32))
    dx, dw, db = conv2d_backward(np.ones_like(out), cache)
    ref = conv2d_forward_reference(x[:, :, :9, :9].astype(np.float64), w.astype(np.float64))[0]
    np.testing.assert_allclose(out[:, :, :8, :8], ref[:, :, :8, :8], rtol=1e-4, atol=1e-4)
    assert np.isclose(db, 2 * 64 * 64).all()


# ---------------------------------------------------------------------------- bad inputs -----
def test_conv2d_bad_inputs():
    x = np.zeros((2, 3, 6, 6), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="4 dimensions"):
        conv2d_forward(x[0], w)
    with pytest.raises(ValueError, match="channels"):
        conv2d_forward(x, np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="one float dtype"):
        conv2d_forward(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="dtype"):
        conv2d_forward(x.astype(np.int32), w)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        conv2d_forward(bad, w)
    with pytest.raises(ValueError, match="does not fit"):
        conv2d_forward(np.zeros((1, 3, 2, 2), np.float32), w, pad=0)
    with pytest.raises(ValueError, match="stride"):
        conv2d_forward(x, w, stride=0)
    with pytest.raises(ValueError, match="pad"):
        conv2d_forward(x, w, pad=-1)
    with pytest.raises(ValueError, match="output channels"):
        conv2d_forward(x, w, np.zeros(3, np.float32))
    out, cache = conv2d_forward(x, w)
    with pytest.raises(ValueError, match="shape"):
        conv2d_backward(np.zeros((2, 4, 5, 6), np.float32), cache)
    with pytest.raises(TypeError, match="dtype"):
        conv2d_backward(out.astype(np.float64), cache)


def test_conv_transpose2d_bad_inputs():
    x = np.zeros((2, 3, 4, 4), np.float32)
    w = np.zeros((3, 5, 2, 2), np.float32)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d_forward(x, w, output_padding=2)
    with pytest.raises(ValueError, match="channels"):
        conv_transpose2d_forward(x, np.zeros((4, 5, 2, 2), np.float32))
    with pytest.raises(ValueError, match="output channels"):
        conv_transpose2d_forward(x, w, np.zeros(3, np.float32))
    out, cache = conv_transpose2d_forward(x, w)
    assert out.shape == (2, 5, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        conv_transpose2d_backward(np.zeros((2, 5, 7, 8), np.float32), cache)


def test_numpy_fallback_without_cblas_and_noncontiguous_views(monkeypatch):
    """Same numbers when OpenBLAS cannot be loaded (np.matmul path) and for strided inputs."""
    from regnp.ops._fast import blas as _blas
    monkeypatch.setattr(_blas, "_LIB", None)
    rng = np.random.default_rng(10)
    xx = rng.standard_normal((2, 5, 7, 6))
    x = xx[:, 1:4]                                       # a non-contiguous channel slice
    w, b = rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(2)
    for s in (1, 2):
        out, cache = conv2d_forward(x, w, b, s)
        ref, rc = conv2d_forward_reference(x, w, b, s, 1)
        np.testing.assert_allclose(out, ref, atol=1e-12)
        dout = rng.standard_normal(out.shape)[:, :, :, :]
        for got, want in zip(conv2d_backward(dout, cache), conv2d_backward_reference(dout, rc)):
            np.testing.assert_allclose(got, want, atol=1e-12)
    wt = rng.standard_normal((3, 2, 2, 2))
    out, cache = conv_transpose2d_forward(x, wt, None)
    np.testing.assert_allclose(out, conv_transpose2d_forward_reference(x, wt)[0], atol=1e-12)
