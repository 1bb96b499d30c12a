"""The training objective, forward and backward in one place (paper eq. 2 and eq. 11):

    L = S(F, M∘u) + λ·R(u) + [model terms: M(K̃) for Meta-Reg, coarse-scale similarities for FCN-SS]
        [+ w_seg · D(M_seg∘u, F_seg)]                       (segmentation supervision, optional)

* S: ``"mse"`` (the paper's choice, mean over pixels) or ``"ncc"`` (local squared NCC, window 9,
  as VoxelMorph; loss in [−1, 0]).
* R: ``"diffusion"`` (p = 2 in eq. 3, the paper's choice) or ``"tv"`` (p = 1), on the final
  displacement u (for Meta-Reg, the *filtered* field K̃ * g, as eq. 11 writes it).
* λ default 0.04: the paper's best value for Meta-Reg (Fig. 3). With S = MSE on [0, 1] images and
  R = mean squared forward difference / 2, λ trades one grey-level² of mismatch against one
  px²/px² of field roughness; lesson 08 shows a sweep.

Beyond the paper (each off by default, and then absent from ``options()``):

* Diffeomorphic models (built with ``integrate > 0``): R regularises the *velocity* v
  (``extras["velocity"]``), as VoxelMorph regularises its pre-integration field.
* ``bidir=True`` (needs a diffeomorphic model): the similarity becomes symmetric, as
  VoxelMorph's ``bidir`` with its weights ½, ½:
  ``½ [S(F, M∘φ) + S(M, F∘φ⁻¹)]`` with φ⁻¹ = exp(−v). ``terms["sim"]`` stays S(F, M∘φ) and
  ``terms["sim_inv"]`` is S(M, F∘φ⁻¹).
* ``seg_weight = w > 0`` with ``seg_labels`` (label values): VoxelMorph's semi-supervised mode.
  The moving label map, one-hot over ``seg_labels``, is warped by u bilinearly (each channel like
  an image) and compared with the fixed one-hot map by the soft Dice loss
  D = 1 − mean soft Dice (:func:`regnp.losses.soft_dice_forward`); ``terms["seg"]`` = D. The
  label maps come with the batch (``fixed_mask``, ``moving_mask``); only u gets a gradient.

Calling the objective runs the model forward, every loss forward and backward, the model backward,
and the model's own penalties; parameter gradients are **accumulated** (call ``zero_grad`` first).
"""
import numpy as np

from ..losses import (diffusion_backward, diffusion_forward, mse_backward, mse_forward,
                      ncc_backward, ncc_forward, one_hot, soft_dice_backward, soft_dice_forward,
                      tv_backward, tv_forward)
from ..ops.warp import warp_backward, warp_forward

SIMILARITIES = ("mse", "ncc")
REGULARIZERS = ("diffusion", "tv")


