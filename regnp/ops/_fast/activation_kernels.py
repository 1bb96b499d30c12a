"""Parallel Numba loops for LeakyReLU (``regnp.ops.activation``).

``leaky_relu_fwd`` must equal ``leaky_relu_forward_reference`` and ``leaky_relu_bwd``
``leaky_relu_backward_reference`` (``tests/test_ops_activation.py`` checks both through the
public ``leaky_relu_forward`` / ``leaky_relu_backward``). Arrays are flattened: any shape.
"""
import numba


@numba.njit(parallel=True, cache=True)
def leaky_relu_fwd(x, slope, out):
    """out = x where x > 0, else slope·x, for flat arrays; must equal
    ``regnp.ops.activation.leaky_relu_forward_reference``."""
    for i in numba.prange(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@numba.njit(parallel=True, cache=True)
def leaky_relu_bwd(dout, x, slope, dx):
    """dx = dout where x > 0, else slope·dout, for flat arrays; must equal
    ``regnp.ops.activation.leaky_relu_backward_reference``."""
    for i in numba.prange(x.size):
        dx[i] = dout[i] if x[i] > 0 else dout[i] * slope
