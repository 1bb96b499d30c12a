"""Gaussian-mixture fields: σ definition, fold-free, reproducible, masks move with the image."""
import numpy as np
import pytest

from regnp.data.datasets import SyntheticPairs, describe, load_dataset
from regnp.data.deform import (deform, field_stats, foreground_mask, gaussian_mixture_field,
                               invert_field, random_fields)
from regnp.data.phantom import make_phantom
from regnp.metrics import dice, jacobian_determinant
from regnp.ops.warp import warp_forward


@pytest.fixture(scope="module")
def subject():
    img, lab = make_phantom(11, shape=128)
    return img, lab, foreground_mask(img)


def test_sigma_is_rms_over_region_and_whole_image(subject):
    img, lab, body = subject
    u = gaussian_mixture_field((128, 128), 8.0, seed=1, region=body, widths=(14, 30))
    assert u.shape == (2, 128, 128) and u.dtype == np.float32
    mag2 = (u.astype(np.float64) ** 2).sum(0)
    assert np.sqrt(mag2[body].mean()) == pytest.approx(8.0, rel=1e-5)
    v = gaussian_mixture_field((40, 50), 3.0, seed=2, widths=(8, 12), dtype=np.float64)
    assert v.dtype == np.float64
    assert np.sqrt((v ** 2).sum(0).mean()) == pytest.approx(3.0, rel=1e-10)
    assert not np.any(gaussian_mixture_field((20, 20), 0.0))


def test_fields_are_fold_free_and_reproducible(subject):
    _, _, body = subject
    U = random_fields(12, (128, 128), 8.0, seed=5, region=body, widths=(14, 30))
    assert jacobian_determinant(U).min() > 0.1
    assert np.array_equal(U[7], gaussian_mixture_field((128, 128), 8.0, seed=[5, 7], region=body,
                                                       widths=(14, 30)))
    assert not np.array_equal(U[0], U[1])
    st = field_stats(U, body)
    assert np.all(st["pct_folded"] == 0) and np.allclose(st["rms_disp"], 8.0, rtol=1e-5)
    assert np.all(st["max_disp"] >= st["rms_disp"])


def test_impossible_request_raises_with_advice():
    """Above the family's limit: a ValueError at once, naming the largest σ (issue 20 item 3)."""
    with pytest.raises(ValueError, match=r"the largest is 3 px; ask for a smaller sigma, wider "
                                         r"bumps, or the invertible field='svf'"):
        gaussian_mixture_field((64, 64), 30.0, seed=0, widths=(2.0, 3.0), max_tries=3)
    # below the limit but unlucky: every draw folds, and the message says how far they reached
    with pytest.raises(ValueError, match=r"the largest σ among 3 draws was [0-9.]+ px"):
        gaussian_mixture_field((64, 64), 2.9, seed=0, widths=(2.0, 3.0), max_tries=3)


@pytest.mark.parametrize("kwargs, err, frag", [
    (dict(sigma=-1.0), ValueError, "sigma must be"),
    (dict(sigma=float("nan")), ValueError, "sigma must be"),
    (dict(widths=(30, 10)), ValueError, "widths must satisfy"),
    (dict(n_components=(0, 3)), ValueError, "n_components must satisfy"),
    (dict(region=np.ones((8, 8), bool)), ValueError, "region must be a boolean array"),
    (dict(region=np.zeros((32, 32), bool)), ValueError, "region is empty"),
    (dict(seed="abc"), TypeError, "seed must be"),
    (dict(dtype=np.int32), TypeError, "dtype must be"),
])
def test_bad_inputs(kwargs, err, frag):
    args = dict(shape=(32, 32), sigma=2.0)
    args.update(kwargs)
    with pytest.raises(err, match=frag):
        gaussian_mixture_field(**args)


def test_masks_move_with_the_image(subject):
    """Warp a label-coded image bilinearly and the mask by nearest: they must agree."""
    img, lab, body = subject
    u = random_fields(3, (128, 128), 8.0, seed=9, region=body, widths=(14, 30))
    imgs = np.repeat(img[None, None], 3, 0)
    labs = np.repeat(lab[None, None], 3, 0)
    moving, moving_lab = deform(imgs, labs, u)
    assert moving.shape == imgs.shape and moving_lab.dtype == np.uint8
    for l in range(1, 5):
        ind = (labs == l).astype(np.float32)                       # indicator image of organ l
        warped_ind = warp_forward(ind, u)[0] > 0.5                 # (3, 1, H, W)
        for n in range(3):
            d = dice(warped_ind[n, 0].astype(np.uint8), (moving_lab[n, 0] == l).astype(np.uint8),
                     labels=[1])["mean"]
            assert d > 0.95
    # and through the dataset machinery: an image whose intensity encodes the label
    code = (lab.astype(np.float32) / 4.0)[None, None]
    ds = SyntheticPairs.from_arrays(code, lab[None, None], sigma=16.0, n_pairs=3, seed=1)
    for i in range(3):
        it = ds[i]
        assert np.array_equal(it["fixed_mask"], lab[None, None])
        agree = np.mean(np.round(it["moving"] * 4).astype(np.uint8) == it["moving_mask"])
        assert agree > 0.97


