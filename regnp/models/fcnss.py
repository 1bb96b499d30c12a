"""FCN-SS (Li & Fan, ISBI 2018): a fully convolutional hourglass with multi-scale self-supervision.

Li & Fan register a pair by training a fully convolutional network whose only supervision is
image similarity ("self-supervised"), applied to displacement fields predicted at several
resolutions of the decoder ("deep self-supervision"). The paper under study (sec. 5.3, 5.4.1)
describes it as "a fully convolutional network with deep self-similarity so that all the encoding
and decoding layers of the network are trainable", and attributes its weaker results to the
simpler (hourglass) architecture and the trainable decoder without a suitable regulariser.

Ours, defaults ``enc=(16, 32, 32, 32)``, ``dec=(32, 32, 32, 16)``, ``scales=3``, input
``(N, 2, H, W)``, every conv 3×3 + LeakyReLU(0.2)::

    encoder:  conv s2 → (16, H/2) → conv s2 → (32, H/4) → conv s2 → (32, H/8) → conv s2 → (32, H/16)
    decoder stage i (i = 0..3): trainable ×2 up (transposed conv 2×2, stride 2) → conv (dec[i])
              → (32, H/8), (32, H/4), (32, H/2), (16, H)
    heads:    conv 3×3 → 2 channels on the last ``scales`` stages (no activation, ~0 init):
              u_s2 (N, 2, H/4, W/4), u_s1 (N, 2, H/2, W/2)   [in coarse pixels]
              u    (N, 2, H, W)                                [the output field]

There are **no skip connections**: everything passes through the H/16 bottleneck (the hourglass
that, per the paper under study, limits FCN-SS's resolution). The transposed convolutions start as
exact nearest ×2 upsampling plus small noise (as the Meta-Reg U-Net's).

Loss (through :class:`regnp.models.Objective` and the ``aux_loss`` hook)::

    L = S(F, M∘u) + λ R(u) + Σ_{s=1}^{scales−1} w_s [ S(F_s, M_s∘u_s) + λ R(u_s) ]

``F_s``, ``M_s`` are the images 2×2-average-pooled ``s`` times, ``u_s`` is the head's field at
``H/2^s`` in pixels of that grid (each scale registers its own image pyramid level), and the
weights default to ``w_s = 2^−s`` (0.5, 0.25): the full-resolution term dominates, coarse terms
guide the early, large-scale alignment. ``aux_reg=False`` drops the coarse ``λ R(u_s)`` terms.
The terms dict gets ``sim_s{s}`` and ``reg_s{s}``: the *weighted* contributions
(``w_s·S_s`` and ``w_s·λ·R_s``) that the Objective adds to the loss.

What we took from the original: pair in, dense fields out of a trainable fully convolutional
encoder–decoder; fields predicted at several resolutions, each with its own similarity loss on
the correspondingly downsampled images, summed; smoothness regularisation of the fields.
What we simplified or chose ourselves: the exact layer counts, widths and kernel sizes (we reuse
VoxelMorph's encoder widths so the baselines differ in decoder design only), LeakyReLU(0.2),
independent heads (the coarse fields are not upsampled into the finer ones), the scale weights,
the similarity and regulariser (this project's ``Objective``: MSE or NCC, diffusion or TV), and
training on a data set rather than per pair ("without training data" in the original title).
"""
import numpy as np

from .._checks import check_positive_int
from ..nn.layers import Conv2d, ConvTranspose2d
from ..nn.unet import ConvBlock
from ..ops.warp import warp_backward, warp_forward
from .base import RegistrationModel
from ..ops.pool import avgpool2x2_forward


def _nearest_transpose_up(c, rng, dtype):
    """A 2×2 stride-2 transposed conv initialised to nearest ×2 upsampling plus small noise."""
    up = ConvTranspose2d(c, c, k=2, stride=2, pad=0, rng=rng, dtype=dtype)
    w = np.zeros((c, c, 2, 2))
    w[np.arange(c), np.arange(c)] = 1.0
    w += rng.normal(0.0, 0.01, w.shape)
    up.params["w"][...] = w
    up.params["b"][...] = 0
    return up


