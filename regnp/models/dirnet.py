"""DIRNet (de Vos et al., DLMIA 2017): a convolutional encoder + a *fixed* cubic B-spline decoder.

The paper under study (sec. 2 and 5.3) describes DIRNet as "only encoding with a sequence of
convolutional layers", then "interpolation for the decoder to arrive at the full image
resolution": trainable parameters live in the encoder only, and the resolution of the field is
limited by the control-point spacing. Ours, for input ``(N, 2, H, W)`` (fixed and moving stacked),
with the defaults ``widths=(16, 32, 32)``, ``head=(32, 32)``, spacing ``s = 2^3 = 8``::

    level 0: conv 3×3 (2 → 16)  + LeakyReLU(0.2) at H,   2×2 average pool → H/2
    level 1: conv 3×3 (16 → 32) + LeakyReLU      at H/2, 2×2 average pool → H/4
    level 2: conv 3×3 (32 → 32) + LeakyReLU      at H/4, 2×2 average pool → H/8  (the grid)
    head:    conv 3×3 (32 → 32) + LeakyReLU, conv 3×3 (32 → 32) + LeakyReLU   at H/8
    grid:    conv 1×1 (32 → 2), no activation → c (N, 2, H/8, W/8): control-point displacements
    decoder: u = cubic B-spline(c, spacing 8)  (N, 2, H, W)   — fixed, no parameters

One control point per ``s × s`` block, sitting at the block's centre; ``c`` is in full-resolution
pixels (it is the B-spline coefficient of the displacement, so no rescaling). See
:mod:`regnp.ops.bspline` for the decoder, its border rule (``border="linear"`` by default: affine
fields are reproduced up to the image edge) and its adjoint.

What we kept from the original: fixed and moving concatenated as input; alternating 3×3 convolutions
and 2×2 average-pooling downsampling; 1×1 convolutions predicting the control-point
displacements; a fixed cubic B-spline transformer. What we changed (for consistency with the
other models of this project, as the paper under study compares architectures, not tricks):
LeakyReLU(0.2) instead of ELU, no batch normalisation, 3×3 "head" convolutions at the grid
resolution to enlarge the receptive field (the original's receptive field came from its image
size, 28×28 MNIST digits and small cardiac crops), He-initialised convolutions with a near-zero
grid head so training starts from u ≈ 0, and the loss is this project's ``Objective`` (MSE or
NCC + λ·R(u)) rather than the original's NCC only.

Options: ``widths`` (one conv per level), ``spacing`` (a power of two; ``widths`` is cut or its
last entry repeated to ``log2(spacing)`` levels) or ``levels = len(widths)`` when ``spacing`` is
None, ``head`` widths, ``border``, ``seed``, ``dtype``.
"""
import numpy as np

from .._checks import check_positive_int
from ..nn.layers import Conv2d
from ..nn.module import Module
from ..nn.unet import ConvBlock
from ..ops.bspline import BORDERS, bspline_upsample_backward, bspline_upsample_forward
from ..ops.pool import avgpool2x2_backward, avgpool2x2_forward
from .base import RegistrationModel


class AvgPool2x2(Module):
    """Parameter-free 2×2 average pooling layer (the original DIRNet's downsampling)."""

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, x):
        out, self._cache = avgpool2x2_forward(x)
        return out

    def backward(self, dout):
        if self._cache is None:
            raise RuntimeError("AvgPool2x2.backward called before forward")
        dx = avgpool2x2_backward(dout, self._cache)
        self._cache = None
        return dx


class DIRNet(RegistrationModel):
    name = "dirnet"

    def __init__(self, widths=(16, 32, 32), head=(32, 32), spacing=None, border="linear",
                 seed=0, dtype=np.float32):
        super().__init__()
        widths = [check_positive_int("widths[i]", w) for w in widths]
        head = [check_positive_int("head[i]", w) for w in head]
        if not widths:
            raise ValueError("widths must list at least one encoder width")
        if spacing is not None:
            spacing = check_positive_int("spacing", spacing)
            if spacing < 2 or spacing & (spacing - 1):
                raise ValueError(f"spacing must be a power of two >= 2 (the encoder halves the "
                                 f"image once per level), got {spacing}")
            levels = spacing.bit_length() - 1
            widths = (widths + [widths[-1]] * levels)[:levels]
        if border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
        rng = np.random.default_rng(seed)
        self.levels = len(widths)
        self.spacing = 2 ** self.levels
        self.border = border
        self.enc, self.pools = [], []
        c = 2
        for w in widths:
            self.enc.append(ConvBlock(c, w, stride=1, rng=rng, dtype=dtype))
            self.pools.append(AvgPool2x2())
            c = w
        self.head = []
        for w in head:
            self.head.append(ConvBlock(c, w, stride=1, rng=rng, dtype=dtype))
            c = w
        self.grid = Conv2d(c, 2, k=1, stride=1, pad=0, rng=rng, dtype=dtype)
        self.grid.params["w"][...] = rng.normal(0.0, 1e-5, self.grid.params["w"].shape)
        self.grid.params["b"][...] = 0
        self.options = {"widths": list(widths), "head": list(head), "spacing": self.spacing,
                        "border": border}

    def check_pair(self, fixed, moving):
        super().check_pair(fixed, moving)
        H, W = fixed.shape[2:]
        if self.border == "linear" and min(H, W) < 2 * self.spacing:
            raise ValueError(
                f"image size {H}x{W} gives a {H // self.spacing}x{W // self.spacing} control grid "
                f"at spacing {self.spacing}; DIRNet's B-spline decoder (border='linear') needs at "
                f"least 2 control points per axis: use images of at least "
                f"{2 * self.spacing}x{2 * self.spacing} or a smaller spacing")

    def displacement(self, x):
        h = x                                              # (N, 2, H, W)
        for conv, pool in zip(self.enc, self.pools):
            h = pool.forward(conv.forward(h))              # (N, w, H/2^(l+1), W/2^(l+1))
        for conv in self.head:
            h = conv.forward(h)                            # (N, w, H/s, W/s)
        c = self.grid.forward(h)                           # (N, 2, H/s, W/s) control points
        u, self._bs_cache = bspline_upsample_forward(c, self.spacing, self.border)  # (N, 2, H, W)
        return u, {"grid": c}

    def displacement_backward(self, du, dextras):
        dc = bspline_upsample_backward(du, self._bs_cache)  # (N, 2, H/s, W/s)
        if dextras.get("grid") is not None:
            dc = dc + dextras["grid"]
        dh = self.grid.backward(dc)
        for conv in reversed(self.head):
            dh = conv.backward(dh)
        for conv, pool in zip(reversed(self.enc), reversed(self.pools)):
            dh = conv.backward(pool.backward(dh))
