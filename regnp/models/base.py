"""What every registration model shares: input checks, the spatial transformer, the interface.

A model maps a pair to a displacement and a warped image::

    warped, u, extras = model.forward(fixed, moving)     # fixed, moving: (N, 1, H, W)
    model.backward(dwarped, du, dextras=None)             # accumulates parameter gradients

``u`` is ``(N, 2, H, W)`` in pixels (channel 0 = rows/y, 1 = columns/x) and
``warped[p] = moving[p + u(p)]`` (bilinear, zero outside). ``extras`` holds what a loss may need
besides ``u`` (e.g. the raw U-Net output, or FCN-SS's coarse-scale warps); ``dextras`` carries the
gradients of such extra outputs back in. ``penalty(rho1, rho2)`` returns the model's own
parameter-only loss terms (eq. 12 for Meta-Reg; nothing for the baselines) and accumulates their
gradients. ``options`` is a JSON-able dict that rebuilds the same architecture (checkpoints).
"""
import numpy as np

from .._checks import check_array, check_same_shape
from ..nn.module import Module
from ..ops.warp import warp_backward, warp_forward


class RegistrationModel(Module):
    """Base class. Subclasses set ``self.levels`` (size must be divisible by 2**levels),
    ``self.options`` and implement ``displacement(x) -> (u, extras)`` and
    ``displacement_backward(du, dextras) -> None``."""

    name = "base"

    def __init__(self):
        super().__init__()
        self.levels = 0
        self.options = {}

    # -- inputs ------------------------------------------------------------------------------
    def check_pair(self, fixed, moving):
        check_array("fixed", fixed, ndim=4)
        check_array("moving", moving, ndim=4, dtype=fixed.dtype)
        check_same_shape("fixed", fixed, "moving", moving)
        if fixed.shape[1] != 1:
            raise ValueError(f"images must be single-channel (N, 1, H, W), got {fixed.shape}; "
                             f"convert colour images to grayscale first")
        f = 2 ** self.levels
        H, W = fixed.shape[2:]
        if H % f or W % f:
            raise ValueError(
                f"image size {H}x{W} is not divisible by 2^{self.levels} = {f}, which "
                f"{self.name} needs; pad or resize to e.g. {-(-H // f) * f}x{-(-W // f) * f} "
                f"(python -m regnp.register pads and crops back for you)")

    # -- the pipeline ------------------------------------------------------------------------
    def forward(self, fixed, moving):
        """Returns warped ``(N,1,H,W)``, u ``(N,2,H,W)``, extras (dict)."""
        self.check_pair(fixed, moving)
        x = np.concatenate([fixed, moving], axis=1)        # (N, 2, H, W) network input
        u, extras = self.displacement(x)                   # (N, 2, H, W)
        warped, self._warp_cache = warp_forward(moving, u)  # (N, 1, H, W)
        return warped, u, extras

    def backward(self, dwarped, du=None, dextras=None):
        """dL/dwarped and dL/du (either may be None) → parameter gradients (accumulated)."""
        _, du_warp = warp_backward(dwarped, self._warp_cache)
        du = du_warp if du is None else du + du_warp
        self.displacement_backward(du, dextras or {})

    def penalty(self, rho1, rho2):
        """Model-specific parameter penalties: ``(value, parts)``; none for most models."""
        return 0.0, {}

    def diagnostics(self):
        """Numbers worth logging during training (e.g. the meta filter's sum and trace)."""
        return {}

    # -- to implement -------------------------------------------------------------------------
    def displacement(self, x):
        raise NotImplementedError

    def displacement_backward(self, du, dextras):
        raise NotImplementedError
