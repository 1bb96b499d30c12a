"""Nearest and bilinear x2 upsampling, 2x2 average pooling: references, gradient checks, hand
answers, bad inputs."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.ops import pool as P

OPS = {
    "nearest": (P.upsample_nearest2x_forward, P.upsample_nearest2x_backward,
                P.upsample_nearest2x_forward_reference, P.upsample_nearest2x_backward_reference),
    "bilinear": (P.upsample_bilinear2x_forward, P.upsample_bilinear2x_backward,
                 P.upsample_bilinear2x_forward_reference, P.upsample_bilinear2x_backward_reference),
}


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference(name, dtype):
    fwd, bwd, rfwd, rbwd = OPS[name]
    rng = np.random.default_rng(0)
    shape = (2, 3, 5, 7)
    x = rng.standard_normal(shape).astype(dtype)
    out, cache = fwd(x)
    ref, rcache = rfwd(x)
    assert out.dtype == dtype and out.shape == ref.shape
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    dout = rng.standard_normal(out.shape).astype(dtype)
    np.testing.assert_allclose(bwd(dout, cache), rbwd(dout, rcache), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", list(OPS))
def test_gradcheck(name):
    fwd, bwd, _, _ = OPS[name]
    rng = np.random.default_rng(1)
    shape = (2, 2, 3, 5)
    x = rng.standard_normal(shape)
    out, cache = fwd(x)
    dout = rng.standard_normal(out.shape)
    assert check_vjp(lambda: fwd(x)[0], x, bwd(dout, cache), dout) < 1e-6


def test_nearest_hand():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    out, cache = P.upsample_nearest2x_forward(x)
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4],
                                              [3, 3, 4, 4]])
    np.testing.assert_array_equal(P.upsample_nearest2x_backward(np.ones_like(out), cache), 4)


def test_bilinear_hand():
    # 1-D along columns: [0, 4] -> sample points -0.25, 0.25, 0.75, 1.25 -> clamp at the edges
    x = np.array([[[[0.0, 4.0]]]])
    out, _ = P.upsample_bilinear2x_forward(x)
    np.testing.assert_allclose(out[0, 0], [[0, 1, 3, 4], [0, 1, 3, 4]])
    const = np.full((1, 2, 3, 5), 2.5)
    np.testing.assert_allclose(P.upsample_bilinear2x_forward(const)[0], 2.5)
    ramp = np.tile(np.arange(6.0), (1, 1, 4, 1))       # x = column index
    out = P.upsample_bilinear2x_forward(ramp)[0][0, 0]
    # interior output column o samples input coordinate o/2 - 1/4
    np.testing.assert_allclose(out[:, 1:-1], np.tile(np.arange(1, 11) / 2 - 0.25, (8, 1)))
    # the backward conserves mass: every input pixel's weights sum to 4 (2 x 2 in 2-D)
    _, cache = P.upsample_bilinear2x_forward(np.zeros((1, 1, 3, 4)))
    np.testing.assert_allclose(P.upsample_bilinear2x_backward(np.ones((1, 1, 6, 8)), cache), 4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        P.avgpool2x2_forward(np.zeros((1, 1, 5, 4)))
    with pytest.raises(ValueError, match="4 dimensions"):
        P.upsample_nearest2x_forward(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="dtype"):
        P.upsample_bilinear2x_forward(np.zeros((1, 1, 2, 2), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        P.avgpool2x2_forward(np.full((1, 1, 2, 2), np.nan))
    _, cache = P.upsample_bilinear2x_forward(np.zeros((1, 1, 2, 3)))
    with pytest.raises(ValueError, match="shape"):
        P.upsample_bilinear2x_backward(np.zeros((1, 1, 4, 5)), cache)
    _, cache = P.upsample_nearest2x_forward(np.zeros((1, 1, 2, 3)))
    with pytest.raises(TypeError, match="dtype"):
        P.upsample_nearest2x_backward(np.zeros((1, 1, 4, 6), np.float32), cache)


def test_avgpool2x2_block_means_and_adjoint():
    from regnp.ops.pool import avgpool2x2_backward, avgpool2x2_forward
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4, 6))
    out, cache = avgpool2x2_forward(x)
    np.testing.assert_allclose(out, x.reshape(2, 3, 2, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-14)
    d = rng.standard_normal(out.shape)
    # <pool(x), d> = <x, pool^T(d)>
    assert np.isclose(np.sum(out * d), np.sum(x * avgpool2x2_backward(d, cache)))
    with pytest.raises(ValueError, match="even H and W"):
        avgpool2x2_forward(np.zeros((1, 1, 5, 4)))
