"""Learning with a fixed RKHS layer (paper eq. 7): U-Net → α → u = c·K α → warp.

The U-Net's output is read as the coefficient field α of the representer theorem, and the
displacement is the Gram product ``u = c K α`` with a *fixed* kernel (no learned filter, no
meta penalty). ``gram="exact"`` computes K α exactly at any size — Kronecker form
``K_y A K_xᵀ`` for separable kernels (Gaussian), FFT zero-padded convolution otherwise
(see ``regnp.rkhs.gram``); ``gram="conv13"`` replaces it by the 13×13 convolution of eq. 10, so the
two can be trained and compared on the same pairs. K is symmetric, so the backward is one more
K product: dα = c K du.

``c = 1 / Σ_d k(d)`` scales K to unit DC gain (a constant α of 1 px gives u = 1 px), the same
convention as the classical solver, so α is in pixels and the kernel width only sets smoothness.
The 13×13 form uses the sum of its own window, so both forms have gain exactly 1.
"""
import numpy as np

from ..nn.unet import UNet
from ..rkhs.gram import make_gram
from ..rkhs.kernels import make_kernel
from .base import RegistrationModel
from .voxelmorph import VM2_DEC


class RKHSNet(RegistrationModel):
    def __init__(self, kernel="gaussian", kernel_width=3.0, gram="exact", window=13,
                 enc=(16, 32, 32, 32), dec=VM2_DEC, upsample="nearest", seed=0,
                 dtype=np.float32):
        super().__init__()
        if gram not in ("exact", "conv13"):
            raise ValueError(f"gram must be 'exact' (Kronecker/FFT) or 'conv13', got {gram!r}")
        self.name = "rkhs"
        self.kernel = make_kernel(kernel, kernel_width)
        self.gram, self.window = gram, int(window)
        self.unet = UNet(in_ch=2, enc=enc, dec=dec, full_size=True, upsample=upsample,
                         rng=np.random.default_rng(seed), dtype=dtype)
        self.levels = len(enc)
        self.options = {"kernel": kernel, "kernel_width": kernel_width, "gram": gram,
                        "window": window, "enc": list(enc), "dec": list(dec),
                        "upsample": upsample}
        self._ops = {}                                    # (H, W) -> (operator, scale)

    def operator(self, H, W):
        """The Gram operator for an H×W grid and its unit-gain scale (built once per size)."""
        if (H, W) not in self._ops:
            if self.gram == "exact":
                op = make_gram(self.kernel, (H, W), method="auto")
                gain = float(np.sum(self.kernel.stencil(H, W)))
            else:
                op = make_gram(self.kernel, (H, W), method="conv13", size=self.window)
                gain = float(np.sum(self.kernel.window(self.window)))
            self._ops[(H, W)] = (op, 1.0 / gain)
        return self._ops[(H, W)]

    def displacement(self, x):
        alpha = self.unet.forward(x)                      # (N, 2, H, W) coefficients α
        op, c = self.operator(*alpha.shape[2:])
        u, self._gram_cache = op.forward(alpha)           # K α
        return u * u.dtype.type(c), {"alpha": alpha}

    def displacement_backward(self, du, dextras):
        op, c = self.operator(*du.shape[2:])
        dalpha = op.backward(np.ascontiguousarray(du * du.dtype.type(c)), self._gram_cache)
        self.unet.backward(dalpha)
