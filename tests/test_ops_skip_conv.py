"""The conv after a U-Net skip join, reading the join in place (regnp/ops/skip_conv.py): its
definition (upsample, concatenate, convolve) against the conv2d loop reference; the fused
direct kernels in float64 against the definition and by gradient checks (odd, non-square
shapes, batch 2, both kernel variants, up 1 and 2, with and without the LeakyReLU); float32
through the public entry; and a whole U-Net with joins fused against the three separate ops."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.nn.unet import UNet
from regnp.ops.conv import Workspace, conv2d_backward_reference, conv2d_forward_reference
from regnp.ops.skip_conv import (_SkipConvCache, _SkipConvPlainCache, _skip_conv_direct,
                                 skip_conv3x3_backward, skip_conv3x3_backward_reference,
                                 skip_conv3x3_forward, skip_conv3x3_forward_reference)

# (N, Ca, Cs, Co, H, W, up): W >= 128 runs the per-row kernels (Co <= 2: the 2-channel ones),
# narrower images the flat kernel; H, W odd where up = 1 allows it; Co not a multiple of 4
CASES = [(2, 3, 2, 5, 10, 14, 2), (2, 2, 1, 6, 6, 130, 2), (2, 3, 2, 5, 9, 13, 1),
         (2, 1, 3, 2, 4, 132, 2), (2, 2, 2, 1, 7, 129, 1), (1, 2, 1, 3, 2, 6, 2)]


def _inputs(case, dtype=np.float64, seed=0):
    N, Ca, Cs, Co, H, W, up = case
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, Ca, H // up, W // up)).astype(dtype)
    s = rng.standard_normal((N, Cs, H, W)).astype(dtype)
    w = (rng.standard_normal((Co, Ca + Cs, 3, 3)) / 3).astype(dtype)
    b = rng.standard_normal(Co).astype(dtype)
    return a, s, w, b, rng


def test_definition_is_upsample_concat_conv():
    a, s, w, b, rng = _inputs((2, 2, 1, 3, 6, 8, 2))
    x = np.concatenate([a.repeat(2, axis=2).repeat(2, axis=3), s], axis=1)
    out, cache = skip_conv3x3_forward_reference(a, s, w, b, up=2)
    np.testing.assert_allclose(out, conv2d_forward_reference(x, w, b, 1, 1)[0], rtol=1e-13)
    dout = rng.standard_normal(out.shape)
    da, ds, dw, db = skip_conv3x3_backward_reference(dout, cache)
    dx, dw2, db2 = conv2d_backward_reference(dout, (x, w, b, 1, 1))
    np.testing.assert_allclose(ds, dx[:, 2:], rtol=1e-13)
    np.testing.assert_allclose(da, dx[:, :2].reshape(2, 2, 3, 2, 4, 2).sum(axis=(3, 5)),
                               rtol=1e-12)
    np.testing.assert_allclose(dw, dw2, rtol=1e-13)
    np.testing.assert_allclose(db, db2, rtol=1e-13)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", [None, 0.2])
def test_fused_kernels_match_the_definition_float64(case, act):
    a, s, w, b, rng = _inputs(case)
    ref, rcache = skip_conv3x3_forward_reference(a, s, w, b, up=case[-1], act=act)
    out, cache = _skip_conv_direct(a, s, w, b, up=case[-1], act=act, work=Workspace())
    assert isinstance(cache, _SkipConvCache)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(ref.shape)
    for got, want in zip(skip_conv3x3_backward(dout, cache),
                         skip_conv3x3_backward_reference(dout, rcache)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]])
def test_fused_path_gradcheck_every_argument(case):
    a, s, w, b, rng = _inputs(case, seed=1)
    up = case[-1]

    def f():
        return _skip_conv_direct(a, s, w, b, up=up, act=0.2, work=Workspace())[0]
    out, cache = _skip_conv_direct(a, s, w, b, up=up, act=0.2, work=Workspace())
    dout = rng.standard_normal(out.shape)
    da, ds, dw, db = skip_conv3x3_backward(dout, cache)
    for name, x, g in (("a", a, da), ("s", s, ds), ("w", w, dw), ("b", b, db)):
        err = check_vjp(f, x, g, dout, h=1e-5, max_entries=40, rng=rng)
        assert err < 1e-7, (name, err)


def test_full_res_gives_the_gradient_of_the_upsampled_half():
    case = (2, 3, 2, 5, 10, 14, 2)
    a, s, w, b, rng = _inputs(case)
    out, cache = _skip_conv_direct(a, s, w, b, up=2, act=0.2, work=Workspace())
    dout = rng.standard_normal(out.shape)
    dup, ds, _, _ = skip_conv3x3_backward(dout, cache, full_res=True)
    x = np.concatenate([a.repeat(2, axis=2).repeat(2, axis=3), s], axis=1)
    z = conv2d_forward_reference(x, w, b, 1, 1)[0]
    dx = conv2d_backward_reference(dout * np.where(z > 0, 1.0, 0.2), (x, w, b, 1, 1))[0]
    np.testing.assert_allclose(dup, dx[:, :3], rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(ds, dx[:, 3:], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2]])
def test_float32_entry_takes_the_fused_path_and_matches(case):
    a, s, w, b, rng = _inputs(case, np.float32)
    out, cache = skip_conv3x3_forward(a, s, w, b, up=case[-1], act=0.2)
    assert isinstance(cache, _SkipConvCache) and out.dtype == np.float32
    ref, rcache = skip_conv3x3_forward_reference(*(v.astype(np.float64) for v in (a, s, w, b)),
                                                 up=case[-1], act=0.2)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for got, want in zip(skip_conv3x3_backward(dout, cache),
                         skip_conv3x3_backward_reference(dout.astype(np.float64), rcache)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # float64 through the entry: the join is built and conv2d runs as before
    assert isinstance(skip_conv3x3_forward(*(v.astype(np.float64) for v in (a, s, w, b)),
                                           up=case[-1])[1], _SkipConvPlainCache)


@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_unet_with_fused_joins_equals_the_three_ops(upsample):
    """float32, non-square, batch 2: output, input gradient, every parameter gradient and the
    gradient split at every skip, fused joins vs upsample + concat + conv."""
    x = np.random.default_rng(5).standard_normal((2, 2, 32, 48)).astype(np.float32)
    nets = [UNet(enc=(4, 8, 8), dec=(8, 8, 8, 8, 4, 4), upsample=upsample, fuse_joins=f,
                 rng=np.random.default_rng(0)) for f in (True, False)]
    for net in nets:
        head = net.flow.params["w"]
        head[...] = np.random.default_rng(1).normal(0, 0.3, head.shape)
    outs = [net.forward(x) for net in nets]
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    dout = np.random.default_rng(2).standard_normal(outs[0].shape).astype(np.float32)
    res = []
    for net in nets:
        net.zero_grad()
        dx = net.backward(dout)
        net.forward(x)
        dx2, splits = net.backward(dout, return_skip_grads=True)
        # (fused: the 2x2 sums are added in another order when the split is asked for)
        np.testing.assert_allclose(dx, dx2, rtol=1e-5, atol=1e-5 * np.abs(dx).max())
        res.append((dx, {n: g.copy() for n, _, g in net.named_parameters()}, splits))
    (dxa, ga, sa), (dxb, gb, sb) = res

    def rel(u, v):           # float32 round-off, measured over the array (entries may be ~0)
        return np.linalg.norm(u.astype(np.float64) - v) / np.linalg.norm(v)
    assert rel(dxa, dxb) < 1e-5
    for n in gb:
        assert rel(ga[n], gb[n]) < 1e-5, n
    for p, q in zip(sa, sb):
        assert (p is None) == (q is None)
        if p is not None:
            for u, v in zip(p, q):
                assert u.shape == v.shape and rel(u, v) < 1e-5


def test_bad_inputs_are_explained():
    a, s, w, b, _ = _inputs((2, 2, 1, 3, 6, 8, 2), np.float32)
    with pytest.raises(ValueError, match=r"upsampled x2 must match the skip"):
        skip_conv3x3_forward(a, s[:, :, :4], w, b)
    with pytest.raises(ValueError, match=r"w must be \(Co, 3, 3, 3\)"):
        skip_conv3x3_forward(a, s, w[:, :2], b)
    with pytest.raises(ValueError, match="up must be 1"):
        skip_conv3x3_forward(a, s, w, b, up=3)
    with pytest.raises(TypeError, match="dtype"):
        skip_conv3x3_forward(a, s.astype(np.float64), w, b)


@pytest.mark.parametrize("where", ["a", "s"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[2]])
def test_nan_inf_found_by_the_tile_copy(case, bad, where):
    """float32 reads a, s and dout only in the kernels' tile copy: that pass must find a single
    NaN/±Inf anywhere (here the last pixel, in the last row block) and raise check_array's
    message, forward and backward."""
    a, s, w, b, rng = _inputs(case, np.float32)
    x = a if where == "a" else s
    x[-1, -1, -1, -1] = bad
    with pytest.raises(ValueError, match=rf"{where} contains 1 NaN/Inf"):
        skip_conv3x3_forward(a, s, w, b, up=case[-1], act=0.2)
    x[-1, -1, -1, -1] = 0.0
    out, cache = skip_conv3x3_forward(a, s, w, b, up=case[-1], act=0.2)
    dout = np.ones_like(out)
    dout[-1, -1, -1, -1] = bad
    with pytest.raises(ValueError, match="dout contains 1 NaN/Inf"):
        skip_conv3x3_backward(dout, cache)
