"""Float32 fast paths against float64 at the shapes the real models use (256×256, batch 2).

The op tests check every fast kernel against its loop reference on small, odd shapes. Here the
question is precision at full size, where a convolution sums 9·34 products per output and a weight
gradient sums 2·256·256 of them: does the float32 path (direct Numba kernels, float32 BLAS) stay
within a relative error of 1e-4 of the float64 computation of the same maths?

The shapes are not typed in by hand: one float32 training step of each model records the
arguments of every convolution, transposed convolution, conv of a skip join read in place,
depthwise filter and warp it calls.
Each recorded call is then replayed on fresh random data in float32 and in float64 (the float64
conv calls take the GEMM path, itself checked against the loop references in test_ops_conv.py).
Error measure: ‖a32 − a64‖ / ‖a64‖ over the whole array (element-wise relative error is
meaningless where an entry is ~0).
"""
import zlib

import numpy as np
import pytest

import regnp.models.base as model_base
import regnp.nn.layers as layers
import regnp.nn.metareg as metareg_layer
from regnp.models import Objective, build_model
from regnp.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                            conv_transpose2d_forward)
from regnp.ops.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
from regnp.ops.skip_conv import skip_conv3x3_backward, skip_conv3x3_forward
from regnp.ops.warp import warp_backward, warp_forward

SIZE, BATCH = 256, 2
TOL = 1e-4


def _rel(a32, a64):
    a64 = np.asarray(a64, np.float64)
    return float(np.linalg.norm(np.asarray(a32, np.float64) - a64) / np.linalg.norm(a64))


def _record_calls(model_name):
    """Run one float32 step of ``model_name`` at 256² and return the distinct op calls made:
    a dict {(op, shapes, options): None} in call order."""
    seen = {}
    originals = {
        (layers, "conv2d_forward"): "conv", (layers, "conv_transpose2d_forward"): "convT",
        (layers, "skip_conv3x3_forward"): "skip_conv",
        (metareg_layer, "depthwise_conv2d_forward"): "depthwise",
        (model_base, "warp_forward"): "warp"}
    saved = {}
    for (mod, attr), op in originals.items():
        fn = getattr(mod, attr)
        saved[(mod, attr)] = fn

        def spy(*args, _fn=fn, _op=op, **kw):
            shapes = tuple(a.shape for a in args if isinstance(a, np.ndarray))
            opts = tuple(a for a in args if not isinstance(a, np.ndarray) and a is not None)
            opts += tuple(sorted((k, v) for k, v in kw.items() if k != "work"))
            seen.setdefault((_op, shapes, opts), None)
            return _fn(*args, **kw)
        setattr(mod, attr, spy)
    try:
        rng = np.random.default_rng(0)
        F = rng.random((BATCH, 1, SIZE, SIZE), dtype=np.float32)
        M = rng.random((BATCH, 1, SIZE, SIZE), dtype=np.float32)
        model = build_model(model_name, seed=0)
        model.zero_grad()
        Objective()(model, F, M)
    finally:
        for (mod, attr), fn in saved.items():
            setattr(mod, attr, fn)
    return list(seen)


CALLS = sorted({c for name in ("metareg", "vm2", "vm1") for c in _record_calls(name)},
               key=repr)


def _ids(call):
    op, shapes, opts = call
    return f"{op}-{'-'.join('x'.join(map(str, s)) for s in shapes)}-{opts}"


def test_the_recording_saw_every_kind_of_layer():
    ops = {c[0] for c in CALLS}
    assert ops == {"conv", "convT", "skip_conv", "depthwise", "warp"}, ops
    joins = {c[2] for c in CALLS if c[0] == "skip_conv"}             # the U-Net's skip joins:
    assert (("act", 0.2), ("up", 1)) in joins and (("act", 0.2), ("up", 2)) in joins  # both kinds
    convs = [c for c in CALLS if c[0] == "conv"]
    assert any(c[1][0][2:] == (SIZE, SIZE) for c in convs)           # full-resolution layers
    assert any(("stride", 2) in c[2] or 2 in c[2] for c in convs)    # the stride-2 encoder


