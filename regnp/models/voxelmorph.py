"""VoxelMorph-1 and VoxelMorph-2 (Balakrishnan et al., CVPR 2018 / TMI 2019), 2-D.

* **VoxelMorph-2**: the full U-Net (encoder [16,32,32,32], decoder [32,32,32,32,32,16,16]); the
  flow head runs at full resolution.
* **VoxelMorph-1**: as the paper under study describes it (sec. 5.3), "outputs a displacement at
  half the image size and then upsamples to full size". Ours: the same encoder, the decoder stops
  at H/2 with widths [32,32,32,32,8,8] (VoxelMorph-1's published decoder), the flow head predicts
  a half-resolution field in half-resolution pixels, and bilinear ×2 upsampling followed by ×2
  scaling of the values gives the full-resolution field in full-resolution pixels (a shift of one
  coarse pixel is two fine pixels).

Both use nearest-neighbour ×2 upsampling in the decoder, as VoxelMorph does.

``integrate=T`` (> 0) reads the full-resolution field (VoxelMorph-1: after its ×2 upsampling) as
a stationary velocity and integrates it by scaling and squaring, at half resolution with the
default ``int_downsize=2`` — VoxelMorph's diffeomorphic mode (``int_steps=7, int_downsize=2``);
see :mod:`regnp.models.base`.
"""
import numpy as np

from ..nn.unet import UNet
from ..ops.pool import upsample_bilinear2x_backward, upsample_bilinear2x_forward
from .base import RegistrationModel

VM2_DEC = (32, 32, 32, 32, 32, 16, 16)
VM1_DEC = (32, 32, 32, 32, 8, 8)


class VoxelMorph(RegistrationModel):
    def __init__(self, variant=2, enc=(16, 32, 32, 32), dec=None, upsample="nearest",
                 integrate=0, int_downsize=2, seed=0, dtype=np.float32):
        super().__init__()
        if variant not in (1, 2):
            raise ValueError(f"VoxelMorph variant must be 1 or 2, got {variant!r}")
        dec = tuple(dec) if dec is not None else (VM2_DEC if variant == 2 else VM1_DEC)
        self.name = f"vm{variant}"
        self.variant = variant
        self.unet = UNet(in_ch=2, enc=enc, dec=dec, full_size=(variant == 2), upsample=upsample,
                         rng=np.random.default_rng(seed), dtype=dtype)
        self.levels = len(enc)
        self.options = {"variant": variant, "enc": list(enc), "dec": list(dec),
                        "upsample": upsample}
        self.set_integration(integrate, int_downsize)

    def displacement(self, x):
        flow = self.unet.forward(x)                        # (N, 2, H, W) or (N, 2, H/2, W/2)
        if self.variant == 2:
            return flow, {}
        up, self._up_cache = upsample_bilinear2x_forward(flow)   # (N, 2, H, W)
        return up * up.dtype.type(2.0), {"half_flow": flow}

    def displacement_backward(self, du, dextras):
        if self.variant == 1:
            du = upsample_bilinear2x_backward(du * du.dtype.type(2.0), self._up_cache)
        self.unet.backward(du)
