# %% Lesson 07 — The U-Net
"""Lesson 07 — The U-Net: a forward pass, and its hand-written backward through the skips.

VoxelMorph's network g_θ(F, M) is a U-Net: an encoder that halves the image four times, a decoder
that doubles it back, and *skip connections* that hand each encoder level's features straight to
the decoder level of the same size. The skips are what let the network output a sharp,
full-resolution displacement.

For backpropagation the skips are the one subtle point: an encoder output feeds two consumers
(the next encoder conv, and a decoder concat), so the gradient reaching it is the *sum* of the
gradients from both. This lesson runs a forward pass, prints the shapes, runs the backward,
measures how much gradient travels through each skip versus up the decoder, writes the backward
out with the sum at every skip on the page (checked against ``UNet.backward``), and checks the
whole thing against finite differences.

Run:  python lessons/07_unet.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""

import numpy as np

from regnp.data import load_dataset
from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.gradcheck import H, check_vjp
from regnp.nn.unet import UNet
from regnp.ops.activation import leaky_relu_forward
from regnp.ops.conv import conv2d_forward

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])

# %%
# Step 1 — an input pair. The network sees fixed and moving stacked as 2 channels.
S = 64 if quick else 128
b = load_dataset("phantom", "test", size=S, sigma=10, n_pairs=2).batch([0, 1])
x = np.concatenate([b["fixed"], b["moving"]], axis=1)          # (2, 2, S, S)
print(f"Step 1 — input x = [F, M]: {x.shape}")

# %%
# Step 2 — the VoxelMorph-2 U-Net, forward. We record each encoder output's shape.
net = UNet(rng=np.random.default_rng(0))
flow = net.forward(x)
print("Step 2 — forward")
h = x
for i, blk in enumerate(net.enc):                               # the encoder, again, by hand
    h = blk.forward(h)                                          # (2, C_i, S/2^(i+1), ·)
    print(f"  encoder level {i}: {h.shape[1]} channels at {h.shape[2]}×{h.shape[3]} "
          f"(stride-2 conv + LeakyReLU)")
print(f"  flow: {flow.shape}, |u| max {np.abs(flow).max():.2e} px — the flow head starts "
      f"near zero (weights ~ N(0, 1e-5)), so training starts from the identity")
print(f"  parameters: {net.num_parameters():,}")
# Each block is "3×3 conv + LeakyReLU(0.2)". The layer fuses the activation into the
# convolution's output pass (one sweep over memory instead of two); it must give exactly
# leaky_relu(conv(x) + b), and does:
blk = net.enc[0].conv
unfused = leaky_relu_forward(conv2d_forward(x, blk.params["w"], blk.params["b"], 2, 1)[0],
                             0.2)[0]
fused_diff = np.abs(blk.forward(x) - unfused).max()
print(f"  encoder block 0, fused vs conv then LeakyReLU: max |diff| = {fused_diff:.1e}")

# %%
# Step 3 — backward. Use dL/du = u − target for a made-up target field, as if the loss were
# ½‖u − target‖². Then split the gradient at every concat to see where it goes.
rng = np.random.default_rng(1)
net.flow.params["w"][...] = rng.normal(0, 0.05, net.flow.params["w"].shape)  # a livelier head
flow = net.forward(x)
target = rng.normal(0, 1, flow.shape).astype(np.float32)
dflow = flow - target
net.zero_grad()
dx = net.backward(dflow)
print(f"Step 3 — backward: dL/dx {dx.shape}, ‖dL/dx‖ = {np.linalg.norm(dx):.3e}")
# The concat backward simply slices the channel axis: the first block goes back up the
# decoder, the second back along the skip. UNet.backward can hand both halves back at
# every concat (return_skip_grads=True); we measure them on a fresh forward/backward.
net.forward(x)
net.zero_grad()
_, splits = net.backward(dflow, return_skip_grads=True)
norms = [(np.linalg.norm(up), np.linalg.norm(skip))          # full resolution first,
         for up, skip in (sp for sp in splits if sp is not None)]   # then coarser levels
for lvl, (up, skip) in enumerate(norms):
    res = "full" if lvl == 0 else f"1/{2 ** lvl}"
    print(f"  concat at {res} resolution: ‖grad up the decoder‖ = {up:.3e}, ‖grad into the skip‖ "
          f"= {skip:.3e}  ({100 * skip / (up + skip):.0f} % through the skip)")

# %%
# Step 3b — the backward written out, with the sum at every skip on the page. Walk the
# graph of Step 2 in reverse, calling each block's own backward (a conv's backward is lesson
# 06's; an upsample's sums each 2×2 block back into one pixel). A concat's backward is a slice
# of the channel axis: its first channels go back up the decoder, the rest along the skip.
# An encoder output e_k fed two consumers — the next encoder block and a decoder concat — so
# the gradient reaching it is the SUM of what comes back from each.
net.fuse_joins = False     # the three ops as written here: upsample, concat, conv (the default
net.forward(x)             # reads each join in place inside the conv — same numbers, fewer bytes)
net.zero_grad()
L = net.levels
skip_ch = [x.shape[1]] + [blk.conv.params["w"].shape[0] for blk in net.enc]   # x, e0, e1, ...
dh = net.flow.backward(dflow)                              # (2, 16, S, S)
for blk in reversed(net.dec_tail):
    dh = blk.backward(dh)
dskip = [None] * (L + 1)                                   # the gradients arriving via skips
c = dh.shape[1] - skip_ch[0]                               # concat [up(h), x]: split it
dh, dskip[0] = dh[:, :c], dh[:, c:]
dh = net.final_up.backward(dh)                             # (2, ·, S/2, S/2)
for blk in reversed(net.dec_half):
    dh = blk.backward(dh)
for i in reversed(range(L - 1)):                           # concat i joined skip e_{L-2-i}
    c = dh.shape[1] - skip_ch[L - 1 - i]
    dh, dskip[L - 1 - i] = dh[:, :c], dh[:, c:]
    dh = net.dec_up[i].backward(net.ups[i].backward(dh))
dh_decoder = dh                                            # (2, ·, S/2^L, ·) into the encoder
for lvl in reversed(range(L)):                             # the encoder, deepest first
    if dskip[lvl + 1] is not None:
        dh = dh + dskip[lvl + 1]                           # ← the sum at skip e_lvl
    dh = net.enc[lvl].backward(dh)
dx_hand = dh + dskip[0]                                    # x itself feeds enc 0 and the skip
grads_hand = {name: g.copy() for name, _, g in net.named_parameters()}
net.forward(x)
net.zero_grad()
dx_lib = net.backward(dflow)
skip_by_hand_vs_library = max(np.abs(dx_hand - dx_lib).max(),
                              max(np.abs(grads_hand[n] - g).max()
                                  for n, _, g in net.named_parameters()))
print(f"Step 3b — backward by hand vs UNet.backward: max abs diff {skip_by_hand_vs_library:.1e} "
      f"(dL/dx and all {len(grads_hand)} parameter gradients)")
# Forget the sums — let each encoder output keep only the gradient from the block above it —
# and dL/dx comes out wrong (a finite-difference check would catch it, Step 4):
net.forward(x)                                             # backward consumes the caches
dh = dh_decoder
for lvl in reversed(range(L)):
    dh = net.enc[lvl].backward(dh)
dropped = np.linalg.norm(dh - dx_lib) / np.linalg.norm(dx_lib)
print(f"  without the sums at the skips: ‖dL/dx − right‖ / ‖right‖ = {dropped:.2f}")

# %%
# Step 4 — gradient check of the whole network (float64, small widths, one parameter array
# from each end and the input). If any skip's gradient were dropped, this would fail.
small = UNet(enc=(4, 8, 8), dec=(8, 8, 8, 8, 4, 4), rng=np.random.default_rng(0),
             dtype=np.float64)
small.flow.params["w"][...] = rng.normal(0, 0.3, small.flow.params["w"].shape)
xs = rng.standard_normal((2, 2, 16, 24))
d = rng.standard_normal(small.forward(xs).shape)
small.zero_grad()
dxs = small.backward(d)
errs = {"input x": check_vjp(lambda: small.forward(xs), xs, dxs, d, max_entries=30)}
for name in ("enc.0.conv.w", "dec_up.0.conv.w", "flow.w"):
    p, g = next((p, g) for n, p, g in small.named_parameters() if n == name)
    errs[name] = check_vjp(lambda: small.forward(xs), p, g.copy(), d, max_entries=20)
print(f"Step 4 — finite-difference check, float64, h = {H:g} (regnp.gradcheck's default):")
for k, v in errs.items():
    print(f"  d/d{k}: max relative error {v:.1e}")
# Why the default step is 1e-6 (lesson 02, Step 5): nudging one first-layer weight moves every
# LeakyReLU input downstream, thousands of them; with a ten times larger step, some of them
# cross 0 inside ±h, and the central difference straddles a kink. The backward is the same.
p, g = next((p, g) for n, p, g in small.named_parameters() if n == "enc.0.conv.w")
kink_h1e5 = check_vjp(lambda: small.forward(xs), p, g.copy(), d, max_entries=20, h=1e-5)
print(f"  d/denc.0.conv.w again with h = 1e-5: max relative error {kink_h1e5:.1e}")

# Figure: the input pair, a few encoder feature maps, the gradient split per level.
feats = []
h = x
for blk in net.enc:
    h = blk.forward(h)
    feats.append(h[0, 0])
fig, ax = plt.subplots(1, 6, figsize=(17, 3.2))
ax[0].imshow(b["fixed"][0, 0], cmap="gray")
ax[0].set_title("fixed F")
ax[1].imshow(b["moving"][0, 0], cmap="gray")
ax[1].set_title("moving M")
for i in range(3):
    ax[2 + i].imshow(feats[i], cmap="viridis")
    ax[2 + i].set_title(f"encoder {i}: {feats[i].shape[0]}×{feats[i].shape[1]}, ch 0")
for a in ax[:5]:
    a.set_xticks([])
    a.set_yticks([])
lv = np.arange(len(norms))
ax[5].bar(lv - 0.2, [n[0] for n in norms], 0.4, label="up the decoder")
ax[5].bar(lv + 0.2, [n[1] for n in norms], 0.4, label="into the skip")
ax[5].set_xticks(lv, ["full"] + [f"1/{2 ** i}" for i in lv[1:]], fontsize=8)
ax[5].set_xlabel("concat at resolution")
ax[5].set_yscale("log")
ax[5].set_title("‖grad‖ split per concat")
ax[5].legend(fontsize=8)
fig.tight_layout()
path = out_dir / "07_unet.png"
fig.savefig(path, dpi=100)
show_or_close(fig)
print(f"saved {path}")
numbers = {"fused_vs_unfused": fused_diff, "max_gradcheck_error": max(errs.values()),
           "skip_by_hand_vs_library": skip_by_hand_vs_library, "without_skip_sums": dropped,
           "enc0_error_h1e-5": kink_h1e5,
           "skip_share_full_res": norms[0][1] / (norms[0][0] + norms[0][1])}
report_numbers(**numbers)
