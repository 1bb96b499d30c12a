"""Compile regnp's Numba kernels ahead of use: ``python -m regnp.precompile``.

Numba compiles a kernel the first time it is called with a new combination of argument types
(dtype, number of dimensions, memory layout) and keeps the machine code in its on-disk cache
(``__pycache__`` beside each module, or ``$NUMBA_CACHE_DIR``); later runs load it in
milliseconds. On a fresh checkout those first calls are slow — the 3×3 convolution kernels
take 1–3 s each, the whole library about 70 s of CPU (36 s with ``--jobs 2`` on a 2-core
machine) — and they land inside whatever ran first: a lesson, the first training step, a test. This module makes
those calls up front, on tiny inputs, one kernel family at a time, with a progress bar.

The families are independent (no kernel belongs to two of them), so they can be compiled in
separate processes without compiling anything twice: ``--jobs 2`` splits them over two
processes, and the test suite's parallel workers each compile their share before their first
test (``tests/conftest.py``). What a family compiles is exactly what the library calls: each
runs the public op (``conv2d_forward``/``backward`` and friends) on small arrays of the same
kinds (C-contiguous, float32 or float64) that the models pass. Anything missed is compiled on
first use as before; nothing here changes a result.

float32 is what training and registration run; float64 is what the gradient checks run — the
fast kernels' float64 versions exist for the tests (``conv2d_forward`` sends float64 3×3
convolutions to the GEMM path, the tests call the direct kernels in float64 themselves).
"""
import argparse
import os
import sys
import time

import numpy as np

DTYPES = ("float32", "float64")


# ------------------------------------------------------------------------------ the families
def _rng():
    return np.random.default_rng(0)


def _conv_3x3_stride1(dt):
    """3×3 stride-1 convolutions: wide rows (W ≥ 128), narrow flat rows, the 1–2 output
    channel head, the skip joins read in place (up 1 and 2), forward and backward."""
    from regnp.ops.conv import Workspace, _direct3x3_forward, conv2d_backward
    from regnp.ops.skip_conv import _skip_conv_direct, skip_conv3x3_backward
    rng = _rng()
    # (width, in, out channels): W >= 128 runs the per-row kernels, narrower the flat ones;
    # 1–2 output channels the few-output path; 2 input channels a 2-channel dx (rows2)
    for W, ci, co in ((128, 3, 5), (128, 2, 5), (128, 3, 2), (16, 3, 5), (16, 2, 5), (16, 3, 2),
                      (16, 3, 1)):
        x = rng.standard_normal((2, ci, 4, W)).astype(dt)
        w = rng.standard_normal((co, ci, 3, 3)).astype(dt)
        for act, b in ((0.2, np.zeros(co, dt)), (None, None)):
            out, cache = _direct3x3_forward(x, w, b, stride=1, act=act, work=Workspace())
            conv2d_backward(np.ones_like(out), cache)
    for W, up in ((128, 2), (128, 1), (16, 2), (16, 1)):
        a = rng.standard_normal((2, 3, 4 // up, W // up)).astype(dt)
        s = rng.standard_normal((2, 2, 4, W)).astype(dt)
        w = rng.standard_normal((4, 5, 3, 3)).astype(dt)
        out, cache = _skip_conv_direct(a, s, w, np.zeros(4, dt), up=up, act=0.2,
                                       work=Workspace())
        for full_res in (False, True):
            skip_conv3x3_backward(np.ones_like(out), cache, full_res=full_res)


def _conv_3x3_stride2(dt):
    """3×3 stride-2 convolutions (the encoder), forward and backward."""
    from regnp.ops.conv import Workspace, _direct3x3_forward, conv2d_backward
    rng = _rng()
    x = rng.standard_normal((2, 3, 8, 10)).astype(dt)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dt)
    for act, b in ((0.2, np.zeros(4, dt)), (None, None)):
        out, cache = _direct3x3_forward(x, w, b, stride=2, act=act, work=Workspace())
        conv2d_backward(np.ones_like(out), cache)


def _conv_transpose_2x2(dt):
    """The ×2 transposed convolution of the learned upsampler (direct kernels)."""
    from regnp.ops._fast import direct_convT2
    rng = _rng()
    x = rng.standard_normal((2, 3, 4, 6)).astype(dt)
    w = rng.standard_normal((3, 4, 2, 2)).astype(dt)
    out, R = direct_convT2.forward(x, w, np.zeros(4, dt))
    tiles = np.empty(direct_convT2.tiles_shape(2, 4, 6, 4, R), dt)
    direct_convT2.backward(np.ones_like(out), x, w, rows=R, tiles=tiles)


def _conv_gemm(dt):
    """Convolutions on the GEMM path (every other kernel size; all of float64), plain and
    transposed."""
    from regnp.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                                conv_transpose2d_forward)
    rng = _rng()
    x = rng.standard_normal((2, 3, 8, 10)).astype(dt)
    for k, stride, act in ((3, 1, 0.2), (3, 2, None), (5, 1, None), (1, 1, 0.2)):
        w = rng.standard_normal((4, 3, k, k)).astype(dt)
        out, cache = conv2d_forward(x, w, np.zeros(4, dt), stride=stride, act=act)
        conv2d_backward(np.ones_like(out), cache)
    w = rng.standard_normal((3, 4, 4, 4)).astype(dt)
    out, cache = conv_transpose2d_forward(x, w, np.zeros(4, dt), stride=2, pad=1)
    conv_transpose2d_backward(np.ones_like(out), cache)


