"""Beyond the paper: diffeomorphic models (--integrate), the bidirectional loss (--bidir) and
segmentation supervision (--seg-weight). Whole-model float64 gradient checks through the
Objective (batch 2, a non-square 24×32 grid), and behaviour with answers known in advance."""
import numpy as np
import pytest

from regnp.metrics import jacobian_determinant
from regnp.models import Objective, build_model
from regnp.ops.integrate import integrate_velocity_forward
from regnp.ops.warp import warp_forward

from model_helpers import check_model_gradients, liven_heads
from model_helpers import smooth_pair as pair

TINY = dict(enc=(4, 4, 4), seed=0, dtype=np.float64)
DECS = {"vm2": (4, 4, 4, 4, 3), "vm1": (4, 4, 4, 3), "metareg": (4, 4, 4, 4, 3)}
SHAPE = (2, 1, 24, 32)


def make(name, integrate=3, int_downsize=2, **kw):
    extra = dict(kernel_size=5) if name == "metareg" else {}
    model = build_model(name, dec=DECS[name], integrate=integrate, int_downsize=int_downsize,
                        **TINY, **extra, **kw)
    return liven_heads(model, lambda n: n.endswith("flow"))


def label_maps(F, M):
    """Two-label maps (1 and 4) cut from the smooth images by thresholds."""
    def cut(img):
        return (1 * (img > 0.62) + 4 * (img < 0.35)).astype(np.uint8)
    return cut(F), cut(M)


def off_the_kinks(model, F, M, margin=2e-4):
    """Bilinear warping has a kink wherever a sample point crosses a pixel line (an integer u
    entry). For images the slope changes little there, but a one-hot label map jumps from 0 to 1,
    so a central difference that straddles a kink is off by O(1) (measured: an entry 1.7e-6 from
    an integer gave 0.11 at h = 1e-5 and 1e-8 at h = 1e-6). Shift the flow head's bias until
    every entry of u is at least ``margin`` from an integer."""
    bias = [m.params["b"] for name, m in model.modules() if name.endswith("flow")][0]
    for step in range(50):
        _, u, _ = model.forward(F, M)
        if np.abs(u - np.round(u)).min() > margin:
            return model
        bias += 0.0137
    raise AssertionError("could not move u off the integers")


def assert_gradients(model, obj, F, M, masks=(None, None), select=None):
    model.zero_grad()
    terms, _, u = obj(model, F, M, *masks)
    assert np.isfinite(terms["loss"]) and u.shape == (2, 2) + F.shape[2:]
    errors = check_model_gradients(model, lambda: obj(model, F, M, *masks, backward=False)[0]["loss"],
                                   select=select)
    assert errors
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-5, f"{worst}: relative error {errors[worst]:.2e}"
    return errors


# ------------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("name,int_downsize", [("vm2", 2), ("vm1", 2), ("metareg", 2),
                                               ("metareg", 1)])
def test_diffeomorphic_model_gradients(name, int_downsize):
    """Every parameter array, through U-Net (→ filter) → integration → warp, with R on v."""
    model = make(name, int_downsize=int_downsize)
    obj = Objective(sim="mse", lam=0.3, rho1=10.0 if name == "metareg" else 0.0, rho2=1e-2)
    F, M = pair(shape=SHAPE)
    assert_gradients(model, obj, F, M)


@pytest.mark.parametrize("name", ["vm2", "metareg"])
def test_bidirectional_gradients(name):
    """½ [S(F, M∘φ) + S(M, F∘φ⁻¹)]: the inverse path (integrate −v, warp F) is checked too."""
    model = make(name)
    obj = Objective(sim="ncc", lam=0.3, rho1=10.0 if name == "metareg" else 0.0, rho2=1e-2,
                    bidir=True)
    F, M = pair(shape=SHAPE)
    assert_gradients(model, obj, F, M)


@pytest.mark.parametrize("name,integrate", [("vm2", 0), ("metareg", 0), ("metareg", 3)])
def test_segmentation_supervised_gradients(name, integrate):
    """+ w·soft Dice(one_hot(M_seg)∘u, one_hot(F_seg)) over labels 1 and 4, with and without
    integration (and bidir on top of it)."""
    model = make(name, integrate=integrate)
    obj = Objective(sim="mse", lam=0.3, rho1=10.0 if name == "metareg" else 0.0, rho2=1e-2,
                    seg_weight=0.7, seg_labels=(1, 4), bidir=bool(integrate))
    F, M = pair(shape=SHAPE)
    masks = label_maps(F, M)
    off_the_kinks(model, F, M)
    model.zero_grad()
    terms = obj(model, F, M, *masks)[0]
    assert 0 < terms["seg"] < 1
    assert_gradients(model, obj, F, M, masks)


def test_seg_term_gradient_equals_the_difference_of_two_objectives():
    """The seg part alone: gradients with seg_weight minus without = seg_weight × dD/dθ, and the
    loss grows by seg_weight × D."""
    model = make("vm2", integrate=0)
    F, M = pair(shape=SHAPE)
    masks = label_maps(F, M)
    grads = []
    for w in (0.0, 2.0):
        model.zero_grad()
        kw = dict(seg_weight=w, seg_labels=(1, 4)) if w else {}
        terms = Objective(lam=0.1, rho1=0, rho2=0, **kw)(model, F, M, *masks)[0]
        grads.append(({n: g.copy() for n, _, g in model.named_parameters()}, terms))
    (g0, t0), (g1, t1) = grads
    assert t1["loss"] == pytest.approx(t0["loss"] + 2.0 * t1["seg"], rel=1e-12)
    assert any(np.abs(g1[n] - g0[n]).max() > 0 for n in g0)


