"""Layer classes: gradients accumulate, init statistics, state, agreement with the ops."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.nn.layers import Conv2d, ConvTranspose2d, UpsampleNearest2x
from regnp.ops.activation import leaky_relu_backward, leaky_relu_forward
from regnp.ops.conv import conv2d_backward, conv2d_forward, conv2d_forward_reference


def test_conv2d_layer_matches_reference_and_accumulates_grads():
    rng = np.random.default_rng(0)
    layer = Conv2d(3, 4, k=3, stride=2, rng=rng, dtype=np.float64)
    layer.params["b"][:] = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 7, 6))
    out = layer.forward(x)
    np.testing.assert_allclose(out, conv2d_forward_reference(x, layer.params["w"],
                                                             layer.params["b"], 2, 1)[0], atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dx = layer.backward(dout)
    g1 = layer.grads["w"].copy()
    layer.forward(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.grads["w"], 2 * g1)         # accumulated, not overwritten
    layer.zero_grad()
    assert not layer.grads["w"].any() and not layer.grads["b"].any()

    def f():
        return layer.forward(x)
    assert check_vjp(f, x, dx, dout, max_entries=30) < 1e-6


@pytest.mark.parametrize("act", [None, 0.2])
def test_conv2d_layer_param_gradcheck(act):
    rng = np.random.default_rng(1)
    layer = Conv2d(2, 3, act=act, rng=rng, dtype=np.float64)
    layer.params["b"][:] = rng.standard_normal(3)
    x = rng.standard_normal((2, 2, 5, 4))
    dout = rng.standard_normal((2, 3, 5, 4))
    layer.forward(x)
    layer.backward(dout)
    for name in ("w", "b"):
        p = layer.params[name]
        assert check_vjp(lambda: layer.forward(x), p, layer.grads[name], dout,
                         max_entries=30) < 1e-6


def test_conv_transpose_layer():
    rng = np.random.default_rng(2)
    up = ConvTranspose2d(4, 3, rng=rng, dtype=np.float64)
    assert up.params["w"].shape == (4, 3, 2, 2)
    x = rng.standard_normal((2, 4, 3, 5))
    out = up.forward(x)
    assert out.shape == (2, 3, 6, 10)
    dout = rng.standard_normal(out.shape)
    dx = up.backward(dout)
    assert check_vjp(lambda: up.forward(x), x, dx, dout, max_entries=30) < 1e-6
    assert check_vjp(lambda: up.forward(x), up.params["w"], up.grads["w"], dout) < 1e-6


def test_he_init_statistics_and_seed():
    a = Conv2d(32, 64, rng=np.random.default_rng(5))
    b = Conv2d(32, 64, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert a.params["w"].dtype == np.float32 and not a.params["b"].any()
    want = np.sqrt(2 / (1 + 0.2 ** 2) / (32 * 9))
    assert abs(a.params["w"].std() / want - 1) < 0.03
    c = Conv2d(2, 3, bias=False)
    assert set(c.params) == {"w"}
    np.testing.assert_array_equal(c.params["w"], Conv2d(2, 3, bias=False).params["w"])  # default rng(0)


@pytest.mark.parametrize("dtype,stride", [(np.float64, 1), (np.float32, 1), (np.float32, 2)])
def test_fused_activation_equals_conv_then_leaky_relu(dtype, stride):
    """Conv2d(act=0.2) (the U-Net's ConvBlock) = leaky_relu(conv2d(x)), forward and backward;
    float32 3x3 layers run the direct kernels, float64 the GEMM path."""
    rng = np.random.default_rng(4)
    layer = Conv2d(3, 5, stride=stride, act=0.2, rng=rng, dtype=dtype)
    layer.params["b"][:] = rng.standard_normal(5)
    x = rng.standard_normal((2, 3, 8, 10)).astype(dtype)
    z, zc = conv2d_forward(x, layer.params["w"], layer.params["b"], stride, 1)
    y, yc = leaky_relu_forward(z, 0.2)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(layer.forward(x), y, rtol=tol, atol=tol)
    dout = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = conv2d_backward(leaky_relu_backward(dout, yc), zc)
    np.testing.assert_allclose(layer.backward(dout), dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["w"], dw, rtol=tol, atol=10 * tol)
    np.testing.assert_allclose(layer.grads["b"], db, rtol=tol, atol=10 * tol)


def test_upsample_layer_and_state_dict():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 4, 6))
    layer = UpsampleNearest2x()
    out = layer.forward(x)
    assert out.shape == (2, 2, 8, 12)
    assert layer.backward(np.ones(out.shape)).shape == x.shape
    assert layer.num_parameters() == 0
    conv = Conv2d(2, 4)
    state = conv.state_dict()
    conv2 = Conv2d(2, 4, rng=np.random.default_rng(9))
    conv2.load_state_dict(state)
    np.testing.assert_array_equal(conv2.params["w"], conv.params["w"])


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="before forward"):
        Conv2d(2, 2).backward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(RuntimeError, match="before forward"):
        UpsampleNearest2x().backward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        Conv2d(0, 2)
