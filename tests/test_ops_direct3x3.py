"""The direct 3×3 convolution kernels (regnp/ops/_direct3x3.py, stride 1, and
_direct3x3_s2.py, stride 2) against their slow references, on both stride-1 variants (per-row
for W >= 128, flat for narrow images), with partial last row blocks, output-channel counts that
are not a multiple of the register block and the fused LeakyReLU masks; the whole direct path
in float64 (references and gradient checks) and in float32 through conv2d; the tile-free
1–2 output channel path of the flow head (odd, tiny and non-square shapes, every rows-per-job,
gradient checks); plus the 13×13 depthwise fast paths (every padding)."""
import numpy as np
import pytest

from regnp.gradcheck import check_vjp
from regnp.ops._fast import direct3x3 as d3
from regnp.ops.conv import (Workspace, _Direct3x3Cache, _Direct3x3FewCache, _Direct3x3S2Cache,
                            _direct3x3_forward,
                            conv2d_backward, conv2d_backward_reference, conv2d_forward,
                            conv2d_forward_reference)
from regnp.ops.depthwise import (depthwise_conv2d_backward, depthwise_conv2d_backward_reference,
                                 depthwise_conv2d_forward, depthwise_conv2d_forward_reference)

# (N, Ci, Co, H, W): W >= 128 runs conv3x3_rows (conv3x3_rows2 / conv3x3_dw_rows2 for
# Co <= 2), smaller W conv3x3_flat; H chosen so the last block of rows is partial; Co in
# {1, 2, 5, 6}: not multiples of MB = 4
SHAPES = [(2, 3, 5, 11, 130), (2, 2, 6, 13, 7), (1, 3, 2, 9, 5), (2, 1, 1, 3, 4),
          (2, 3, 2, 11, 129), (1, 2, 1, 5, 128)]


