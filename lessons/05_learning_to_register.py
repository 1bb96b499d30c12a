"""Lesson 05 — Learning to register: train VoxelMorph-2 and watch the loss terms and the field.

Classical registration optimises a displacement for one pair. A learning-based method instead
trains a network g_θ on many pairs to *predict* the displacement in one forward pass (eq. 2):

    θ* = argmin_θ  E_(F,M) [ S(F, M ∘ g_θ(F, M)) + λ R(g_θ(F, M)) ]

with S the mean squared intensity difference and R the diffusion regulariser (mean squared
forward differences of u). No labels are used for training; the organ masks only score the
result (Dice). Here we train VoxelMorph-2 on synthetic phantom pairs and follow:

1. the two loss terms during training (S falls; R rises from 0 as the field appears);
2. the predicted field on a held-out pair, before and after training;
3. what λ does: a weak λ matches intensities with a rough, folding field; a strong one is smooth
   but under-registers.

Run:  python lessons/05_learning_to_register.py [--quick] [--out DIR]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np


def main(quick=False, out_dir=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regnp.evaluate import evaluate_pairs, summarize_records
    from regnp.metrics import jacobian_determinant
    from regnp.train import config_from_args, parse_args, train

    out_dir = Path(out_dir) if out_dir else Path(__file__).resolve().parents[1] / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    size, steps = (32, 40) if quick else (64, 300)
    lambdas = (0.04,) if quick else (0.002, 0.04, 1.0)

    # Step 1 — the recipe. One configuration = model + objective + data + optimiser.
    def config(lam):
        return config_from_args(parse_args([
            "--model", "vm2", "--size", str(size), "--sigma", "12", "--lambda", str(lam),
            "--lr", "2e-3", "--pairs", "200", "--val-pairs", "8"]))
    print(f"Step 1 — VoxelMorph-2 on {size}×{size} phantom pairs (σ = 12), MSE + λ·diffusion, "
          f"Adam, batch 2, {steps} steps")

    # Step 2 — train for each λ and evaluate on held-out pairs.
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lam in lambdas:
            res = train(config(lam), steps, Path(tmp) / f"lam{lam}", save_every=steps,
                        val_every=0, log_every=5, progress=False)
            recs = evaluate_pairs(res["model"], res["val_ds"], res["val_idx"])
            runs[lam] = (res, summarize_records(recs))
            s = runs[lam][1]
            print(f"Step 2 — λ = {lam:<6}: Dice {s['dice_before']['mean']:.1f} → "
                  f"{s['dice_after']['mean']:.1f} %, |J|>0 {s['pct_positive_jacobian']['mean']:.2f} %,"
                  f" min |J| {s['min_jacobian']['mean']:.2f}  ({res['seconds']:.0f} s)")

    # Step 3 — the loss terms of the middle λ, and its field on one held-out pair.
    lam = 0.04
    res, summ = runs[lam]
    h = res["history"]
    b = res["val_ds"].batch([0])
    warped, u, _ = res["model"].forward(b["fixed"], b["moving"])
    det = jacobian_determinant(u)[0]
    print(f"Step 3 — held-out pair: |u| max {np.abs(u).max():.2f} px, "
          f"MSE {np.mean((b['fixed'] - b['moving']) ** 2):.4f} → "
          f"{np.mean((b['fixed'] - warped) ** 2):.4f}, det J in [{det.min():.2f}, {det.max():.2f}]")

    fig, ax = plt.subplots(1, 5, figsize=(19, 3.8))
    st = [r["step"] for r in h]
    ax[0].plot(st, [r["sim"] for r in h], label="S (MSE)")
    ax[0].plot(st, [lam * r["reg"] for r in h], label="λ·R (diffusion)")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step")
    ax[0].set_title(f"loss terms, λ = {lam}")
    ax[0].legend()
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
    path = out_dir / "05_learning_to_register.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")
    return {k: v[1] for k, v in runs.items()}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    main(quick=a.quick, out_dir=a.out)
