"""Whole-U-Net gradient checks (float64, tiny widths) and behaviour."""
import numpy as np
import pytest

from regnp.gradcheck import border_indices, check_vjp, check_vjp_directions
from regnp.nn.unet import UNet


def tiny(full_size=True, upsample="nearest", seed=0):
    net = UNet(in_ch=2, enc=(3, 4, 4), dec=(4, 4, 3, 3, 3, 2), full_size=full_size,
               upsample=upsample, rng=np.random.default_rng(seed), dtype=np.float64)
    # a realistic flow-head scale so every path carries gradient of a testable size
    net.flow.params["w"][...] = np.random.default_rng(seed + 1).normal(0, 0.3, net.flow.params["w"].shape)
    return net


@pytest.mark.parametrize("full_size", [True, False])
@pytest.mark.parametrize("upsample", ["nearest", "transpose"])
def test_unet_gradients(full_size, upsample):
    rng = np.random.default_rng(3)
    net = tiny(full_size, upsample)
    x = rng.standard_normal((2, 2, 16, 24))                    # batch 2, non-square
    y = net.forward(x)
    assert y.shape == ((2, 2, 16, 24) if full_size else (2, 2, 8, 12))
    dout = rng.standard_normal(y.shape)
    net.zero_grad()
    dx = net.backward(dout)
    # the input: 12 entries (corners first) one at a time, and two random directions that move
    # every entry at once (a wrong entry the sample misses still changes <dx, v>)
    fwd = lambda: net.forward(x)                               # noqa: E731
    assert check_vjp(fwd, x, dx, dout, idx=border_indices(x.shape, 12, rng)) < 1e-6
    assert check_vjp_directions(fwd, x, dx, dout, n=2, rng=rng) < 1e-6
    # every parameter array: its 4 corners (a conv weight's border taps, which meet the zero
    # padding) one at a time, then 2 directions through all of its entries. Corners at
    # h = 1e-5: at 1e-6 the round-off of the summed output alone is ~5e-9 absolute, 1.7e-6
    # relative for a corner entry of ups.0.w (-1e-3). Directions at the default 1e-6: a
    # direction moves every weight of a layer, so at 1e-5 a LeakyReLU input sometimes crosses
    # 0 (enc.0.conv.w: 5e-3 at 1e-5 for one draw, 1e-10 at 1e-6), and the directional
    # derivative is large enough that the round-off of 1e-6 stays near 1e-10
    for name, p, g in net.named_parameters():
        err = max(check_vjp(fwd, p, g, dout, h=1e-5, idx=border_indices(p.shape, 4, rng)),
                  check_vjp_directions(fwd, p, g, dout, n=2, rng=rng))
        assert err < 1e-6, f"{name}: {err}"


def test_transpose_decoder_starts_as_nearest_upsampling():
    """Both decoders start as the same function up to the small symmetry-breaking noise."""
    x = np.random.default_rng(0).standard_normal((2, 2, 16, 16))
    a = UNet(enc=(4, 4), dec=(4, 4, 4, 4), upsample="nearest", rng=np.random.default_rng(1),
             dtype=np.float64)
    b = UNet(enc=(4, 4), dec=(4, 4, 4, 4), upsample="transpose", rng=np.random.default_rng(1),
             dtype=np.float64)
    # copy a's conv weights into b (same names for the shared convs) and zero b's noise
    pb = dict((n, p) for n, p, _ in b.named_parameters())
    for n, p, _ in a.named_parameters():
        pb[n][...] = p
    for n, p in pb.items():
        if n.startswith("ups.") or n.startswith("final_up."):
            if n.endswith(".w"):
                c = p.shape[0]
                p[...] = 0
                p[np.arange(c), np.arange(c)] = 1.0
    a.flow.params["w"][...] = 0.1
    b.flow.params["w"][...] = 0.1
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-12, atol=1e-12)


def test_size_not_divisible_is_explained():
    net = UNet(rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"not divisible by 2\^4 = 16.*pad or resize"):
        net.forward(np.zeros((1, 2, 100, 96), np.float32))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        net.forward(np.zeros((1, 3, 32, 32), np.float32))


def test_bad_decoder_spec():
    with pytest.raises(ValueError, match="decoder needs at least"):
        UNet(enc=(4, 4, 4), dec=(4, 4))
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="bilinear")


def test_default_is_voxelmorph2_and_flow_starts_near_zero():
    net = UNet(rng=np.random.default_rng(0))
    x = np.random.default_rng(1).random((2, 2, 32, 32), dtype=np.float32)
    u = net.forward(x)
    assert u.shape == (2, 2, 32, 32) and u.dtype == np.float32
    assert np.abs(u).max() < 1e-2                              # training starts at u ≈ 0
    # the published VoxelMorph-2 2-D network has about 100k parameters
    assert 90_000 < net.num_parameters() < 120_000


@pytest.mark.parametrize("full_size", [True, False])
def test_backward_returns_the_gradient_split_at_every_concat(full_size):
    """``backward(..., return_skip_grads=True)``: the same dx, and at each concat the two
    halves of the gradient, shaped like the decoder input and like the skip it came from."""
    rng = np.random.default_rng(4)
    net = tiny(full_size)
    x = rng.standard_normal((2, 2, 16, 24))
    y = net.forward(x)
    dout = rng.standard_normal(y.shape)
    net.zero_grad()
    dx_plain = net.backward(dout)
    net.forward(x)
    dx, splits = net.backward(dout, return_skip_grads=True)
    np.testing.assert_array_equal(dx, dx_plain)
    assert len(splits) == net.levels + 1 and splits[-1] is None
    assert (splits[0] is not None) == full_size
    for k, sp in enumerate(splits[:-1]):
        if sp is None:
            continue
        up, skip = sp
        size = (16 >> k, 24 >> k)
        channels = 2 if k == 0 else net.enc[k - 1].conv.params["w"].shape[0]
        assert skip.shape == (2, channels) + size
        assert up.shape[0] == 2 and up.shape[2:] == size