def _depthwise(dt):
    """The meta-regularization layer's depthwise filters (13×13 and other sizes)."""
    from regnp.ops.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
    rng = _rng()
    x = rng.standard_normal((2, 2, 20, 24)).astype(dt)
    for cw, k in ((1, 13), (2, 13), (1, 5), (2, 3)):
        w = rng.standard_normal((cw, k, k)).astype(dt)
        out, cache = depthwise_conv2d_forward(x, w)
        depthwise_conv2d_backward(np.ones_like(out), cache)


def _pointwise(dt):
    """The small kernels: warp, up-sampling, LeakyReLU, NCC, the NaN/Inf scan."""
    from regnp._checks import count_nonfinite
    from regnp.losses import ncc_backward, ncc_forward
    from regnp.ops.activation import leaky_relu_backward, leaky_relu_forward
    from regnp.ops.pool import (upsample_bilinear2x_backward, upsample_bilinear2x_forward,
                                upsample_nearest2x_backward, upsample_nearest2x_forward)
    from regnp.ops.warp import warp_backward, warp_forward, warp_nearest
    rng = _rng()
    m = rng.random((2, 1, 16, 18)).astype(dt)
    u = rng.standard_normal((2, 2, 16, 18)).astype(dt)
    out, cache = warp_forward(m, u)
    warp_backward(np.ones_like(out), cache)
    warp_backward(np.ones_like(out), cache, _n_tasks=2)   # per-task buffers, then their sum
    warp_nearest(np.zeros((2, 1, 16, 18), np.int64), u)
    warp_nearest(np.zeros((2, 1, 16, 18), np.uint8), u)
    for fwd, bwd in ((upsample_nearest2x_forward, upsample_nearest2x_backward),
                     (upsample_bilinear2x_forward, upsample_bilinear2x_backward),
                     (leaky_relu_forward, leaky_relu_backward)):
        out, cache = fwd(u)
        bwd(np.ones_like(out), cache)
    loss, cache = ncc_forward(m, m[::-1].copy())
    ncc_backward(cache)
    count_nonfinite(np.zeros(10, dt))
    count_nonfinite(np.zeros(1 << 20, dt))


# name: (compile, cost). The cost is the measured cold compile time in seconds (one process,
# 2 vCPUs busy with other work, 2026-12-07; float64 took 0.81–1.17× float32's time per family,
# so one figure serves both): only the split between processes uses it.
FAMILIES = {
    "3×3 stride-1 convolutions and skip joins": (_conv_3x3_stride1, 41.0),
    "3×3 stride-2 convolutions": (_conv_3x3_stride2, 28.0),
    "warp, up-sampling, LeakyReLU, NCC, NaN scan": (_pointwise, 23.0),
    "×2 transposed convolutions": (_conv_transpose_2x2, 15.0),
    "depthwise filters": (_depthwise, 14.0),
    "GEMM convolutions": (_conv_gemm, 7.0),
}


