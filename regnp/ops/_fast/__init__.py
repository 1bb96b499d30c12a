"""The fast Numba/BLAS kernels behind ``regnp.ops``. Private: each module names the slow
reference in ``regnp/ops/`` that it must equal, and a test checks that they agree. How a kernel's
jobs are split over threads: ``threads.py``."""
