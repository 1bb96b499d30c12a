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


def test_one_thread_and_two_threads_agree():
    env = dict(os.environ, NUMBA_NUM_THREADS="2", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, __file__], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "arrays agree on 1 and 2 threads" in r.stdout


if __name__ == "__main__":
    compare()
