"""Benchmark harness: ``python -m regnp.bench [--repeats R] [--quick] [--only SUBSTRING]``.

It first prints what bounds the machine (``machine.py``: CPU model, cores, measured sgemm and
Numba FMA GFLOP/s, copy bandwidth, cache sizes; ``--machine`` prints only that), then the case
table below, then the roofline of a U-Net training step (``roofline.py``: every layer's FLOPs
and bytes moved, its bound min(peak, intensity × bandwidth), the share of it reached, and the
sum of the bounds beside the measured step; ``--roofline`` prints only the machine and that,
``--model`` and ``--size`` choose the network and the image size, ``--unfused`` runs the skip
joins as upsample + concatenate + conv instead of reading them in place). ``--joins-ab`` times
Meta-Reg and VoxelMorph-2 with the joins read in place against the three ops, alternating.

Every case is a small object with a name, the FLOPs of its forward and forward+backward pass
(2 × multiply-adds) and a ``prepare()`` that builds its inputs once and returns two callables:
``forward()`` and ``forward_backward()``. Each is run once to warm up (Numba compilation,
buffer allocation) and then ``repeats`` times; the table shows the median time and GFLOP/s.

The cases: every convolution of the VoxelMorph-2 U-Net at batch 2, 256×256, plus the Meta-Reg
transposed-convolution upsampler; the headline row — all U-Net convolutions run back to back
(what a training step spends in convolutions); the 13×13 depthwise filter, the bilinear warp and
NCC at the model's shapes; and whole models, where "fwd" is the inference of one 256×256 pair and
"fwd+bwd" one training step at batch 2 (forward, loss, backward, Adam); scaling and squaring
(``integrate``, 7 squarings at half and full resolution), and with it — ``--only integrate`` — what
``--integrate 7`` adds to a Meta-Reg and a VoxelMorph-2 training step, timed in alternating rounds
(:func:`integration_overhead`). ``--memory`` reports the
peak memory of training and checks that allocations do not grow from step to step. Add a case by
appending to ``CASES``.
"""
import argparse

import numpy as np

import regnp  # noqa: F401  (sets the threading environment before numpy/numba load)
from regnp.bench.setups import prep_model as _prep_model, training_setup as _training_setup


class Case:
    """One benchmark row.

    - name: shown in the table and matched by ``--only``.
    - flops: (forward FLOPs, forward+backward FLOPs), counting 2 per multiply-add.
    - prepare: no-argument callable returning (forward, forward_backward) callables.
    """

    def __init__(self, name, flops, prepare):
        self.name, self.flops, self.prepare = name, flops, prepare


# The VoxelMorph-2 U-Net's convolutions: (name, Cin, Cout, input size, stride).
UNET_CONVS = [
    ("enc0 2->16 s2 @256", 2, 16, 256, 2),
    ("enc1 16->32 s2 @128", 16, 32, 128, 2),
    ("enc2 32->32 s2 @64", 32, 32, 64, 2),
    ("enc3 32->32 s2 @32", 32, 32, 32, 2),
    ("dec0 32->32 @16", 32, 32, 16, 1),
    ("dec1 64->32 @32", 64, 32, 32, 1),
    ("dec2 64->32 @64", 64, 32, 64, 1),
    ("dec3 48->32 @128", 48, 32, 128, 1),
    ("dec4 32->32 @128", 32, 32, 128, 1),
    ("dec5 34->16 @256", 34, 16, 256, 1),
    ("dec6 16->16 @256", 16, 16, 256, 1),
    ("flow 16->2 @256", 16, 2, 256, 1),
]


def _conv_flops(N, Cin, Cout, Ho, Wo, k):
    f = 2.0 * N * Cin * Cout * Ho * Wo * k * k
    return f, 3 * f          # backward = dx + dw, each as many MACs as the forward