def _run_kernel(inp, w, **options):
    N, Ci, H, W = inp.shape
    R = d3.rows_per_job(N, H, W, Ci)
    tiles = np.full((N * (-(-H // R)), Ci, (R + 2) * (W + 2)), np.nan, inp.dtype)
    out = np.full((N, w.shape[0], H, W), np.nan, inp.dtype)
    d3.conv3x3(inp, w, out, rows=R, tiles=tiles, **options)
    return out, tiles, R


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["plain", "bias_act", "in_mask"])
def test_conv3x3_kernel_matches_reference_float64(shape, mode):
    N, Ci, Co, H, W = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, Ci, H, W))
    y = rng.standard_normal((N, Ci, H, W))
    w = rng.standard_normal((Co, Ci, 3, 3))
    b = rng.standard_normal(Co)
    options = {"plain": {},
               "bias_act": dict(bias=b, act=0.2),
               "in_mask": dict(in_mask_of=y, in_slope=0.3)}[mode]
    got, _, _ = _run_kernel(x, w, **options)
    want = d3.conv3x3_reference(x, w, **options)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_conv3x3_dw_kernel_matches_reference_float64(shape):
    N, Ci, Co, H, W = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((N, Ci, H, W))
    dz = rng.standard_normal((N, Co, H, W))
    w = rng.standard_normal((Co, Ci, 3, 3))
    _, xt, R = _run_kernel(x, w)
    # the dz tiles are what the dx kernel leaves behind (it reads dz as its input)
    wdx = rng.standard_normal((Ci, Co, 3, 3))
    gt = np.full((xt.shape[0], Co, xt.shape[2]), np.nan)
    d3.conv3x3(dz, wdx, np.empty((N, Ci, H, W)), rows=R, tiles=gt)
    J = xt.shape[0]
    dwp = np.full((J, -(-Co // d3.MB) * d3.MB, Ci, 3, 3), np.nan)
    dbp = np.full((J, Co), np.nan)
    d3.conv3x3_dw(xt, gt, dwp, dbp, height=H, width=W, rows=R)
    dw_ref, db_ref = d3.conv3x3_dw_reference(x, dz)
    np.testing.assert_allclose(dwp[:, :Co].sum(axis=0), dw_ref, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dbp.sum(axis=0), db_ref, rtol=1e-11, atol=1e-11)


def test_references_agree_with_the_conv2d_loop_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 5, 6))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    want, cache = conv2d_forward_reference(x, w, b, 1, 1)
    got = d3.conv3x3_reference(x, w, bias=b)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dz = rng.standard_normal(want.shape)
    _, dw_want, db_want = conv2d_backward_reference(dz, cache)
    dw, db = d3.conv3x3_dw_reference(x, dz)
    np.testing.assert_allclose(dw, dw_want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db_want, rtol=1e-12, atol=1e-12)


def test_pack_weights_and_flip_transpose():
    w = np.arange(2 * 3 * 9, dtype=np.float64).reshape(2, 3, 3, 3)
    wdx = d3.flip_transpose(w)                           # (3, 2, 3, 3)
    assert wdx.shape == (3, 2, 3, 3)
    assert wdx[2, 1, 0, 2] == w[1, 2, 2, 0]              # w_dx[c, m, dy, dx] = w[m, c, 2-dy, 2-dx]
    p = d3.pack_weights(wdx)                             # (1, 2, 3, 3, 4): Ci = 3 padded to 4
    assert p.shape == (1, 2, 3, 3, 4)
    assert p[0, 1, 0, 2, 2] == wdx[2, 1, 0, 2]           # p[b, c, dy, dx, m] = w[4b + m, c, dy, dx]
    assert np.all(p[0, :, :, :, 3] == 0)                 # zero padding of the channel block
    p2 = d3.pack_weights(w, 2)                           # blocks of 2 channels
    assert p2.shape == (1, 3, 3, 3, 2) and p2[0, 2, 1, 0, 1] == w[1, 2, 1, 0]


# (N, Ci, Co, H, W, stride): wide (per-row kernel), narrow (flat kernel), stride 2 odd/even sizes
DIRECT_CASES = [(2, 2, 3, 5, 131, 1), (2, 3, 5, 7, 6, 1), (2, 3, 5, 9, 7, 2), (2, 2, 6, 8, 10, 2),
                (1, 1, 2, 3, 3, 2)]


def _leaky(v, act):
    return v if act is None else np.where(v < 0, act * v, v)


@pytest.mark.parametrize("case", DIRECT_CASES)
@pytest.mark.parametrize("act", [None, 0.2])
def test_direct_path_float64_matches_reference(case, act):
    """The whole direct path (``_direct3x3_forward`` + ``conv2d_backward``) in float64: forward,
    dx, dw, db against the loop references (conv2d_forward routes float32 here)."""
    N, C, Co, H, W, s = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Co, C, 3, 3))
    b = rng.standard_normal(Co)
    out, cache = _direct3x3_forward(x, w, b, stride=s, act=act, work=Workspace())
    assert isinstance(cache, _Direct3x3Cache if s == 1 else _Direct3x3S2Cache)
    ref, rcache = conv2d_forward_reference(x, w, b, s, 1)
    np.testing.assert_allclose(out, _leaky(ref, act), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dz = dout if act is None else np.where(out <= 0, act * dout, dout)
    for got, want in zip(conv2d_backward(dout, cache), conv2d_backward_reference(dz, rcache)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("case", [DIRECT_CASES[1], DIRECT_CASES[2]])
def test_direct_path_gradcheck_every_argument(case):
    N, C, Co, H, W, s = case
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Co, C, 3, 3))
    b = rng.standard_normal(Co)
    out, cache = _direct3x3_forward(x, w, b, stride=s, act=0.2, work=Workspace())
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv2d_backward(dout, cache)

    def f():
        return _direct3x3_forward(x, w, b, stride=s, act=0.2, work=Workspace())[0]
    # h = 1e-5: every entry is checked, and entries as small as 5e-4 sit at the round-off
    # floor of h = 1e-6 (measured 1.6e-6 there, 7.6e-8 at h = 1e-5 and 2.5e-8 at 1e-4)
    assert check_vjp(f, x, dx, dout, h=1e-5) < 1e-6
    assert check_vjp(f, w, dw, dout, h=1e-5) < 1e-6
    assert check_vjp(f, b, db, dout, h=1e-5) < 1e-6


