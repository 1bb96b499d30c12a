"""K·α three (four) ways: dense, Kronecker, FFT and the 13×13 convolution, proven equal."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.rkhs.kernels import (Gaussian, Wendland, Matern32, Exponential, InverseMultiquadric,
                                StencilKernel, FunctionKernel)
from regnp.rkhs.gram import (DenseGram, KroneckerGram, FFTGram, ConvGram, make_gram, gram_matrix,
                             kronecker_factors, fft_spectrum, fft_sizes, fft_plan, effective_radius,
                             gram_apply_reference,
                             MAX_DENSE_PIXELS)

KERNELS = [Gaussian(3.0), Wendland(6.0), Matern32(4.0), Exponential(3.0), InverseMultiquadric(2.0)]
SHAPES = [(8, 8), (16, 16), (13, 9), (32, 48), (64, 64)]


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_three_ways_agree(shape, rng):
    a = rng.standard_normal((2, 2) + shape)
    for k in KERNELS:
        exact_fft = FFTGram(k, shape).apply(a)
        dense = DenseGram(k, shape).apply(a)
        assert rel(dense, exact_fft) <= 1e-10, (k, shape)
        if k.separable:
            assert rel(KroneckerGram(k, shape).apply(a), exact_fft) <= 1e-10
            assert rel(KroneckerGram(k, shape).apply(a), dense) <= 1e-10


@pytest.mark.parametrize("k", KERNELS + [StencilKernel(np.arange(25.0).reshape(5, 5) - 7)],
                         ids=lambda k: k.name)
def test_against_slow_reference(k, rng):
    a = rng.standard_normal((2, 2, 7, 5))
    ref = gram_apply_reference(k, a)
    assert rel(DenseGram(k, (7, 5)).apply(a), ref) < 1e-13
    assert rel(FFTGram(k, (7, 5)).apply(a), ref) < 1e-13
    single = rng.standard_normal((7, 5))
    assert rel(FFTGram(k, (7, 5)).apply(single), gram_apply_reference(k, single)) < 1e-13


def test_dense_is_kron_of_factors_in_c_order():
    k = Gaussian(2.0)
    Ky, Kx = kronecker_factors(k, (5, 7))
    np.testing.assert_allclose(gram_matrix(k, (5, 7)), np.kron(Ky, Kx), rtol=0, atol=1e-15)


def test_block_toeplitz_structure():
    k = Matern32(3.0)
    H, W = 6, 5
    K4 = gram_matrix(k, (H, W)).reshape(H, W, H, W)                    # K[(a,c),(b,e)]
    for a in range(H):
        for b in range(H):
            blk = K4[a, :, b, :]
            np.testing.assert_array_equal(blk, K4[abs(a - b), :, 0, :])   # depends on |a-b|
            for c in range(1, W):                                        # Toeplitz block
                np.testing.assert_array_equal(blk[c, 1:], blk[c - 1, :-1])


@pytest.mark.parametrize("k", KERNELS, ids=lambda k: k.name)
def test_gram_symmetric_psd(k):
    for shape in [(10, 9), (12, 12)]:
        K = gram_matrix(k, shape)
        np.testing.assert_array_equal(K, K.T)
        ev = np.linalg.eigvalsh(K)
        assert ev[0] >= -1e-10 * ev[-1], (k, shape, ev[0])


def test_nonpsd_filter_gives_negative_eigenvalue():
    """The PSD test above can fail: a Laplacian-like stencil with negative centre is not PSD."""
    w = np.array([[0., 1, 0], [1, -4, 1], [0, 1, 0]])
    ev = np.linalg.eigvalsh(gram_matrix(StencilKernel(w), (6, 6)))
    assert ev[0] < -1.0


def test_float32_and_output_shapes(rng):
    k, shape = Matern32(3.0), (16, 12)
    a64 = rng.standard_normal((3, 2) + shape)
    a32 = a64.astype(np.float32)
    ref = FFTGram(k, shape).apply(a64)
    for op in [DenseGram(k, shape), FFTGram(k, shape)]:
        u = op.apply(a32)
        assert u.dtype == np.float32 and u.shape == a32.shape
        assert rel(u, ref) < 1e-5
    u = KroneckerGram(Gaussian(2.0), shape).apply(a32)
    assert u.dtype == np.float32
    assert rel(u, DenseGram(Gaussian(2.0), shape).apply(a64)) < 1e-5


def _gradcheck_op(op, shape, rng):
    a = rng.standard_normal(shape)
    u, cache = op.forward(a)
    dout = rng.standard_normal(u.shape)
    da = op.backward(dout, cache)
    assert da.shape == a.shape
    # K·α is linear, so central differences have no truncation error at any step: a large h
    # keeps round-off (≈ eps·|f| / h) far below the tolerance.
    err = check_vjp(lambda: op.forward(a)[0], a, da, dout, h=1e-2)
    assert err < 1e-8, err


@pytest.mark.parametrize("method", ["dense", "kronecker", "fft"])
def test_gradient_check(method, rng):
    shape = (2, 2, 7, 5)
    kernels = [Gaussian(2.0)] if method == "kronecker" else [Gaussian(2.0), Exponential(2.5)]
    for k in kernels:
        _gradcheck_op(make_gram(k, shape[-2:], method), shape, rng)


@pytest.mark.parametrize("method", ["dense", "fft"])
def test_gradient_check_nonsymmetric_stencil(method, rng):
    """A non-centrosymmetric filter has Kᵀ ≠ K: backward must use Kᵀ (conjugate spectrum)."""
    k = StencilKernel(rng.standard_normal((3, 3)))
    assert not k.symmetric
    _gradcheck_op(make_gram(k, (6, 5), method), (2, 2, 6, 5), rng)


def test_adjoint_identity(rng):
    k = StencilKernel(rng.standard_normal((5, 5)))
    op = FFTGram(k, (9, 11))
    a, b = rng.standard_normal((2, 9, 11))
    assert np.isclose(np.sum(op.apply(a) * b), np.sum(a * op.apply_transpose(b)), rtol=1e-12)


def test_nonstationary_kernel_dense_only(rng):
    fk = FunctionKernel(lambda p, q: np.exp(-np.sum((p - q) ** 2, -1) / 8) * (2 + np.cos(p[..., 0]))
                        * (2 + np.cos(q[..., 0])))
    a = rng.standard_normal((1, 2, 5, 4))
    assert rel(DenseGram(fk, (5, 4)).apply(a), gram_apply_reference(fk, a)) < 1e-13
    assert make_gram(fk, (5, 4)).method == "dense"
    with pytest.raises(ValueError, match="FFT form needs a stationary kernel.*method='dense'"):
        FFTGram(fk, (5, 4))
    with pytest.raises(ValueError, match="Kronecker form needs a stationary kernel"):
        KroneckerGram(fk, (5, 4))


def test_kronecker_refuses_nonseparable():
    with pytest.raises(ValueError, match="not separable; use method='fft'"):
        KroneckerGram(Matern32(2.0), (8, 8))


def test_dense_refuses_big_grids_with_alternatives():
    with pytest.raises(ValueError, match=r"65×65.*kronecker.*method='fft'"):
        DenseGram(Gaussian(3.0), (65, 65))
    with pytest.raises(ValueError, match=r"34\.36 GB.*method='fft' \(exact"):
        DenseGram(Matern32(3.0), (256, 256))
    with pytest.raises(ValueError, match="max_pixels=10"):
        DenseGram(Gaussian(3.0), (4, 4), max_pixels=10)
    assert MAX_DENSE_PIXELS == 64 * 64
    assert DenseGram(Gaussian(3.0), (4, 4), max_pixels=16).K.shape == (16, 16)


def test_bad_alpha(rng):
    op = FFTGram(Gaussian(2.0), (8, 6))
    with pytest.raises(ValueError, match=r"\(H, W\) or a batch \(N, C, H, W\)"):
        op.apply(np.zeros((2, 8, 6)))
    with pytest.raises(ValueError, match="built for a 8×6 grid"):
        op.apply(np.zeros((1, 2, 6, 8)))
    with pytest.raises(TypeError, match="dtype int64"):
        op.apply(np.zeros((8, 6), dtype=np.int64))
    bad = np.zeros((8, 6))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        op.apply(bad)
    with pytest.raises(TypeError, match="numpy array"):
        op.apply([[0.0] * 6] * 8)
    u, cache = op.forward(np.zeros((1, 2, 8, 6)))
    with pytest.raises(ValueError, match="forward output had shape"):
        op.backward(np.zeros((1, 2, 8, 5)), cache)
    with pytest.raises(TypeError, match="one float dtype"):
        op.backward(np.zeros((1, 2, 8, 6), np.float32), cache)
    with pytest.raises(TypeError, match="must be a regnp.rkhs.kernels.Kernel"):
        FFTGram("gaussian", (8, 6))
    with pytest.raises(ValueError, match="grid size"):
        FFTGram(Gaussian(2.0), (8, 0))


def test_make_gram_and_spectrum_cache():
    assert make_gram(Gaussian(2.0), (8, 8)).method == "kronecker"
    assert make_gram(Matern32(2.0), (8, 8)).method == "fft"
    assert make_gram("wendland", (8, 8), width=3).method == "fft"
    with pytest.raises(ValueError, match="unknown method"):
        make_gram(Gaussian(2.0), (8, 8), "svd")
    with pytest.raises(ValueError, match="width="):
        make_gram("gaussian", (8, 8))
    s1 = fft_spectrum(Matern32(2.0), (20, 30))
    assert s1 is fft_spectrum(Matern32(2.0), (20, 30))                  # cached
    assert s1.dtype == np.float64 and s1.shape == (fft_sizes((20, 30))[0], fft_sizes((20, 30))[1] // 2 + 1)
    assert fft_sizes((256, 256)) == (512, 512)
    assert fft_sizes((256, 256), (85, 85)) == (360, 360)
    # the Gaussian's taps vanish (< 1e-16 of the peak) beyond 85 px for σ = 10: a smaller FFT
    assert effective_radius(Gaussian(10.0), (256, 256)) == (85, 85)
    assert fft_plan(Gaussian(10.0), (256, 256))[1] == (360, 360)
    assert fft_plan(Gaussian(2.0), (20, 30))[1] == fft_sizes((20, 30), (17, 17))
    assert effective_radius(InverseMultiquadric(2.0), (64, 48)) == (63, 47)


def test_fft_with_cut_stencil_is_still_exact(rng):
    """Wide grid, fast-decaying kernel: the FFT uses the effective radius, not the full stencil."""
    k = Gaussian(3.0)
    shape = (64, 60)
    assert fft_plan(k, shape)[1][0] < 2 * 64 - 1
    a = rng.standard_normal((1, 2) + shape)
    assert rel(FFTGram(k, shape).apply(a), DenseGram(k, shape).apply(a)) < 1e-13
    assert np.iscomplexobj(fft_spectrum(StencilKernel(np.arange(9.0).reshape(3, 3)), (8, 8)))


def test_conv13_exact_for_compact_support(rng):
    """Wendland with radius ≤ 7 vanishes outside the 13×13 window: eq. 10 is an equality."""
    a = rng.standard_normal((2, 2, 24, 19))
    for radius in (3.0, 7.0):
        k = Wendland(radius)
        assert rel(ConvGram(k).apply(a), FFTGram(k, (24, 19)).apply(a)) < 1e-12
    k = Wendland(9.0)
    assert rel(ConvGram(k).apply(a), FFTGram(k, (24, 19)).apply(a)) > 1e-3


def test_conv13_matches_stencil_fft_and_scipy(rng):
    from scipy.signal import correlate2d
    a = rng.standard_normal((2, 2, 20, 17))
    w = rng.standard_normal((13, 13))                                    # any filter, not symmetric
    conv = ConvGram(weights=w)
    u = conv.apply(a)
    assert rel(u, FFTGram(StencilKernel(w), (20, 17)).apply(a)) < 1e-12
    assert rel(u[1, 0], correlate2d(a[1, 0], w, mode="same")) < 1e-12
    k = Gaussian(2.0)
    assert rel(ConvGram(k).apply(a[0, 0]), FFTGram(StencilKernel(k.window(13)), (20, 17)).apply(a[0, 0])) < 1e-12


def test_conv13_gradient(rng):
    _gradcheck_op(ConvGram(weights=rng.standard_normal((13, 13))), (2, 2, 15, 14), rng)
    _gradcheck_op(ConvGram(Gaussian(3.0)), (2, 2, 9, 16), rng)
