"""Numba loops for LeakyReLU, split over threads by ``threads.run`` (``regnp.ops.activation``).

``leaky_relu_fwd`` must equal ``leaky_relu_forward_reference`` and ``leaky_relu_bwd``
``leaky_relu_backward_reference`` (``tests/test_ops_activation.py`` checks both through the
public ``leaky_relu_forward`` / ``leaky_relu_backward``). Arrays are flattened: any shape.
"""
import numba
from regnp.ops._fast.threads import share


@numba.njit(cache=True, nogil=True)
def leaky_relu_fwd(part, parts, x, slope, out):
    """out = x where x > 0, else slope·x, for flat arrays; must equal
    ``regnp.ops.activation.leaky_relu_forward_reference``."""
    job_lo, job_hi = share(x.size, part, parts)    # this thread's jobs
    for i in range(job_lo, job_hi):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@numba.njit(cache=True, nogil=True)
def leaky_relu_bwd(part, parts, dout, x, slope, dx):
    """dx = dout where x > 0, else slope·dout, for flat arrays; must equal
    ``regnp.ops.activation.leaky_relu_backward_reference``."""
    job_lo, job_hi = share(x.size, part, parts)    # this thread's jobs
    for i in range(job_lo, job_hi):
        dx[i] = dout[i] if x[i] > 0 else dout[i] * slope