def test_stride2_kernels_match_their_references():
    from regnp.ops._fast import direct3x3_s2 as s2
    rng = np.random.default_rng(5)
    for (N, C, Co, H, W) in [(2, 3, 5, 9, 7), (1, 2, 4, 6, 8)]:
        x = rng.standard_normal((N, C, H, W))
        w = rng.standard_normal((Co, C, 3, 3))
        b = rng.standard_normal(Co)
        Ho, Wo = (H + 1) // 2, (W + 1) // 2
        R = s2.rows_per_job(N, Ho)
        J = N * (-(-Ho // R))
        tiles = np.full((J, C, 4 * (R + 1) * (Wo + 2)), np.nan)
        out = np.full((N, Co, Ho, Wo), np.nan)
        s2.conv3x3s2_forward(x, w, out, rows=R, tiles=tiles, bias=b, act=0.2)
        np.testing.assert_allclose(out, s2.conv3x3s2_forward_reference(x, w, bias=b, act=0.2),
                                   rtol=1e-12, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        gp = np.full((N, Co, (Ho + 2) * (Wo + 2)), np.nan)
        rowsum = np.empty((N, Co))
        s2.conv3x3s2_grad_planes(dout, gp, rowsum, act_out=out, act=0.2)
        dz = np.where(out <= 0, 0.2 * dout, dout)
        dwp = np.full((J, -(-Co // d3.MB) * d3.MB, C, 3, 3), np.nan)
        s2.conv3x3s2_dw(tiles, gp, dwp, out_h=Ho, out_w=Wo, rows=R)
        dx = np.full(x.shape, np.nan)
        s2.conv3x3s2_dx(gp, w, dx, out_h=Ho, out_w=Wo, rows=R)
        rdx, rdw, rdb = s2.conv3x3s2_backward_reference(x, w, dz)
        np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dwp[:, :Co].sum(axis=0), rdw, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(rowsum.sum(axis=0), rdb, rtol=1e-12, atol=1e-12)
        # the stride-2 references agree with the generic loop references
        ref, rcache = conv2d_forward_reference(x, w, b, 2, 1)
        np.testing.assert_allclose(s2.conv3x3s2_forward_reference(x, w, bias=b), ref,
                                   rtol=1e-12, atol=1e-12)
        for got, want in zip((rdx, rdw, rdb), conv2d_backward_reference(dz, rcache)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_float32_conv2d_takes_the_direct_path_and_matches(stride):
    rng = np.random.default_rng(6)
    ws = Workspace()
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5)
    for shape in [(2, 3, 6, 130), (2, 3, 9, 5), (1, 3, 6, 130)]:    # workspace reused
        x = rng.standard_normal(shape)
        out, cache = conv2d_forward(x.astype(np.float32), w.astype(np.float32),
                                    b.astype(np.float32), stride, 1, act=0.2, work=ws)
        assert out.dtype == np.float32
        assert isinstance(cache, _Direct3x3Cache if stride == 1 else _Direct3x3S2Cache)
        ref, rcache = conv2d_forward_reference(x, w, b, stride, 1)
        np.testing.assert_allclose(out, _leaky(ref, 0.2), rtol=1e-4, atol=1e-4)
        dout = rng.standard_normal(out.shape)
        got = conv2d_backward(dout.astype(np.float32), cache)
        dz = np.where(_leaky(ref, 0.2) <= 0, 0.2 * dout, dout)
        for g, r in zip(got, conv2d_backward_reference(dz, rcache)):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-3)


# ------------------------------------------------ 1-2 output channels (the flow head) ---
# (N, Ci, Co, H, W): odd and non-square; W = 1, 2 (no interior columns), 3; H = 1, 2 (no row
# with all three input rows); Co = 1 leaves half of the 2-channel block unused
FEW_SHAPES = [(2, 3, 2, 7, 5), (2, 2, 1, 9, 130), (3, 1, 2, 1, 4), (2, 2, 2, 2, 1),
              (2, 3, 1, 5, 2), (2, 2, 2, 4, 3), (2, 3, 2, 11, 129)]


@pytest.mark.parametrize("shape", FEW_SHAPES)
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("mode", ["plain", "bias_act"])
def test_few_out_kernels_match_reference_float64(shape, rows, mode):
    """``conv3x3_few_out`` against ``conv3x3_reference``; its fused backward against
    ``conv3x3_backward_reference`` (with the LeakyReLU mask when an activation is fused)."""
    N, Ci, Co, H, W = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, Ci, H, W))
    w = rng.standard_normal((Co, Ci, 3, 3))
    b = rng.standard_normal(Co)
    act = 0.2 if mode == "bias_act" else None
    out = np.full((N, Co, H, W), np.nan)
    d3.conv3x3_few_out(x, w, out, rows=rows, bias=b if act else None, act=act)
    want = d3.conv3x3_reference(x, w, bias=b if act else None, act=act)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    J = N * (-(-H // rows))
    dx = np.full(x.shape, np.nan)
    dwp = np.full((J, 2, Ci, 3, 3), np.nan)
    dbp = np.full((J, 2), np.nan)
    d3.conv3x3_few_out_backward(dout, x, w, dx, dwp, dbp, rows=rows,
                                act_out=out if act else None, act=act)
    dz = dout if act is None else np.where(out <= 0, act * dout, dout)
    rdx, rdw, rdb = d3.conv3x3_backward_reference(x, w, dz)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dwp[:, :Co].sum(axis=0), rdw, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dbp[:, :Co].sum(axis=0), rdb, rtol=1e-12, atol=1e-12)


def test_stride1_backward_reference_agrees_with_the_conv2d_loop_reference():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    _, rcache = conv2d_forward_reference(x, w, np.zeros(2), 1, 1)
    dz = rng.standard_normal((2, 2, 5, 4))
    for got, want in zip(d3.conv3x3_backward_reference(x, w, dz),
                         conv2d_backward_reference(dz, rcache)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", [None, 0.2])
def test_few_out_path_float64_matches_reference_and_gradcheck(act):
    """Co <= 2 with W >= 128 takes the tile-free path; forward, dx, dw, db against the loop
    references, and every argument against central differences."""
    N, C, Co, H, W = 2, 2, 2, 3, 129
    rng = np.random.default_rng(9)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((Co, C, 3, 3))
    b = rng.standard_normal(Co)
    out, cache = _direct3x3_forward(x, w, b, stride=1, act=act, work=Workspace())
    assert isinstance(cache, _Direct3x3FewCache)
    ref, rcache = conv2d_forward_reference(x, w, b, 1, 1)
    np.testing.assert_allclose(out, _leaky(ref, act), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    dz = dout if act is None else np.where(out <= 0, act * dout, dout)
    dx, dw, db = conv2d_backward(dout, cache)
    for got, want in zip((dx, dw, db), conv2d_backward_reference(dz, rcache)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)

    def f():
        return _direct3x3_forward(x, w, b, stride=1, act=act, work=Workspace())[0]
    assert check_vjp(f, x, dx, dout, h=1e-5, max_entries=300) < 1e-6
    assert check_vjp(f, w, dw, dout, h=1e-5) < 1e-6
    assert check_vjp(f, b, db, dout, h=1e-5) < 1e-6


def test_float32_flow_head_takes_the_few_out_path_and_matches():
    rng = np.random.default_rng(10)
    ws = Workspace()
    for shape, Co in [((2, 4, 9, 130), 2), ((3, 3, 5, 128), 1), ((2, 4, 9, 130), 2)]:
        x = rng.standard_normal(shape)
        w = rng.standard_normal((Co, shape[1], 3, 3))
        b = rng.standard_normal(Co)
        out, cache = conv2d_forward(x.astype(np.float32), w.astype(np.float32),
                                    b.astype(np.float32), 1, 1, work=ws)
        assert out.dtype == np.float32 and isinstance(cache, _Direct3x3FewCache)
        ref, rcache = conv2d_forward_reference(x, w, b, 1, 1)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
        dout = rng.standard_normal(out.shape)
        got = conv2d_backward(dout.astype(np.float32), cache)
        for g, r in zip(got, conv2d_backward_reference(dout, rcache)):
            assert g.dtype == np.float32
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=2e-3)


# --------------------------------------------------------------- 13x13 depthwise fast paths ---
@pytest.mark.parametrize("pad", [0, 3, 6, 12])
@pytest.mark.parametrize("cw", [1, 2])
def test_depthwise13_every_padding_matches_reference(pad, cw):
    """k = 13 runs the padded-plane kernels; pad != 6 takes the separate-dout-plane branch."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 15, 17))
    w = rng.standard_normal((cw, 13, 13))
    out, cache = depthwise_conv2d_forward(x, w, pad)
    np.testing.assert_allclose(out, depthwise_conv2d_forward_reference(x, w, pad),
                               rtol=1e-12, atol=1e-12)
    d = rng.standard_normal(out.shape)
    dx, dw = depthwise_conv2d_backward(d, cache)
    rdx, rdw = depthwise_conv2d_backward_reference(d, x, w, pad)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, rdw, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape, stride", [((2, 3, 4, 9, 7), 1), ((2, 3, 5, 6, 130), 1),
                                           ((2, 3, 2, 5, 130), 1), ((2, 3, 4, 9, 7), 2)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float32_conv2d_finds_nan_inf_in_x_and_dout(shape, stride, bad):
    """The stride-1 tiled path checks x (forward) and dout (backward) for NaN/Inf while it copies
    them into its tiles, the other paths with a separate scan: every path raises check_array's
    message for a single bad value at the last pixel (the last row block's last row)."""
    N, Ci, Co, H, W = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, Ci, H, W)).astype(np.float32)
    w = rng.standard_normal((Co, Ci, 3, 3)).astype(np.float32)
    x[-1, -1, -1, -1] = bad
    with pytest.raises(ValueError, match="x contains 1 NaN/Inf"):
        conv2d_forward(x, w, None, stride, 1, act=0.2)
    x[-1, -1, -1, -1] = 0.0
    out, cache = conv2d_forward(x, w, None, stride, 1, act=0.2)
    dout = np.ones_like(out)
    dout[-1, -1, -1, -1] = bad
    with pytest.raises(ValueError, match="dout contains 1 NaN/Inf"):
        conv2d_backward(dout, cache)
