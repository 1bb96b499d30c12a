"""Accumulating GEMM calls on strided views, run by a small pool of worker threads.

Why not just ``np.matmul``?  Two things it cannot do, both measured to matter for convolutions:

1. **Accumulate.**  A 3×3 convolution is the sum of 9 matrix products, one per kernel tap
   (see ``conv.py``). BLAS's ``sgemm`` computes ``C = alpha·A·B + beta·C``; with ``beta = 1`` each
   tap adds straight into the output. ``np.matmul`` only has ``beta = 0``, so each tap would need a
   temporary and an extra pass over memory.
2. **Split the work the way we want.**  OpenBLAS parallelises one GEMM over the rows and columns
   of C. Our weight-gradient GEMMs are (16 × 34) outputs summed over 66 000 pixels: OpenBLAS's
   2-thread run was no faster than 1 thread (30 GFLOP/s). Splitting the *pixels* between two
   Python threads that each call single-threaded BLAS ran 2× faster (ctypes drops the GIL during
   the call, so the two threads really run at once).

So we call the very OpenBLAS library NumPy itself ships (found next to NumPy, called through
ctypes; no new dependency), and fall back to ``np.matmul`` (+ add) when it cannot be found —
slower, same numbers.

Not an op of its own: a helper of ``conv.py``'s GEMM path. Its definition is the NumPy line in
``gemm``'s fallback branch, ``C = op(A) @ op(B) + beta·C``; ``tests/test_ops_conv.py`` runs the
convolutions both ways (OpenBLAS and the fallback) against the loop references.

The thread pool is created on first use and reused (one per process). While our workers run,
OpenBLAS is switched to 1 thread and switched back afterwards, so NumPy code elsewhere keeps its
usual multithreaded BLAS.
"""
import ctypes
import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _load_openblas():
    """NumPy's bundled OpenBLAS (CBLAS interface, 64-bit ints) or None."""
    here = os.path.dirname(np.__file__)
    pats = [os.path.join(here, "..", "numpy.libs", "*openblas*"),
            os.path.join(here, ".dylibs", "*openblas*"),
            os.path.join(here, "..", "numpy.libs", "*blas*")]
    names = [("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_", "scipy_openblas_set_num_threads64_",
              "scipy_openblas_get_num_threads64_"),
             ("cblas_sgemm64_", "cblas_dgemm64_", "openblas_set_num_threads64_",
              "openblas_get_num_threads64_")]
    for pat in pats:
        for path in sorted(glob.glob(pat)):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for sname, dname, setn, getn in names:
                try:
                    s, d = getattr(lib, sname), getattr(lib, dname)
                    set_n, get_n = getattr(lib, setn), getattr(lib, getn)
                except AttributeError:
                    continue
                i64, vp, ci = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
                s.argtypes = [ci, ci, ci, i64, i64, i64, ctypes.c_float, vp, i64, vp, i64,
                              ctypes.c_float, vp, i64]
                d.argtypes = [ci, ci, ci, i64, i64, i64, ctypes.c_double, vp, i64, vp, i64,
                              ctypes.c_double, vp, i64]
                s.restype = d.restype = None
                set_n.argtypes, set_n.restype = [ci], None
                get_n.argtypes, get_n.restype = [], ci
                return {"s": s, "d": d, "set": set_n, "get": get_n}
    return None


_LIB = _load_openblas()          # read-only after import: the library handle, or None
_POOL_LOCK = threading.Lock()
_POOL = []                       # [ThreadPoolExecutor] once created


def have_cblas():
    """True when GEMMs go straight to OpenBLAS (else the slower NumPy fallback is used)."""
    return _LIB is not None


def n_workers():
    """Worker threads for convolution GEMMs: Numba's thread count (= cores unless limited)."""
    import numba
    return max(1, int(numba.get_num_threads()))


def _ptr(a):
    return a.__array_interface__["data"][0]


def gemm(C, A, B, trans_a=False, trans_b=False, beta=0.0):
    """``C = op(A) @ op(B) + beta * C`` in place, for 2-D views with unit column stride.

    Inputs:
    - C: (M, N) view (row stride may exceed N: a window of a bigger buffer).
    - A: (M, K) view, or (K, M) when ``trans_a``.
    - B: (K, N) view, or (N, K) when ``trans_b``.
    - beta: 0 (overwrite) or 1 (accumulate).
    """
    M, N = C.shape
    K = A.shape[0] if trans_a else A.shape[1]
    if M == 0 or N == 0:
        return
    if _LIB is None or K == 0:
        prod = (A.T if trans_a else A) @ (B.T if trans_b else B)
        if beta == 0.0:
            C[...] = prod
        else:
            C += prod
        return
    isz = C.itemsize
    fn = _LIB["s"] if C.dtype == np.float32 else _LIB["d"]
    fn(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
       M, N, K, 1.0, _ptr(A), A.strides[0] // isz, _ptr(B), B.strides[0] // isz,
       beta, _ptr(C), C.strides[0] // isz)


def run_jobs(fn, jobs):
    """Run ``fn(job)`` for every job, spread over the worker threads (single-threaded BLAS each).

    Jobs must write disjoint outputs. With one worker or one job they simply run in order
    with OpenBLAS's own threading left on.
    """
    nw = n_workers()
    if nw == 1 or len(jobs) <= 1 or _LIB is None:
        for j in jobs:
            fn(j)
        return
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=nw, thread_name_prefix="regnp-gemm"))
        pool = _POOL[0]
        old = _LIB["get"]()
        _LIB["set"](1)
        try:
            for _ in pool.map(fn, jobs):
                pass
        finally:
            _LIB["set"](old)
