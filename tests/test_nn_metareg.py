"""The meta-regularization layer: gradients through every parametrisation, and its promises."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.nn.metareg import MetaRegConv, gaussian_stencil
from regnp.rkhs.reduced import filter_diagnostics

OPTIONS = [(shared, param, norm) for shared in (True, False) for param in ("free", "psd")
           for norm in ("unit_sum", "none")]
TRACE = {"unit_sum": "hinge", "none": "linear"}       # our default, and the paper's exact form


def perturbed(layer, rng, scale=0.05):
    for _, p, _ in layer.named_parameters():
        p += scale * rng.standard_normal(p.shape)
    return layer


@pytest.mark.parametrize("shared,param,norm", OPTIONS)
def test_forward_backward_and_penalty_gradients(shared, param, norm):
    rng = np.random.default_rng(0)
    layer = perturbed(MetaRegConv(k=5, shared=shared, param=param, normalize=norm,
                                  trace=TRACE[norm], dtype=np.float64), rng)
    g = rng.standard_normal((2, 2, 9, 7))
    u = layer.forward(g)
    dout = rng.standard_normal(u.shape)
    layer.zero_grad()
    dg = layer.backward(dout)
    assert check_vjp(lambda: layer.forward(g), g, dg, dout, max_entries=40) < 1e-6
    name = "K" if param == "free" else "U"
    p, grad = layer.params[name], layer.grads[name]
    assert check_vjp(lambda: layer.forward(g), p, grad, dout, max_entries=40) < 1e-6
    # the penalty's gradient, through the same normalisation / factorisation
    layer.zero_grad()
    layer.penalty(10.0, 1e-2)
    grad = layer.grads[name].copy()
    err = check_vjp(lambda: np.array(layer.penalty(10.0, 1e-2)[0]), p, grad, np.array(1.0),
                    max_entries=40)
    assert err < 1e-6


def test_gaussian_init_is_radially_symmetric_psd_unit_sum():
    for param in ("free", "psd"):
        layer = MetaRegConv(k=13, param=param, dtype=np.float64)
        K = layer.effective_filter()[0]
        np.testing.assert_allclose(K, gaussian_stencil(13, 2.0), atol=1e-12)
        d = filter_diagnostics(K)
        assert abs(d.sum - 1) < 1e-12 and d.transpose_asym < 1e-12 and d.antidiag_asym < 1e-12
        assert d.radial_asym < 1e-12 and d.rank == 1          # separable: an outer product
        assert d.eig_min > -1e-12 and d.psd_matrix            # PSD as a 13×13 matrix ...
        # ... but truncating a Gaussian (σ = 2 px) at ±6 px ripples its spectrum: as a
        # convolution *operator* it is marginally indefinite (min of the 2-D DFT ≈ −7.5e-4).
        assert -1e-3 < d.symbol_min < 0 and not d.psd_operator
        value, parts = layer.penalty(10.0, 0.0)
        assert abs(value) < 1e-20 and parts["sym"] < 1e-20 and parts["antisym"] < 1e-20


def test_delta_init_is_identity():
    layer = MetaRegConv(k=13, init="delta", dtype=np.float64)
    d = layer.diagnostics()[0]
    assert d.symbol_min == pytest.approx(1.0) and d.eig_min == pytest.approx(0.0)
    g = np.random.default_rng(0).standard_normal((2, 2, 16, 16))
    np.testing.assert_allclose(layer.forward(g), g, atol=1e-12)


def test_unit_sum_removes_the_free_scale_direction():
    """The paper's form lets the U-Net absorb a filter rescale K -> cK by emitting g/c: the field
    u is unchanged while the trace reward falls linearly in c, without bound (the blow-up seen in
    a reference run). With ``unit_sum`` the applied filter always has sum 1, so that trade does
    not exist: rescaling the raw parameters either leaves the applied filter unchanged (PSD,
    divided by its sum) or changes u (free filter, projected), never both."""
    rng = np.random.default_rng(1)
    g = rng.standard_normal((2, 2, 12, 10))
    paper = MetaRegConv(k=7, normalize="none", trace="linear", dtype=np.float64)
    u = paper.forward(g)
    v1 = paper.penalty(10.0, 1e-3)[0]
    for c in (2.0, 10.0):
        paper.params["K"] *= c
        np.testing.assert_allclose(paper.forward(g / c), u, atol=1e-12)
        v2 = paper.penalty(10.0, 1e-3)[0]
        assert v2 < v1 - 1e-4
        v1 = v2
        paper.params["K"] /= c

    for param in ("free", "psd"):
        layer = perturbed(MetaRegConv(k=7, param=param, dtype=np.float64), rng, 0.02)
        name = "K" if param == "free" else "U"
        u = layer.forward(g)
        v1 = layer.penalty(10.0, 1e-3)[0]
        assert abs(layer.effective_filter().sum() - 1) < 1e-12
        layer.params[name] *= 3.0
        assert abs(layer.effective_filter().sum() - 1) < 1e-12
        same_u = np.allclose(layer.forward(g / 3.0), u, atol=1e-9)
        lower = layer.penalty(10.0, 1e-3)[0] < v1 - 1e-9
        assert not (same_u and lower)


def test_psd_parametrisation_stays_psd():
    layer = perturbed(MetaRegConv(k=9, param="psd", shared=False, dtype=np.float64),
                      np.random.default_rng(2), 0.5)
    for d in layer.diagnostics():
        assert d.eig_min > -1e-10 and d.psd_matrix


def test_hinge_trace_is_bounded_below_linear_is_not():
    """With the default hinge, the penalty of a filter with non-negative traces is its symmetry
    error alone (>= 0); with the linear reward, moving weight onto the diagonals at fixed unit
    sum lowers it without bound."""
    k = 7
    X = np.eye(k) + np.eye(k)[::-1]
    shape = X / X.sum() - 1.0 / k ** 2                       # zero-sum, weight on the diagonals
    for trace, bounded in (("hinge", True), ("linear", False)):
        layer = MetaRegConv(k=k, trace=trace, dtype=np.float64)
        base = layer.params["K"].copy()
        vals = []
        for t in (0.0, 10.0, 100.0):
            layer.params["K"][...] = base + t * shape
            vals.append(layer.penalty(10.0, 1e-2)[0])
        if bounded:
            assert min(vals) >= 0
        else:
            assert vals[2] < vals[1] < vals[0] < 0


def test_bad_options():
    with pytest.raises(ValueError, match="odd"):
        MetaRegConv(k=12)
    with pytest.raises(ValueError, match="param"):
        MetaRegConv(param="cholesky")
    with pytest.raises(ValueError, match="normalize"):
        MetaRegConv(normalize="l2")
    with pytest.raises(ValueError, match="trace"):
        MetaRegConv(trace="abs")
