"""LeakyReLU and concat: references, gradient checks, hand answers, bad inputs."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.ops.activation import (concat_backward, concat_forward, leaky_relu_backward,
                                  leaky_relu_backward_reference, leaky_relu_forward,
                                  leaky_relu_forward_reference)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_leaky_relu_matches_reference(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 7)).astype(dtype)
    out, cache = leaky_relu_forward(x, 0.1)
    ref, rc = leaky_relu_forward_reference(x, 0.1)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    dout = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_allclose(leaky_relu_backward(dout, cache),
                               leaky_relu_backward_reference(dout, rc), rtol=1e-6)


def test_leaky_relu_hand_and_gradcheck():
    out, cache = leaky_relu_forward(np.array([[-2.0, 0.0, 3.0]]), 0.2)
    np.testing.assert_allclose(out, [[-0.4, 0.0, 3.0]])
    np.testing.assert_allclose(leaky_relu_backward(np.ones((1, 3)), cache), [[0.2, 0.2, 1.0]])
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 3, 5))
    x[np.abs(x) < 1e-3] = 0.5                            # stay away from the kink
    dout = rng.standard_normal(x.shape)
    dx = leaky_relu_backward(dout, leaky_relu_forward(x)[1])
    assert check_vjp(lambda: leaky_relu_forward(x)[0], x, dx, dout) < 1e-6


def test_concat_forward_backward():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 1, 4, 5))
    out, cache = concat_forward([a, b])
    assert out.shape == (2, 4, 4, 5)
    np.testing.assert_array_equal(out[:, :3], a)
    np.testing.assert_array_equal(out[:, 3:], b)
    dout = rng.standard_normal(out.shape)
    da, db = concat_backward(dout, cache)
    np.testing.assert_array_equal(da, dout[:, :3])
    np.testing.assert_array_equal(db, dout[:, 3:])
    assert da.flags.c_contiguous and db.flags.c_contiguous
    for x, dx in ((a, da), (b, db)):
        assert check_vjp(lambda: concat_forward([a, b])[0], x, dx, dout) < 1e-6


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        leaky_relu_forward(np.zeros(3), slope=-1)
    with pytest.raises(TypeError, match="dtype"):
        leaky_relu_forward(np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="NaN"):
        leaky_relu_forward(np.array([np.nan]))
    _, cache = leaky_relu_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="shape"):
        leaky_relu_backward(np.zeros((3, 2)), cache)
    with pytest.raises(ValueError, match="same N, H, W"):
        concat_forward([np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 5))])
    with pytest.raises(TypeError, match="one float dtype"):
        concat_forward([np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 4), np.float32)])
    with pytest.raises(TypeError, match="list"):
        concat_forward([])
    _, cache = concat_forward([np.zeros((1, 2, 3, 3)), np.zeros((1, 1, 3, 3))])
    with pytest.raises(ValueError, match="channels"):
        concat_backward(np.zeros((1, 4, 3, 3)), cache)