def _make_conv(N, Cin, Cout, H, stride, k=3, transpose=False, seed=0):
    """Build a layer and its input/upstream gradient; return (forward, forward_backward)."""
    from regnp.nn.layers import Conv2d, ConvTranspose2d
    rng = np.random.default_rng(seed)
    if transpose:
        layer = ConvTranspose2d(Cin, Cout, k=k, stride=stride, rng=rng)
    else:
        layer = Conv2d(Cin, Cout, k=k, stride=stride, pad=(k - 1) // 2, rng=rng)
    x = rng.standard_normal((N, Cin, H, H), dtype=np.float32)
    dout = rng.standard_normal(layer.forward(x).shape, dtype=np.float32)

    def fwd():
        layer.forward(x)

    def fwd_bwd():
        layer.forward(x)
        layer.backward(dout)
    return fwd, fwd_bwd


def conv_cases(N=2):
    cases = []
    for name, cin, cout, H, s in UNET_CONVS:
        Ho = H // s
        cases.append(Case(name, _conv_flops(N, cin, cout, Ho, Ho, 3),
                          lambda cin=cin, cout=cout, H=H, s=s: _make_conv(N, cin, cout, H, s)))
    cases.append(Case("metareg up: convT 32->32 k2 s2 @16", _conv_flops(N, 32, 32, 16, 16, 2),
                      lambda: _make_conv(N, 32, 32, 16, 2, k=2, transpose=True)))

    def prepare_all():
        parts = [_make_conv(N, cin, cout, H, s, seed=i)
                 for i, (_, cin, cout, H, s) in enumerate(UNET_CONVS)]

        def fwd():
            for f, _ in parts:
                f()

        def fwd_bwd():
            for _, fb in parts:
                fb()
        return fwd, fwd_bwd
    total = tuple(sum(c.flops[i] for c in cases[:len(UNET_CONVS)]) for i in range(2))
    cases.append(Case("U-Net convs, total (headline)", total, prepare_all))
    return cases


CASES = conv_cases()


def _make_depthwise(N=2, C=2, H=256, k=13, seed=0):
    """The meta-regularization layer's op: a k×k depthwise filter on an (N, C, H, H) field."""
    from regnp.ops.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, H), dtype=np.float32)
    w = rng.standard_normal((C, k, k), dtype=np.float32)
    dout = rng.standard_normal((N, C, H, H), dtype=np.float32)

    def fwd():
        depthwise_conv2d_forward(x, w)

    def fwd_bwd():
        _, cache = depthwise_conv2d_forward(x, w)
        depthwise_conv2d_backward(dout, cache)
    return fwd, fwd_bwd


_dw_f = 2.0 * 2 * 2 * 256 * 256 * 13 * 13
CASES.append(Case("depthwise 13x13 (2,2,256,256)", (_dw_f, 3 * _dw_f), _make_depthwise))


# ---------------------------------------------------------------------------------------------
# Other ops at the model's shapes, and whole models
# ---------------------------------------------------------------------------------------------
def _prep_warp(N=2, S=256):
    from regnp.ops.warp import warp_backward, warp_forward
    rng = np.random.default_rng(0)
    mov = rng.random((N, 1, S, S), dtype=np.float32)
    u = (3 * rng.standard_normal((N, 2, S, S))).astype(np.float32)
    dout = rng.standard_normal((N, 1, S, S)).astype(np.float32)

    def fwd():
        warp_forward(mov, u)

    def fb():
        warp_backward(dout, warp_forward(mov, u)[1])
    return fwd, fb


def _prep_ncc(N=2, S=256):
    from regnp.losses import ncc_backward, ncc_forward
    rng = np.random.default_rng(0)
    a = rng.random((N, 1, S, S), dtype=np.float32)
    b = rng.random((N, 1, S, S), dtype=np.float32)

    def fwd():
        ncc_forward(a, b)

    def fb():
        ncc_backward(ncc_forward(a, b)[1])
    return fwd, fb


def _prep_integrate(downsize, N=2, S=256, steps=7):
    """exp(v) by scaling and squaring of an (N, 2, S, S) field, at full (1) or half (2) size."""
    from regnp.ops.integrate import integrate_velocity_backward, integrate_velocity_forward
    rng = np.random.default_rng(0)
    v = (4 * rng.standard_normal((N, 2, S, S))).astype(np.float32)
    dout = rng.standard_normal((N, 2, S, S)).astype(np.float32)

    def fwd():
        integrate_velocity_forward(v, steps, downsize)

    def fb():
        integrate_velocity_backward(dout, integrate_velocity_forward(v, steps, downsize)[1])
    return fwd, fb


