"""Whole-model gradient checks through the full objective (float64, tiny widths, 32×32 inputs),
and model behaviour. Each model's loss — similarity, regulariser and its own penalty — is
differentiated by hand; here central differences check the result on sampled parameters."""
import numpy as np
import pytest

from regnp.models import Objective, build_model

from model_helpers import check_model_gradients, liven_heads
from model_helpers import smooth_pair as pair

TINY = dict(enc=(4, 4, 4), seed=0, dtype=np.float64)
CONFIGS = {
    "vm2": dict(dec=(4, 4, 4, 4, 3)),
    "vm1": dict(dec=(4, 4, 4, 3)),
    "metareg": dict(dec=(4, 4, 4, 4, 3), kernel_size=5),
    "metareg-psd-perchannel": dict(dec=(4, 4, 4, 4, 3), kernel_size=5, param="psd", shared=False),
    "metareg-paper-form": dict(dec=(4, 4, 4, 4, 3), kernel_size=5, normalize="none",
                               trace="linear"),
    "ablated": dict(dec=(4, 4, 4, 4, 3), kernel_size=5),
    "ablated-nofilter": dict(dec=(4, 4, 4, 4, 3), filter=False),
    "rkhs-exact": dict(dec=(4, 4, 4, 4, 3), kernel_width=2.0, gram="exact"),
    "rkhs-conv13": dict(dec=(4, 4, 4, 4, 3), kernel_width=2.0, gram="conv13"),
    "rkhs-fft-matern": dict(dec=(4, 4, 4, 4, 3), kernel="matern32", kernel_width=2.0),
}


def make(name, cfg):
    model = build_model(name.split("-")[0], **TINY, **cfg)
    return liven_heads(model, lambda n: n.endswith("flow"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("sim", ["mse", "ncc"])
def test_model_gradients_through_objective(name, sim):
    model = make(name, CONFIGS[name])
    rho = (0.0, 0.0) if name.startswith("ablated") else (10.0, 1e-2)
    obj = Objective(sim=sim, lam=0.3, rho1=rho[0], rho2=rho[1])
    F, M = pair()
    model.zero_grad()
    terms, warped, u = obj(model, F, M)
    assert np.isfinite(terms["loss"]) and u.shape == (2, 2, 32, 32)
    # MSE: every parameter array; NCC (same backward path after the loss): a representative few.
    # >= 8 entries per array (all of a small one), the array's corners among them.
    keys = ("enc.0.", "ups.0.", "dec_tail.0.", "flow.", "meta.")
    select = None if sim == "mse" else (lambda pname: any(k in pname for k in keys))
    errors = check_model_gradients(model, lambda: obj(model, F, M, backward=False)[0]["loss"], select=select)
    assert errors
    for pname, err in errors.items():
        assert err < 1e-5, f"{name}/{sim}: {pname} relative error {err:.2e}"
    # the differences above used the terms without the backward pass: the same loss
    assert obj(model, F, M, backward=False)[0]["loss"] == terms["loss"]


def test_vm1_upsamples_and_scales_half_resolution_flow():
    model = make("vm1", CONFIGS["vm1"])
    F, M = pair()
    _, u, extras = model.forward(F, M)
    half = extras["half_flow"]
    assert half.shape == (2, 2, 16, 16) and u.shape == (2, 2, 32, 32)
    # a constant half-resolution shift of s coarse pixels is 2s fine pixels
    c = np.full_like(half, 0.75)
    from regnp.ops.pool import upsample_bilinear2x_forward
    np.testing.assert_allclose(2 * upsample_bilinear2x_forward(c)[0], 1.5)


def test_metareg_filter_is_applied_to_unet_output():
    model = make("metareg", CONFIGS["metareg"])
    F, M = pair()
    _, u, extras = model.forward(F, M)
    from regnp.ops.depthwise import depthwise_conv2d_forward
    K = model.meta.effective_filter()
    np.testing.assert_allclose(u, depthwise_conv2d_forward(extras["raw"], K)[0], atol=1e-12)


def test_bad_pairs_are_explained():
    model = build_model("vm2", seed=0)
    a = np.zeros((1, 1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="not divisible by 2\\^4 = 16"):
        model.forward(np.zeros((1, 1, 60, 64), np.float32), np.zeros((1, 1, 60, 64), np.float32))
    with pytest.raises(ValueError, match="shape"):
        model.forward(a, np.zeros((1, 1, 64, 32), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        model.forward(a, a.astype(np.float64))
    with pytest.raises(ValueError, match="single-channel"):
        model.forward(np.zeros((1, 3, 64, 64), np.float32), np.zeros((1, 3, 64, 64), np.float32))
    bad = a.copy()
    bad[0, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.forward(bad, a)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("transmorph")
    with pytest.raises(ValueError, match="similarity"):
        Objective(sim="mi")


def test_rkhs_net_exact_equals_dense_gram_and_conv13_approximates_it():
    """u = c K α with the Kronecker form equals the dense Gram matvec; the 13×13 form is close
    for a narrow kernel (σ = 2 px: the window holds ±3σ) and exact in the interior pixels whose
    13×13 neighbourhood covers all the kernel mass that matters."""
    from regnp.rkhs.gram import gram_matrix
    F, M = pair(shape=(1, 1, 32, 32))
    exact = make("rkhs-exact", CONFIGS["rkhs-exact"])
    approx = make("rkhs-conv13", CONFIGS["rkhs-conv13"])
    approx.load_state_dict(exact.state_dict())
    _, u, ex = exact.forward(F, M)
    K = gram_matrix(exact.kernel, (32, 32))
    c = 1.0 / exact.kernel.stencil(32, 32).sum()
    alpha = ex["alpha"][0].reshape(2, -1)
    np.testing.assert_allclose(u[0].reshape(2, -1), c * alpha @ K.T, rtol=1e-10, atol=1e-12)
    _, u13, _ = approx.forward(F, M)
    rel = np.linalg.norm(u13[..., 8:-8, 8:-8] - u[..., 8:-8, 8:-8]) / np.linalg.norm(u[..., 8:-8, 8:-8])
    assert rel < 1e-3
