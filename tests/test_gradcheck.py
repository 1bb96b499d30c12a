"""The gradient checkers themselves: they pass a right gradient, fail a wrong one, restore x."""
import numpy as np
import pytest

from regnp.gradcheck import border_indices, check_vjp, check_vjp_directions


def _op(A):
    """y = sin(x) @ A for x (5, 7): a smooth op with a known backward."""
    def f(x):
        return np.sin(x) @ A

    def grad(x, dout):
        return np.cos(x) * (dout @ A.T)
    return f, grad


def test_directions_pass_a_right_gradient_and_catch_one_wrong_interior_entry():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 3))
    f, grad = _op(A)
    x = rng.standard_normal((5, 7))
    x0 = x.copy()
    dout = rng.standard_normal((5, 3))
    g = grad(x, dout)
    assert check_vjp_directions(lambda: f(x), x, g, dout, n=2, h=1e-5) < 1e-8
    np.testing.assert_array_equal(x, x0)                     # restored exactly
    wrong = g.copy()
    wrong[2, 3] += 0.5 * abs(g).max()                          # one interior entry off
    # the corners alone never look at (2, 3) and pass the wrong gradient ...
    corners = border_indices(x.shape, 4)
    assert 2 * 7 + 3 not in corners
    assert check_vjp(lambda: f(x), x, wrong, dout, h=1e-5, idx=corners) < 1e-8
    # ... every random direction moves (2, 3) too, so the directional check fails it
    assert check_vjp_directions(lambda: f(x), x, wrong, dout, n=2, h=1e-5) > 1e-3
    np.testing.assert_array_equal(x, x0)


def test_directions_refuse_float32():
    x = np.zeros((3, 3), np.float32)
    with pytest.raises(TypeError, match="float64"):
        check_vjp_directions(lambda: x * 2, x, x, np.ones((3, 3)))
