"""The VoxelMorph U-Net (Balakrishnan et al., CVPR 2018), forward and hand-written backward.

Layout for the default widths (``enc=[16,32,32,32]``, ``dec=[32,32,32,32,32,16,16]``), input
``(N, 2, H, W)`` = fixed and moving stacked along channels, every conv 3×3 + LeakyReLU(0.2)::

    x_in (2, H)  ──────────────────────────────────────────────────────┐ skip
    e0 = conv s2 → (16, H/2)  ─────────────────────────────────┐ skip   │
    e1 = conv s2 → (32, H/4)  ──────────────────────┐ skip     │        │
    e2 = conv s2 → (32, H/8)  ───────────┐ skip     │          │        │
    e3 = conv s2 → (32, H/16)            │          │          │        │
    d0 = conv(e3) 32, up → H/8, concat e2 → 64      │          │        │
    d1 = conv 32,    up → H/4, concat e1 ───────────┘→ 64      │        │
    d2 = conv 32,    up → H/2, concat e0 ──────────────────────┘→ 48    │
    d3 = conv 32, d4 = conv 32            (at H/2)                      │
    up → H, concat x_in ────────────────────────────────────────────────┘→ 34   (full_size only)
    d5 = conv 16, d6 = conv 16            (at H)
    flow = conv 3×3 → 2 channels, no activation, weights ~ N(0, 1e-5) so training starts at u ≈ 0

General rule for ``dec``: the first ``L−1`` widths (L = len(enc)) each do conv → ×2 up → concat
with the matching encoder output; the next two convs run at H/2; the rest run at full resolution
after one more ×2 up and a concat with the input (``full_size=True``, VoxelMorph-2), or stay at
H/2 (``full_size=False``: the flow comes out at half resolution, as VoxelMorph-1 in the paper).

``upsample="nearest"`` is VoxelMorph's parameter-free ×2 nearest upsampling;
``upsample="transpose"`` is a trainable stride-2 transposed convolution (k = 2), as the paper's
Meta-Reg decoder (sec. 5.4.3). We initialise each transposed conv to *exactly* nearest
upsampling (identity across channels on the 2×2 footprint) plus small noise, so both decoders
start from the same function and differ only in what training does with the extra freedom.

Backward runs the graph in reverse. The one thing to get right is the skips: each encoder output
feeds two consumers (the next encoder conv and a decoder concat), so its gradient is the **sum**
of the two incoming gradients — ``concat_backward`` splits the decoder's gradient and the skip part
is added to the encoder's gradient before that encoder block's own backward runs.

Joins read in place (``fuse_joins=True``, the default): "upsample, concatenate, convolve" is
what the maths says, and ``fuse_joins=False`` runs exactly those three ops. By default the conv
after each join reads the decoder's features and the skip where they are
(``Conv2d.forward_join``, ``regnp.ops.skip_conv``): the nearest upsampling happens while the
conv copies its input rows into its tiles, and its backward writes the skip's gradient and the
2×2 block sums of the upsampled half directly. Same numbers (float64 runs the three ops either
way; float32 agrees to round-off), fewer bytes: at 256×256 the upsampled copies and the
concatenations were about a third of the bytes a VoxelMorph-2 step moved
(``python -m regnp.bench --roofline``).
"""
import numpy as np

from ..ops.activation import concat_backward, concat_forward
from ..ops.pool import upsample_nearest2x_backward
from .layers import Conv2d, ConvTranspose2d, UpsampleNearest2x
from .module import Module


class ConvBlock(Module):
    """3×3 convolution (stride 1 or 2, 'same' padding) followed by LeakyReLU(0.2).

    The activation is fused into the convolution's output pass (``Conv2d(act=0.2)``): one
    memory sweep instead of two each way, which matters at 256×256. It computes exactly
    ``leaky_relu(conv(x) + b)``; ``tests/test_nn_layers.py`` and lesson 07 compare it with
    ``leaky_relu_forward(conv2d_forward(x))``.
    """

    def __init__(self, cin, cout, stride=1, rng=None, dtype=np.float32):
        super().__init__()
        self.conv = Conv2d(cin, cout, k=3, stride=stride, pad=1, rng=rng, dtype=dtype, act=0.2)

    def forward(self, x):
        return self.conv.forward(x)

    def backward(self, dout):
        return self.conv.backward(dout)

    def forward_join(self, a, skip, up):
        return self.conv.forward_join(a, skip, up)

    def backward_join(self, dout, full_res=False):
        return self.conv.backward_join(dout, full_res)