class Objective:
    def __init__(self, sim="mse", lam=0.04, reg="diffusion", rho1=10.0, rho2=1e-3, ncc_win=9,
                 bidir=False, seg_weight=0.0, seg_labels=None):
        if sim not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {sim!r}")
        if reg not in REGULARIZERS:
            raise ValueError(f"regulariser must be one of {REGULARIZERS}, got {reg!r}")
        for name, v in (("lambda", lam), ("rho1", rho1), ("rho2", rho2),
                        ("seg_weight", seg_weight)):
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if seg_weight > 0:
            if not seg_labels:
                raise ValueError("seg_weight > 0 needs seg_labels: the label values whose "
                                 "overlap supervises training, e.g. (1, 4)")
            seg_labels = tuple(int(v) for v in seg_labels)
            if len(set(seg_labels)) != len(seg_labels) or not all(0 < v < 256 for v in seg_labels):
                raise ValueError(f"seg_labels must be distinct label values in 1..255 (0 is the "
                                 f"background), got {list(seg_labels)}")
        self.sim, self.reg = sim, reg
        self.lam, self.rho1, self.rho2 = float(lam), float(rho1), float(rho2)
        self.ncc_win = int(ncc_win)
        self.bidir = bool(bidir)
        self.seg_weight = float(seg_weight)
        self.seg_labels = seg_labels if self.seg_weight > 0 else None

    def options(self):
        opts = {"sim": self.sim, "lam": self.lam, "reg": self.reg, "rho1": self.rho1,
                "rho2": self.rho2, "ncc_win": self.ncc_win}
        if self.bidir:
            opts["bidir"] = True
        if self.seg_weight > 0:
            opts.update(seg_weight=self.seg_weight, seg_labels=list(self.seg_labels))
        return opts

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

    def segmentation(self, u, fixed_mask, moving_mask):
        """Soft Dice loss D(one_hot(M_seg)∘u, one_hot(F_seg)) over ``seg_labels`` and dD/du.

        Inputs: u ``(N, 2, H, W)``; fixed_mask, moving_mask ``(N, 1, H, W)`` integer label maps.
        """
        for name, m in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
            if m is None:
                raise ValueError(f"seg_weight > 0 needs label maps: pass fixed_mask and "
                                 f"moving_mask (a data set with masks); {name} is missing")
            if np.shape(m) != (u.shape[0], 1) + u.shape[2:]:
                raise ValueError(f"{name} must be a label map of shape "
                                 f"{(u.shape[0], 1) + u.shape[2:]}, got {np.shape(m)}")
        moving_1h = one_hot(moving_mask, self.seg_labels, u.dtype)       # (N, L, H, W)
        fixed_1h = one_hot(fixed_mask, self.seg_labels, u.dtype)
        warped_1h, wcache = warp_forward(moving_1h, u)                    # bilinear, per label
        d, dcache = soft_dice_forward(warped_1h, fixed_1h)
        dwarped_1h, _ = soft_dice_backward(dcache)
        _, du = warp_backward(dwarped_1h, wcache)                         # (N, 2, H, W)
        return d, du

    # -- the whole thing ----------------------------------------------------------------------
    def __call__(self, model, fixed, moving, fixed_mask=None, moving_mask=None, backward=True):
        """Forward + backward of the full loss. Returns (terms, warped, u).

        backward=False skips the network's backward pass: the same terms, for the finite
        differences of a gradient check, at about half the cost. (The model's own
        penalty still accumulates its small gradient; the gradients are not meant to be used.)

        fixed_mask, moving_mask: ``(N, 1, H, W)`` label maps, used only when ``seg_weight > 0``.
        terms: ``loss`` (total), ``sim``, ``reg`` (unweighted R), ``meta`` (model penalty) and
        any model-specific parts (e.g. ``sym``, ``trace`` or ``sim_s2``); ``sim_inv`` with
        ``bidir``, ``seg`` (unweighted D) with ``seg_weight``."""
        if self.bidir and not getattr(model, "integrate", 0):
            raise ValueError(f"bidir needs a diffeomorphic model (the inverse is exp(−v)): build "
                             f"{model.name} with integrate > 0 (--integrate STEPS)")
        warped, u, extras = model.forward(fixed, moving)
        s, dwarped = self.similarity(warped, fixed)           # (N, 1, H, W)
        terms = {"sim": s}
        sim_total = s
        du, dextras = None, {}
        r = 0.0
        if self.lam > 0:
            field = extras.get("velocity", u)                 # diffeomorphic models: R(v)
            r, dr = self.regularizer(field)                   # (N, 2, H, W)
            dr *= u.dtype.type(self.lam)
            if field is u:
                du = dr
            else:
                dextras["velocity"] = dr
        terms["reg"] = r
        if self.bidir:                                        # ½ [S(F, M∘φ) + S(M, F∘φ⁻¹)]
            warped_fixed, _ = model.inverse_forward(fixed)
            s_inv, dwf = self.similarity(warped_fixed, moving)
            half = u.dtype.type(0.5)
            dwarped *= half
            dextras["warped_fixed"] = dwf * half
            terms["sim_inv"] = s_inv
            sim_total = 0.5 * (s + s_inv)
        seg_total = 0.0
        if self.seg_weight > 0:
            d, dd = self.segmentation(u, fixed_mask, moving_mask)
            dd *= u.dtype.type(self.seg_weight)
            du = dd if du is None else du + dd
            terms["seg"] = d
            seg_total = self.seg_weight * d
        aux_total = 0.0
        if hasattr(model, "aux_loss"):                        # e.g. FCN-SS's coarse scales
            aux_terms, aux_dextras = model.aux_loss(fixed, moving, extras, self)
            terms.update(aux_terms)
            dextras.update(aux_dextras)
            aux_total = sum(aux_terms.values())
        if backward:
            model.backward(dwarped, du, dextras)
        p, parts = model.penalty(self.rho1, self.rho2)
        terms["meta"] = p
        for k in ("sym", "antisym", "trace", "antitrace"):
            if k in parts:
                terms[k] = parts[k]
        terms["loss"] = sim_total + self.lam * r + p + aux_total + seg_total
        return terms, warped, u