def tasks(dtypes=DTYPES):
    """Every (family, dtype) pair, the most expensive first."""
    out = [(name, dt) for name in FAMILIES for dt in dtypes]
    return sorted(out, key=lambda t: -FAMILIES[t[0]][1])


def share(index, count, dtypes=DTYPES):
    """The tasks of process ``index`` of ``count``: a greedy split of the estimated costs
    (largest first, each to the least-loaded process), so the processes finish together and
    no family is compiled by two of them."""
    if not 0 <= index < count:
        raise ValueError(f"index must be in 0 .. {count - 1}, got {index}")
    loads, mine = [0.0] * count, []
    for t in tasks(dtypes):
        k = loads.index(min(loads))
        loads[k] += FAMILIES[t[0]][1]
        if k == index:
            mine.append(t)
    return mine


def precompile(todo=None, progress=True):
    """Compile the kernels of ``todo`` (a list of (family, dtype); default: every one).
    Returns {(family, dtype): seconds}."""
    from tqdm import tqdm
    todo = tasks() if todo is None else list(todo)
    seconds = {}
    for name, dt in tqdm(todo, desc="compiling", unit="family", disable=not progress):
        t0 = time.perf_counter()
        FAMILIES[name][0](np.dtype(dt))
        seconds[(name, dt)] = time.perf_counter() - t0
        if progress:
            tqdm.write(f"{name}, {dt}: {seconds[(name, dt)]:.1f} s")
    return seconds


def _in_processes(count, dtypes):
    """Compile in ``count`` processes, each its own ``share``; returns their exit statuses."""
    import subprocess
    code = ("import sys\nfrom regnp.precompile import precompile, share\ntry:\n"
            "    precompile(share(int(sys.argv[1]), int(sys.argv[2]), tuple(sys.argv[3:])), "
            "progress=False)\nexcept KeyboardInterrupt:\n    raise SystemExit(130)\n")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # regnp's parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k), str(count), *dtypes],
                              env=env) for k in range(count)]
    try:
        return [pr.wait() for pr in procs]
    finally:                                  # Ctrl-C reaches the children too; make sure
        for pr in procs:
            if pr.poll() is None:
                pr.terminate()
                pr.wait()


def main(argv=None):
    from regnp._cli import positive_int, run_cli
    p = argparse.ArgumentParser(
        prog="python -m regnp.precompile",
        description="Compile regnp's Numba kernels into Numba's on-disk cache now, so that no "
                    "later run (a lesson, training, the tests) waits for them. Once per "
                    "checkout and Numba version; a few minutes on 2 cores, seconds when the "
                    "cache is already warm.")
    p.add_argument("--dtype", choices=DTYPES + ("both",), default="both",
                   help="float32: what training and registration use; float64: what the "
                        "gradient checks use (default: both)")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes to compile in (each takes its own share of the families)")
    a = p.parse_args(argv)

    def body():
        positive_int("--jobs", a.jobs)
        dtypes = DTYPES if a.dtype == "both" else (a.dtype,)
        t0 = time.perf_counter()
        if a.jobs == 1:
            precompile(tasks(dtypes))
        else:
            bad = [k for k, rc in enumerate(_in_processes(a.jobs, dtypes)) if rc != 0]
            if bad:
                raise RuntimeError(f"compiling failed in process(es) {bad}; run with --jobs 1 "
                                   f"to see where")
        print(f"compiled in {time.perf_counter() - t0:.1f} s; Numba's cache: "
              f"{os.environ.get('NUMBA_CACHE_DIR') or '__pycache__ beside each module'}")

    run_cli(body, interrupted="the kernels compiled so far stay in Numba's cache")


if __name__ == "__main__":
    main()
