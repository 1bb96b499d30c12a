"""LeakyReLU and channel concatenation (the U-Net's skip connections), forward and backward.

LeakyReLU:  y = x if x > 0 else slope·x;   dL/dx = dL/dy · (1 if x > 0 else slope).
At exactly x = 0 we use the slope (any value in [slope, 1] is a valid subgradient).

Concatenation along channels has the simplest backward of all: the gradient is *split* back
into the pieces, in the same order — this is how a U-Net skip connection routes gradient to the
encoder.

NumPy's elementwise ufuncs run on one thread, so LeakyReLU is a Numba loop split over the
threads (``_fast/activation_kernels.py``, ``_fast/threads.py``); its NumPy definition (``leaky_relu_forward_reference``)
comes first. Concatenation is one NumPy call and its own definition. (The U-Net fuses LeakyReLU into its convolutions' output pass; lesson 07
checks that the fused layer equals ``leaky_relu_forward(conv2d_forward(x))``.)
"""
import numpy as np

from .._checks import check_array
from ._fast import activation_kernels as fast
from ._fast.threads import run


# ---------------------------------------------------------------------------------------------
# The definition (NumPy one-liners); the Numba kernels (``_fast/activation_kernels.py``) must
# equal them
# ---------------------------------------------------------------------------------------------
def leaky_relu_forward_reference(x, slope=0.2):
    """y = x where x > 0, else slope·x. Returns (y, cache)."""
    return np.where(x > 0, x, slope * x), (x, slope)


def leaky_relu_backward_reference(dout, cache):
    """dx = dout where x > 0, else slope·dout (the slope at exactly x = 0)."""
    x, slope = cache
    return np.where(x > 0, dout, slope * dout)


def _check_slope(slope):
    if not isinstance(slope, (int, float, np.floating)) or not 0 <= slope <= 1:
        raise ValueError(f"slope must be a number in [0, 1] (0.2 in VoxelMorph), got {slope!r}")
    return float(slope)


def leaky_relu_forward(x, slope=0.2):
    """LeakyReLU; must equal ``leaky_relu_forward_reference``.

    Inputs:
    - x: float array of any shape (usually (N, C, H, W)).
    - slope: gradient for negative inputs, in [0, 1].
    Returns:
    - out: same shape as x.
    - cache: (x, slope).
    """
    check_array("x", x)
    slope = _check_slope(slope)
    xc = np.ascontiguousarray(x)
    out = np.empty_like(xc)                                # same shape as x
    run(fast.leaky_relu_fwd, xc.reshape(-1), slope, out.reshape(-1))
    return out, (xc, slope)


def leaky_relu_backward(dout, cache):
    """Backward of LeakyReLU; must equal ``leaky_relu_backward_reference``.
    Inputs: dout (shape of x), cache. Returns: dx (shape of x)."""
    x, slope = cache
    check_array("dout", dout, dtype=x.dtype, shape=x.shape)
    d = np.ascontiguousarray(dout)
    dx = np.empty_like(x)
    run(fast.leaky_relu_bwd, d.reshape(-1), x.reshape(-1), slope, dx.reshape(-1))
    return dx


def concat_forward(xs):
    """Concatenate feature maps along channels.

    Inputs:
    - xs: list of arrays (N, Ci, H, W), same N, H, W and dtype.
    Returns:
    - out: (N, sum Ci, H, W).
    - cache: the channel counts.
    """
    if not isinstance(xs, (list, tuple)) or len(xs) == 0:
        raise TypeError("concat_forward expects a non-empty list of (N, C, H, W) arrays")
    check_array("xs[0]", xs[0], ndim=4)
    for i, x in enumerate(xs[1:], 1):
        check_array(f"xs[{i}]", x, ndim=4, dtype=xs[0].dtype)
        if x.shape[0] != xs[0].shape[0] or x.shape[2:] != xs[0].shape[2:]:
            raise ValueError(f"xs[{i}] has shape {x.shape} but xs[0] has {xs[0].shape}; "
                             f"all pieces need the same N, H, W (only channels may differ)")
    out = np.concatenate(xs, axis=1)                       # (N, sum Ci, H, W)
    return out, [x.shape[1] for x in xs]


def concat_backward(dout, cache):
    """Split dout (N, sum Ci, H, W) back into a list of contiguous (N, Ci, H, W) gradients."""
    sizes = cache
    check_array("dout", dout, ndim=4)
    if dout.shape[1] != sum(sizes):
        raise ValueError(f"dout has {dout.shape[1]} channels but the concatenated pieces had "
                         f"{sum(sizes)} ({sizes})")
    edges = np.cumsum([0] + list(sizes))
    return [np.ascontiguousarray(dout[:, a:b]) for a, b in zip(edges[:-1], edges[1:])]