CASES += [
    Case("warp bilinear (2,1,256,256), field (2,2,256,256)", (0.0, 0.0), _prep_warp),
    Case("NCC win 9 (2,1,256,256)", (0.0, 0.0), _prep_ncc),
    Case("integrate exp(v) 7 squarings, half res (2,2,256,256)", (0.0, 0.0),
         lambda: _prep_integrate(2)),
    Case("integrate exp(v) 7 squarings, full res (2,2,256,256)", (0.0, 0.0),
         lambda: _prep_integrate(1)),
]
CASES += [Case(f"model {m}: infer 1 pair | train step batch 2 (256x256)", (0.0, 0.0),
                    lambda m=m: _prep_model(m)) for m in ("metareg", "vm2", "vm1", "dirnet", "fcnss")]


def alternating_ab(a, b, rounds):
    """Time the no-argument callables a and b (each warmed up once) in alternating order
    (A B, B A, ...) for ``rounds`` rounds, so that a machine busy with other work slows both
    alike. Returns (median ms of a, median ms of b, median of the per-round ratios b / a)."""
    import time
    a(), b()
    ta, tb = [], []
    for r in range(rounds):
        for fn, times in ([(a, ta), (b, tb)] if r % 2 == 0 else [(b, tb), (a, ta)]):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return (float(np.median(ta)), float(np.median(tb)),
            float(np.median(np.array(tb) / np.array(ta))))


def integration_overhead(models=("metareg", "vm2"), steps=7, int_downsize=2, rounds=10, N=2,
                         S=256):
    """What ``--integrate steps`` adds to a training step (batch N, S×S), per model.

    Both models (with and without integration) are built once and timed in alternating rounds
    (:func:`alternating_ab`). Returns rows: model, plain_ms and integrate_ms (medians over the
    rounds) and added_pct = 100 × (median of the per-round ratios − 1).
    """
    rows = []
    for name in models:
        plain = _prep_model(name, N, S)[1]
        integ = _prep_model(name, N, S, integrate=steps, int_downsize=int_downsize)[1]
        ta, tb, ratio = alternating_ab(plain, integ, rounds)
        rows.append({"model": name, "plain_ms": ta, "integrate_ms": tb,
                     "added_pct": 100 * (ratio - 1)})
    return rows


def joins_ab(models=("metareg", "vm2"), rounds=10, N=2, S=256):
    """Training step and one-pair inference with the U-Net's skip joins read in place (the
    default) and run as upsample + concatenate + conv, in alternating rounds. Returns rows:
    model, what ('step' or 'inference'), fused_ms, unfused_ms, ratio (median of per-round
    fused / unfused; < 1: reading in place is faster)."""
    rows = []
    for name in models:
        fused, unfused = _prep_model(name, N, S), _prep_model(name, N, S, fuse_joins=False)
        for what, k in (("step", 1), ("inference", 0)):
            tu, tf, ratio = alternating_ab(unfused[k], fused[k], rounds)
            rows.append({"model": name, "what": what, "fused_ms": tf, "unfused_ms": tu,
                         "ratio": ratio})
    return rows


def memory_check(name="metareg", steps=100, S=256, N=2):
    """Peak resident memory of training steps and the growth of traced allocations between step
    10 and step ``steps`` (0 means no per-step leak). Returns a dict."""
    import resource
    import tracemalloc
    infer, step = _prep_model(name, N, S)
    for _ in range(10):
        step()
    tracemalloc.start()
    step()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(steps - 11):
        step()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # kB → MB (Linux)
    return {"model": name, "steps": steps, "peak_rss_mb": rss,
            "traced_growth_mb": (current - base) / 2 ** 20,
            "traced_peak_in_step_mb": (peak - base) / 2 ** 20}


