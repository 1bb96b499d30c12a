"""Cubic B-spline upsampling (DIRNet's fixed decoder): reference agreement, exact adjoint,
polynomial reproduction with both border rules, hand-computable values, gradient checks, errors."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp, full_jacobian
from regnp.ops.bspline import (bspline_kernel, bspline_matrix, bspline_upsample_backward,
                               bspline_upsample_backward_reference, bspline_upsample_forward,
                               bspline_upsample_forward_reference)

BORDERS = ["linear", "clamp"]


def test_kernel_values_and_partition_of_unity():
    assert bspline_kernel(0.0) == pytest.approx(2 / 3)
    assert bspline_kernel(1.0) == pytest.approx(1 / 6)
    assert bspline_kernel(-1.0) == pytest.approx(1 / 6)
    assert bspline_kernel(0.5) == pytest.approx(23 / 48)
    assert bspline_kernel(1.5) == pytest.approx(1 / 48)
    assert bspline_kernel(2.0) == 0 and bspline_kernel(-2.5) == 0
    t = np.linspace(-0.5, 0.5, 11)
    total = sum(bspline_kernel(t - k) for k in range(-3, 4))
    np.testing.assert_allclose(total, 1.0, atol=1e-15)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("shape,factor", [((2, 2, 3, 5), 4), ((2, 1, 4, 2), 3), ((1, 2, 2, 3), 1)])
def test_fast_matches_reference(border, shape, factor):
    rng = np.random.default_rng(0)
    c = rng.standard_normal(shape)
    u, cache = bspline_upsample_forward(c, factor, border)
    ur, rcache = bspline_upsample_forward_reference(c, factor, border)
    assert u.shape == (shape[0], shape[1], shape[2] * factor, shape[3] * factor)
    np.testing.assert_allclose(u, ur, atol=1e-13)
    du = rng.standard_normal(u.shape)
    np.testing.assert_allclose(bspline_upsample_backward(du, cache),
                               bspline_upsample_backward_reference(du, rcache), atol=1e-12)
    # float32: same numbers to single precision, dtype kept
    u32, c32 = bspline_upsample_forward(c.astype(np.float32), factor, border)
    assert u32.dtype == np.float32
    np.testing.assert_allclose(u32, ur, atol=1e-5)
    dc32 = bspline_upsample_backward(du.astype(np.float32), c32)
    assert dc32.dtype == np.float32
    np.testing.assert_allclose(dc32, bspline_upsample_backward(du, cache), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("border", BORDERS)
def test_adjoint_identity(border):
    rng = np.random.default_rng(1)
    c = rng.standard_normal((2, 2, 4, 3))
    u, cache = bspline_upsample_forward(c, 8, border)
    du = rng.standard_normal(u.shape)
    lhs = np.vdot(u, du)                                   # <B c, du>
    rhs = np.vdot(c, bspline_upsample_backward(du, cache))  # <c, Bᵀ du>
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs))


@pytest.mark.parametrize("border", BORDERS)
def test_jacobian_is_the_matrix_and_backward_its_transpose(border):
    rng = np.random.default_rng(2)
    c = rng.standard_normal((1, 1, 3, 2))
    u, cache = bspline_upsample_forward(c, 2, border)
    J = full_jacobian(lambda: bspline_upsample_forward(c, 2, border)[0], c)      # (36, 6)
    By, Bx = bspline_matrix(3, 2, border), bspline_matrix(2, 2, border)
    np.testing.assert_allclose(J, np.kron(By, Bx), atol=1e-8)
    # backward applied to every unit output gradient gives the rows of J
    JT = np.stack([bspline_upsample_backward(e.reshape(u.shape), cache).ravel()
                   for e in np.eye(u.size)])
    np.testing.assert_allclose(JT, J, atol=1e-8)


@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("factor", [3, 4])
def test_gradient_check(border, factor):
    rng = np.random.default_rng(3)
    c = rng.standard_normal((2, 2, 3, 4))
    u, cache = bspline_upsample_forward(c, factor, border)
    dout = rng.standard_normal(u.shape)
    dc = bspline_upsample_backward(dout, cache)
    err = check_vjp(lambda: bspline_upsample_forward(c, factor, border)[0], c, dc, dout)
    assert err < 1e-7


def grid_coords(n, factor):
    return (np.arange(n * factor) + 0.5) / factor - 0.5


@pytest.mark.parametrize("border", BORDERS)
def test_constant_field_is_reproduced_everywhere(border):
    c = np.empty((2, 2, 4, 5))
    c[:, 0], c[:, 1] = 1.25, -3.0
    u, _ = bspline_upsample_forward(c, 8, border)
    np.testing.assert_allclose(u[:, 0], 1.25, atol=1e-13)
    np.testing.assert_allclose(u[:, 1], -3.0, atol=1e-13)


def linear_grid(Hc, Wc):
    k, l = np.meshgrid(np.arange(Hc), np.arange(Wc), indexing="ij")
    return np.stack([0.5 + 2.0 * k - 0.7 * l, -1.0 + 0.3 * k + 1.1 * l])[None]    # (1, 2, Hc, Wc)


def test_linear_border_reproduces_linear_fields_everywhere():
    Hc, Wc, s = 5, 4, 8
    u, _ = bspline_upsample_forward(linear_grid(Hc, Wc), s, "linear")
    ty, tx = np.meshgrid(grid_coords(Hc, s), grid_coords(Wc, s), indexing="ij")
    np.testing.assert_allclose(u[0, 0], 0.5 + 2.0 * ty - 0.7 * tx, atol=1e-12)
    np.testing.assert_allclose(u[0, 1], -1.0 + 0.3 * ty + 1.1 * tx, atol=1e-12)


def test_clamp_border_reproduces_linear_fields_only_away_from_the_border():
    Hc, Wc, s = 6, 7, 4
    u, _ = bspline_upsample_forward(linear_grid(Hc, Wc), s, "clamp")
    ty, tx = np.meshgrid(grid_coords(Hc, s), grid_coords(Wc, s), indexing="ij")
    exact = 0.5 + 2.0 * ty - 0.7 * tx
    inner = (ty >= 1) & (ty <= Hc - 2) & (tx >= 1) & (tx <= Wc - 2)   # all 4×4 taps inside
    np.testing.assert_allclose(u[0, 0][inner], exact[inner], atol=1e-12)
    assert np.abs(u[0, 0] - exact)[~inner].max() > 0.1                # flattened at the border


def test_value_at_a_control_point_is_the_121_stencil():
    # with an odd factor, pixel 3k+1 sits exactly on control point k (t = k): the B-spline gives
    # (c[k-1] + 4 c[k] + c[k+1]) / 6 per axis — an approximation, not an interpolation
    rng = np.random.default_rng(4)
    c = rng.standard_normal((1, 1, 5, 5))
    u, _ = bspline_upsample_forward(c, 3, "clamp")
    st = np.array([1.0, 4.0, 1.0]) / 6
    want = st @ c[0, 0, 1:4, 1:4] @ st                      # control point (2, 2)
    assert u[0, 0, 7, 7] == pytest.approx(want, abs=1e-14)


def test_clamp_allows_a_single_control_point():
    c = np.full((1, 2, 1, 1), 0.75)
    u, _ = bspline_upsample_forward(c, 4, "clamp")
    np.testing.assert_allclose(u, 0.75)


def test_bad_inputs_are_explained():
    c = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match="4 dimensions"):
        bspline_upsample_forward(np.zeros((2, 4, 4)), 8)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        bspline_upsample_forward(c, 0)
    with pytest.raises(ValueError, match="factor must be a positive integer"):
        bspline_upsample_forward(c, 2.5)
    with pytest.raises(ValueError, match="border must be one of"):
        bspline_upsample_forward(c, 4, border="mirror")
    with pytest.raises(ValueError, match="needs at least 2"):
        bspline_upsample_forward(np.zeros((1, 2, 1, 4)), 4, "linear")
    with pytest.raises(TypeError, match="dtype"):
        bspline_upsample_forward(np.zeros((1, 2, 4, 4), np.int32), 4)
    bad = c.copy()
    bad[0, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bspline_upsample_forward(bad, 4)
    u, cache = bspline_upsample_forward(c, 4)
    with pytest.raises(ValueError, match="shape"):
        bspline_upsample_backward(np.zeros((1, 2, 16, 12)), cache)
    with pytest.raises(TypeError, match="dtype"):
        bspline_upsample_backward(u.astype(np.float32), cache)
