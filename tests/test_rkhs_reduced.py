"""The reduced K̃ of eq. 9, its claimed properties, operator PSD, and the 13×13 truncation error."""
import math

import numpy as np
import pytest

from regnp.rkhs.kernels import (Gaussian, Wendland, Matern32, Exponential, InverseMultiquadric,
                                StencilKernel)
from regnp.rkhs.gram import gram_matrix, FFTGram
from regnp.rkhs.reduced import (reduced_gram, mid_index, filter_diagnostics, operator_symbol,
                                truncation_error, diagnostics_table)

KERNELS = [Gaussian(3.0), Wendland(6.0), Matern32(4.0), Exponential(3.0), InverseMultiquadric(2.0)]


def test_mid_index():
    assert mid_index(13) == 6 and mid_index(14) == 7 and mid_index(256) == 128


def test_reduced_hand_value_even_grid():
    """4×4 grid: the middle is index 2, so K̃[0, 0] = k(0 − 2, 0 − 2)."""
    k = Exponential(2.0)
    Kt = reduced_gram(gram_matrix(k, (4, 4)), (4, 4))
    assert Kt.shape == (4, 4)
    assert math.isclose(Kt[0, 0], k(-2, -2)) and Kt[2, 2] == 1.0
    assert math.isclose(Kt[3, 1], k(1, -1))


@pytest.mark.parametrize("shape", [(13, 13), (14, 14), (15, 20), (16, 13)], ids=str)
@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k.name)
def test_reduced_equals_stencil_window(k, shape):
    K = gram_matrix(k, shape)
    H, W = shape
    full = reduced_gram(K, shape)
    mr, mc = H // 2, W // 2
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    np.testing.assert_allclose(full, k(rr - mr, cc - mc), rtol=0, atol=1e-15)
    np.testing.assert_allclose(reduced_gram(K, shape, size=13), k.window(13), rtol=0, atol=1e-15)
    # the literal eq. 9 layout (mid-columns of the mid row of blocks) is its transpose
    paper = reduced_gram(K, shape, layout="paper")
    assert paper.shape == (W, H)
    np.testing.assert_array_equal(paper, full.T)
    np.testing.assert_array_equal(reduced_gram(K, shape, size=13, layout="paper"),
                                  reduced_gram(K, shape, size=13).T)


def test_reduced_bad_input():
    K = gram_matrix(Gaussian(2.0), (12, 12))
    with pytest.raises(ValueError, match="does not fit.*at least 13 \\(odd\\) or 14 \\(even\\)"):
        reduced_gram(K, (12, 12), size=13)
    with pytest.raises(ValueError, match=r"needs \(100, 100\)"):
        reduced_gram(K, (10, 10))
    with pytest.raises(ValueError, match="layout"):
        reduced_gram(K, (12, 12), layout="columns")


def test_separable_window_is_rank1_psd_radial():
    g = Gaussian(3.0)
    w = reduced_gram(gram_matrix(g, (14, 14)), (14, 14), size=13)
    f = g.factor(np.arange(-6, 7))
    np.testing.assert_allclose(w, np.outer(f, f), rtol=1e-14)
    d = filter_diagnostics(w)
    assert d.rank == 1 and d.rank1_residual < 1e-12
    assert d.psd_matrix and d.eig_min > -1e-12
    assert math.isclose(d.trace, float(f @ f), rel_tol=1e-12) and d.trace > 0
    assert d.transpose_asym < 1e-15 and d.antidiag_asym < 1e-15 and d.dihedral_asym < 1e-15
    assert d.radial_asym < 1e-12                                         # isotropic Gaussian


def test_nonseparable_window_is_not_rank1():
    for k in KERNELS[1:]:
        d = filter_diagnostics(k.window(13))
        assert d.rank > 1 and d.rank1_residual > 1e-3, k
        assert d.dihedral_asym < 1e-15 and d.radial_asym < 1e-12 and d.trace > 0


def test_matrix_psd_vs_operator_psd_hand_examples():
    # discrete Laplacian 4 - 2cos(wy) - 2cos(wx) >= 0: PSD operator, but as a matrix it has a
    # negative eigenvalue (the 3x3 matrix [[0,-1,0],[-1,4,-1],[0,-1,0]]).
    lap = np.array([[0., -1, 0], [-1, 4, -1], [0, -1, 0]])
    d = filter_diagnostics(lap)
    assert d.psd_operator and abs(d.symbol_min) < 1e-12 and math.isclose(d.symbol_max, 8.0)
    assert not d.psd_matrix and d.eig_min < -0.2
    # a rank-1 PSD matrix whose operator is not PSD: the box [1,1,1]ᵀ[1,1,1]
    box = np.ones((3, 3))
    d = filter_diagnostics(box)
    assert d.psd_matrix and d.rank == 1
    assert not d.psd_operator and math.isclose(d.symbol_min, -3.0, rel_tol=1e-2)
    # delta filter: identity operator, symbol 1 everywhere
    delta = np.zeros((13, 13))
    delta[6, 6] = 1
    d = filter_diagnostics(delta)
    assert d.psd_operator and math.isclose(d.symbol_min, 1) and math.isclose(d.symbol_max, 1)