class _Profiler:
    """Self time of wrapped callables (time inside minus time in wrapped callees), per label."""

    def __init__(self):
        import time
        self.clock, self.stack, self.total = time.perf_counter, [], {}

    def wrap(self, label, fn):
        def timed(*a, **k):
            t0 = self.clock()
            self.stack.append(0.0)
            try:
                return fn(*a, **k)
            finally:
                child = self.stack.pop()
                dt = self.clock() - t0
                self.total[label] = self.total.get(label, 0.0) + dt - child
                if self.stack:
                    self.stack[-1] += dt
        return timed


def profile_step(name="metareg", steps=10, N=2, S=256):
    """Split a training step's time by op: every conv / transposed conv / upsampling layer's
    forward and backward (by its place in the network), concatenations, warp, the 13×13 filter,
    losses, the meta penalty, Adam, zero_grad and input checks; "other" is what is left (Python
    glue, allocations of the remaining temporaries); a conv that reads a skip join in place
    counts under its own name. Returns (rows, ms per step): rows of
    (label, ms per step, % of the step)."""
    import time

    import regnp.models.base as base
    import regnp.models.objective as objective
    import regnp.nn.metareg as metareg
    import regnp.nn.unet as unet
    from regnp.nn.layers import Conv2d, ConvTranspose2d, UpsampleNearest2x
    from regnp.nn.metareg import MetaRegConv
    model, obj, opt, F, M = _training_setup(name, N, S)

    def step():
        model.zero_grad()
        obj(model, F, M)
        opt.step()
    for _ in range(3):                                   # warm up (compilation, buffers)
        step()
    prof = _Profiler()
    patched = []

    def patch(owner, attr, label):
        own = attr in vars(owner)           # a module global, or a method bound per instance?
        patched.append((owner, attr, getattr(owner, attr), own))
        setattr(owner, attr, prof.wrap(label, getattr(owner, attr)))
    kinds = (Conv2d, ConvTranspose2d, UpsampleNearest2x, MetaRegConv)
    for mname, m in model.modules():
        if isinstance(m, kinds):
            short = mname.replace("unet.", "")
            patch(m, "forward", f"{short} fwd")
            patch(m, "backward", f"{short} bwd")
            if isinstance(m, Conv2d):          # the convs that read a skip join in place
                patch(m, "forward_join", f"{short} fwd")
                patch(m, "backward_join", f"{short} bwd")
    for owner, attr, label in [
            (unet, "concat_forward", "concat fwd"), (unet, "concat_backward", "concat bwd"),
            (base, "warp_forward", "warp fwd"), (base, "warp_backward", "warp bwd"),
            (base, "check_array", "input checks"), (base.np, "concatenate", "input concat"),
            (objective, "mse_forward", "MSE fwd"), (objective, "mse_backward", "MSE bwd"),
            (objective, "diffusion_forward", "diffusion fwd"),
            (objective, "diffusion_backward", "diffusion bwd"),
            (metareg, "meta_penalty_forward", "meta penalty"),
            (metareg, "meta_penalty_backward", "meta penalty"),
            (opt, "step", "Adam"), (model, "zero_grad", "zero_grad")]:
        if hasattr(owner, attr):
            patch(owner, attr, label)
    try:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        total = (time.perf_counter() - t0) / steps
    finally:
        for owner, attr, orig, own in reversed(patched):       # undo, last patch first
            if own:
                setattr(owner, attr, orig)
            else:
                delattr(owner, attr)                            # the class's method shows again
    per = {k: v / steps for k, v in prof.total.items()}
    per["other (glue, remaining temporaries)"] = max(0.0, total - sum(per.values()))
    rows = sorted(((k, 1e3 * v, 100 * v / total) for k, v in per.items()), key=lambda r: -r[1])
    return rows, 1e3 * total