def test_invert_field_undoes_the_deformation(subject):
    img, _, body = subject
    u = random_fields(1, (128, 128), 8.0, seed=3, region=body, widths=(14, 30))
    moving, _ = deform(img[None, None], None, u)
    v = invert_field(u)
    back = warp_forward(moving, v)[0]
    inner = (slice(None), slice(None), slice(20, -20), slice(20, -20))
    assert np.abs(back - img)[inner].mean() < 0.2 * np.abs(moving - img)[inner].mean()


def test_field_stats_zero_field():
    st = field_stats(np.zeros((2, 9, 7), np.float32))
    assert st["mean_disp"] == 0 and st["max_disp"] == 0 and st["min_det"] == 1 and st["pct_folded"] == 0


def test_sigma_statistics_on_phantom_within_documented_bounds():
    """Documented (docs/data.md, docs/deformations.md): σ = 10 moderate, σ = 16 clearly harder, never folding."""
    res = {}
    for sig in (10, 16):
        ds = load_dataset("phantom", "test", sigma=sig, n_pairs=24, n_subjects=3, size=128)
        res[sig] = describe(ds)
        f = res[sig]["field"]
        assert f["pct_folded"][1] == 0.0 and f["min_det"][1] > 0.1
        assert 0.75 * sig / 2 < f["mean_disp"][0] < 0.95 * sig / 2  # mean |u| ≈ 0.8–0.9 σ (px at 128)
        assert f["rms_disp"][0] == pytest.approx(sig * 0.5, rel=1e-4)   # 128 px = half of 256
    assert 0.65 < res[10]["dice_before"][0] < 0.9
    assert 0.5 < res[16]["dice_before"][0] < 0.78
    assert res[16]["dice_before"][0] < res[10]["dice_before"][0] - 0.05


def test_sigma_statistics_on_chaos(data_root):
    """The calibration docs/deformations.md reports (80 fixed test pairs); a subset keeps the test fast."""
    out = {}
    for sig in (10, 16):
        ds = load_dataset("chaos", "test", data_root=data_root, sigma=sig, n_pairs=40)
        out[sig] = describe(ds)
        assert out[sig]["field"]["pct_folded"][1] == 0.0
    assert 0.70 < out[10]["dice_before"][0] < 0.85
    assert 0.55 < out[16]["dice_before"][0] < 0.72


# ---- the velocity-field family ("svf") and the σ limits (issue 17; issue 20 item 3) ----------
from regnp.data.deform import (_bumps_on_grid, _draw_bumps, fold_limit, random_field,  # noqa: E402
                               sigma_limit, velocity_field)


def _flow_endpoint(bumps, norm, s, p, t_end=1.0):
    """Where the ODE dp/dt = s·m(p)/norm carries the pixel p in unit time (scipy RK45, tight
    tolerances): the obviously-correct reference of exp(v)."""
    from scipy.integrate import solve_ivp

    def rhs(_, q):
        m = _bumps_on_grid(bumps, np.array([q[0]]), np.array([q[1]]))[:, 0, 0]
        return s * m / norm
    sol = solve_ivp(rhs, (0.0, t_end), np.asarray(p, float), rtol=1e-9, atol=1e-9)
    return sol.y[:, -1]


@pytest.mark.parametrize("shape, sigma, widths", [((96, 80), 9.0, (14.0, 30.0)),
                                                  ((64, 64), 12.0, (7.0, 15.0))])
