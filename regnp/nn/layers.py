"""Layers: thin ``Module`` wrappers around the ops in ``regnp.ops``.

Each layer keeps what its backward needs (the op's cache) on ``self`` between ``forward`` and
``backward``, so call them in that order, once per forward (a layer used twice in one graph
needs two layer objects). Parameter gradients are ADDED into ``self.grads`` (zero them with
``zero_grad()`` between steps).

The convolution layers also own a ``Workspace``: the padded-input, wide-output and
wide-gradient buffers are reused from one step to the next instead of being allocated afresh
(a new 20 MB array costs about as much as the convolution's memory passes on this machine).
"""
import numpy as np

from ..ops.conv import (Workspace, conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                        conv_transpose2d_forward)
from ..ops.pool import upsample_nearest2x_backward, upsample_nearest2x_forward
from ..ops.skip_conv import skip_conv3x3_backward, skip_conv3x3_forward
from .._checks import check_positive_int
from .module import Module


def kaiming_std(fan_in, slope=0.2):
    """He/Kaiming-normal std for a layer followed by LeakyReLU(slope): gain / sqrt(fan_in),
    gain = sqrt(2 / (1 + slope²)). Keeps the activations' variance roughly constant with depth."""
    return float(np.sqrt(2.0 / (1.0 + slope ** 2)) / np.sqrt(fan_in))


def _no_cache(layer):
    raise RuntimeError(f"{type(layer).__name__}.backward called before forward (or twice for "
                       f"one forward)")


class Conv2d(Module):
    """3×3 (k×k) convolution layer, params ``w`` (out_ch, in_ch, k, k) and ``b`` (out_ch,).

    - pad: default (k-1)//2 ("same" for odd k at stride 1).
    - act: None, or a LeakyReLU slope fused into the layer (output = LeakyReLU(conv(x) + b));
      saves one pass over memory each way compared with a separate activation
      (``regnp.ops.activation.leaky_relu_forward``; tests and lesson 07 check they agree).
    - init_slope: the LeakyReLU slope the He init is tuned for (0.2, VoxelMorph's).
    - rng: ``np.random.Generator`` (default ``np.random.default_rng(0)``).
    """

    def __init__(self, in_ch, out_ch, k=3, stride=1, pad=None, bias=True, rng=None,
                 dtype=np.float32, act=None, init_slope=0.2):
        super().__init__()
        in_ch, out_ch, k = (check_positive_int(n, v) for n, v in
                            (("in_ch", in_ch), ("out_ch", out_ch), ("k", k)))
        self.stride = check_positive_int("stride", stride)
        self.pad = (k - 1) // 2 if pad is None else int(pad)
        self.act = act
        rng = np.random.default_rng(0) if rng is None else rng
        std = kaiming_std(in_ch * k * k, init_slope)
        self.add_param("w", (rng.standard_normal((out_ch, in_ch, k, k)) * std).astype(dtype))
        if bias:
            self.add_param("b", np.zeros(out_ch, dtype))
        self.work = Workspace()
        self._cache = None
        self._join_cache = None

    def forward(self, x):
        out, self._cache = conv2d_forward(x, self.params["w"], self.params.get("b"),
                                          self.stride, self.pad, act=self.act, work=self.work)
        return out

    def backward(self, dout):
        if self._cache is None:
            _no_cache(self)
        dx, dw, db = conv2d_backward(dout, self._cache)
        self._cache = None
        self._add_grads(dw, db)
        return dx

    def _add_grads(self, dw, db):
        self.grads["w"] += dw
        if db is not None:
            self.grads["b"] += db

    def forward_join(self, a, skip, up):
        """The layer applied to the channel join ``concat([upsample_up(a), skip])`` without
        building it (``regnp.ops.skip_conv``): a (N, Ca, H/up, W/up), skip (N, Cs, H, W),
        up 2 (nearest ×2) or 1. Equals ``forward(concat([upsample(a), skip]))``; 3×3, stride 1,
        pad 1 layers only. Follow it with ``backward_join``."""
        if self.params["w"].shape[2:] != (3, 3) or self.stride != 1 or self.pad != 1:
            raise ValueError("forward_join needs a 3x3, stride-1, pad-1 convolution")
        out, self._join_cache = skip_conv3x3_forward(a, skip, self.params["w"],
                                                     self.params.get("b"), up=up, act=self.act,
                                                     work=self.work)
        return out

    def backward_join(self, dout, full_res=False):
        """Backward of ``forward_join``: returns (da, dskip); da is the 2×2 block sum of the
        upsampled half's gradient (its full-size gradient with ``full_res=True``)."""
        cache, self._join_cache = self._join_cache, None
        if cache is None:
            raise RuntimeError("Conv2d.backward_join called before forward_join (or twice for "
                               "one forward)")
        da, dskip, dw, db = skip_conv3x3_backward(dout, cache, full_res=full_res)
        self._add_grads(dw, db)
        return da, dskip


class ConvTranspose2d(Module):
    """Transposed convolution layer, params ``w`` (in_ch, out_ch, k, k) and ``b`` (out_ch,).

    Default k=2, stride=2: every input pixel paints a learned 2×2 block — a trainable ×2
    upsampler (the Meta-Reg U-Net's replacement for nearest upsampling).
    He init with fan_in = in_ch · ceil(k/stride)², the number of inputs each output sees.
    """

    def __init__(self, in_ch, out_ch, k=2, stride=2, pad=0, output_padding=0, bias=True,
                 rng=None, dtype=np.float32, init_slope=0.2):
        super().__init__()
        in_ch, out_ch, k = (check_positive_int(n, v) for n, v in
                            (("in_ch", in_ch), ("out_ch", out_ch), ("k", k)))
        self.stride = check_positive_int("stride", stride)
        self.pad, self.output_padding = int(pad), int(output_padding)
        rng = np.random.default_rng(0) if rng is None else rng
        std = kaiming_std(in_ch * (-(-k // self.stride)) ** 2, init_slope)
        self.add_param("w", (rng.standard_normal((in_ch, out_ch, k, k)) * std).astype(dtype))
        if bias:
            self.add_param("b", np.zeros(out_ch, dtype))
        self.work = Workspace()
        self._cache = None

    def forward(self, x):
        out, self._cache = conv_transpose2d_forward(x, self.params["w"], self.params.get("b"),
                                                    self.stride, self.pad, self.output_padding,
                                                    work=self.work)
        return out

    def backward(self, dout):
        if self._cache is None:
            _no_cache(self)
        dx, dw, db = conv_transpose2d_backward(dout, self._cache)
        self._cache = None
        self.grads["w"] += dw
        if db is not None:
            self.grads["b"] += db
        return dx


class UpsampleNearest2x(Module):
    """(N, C, H, W) -> (N, C, 2H, 2W), each pixel repeated in a 2×2 block (no parameters)."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        out, self._cache = upsample_nearest2x_forward(x)
        return out

    def backward(self, dout):
        if self._cache is None:
            _no_cache(self)
        dx = upsample_nearest2x_backward(dout, self._cache)
        self._cache = None
        return dx
