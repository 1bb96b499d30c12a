# %% Lesson 08 — Learning to register
"""Lesson 08 — Learning to register: the training loop on the page, then the λ trade-off.

Classical registration optimises a displacement for one pair. A learning-based method instead
trains a network g_θ on many pairs to *predict* the displacement in one forward pass (eq. 2):

    θ* = argmin_θ  E_(F,M) [ S(F, M ∘ g_θ(F, M)) + λ R(g_θ(F, M)) ]

with S the mean squared intensity difference and R the diffusion regulariser (mean squared
forward differences of u). No labels are used for training; the organ masks only score the
result (Dice). Here we train VoxelMorph-2 on synthetic phantom pairs:

1. the training loop written out — batch → model forward → loss forward and backward → model
   backward → Adam step → print — run for a few hundred steps;
2. the same step as ``regnp.models.Objective`` computes it (what ``regnp.train`` calls), checked
   equal, and then ``regnp.train.train`` for the longer runs (it adds checkpoints, logging,
   validation and NaN/divergence checks around exactly this loop);
3. what λ does: a weak λ matches intensities with a rough, folding field; a strong one is smooth
   but under-registers.

Run:  python lessons/08_learning_to_register.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""
import tempfile
from pathlib import Path

import numpy as np

from regnp.data import load_dataset
from regnp.evaluate import evaluate_pairs, summarize_records
from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.losses import diffusion_backward, diffusion_forward, mse_backward, mse_forward
from regnp.metrics import jacobian_determinant
from regnp.models import Objective, build_model
from regnp.nn.optim import Adam
from regnp.train import make_config, train

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
size = 32 if quick else 64
loop_steps, train_steps = (200, 200) if quick else (300, 600)   # quick: still learns clearly
lambdas = (0.04,) if quick else (0.002, 0.04, 1.0)
lam, lr, sigma, n_eval = 0.04, 2e-3, 12, 8

# %%
# Step 1 — data and model. 200 training pairs of phantom subjects, 8 held-out test pairs
# (other subjects) to score the result; VoxelMorph-2 starts at u ≈ 0 (its flow head's
# weights are ~1e-5), so before training the "registration" is the identity.
train_ds = load_dataset("phantom", "train", size=size, sigma=sigma, n_pairs=200)
test_ds = load_dataset("phantom", "test", size=size, sigma=sigma, n_pairs=n_eval)
model = build_model("vm2", seed=0)
opt = Adam(model, lr=lr)
before = summarize_records(evaluate_pairs(model, test_ds))
print(f"Step 1 — VoxelMorph-2 ({model.num_parameters():,} parameters) on {size}×{size} "
      f"phantom pairs (σ = {sigma}); held-out Dice before training "
      f"{before['dice_before']['mean']:.1f} %")

# %%
# Step 2 — the training loop. Everything a training step does, in order. (Adam, step 5, is
# gradient descent with two running averages per parameter: of its gradient, which smooths
# the direction, and of its squared gradient, which scales the step, so that every parameter
# moves by about lr per step whatever the size of its gradient; regnp/nn/optim.py.)
print(f"Step 2 — the loop by hand: {loop_steps} steps, batch 2, MSE + {lam}·diffusion, "
      f"Adam lr {lr}")
rng = np.random.default_rng(0)
loop_log = []
for step in range(1, loop_steps + 1):
    b = train_ds.batch(rng.choice(len(train_ds), size=2, replace=False))  # 1. a batch
    F, M = b["fixed"], b["moving"]                                       #    (2, 1, S, S)
    warped, u, _ = model.forward(F, M)                 # 2. forward: U-Net → u, warp M by u
    sim, sim_cache = mse_forward(warped, F)            # 3. loss forward: S and R ...
    reg, reg_cache = diffusion_forward(u)
    dwarped, _ = mse_backward(sim_cache)               #    ... and backward: dL/dwarped,
    du = lam * diffusion_backward(reg_cache)           #    dL/du (R's part)
    model.zero_grad()
    model.backward(dwarped, du)                        # 4. model backward: warp, U-Net
    opt.step()                                         # 5. Adam updates every parameter
    loop_log.append((step, sim, reg))
    if step % (loop_steps // 6) == 0 or step == 1:     # 6. print
        print(f"  step {step:4d}: loss {sim + lam * reg:.5f} = S {sim:.5f} + λ·R "
              f"{lam * reg:.5f}")
after_loop = summarize_records(evaluate_pairs(model, test_ds))
print(f"  held-out Dice {after_loop['dice_before']['mean']:.1f} → "
      f"{after_loop['dice_after']['mean']:.1f} % after {loop_steps} steps")

# %%
# Step 3 — the same step, packaged. regnp.models.Objective runs steps 2–4 in one call
# (it also adds model-specific terms such as Meta-Reg's eq. 12 penalty); regnp.train calls it
# and then Adam. One more batch through both ways must give the same loss and gradients.
b = train_ds.batch([0, 1])
model.zero_grad()
warped, u, _ = model.forward(b["fixed"], b["moving"])
sim, sc = mse_forward(warped, b["fixed"])
reg, rc = diffusion_forward(u)
model.backward(mse_backward(sc)[0], lam * diffusion_backward(rc))
by_hand = {name: g.copy() for name, _, g in model.named_parameters()}
model.zero_grad()
terms, _, _ = Objective(sim="mse", lam=lam, reg="diffusion")(model, b["fixed"], b["moving"])
grad_diff = max(np.abs(g - by_hand[name]).max() / (np.abs(by_hand[name]).max() + 1e-30)
                for name, _, g in model.named_parameters())
loss_diff = abs(terms["loss"] - (sim + lam * reg))
print(f"Step 3 — Objective vs the loop by hand: |Δloss| = {loss_diff:.1e}, max relative "
      f"gradient difference {grad_diff:.1e}")

# %%
# Step 4 — the longer runs with regnp.train.train, one per λ, on the same training pairs,
# each scored on the same held-out pairs. (Dice over 8 pairs moves by a point or two from
# run to run — another batch order, float32 rounding — so compare the λ values with each
# other rather than with Step 2's number.)
# make_config takes the command line's options as keywords (--lambda is lam) and returns
# the same config dict as `python -m regnp.train --model vm2 --size ... --lambda ...` builds.
def config(lam_):
    return make_config(model="vm2", size=size, sigma=sigma, lam=lam_, lr=lr, pairs=200)


print(f"Step 4 — regnp.train.train, {train_steps} steps per λ")
runs = {}
with tempfile.TemporaryDirectory() as tmp:
    for lam_ in lambdas:
        res = train(config(lam_), train_steps, Path(tmp) / f"lam{lam_}",
                    save_every=train_steps, val_every=0, log_every=5, progress=False)
        s = summarize_records(evaluate_pairs(res["model"], test_ds))
        runs[lam_] = (res, s)
        print(f"  λ = {lam_:<6}: Dice {s['dice_before']['mean']:.1f} → "
              f"{s['dice_after']['mean']:.1f} %, |J|>0 {s['pct_positive_jacobian']['mean']:.2f} %,"
              f" min |J| {s['min_jacobian']['mean']:.2f}  ({res['seconds']:.0f} s)")

# %%
# Step 5 — the λ = 0.04 run's field on one held-out pair.
res, summ = runs[lam]
h = res["history"]
b = test_ds.batch([0])
warped, u, _ = res["model"].forward(b["fixed"], b["moving"])
det = jacobian_determinant(u)[0]
print(f"Step 5 — held-out pair: |u| max {np.abs(u).max():.2f} px, "
      f"MSE {np.mean((b['fixed'] - b['moving']) ** 2):.4f} → "
      f"{np.mean((b['fixed'] - warped) ** 2):.4f}, det J in [{det.min():.2f}, {det.max():.2f}]")

fig, ax = plt.subplots(1, 5, figsize=(19, 3.8))
st, sims, regs = (np.array(c) for c in zip(*loop_log))
ax[0].plot(st, sims, color="C0", alpha=0.35, lw=0.8, label="S, loop by hand (per step)")
ax[0].plot(st, lam * regs, color="C1", alpha=0.35, lw=0.8, label="λ·R, loop by hand")
ax[0].plot([r["step"] for r in h], [r["sim"] for r in h], color="C0", label="S, regnp.train")
ax[0].plot([r["step"] for r in h], [lam * r["reg"] for r in h], color="C1",
           label="λ·R, regnp.train")
ax[0].set_yscale("log")
ax[0].set_xlabel("step")
ax[0].set_title(f"loss terms, λ = {lam}")
ax[0].legend(fontsize=7)
ax[1].imshow(b["fixed"][0, 0], cmap="gray")
ax[1].set_title("fixed")
ax[2].imshow(np.abs(b["fixed"][0, 0] - b["moving"][0, 0]), cmap="magma", vmin=0, vmax=0.5)
ax[2].set_title("|F − M| before")
ax[3].imshow(np.abs(b["fixed"][0, 0] - warped[0, 0]), cmap="magma", vmin=0, vmax=0.5)
yy, xx = np.mgrid[:size, :size]
stp = max(1, size // 16)
ax[3].quiver(xx[::stp, ::stp], yy[::stp, ::stp], u[0, 1, ::stp, ::stp], -u[0, 0, ::stp, ::stp],
             color="c", angles="xy", scale_units="xy", scale=1)
ax[3].set_title("|F − warped| after, with u")
for a in ax[1:4]:
    a.set_xticks([])
    a.set_yticks([])
lams = list(runs)
ax[4].plot(lams, [runs[k][1]["dice_after"]["mean"] for k in lams], "o-", label="Dice (%)")
ax[4].plot(lams, [runs[k][1]["pct_positive_jacobian"]["mean"] for k in lams], "s-",
           label="|J| > 0 (%)")
ax[4].axhline(summ["dice_before"]["mean"], color="gray", ls=":", label="Dice before")
ax[4].set_xscale("log")
ax[4].set_xlabel("λ")
ax[4].set_title("the λ trade-off (held-out)")
ax[4].legend(fontsize=8)
fig.tight_layout()
path = out_dir / "08_learning_to_register.png"
fig.savefig(path, dpi=100)
show_or_close(fig)
print(f"saved {path}")
numbers = dict(dice_before=before["dice_before"]["mean"],
               dice_after_loop=after_loop["dice_after"]["mean"],
               dice_after_train=summ["dice_after"]["mean"],
               loop_sim_first=np.mean(sims[:5]), loop_sim_last=np.mean(sims[-5:]),
               objective_vs_loop_grad=grad_diff, objective_vs_loop_loss=loss_diff)
report_numbers(**numbers)
