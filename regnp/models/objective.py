"""The training objective, forward and backward in one place (paper eq. 2 and eq. 11):

    L = S(F, M∘u) + λ·R(u) + [model terms: M(K̃) for Meta-Reg, coarse-scale similarities for FCN-SS]

* S: ``"mse"`` (the paper's choice, mean over pixels) or ``"ncc"`` (local squared NCC, window 9,
  as VoxelMorph; loss in [−1, 0]).
* R: ``"diffusion"`` (p = 2 in eq. 3, the paper's choice) or ``"tv"`` (p = 1), on the final
  displacement u (for Meta-Reg, the *filtered* field K̃ * g, as eq. 11 writes it).
* λ default 0.04: the paper's best value for Meta-Reg (Fig. 3). With S = MSE on [0, 1] images and
  R = mean squared forward difference / 2, λ trades one grey-level² of mismatch against one
  px²/px² of field roughness; lesson 05 shows a sweep.

Calling the objective runs the model forward, every loss forward and backward, the model backward,
and the model's own penalties; parameter gradients are **accumulated** (call ``zero_grad`` first).
"""
import numpy as np

from ..losses import (diffusion_backward, diffusion_forward, mse_backward, mse_forward,
                      ncc_backward, ncc_forward, tv_backward, tv_forward)

SIMILARITIES = ("mse", "ncc")
REGULARIZERS = ("diffusion", "tv")


class Objective:
    def __init__(self, sim="mse", lam=0.04, reg="diffusion", rho1=10.0, rho2=1e-3, ncc_win=9):
        if sim not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {sim!r}")
        if reg not in REGULARIZERS:
            raise ValueError(f"regulariser must be one of {REGULARIZERS}, got {reg!r}")
        for name, v in (("lambda", lam), ("rho1", rho1), ("rho2", rho2)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.sim, self.reg = sim, reg
        self.lam, self.rho1, self.rho2 = float(lam), float(rho1), float(rho2)
        self.ncc_win = int(ncc_win)

    def options(self):
        return {"sim": self.sim, "lam": self.lam, "reg": self.reg, "rho1": self.rho1,
                "rho2": self.rho2, "ncc_win": self.ncc_win}

    # -- pieces used by models with extra outputs (FCN-SS) -------------------------------------
    def similarity(self, pred, target):
        """S(target, pred) and dS/dpred."""
        if self.sim == "mse":
            s, c = mse_forward(pred, target)
            return s, mse_backward(c)[0]
        s, c = ncc_forward(pred, target, win=self.ncc_win)
        return s, ncc_backward(c)[0]

    def regularizer(self, u):
        """R(u) and dR/du."""
        if self.reg == "diffusion":
            r, c = diffusion_forward(u)
            return r, diffusion_backward(c)
        r, c = tv_forward(u)
        return r, tv_backward(c)

    # -- the whole thing ----------------------------------------------------------------------
    def __call__(self, model, fixed, moving):
        """Forward + backward of the full loss. Returns (terms, warped, u).

        terms: ``loss`` (total), ``sim``, ``reg`` (unweighted R), ``meta`` (model penalty) and
        any model-specific parts (e.g. ``sym``, ``trace`` or ``sim_s2``)."""
        warped, u, extras = model.forward(fixed, moving)
        s, dwarped = self.similarity(warped, fixed)           # (N, 1, H, W)
        terms = {"sim": s}
        du = None
        r = 0.0
        if self.lam > 0:
            r, dr = self.regularizer(u)                       # (N, 2, H, W)
            du = dr * u.dtype.type(self.lam)
        terms["reg"] = r
        aux_total, dextras = 0.0, None
        if hasattr(model, "aux_loss"):                        # e.g. FCN-SS's coarse scales
            aux_terms, dextras = model.aux_loss(fixed, moving, extras, self)
            terms.update(aux_terms)
            aux_total = sum(aux_terms.values())
        model.backward(dwarped, du, dextras)
        p, parts = model.penalty(self.rho1, self.rho2)
        terms["meta"] = p
        for k in ("sym", "antisym", "trace", "antitrace"):
            if k in parts:
                terms[k] = parts[k]
        terms["loss"] = s + self.lam * r + p + aux_total
        return terms, warped, u