def import_order_check(rounds=5, repeats=10, model="metareg"):
    """Training-step time when NumPy is imported before regnp (what most scripts do) and when
    regnp comes first, each in a fresh process, alternating for ``rounds`` rounds."""
    import json
    import subprocess
    import sys
    code = ("import sys\n"
            "if sys.argv[1] == 'numpy_first':\n    import numpy\n"
            "import regnp\nfrom regnp.bench.torch_side import measure\n"
            "print(measure('regnp', sys.argv[2], 'step', int(sys.argv[3]), numpy_first=False)[0])")
    out = {"numpy_first": [], "regnp_first": []}
    for r in range(rounds):
        order = ("numpy_first", "regnp_first") if r % 2 == 0 else ("regnp_first", "numpy_first")
        for k in order:
            p = subprocess.run([sys.executable, "-c", code, k, model, str(repeats)],
                               capture_output=True, text=True, check=True)
            out[k].append(float(p.stdout.strip().splitlines()[-1]))
    a, b = np.array(out["numpy_first"]), np.array(out["regnp_first"])
    out["per_round"] = (a / b).tolist()
    out["ratio"] = float(np.median(a) / np.median(b))
    return out


_HEAP_CODE = """\
import json, resource, sys, time
import numpy as np
from regnp.bench.setups import prep_model
from regnp.ops._fast.heap import keep_freed_memory
infer, step = prep_model(sys.argv[1])
for _ in range(3):
    step()
f0, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter()
    step()
    times.append(1e3 * (time.perf_counter() - t0))
f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"ms": float(np.median(times)), "faults": (f1 - f0) / len(times),
                  "heap": keep_freed_memory()}))
"""


def heap_ab(models=("metareg", "vm2"), rounds=5, repeats=10):
    """The training step with glibc keeping freed memory (``regnp.ops._fast.heap``, what
    ``regnp.train`` does) and with glibc's defaults (``REGNP_KEEP_MEMORY=0``), each in a fresh
    process, alternating for ``rounds`` rounds. Returns rows {model, kept_ms, default_ms,
    ratio (kept / default, median of the per-round ratios), kept_faults, default_faults
    (minor page faults per step, medians), heap (what the kept side reported)}."""
    import json
    import os
    import subprocess
    import sys
    rows = []
    for model in models:
        got = {"1": [], "0": []}
        for r in range(rounds):
            for k in (("1", "0") if r % 2 == 0 else ("0", "1")):
                env = dict(os.environ, REGNP_KEEP_MEMORY=k)
                p = subprocess.run([sys.executable, "-c", _HEAP_CODE, model, str(repeats)],
                                   env=env, capture_output=True, text=True, check=True)
                got[k].append(json.loads(p.stdout.strip().splitlines()[-1]))
        kept, dflt = got["1"], got["0"]
        rows.append({"model": model, "kept_ms": float(np.median([g["ms"] for g in kept])),
                     "default_ms": float(np.median([g["ms"] for g in dflt])),
                     "ratio": float(np.median([a["ms"] / b["ms"] for a, b in zip(kept, dflt)])),
                     "kept_faults": float(np.median([g["faults"] for g in kept])),
                     "default_faults": float(np.median([g["faults"] for g in dflt])),
                     "heap": kept[0]["heap"]})
    return rows


def _median_ms(fn, repeats, warmup=1):
    """Median milliseconds of fn() over ``repeats`` runs after ``warmup`` untimed runs."""
    from regnp.metrics import Timer
    return 1e3 * Timer.measure(fn, repeats=repeats, warmup=warmup)