def test_velocity_field_is_the_flow_of_the_mixture(subject, shape, sigma, widths):
    """u(p) = φ(p) − p with φ the time-1 flow of v = s·m: checked pixel by pixel against an ODE
    solver on odd/non-square grids; RMS over the region is σ; no folds; reproducible."""
    H, W = shape
    region = np.zeros(shape, bool)
    region[H // 5:-H // 6, W // 4:-W // 7] = True
    u, info = velocity_field(shape, sigma, seed=[4, 2], region=region, widths=widths,
                             dtype=np.float64, return_info=True)
    assert u.shape == (2, H, W) and u.dtype == np.float64 and info["rejected"] == 0
    assert np.sqrt((u ** 2).sum(0)[region].mean()) == pytest.approx(sigma, rel=2e-4)
    assert jacobian_determinant(u).min() > 0
    # the same random stream gives the same bumps: rebuild m and follow pixels along the flow
    bumps = _draw_bumps(np.random.default_rng([4, 2]), H, W, region, (4, 8), widths)
    m = _bumps_on_grid(bumps, np.arange(H, dtype=float), np.arange(W, dtype=float))
    norm = np.sqrt((m ** 2).sum(0)[region].mean())
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(12):
        p = (int(rng.integers(H)), int(rng.integers(W)))
        end = _flow_endpoint(bumps, norm, info["scale"], p)
        worst = max(worst, float(np.abs(end - np.array(p) - u[:, p[0], p[1]]).max()))
    assert worst < 0.02 * sigma                     # bilinear steps on a coarse grid: < 2 % of σ
    again = velocity_field(shape, sigma, seed=[4, 2], region=region, widths=widths,
                           dtype=np.float64)
    assert np.array_equal(u, again)


def test_velocity_field_near_the_border_follows_the_flow_out():
    """Bumps at the right border pushing outward: the flow is integrated on a padded grid, so
    border pixels move as the ODE says (integrating on the image grid alone, with the warp's
    zero padding, stopped them at the border: det J → 0 along it even at σ = 10)."""
    H = W = 128
    edge = np.zeros((H, W), bool)
    edge[50:78, 118:] = True                         # centres next to the right border
    for seed in (0, 1):
        u, info = velocity_field((H, W), 10.0, seed=seed, region=edge, widths=(14, 30),
                                 dtype=np.float64, return_info=True)
        bumps = _draw_bumps(np.random.default_rng(seed), H, W, edge, (4, 8), (14.0, 30.0))
        m = _bumps_on_grid(bumps, np.arange(H, dtype=float), np.arange(W, dtype=float))
        norm = np.sqrt((m ** 2).sum(0)[edge].mean())
        for p in ((52, W - 1), (64, W - 1), (76, W - 1), (64, W - 3)):
            end = _flow_endpoint(bumps, norm, info["scale"], p)
            assert np.abs(end - np.array(p) - u[:, p[0], p[1]]).max() < 0.03 * 10.0


def test_small_sigma_velocity_field_is_the_mixture_itself(subject):
    """exp(v) = id + v + O(|v|²): at σ = 0.05 px the two families give the same field."""
    _, _, body = subject
    kw = dict(seed=[7, 3], region=body, widths=(14, 30), dtype=np.float64)
    a = gaussian_mixture_field((128, 128), 0.05, **kw)
    b = velocity_field((128, 128), 0.05, **kw)
    # what is left is the coarse grid's bilinear interpolation, (stride / width)² / 8 ≈ 0.26 %
    # here (stride 2, narrowest width 14 px), plus the O(σ²) term
    assert np.abs(a - b).max() < 5e-3 * np.abs(a).max()
    # and a wrong scale or direction would be off by far more
    assert np.abs(a - 1.1 * b).max() > 2e-2 * np.abs(a).max()


def test_sigma_limits_are_one_line_value_errors():
    assert sigma_limit("gmm") == 42.0 and sigma_limit("svf") == 56.0
    with pytest.raises(ValueError, match=r"^sigma=43 px is more than the Gaussian-mixture field "
                                         r".*the largest is 42 px; .*field='svf'$"):
        gaussian_mixture_field((256, 256), 43.0)
    with pytest.raises(ValueError, match=r"^sigma=60 px is more than the velocity-field "
                                         r"deformation .*the largest is 56 px"):
        velocity_field((256, 256), 60.0)
    with pytest.raises(ValueError, match="field must be one of 'gmm', 'svf'"):
        random_field((16, 16), 1.0, field="bspline")
    with pytest.raises(ValueError, match="field must be one of"):
        sigma_limit("bspline")


@pytest.mark.parametrize("name, sigma, frag", [
    ("phantom", 60.0, r"sigma 60 is more than the 'gmm' deformations .* largest is 42; the "
                      r"invertible velocity-field deformations \(--dataset chaos-svf .*\) draw up to 56"),
    ("phantom-svf", 80.0, r"sigma 80 is more than the 'svf' deformations .* largest is 56$"),
])
def test_datasets_refuse_a_sigma_beyond_the_limit_at_once(name, sigma, frag):
    """Issue 20 item 3: `--sigma 60` ended in a RuntimeError traceback at the first batch; the
    set now refuses it when it is made, at any working size, in 256-pixel units."""
    for size in (64, 256):
        with pytest.raises(ValueError, match=frag):
            load_dataset(name, "test", size=size, sigma=sigma, n_pairs=2, n_subjects=1)


def test_dataset_names_choose_the_field_family():
    a = load_dataset("phantom", "test", size=64, sigma=16, n_pairs=3, n_subjects=2)
    b = load_dataset("phantom-svf", "test", size=64, sigma=16, n_pairs=3, n_subjects=2)
    c = load_dataset("phantom", "test", size=64, sigma=16, n_pairs=3, n_subjects=2, field="svf")
    g = load_dataset("phantom-gmm", "test", size=64, sigma=16, n_pairs=3, n_subjects=2)
    assert a.field_family == g.field_family == "gmm" and b.field_family == c.field_family == "svf"
    assert a.pair_ids == b.pair_ids                # the same base slices: comparable pair by pair
    assert np.array_equal(b[2]["u"], c[2]["u"]) and np.array_equal(a[2]["u"], g[2]["u"])
    assert not np.array_equal(a[2]["u"], b[2]["u"])
    assert b.field(2, return_info=True)[1]["rejected"] == 0
    for bad, frag in (("acdc-svf", "applies to the synthetic sets only"),
                      ("liver-svf", r"synthetic sets only \(phantom, chaos\), e.g. chaos-svf"),
                      ("chaos-bspline", "unknown dataset 'chaos-bspline'.*end in -svf")):
        with pytest.raises(ValueError, match=frag):
            load_dataset(bad, "test")
    with pytest.raises(ValueError, match="names the field family 'svf', but field='gmm'"):
        load_dataset("phantom-svf", "test", field="gmm")


def test_fold_limit_is_where_the_draw_starts_to_fold(subject):
    _, _, body = subject
    u = gaussian_mixture_field((128, 128), 1.0, seed=3, region=body, widths=(14, 30),
                               dtype=np.float64)
    lim = fold_limit(u, 0.1, body)                  # σ at which min det J reaches 0.1
    assert jacobian_determinant(u * lim * 0.999).min() > 0.1
    assert jacobian_determinant(u * lim * 1.001).min() < 0.1


def test_kept_fields_give_bitwise_the_same_pairs_and_are_drawn_once(monkeypatch):
    """``keep_fields``: the first pairs' fields stay in memory up to the budget, every batch is
    bitwise what a dataset without it gives, a kept field is drawn once, and what a caller gets
    is its own array (changing it changes nothing kept)."""
    import regnp.data.datasets as D
    fresh = load_dataset("phantom-svf", "train", size=64, sigma=10.0, n_pairs=6)
    kept = load_dataset("phantom-svf", "train", size=64, sigma=10.0, n_pairs=6)
    per_pair = 2 * 64 * 64 * 4
    assert kept.keep_fields(4 * per_pair + 7) == 4          # the budget holds 4 of the 6 fields
    calls = []
    real = D.random_field
    monkeypatch.setattr(D, "random_field", lambda *a, **k: calls.append(1) or real(*a, **k))
    order = [0, 5, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 5, 0]
    for i in order:
        a, b = fresh.batch([i]), kept.batch([i])
        for key in ("fixed", "moving", "fixed_mask", "moving_mask", "u"):
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (i, key)
    n_fresh = len(order)                                   # the plain dataset draws every time
    # kept: pairs 0, 5, 1, 2 on first sight (the budget's 4), then 3 and 4 every time
    assert len(calls) == n_fresh + 4 + order.count(3) + order.count(4)
    assert sorted(kept._kept) == [0, 1, 2, 5]
    item = kept[0]
    item["u"][...] = 99.0
    assert np.array_equal(kept[0]["u"], fresh[0]["u"])
    assert kept.keep_fields(0) == 0 and kept[1]["u"].flags.writeable


def test_training_keeps_the_fields_it_draws_and_learns_the_same(tmp_path, monkeypatch):
    """A short training run with the fields kept learns exactly what one without learns (the
    batches are bitwise equal), and its training set did keep them."""
    import regnp.train as T
    from regnp.config import make_config
    cfg = make_config(model="vm2", dataset="phantom-svf", size=32, sigma=10.0, pairs=3,
                      enc="4,4,4,4", dec="4,4,4,4,4,4,4")
    seen, hist = {}, {}
    real_build = T._Run._build

    def build(self, *a, **k):
        real_build(self, *a, **k)
        seen[T.KEEP_FIELDS_BYTES] = self.train_ds

    monkeypatch.setattr(T._Run, "_build", build)
    for budget in (0, 2 ** 20):
        monkeypatch.setattr(T, "KEEP_FIELDS_BYTES", budget)
        res = T.train(dict(cfg), 6, tmp_path / f"keep{budget}", save_every=100, val_every=0,
                      log_every=1, progress=False)
        hist[budget] = [h["loss"] for h in res["history"]]
    assert len(hist[0]) == 6 and hist[0] == hist[2 ** 20]
    assert seen[0]._keep_max == 0 and not seen[0]._kept
    assert seen[2 ** 20]._keep_max == 3 and sorted(seen[2 ** 20]._kept) == [0, 1, 2]