class FCNSS(RegistrationModel):
    name = "fcnss"

    def __init__(self, enc=(16, 32, 32, 32), dec=(32, 32, 32, 16), scales=3, aux_weights=None,
                 aux_reg=True, seed=0, dtype=np.float32):
        super().__init__()
        enc = [check_positive_int("enc[i]", w) for w in enc]
        dec = [check_positive_int("dec[i]", w) for w in dec]
        L = len(enc)
        if L < 1:
            raise ValueError("enc must list at least one encoder width")
        if len(dec) != L:
            raise ValueError(f"dec must have one width per encoder level (each decoder stage "
                             f"undoes one halving): {L} encoder levels, got dec={dec}")
        scales = check_positive_int("scales", scales)
        if scales > L:
            raise ValueError(f"scales={scales} needs at least {scales} decoder stages "
                             f"(fields at H, H/2, ..., H/2^{scales - 1}); got {L} levels")
        if aux_weights is None:
            aux_weights = [2.0 ** -s for s in range(1, scales)]
        aux_weights = [float(w) for w in aux_weights]
        if len(aux_weights) != scales - 1 or not all(np.isfinite(w) and w >= 0
                                                     for w in aux_weights):
            raise ValueError(f"aux_weights must list {scales - 1} finite weights >= 0 (one per "
                             f"coarse scale H/2 ... H/2^{scales - 1}), got {aux_weights}")
        rng = np.random.default_rng(seed)
        self.levels, self.scales = L, scales
        self.aux_weights, self.aux_reg = aux_weights, bool(aux_reg)
        self.enc = []
        c = 2
        for w in enc:
            self.enc.append(ConvBlock(c, w, stride=2, rng=rng, dtype=dtype))
            c = w
        self.ups, self.dec = [], []
        for w in dec:
            self.ups.append(_nearest_transpose_up(c, rng, dtype))
            self.dec.append(ConvBlock(c, w, stride=1, rng=rng, dtype=dtype))
            c = w
        # heads on the last `scales` stages, coarsest first; flows[-1] is the full-resolution one
        self.head_stages = list(range(L - scales, L))
        self.flows = []
        for i in self.head_stages:
            head = Conv2d(dec[i], 2, k=3, stride=1, pad=1, rng=rng, dtype=dtype)
            head.params["w"][...] = rng.normal(0.0, 1e-5, head.params["w"].shape)
            head.params["b"][...] = 0
            self.flows.append(head)
        self.options = {"enc": list(enc), "dec": list(dec), "scales": scales,
                        "aux_weights": list(aux_weights), "aux_reg": self.aux_reg}

    @staticmethod
    def _key(s):
        return f"flow_s{s}"                               # field at H/2^s, in its own pixels

    def _scale_of_stage(self, i):
        return self.levels - 1 - i                         # stage i outputs H/2^(L-1-i)

    def displacement(self, x):
        h = x                                              # (N, 2, H, W)
        for blk in self.enc:
            h = blk.forward(h)                             # (N, enc[l], H/2^(l+1), ·)
        extras, u = {}, None
        for i, (up, blk) in enumerate(zip(self.ups, self.dec)):
            h = blk.forward(up.forward(h))                 # (N, dec[i], H/2^(L-1-i), ·)
            if i in self.head_stages:
                f = self.flows[self.head_stages.index(i)].forward(h)   # (N, 2, H/2^s, W/2^s)
                s = self._scale_of_stage(i)
                if s == 0:
                    u = f
                else:
                    extras[self._key(s)] = f
        return u, extras

    def displacement_backward(self, du, dextras):
        dh = None
        for i in reversed(range(self.levels)):
            if i in self.head_stages:
                s = self._scale_of_stage(i)
                g = du if s == 0 else dextras.get(self._key(s))
                head = self.flows[self.head_stages.index(i)]
                if g is not None:                          # (a head whose output got no
                    dfeat = head.backward(g)               #  gradient is simply skipped)
                    dh = dfeat if dh is None else dh + dfeat  # (N, dec[i], H/2^s, W/2^s)
            if dh is None:                                 # (only if the finest head had none)
                continue
            dh = self.ups[i].backward(self.dec[i].backward(dh))
        if dh is None:
            return
        for blk in reversed(self.enc):
            dh = blk.backward(dh)

    def aux_loss(self, fixed, moving, extras, objective):
        """The coarse-scale terms ``w_s [S(F_s, M_s∘u_s) + λ R(u_s)]`` and their gradients.

        Inputs: fixed, moving ``(N, 1, H, W)``; extras from ``forward``; the Objective (for S,
        R and λ). Returns ``(terms, dextras)``: ``terms[f"sim_s{s}"]``, ``terms[f"reg_s{s}"]``
        (weighted contributions to the loss) and ``dextras[f"flow_s{s}"]`` = d(those terms)/du_s.
        """
        terms, dextras = {}, {}
        F, M = fixed, moving
        for s in range(1, self.scales):
            F, _ = avgpool2x2_forward(F)                    # (N, 1, H/2^s, W/2^s)
            M, _ = avgpool2x2_forward(M)
            us = extras[self._key(s)]                       # (N, 2, H/2^s, W/2^s)
            w = self.aux_weights[s - 1]
            dt = us.dtype.type
            warped, wcache = warp_forward(M, us)
            sim, dwarped = objective.similarity(warped, F)
            _, dus = warp_backward(dwarped, wcache)         # (N, 2, H/2^s, W/2^s)
            terms[f"sim_s{s}"] = w * sim
            dus *= dt(w)
            if self.aux_reg and objective.lam > 0:
                r, dr = objective.regularizer(us)
                terms[f"reg_s{s}"] = w * objective.lam * r
                dus += dr * dt(w * objective.lam)
            dextras[self._key(s)] = dus
        return terms, dextras
