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

**Diffeomorphic mode** (``integrate=T`` > 0; VoxelMorph-1/2 and Meta-Reg): the network's field is
read as a stationary *velocity* v, and the displacement is that of its exponential,
``u = exp(v) − id``, by scaling and squaring with T squarings (:mod:`regnp.ops.integrate`), at
half resolution when ``int_downsize=2`` (VoxelMorph's default)::

    v, extras = displacement(x)          # (N, 2, H, W) velocity (Meta-Reg: the filtered field)
    u = integrate(v, T)                   # (N, 2, H, W) displacement of exp(v)
    warped = M∘u                          # extras["velocity"] = v (the Objective regularises it)

Backward: dL/du (from the warp and any loss on u) goes back through the integration, and the
gradient of any loss on the velocity (``dextras["velocity"]``) is added to dL/dv.

**Inverse** (for the bidirectional loss): after a forward in diffeomorphic mode,
``inverse_forward(fixed)`` integrates −v (exp(−v) = exp(v)⁻¹) and returns ``F∘φ⁻¹`` and its
displacement; ``dextras["warped_fixed"]`` then carries dL/d(F∘φ⁻¹) into ``backward``.
"""
import numpy as np

from .._checks import check_array, check_same_shape
from ..nn.module import Module
from ..ops.integrate import integrate_velocity_backward, integrate_velocity_forward
from ..ops.warp import warp_backward, warp_forward

INT_DOWNSIZES = (1, 2)


class RegistrationModel(Module):
    """Base class. Subclasses set ``self.levels`` (size must be divisible by 2**levels),
    ``self.options`` and implement ``displacement(x) -> (u, extras)`` and
    ``displacement_backward(du, dextras) -> None``."""

    name = "base"

    def __init__(self):
        super().__init__()
        self.levels = 0
        self.options = {}
        self.integrate, self.int_downsize = 0, 2

    def set_integration(self, integrate, int_downsize):
        """Diffeomorphic mode: ``integrate`` squarings (0 = the field is the displacement, as
        the paper) at full (``int_downsize=1``) or half (2) resolution. Recorded in ``options``
        only when on, so a displacement model's options are what they always were."""
        if isinstance(integrate, bool) or not isinstance(integrate, (int, np.integer)) \
                or integrate < 0:
            raise ValueError(f"integrate must be an integer >= 0 (0 = predict a displacement; "
                             f"7 as VoxelMorph), got {integrate!r}")
        if int_downsize not in INT_DOWNSIZES:
            raise ValueError(f"int_downsize must be 1 (integrate at full resolution) or 2 (half "
                             f"resolution, as VoxelMorph), got {int_downsize!r}")
        self.integrate, self.int_downsize = int(integrate), int(int_downsize)
        if self.integrate:
            self.options.update(integrate=self.integrate, int_downsize=self.int_downsize)

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
        self._inv = None
        if self.integrate:
            v = self._velocity = u                         # (N, 2, H, W) velocity
            u, self._int_cache = integrate_velocity_forward(v, self.integrate, self.int_downsize)
            extras = dict(extras, velocity=v)
        warped, self._warp_cache = warp_forward(moving, u)  # (N, 1, H, W)
        return warped, u, extras

    def inverse_forward(self, fixed):
        """F∘φ⁻¹ with φ⁻¹ = exp(−v), for the velocity v of the last ``forward``.

        Inputs: fixed ``(N, 1, H, W)`` (the pair's fixed image). Returns ``(warped_fixed,
        u_inv)``: ``(N, 1, H, W)`` and the ``(N, 2, H, W)`` displacement of exp(−v).
        """
        if not self.integrate:
            raise ValueError(f"the inverse warp needs a velocity field: build {self.name} with "
                             f"integrate > 0 (--integrate STEPS)")
        v = self._velocity
        u_inv, int_cache = integrate_velocity_forward(-v, self.integrate, self.int_downsize)
        warped_fixed, warp_cache = warp_forward(fixed, u_inv)    # (N, 1, H, W)
        self._inv = (int_cache, warp_cache)
        return warped_fixed, u_inv

    def backward(self, dwarped, du=None, dextras=None):
        """dL/dwarped and dL/du (either may be None) → parameter gradients (accumulated).
        ``dextras`` may hold ``"velocity"`` (dL/dv) and ``"warped_fixed"`` (dL/d(F∘φ⁻¹))."""
        dextras = dict(dextras or {})
        _, du_warp = warp_backward(dwarped, self._warp_cache)
        du = du_warp if du is None else du + du_warp
        if self.integrate:
            dv = integrate_velocity_backward(du, self._int_cache)         # (N, 2, H, W)
            if dextras.get("warped_fixed") is not None:
                if self._inv is None:
                    raise RuntimeError("dextras['warped_fixed'] given, but inverse_forward was "
                                       "not called after forward")
                int_cache, warp_cache = self._inv
                _, du_inv = warp_backward(dextras.pop("warped_fixed"), warp_cache)
                dv -= integrate_velocity_backward(du_inv, int_cache)      # u_inv = exp(−v)
            if dextras.get("velocity") is not None:
                dv += dextras.pop("velocity")
            du = dv
        self.displacement_backward(du, dextras)

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
