"""Tests for regnp.metrics: Jacobian determinant of id + u, folding stats, Dice, t-test, Timer."""
import numpy as np
import pytest
import scipy.stats

from regnp.metrics import (Timer, dice, dice_per_pair, folding_stats, jacobian_determinant,
                           summarize, ttest_unpaired, difference_ci)


def affine_field(H, W, a, b, c, d, dtype=np.float64):
    """u_y = a*y + b*x, u_x = c*y + d*x: det J_phi = (1+a)(1+d) - b*c everywhere (exactly)."""
    y, x = np.mgrid[0:H, 0:W].astype(dtype)
    return np.stack([a * y + b * x, c * y + d * x])[None]     # (1, 2, H, W)


def test_zero_field_has_det_one():
    u = np.zeros((2, 2, 7, 5), np.float32)
    det = jacobian_determinant(u)
    assert det.shape == (2, 7, 5) and det.dtype == np.float32
    np.testing.assert_array_equal(det, 1.0)
    s = folding_stats(u)
    np.testing.assert_array_equal(s["pct_positive"], [100.0, 100.0])
    np.testing.assert_array_equal(s["min_det"], [1.0, 1.0])
    np.testing.assert_array_equal(s["n_folded"], [0, 0])


def test_single_field_shapes_and_scalars():
    u = np.zeros((2, 4, 6))
    assert jacobian_determinant(u).shape == (4, 6)
    s = folding_stats(u)
    assert s == {"pct_positive": 100.0, "min_det": 1.0, "n_folded": 0}


def test_affine_field_exact_det_and_not_det_of_u():
    a, b, c, d = 0.3, -0.2, 0.5, 0.1
    u = affine_field(6, 9, a, b, c, d)
    det = jacobian_determinant(u)
    np.testing.assert_allclose(det, (1 + a) * (1 + d) - b * c, atol=1e-12)
    # det of grad(u) alone would be a*d - b*c = 0.13; we must not return that
    assert abs(det[0, 3, 3] - (a * d - b * c)) > 1.0


def test_channel_order_matters():
    # u_y = 0.5*y stretches rows: d u_y/dy = 0.5 -> det 1.5; putting it in channel 1 instead
    # (u_x = 0.5*y) is a shear with det 1.
    H, W = 5, 6
    y = np.mgrid[0:H, 0:W][0].astype(float)
    u = np.zeros((1, 2, H, W)); u[0, 0] = 0.5 * y
    np.testing.assert_allclose(jacobian_determinant(u), 1.5)
    u2 = np.zeros((1, 2, H, W)); u2[0, 1] = 0.5 * y
    np.testing.assert_allclose(jacobian_determinant(u2), 1.0)


def test_central_inside_one_sided_at_border():
    H, W = 4, 5
    u = np.zeros((2, H, W))
    u[1] = np.array([0.0, 1.0, 4.0, 9.0, 16.0])[None, :]      # u_x = x^2
    det = jacobian_determinant(u)
    # d u_x/dx: one-sided 1, central (4-0)/2=2, (9-1)/2=4, (16-4)/2=6, one-sided 7
    np.testing.assert_allclose(det[0], 1 + np.array([1, 2, 4, 6, 7.0]))


def test_hand_made_fold_is_detected_where_put():
    H, W = 9, 9
    u = np.zeros((1, 2, H, W))
    # columns 3..5 get u_x = -2 * (x - 4): phi_x decreases there -> d(phi_x)/dx = -1
    for x in range(2, 7):
        u[0, 1, :, x] = -2.0 * (x - 4)
    det = jacobian_determinant(u)[0]
    assert np.all(det[:, 3:6] < 0)
    assert np.all(det[:, :1] > 0) and np.all(det[:, 8:] > 0)
    s = folding_stats(u)
    assert s["n_folded"][0] == np.count_nonzero(det <= 0)
    np.testing.assert_allclose(s["pct_positive"][0], 100.0 * np.count_nonzero(det > 0) / det.size)
    assert s["min_det"][0] == pytest.approx(det.min())
    # a mask excluding the folded columns gives no folds
    mask = np.ones((H, W), bool); mask[:, 1:8] = False
    sm = folding_stats(u, mask=mask)
    assert sm["n_folded"][0] == 0 and sm["pct_positive"][0] == 100.0


def test_folding_stats_per_pair_mask_and_empty_mask():
    u = np.zeros((2, 2, 5, 5))
    u[1] = affine_field(5, 5, -2.0, 0, 0, 0)[0]               # det = -1 everywhere in pair 1
    mask = np.zeros((2, 5, 5), bool); mask[0, :2] = True
    s = folding_stats(u, mask=mask)
    assert s["pct_positive"][0] == 100.0 and np.isnan(s["pct_positive"][1])
    assert s["n_folded"][1] == 0
    s = folding_stats(u)
    assert s["pct_positive"][1] == 0.0 and s["n_folded"][1] == 25
    np.testing.assert_allclose(s["min_det"], [1.0, -1.0])


