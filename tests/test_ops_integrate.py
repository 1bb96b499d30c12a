"""Scaling and squaring: reference agreement, float64 gradient checks, behaviour by hand."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.metrics import jacobian_determinant
from regnp.ops.integrate import (integrate_velocity_backward,
                                 integrate_velocity_backward_reference,
                                 integrate_velocity_forward, integrate_velocity_reference)


def smooth_field(shape, amp, seed=0, width=4.0, dtype=np.float64):
    """A smooth random field: white noise blurred by a Gaussian, scaled to max |v| = amp."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape)
    v = gaussian_filter(v, sigma=(0, 0, width, width), mode="wrap")
    return (amp * v / np.abs(v).max()).astype(dtype)


@pytest.mark.parametrize("steps", [1, 3])
def test_fast_path_equals_reference(steps):
    v = smooth_field((2, 2, 9, 13), 2.5, width=2.0)
    u, _ = integrate_velocity_forward(v, steps)
    np.testing.assert_allclose(u, integrate_velocity_reference(v, steps), rtol=1e-12, atol=1e-12)
    du = np.random.default_rng(1).standard_normal(u.shape)
    _, cache = integrate_velocity_forward(v, steps)
    np.testing.assert_allclose(integrate_velocity_backward(du, cache),
                               integrate_velocity_backward_reference(du, v, steps),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps,downsize,shape", [(1, 1, (2, 2, 7, 10)), (4, 1, (2, 2, 9, 6)),
                                                  (3, 2, (2, 2, 8, 12))])
def test_gradient_check_float64(steps, downsize, shape):
    """Central differences on odd and non-square shapes, batch 2. Displacements are non-integer
    (random, smooth) so no sampling point sits on a bilinear kink."""
    v = smooth_field(shape, 1.7, seed=steps, width=1.5) + 0.013
    dout = np.random.default_rng(7).standard_normal(shape)
    _, cache = integrate_velocity_forward(v, steps, downsize)
    dv = integrate_velocity_backward(dout, cache)
    err = check_vjp(lambda: integrate_velocity_forward(v, steps, downsize)[0], v, dv, dout,
                    h=1e-6)
    assert err < 1e-6, err


def test_zero_field_is_the_identity():
    v = np.zeros((2, 2, 16, 20), np.float32)
    u, _ = integrate_velocity_forward(v, 7)
    assert not u.any()
    u, _ = integrate_velocity_forward(v, 7, downsize=2)
    assert not u.any()


def test_constant_field_gives_the_same_translation():
    """exp of a constant velocity is the translation by it (inside the image; near the border the
    composition samples the zero padding)."""
    v = np.zeros((1, 2, 40, 48))
    v[:, 0], v[:, 1] = 2.5, -1.75
    u, _ = integrate_velocity_forward(v, 6)
    inner = u[:, :, 8:-8, 8:-8]
    np.testing.assert_allclose(inner[:, 0], 2.5, atol=1e-9)
    np.testing.assert_allclose(inner[:, 1], -1.75, atol=1e-9)


def test_integrated_field_does_not_fold_where_the_displacement_does():
    """A smooth random field large enough to fold when used as a displacement has a Jacobian
    determinant > 0 everywhere once integrated as a velocity (7 squarings, as VoxelMorph)."""
    v = smooth_field((1, 2, 64, 64), 9.0, seed=3, width=5.0)
    det_disp = jacobian_determinant(v[0])
    assert (det_disp <= 0).mean() > 0.01                         # the displacement folds
    u, _ = integrate_velocity_forward(v, 7)
    det = jacobian_determinant(u[0])
    assert det[4:-4, 4:-4].min() > 0, det.min()                 # interior: no fold at all
    assert (det > 0).mean() > 0.999


def test_half_resolution_is_close_to_full_resolution_for_a_smooth_field():
    v = smooth_field((1, 2, 64, 64), 6.0, seed=5, width=6.0)
    full, _ = integrate_velocity_forward(v, 7)
    half, _ = integrate_velocity_forward(v, 7, downsize=2)
    err = np.abs(full - half)[:, :, 6:-6, 6:-6]
    assert err.max() < 0.15 * np.abs(full).max(), (err.max(), np.abs(full).max())


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        integrate_velocity_forward(np.zeros((1, 3, 8, 8)), 3)
    with pytest.raises(ValueError, match="steps"):
        integrate_velocity_forward(np.zeros((1, 2, 8, 8)), 0)
    with pytest.raises(ValueError, match="even"):
        integrate_velocity_forward(np.zeros((1, 2, 9, 8)), 3, downsize=2)
    with pytest.raises(ValueError, match="NaN"):
        integrate_velocity_forward(np.full((1, 2, 8, 8), np.nan), 3)