@pytest.mark.parametrize("call", CALLS, ids=[_ids(c) for c in CALLS])
def test_float32_fast_path_matches_float64_at_real_shape(call):
    op, shapes, opts = call
    rng = np.random.default_rng(zlib.crc32(repr(call).encode()))   # the same data every run
    args64 = [rng.standard_normal(s) for s in shapes]
    if op == "warp":
        args64[1] *= 3.0                               # displacements of a few pixels
    if op == "depthwise":
        args64[1] /= args64[1].shape[-1]               # a filter of the meta layer's scale
    args32 = [a.astype(np.float32) for a in args64]
    fwd, bwd = {"conv": (conv2d_forward, conv2d_backward),
                "convT": (conv_transpose2d_forward, conv_transpose2d_backward),
                "skip_conv": (skip_conv3x3_forward, skip_conv3x3_backward),
                "depthwise": (depthwise_conv2d_forward, depthwise_conv2d_backward),
                "warp": (warp_forward, warp_backward)}[op]
    kw = {k: v for k, v in (o for o in opts if isinstance(o, tuple))}
    pos = [o for o in opts if not isinstance(o, tuple)]
    out32, cache32 = fwd(*args32, *pos, **kw)
    out64, cache64 = fwd(*args64, *pos, **kw)
    assert out32.dtype == np.float32 and out64.dtype == np.float64
    if op in ("conv", "convT", "skip_conv"):   # two code paths: direct kernels vs float64 GEMM
        assert type(cache32) is not type(cache64), type(cache32).__name__
    dout = rng.standard_normal(out64.shape)
    act = kw.get("act", pos[2] if op == "conv" and len(pos) > 2 else None)
    if act is not None:
        # LeakyReLU's slope jumps at 0: where the pre-activation z is within float32 round-off
        # of 0 the two precisions may pick different sides, and one such pixel moves the
        # gradients by ~1/sqrt(#pixels) ≈ 1e-3 (seen: a 256² layer had one). That is not an
        # error of either path, so such pixels get no upstream gradient.
        z64 = np.where(out64 > 0, out64, out64 / act) if act > 0 else out64
        dout[np.abs(z64) < 1e-4 * np.abs(z64).std()] = 0.0
    g32 = bwd(dout.astype(np.float32), cache32)
    g64 = bwd(dout, cache64)
    g32 = g32 if isinstance(g32, tuple) else (g32,)
    g64 = g64 if isinstance(g64, tuple) else (g64,)
    errors = {"out": _rel(out32, out64)}
    for i, (a, b) in enumerate(zip(g32, g64)):
        if b is not None:
            assert a.dtype == np.float32, f"gradient {i} left float32"
            errors[f"grad{i}"] = _rel(a, b)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("model_name", ["metareg", "vm2"])
def test_whole_training_step_float32_matches_float64(model_name):
    """Loss, displacement and every parameter gradient of one step, float32 model vs the same
    weights in float64, on a smooth 256² pair."""
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    F = (0.5 + 0.4 * np.sin(6 * yy + 1) * np.cos(5 * xx))[None, None].repeat(BATCH, 0)
    M = (0.5 + 0.4 * np.sin(6 * yy + 1.3) * np.cos(5 * xx - 0.4))[None, None].repeat(BATCH, 0)
    m32 = build_model(model_name, seed=3)
    m64 = build_model(model_name, seed=3).astype(np.float64)
    results = {}
    for key, m, F_, M_ in (("32", m32, F.astype(np.float32), M.astype(np.float32)),
                           ("64", m64, F, M)):
        m.zero_grad()
        terms, warped, u = Objective()(m, F_, M_)
        results[key] = (float(terms["loss"]), u.copy(),
                        {n: g.copy() for n, _, g in m.named_parameters()})
    (l32, u32, g32), (l64, u64, g64) = results["32"], results["64"]
    assert u32.dtype == np.float32
    assert abs(l32 - l64) <= TOL * abs(l64), (l32, l64)
    assert _rel(u32, u64) <= TOL
    errors = {n: _rel(g32[n], g64[n]) for n in g64 if np.linalg.norm(g64[n]) > 0}
    assert len(errors) >= len(g64) - 2            # (biases of a zero-initialised head may be 0)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, (worst, errors[worst])
