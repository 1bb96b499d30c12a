"""Meta-Reg (Al Safadi & Song, CVPR 2021): U-Net → meta-regularization filter → warp.

``g = U-Net(F, M)`` (the raw field, α in the RKHS view of eq. 7), ``u = K̃_θ * g`` with the
trainable 13×13 depthwise filter of :class:`regnp.nn.metareg.MetaRegConv`, ``warped = M∘u``.
Loss (eq. 11–12) = S(F, M∘u) + λ·R(u) + M(K̃_θ), where R is the diffusion regulariser on the
*filtered* field, as eq. 11 writes it.

Architecture choices (the paper gives few details; see also MetaRegConv's docstring):

* U-Net: VoxelMorph-2's widths; the decoder upsamples with trainable stride-2 transposed
  convolutions (sec. 5.4.3), initialised to nearest upsampling.
* Filter: one 13×13 filter shared by both displacement components (``shared``), free weights
  (``param="free"``) or K̃ = UUᵀ (``"psd"``), initialised as a unit-sum Gaussian (σ = 2 px);
  ``normalize="unit_sum"`` + ``trace="hinge"`` (default, well-posed) or ``normalize="none"`` +
  ``trace="linear"`` (eq. 12 exactly as printed).

Diffeomorphic mode (``integrate=T`` > 0, see :mod:`regnp.models.base`): the filtered field
``K̃ * g`` is a stationary *velocity* v, and u = exp(v) − id by scaling and squaring — the learned
filter smooths the velocity, not the displacement, and R regularises v.

The **ablated network** of Table 5 is this model with ρ1 = ρ2 = 0 and an unconstrained filter
(``normalize="none"``), or without the filter at all (``filter=False``).
"""
import numpy as np

from ..nn.metareg import MetaRegConv
from ..nn.unet import UNet
from .base import RegistrationModel
from .voxelmorph import VM2_DEC


class MetaReg(RegistrationModel):
    def __init__(self, enc=(16, 32, 32, 32), dec=VM2_DEC, upsample="transpose", kernel_size=13,
                 shared=True, param="free", init="gaussian", init_sigma=2.0, normalize="unit_sum",
                 trace="hinge", filter=True, integrate=0, int_downsize=2, seed=0,
                 dtype=np.float32, name="metareg"):
        super().__init__()
        self.name = name
        self.unet = UNet(in_ch=2, enc=enc, dec=dec, full_size=True, upsample=upsample,
                         rng=np.random.default_rng(seed), dtype=dtype)
        self.meta = (MetaRegConv(channels=2, k=kernel_size, shared=shared, param=param, init=init,
                                 init_sigma=init_sigma, normalize=normalize, trace=trace,
                                 dtype=dtype)
                     if filter else None)
        self.levels = len(enc)
        self.options = {"enc": list(enc), "dec": list(dec), "upsample": upsample,
                        "kernel_size": kernel_size, "shared": shared, "param": param,
                        "init": init, "init_sigma": init_sigma, "normalize": normalize,
                        "trace": trace,
                        "filter": filter, "name": name}
        self.set_integration(integrate, int_downsize)

    def displacement(self, x):
        g = self.unet.forward(x)                           # (N, 2, H, W) raw field
        if self.meta is None:
            return g, {"raw": g}
        return self.meta.forward(g), {"raw": g}            # u = K̃ * g (or the velocity v)

    def displacement_backward(self, du, dextras):
        dg = du if self.meta is None else self.meta.backward(du)
        self.unet.backward(dg)

    def penalty(self, rho1, rho2):
        if self.meta is None or (rho1 == 0 and rho2 == 0):
            return 0.0, {}
        return self.meta.penalty(rho1, rho2)

    def diagnostics(self):
        if self.meta is None:
            return {}
        d = self.meta.diagnostics()[0]                     # the first (or shared) filter
        return {"k_sum": d.sum, "k_trace": d.trace, "k_anti_trace": d.anti_trace,
                "k_center": d.centre,
                "k_sym_err": d.transpose_asym, "k_rot_err": d.antidiag_asym,
                "k_min_eig": d.eig_min, "k_min_fourier": d.symbol_min}