# ------------------------------------------------------------------------ behaviour
def test_options_record_integration_only_when_on():
    plain = build_model("vm2", seed=0)
    assert "integrate" not in plain.options and plain.integrate == 0
    diffeo = build_model("metareg", seed=0, integrate=7)
    assert diffeo.options["integrate"] == 7 and diffeo.options["int_downsize"] == 2
    assert Objective().options() == Objective(bidir=False, seg_weight=0.0).options()
    assert "bidir" not in Objective().options() and "seg_weight" not in Objective().options()


def test_forward_integrates_the_network_field():
    """u is exactly exp(v) of the velocity the network predicts, warped = M∘u."""
    model = make("metareg", integrate=4)
    F, M = pair(shape=SHAPE)
    warped, u, extras = model.forward(F, M)
    v = extras["velocity"]
    np.testing.assert_array_equal(u, integrate_velocity_forward(v, 4, 2)[0])
    np.testing.assert_array_equal(warped, warp_forward(M, u)[0])
    assert not np.allclose(u, v)


def test_inverse_composes_to_the_identity():
    """φ⁻¹ = exp(−v) undoes φ = exp(v): u(p) + u_inv(p + u(p)) ≈ 0 inside the image, while
    −u (the naive inverse of a displacement) is off by ten times more. The network's velocity
    (~5 px) would fold as a displacement; its exponential does not."""
    model = make("vm2", integrate=7, int_downsize=1)
    F, M = pair(shape=(2, 1, 48, 64))
    model.unet.flow.params["w"][...] *= 2.0
    _, u, extras = model.forward(F, M)
    _, u_inv = model.inverse_forward(F)
    inside = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    residual = u + warp_forward(u_inv, u)[0]              # displacement of φ⁻¹∘φ
    naive = u + warp_forward(-u, u)[0]
    assert np.abs(u[inside]).max() > 2.0
    assert np.abs(residual[inside]).max() < 0.15
    assert np.abs(residual[inside]).max() < 0.15 * np.abs(naive[inside]).max()
    assert jacobian_determinant(extras["velocity"]).min() < 0 < jacobian_determinant(u).min()


def test_perfect_overlap_scores_zero_seg_loss():
    model = build_model("vm2", seed=0, dtype=np.float64)   # flow ≈ 1e-5 px: u ≈ 0
    F, M = pair(shape=(2, 1, 32, 32))
    masks = label_maps(F, F)
    terms = Objective(seg_weight=1.0, seg_labels=(1, 4))(model, F, M, *masks)[0]
    assert terms["seg"] < 1e-4


def test_bad_options_are_explained():
    F, M = pair(shape=(2, 1, 32, 32))
    plain = build_model("vm2", seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match="bidir needs a diffeomorphic model"):
        Objective(bidir=True)(plain, F, M)
    with pytest.raises(ValueError, match="integrate > 0"):
        plain.inverse_forward(F)
    with pytest.raises(ValueError, match="needs label maps"):
        Objective(seg_weight=1.0, seg_labels=(1,))(plain, F, M)
    with pytest.raises(ValueError, match="needs seg_labels"):
        Objective(seg_weight=1.0)
    with pytest.raises(ValueError, match="seg_weight must be a finite number"):
        Objective(seg_weight=-1.0, seg_labels=(1,))
    with pytest.raises(ValueError, match="distinct label values"):
        Objective(seg_weight=1.0, seg_labels=(1, 1))
    with pytest.raises(ValueError, match="integrate must be an integer"):
        build_model("vm2", integrate=-1)
    with pytest.raises(ValueError, match="int_downsize must be 1"):
        build_model("metareg", integrate=7, int_downsize=4)


def test_tiny_trained_diffeomorphic_model_does_not_fold(tmp_path):
    """A tiny Meta-Reg trained briefly with a weak regulariser on large deformations (σ = 24):
    as a displacement its predicted fields fold (measured: 99.66 % of det > 0, min det −0.48);
    with --integrate 7 every Jacobian determinant is positive (the velocity may be rough, exp(v)
    still does not fold)."""
    from regnp.data import load_dataset
    from regnp.evaluate import evaluate_pairs
    from regnp.train import config_from_args, parse_args, train
    ds = load_dataset("phantom", "train", size=32, sigma=24, n_pairs=16)
    b = ds.batch(range(8))
    got = {}
    for steps in ("0", "7"):
        args = ["--size", "32", "--enc", "4,8", "--dec", "8,8,8,8", "--kernel-size", "5",
                "--pairs", "16", "--sigma", "24", "--lr", "5e-3", "--lambda", "0.001",
                "--integrate", steps]
        res = train(config_from_args(parse_args(args)), 60, tmp_path / steps, save_every=60,
                    val_every=0, progress=False)
        recs = evaluate_pairs(res["model"], ds, range(8))
        _, u, _ = res["model"].forward(b["fixed"], b["moving"])
        got[steps] = (np.mean([r["pct_positive_jacobian"] for r in recs]),
                      jacobian_determinant(u).min(), np.abs(u).max())
    assert got["0"][1] < 0 and got["0"][0] < 99.95, got           # the displacement folds
    assert got["7"][0] == 100.0 and got["7"][1] > 0, got          # exp(v) does not
    assert got["7"][2] > 1.0, got                                 # and it does move things