class UNet(Module):
    """VoxelMorph-style U-Net producing a displacement (or any ``out_ch``-channel map).

    Inputs of ``forward``: x ``(N, in_ch, H, W)`` with H, W divisible by ``2**len(enc)``.
    Returns ``(N, out_ch, H, W)`` (``full_size``) or ``(N, out_ch, H/2, W/2)``.
    """

    def __init__(self, in_ch=2, enc=(16, 32, 32, 32), dec=(32, 32, 32, 32, 32, 16, 16),
                 full_size=True, upsample="nearest", out_ch=2, rng=None, dtype=np.float32,
                 fuse_joins=True):
        super().__init__()
        self.fuse_joins = bool(fuse_joins)
        enc, dec = list(enc), list(dec)
        L = len(enc)
        if L < 1:
            raise ValueError("enc must list at least one encoder width")
        need = L + 1 + (1 if full_size else 0)
        if len(dec) < need:
            raise ValueError(f"with {L} encoder levels the decoder needs at least {need} widths "
                             f"({L - 1} on the upsampling path, 2 at half resolution"
                             f"{', 1+ at full resolution' if full_size else ''}); got {dec}")
        if upsample not in ("nearest", "transpose"):
            raise ValueError(f"upsample must be 'nearest' or 'transpose', got {upsample!r}")
        rng = np.random.default_rng(0) if rng is None else rng
        self.levels, self.full_size, self.upsample = L, bool(full_size), upsample
        self.in_ch, self.out_ch = in_ch, out_ch

        self.enc = []
        c = in_ch
        for nf in enc:
            self.enc.append(ConvBlock(c, nf, stride=2, rng=rng, dtype=dtype))
            c = nf
        # upsampling path: conv → up → concat(skip)
        self.dec_up, self.ups = [], []
        for i in range(L - 1):
            self.dec_up.append(ConvBlock(c, dec[i], rng=rng, dtype=dtype))
            self.ups.append(self._make_up(dec[i], rng, dtype))
            c = dec[i] + enc[L - 2 - i]
        # two convs at half resolution
        self.dec_half = []
        for nf in dec[L - 1:L + 1]:
            self.dec_half.append(ConvBlock(c, nf, rng=rng, dtype=dtype))
            c = nf
        self.final_up = None
        if self.full_size:
            self.final_up = self._make_up(c, rng, dtype)
            c = c + in_ch
        self.dec_tail = []
        for nf in dec[L + 1:]:
            self.dec_tail.append(ConvBlock(c, nf, rng=rng, dtype=dtype))
            c = nf
        self.flow = Conv2d(c, out_ch, k=3, stride=1, pad=1, rng=rng, dtype=dtype)
        self.flow.params["w"][...] = rng.normal(0.0, 1e-5, self.flow.params["w"].shape)
        self.flow.params["b"][...] = 0

    def _make_up(self, c, rng, dtype):
        if self.upsample == "nearest":
            return UpsampleNearest2x()
        up = ConvTranspose2d(c, c, k=2, stride=2, pad=0, rng=rng, dtype=dtype)
        w = np.zeros((c, c, 2, 2))
        w[np.arange(c), np.arange(c)] = 1.0               # exact nearest ×2 upsampling ...
        w += rng.normal(0.0, 0.01, w.shape)                # ... plus a little symmetry breaking
        up.params["w"][...] = w
        up.params["b"][...] = 0
        return up

    def check_input(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_ch:
            raise ValueError(f"U-Net input must be (N, {self.in_ch}, H, W), got {x.shape}")
        f = 2 ** self.levels
        H, W = x.shape[2:]
        if H % f or W % f:
            raise ValueError(
                f"image size {H}x{W} is not divisible by 2^{self.levels} = {f} (the U-Net halves "
                f"the size {self.levels} times); pad or resize to e.g. "
                f"{-(-H // f) * f}x{-(-W // f) * f} (regnp.register pads and crops back for you)")

    def forward(self, x):
        self.check_input(x)
        skips = [x]                                   # x_in, e0, e1, ..., e_{L-1}
        h = x
        for blk in self.enc:
            h = blk.forward(h)                        # (N, enc[i], H/2^(i+1), W/2^(i+1))
            skips.append(h)
        # a "join" is (up layer, decoder features, skip): the next conv's input is
        # concat([up(features), skip]); _conv builds it or reads it in place
        self._joins = []
        join = None
        for i, (blk, up) in enumerate(zip(self.dec_up, self.ups)):
            h = self._conv(blk, h, join)              # (N, dec[i], ·, ·)
            join = (up, h, skips[self.levels - 1 - i])
        for blk in self.dec_half:
            h = self._conv(blk, h, join)              # (N, ·, H/2, W/2)
            join = None
        if self.full_size:
            join = (self.final_up, h, x)              # (N, ·+in, H, W) once joined
        for blk in self.dec_tail:
            h = self._conv(blk, h, join)
            join = None
        return self.flow.forward(h)                   # (N, out_ch, ·, ·)

    def _conv(self, blk, h, join):
        """blk's forward on h, or on the join concat([up(a), skip]) when ``join`` is given;
        remembers how each join was run, for the backward."""
        if join is None:
            return blk.forward(h)
        up, a, skip = join
        if not self.fuse_joins:                                           # the three ops
            h, cache = concat_forward([up.forward(a), skip])
            self._joins.append(("concat", cache))
            return blk.forward(h)
        if isinstance(up, UpsampleNearest2x):        # upsampled inside the conv's tile copy
            self._joins.append(("nearest", a.shape))
            return blk.forward_join(a, skip, up=2)
        self._joins.append(("in place", None))       # a learned upsampler runs first
        return blk.forward_join(up.forward(a), skip, up=1)

    def _conv_backward(self, blk, up, dh, want_split):
        """Backward of ``_conv`` for a join: returns (grad into the up layer's input, grad into
        the skip, (grad of the upsampled tensor, grad into the skip) if ``want_split``)."""
        how, info = self._joins.pop()
        if how == "concat":
            dup, ds = concat_backward(blk.backward(dh), info)
            return up.backward(dup), ds, (dup, ds)
        if how == "nearest" and not want_split:
            da, ds = blk.backward_join(dh)                        # 2×2 sums written directly
            return da, ds, None
        dup, ds = blk.backward_join(dh, full_res=True)
        da = (upsample_nearest2x_backward(dup, (info, dup.dtype)) if how == "nearest"
              else up.backward(dup))
        return da, ds, (dup, ds)

    def backward(self, dflow, return_skip_grads=False):
        """dL/dflow → dL/dx (and the parameter gradients, accumulated).

        With ``return_skip_grads=True`` also returns, for every skip k, the two halves the
        gradient splits into at its concat: ``splits[k] = (grad going up the decoder, grad going
        into skip k)``. Skip 0 is the input x (full resolution, only when ``full_size``), skip
        k >= 1 the encoder output e_{k-1} at 1/2^k resolution; ``None`` where there is no concat.
        Lesson 07 prints their norms.
        """
        L = self.levels
        dh = self.flow.backward(dflow)
        dskip = [None] * (L + 1)                      # gradients arriving through the skips
        splits = [None] * (L + 1)
        for k, blk in reversed(list(enumerate(self.dec_tail))):
            if k == 0 and self.full_size:             # the conv that read concat([up(h), x])
                dh, dskip[0], splits[0] = self._conv_backward(blk, self.final_up, dh,
                                                              return_skip_grads)
            else:
                dh = blk.backward(dh)
        for k, blk in reversed(list(enumerate(self.dec_half))):
            if k == 0 and L > 1:                      # the conv that read the last join
                dh, dskip[1], splits[1] = self._conv_backward(blk, self.ups[L - 2], dh,
                                                              return_skip_grads)
            else:
                dh = blk.backward(dh)
        for i in reversed(range(L - 1)):
            if i > 0:                                 # dec_up[i] read the join of level i - 1
                dh, dskip[L - i], splits[L - i] = self._conv_backward(
                    self.dec_up[i], self.ups[i - 1], dh, return_skip_grads)
            else:
                dh = self.dec_up[i].backward(dh)
        # encoder, deepest first; each level's gradient = from above + from its skip
        for lvl in reversed(range(L)):
            if dskip[lvl + 1] is not None:
                dh = dh + dskip[lvl + 1]
            dh = self.enc[lvl].backward(dh)
        if dskip[0] is not None:
            dh = dh + dskip[0]
        return (dh, splits) if return_skip_grads else dh   # dh: (N, in_ch, H, W)
