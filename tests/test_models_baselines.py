"""The two remaining baselines, DIRNet and FCN-SS: whole-model gradient checks through the
Objective (float64, tiny widths, 32×32, batch 2, MSE and NCC — FCN-SS's coarse-scale terms
included), shapes, the B-spline decoder inside DIRNet, FCN-SS's auxiliary losses, and errors."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.models import Objective, build_model
from regnp.ops.pool import avgpool2x2_backward, avgpool2x2_forward
from regnp.ops.bspline import bspline_upsample_forward
from regnp.ops.warp import warp_forward

from model_helpers import check_model_gradients, liven_heads
from model_helpers import smooth_pair as pair

CONFIGS = {
    "dirnet": dict(widths=(3, 4, 4), head=(4,)),                       # spacing 8: 4×4 grid
    "dirnet-clamp-spacing4": dict(widths=(3, 4), head=(4, 3), spacing=4, border="clamp"),
    "fcnss": dict(enc=(3, 4, 4), dec=(4, 4, 3)),                       # fields at 8, 16, 32
    "fcnss-2scales-noauxreg": dict(enc=(3, 4, 4), dec=(4, 4, 3), scales=2, aux_weights=(0.7,),
                                   aux_reg=False),
}


def make(name, cfg, dtype=np.float64):
    model = build_model(name.split("-")[0], seed=0, dtype=dtype, **cfg)
    return liven_heads(model, lambda n: n == "grid" or n.startswith("flows."))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("sim", ["mse", "ncc"])
def test_model_gradients_through_objective(name, sim):
    model = make(name, CONFIGS[name])
    obj = Objective(sim=sim, lam=0.3)
    F, M = pair()
    model.zero_grad()
    terms, warped, u = obj(model, F, M)
    assert np.isfinite(terms["loss"]) and u.shape == (2, 2, 32, 32)
    keys = ("enc.0.", "head.0.", "grid.", "ups.0.", "dec.1.", "flows.")
    select = None if sim == "mse" else (lambda pname: any(k in pname for k in keys))
    errors = check_model_gradients(model, lambda: obj(model, F, M, backward=False)[0]["loss"], select=select)
    assert errors
    for pname, err in errors.items():
        assert err < 1e-5, f"{name}/{sim}: {pname} relative error {err:.2e}"


def test_avgpool_helper_gradient():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 4))
    out, cache = avgpool2x2_forward(x)
    np.testing.assert_allclose(out, x.reshape(2, 3, 3, 2, 2, 2).mean(axis=(3, 5)), atol=1e-15)
    dout = rng.standard_normal(out.shape)
    dx = avgpool2x2_backward(dout, cache)
    assert check_vjp(lambda: avgpool2x2_forward(x)[0], x, dx, dout) < 1e-6


# ----------------------------------------------------------------------------------- DIRNet ---
def test_dirnet_decodes_its_control_grid_with_the_bspline():
    model = make("dirnet", CONFIGS["dirnet"])
    F, M = pair()
    warped, u, extras = model.forward(F, M)
    c = extras["grid"]
    assert model.spacing == 8 and c.shape == (2, 2, 4, 4)
    np.testing.assert_allclose(u, bspline_upsample_forward(c, 8, "linear")[0], atol=1e-13)
    np.testing.assert_allclose(warped, warp_forward(M, u)[0], atol=1e-13)


def test_dirnet_constant_grid_gives_a_constant_field():
    # zero weights in the 1×1 grid conv: every control point = the bias → u = bias everywhere
    model = build_model("dirnet", widths=(3, 4, 4), head=(4,), seed=0, dtype=np.float64)
    model.grid.params["w"][...] = 0
    model.grid.params["b"][...] = [1.5, -0.25]
    F, M = pair()
    _, u, _ = model.forward(F, M)
    np.testing.assert_allclose(u[:, 0], 1.5, atol=1e-13)
    np.testing.assert_allclose(u[:, 1], -0.25, atol=1e-13)


def test_dirnet_spacing_option_and_rebuild():
    m = build_model("dirnet", widths=(8, 16), spacing=16, seed=0, dtype=np.float64)
    assert m.levels == 4 and m.options["widths"] == [8, 16, 16, 16]
    F, M = pair()
    _, u, extras = m.forward(F, M)
    assert extras["grid"].shape == (2, 2, 2, 2) and u.shape == (2, 2, 32, 32)
    again = build_model("dirnet", **m.options, seed=0, dtype=np.float64)
    for (n1, p1, _), (n2, p2, _) in zip(m.named_parameters(), again.named_parameters()):
        assert n1 == n2 and np.array_equal(p1, p2)
    with pytest.raises(ValueError, match="power of two"):
        build_model("dirnet", spacing=12)


def test_dirnet_bad_sizes_are_explained():
    m = build_model("dirnet", seed=0)                       # spacing 8
    with pytest.raises(ValueError, match="not divisible by 2\\^3 = 8"):
        m.forward(np.zeros((1, 1, 36, 32), np.float32), np.zeros((1, 1, 36, 32), np.float32))
    with pytest.raises(ValueError, match="at least 2 control points"):
        m.forward(np.zeros((1, 1, 8, 32), np.float32), np.zeros((1, 1, 8, 32), np.float32))
    with pytest.raises(ValueError, match="border must be one of"):
        build_model("dirnet", border="zero")


# ----------------------------------------------------------------------------------- FCN-SS ---
def test_fcnss_fields_at_every_scale_and_aux_terms():
    model = make("fcnss", CONFIGS["fcnss"])
    F, M = pair()
    lam = 0.3
    obj = Objective(sim="mse", lam=lam)
    _, u, extras = model.forward(F, M)
    assert u.shape == (2, 2, 32, 32)
    assert extras["flow_s1"].shape == (2, 2, 16, 16) and extras["flow_s2"].shape == (2, 2, 8, 8)
    terms, dextras = model.aux_loss(F, M, extras, obj)
    assert set(terms) == {"sim_s1", "reg_s1", "sim_s2", "reg_s2"}
    assert set(dextras) == {"flow_s1", "flow_s2"}
    # recompute scale 1 by hand: 2×2 mean-pooled images, the coarse field in coarse pixels
    F1 = F.reshape(2, 1, 16, 2, 16, 2).mean(axis=(3, 5))
    M1 = M.reshape(2, 1, 16, 2, 16, 2).mean(axis=(3, 5))
    w1 = warp_forward(M1, extras["flow_s1"])[0]
    assert terms["sim_s1"] == pytest.approx(0.5 * np.mean((w1 - F1) ** 2), rel=1e-12)
    assert terms["reg_s1"] == pytest.approx(0.5 * lam * obj.regularizer(extras["flow_s1"])[0],
                                            rel=1e-12)
    # the Objective adds them to the loss as they are
    model.zero_grad()
    full, _, _ = obj(model, F, M)
    aux = sum(full[k] for k in ("sim_s1", "reg_s1", "sim_s2", "reg_s2"))
    assert full["loss"] == pytest.approx(full["sim"] + lam * full["reg"] + aux, rel=1e-12)


def test_fcnss_zero_aux_weights_leave_coarse_heads_without_gradient():
    model = make("fcnss", dict(CONFIGS["fcnss"], aux_weights=(0.0, 0.0)))
    F, M = pair()
    model.zero_grad()
    terms, _, _ = Objective(sim="mse", lam=0.3)(model, F, M)
    assert terms["sim_s1"] == 0 and terms["reg_s2"] == 0
    assert not model.flows[0].grads["w"].any() and not model.flows[1].grads["w"].any()
    assert model.flows[2].grads["w"].any()


def test_fcnss_plain_backward_without_aux_gradients():
    # forward/backward outside the Objective (no dextras): coarse heads are simply skipped
    model = make("fcnss", CONFIGS["fcnss"])
    F, M = pair()
    model.zero_grad()
    warped, u, _ = model.forward(F, M)
    model.backward(np.ones_like(warped), None, None)
    assert model.enc[0].conv.grads["w"].any() and not model.flows[0].grads["w"].any()


def test_fcnss_bad_options_and_sizes_are_explained():
    with pytest.raises(ValueError, match="one width per encoder level"):
        build_model("fcnss", enc=(4, 4, 4), dec=(4, 4))
    with pytest.raises(ValueError, match="scales=4 needs at least 4"):
        build_model("fcnss", enc=(4, 4, 4), dec=(4, 4, 4), scales=4)
    with pytest.raises(ValueError, match="aux_weights must list 2"):
        build_model("fcnss", aux_weights=(0.5,))
    m = build_model("fcnss", seed=0)
    with pytest.raises(ValueError, match="not divisible by 2\\^4 = 16"):
        m.forward(np.zeros((1, 1, 40, 64), np.float32), np.zeros((1, 1, 40, 64), np.float32))


# --------------------------------------------------------------------------- full size --------
@pytest.mark.parametrize("name", ["dirnet", "fcnss"])
def test_default_models_at_256(name):
    model = build_model(name, seed=0)
    rng = np.random.default_rng(0)
    F = rng.random((2, 1, 256, 256), dtype=np.float32)
    M = rng.random((2, 1, 256, 256), dtype=np.float32)
    model.zero_grad()
    terms, warped, u = Objective()(model, F, M)
    assert warped.shape == (2, 1, 256, 256) and u.shape == (2, 2, 256, 256)
    assert warped.dtype == np.float32 and u.dtype == np.float32
    assert np.isfinite(terms["loss"])
    assert np.abs(u).max() < 1e-2                            # near-identity start
    assert all(np.isfinite(g).all() for _, _, g in model.named_parameters())


def test_fcnss_options_rebuild_the_same_model():
    m = build_model("fcnss", enc=(3, 4, 4), dec=(4, 4, 3), scales=2, aux_weights=(0.3,),
                    aux_reg=False, seed=3, dtype=np.float64)
    again = build_model("fcnss", **m.options, seed=3, dtype=np.float64)
    assert again.options == m.options
    for (n1, p1, _), (n2, p2, _) in zip(m.named_parameters(), again.named_parameters()):
        assert n1 == n2 and np.array_equal(p1, p2)
