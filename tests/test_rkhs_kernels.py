"""Kernels of regnp.rkhs.kernels: hand-computed values, symmetry, support, errors."""
import math

import numpy as np
import pytest

from regnp.rkhs.kernels import (Gaussian, Wendland, Matern32, Exponential, InverseMultiquadric,
                                StencilKernel, FunctionKernel, make_kernel)

ALL = [Gaussian(2.5), Wendland(5.0), Matern32(3.0), Exponential(2.0), InverseMultiquadric(1.5)]


def test_hand_values():
    assert Gaussian(2.0)(0, 0) == 1.0
    assert math.isclose(Gaussian(2.0)(2.0, 0), math.exp(-0.5))
    assert math.isclose(Gaussian(2.0)(3.0, 4.0), math.exp(-25 / 8))
    # Wendland psi_{3,1}: (1 - t)^4 (4 t + 1), t = r / rho
    assert math.isclose(Wendland(4.0)(0, 2.0), 0.5 ** 4 * 3.0)
    assert Wendland(4.0)(0, 4.0) == 0.0 and Wendland(4.0)(3.0, 3.0) == 0.0
    assert math.isclose(Matern32(2.0)(0, 2.0), (1 + math.sqrt(3)) * math.exp(-math.sqrt(3)))
    assert math.isclose(Exponential(2.0)(3.0, 4.0), math.exp(-2.5))
    assert math.isclose(InverseMultiquadric(2.0)(0, 2.0), 1 / math.sqrt(2))


@pytest.mark.parametrize("k", ALL, ids=lambda k: k.name)
def test_even_in_each_axis_and_peak_at_zero(k):
    d = np.arange(-6, 7, dtype=np.float64)
    v = k(d[:, None], d[None, :])                                        # (13, 13)
    assert v.shape == (13, 13)
    np.testing.assert_array_equal(v, v[::-1])
    np.testing.assert_array_equal(v, v[:, ::-1])
    np.testing.assert_allclose(v, v.T, rtol=0, atol=1e-15)
    assert v[6, 6] == v.max() == 1.0
    np.testing.assert_array_equal(k.window(13), v)


def test_gaussian_is_separable_and_others_are_not():
    g = Gaussian(3.0)
    d = np.arange(-5, 6, dtype=np.float64)
    np.testing.assert_allclose(g(d[:, None], d[None, :]), np.outer(g.factor(d), g.factor(d)),
                               rtol=1e-15)
    assert g.separable and not any(k.separable for k in ALL[1:])
    with pytest.raises(ValueError, match="not separable.*method='fft'"):
        Matern32(2.0).factor(d)


def test_wendland_support():
    k = Wendland(7.0)
    assert k.support_radius == 7.0 and Gaussian(1.0).support_radius == math.inf
    S = k.stencil(20, 20)
    dy, dx = np.meshgrid(np.arange(-19, 20), np.arange(-19, 20), indexing="ij")
    assert np.all(S[np.hypot(dy, dx) >= 7.0] == 0)
    assert np.all(S[np.hypot(dy, dx) < 7.0] > 0)


def test_stencil_layout_rectangular():
    k = Exponential(3.0)
    S = k.stencil(4, 6)                                                  # (7, 11)
    assert S.shape == (7, 11)
    assert S[3, 5] == 1.0
    assert math.isclose(S[3 + 2, 5 - 4], k(2, -4))


def test_stencil_kernel_is_the_correlation_layer_matrix():
    w = np.arange(9, dtype=np.float64).reshape(3, 3)
    k = StencilKernel(w)
    # k(dy, dx) = w[h - dy, h - dx]
    assert k(0, 0) == w[1, 1] and k(1, 0) == w[0, 1] and k(-1, 1) == w[2, 0]
    assert k(2, 0) == 0.0
    assert not k.symmetric and StencilKernel(np.ones((3, 3))).symmetric
    assert k == StencilKernel(w.copy()) and hash(k) == hash(StencilKernel(w.copy()))
    with pytest.raises(ValueError, match="integer pixel offsets"):
        k(0.5, 0)


def test_kernels_are_hashable_values():
    assert Gaussian(2.0) == Gaussian(2) and hash(Gaussian(2.0)) == hash(Gaussian(2))
    assert Gaussian(2.0) != Gaussian(2.5)


def test_make_kernel():
    assert make_kernel("gaussian", 3) == Gaussian(3.0)
    assert make_kernel("Matern-32", 2) == Matern32(2.0)
    assert make_kernel("imq", 2) == InverseMultiquadric(2.0)
    with pytest.raises(ValueError, match="unknown kernel 'thinplate'.*choose one of"):
        make_kernel("thinplate", 2)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_width(bad):
    with pytest.raises(ValueError, match="sigma must be a positive"):
        Gaussian(bad)


def test_bad_width_type_and_window_size():
    with pytest.raises(TypeError, match="radius must be a positive number"):
        Wendland("5")
    with pytest.raises(ValueError, match="positive odd integer"):
        Gaussian(2.0).window(12)


def test_stencil_kernel_bad_input():
    with pytest.raises(ValueError, match="square filter with odd side"):
        StencilKernel(np.ones((4, 4)))
    with pytest.raises(ValueError, match="one kernel per"):
        StencilKernel(np.ones((2, 3, 3)))
    with pytest.raises(TypeError, match="float filter"):
        StencilKernel(np.ones((3, 3), dtype=np.int64))
    w = np.ones((3, 3))
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        StencilKernel(w)


def test_function_kernel_nonstationary_has_no_offset_form():
    fk = FunctionKernel(lambda p, q: np.exp(-np.sum((p - q) ** 2, -1)) * (1 + p[..., 0] * q[..., 0]))
    assert not fk.stationary
    with pytest.raises(ValueError, match="not stationary.*method='dense'"):
        fk(0, 0)
    st = FunctionKernel(lambda p, q: np.exp(-np.sum((p - q) ** 2, -1) / 8), stationary=True)
    assert math.isclose(float(st(2.0, 0.0)), math.exp(-0.5))
    with pytest.raises(TypeError, match="callable"):
        FunctionKernel(3)
