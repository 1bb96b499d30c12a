"""regnp — learning-based image registration with meta-regularization, by hand.

Conventions shared by every module (see README, "Conventions"):

* images and feature maps are float32 (or float64 for gradient checks) arrays ``(N, C, H, W)``;
* a displacement ``u`` is ``(N, 2, H, W)`` in **pixels**; channel 0 is the row (y) offset,
  channel 1 the column (x) offset; warping pulls back: ``warped[p] = moving[p + u(p)]``;
* every op is a ``*_forward(...) -> (out, cache)`` / ``*_backward(dout, cache) -> grads`` pair.
"""
import os as _os

# regnp's kernels run their parts on their own helper threads (ops/_fast/threads.py), not on
# Numba's threading layer; but numba.get/set_num_threads start that layer's threads. Its
# OpenMP/TBB threads and OpenBLAS's threads both spin after their work and fight for the 2 cores
# when a small kernel alternates with a small GEMM (measured when the kernels still used them:
# a 0.23 ms kernel became 8 ms). Numba's "workqueue" layer sleeps instead of spinning, and a
# short OpenBLAS thread timeout lets BLAS threads yield. These only take effect when regnp is
# imported before numba; users who import numba first can export the same variables themselves.
_os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
