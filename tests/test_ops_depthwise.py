"""Tests for regnp.ops.depthwise: per-channel k×k cross-correlation and its gradients."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.ops.depthwise import (depthwise_conv2d_backward, depthwise_conv2d_backward_reference,
                                 depthwise_conv2d_forward, depthwise_conv2d_forward_reference)

CASES = [  # (x shape, number of filters, k, pad)
    ((2, 3, 7, 9), 3, 5, None),
    ((2, 3, 7, 9), 1, 5, None),       # shared filter
    ((2, 2, 6, 5), 2, 3, 0),          # valid correlation
    ((3, 1, 5, 8), 1, 4, 3),          # even k, pad = k - 1 ("full")
    ((2, 2, 15, 14), 2, 13, 6),       # the meta-regularization size, bigger than the image half
]


@pytest.mark.parametrize("shape,cw,k,pad", CASES)
def test_matches_reference_float64(shape, cw, k, pad):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((cw, k, k))
    out, cache = depthwise_conv2d_forward(x, w, pad)
    ref = depthwise_conv2d_forward_reference(x, w, pad)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    d = rng.standard_normal(out.shape)
    dx, dw = depthwise_conv2d_backward(d, cache)
    rdx, rdw = depthwise_conv2d_backward_reference(d, x, w, pad)
    assert dw.shape == w.shape
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, rdw, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape,cw,k,pad", CASES[:4])
def test_gradcheck_x_and_w(shape, cw, k, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((cw, k, k))
    out, cache = depthwise_conv2d_forward(x, w, pad)
    d = rng.standard_normal(out.shape)
    dx, dw = depthwise_conv2d_backward(d, cache)
    f = lambda: depthwise_conv2d_forward(x, w, pad)[0]
    # the op is linear in each argument, so central differences have no truncation error and a
    # large step keeps round-off small even for tiny entries (corner pixels of a valid conv)
    assert check_vjp(f, x, dx, d, h=1e-3) < 1e-8
    assert check_vjp(f, w, dw, d, h=1e-3) < 1e-8


@pytest.mark.parametrize("cw,pad", [(1, 6), (2, 6), (2, 3)])
def test_gradcheck_13x13_path(cw, pad):
    """The 13×13 kernels (the meta-regularization layer's own path, with its padded planes and
    blocked dw sums) checked by central differences, not only against the loop reference:
    float64, k = 13, batch 2, a non-square image, every entry of x and w. pad = 6 reuses dx's
    padded dout plane for dw; pad = 3 takes the separate-plane branch."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 17, 22))
    w = rng.standard_normal((cw, 13, 13))
    out, cache = depthwise_conv2d_forward(x, w, pad)
    d = rng.standard_normal(out.shape)
    dx, dw = depthwise_conv2d_backward(d, cache)
    f = lambda: depthwise_conv2d_forward(x, w, pad)[0]
    assert check_vjp(f, x, dx, d, h=1e-3) < 1e-8            # linear in x and in w (see above)
    assert check_vjp(f, w, dw, d, h=1e-3) < 1e-8


def test_float32_matches_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 20, 17)).astype(np.float32)
    w = rng.standard_normal((2, 13, 13)).astype(np.float32)
    out, cache = depthwise_conv2d_forward(x, w)
    assert out.dtype == np.float32
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    np.testing.assert_allclose(out, depthwise_conv2d_forward_reference(x64, w64), rtol=1e-4,
                               atol=1e-4)
    d = rng.standard_normal(out.shape).astype(np.float32)
    dx, dw = depthwise_conv2d_backward(d, cache)
    assert dx.dtype == np.float32 and dw.dtype == np.float32
    rdx, rdw = depthwise_conv2d_backward_reference(d.astype(np.float64), x64, w64)
    np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, rdw, rtol=1e-4, atol=1e-3)


def test_delta_filter_is_identity_and_shift_direction():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 7))
    w = np.zeros((2, 5, 5)); w[:, 2, 2] = 1.0
    out, _ = depthwise_conv2d_forward(x, w)
    np.testing.assert_array_equal(out, x)
    # cross-correlation: a tap at (2, 3) reads x[i, j + 1]
    w = np.zeros((1, 5, 5)); w[0, 2, 3] = 1.0
    out, _ = depthwise_conv2d_forward(x, w)
    np.testing.assert_array_equal(out[..., :-1], x[..., 1:])
    np.testing.assert_array_equal(out[..., -1], 0.0)


def test_box_filter_counts_neighbours_and_channels_are_independent():
    x = np.zeros((1, 2, 5, 5)); x[0, 0] = 1.0                  # channel 1 all zero
    w = np.ones((2, 3, 3))
    out, _ = depthwise_conv2d_forward(x, w)
    assert out[0, 0, 2, 2] == 9 and out[0, 0, 0, 0] == 4 and out[0, 0, 0, 2] == 6
    np.testing.assert_array_equal(out[0, 1], 0.0)


def test_shared_filter_gradient_sums_channels():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6))
    w1 = rng.standard_normal((1, 3, 3))
    out, cache = depthwise_conv2d_forward(x, w1)
    out3, cache3 = depthwise_conv2d_forward(x, np.repeat(w1, 3, axis=0))
    np.testing.assert_allclose(out, out3, rtol=1e-13)
    d = rng.standard_normal(out.shape)
    _, dw1 = depthwise_conv2d_backward(d, cache)
    _, dw3 = depthwise_conv2d_backward(d, cache3)
    np.testing.assert_allclose(dw1[0], dw3.sum(axis=0), rtol=1e-12)


def test_symmetric_filter_correlation_equals_convolution():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 1, 9, 9))
    g = np.exp(-0.5 * (np.arange(7) - 3.0) ** 2 / 2.0)
    w = np.outer(g, g)[None]
    out, _ = depthwise_conv2d_forward(x, w)
    out_flip, _ = depthwise_conv2d_forward(x, w[:, ::-1, ::-1].copy())
    np.testing.assert_allclose(out, out_flip, rtol=1e-13)


def test_bad_inputs():
    x = np.zeros((2, 3, 8, 8)); w = np.zeros((3, 5, 5))
    with pytest.raises(ValueError, match="3 filters but x has 2 channels"):
        depthwise_conv2d_forward(np.zeros((2, 2, 8, 8)), w)
    with pytest.raises(ValueError, match="square"):
        depthwise_conv2d_forward(x, np.zeros((3, 5, 4)))
    with pytest.raises(ValueError, match="3 dimensions"):
        depthwise_conv2d_forward(x, np.zeros((5, 5)))
    with pytest.raises(ValueError, match="4 dimensions"):
        depthwise_conv2d_forward(x[0], w)
    with pytest.raises(TypeError, match="other inputs"):
        depthwise_conv2d_forward(x, w.astype(np.float32))
    with pytest.raises(ValueError, match="pad must be"):
        depthwise_conv2d_forward(x, w, pad=5)
    with pytest.raises(ValueError, match="pad must be"):
        depthwise_conv2d_forward(x, w, pad=-1)
    with pytest.raises(ValueError, match="too small"):
        depthwise_conv2d_forward(np.zeros((1, 3, 3, 3)), w, pad=0)
    bad = x.copy(); bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        depthwise_conv2d_forward(bad, w)
    out, cache = depthwise_conv2d_forward(x, w)
    with pytest.raises(ValueError, match="expected"):
        depthwise_conv2d_backward(np.zeros((2, 3, 8, 7)), cache)
    with pytest.raises(TypeError, match="other inputs"):
        depthwise_conv2d_backward(out.astype(np.float32), cache)
