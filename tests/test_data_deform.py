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
    """Documented (README 'Data'): σ = 10 moderate, σ = 16 clearly harder, never folding."""
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
    """The calibration the README reports (80 fixed test pairs); a subset keeps the test fast."""
    out = {}
    for sig in (10, 16):
        ds = load_dataset("chaos", "test", data_root=data_root, sigma=sig, n_pairs=40)
        out[sig] = describe(ds)
        assert out[sig]["field"]["pct_folded"][1] == 0.0
    assert 0.70 < out[10]["dice_before"][0] < 0.85
    assert 0.55 < out[16]["dice_before"][0] < 0.72
