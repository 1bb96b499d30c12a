"""Tests for regnp.ops.warp: bilinear pull-back warp, its gradients, nearest-neighbour labels."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp, full_jacobian, rel_error
from regnp.ops.warp import (warp_backward, warp_backward_reference, warp_forward,
                            warp_forward_reference, warp_nearest)


def non_integer_field(rng, N, H, W, lo=-2.5, hi=2.5, dtype=np.float64):
    """Random displacement whose sampling points stay >= 0.05 px away from integers (kinks)."""
    u = rng.uniform(lo, hi, (N, 2, H, W))
    frac = u - np.floor(u)
    u = np.where(frac < 0.05, u + 0.1, u)
    u = np.where(frac > 0.95, u - 0.1, u)
    return u.astype(dtype)


@pytest.mark.parametrize("shape", [(2, 1, 5, 7), (3, 2, 6, 4)])
def test_fast_matches_reference_float64(shape):
    rng = np.random.default_rng(1)
    N, C, H, W = shape
    m = rng.standard_normal(shape)
    u = rng.uniform(-4, 4, (N, 2, H, W))                      # many points outside the image
    w, cache = warp_forward(m, u)
    np.testing.assert_allclose(w, warp_forward_reference(m, u), rtol=1e-12, atol=1e-12)
    d = rng.standard_normal(shape)
    dm, du = warp_backward(d, cache)
    rdm, rdu = warp_backward_reference(d, m, u)
    np.testing.assert_allclose(dm, rdm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(du, rdu, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 7])
def test_backward_task_plans_agree(n_tasks):
    """Whole-image tasks (shared buffer) and row blocks (private buffers) give the same sums."""
    rng = np.random.default_rng(2)
    for N in (1, 2, 3):
        m = rng.standard_normal((N, 2, 9, 5))
        u = rng.uniform(-6, 6, (N, 2, 9, 5))                  # long jumps: scatters cross blocks
        d = rng.standard_normal(m.shape)
        _, cache = warp_forward(m, u)
        dm, du = warp_backward(d, cache, _n_tasks=n_tasks)
        rdm, rdu = warp_backward_reference(d, m, u)
        np.testing.assert_allclose(dm, rdm, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(du, rdu, rtol=1e-12, atol=1e-12)


def test_float32_matches_reference():
    rng = np.random.default_rng(3)
    m = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    u = rng.uniform(-3, 3, (2, 2, 11, 13)).astype(np.float32)
    w, cache = warp_forward(m, u)
    assert w.dtype == np.float32
    ref = warp_forward_reference(m.astype(np.float64), u.astype(np.float64))
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-5)
    d = rng.standard_normal(m.shape).astype(np.float32)
    dm, du = warp_backward(d, cache)
    assert dm.dtype == np.float32 and du.dtype == np.float32
    rdm, rdu = warp_backward_reference(d.astype(np.float64), m.astype(np.float64),
                                       u.astype(np.float64))
    np.testing.assert_allclose(dm, rdm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(du, rdu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 1, 5, 6), (2, 2, 4, 7)])
def test_gradcheck_moving_and_u(shape):
    rng = np.random.default_rng(4)
    N, C, H, W = shape
    m = rng.standard_normal(shape)
    u = non_integer_field(rng, N, H, W)                        # includes points outside / on border
    d = rng.standard_normal(shape)
    _, cache = warp_forward(m, u)
    dm, du = warp_backward(d, cache)
    f = lambda: warp_forward(m, u)[0]
    assert check_vjp(f, m, dm, d, h=1e-3) < 1e-8            # linear in moving
    assert check_vjp(f, u, du, d) < 1e-6


def test_full_jacobian_tiny():
    rng = np.random.default_rng(5)
    m = rng.standard_normal((1, 1, 3, 4))
    u = non_integer_field(rng, 1, 3, 4, -1.5, 1.5)
    J = full_jacobian(lambda: warp_forward(m, u)[0], m)        # (12, 12), linear in m
    # rows of J^T dout must equal the backward's dmoving for each unit dout
    for k in range(12):
        d = np.zeros(12); d[k] = 1.0
        dm, _ = warp_backward(d.reshape(m.shape), warp_forward(m, u)[1])
        np.testing.assert_allclose(dm.ravel(), J[k], atol=1e-8)


def test_zero_displacement_is_identity():
    rng = np.random.default_rng(6)
    m = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    w, cache = warp_forward(m, np.zeros((2, 2, 5, 8), np.float32))
    np.testing.assert_array_equal(w, m)
    dm, _ = warp_backward(np.ones_like(m), cache)
    np.testing.assert_array_equal(dm, 1.0)


def test_integer_shift_direction_and_zero_fill():
    H, W = 4, 7
    m = np.arange(H * W, dtype=np.float64).reshape(1, 1, H, W) + 1.0
    u = np.zeros((1, 2, H, W)); u[:, 1] = 3.0                 # u_x = +3
    w, _ = warp_forward(m, u)
    np.testing.assert_array_equal(w[0, 0, :, :W - 3], m[0, 0, :, 3:])   # warped[:, j] = m[:, j+3]
    np.testing.assert_array_equal(w[0, 0, :, W - 3:], 0.0)              # pulled from outside
    u = np.zeros((1, 2, H, W)); u[:, 0] = -1.0                # u_y = -1: warped[i] = m[i-1]
    w, _ = warp_forward(m, u)
    np.testing.assert_array_equal(w[0, 0, 1:], m[0, 0, :-1])
    np.testing.assert_array_equal(w[0, 0, 0], 0.0)


def test_subpixel_shift_and_border_half_weight():
    m = np.array([[[[2.0, 4.0, 8.0]]]])                      # (1, 1, 1, 3)
    u = np.zeros((1, 2, 1, 3)); u[:, 1] = 0.25
    w, _ = warp_forward(m, u)
    # x = 0.25 -> 0.75*2 + 0.25*4; x = 1.25 -> 0.75*4 + 0.25*8; x = 2.25 -> 0.75*8 + 0.25*0
    np.testing.assert_allclose(w[0, 0, 0], [2.5, 5.0, 6.0])
    u[:, 1] = -0.5                                            # half a pixel left of column 0
    w, _ = warp_forward(m, u)
    np.testing.assert_allclose(w[0, 0, 0], [1.0, 3.0, 6.0])
    u[:, 1] = -1.0                                            # a full pixel outside -> 0
    w, _ = warp_forward(m, u)
    assert w[0, 0, 0, 0] == 0.0


def test_constant_image_stays_constant_inside_domain():
    rng = np.random.default_rng(7)
    H, W = 12, 10
    m = np.full((2, 1, H, W), 3.5)
    ii, jj = np.mgrid[0:H, 0:W]
    u = rng.uniform(-2, 2, (2, 2, H, W))
    # keep every sampling point inside [0, H-1] x [0, W-1]
    u[:, 0] = np.clip(ii + u[:, 0], 0, H - 1) - ii
    u[:, 1] = np.clip(jj + u[:, 1], 0, W - 1) - jj
    w, cache = warp_forward(m, u)
    np.testing.assert_allclose(w, 3.5, rtol=1e-13)
    # and the image gradient of a constant is zero, so du = 0 except where the sample sits on
    # the last row/column (its lower/right neighbour is outside and counts as zero)
    _, du = warp_backward(np.ones_like(m), cache)
    inner = ((ii + u[:, 0]) < H - 1) & ((jj + u[:, 1]) < W - 1)
    assert np.all(np.abs(du[:, 0][inner]) < 1e-12) and np.all(np.abs(du[:, 1][inner]) < 1e-12)


def test_kink_at_integer_displacement():
    """warped is piecewise linear in u_x: slope = right difference of the image at the kink."""
    m = np.array([[[[0.0, 1.0, 5.0, 6.0]]]])
    u = np.zeros((1, 2, 1, 4))
    vals = []
    for ux in (0.9, 1.0, 1.1):
        u[0, 1, 0, 0] = ux
        vals.append(warp_forward(m, u)[0][0, 0, 0, 0])
    np.testing.assert_allclose(vals, [0.9, 1.0, 1.4])        # slopes 1 left, 4 right of x = 1
    u[0, 1, 0, 0] = 1.0
    _, cache = warp_forward(m, u)
    d = np.zeros_like(m); d[0, 0, 0, 0] = 1.0
    _, du = warp_backward(d, cache)
    assert du[0, 1, 0, 0] == pytest.approx(4.0)               # right-hand derivative


def test_nearest_matches_bilinear_on_integer_shifts():
    rng = np.random.default_rng(8)
    lab = rng.integers(0, 5, (2, 1, 6, 9)).astype(np.int32)
    u = rng.integers(-3, 4, (2, 2, 6, 9)).astype(np.float64)
    wn = warp_nearest(lab, u)
    assert wn.dtype == np.int32 and wn.shape == lab.shape
    wb, _ = warp_forward(lab.astype(np.float64), u)
    np.testing.assert_array_equal(wn, wb.astype(np.int32))


def test_nearest_rounding_rule_and_outside():
    lab = np.array([[[[1, 2, 3]]]], np.uint8)
    u = np.zeros((1, 2, 1, 3), np.float32)
    u[0, 1] = [0.49, 0.5, -0.5]                              # x = 0.49 -> 0; 1.5 -> 2; 1.5 -> 2
    np.testing.assert_array_equal(warp_nearest(lab, u)[0, 0, 0], [1, 3, 3])
    u[0, 1] = [-0.51, 1.6, 0.5]                              # -0.51 -> -1 outside; 2.6 -> 3 outside
    np.testing.assert_array_equal(warp_nearest(lab, u)[0, 0, 0], [0, 0, 0])
    u[0, 1] = [-0.5, 0.0, 0.0]                               # -0.5 -> floor(0.0) = 0 inside
    np.testing.assert_array_equal(warp_nearest(lab, u)[0, 0, 0], [1, 2, 3])


def test_bad_inputs():
    m = np.zeros((2, 1, 4, 5)); u = np.zeros((2, 2, 4, 5))
    with pytest.raises(ValueError, match="4 dimensions"):
        warp_forward(m[0], u)
    with pytest.raises(ValueError, match="expected 2"):
        warp_forward(m, np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="must match"):
        warp_forward(m, np.zeros((2, 2, 4, 6)))
    with pytest.raises(ValueError, match="must match"):
        warp_forward(m, np.zeros((1, 2, 4, 5)))
    with pytest.raises(TypeError, match="other inputs"):
        warp_forward(m, u.astype(np.float32))
    with pytest.raises(TypeError, match="dtype"):
        warp_forward(m.astype(np.int64), u)
    bad = u.copy(); bad[1, 0, 2, 3] = np.nan
    with pytest.raises(ValueError, match="u contains 1 NaN"):
        warp_forward(m, bad)
    badm = m.copy(); badm[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="moving contains 1 NaN/Inf"):
        warp_forward(badm, u)
    _, cache = warp_forward(m, u)
    with pytest.raises(ValueError, match="expected"):
        warp_backward(np.zeros((2, 1, 4, 4)), cache)
    d = np.zeros_like(m); d[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="dwarped contains 1 NaN"):
        warp_backward(d, cache)
    with pytest.raises(ValueError, match="4 dimensions"):
        warp_nearest(np.zeros((4, 5), int), u)
    with pytest.raises(ValueError, match="must match"):
        warp_nearest(np.zeros((2, 1, 3, 5), int), u)
    with pytest.raises(TypeError, match="dtype"):
        warp_nearest(np.zeros((2, 1, 4, 5), object), u)


def test_huge_displacement_gives_zero_not_crash():
    m = np.ones((1, 1, 3, 3)); u = np.full((1, 2, 3, 3), 1e30)
    w, cache = warp_forward(m, u)
    np.testing.assert_array_equal(w, 0.0)
    dm, du = warp_backward(np.ones_like(m), cache)
    np.testing.assert_array_equal(dm, 0.0)
    np.testing.assert_array_equal(du, 0.0)
    assert rel_error(w, np.zeros_like(w)) == 0.0
