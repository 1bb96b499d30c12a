"""The roofline of the U-Net, layer by layer: FLOPs, bytes moved, the bound, the share reached.

The model
---------
A pass that does F floating-point operations and moves B bytes to and from main memory can
take no less than ``max(F / peak, B / bandwidth)`` seconds; equivalently its rate is at most

    attainable GFLOP/s = min(peak, I × bandwidth),     I = F / B  (arithmetic intensity)

— the "roofline": a slope (memory-bound, I below the ridge point peak / bandwidth) that meets a
flat roof (compute-bound). ``peak`` and ``bandwidth`` are measured on the machine at hand
(``machine.py``). A layer far below its bound has a code problem; a layer at its bound gets
faster only by moving fewer bytes.

How the bytes are counted
-------------------------
From what regnp's float32 code actually reads and writes for each layer (``regnp/ops/conv.py``,
``regnp/ops/skip_conv.py`` and the kernels they call, ``regnp/ops/pool.py``,
``regnp/ops/activation.py``), pass by pass (a NaN/Inf scan of an input is a pass of its own):
every array a pass reads counts its full size once, every array it writes counts its full size
once. What stays inside one parallel job's L1/L2 (a job's tile while it is being multiplied,
the accumulator rows) is not counted; buffers written in one pass and read in a later one (the
forward's input tiles, kept for the weight gradient; the gradient tiles) are counted both
times. Halo rows that neighbouring jobs both read, weights and per-job weight-gradient
partials are small and counted once. Each term is named (``Cost.fwd`` / ``Cost.bwd``: lists
of (what, bytes)), so the table can be checked against the code by hand — the tests do this
for one small layer.

The LeakyReLU is fused into every ``ConvBlock``: no mask array exists, and the backward re-reads
the activated output ``y`` to know where the slope applies (the "mask (from y)" term).
"""
from typing import NamedTuple

import numpy as np

from ..ops._fast import direct3x3, direct3x3_s2, direct_convT2


class Cost(NamedTuple):
    """FLOPs and named byte terms of one layer's forward and backward pass."""
    flops_fwd: float
    flops_bwd: float
    fwd: list                 # [(what, bytes), ...]
    bwd: list

    @property
    def bytes_fwd(self):
        return float(sum(b for _, b in self.fwd))

    @property
    def bytes_bwd(self):
        return float(sum(b for _, b in self.bwd))

    @property
    def flops(self):
        return self.flops_fwd + self.flops_bwd

    @property
    def nbytes(self):
        return self.bytes_fwd + self.bytes_bwd


def bound_seconds(flops, nbytes, peak_gflops, bandwidth_gbs):
    """The roofline's lower bound on a pass's time: max(F / peak, B / bandwidth), seconds.

    ``peak_gflops`` in 1e9 FLOP/s, ``bandwidth_gbs`` in 1e9 bytes/s. A pass with no FLOPs (a
    copy, a concatenation) is bounded by its bytes alone."""
    if peak_gflops <= 0 or bandwidth_gbs <= 0:
        raise ValueError(f"peak ({peak_gflops}) and bandwidth ({bandwidth_gbs}) must be > 0")
    return max(flops / (peak_gflops * 1e9), nbytes / (bandwidth_gbs * 1e9))


def attainable_gflops(intensity, peak_gflops, bandwidth_gbs):
    """min(peak, intensity × bandwidth) in GFLOP/s, intensity in FLOPs per byte."""
    return min(peak_gflops, intensity * bandwidth_gbs)