def _torch_total(N=2, repeats=5):
    """The same U-Net convolutions in torch (CPU), forward+backward median ms, or None."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    ws, xs = [], []
    for _, cin, cout, H, s in UNET_CONVS:
        ws.append((torch.randn(cout, cin, 3, 3, requires_grad=True),
                   torch.randn(cout, requires_grad=True), s))
        xs.append(torch.randn(N, cin, H, H, requires_grad=True))

    def fb():
        for (w, b, s), x in zip(ws, xs):
            y = F.conv2d(x, w, b, stride=s, padding=1)
            y.backward(torch.ones_like(y))
    return _median_ms(fb, repeats)


def run(cases, repeats=10, progress=True):
    """Time every case; returns a list of dict rows."""
    try:
        from tqdm import tqdm
    except ImportError:      # pragma: no cover
        def tqdm(it, **kw):
            return it
    rows = []
    for case in tqdm(cases, desc="bench", disable=not progress):
        fwd, fb = case.prepare()
        tf = _median_ms(fwd, repeats)
        tfb = _median_ms(fb, repeats)
        rows.append({"name": case.name, "fwd_ms": tf, "fb_ms": tfb,
                     "fwd_gflops": case.flops[0] / tf / 1e6,
                     "fb_gflops": case.flops[1] / tfb / 1e6})
    return rows


def format_table(rows):
    w = max(len(r["name"]) for r in rows) + 2
    lines = [f"{'case':<{w}}{'fwd ms':>9}{'GFLOP/s':>9}{'fwd+bwd ms':>12}{'GFLOP/s':>9}",
             "-" * (w + 39)]
    def g(v):                                     # cases without a FLOP count show "-"
        return f"{v:>9.1f}" if v > 0 else f"{'-':>9}"
    for r in rows:
        lines.append(f"{r['name']:<{w}}{r['fwd_ms']:>9.2f}{g(r['fwd_gflops'])}"
                     f"{r['fb_ms']:>12.2f}{g(r['fb_gflops'])}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per case (median)")
    ap.add_argument("--quick", action="store_true", help="3 repeats (a rough look)")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--memory", action="store_true",
                    help="instead: peak memory and allocation growth over 100 Meta-Reg training "
                         "steps (batch 2, 256x256)")
    ap.add_argument("--compare-torch", action="store_true",
                    help="instead: Meta-Reg and VoxelMorph-2 training step and one-pair inference, "
                         "regnp vs a PyTorch model of the same architecture and loss, each in its "
                         "own process (NumPy imported first), alternating A/B for --rounds rounds")
    ap.add_argument("--rounds", type=int, default=5, help="A/B rounds for --compare-torch")
    ap.add_argument("--import-order", action="store_true",
                    help="instead: Meta-Reg training-step time in fresh processes that import "
                         "NumPy before regnp and regnp first, alternating; the ratio should be ~1")
    ap.add_argument("--profile", default=None, metavar="MODEL",
                    help="instead: split one training step of MODEL (metareg, vm2, ...) by op")
    ap.add_argument("--machine", action="store_true",
                    help="instead: only the machine's limits (CPU, measured peak GFLOP/s and "
                         "copy bandwidth, caches)")
    ap.add_argument("--roofline", action="store_true",
                    help="instead: the machine's limits and the roofline table of one U-Net "
                         "training step (per layer: FLOPs, bytes moved, bound, %% reached)")
    ap.add_argument("--model", default="vm2",
                    help="the model whose U-Net the roofline table follows (default vm2)")
    ap.add_argument("--size", type=int, default=256,
                    help="image size S (S x S, batch 2) of the roofline table (default 256)")
    ap.add_argument("--unfused", action="store_true",
                    help="with --roofline: run the U-Net's skip joins as upsample + concatenate "
                         "+ conv (as before they were read in place), for comparison")
    ap.add_argument("--joins-ab", action="store_true",
                    help="instead: Meta-Reg and VoxelMorph-2 training step and inference with "
                         "the skip joins read in place vs upsample + concatenate + conv, "
                         "alternating for --rounds rounds")
    ap.add_argument("--heap-ab", action="store_true",
                    help="instead: Meta-Reg and VoxelMorph-2 training step with glibc keeping "
                         "freed memory (as regnp.train does) vs glibc's defaults, fresh "
                         "processes alternating for --rounds rounds; time and page faults")
    args = ap.parse_args(argv)
    from regnp._cli import run_cli
    return run_cli(lambda: _run_main(args), "no table was printed")


def _run_main(args):
    """What :func:`main` does once the options are parsed (and checked here, before any case
    is built)."""
    from regnp._cli import CLIError, positive_int
    from regnp.bench import machine as machine_mod
    positive_int("--repeats", args.repeats)
    positive_int("--size", args.size)
    if args.roofline or not (args.machine or args.joins_ab or args.compare_torch or args.heap_ab
                             or args.import_order or args.profile or args.memory or args.only):
        _roofline_unet(args.model, args.size)       # bad --model / --size: say so before timing
    if args.machine or args.roofline:
        mach = machine_mod.measure(quick=args.quick)
        print(machine_mod.format_machine(mach))
        if args.machine:
            return mach
        return roofline_report(args.model, args.size, mach, 3 if args.quick else args.repeats,
                               fuse_joins=not args.unfused)
    if args.joins_ab:
        positive_int("--rounds", args.rounds)
        print(machine_mod.format_machine(machine_mod.measure(quick=args.quick)))
        rows = joins_ab(rounds=args.rounds, S=args.size)
        print(f"batch 2 (inference: 1 pair), {args.size}x{args.size}, float32; medians of "
              f"{args.rounds} alternating rounds; ratio = in place / three ops, per round")
        for r in rows:
            print(f"  {r['model']:<8} {r['what']:<10} joins in place {r['fused_ms']:8.1f} ms, "
                  f"upsample + concat + conv {r['unfused_ms']:8.1f} ms, ratio {r['ratio']:.2f}")
        return rows
    if args.heap_ab:
        positive_int("--rounds", args.rounds)
        print(machine_mod.format_machine(machine_mod.measure(quick=args.quick)))
        repeats = 3 if args.quick else args.repeats
        rows = heap_ab(rounds=args.rounds, repeats=repeats)
        print(f"training step, batch 2, 256x256; medians of {repeats} steps per process, "
              f"{args.rounds} alternating rounds; ratio = kept / glibc's defaults, per round")
        for r in rows:
            print(f"  {r['model']:<8} freed memory kept ({r['heap']}) {r['kept_ms']:7.1f} ms, "
                  f"{r['kept_faults']:8.0f} page faults/step; glibc's defaults "
                  f"{r['default_ms']:7.1f} ms, {r['default_faults']:8.0f} page faults/step; "
                  f"ratio {r['ratio']:.2f}")
        return rows
    if args.compare_torch:
        from regnp.bench import torch_side as bench_torch
        positive_int("--rounds", args.rounds)
        rows = bench_torch.compare(rounds=args.rounds, repeats=3 if args.quick else args.repeats)
        if rows is None:
            print("torch is not installed: nothing to compare with (pip install torch, a CPU "
                  "build; regnp itself never imports it)")
            return None
        print(f"batch 2, 256x256, float32; medians of {args.repeats} per process, "
              f"{args.rounds} alternating rounds; ratio = regnp / torch (< 1: regnp faster)")
        print(bench_torch.format_compare(rows))
        return rows
    if args.import_order:
        positive_int("--rounds", args.rounds)
        res = import_order_check(rounds=args.rounds, repeats=3 if args.quick else args.repeats)
        print("Meta-Reg training step, batch 2, 256x256, medians per process (ms):")
        for k in ("numpy_first", "regnp_first"):
            print(f"  {k:<12}" + " ".join(f"{1e3 * v:7.1f}" for v in res[k]))
        print(f"ratio numpy-first / regnp-first: {res['ratio']:.3f} (per round "
              + " ".join(f"{r:.2f}" for r in res["per_round"]) + ")")
        return res
    if args.profile:
        from regnp.models import MODEL_NAMES
        if args.profile not in MODEL_NAMES:
            raise CLIError(f"--profile {args.profile!r}: choose one of {', '.join(MODEL_NAMES)}")
        rows, total = profile_step(args.profile, steps=3 if args.quick else args.repeats)
        print(f"{args.profile}: training step, batch 2, 256x256, {total:.1f} ms (mean of "
              f"{3 if args.quick else args.repeats} steps after 3 warm-up steps); self time per op")
        w = max(len(r[0]) for r in rows) + 2
        for label, ms, pct in rows:
            print(f"{label:<{w}}{ms:>8.2f} ms{pct:>7.1f} %")
        return rows
    if args.memory:
        m = memory_check()
        print(f"{m['model']}, {m['steps']} training steps, batch 2, 256x256: peak resident "
              f"memory {m['peak_rss_mb']:.0f} MB; traced allocations grew by "
              f"{m['traced_growth_mb']:.3f} MB between step 11 and step {m['steps']} "
              f"(peak inside a step {m['traced_peak_in_step_mb']:.0f} MB above the baseline)")
        return m
    repeats = 3 if args.quick else args.repeats
    cases = [c for c in CASES if args.only is None or args.only.lower() in c.name.lower()]
    if not cases:
        raise CLIError(f"--only {args.only!r} matches no case; the cases are: "
                       f"{'; '.join(c.name for c in CASES)}")
    mach = machine_mod.measure(quick=args.quick)
    print(machine_mod.format_machine(mach))
    from regnp.ops._fast import blas as _blas
    print(f"batch 2, float32, {_blas.n_workers()} worker threads, "
          f"{'OpenBLAS via ctypes' if _blas.have_cblas() else 'NumPy matmul fallback'}; "
          f"median of {repeats} after 1 warm-up")
    rows = run(cases, repeats)
    print(format_table(rows))
    if any("headline" in c.name for c in cases):
        t = _torch_total(repeats=repeats)
        if t is not None:
            ours = [r for r in rows if "headline" in r["name"]][0]["fb_ms"]
            print(f"torch, same convolutions forward+backward: {t:.1f} ms "
                  f"(regnp / torch = {ours / t:.2f})")
    if any("integrate" in c.name for c in cases):
        for r in integration_overhead(rounds=repeats):
            print(f"{r['model']} training step (batch 2, 256x256): {r['plain_ms']:.1f} ms, with "
                  f"--integrate 7 (half resolution) {r['integrate_ms']:.1f} ms: "
                  f"{r['added_pct']:+.1f} % (median of {repeats} alternating rounds)")
    if args.only is None:
        roofline_report(args.model, args.size, mach, repeats)
    return rows


def _roofline_unet(model, S):
    """The U-Net of ``model`` (built with seed 0), after checking that the model has one and
    that S suits it; a one-line CLIError otherwise."""
    from regnp._cli import CLIError
    from regnp.models import MODEL_NAMES, build_model
    if model not in MODEL_NAMES:
        raise CLIError(f"--model {model!r}: choose one of {', '.join(MODEL_NAMES)}")
    unet = getattr(build_model(model, seed=0), "unet", None)
    if unet is None:
        raise CLIError(f"--model {model!r} has no U-Net; the roofline table follows a U-Net "
                       f"(metareg, vm2, vm1, ablated, rkhs)")
    f = 2 ** unet.levels
    if S % f:
        raise CLIError(f"--size {S} is not divisible by 2^{unet.levels} = {f}; use e.g. "
                       f"{-(-S // f) * f}")
    return unet


def roofline_report(model, S, mach, repeats, N=2, fuse_joins=True):
    """Print the roofline table of ``model``'s U-Net at batch N, S×S on ``mach``, then the
    sum of the layers' bounds beside a measured training step (``fuse_joins=False``: skip
    joins as upsample + concatenate + conv). Returns the table's rows and the step's median ms."""
    from regnp.bench import roofline
    unet = _roofline_unet(model, S)
    unet.fuse_joins = fuse_joins
    rows = roofline.roofline_rows(roofline.unet_layers(unet, N, S, S), mach, repeats)
    print(f"{model}: U-Net of one training step, batch {N}, {S}x{S}, float32, skip joins "
          f"{'read in place' if fuse_joins else 'as upsample + concatenate + conv'}; median of "
          f"{repeats} per layer")
    print(roofline.format_roofline(rows, mach))
    step_ms = _median_ms(_prep_model(model, N, S, fuse_joins=fuse_joins)[1], repeats)
    bound = sum(r["bound_ms"] for r in rows)
    print(f"whole training step (forward, loss, backward, Adam) measured {step_ms:.1f} ms; the "
          f"U-Net layers' bounds sum to {bound:.1f} ms (step / bound = {step_ms / bound:.2f}); "
          f"the layers measured alone sum to {sum(r['ms'] for r in rows):.1f} ms, the rest of "
          f"the step (warp, loss, filter, Adam, glue) is not in the table")
    return rows, step_ms


if __name__ == "__main__":
    main()
