"""The parallel kernels give the same answer on one thread as on two.

The suite's workers run Numba with one thread each (tests/conftest.py), so every other test
sees a single thread; this one runs the ops of a training step in an interpreter of its own
with two threads, switching between 1 and 2, so that a race between threads (two jobs writing
one row, a partial sum shared by jobs) still shows up. Run as a script it is that comparison."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _step(seed=0):
    """Every output and gradient of one pass through the parallel ops (float32, the U-Net's
    shapes at 130 columns: the per-row kernels, partial row blocks)."""
    from regnp.losses import ncc_backward, ncc_forward
    from regnp.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                                conv_transpose2d_forward)
    from regnp.ops.depthwise import depthwise_conv2d_backward, depthwise_conv2d_forward
    from regnp.ops.skip_conv import skip_conv3x3_backward, skip_conv3x3_forward
    from regnp.ops.warp import warp_backward, warp_forward
    rng = np.random.default_rng(seed)
    f32 = np.float32
    x = rng.standard_normal((2, 3, 9, 130)).astype(f32)
    out = []
    for stride, co in ((1, 5), (1, 2), (2, 4)):
        w = rng.standard_normal((co, 3, 3, 3)).astype(f32)
        y, c = conv2d_forward(x, w, np.ones(co, f32), stride=stride, act=0.2)
        out += [y, *conv2d_backward(np.ones_like(y), c)]
    a = rng.standard_normal((2, 3, 5, 65)).astype(f32)
    s = rng.standard_normal((2, 2, 10, 130)).astype(f32)
    y, c = skip_conv3x3_forward(a, s, rng.standard_normal((4, 5, 3, 3)).astype(f32), up=2,
                                act=0.2)
    out += [y, *skip_conv3x3_backward(np.ones_like(y), c)]
    y, c = conv_transpose2d_forward(a, rng.standard_normal((3, 4, 2, 2)).astype(f32),
                                    np.zeros(4, f32), stride=2)
    out += [y, *conv_transpose2d_backward(np.ones_like(y), c)]
    u = (3 * rng.standard_normal((2, 2, 10, 130))).astype(f32)
    y, c = depthwise_conv2d_forward(u, (rng.standard_normal((1, 13, 13)) / 13).astype(f32))
    out += [y, *depthwise_conv2d_backward(np.ones_like(y), c)]
    m = rng.random((2, 1, 10, 130)).astype(f32)
    y, c = warp_forward(m, u)
    out += [y, *warp_backward(rng.standard_normal(y.shape).astype(f32), c)]
    loss, c = ncc_forward(m, y)
    out += [np.asarray(loss), *ncc_backward(c)]
    return [o for o in out if o is not None]


def compare():
    import numba
    assert numba.config.NUMBA_NUM_THREADS >= 2, "run with NUMBA_NUM_THREADS=2"
    numba.set_num_threads(1)
    one = _step()
    numba.set_num_threads(2)
    two = _step()
    assert len(one) == len(two) > 20
    for k, (a, b) in enumerate(zip(one, two)):
        # per-job partial sums are summed in job order whatever the thread count; the warp's
        # backward keeps one buffer per task (as many as threads), so its sum order differs
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"output {k}")
    print(f"{len(one)} arrays agree on 1 and 2 threads")


def test_share_covers_every_job_once():
    from regnp.ops._fast.threads import share
    for n in (0, 1, 2, 5, 7, 64, 1001):
        for parts in (1, 2, 3, 8):
            bounds = [share(n, p, parts) for p in range(parts)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))      # contiguous
            sizes = [hi - lo for lo, hi in bounds]
            assert max(sizes) - min(sizes) <= 1                              # balanced


def test_run_calls_each_part_on_its_own_thread_and_sums_what_they_return(monkeypatch):
    """``run`` with 3 threads (pretended: the suite's workers have one): parts 0..2 of 3, part
    0 on the calling thread, the others on the pool, their returns added; one thread is a
    direct call ``kernel(0, 1, ...)``."""
    import threading
    from regnp.ops._fast import threads
    seen = []

    def kernel(part, parts, x):
        seen.append((part, parts, threading.get_ident()))
        return x * (part + 1)

    monkeypatch.setattr(threads, "num_threads", lambda: 3)
    assert threads.run(kernel, 10) == 10 + 20 + 30
    assert sorted(p[:2] for p in seen) == [(0, 3), (1, 3), (2, 3)]
    assert [t for p, _, t in seen if p == 0] == [threading.get_ident()]
    assert all(t != threading.get_ident() for p, _, t in seen if p != 0)
    assert threads.run(lambda part, parts: None) is None
    monkeypatch.setattr(threads, "num_threads", lambda: 1)
    seen.clear()
    assert threads.run(kernel, 10) == 10 and [p[:2] for p in seen] == [(0, 1)]


def test_run_waits_for_every_part_and_raises_a_part_s_error(monkeypatch):
    import time
    from regnp.ops._fast import threads
    monkeypatch.setattr(threads, "num_threads", lambda: 2)
    finished = []

    def kernel(part, parts, bad):
        if part == bad:
            raise ValueError(f"part {part} failed")
        time.sleep(0.05)
        finished.append(part)

    for bad in (0, 1):
        finished.clear()
        with pytest.raises(ValueError, match=f"part {bad} failed"):
            threads.run(kernel, bad)
        assert finished == [1 - bad]          # the other part had finished before the raise


def test_run_without_spinning_and_from_two_callers_at_once(monkeypatch):
    """Where ``sched_yield`` is missing the helpers sleep and wake instead of spinning; and when
    a second Python thread calls ``run`` while the helpers are taken, it runs every part itself.
    Either way each call gets every part exactly once."""
    import threading
    from regnp.ops._fast import threads
    monkeypatch.setattr(threads, "num_threads", lambda: 2)
    monkeypatch.setattr(threads, "_spin", lambda: None)
    monkeypatch.setattr(threads, "_helpers", None)

    def kernel(part, parts, x):
        return x * 10 ** part

    assert threads.run(kernel, 3) == 3 + 30
    assert threads._helpers.spin is None
    results, barrier = [], threading.Barrier(4)

    def caller(k):
        barrier.wait()
        for _ in range(200):
            results.append(threads.run(kernel, k) == k * 11)

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(1, 5)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert len(results) == 800 and all(results)


def test_one_thread_and_two_threads_agree():
    env = dict(os.environ, NUMBA_NUM_THREADS="2", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, __file__], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "arrays agree on 1 and 2 threads" in r.stdout


if __name__ == "__main__":
    compare()


def test_count_nonfinite_agrees_with_numpy_below_and_above_the_split_threshold(monkeypatch):
    """The NaN/Inf count of every input check: one part below ``_PARALLEL_MIN`` entries, the
    thread split above it (here with 3 pretended threads, run one after another), both equal to
    NumPy's count."""
    from regnp import _checks
    from regnp.ops._fast import threads
    rng = np.random.default_rng(5)
    for n in (10, _checks._PARALLEL_MIN + 7):
        x = rng.standard_normal(n).astype(np.float32)
        x[rng.choice(n, 9, replace=False)] = [np.nan, np.inf, -np.inf] * 3
        monkeypatch.setattr(threads, "num_threads", lambda: 3)
        threads._busy.acquire()          # helpers taken: run() does the 3 parts itself
        try:
            assert _checks.count_nonfinite(x) == int((~np.isfinite(x)).sum()) == 9
        finally:
            threads._busy.release()
