"""Tests for regnp.losses: MSE, local NCC, diffusion, TV, meta-penalty (eq. 12), PSD factor."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp, numerical_vjp
from regnp.losses import (diffusion_backward, diffusion_forward, exchange_matrix, meta_penalty_backward,
                          meta_penalty_forward, mse_backward, mse_forward, ncc_backward,
                          ncc_backward_reference, ncc_forward, ncc_forward_reference, one_hot, psd_from_factor_backward,
                          psd_from_factor_forward, soft_dice_backward, soft_dice_forward,
                          soft_dice_reference, tv_backward, tv_forward)

ONE = np.array(1.0)


def grad_error(loss_fn, x, analytic, h=1e-6):
    """Norm-wise relative error max|a - num| / max|a| of a scalar loss's gradient w.r.t. x.

    For a scalar loss some gradient entries are sums of terms that cancel to ~1e-9, where the
    element-wise relative error of central differences is meaningless; the norm-wise error still
    exposes any wrong term (it would be O(1)).
    """
    _, num = numerical_vjp(lambda: np.array(loss_fn()), x, ONE, h=h)
    a = np.asarray(analytic, dtype=np.float64).ravel()
    return float(np.max(np.abs(a - num)) / max(np.max(np.abs(a)), 1e-300))


# --------------------------------------------------------------------------------- MSE
def test_mse_value_and_gradients():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((2, 1, 5, 7)); t = rng.standard_normal((2, 1, 5, 7))
    loss, cache = mse_forward(p, t)
    assert loss == pytest.approx(np.mean((p - t) ** 2))
    dp, dt = mse_backward(cache, dloss=0.5)
    # MSE is quadratic, so central differences are exact for any h up to round-off, which
    # falls as 1/h: h = 1e-4 keeps it (~1e-12 / |grad entry| ~ 1e-9) well below the tolerance
    assert check_vjp(lambda: np.array(mse_forward(p, t)[0]), p, dp / 0.5, ONE, h=1e-4) < 1e-7
    assert check_vjp(lambda: np.array(mse_forward(p, t)[0]), t, dt / 0.5, ONE, h=1e-4) < 1e-7
    assert grad_error(lambda: mse_forward(p, t)[0], p, 2 * dp) < 1e-7
    z = np.zeros((1, 1, 2, 2), np.float32)
    loss, cache = mse_forward(z, z + 1)
    assert loss == 1.0 and mse_backward(cache)[0].dtype == np.float32


# --------------------------------------------------------------------------------- NCC
@pytest.mark.parametrize("shape,win", [((2, 1, 7, 6), 3), ((2, 2, 9, 11), 5), ((1, 1, 4, 5), 9)])
def test_ncc_matches_reference_and_gradients(shape, win):
    rng = np.random.default_rng(1)
    p = rng.standard_normal(shape); t = 0.5 * p + rng.standard_normal(shape)
    loss, cache = ncc_forward(p, t, win=win)
    assert loss == pytest.approx(ncc_forward_reference(p, t, win=win), rel=1e-12)
    assert -1.0 <= loss <= 0.0
    dp, dt = ncc_backward(cache)
    f = lambda: ncc_forward(p, t, win=win)[0]
    assert grad_error(f, p, dp) < 1e-7
    assert grad_error(f, t, dt) < 1e-7
    # dloss scales the gradients
    dp2, _ = ncc_backward(cache, dloss=-2.0)
    np.testing.assert_allclose(dp2, -2.0 * dp, rtol=1e-13)


@pytest.mark.parametrize("shape,win", [((2, 1, 7, 6), 3), ((2, 2, 9, 11), 5), ((3, 1, 5, 7), 9)])
def test_ncc_backward_equals_its_loop_reference(shape, win):
    """The Numba backward (five box sums) against the window-by-window chain rule, including a
    flat patch (the variance clamp's zero branch) and a pair compared with itself (cc near the
    clamp at 1)."""
    rng = np.random.default_rng(2)
    p = rng.standard_normal(shape); t = 0.5 * p + rng.standard_normal(shape)
    p[0, 0, :3, :4] = 0.0; t[0, 0, :3, :4] = 0.0
    t[-1, -1] = p[-1, -1]
    _, cache = ncc_forward(p, t, win=win)
    for dloss in (1.0, -2.5):
        dp, dt = ncc_backward(cache, dloss)
        rp, rt = ncc_backward_reference(p, t, win=win, dloss=dloss)
        assert np.abs(rp).max() > 0 and np.abs(rt).max() > 0
        np.testing.assert_allclose(dp, rp, rtol=1e-9, atol=1e-12 * np.abs(rp).max())
        np.testing.assert_allclose(dt, rt, rtol=1e-9, atol=1e-12 * np.abs(rt).max())


@pytest.mark.parametrize("shape,win", [((2, 1, 5, 7), 3), ((2, 1, 3, 5), 5)])
def test_ncc_backward_reference_matches_finite_differences(shape, win):
    """The reference itself, against central differences of the slow loop forward (float64,
    odd non-square shapes, batch 2; with win 5 on 3×5 every window meets the zero padding):
    nothing here goes through the Numba kernels. Every entry is checked, so the shapes are
    small (the loop forward runs twice per entry)."""
    rng = np.random.default_rng(3)
    p = rng.standard_normal(shape); t = 0.5 * p + rng.standard_normal(shape)
    rp, rt = ncc_backward_reference(p, t, win=win, dloss=0.7)
    f = lambda: 0.7 * ncc_forward_reference(p, t, win=win)
    assert grad_error(f, p, rp) < 1e-7
    assert grad_error(f, t, rt) < 1e-7


def test_ncc_self_is_minus_one_and_flat_regions_count_zero():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (2, 1, 16, 13))
    loss, cache = ncc_forward(img, img)
    assert -1.0 <= loss < -0.999
    dp, dt = ncc_backward(cache)
    assert np.all(np.isfinite(dp)) and np.all(np.isfinite(dt))
    # a perfectly flat image (zeros) gives cc = 0 everywhere: loss 0, no NaN
    z = np.zeros((1, 1, 8, 8))
    loss, cache = ncc_forward(z, z)
    assert loss == 0.0
    assert np.all(ncc_backward(cache)[0] == 0)
    # half flat, half textured: the flat half counts zero in the mean
    half = np.zeros((1, 1, 32, 32)); half[..., 16:] = rng.uniform(0, 1, (32, 16))
    loss, _ = ncc_forward(half, half, win=3)
    # flat columns 0..14 (window radius 1 keeps them away from texture) give 0
    assert -0.55 < loss < -0.45


def test_ncc_never_below_minus_one_and_sign_invariance():
    rng = np.random.default_rng(3)
    img = rng.uniform(0, 1, (1, 1, 12, 12)).astype(np.float32)
    for scale in (1e-3, 1.0, 1e3):
        loss, _ = ncc_forward(img * np.float32(scale), img * np.float32(scale))
        assert loss >= -1.0
    # squared correlation: an inverted image matches as well as the image itself
    l1, _ = ncc_forward(img, img)
    l2, _ = ncc_forward(img, -img)
    assert l1 == pytest.approx(l2, rel=1e-6)


def test_ncc_float32_close_to_float64():
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 1, (2, 1, 20, 24)); t = rng.uniform(0, 1, (2, 1, 20, 24))
    l64, c64 = ncc_forward(p, t)
    l32, c32 = ncc_forward(p.astype(np.float32), t.astype(np.float32))
    assert l32 == pytest.approx(l64, rel=1e-5)
    g64 = ncc_backward(c64)[0]; g32 = ncc_backward(c32)[0]
    assert g32.dtype == np.float32
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-6 * np.abs(g64).max())


def test_ncc_bad_inputs():
    p = np.zeros((1, 1, 5, 5))
    with pytest.raises(ValueError, match="odd"):
        ncc_forward(p, p, win=4)
    with pytest.raises(ValueError, match="positive integer"):
        ncc_forward(p, p, win=0)
    with pytest.raises(ValueError, match="eps"):
        ncc_forward(p, p, eps=0.0)
    with pytest.raises(ValueError, match="must match"):
        ncc_forward(p, np.zeros((1, 1, 5, 6)))
    with pytest.raises(TypeError, match="other inputs"):
        ncc_forward(p, p.astype(np.float32))
    bad = p.copy(); bad[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="target contains 1 NaN"):
        ncc_forward(p, bad)
    _, cache = ncc_forward(p, p)
    with pytest.raises(ValueError, match="dloss"):
        ncc_backward(cache, dloss=np.nan)


# --------------------------------------------------------------------------------- smoothness
def test_diffusion_hand_values_and_gradient():
    H, W = 5, 7
    x = np.arange(W, dtype=np.float64)
    u = np.zeros((2, 2, H, W)); u[:, 1] = 0.5 * x                 # u_x = a x, a = 0.5
    loss, _ = diffusion_forward(u)
    # dx entries: half of them (channel 1) are 0.5, the other channel 0 -> mean(dx²) = 0.125
    assert loss == pytest.approx(0.5 * (0.0 + 0.125))
    assert diffusion_forward(np.full((1, 2, 4, 4), 3.0))[0] == 0.0
    rng = np.random.default_rng(5)
    u = rng.standard_normal((2, 2, 5, 6))
    _, cache = diffusion_forward(u)
    du = diffusion_backward(cache, dloss=3.0)
    assert grad_error(lambda: 3.0 * diffusion_forward(u)[0], u, du, h=1e-3) < 1e-9
    assert check_vjp(lambda: np.array(3.0 * diffusion_forward(u)[0]), u, du, ONE, h=1e-3) < 1e-6


def test_tv_values_and_gradient():
    x = np.arange(6, dtype=np.float64)
    u = np.zeros((1, 2, 4, 6)); u[:, 1] = 2.0 * x                 # |dx| = 2 >> eps
    loss, _ = tv_forward(u, eps=1e-6)
    assert loss == pytest.approx(0.5 * (0.0 + 1.0), rel=1e-6)    # mean |dx| = (2 + 0) / 2
    assert tv_forward(np.zeros((1, 2, 3, 3)))[0] == 0.0
    rng = np.random.default_rng(6)
    u = rng.standard_normal((2, 2, 5, 7))
    _, cache = tv_forward(u, eps=0.1)
    du = tv_backward(cache)
    assert grad_error(lambda: tv_forward(u, eps=0.1)[0], u, du) < 1e-7
    u32 = u.astype(np.float32)
    assert tv_backward(tv_forward(u32)[1]).dtype == np.float32


def test_smoothness_bad_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        diffusion_forward(np.zeros((1, 2, 1, 5)))
    with pytest.raises(ValueError, match="4 dimensions"):
        tv_forward(np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="eps"):
        tv_forward(np.zeros((1, 2, 3, 3)), eps=-1.0)
    with pytest.raises(TypeError, match="dtype"):
        diffusion_forward(np.zeros((1, 2, 3, 3), np.int32))


# --------------------------------------------------------------------------------- eq. 12
def gaussian_stencil(k=13, sigma=2.0):
    g = np.exp(-0.5 * ((np.arange(k) - (k - 1) / 2) / sigma) ** 2)
    return np.outer(g, g)


def test_meta_penalty_symmetry_terms():
    K = gaussian_stencil()
    loss, cache = meta_penalty_forward(K, rho1=10.0, rho2=1e-3)
    parts = cache["parts"]
    assert parts["sym"] < 1e-28 and parts["antisym"] < 1e-28
    assert parts["trace"] == pytest.approx(np.trace(K))
    assert parts["antitrace"] == pytest.approx(np.sum(K[::-1].diagonal()))
    assert loss == pytest.approx(-1e-3 * (parts["trace"] + parts["antitrace"]))
    rng = np.random.default_rng(7)
    R = rng.standard_normal((2, 13, 13))
    _, c = meta_penalty_forward(R, 1.0, 0.0)
    assert c["parts"]["sym"] > 1 and c["parts"]["antisym"] > 1
    # hand check of each term on a 2x2 filter: K = [[1, 2], [3, 4]]
    K2 = np.array([[1.0, 2.0], [3.0, 4.0]])
    _, c = meta_penalty_forward(K2, 1.0, 1.0)
    # K-K^T = [[0,-1],[1,0]] -> 2; KJ-JK = [[2,1],[4,3]]-[[3,4],[1,2]] -> 1+9+9+1 = 20
    assert c["parts"]["sym"] == 2.0 and c["parts"]["antisym"] == 20.0
    assert c["parts"]["trace"] == 5.0 and c["parts"]["antitrace"] == 5.0     # 3 + 2
    np.testing.assert_array_equal(exchange_matrix(2), [[0, 1], [1, 0]])


def test_meta_penalty_gradients_and_shapes():
    rng = np.random.default_rng(8)
    for shape in ((5, 5), (3, 4, 4)):
        K = rng.standard_normal(shape)
        _, cache = meta_penalty_forward(K, 2.0, 0.3)
        dK = meta_penalty_backward(cache, dloss=1.5)
        assert dK.shape == shape
        f = lambda: np.array(1.5 * meta_penalty_forward(K, 2.0, 0.3)[0])
        assert check_vjp(f, K, dK, ONE, h=1e-3) < 1e-8           # quadratic: exact differences
    K32 = rng.standard_normal((2, 3, 3)).astype(np.float32)
    assert meta_penalty_backward(meta_penalty_forward(K32, 1, 1)[1]).dtype == np.float32
    with pytest.raises(ValueError, match="non-negative"):
        meta_penalty_forward(K32, -1.0, 0.0)
    with pytest.raises(ValueError, match="square"):
        meta_penalty_forward(np.zeros((3, 4)), 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\(k, k\) filter"):
        meta_penalty_forward(np.zeros(4), 1.0, 1.0)


def test_meta_penalty_hinge_trace():
    """The hinge only penalises negative (anti-)traces: zero for a Gaussian, ρ2·|Tr| below 0,
    bounded below by 0 — unlike the linear reward, which falls without bound as K grows."""
    G = gaussian_stencil()
    assert meta_penalty_forward(G, 0.0, 1.0, trace="hinge")[0] == 0.0
    assert meta_penalty_forward(100 * G, 0.0, 1.0, trace="linear")[0] < \
        meta_penalty_forward(G, 0.0, 1.0, trace="linear")[0] - 1
    N = -G
    val = meta_penalty_forward(N, 0.0, 2.0, trace="hinge")[0]
    assert val == pytest.approx(2.0 * (np.trace(G) + np.trace(G[::-1])))
    rng = np.random.default_rng(11)
    K = rng.standard_normal((3, 5, 5))
    K[0] -= 3 * np.eye(5)                     # filter 0: negative trace and anti-trace
    K[1] += 3 * np.eye(5) + 3 * np.eye(5)[::-1]   # filter 1: both positive (inactive)
    _, cache = meta_penalty_forward(K, 2.0, 0.7, trace="hinge")
    dK = meta_penalty_backward(cache, dloss=1.3)
    f = lambda: np.array(1.3 * meta_penalty_forward(K, 2.0, 0.7, trace="hinge")[0])
    assert check_vjp(f, K, dK, ONE, h=1e-4) < 1e-6
    with pytest.raises(ValueError, match="trace must be"):
        meta_penalty_forward(K, 1.0, 1.0, trace="abs")


def test_psd_from_factor():
    rng = np.random.default_rng(9)
    U = rng.standard_normal((3, 6, 6))
    K, cache = psd_from_factor_forward(U)
    assert K.shape == U.shape
    for Kc in K:
        np.testing.assert_allclose(Kc, Kc.T, rtol=1e-13)
        assert np.linalg.eigvalsh(Kc).min() > -1e-12
    # the lower triangle of U is ignored; the diagonal's sign is ignored
    U2 = U + np.tril(rng.standard_normal((6, 6)), -1)
    U2[:, np.arange(6), np.arange(6)] *= -1
    np.testing.assert_allclose(psd_from_factor_forward(U2)[0], K, rtol=1e-13)
    d = rng.standard_normal(K.shape)
    dU = psd_from_factor_backward(d, cache)
    assert check_vjp(lambda: psd_from_factor_forward(U)[0], U, dU, d) < 1e-7
    assert np.all(np.tril(dU[0], -1) == 0)
    # a rank-1 Gaussian stencil g g^T is reachable exactly: g in the last column
    g = np.exp(-0.5 * (np.arange(5) - 2.0) ** 2)
    Ug = np.zeros((5, 5)); Ug[:, -1] = g
    np.testing.assert_allclose(psd_from_factor_forward(Ug)[0], np.outer(g, g), rtol=1e-14)
    # at a zero diagonal entry the gradient is the right-hand one (not stuck at 0)
    Uz = np.zeros((2, 2)); Uz[0, 1] = 1.0
    Kz, cz = psd_from_factor_forward(Uz)
    dz = psd_from_factor_backward(np.eye(2), cz)
    assert Kz.shape == (2, 2) and dz[1, 1] == 0.0 and dz[0, 1] == 2.0
    # Ũ = [[0, 1], [0, c]] at c = U[1, 1] = 0: K[0, 1] = 1·c, so dK[0, 1] = 1 gives dU[1, 1] =
    # sign(0)·1 = +1 (right-hand derivative of |c|), not 0
    dK = np.zeros((2, 2)); dK[0, 1] = 1.0
    assert psd_from_factor_backward(dK, cz)[1, 1] == 1.0
    with pytest.raises(ValueError, match="expected"):
        psd_from_factor_backward(np.zeros((2, 3)), cz)


# --------------------------------------------------------------------------------- soft Dice
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (3, 1, 9, 12)])
def test_soft_dice_matches_reference_and_gradients(shape):
    """Odd and non-square shapes, batch >= 2, float64 central differences for pred and target
    (every target channel non-empty: see the next test for empty ones)."""
    rng = np.random.default_rng(3)
    p = rng.random(shape)
    t = (rng.random(shape) > 0.6).astype(np.float64)
    t[..., 0, 0] = 1.0
    loss, cache = soft_dice_forward(p, t)
    assert loss == pytest.approx(soft_dice_reference(p, t), rel=1e-13)
    assert 0 < loss < 1
    dp, dt = soft_dice_backward(cache)
    f = lambda: np.array(soft_dice_forward(p, t)[0])
    assert check_vjp(f, p, dp, ONE, h=1e-6) < 1e-7
    assert grad_error(f, t, dt) < 1e-7      # some dtarget entries cancel to ~1e-9 (2p ≈ dice)
    dp3, _ = soft_dice_backward(cache, dloss=3.0)
    np.testing.assert_allclose(dp3, 3.0 * dp, rtol=1e-13)


def test_soft_dice_scores_only_labels_the_target_holds():
    """An empty target channel is not scored (as the Dice metric scores the labels present in
    the fixed map); its pred gets no gradient; nothing to score gives 0."""
    rng = np.random.default_rng(4)
    p = rng.random((2, 2, 6, 5))
    t = (rng.random((2, 2, 6, 5)) > 0.5).astype(np.float64)
    t[1, 0] = 0.0
    loss, cache = soft_dice_forward(p, t)
    kept = [(0, 0), (0, 1), (1, 1)]
    by_hand = 1 - np.mean([2 * np.sum(p[e] * t[e]) / (p[e].sum() + t[e].sum()) for e in kept])
    assert loss == pytest.approx(by_hand, rel=1e-13)
    dp, _ = soft_dice_backward(cache)
    assert not dp[1, 0].any() and dp[0, 0].any()
    assert check_vjp(lambda: np.array(soft_dice_forward(p, t)[0]), p, dp, ONE) < 1e-7
    loss0, cache0 = soft_dice_forward(p, np.zeros_like(p))
    assert loss0 == 0.0 and not soft_dice_backward(cache0)[0].any()


def test_soft_dice_of_one_hot_maps_is_one_minus_dice():
    """For 0/1 maps the soft Dice is the Dice metric (per pair, labels present in the fixed map)."""
    from regnp.metrics import dice
    rng = np.random.default_rng(5)
    a = rng.choice([0, 1, 4], size=(2, 1, 9, 11)).astype(np.uint8)
    b = rng.choice([0, 1, 4], size=(2, 1, 9, 11)).astype(np.uint8)
    loss, _ = soft_dice_forward(one_hot(b, (1, 4), np.float64), one_hot(a, (1, 4), np.float64))
    per = [dice(a[n, 0], b[n, 0], labels=[1, 4])["per_label"] for n in range(2)]
    assert loss == pytest.approx(1 - np.mean([d for pl in per for d in pl.values()]), rel=1e-12)
    oh = one_hot(a, (4, 1))
    assert oh.shape == (2, 2, 9, 11) and oh.dtype == np.float32
    np.testing.assert_array_equal(oh[:, 0], a[:, 0] == 4)
    with pytest.raises(TypeError, match="integer label map"):
        one_hot(a.astype(np.float32), (1,))
    with pytest.raises(ValueError, match="label map"):
        one_hot(a[:, 0], (1,))