def test_truncated_gaussian_is_psd_matrix_but_not_psd_operator():
    d = filter_diagnostics(Gaussian(4.0).window(13))
    assert d.psd_matrix and d.rank == 1
    assert not d.psd_operator and d.symbol_min < -1e-3 * d.symbol_max
    # a compactly supported PD kernel that fits the window keeps its operator PSD
    d = filter_diagnostics(Wendland(6.0).window(13))
    assert d.psd_operator and d.symbol_min > 0


def test_symbol_bounds_finite_grid_eigenvalues():
    """The eigenvalues of the filter's Gram matrix on a finite grid lie in [min, max] of its symbol."""
    w = Gaussian(4.0).window(13)
    ev = np.linalg.eigvalsh(gram_matrix(StencilKernel(w), (30, 30)))
    s = operator_symbol(w, 512).real
    assert ev[0] >= s.min() - 1e-9 and ev[-1] <= s.max() + 1e-9
    assert ev[0] < 0                                                     # the truncation shows


def test_symbol_matches_hand_formula():
    w = np.zeros((3, 3))
    w[1, 2] = 1.0                                                        # out[p] = alpha[p + (0, 1)]
    s = operator_symbol(w, 8)
    wx = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(s, np.broadcast_to(np.exp(1j * wx)[None, :], (8, 8)), atol=1e-14)


def test_diagnostics_asymmetry_terms_of_eq12():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 5))
    d = filter_diagnostics(w)
    J = np.eye(5)[::-1]
    assert math.isclose(d.transpose_asym, np.linalg.norm(w - w.T) / np.linalg.norm(w))
    assert math.isclose(d.antidiag_asym, np.linalg.norm(w @ J - J @ w) / np.linalg.norm(w))
    assert math.isclose(d.anti_trace, np.trace(J @ w))
    assert d.dihedral_asym > 0.1
    table = diagnostics_table([("random", d), ("delta", filter_diagnostics(np.eye(1)))])
    assert "random" in table and "psd_operator" in table


def test_diagnostics_bad_input():
    with pytest.raises(ValueError, match="odd side"):
        filter_diagnostics(np.ones((4, 4)))
    with pytest.raises(ValueError, match="2 dimensions"):
        filter_diagnostics(np.ones((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="odd side"):
        filter_diagnostics(np.ones((2, 3, 4)))


def test_diagnostics_of_a_filter_stack():
    stack = np.stack([Gaussian(2.0).window(13), Wendland(6.0).window(13)]).astype(np.float32)
    ds = filter_diagnostics(stack)
    assert len(ds) == 2 and ds[0].rank == 1 and ds[1].rank > 1
    assert ds[1].psd_operator and not ds[0].psd_operator
    w = np.ones((3, 3))
    w[1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        filter_diagnostics(w)


def test_truncation_error_with_explicit_stencil_operator():
    """Truncation error computed through the FFT of the windowed stencil (no depthwise needed)."""
    errs = []
    for s in (1.0, 2.0, 3.0, 5.0):
        k = Gaussian(s)
        conv = FFTGram(StencilKernel(k.window(13)), (48, 48))
        errs.append(truncation_error(k, (48, 48), conv=conv))
    # σ = 1: the first dropped tap is exp(−49/2) ≈ 2e-11
    assert errs[0] < 1e-10 and all(a < b for a, b in zip(errs, errs[1:])) and errs[-1] > 1e-2
    k = Wendland(7.0)
    assert truncation_error(k, (48, 48), conv=FFTGram(StencilKernel(k.window(13)), (48, 48))) < 1e-13


def test_truncation_error_depthwise():
    assert truncation_error(Wendland(6.5), (40, 36)) < 1e-13
    e_noise = truncation_error(Gaussian(4.0), (40, 36), alpha="noise")
    e_smooth = truncation_error(Gaussian(4.0), (40, 36), alpha="smooth")
    assert 1e-3 < e_noise < 1 and 1e-3 < e_smooth < 1
    with pytest.raises(ValueError, match="'noise', 'smooth'"):
        truncation_error(Gaussian(4.0), (40, 36), alpha="bumpy")