def test_jacobian_bad_inputs():
    with pytest.raises(ValueError, match="expected 2"):
        jacobian_determinant(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="displacement field"):
        jacobian_determinant(np.zeros((4, 4)))
    with pytest.raises(TypeError, match="dtype"):
        jacobian_determinant(np.zeros((1, 2, 4, 4), np.int32))
    bad = np.zeros((1, 2, 4, 4)); bad[0, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jacobian_determinant(bad)
    with pytest.raises(ValueError, match="at least"):
        jacobian_determinant(np.zeros((1, 2, 1, 4)))
    with pytest.raises(TypeError, match="numpy"):
        jacobian_determinant([[0.0]])
    with pytest.raises(ValueError, match="mask has shape"):
        folding_stats(np.zeros((1, 2, 4, 4)), mask=np.ones((3, 3), bool))
    with pytest.raises(TypeError, match="boolean"):
        folding_stats(np.zeros((1, 2, 4, 4)), mask=np.ones((4, 4)))


def test_dice_hand_computed():
    a = np.zeros((4, 4), np.int32); b = np.zeros((4, 4), np.int32)
    a[:2, :2] = 1; b[:2, :1] = 1                              # |A|=4, |B|=2, overlap 2 -> 2/3
    a[2:, 2:] = 4; b[2:, 2:] = 4                              # identical -> 1
    r = dice(a, b)
    assert set(r["per_label"]) == {1, 4}
    assert r["per_label"][1] == pytest.approx(2 * 2 / 6)
    assert r["per_label"][4] == 1.0
    assert r["mean"] == pytest.approx((2 / 3 + 1) / 2)
    # only labels present in the fixed map a are scored (b's extra label 7 is ignored)
    b[0, 3] = 7
    assert set(dice(a, b)["per_label"]) == {1, 4}
    # explicit labels: 9 absent from both -> 1.0 by definition; 7 only in b -> 0
    r = dice(a, b, labels=[7, 9])
    assert r["per_label"] == {7: 0.0, 9: 1.0}


def test_dice_disjoint_and_empty():
    a = np.zeros((3, 3), np.uint8); b = np.zeros((3, 3), np.uint8)
    a[0, 0] = 1; b[2, 2] = 1
    assert dice(a, b)["mean"] == 0.0
    assert np.isnan(dice(np.zeros((3, 3), int), b)["mean"])


def test_dice_per_pair_and_float_labels():
    a = np.zeros((2, 1, 3, 3)); b = np.zeros((2, 1, 3, 3))
    a[0, 0, 0] = 1; b[0, 0, 0] = 1
    a[1, 0, 0] = 2; b[1, 0, 1] = 2
    np.testing.assert_allclose(dice_per_pair(a, b), [1.0, 0.0])


def test_dice_bad_inputs():
    with pytest.raises(TypeError, match="non-integer"):
        dice(np.full((2, 2), 0.5), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="must match"):
        dice(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(TypeError, match="label map"):
        dice([1, 2], np.zeros(2, int))


def test_ttest_and_summarize():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 20); b = rng.normal(1, 2, 25)
    t, p = ttest_unpaired(a, b)
    ref = scipy.stats.ttest_ind(a, b, equal_var=False)
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    t2, _ = ttest_unpaired(a, b, equal_var=True)
    assert t2 != pytest.approx(t)
    m, s = summarize([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert summarize([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, np.nan])
    with pytest.raises(ValueError, match="at least 2"):
        ttest_unpaired([1.0], [2.0, 3.0])


def test_difference_ci_is_welchs_interval_by_hand():
    """The reference is the textbook formula; the interval excludes 0 exactly when Welch's
    p < 0.05."""
    rng = np.random.default_rng(3)
    for na, nb, shift in ((20, 25, 1.0), (7, 40, 0.1), (80, 80, 0.3)):
        a = rng.normal(shift, 1, na); b = rng.normal(0, 2, nb)
        va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
        df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
        half = scipy.stats.t.ppf(0.975, df) * np.sqrt(va + vb)
        lo, hi = difference_ci(a, b)
        d = a.mean() - b.mean()
        assert lo == pytest.approx(d - half, rel=1e-9) and hi == pytest.approx(d + half, rel=1e-9)
        _, p = ttest_unpaired(a, b)
        assert (lo > 0 or hi < 0) == (p < 0.05)
        lo90, hi90 = difference_ci(a, b, level=0.9)
        assert lo < lo90 < hi90 < hi
    with pytest.raises(ValueError, match="at least 2"):
        difference_ci([1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="level"):
        difference_ci([1.0, 2.0], [2.0, 3.0], level=95)


def test_timer_discards_warmup(monkeypatch):
    """On a fake clock whose laps are known: the warm-up laps (slow, as a Numba compilation)
    are dropped, measure() is the median lap per pair, summary() the mean and sample std."""
    import regnp.metrics
    clock = [0.0]
    monkeypatch.setattr(regnp.metrics.time, "perf_counter", lambda: clock[0])
    laps = iter([50.0, 40.0, 1.0, 3.0, 2.0])           # two warm-up laps, then three timed

    def work():
        clock[0] += next(laps)
    assert Timer.measure(work, repeats=3, warmup=2, n_pairs=2) == 1.0   # median(1, 3, 2) / 2
    t = Timer(warmup=1)
    for lap in (9.0, 2.0, 4.0, 6.0):
        with t:
            clock[0] += lap
    assert t.seconds == [2.0, 4.0, 6.0]
    assert t.summary() == (4.0, 2.0) and t.median == 4.0
    with pytest.raises(ValueError, match="warm-up"):
        Timer(warmup=5).summary()
    with pytest.raises(ValueError, match="warmup"):
        Timer(warmup=-1)
