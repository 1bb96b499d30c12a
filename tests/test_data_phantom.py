"""Phantom: determinism, label sanity, anatomy in the right place, any size, bad inputs."""
import numpy as np
import pytest

from regnp.data.deform import foreground_mask
from regnp.data.phantom import PHANTOM_LABELS, make_phantom, phantom_set


def test_same_seed_same_subject_and_different_seeds_differ():
    a_img, a_lab = make_phantom(3)
    b_img, b_lab = make_phantom(3)
    c_img, c_lab = make_phantom(4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)
    assert np.abs(a_img - c_img).mean() > 0.02


def test_types_ranges_and_label_values():
    img, lab = make_phantom(0)
    assert img.shape == (256, 256) and img.dtype == np.float32
    assert lab.shape == (256, 256) and lab.dtype == np.uint8
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4} == {0, *PHANTOM_LABELS}


@pytest.mark.parametrize("seed", [0, 7, 123])
def test_label_sanity_areas_positions_and_inside_body(seed):
    img, lab = make_phantom(seed)
    H, W = lab.shape
    frac = {l: (lab == l).mean() for l in range(1, 5)}
    assert 0.05 < frac[1] < 0.25          # liver: the largest organ
    for l in (2, 3, 4):
        assert 0.005 < frac[l] < 0.05
    assert frac[1] > max(frac[2], frac[3], frac[4])
    cx = {l: np.nonzero(lab == l)[1].mean() for l in range(1, 5)}
    # radiological display: liver and right kidney on the image left, spleen and left kidney right
    assert cx[1] < W / 2 and cx[2] < W / 2 and cx[4] > W / 2 and cx[3] > W / 2
    # every labelled pixel lies inside the body
    body = foreground_mask(img)
    assert body[lab > 0].all()
    # contrast as in T2-SPIR: spleen and kidneys brighter than liver
    mean = {l: img[lab == l].mean() for l in range(1, 5)}
    assert mean[4] > mean[1] + 0.1 and mean[2] > mean[1] + 0.1


def test_subject_variation_in_size_and_position():
    labs = [make_phantom(s, shape=96)[1] for s in range(6)]
    areas = np.array([(l == 1).sum() for l in labs])
    cys = np.array([np.nonzero(l == 4)[0].mean() for l in labs])
    assert areas.std() / areas.mean() > 0.03
    assert cys.std() > 1.0


def test_any_size_non_square_and_no_noise_is_piecewise_smooth():
    img, lab = make_phantom(1, shape=(96, 130))
    assert img.shape == lab.shape == (96, 130)
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    clean, _ = make_phantom(1, shape=(96, 130), noise=0, bias=0, texture=0)
    # without noise the background is exactly zero
    assert clean[0, 0] == 0.0


def test_phantom_set_shapes():
    imgs, labs = phantom_set(2, shape=64, first_seed=5)
    assert imgs.shape == (2, 1, 64, 64) and labs.shape == (2, 1, 64, 64)
    assert np.array_equal(labs[1, 0], make_phantom(6, 64)[1])


@pytest.mark.parametrize("kwargs, err, frag", [
    (dict(shape=16), ValueError, "too small"),
    (dict(shape=(64, 64, 1)), ValueError, "pair (H, W)"),
    (dict(noise=-1.0), ValueError, "noise must be"),
    (dict(bias=float("nan")), ValueError, "bias must be"),
    (dict(seed=1.5), TypeError, "seed must be an integer"),
])
def test_bad_inputs(kwargs, err, frag):
    with pytest.raises(err, match=frag.replace("(", r"\(").replace(")", r"\)")):
        make_phantom(**kwargs)


def test_a_subject_drawn_again_is_the_same_and_a_fresh_copy():
    img, lab = make_phantom(11, (64, 48))
    img[:] = 0                                         # the caller owns what it got
    lab[:] = 0
    img2, lab2 = make_phantom(11, (64, 48))
    assert img2.max() > 0.5 and lab2.max() == 4
    from regnp.data import phantom
    phantom._DRAWN.clear()                             # drawn afresh: the same subject
    img3, lab3 = make_phantom(11, (64, 48))
    np.testing.assert_array_equal(img3, img2)
    np.testing.assert_array_equal(lab3, lab2)