# ---------------------------------------------------------------------------------------------
# Byte and FLOP counts of each kind of layer (float32 paths of regnp.ops; itemsize 4)
# ---------------------------------------------------------------------------------------------
def conv3x3_cost(N, C, Co, H, W, stride=1, act=True, isz=4):
    """Cost of ``Conv2d(C, Co, 3, stride, pad=1, act=0.2 if act)`` on an (N, C, H, W) float32
    input, following the path ``conv2d_forward`` takes (``_direct3x3_forward``):

    - stride 1, Co <= 2, W >= 128 (the flow head, ``conv3x3_few_out``): no tiles; the forward
      reads x in place; the backward is one fused pass reading dout, (y), x and writing dx.
    - stride 1 otherwise (``conv3x3``): the forward copies x into zero-padded tiles
      (J jobs × C × (R + 2)·(W + 2), kept for dw); the backward's dx pass fills gradient tiles
      from dout (and y, the mask) and writes dx, then the dw pass reads both tile sets.
    - stride 2 (``conv3x3s2_*``): phase tiles J × C × 4·(R + 1)·(Wo + 2) in the forward; the
      backward lays dz out as zero-bordered planes (N, Co, (Ho + 2)·(Wo + 2)), which the dw
      pass (with the tiles) and the dx pass read.

    The NaN/Inf check of the input (x, then dout) is a separate scan (``check_array``) except
    on the stride-1 tiled path, where the tile copy does it while reading.
    """
    s = stride
    Ho, Wo = (H + 2 - 3) // s + 1, (W + 2 - 3) // s + 1
    X, Y = N * C * H * W * isz, N * Co * Ho * Wo * isz           # input and output bytes
    wts = Co * C * 9 * isz
    mb = direct3x3.MB
    f = 2.0 * N * Co * C * Ho * Wo * 9
    tiled = s == 1 and not (Co <= 2 and W >= 128)             # NaN check fused in the copy
    fwd = ([] if tiled else [("finite check x", X)]) + [("x", X)]
    bwd = ([] if tiled else [("finite check dout", Y)]) + [("dout", Y)]
    if act:
        bwd.append(("mask (from y)", Y))
    if s == 1 and Co <= 2 and W >= 128:
        R = direct3x3.rows_per_job(N, H, W, C)
        J = N * -(-H // R)
        fwd += [("weights", wts), ("out", Y)]
        bwd += [("x", X), ("weights", wts), ("dx", X), ("dw partials", J * 2 * C * 9 * isz)]
    elif s == 1:
        R = direct3x3.rows_per_job(N, H, W, C)
        J = N * -(-H // R)
        xt = J * C * (R + 2) * (W + 2) * isz                     # forward tiles (kept)
        gt = J * Co * (R + 2) * (W + 2) * isz                    # gradient tiles
        fwd += [("x tiles (write)", xt), ("weights", wts), ("out", Y)]
        bwd += [("dz tiles (write)", gt), ("weights", wts), ("dx", X),
                ("x tiles (read)", xt), ("dz tiles (read)", gt),
                ("dw partials", J * -(-Co // mb) * mb * C * 9 * isz)]
    else:
        R = direct3x3_s2.rows_per_job(N, Ho)
        J = N * -(-Ho // R)
        xt = J * C * 4 * (R + 1) * (Wo + 2) * isz
        gp = N * Co * (Ho + 2) * (Wo + 2) * isz
        fwd += [("x tiles (write)", xt), ("weights", wts), ("out", Y)]
        bwd += [("dz planes (write)", gp), ("x tiles (read)", xt), ("dz planes (read, dw)", gp),
                ("dw partials", J * -(-Co // mb) * mb * C * 9 * isz),
                ("dz planes (read, dx)", gp), ("weights", wts), ("dx", X)]
    return Cost(f, 2 * f, fwd, bwd)


def conv_transpose2x2_cost(N, C, Co, H, W, isz=4):
    """Cost of ``ConvTranspose2d(C, Co, k=2, stride=2)`` on (N, C, H, W) (``direct_convT2``):
    the forward reads x once and writes the (N, Co, 2H, 2W) output; the backward reads dout
    (its de-interleaved tile stays in the job's cache) and x, and writes dx."""
    X, Y = N * C * H * W * isz, N * Co * 4 * H * W * isz
    wts = C * Co * 4 * isz
    R = direct_convT2.rows_per_job(N, H, W)
    J = N * -(-H // R)
    f = 2.0 * N * C * Co * H * W * 4
    fwd = [("finite check x", X), ("x", X), ("weights", wts), ("out", Y)]
    bwd = [("finite check dout", Y), ("dout", Y), ("x", X), ("weights", wts), ("dx", X),
           ("dw partials", J * C * 4 * Co * isz)]
    return Cost(f, 2 * f, fwd, bwd)


def upsample_nearest_cost(N, C, H, W, isz=4):
    """``UpsampleNearest2x`` of (N, C, H, W): forward scans and reads x, writes 4× its size;
    backward scans and reads the 4× gradient and writes the 2×2 block sums."""
    X = N * C * H * W * isz
    return Cost(0.0, 3.0 * X / isz,
                [("finite check x", X), ("x", X), ("out", 4 * X)],
                [("finite check dout", 4 * X), ("dout", 4 * X), ("dx", X)])


def concat_cost(N, Cs, H, W, isz=4):
    """``concat_forward`` of pieces with channels ``Cs`` at H×W: every piece is scanned, read
    and written into the new array; ``concat_backward`` scans dout and copies it into one
    contiguous array per piece."""
    T = N * sum(Cs) * H * W * isz
    return Cost(0.0, 0.0, [("finite check pieces", T), ("pieces", T), ("out", T)],
                [("finite check dout", T), ("dout", T), ("pieces' grads", T)])


def skip_conv3x3_cost(N, Ca, Cs, Co, H, W, up=2, act=True, isz=4):
    """Cost of the conv after a skip join read in place (``regnp.ops.skip_conv``, float32):
    a (N, Ca, H/up, W/up) and s (N, Cs, H, W) are read straight into the tiles, checked for
    NaN/Inf on the way (no upsampled copy, no concatenation, no separate scan); the backward is
    the stride-1 conv's, except that dx is written as da (the 2×2 block sums when up = 2) and
    ds instead of one joined array."""
    A, S = N * Ca * (H // up) * (W // up) * isz, N * Cs * H * W * isz
    plain = conv3x3_cost(N, Ca + Cs, Co, H, W, stride=1, act=act, isz=isz)
    R = direct3x3.rows_per_job(N, H, W, Ca + Cs)
    R += R % 2 if up == 2 else 0
    J = N * -(-H // R)
    xt = J * (Ca + Cs) * (R + 2) * (W + 2) * isz
    gt = J * Co * (R + 2) * (W + 2) * isz
    Y = N * Co * H * W * isz
    wts = Co * (Ca + Cs) * 9 * isz
    fwd = [("a, s", A + S), ("x tiles (write)", xt), ("weights", wts), ("out", Y)]
    bwd = [("dout", Y)] + ([("mask (from y)", Y)] if act else [])
    bwd += [("dz tiles (write)", gt), ("weights", wts), ("da, ds", A + S), ("x tiles (read)", xt),
            ("dz tiles (read)", gt),
            ("dw partials", J * -(-Co // direct3x3.MB) * direct3x3.MB * (Ca + Cs) * 9 * isz)]
    return Cost(plain.flops_fwd, plain.flops_bwd, fwd, bwd)


def skip_add_cost(N, C, H, W, isz=4):
    """The encoder's gradient sum at a skip (``dh + dskip``, backward only): read 2, write 1."""
    X = N * C * H * W * isz
    return Cost(0.0, X / isz, [], [("dh", X), ("dskip", X), ("sum", X)])


# ---------------------------------------------------------------------------------------------
# The U-Net as a list of layers with their shapes and costs
# ---------------------------------------------------------------------------------------------
class Layer(NamedTuple):
    """One row of the roofline table: the layer's ``name``, its ``kind`` ('conv', 'up',
    'convT', 'concat', 'add'), ``shape`` = what :func:`make_runner` needs, and its ``cost``."""
    name: str
    kind: str
    shape: tuple
    cost: Cost


def unet_layers(unet, N, H, W):
    """The layers a training step of ``unet`` (a ``regnp.nn.unet.UNet``) runs on an
    (N, in_ch, H, W) input, in forward order, with their costs. Walks the network's own
    attributes (enc, dec_up, ups, dec_half, final_up, dec_tail, flow) as ``UNet.forward`` does,
    and counts each skip join the way the network runs it: with ``fuse_joins`` one 'join' conv
    reading the features and the skip in place (after the learned upsampler, if any); without,
    an upsampling, a concatenation and a plain conv."""
    rows = []

    def conv(name, layer, h, w, join=None):
        """Add the conv row (a join conv when ``join`` = (Ca, Cs, up) is read in place)."""
        cout = layer.params["w"].shape[0]
        act = layer.act is not None
        if join is None:
            cin = layer.params["w"].shape[1]
            shape = (N, cin, cout, h, w, layer.stride, act)
            rows.append(Layer(f"{name} {cin}->{cout}{' s2' if layer.stride == 2 else ''} "
                              f"@{h}x{w}", "conv", shape, conv3x3_cost(*shape)))
        else:
            ca, cs, up = join
            shape = (N, ca, cs, cout, h, w, up, act)
            rows.append(Layer(f"{name} {ca}{'^' if up == 2 else ''}+{cs}->{cout} @{h}x{w}",
                              "join", shape, skip_conv3x3_cost(*shape)))
        s = layer.stride
        return cout, (h - 1) // s + 1, (w - 1) // s + 1             # 'same' padding: ceil(h/s)

    def join_of(tag, up_layer, c, h, w, skip_c):
        """Rows for joining (N, c, h, w) features with a skip of skip_c channels at 2h × 2w;
        returns (what the next conv reads: None or (Ca, Cs, up), channels, h, w)."""
        if unet.upsample == "transpose":
            co = up_layer.params["w"].shape[1]
            rows.append(Layer(f"up{tag} convT {c}->{co} @{h}x{w}", "convT", (N, c, co, h, w),
                              conv_transpose2x2_cost(N, c, co, h, w)))
            c, up = co, 1
        elif unet.fuse_joins:
            up = 2                                    # done inside the next conv's tile copy
        else:
            rows.append(Layer(f"up{tag} {c} @{h}x{w}", "up", (N, c, h, w),
                              upsample_nearest_cost(N, c, h, w)))
            up = 1
        h, w = 2 * h, 2 * w
        if unet.fuse_joins:
            return (c, skip_c, up), c + skip_c, h, w
        rows.append(Layer(f"concat{tag} {c}+{skip_c} @{h}x{w}", "concat", (N, (c, skip_c), h, w),
                          concat_cost(N, (c, skip_c), h, w)))
        return None, c + skip_c, h, w

    c, h, w = unet.in_ch, H, W
    skips = [(c, h, w)]
    for i, blk in enumerate(unet.enc):
        c, h, w = conv(f"enc{i}", blk.conv, h, w)
        skips.append((c, h, w))
    L = unet.levels
    join, k = None, 0
    for i, (blk, upl) in enumerate(zip(unet.dec_up, unet.ups)):
        c, h, w = conv(f"dec{k}", blk.conv, h, w, join)
        k += 1
        join, c, h, w = join_of(i, upl, c, h, w, skips[L - 1 - i][0])
    for blk in unet.dec_half:
        c, h, w = conv(f"dec{k}", blk.conv, h, w, join)
        join, k = None, k + 1
    if unet.full_size:
        join, c, h, w = join_of(L - 1, unet.final_up, c, h, w, unet.in_ch)
    for blk in unet.dec_tail:
        c, h, w = conv(f"dec{k}", blk.conv, h, w, join)
        join, k = None, k + 1
    conv("flow", unet.flow, h, w)
    # the gradient sums where a skip meets the encoder (backward only): e0 .. e_{L-2} always,
    # the input x too when full_size (UNet.backward computes dL/dx)
    for lvl in range(-1 if unet.full_size else 0, L - 1):
        sc, sh, sw = skips[lvl + 1]
        rows.append(Layer(f"skip add {'x' if lvl < 0 else f'e{lvl}'} {sc} @{sh}x{sw}", "add",
                          (N, sc, sh, sw), skip_add_cost(N, sc, sh, sw)))
    return rows


def make_runner(layer, seed=0):
    """A no-argument callable running ``layer``'s forward and backward once on random float32
    data, with the layer classes and ops the U-Net itself uses."""
    from ..nn.layers import Conv2d, ConvTranspose2d, UpsampleNearest2x
    from ..ops.activation import concat_backward, concat_forward
    rng = np.random.default_rng(seed)

    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    if layer.kind == "join":
        N, ca, cs, cout, h, w, up, act = layer.shape
        mod = Conv2d(ca + cs, cout, k=3, rng=rng, act=0.2 if act else None)
        a, skip = randn(N, ca, h // up, w // up), randn(N, cs, h, w)
        dout = randn(N, cout, h, w)

        def run():
            mod.forward_join(a, skip, up)
            mod.backward_join(dout)
        return run
    if layer.kind == "conv":
        N, cin, cout, h, w, stride, act = layer.shape
        mod = Conv2d(cin, cout, k=3, stride=stride, pad=1, rng=rng, act=0.2 if act else None)
    elif layer.kind == "convT":
        N, cin, cout, h, w = layer.shape
        mod = ConvTranspose2d(cin, cout, k=2, stride=2, rng=rng)
    elif layer.kind == "up":
        N, cin, h, w = layer.shape
        mod = UpsampleNearest2x()
    elif layer.kind == "concat":
        N, cs, h, w = layer.shape
        xs = [randn(N, c, h, w) for c in cs]
        dout = randn(N, sum(cs), h, w)

        def run():
            concat_backward(dout, concat_forward(xs)[1])
        return run
    elif layer.kind == "add":
        a, b = randn(*layer.shape), randn(*layer.shape)

        def run():
            return a + b
        return run
    else:
        raise ValueError(f"unknown layer kind {layer.kind!r}")
    x = randn(N, cin, h, w)
    dout = randn(*mod.forward(x).shape)
    mod.backward(dout)

    def run():
        mod.forward(x)
        mod.backward(dout)
    return run


def roofline_rows(layers, machine, repeats=5, progress=True):
    """Time every layer (forward + backward, median of ``repeats`` after one warm-up) and put
    it beside its roofline bound on ``machine`` (a ``machine.Machine``). Returns dict rows."""
    from regnp.metrics import Timer
    from tqdm import tqdm
    rows = []
    for lay in tqdm(layers, desc="roofline", disable=not progress):
        sec = Timer.measure(make_runner(lay), repeats=repeats, warmup=1)
        c = lay.cost
        bound = bound_seconds(c.flops, c.nbytes, machine.peak_gflops, machine.bandwidth_gbs)
        rows.append({"name": lay.name, "flops": c.flops, "bytes": c.nbytes,
                     "intensity": c.flops / c.nbytes if c.nbytes else 0.0,
                     "bound_ms": 1e3 * bound, "ms": 1e3 * sec,
                     "pct": 100.0 * bound / sec if sec > 0 else 0.0,
                     "memory_bound": c.flops < machine.ridge * c.nbytes,
                     "fits_cache": c.nbytes <= last_level_cache(machine)})
    return rows


def last_level_cache(machine):
    """Bytes of the largest cache listed for the machine (0 when unknown)."""
    return max((size or 0 for _, _, size, _ in machine.caches), default=0)


def format_roofline(rows, machine):
    """The per-layer table, then the totals."""
    w = max(len(r["name"]) for r in rows) + 2
    head = (f"{'U-Net layer (fwd+bwd)':<{w}}{'MFLOP':>9}{'MB moved':>10}{'FLOP/B':>8}"
            f"{'bound ms':>10}{'by':>5}{'ms':>9}{'% of bound':>12}")
    lines = [f"roofline on {machine.cpu}: peak {machine.peak_gflops:.1f} GFLOP/s, bandwidth "
             f"{machine.bandwidth_gbs:.1f} GB/s (1 MB = 1e6 bytes here)", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<{w}}{r['flops'] / 1e6:>9.1f}{r['bytes'] / 1e6:>10.2f}"
                     f"{r['intensity']:>8.2f}{r['bound_ms']:>10.3f}"
                     f"{'mem' if r['memory_bound'] else 'cpu':>5}{r['ms']:>9.3f}{r['pct']:>11.0f}%"
                     + (" *" if r["fits_cache"] else ""))
    b = sum(r["bound_ms"] for r in rows)
    t = sum(r["ms"] for r in rows)
    lines.append("-" * len(head))
    lines.append(f"{'sum of the layers':<{w}}{sum(r['flops'] for r in rows) / 1e6:>9.1f}"
                 f"{sum(r['bytes'] for r in rows) / 1e6:>10.2f}{'':>8}{b:>10.3f}{'':>5}{t:>9.3f}"
                 f"{100 * b / t if t else 0:>11.0f}%")
    if any(r["fits_cache"] for r in rows):
        llc = last_level_cache(machine) / 2 ** 20
        lines.append(f"* moves less than the last-level cache ({llc:g} MiB) in all: it can run "
                     f"from cache, above the main-memory roofline")
    lines.append("by: what bounds the layer on this machine (mem: FLOP/B below the ridge point "
                 f"{machine.ridge:.1f}; cpu: above it). % of bound = bound / measured time.")
    return "\n".join(lines)
