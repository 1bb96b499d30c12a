"""Experiments that produce the figures and tables quoted in the README.

    python -m regnp.experiments transfer [--steps 600] [--size 128] [--data-root DIR]

    python -m regnp.experiments rkhs [--steps 600] [--size 128] [--pairs 20]
    python -m regnp.experiments ablation [--sigma 16] [--dataset phantom]

``transfer``: does a network trained only on the embedded phantom register real abdominal MRI?
Trains Meta-Reg (default options; 600 steps at 128×128 unless told otherwise) once on phantom
pairs and once on CHAOS training slices, with the same σ, size, steps and seed, then evaluates
both on the CHAOS test pairs (subjects never seen) and the phantom test pairs. Writes
``figures/transfer_phantom_to_chaos.png`` and ``runs/transfer/results.json``.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def transfer(steps=600, size=128, sigma=10.0, data_root=None, out=None, pairs=40, seed=0,
             fig_dir=None, progress=True):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import load_dataset
    from .evaluate import evaluate_pairs, summarize_records
    from .ops.warp import warp_forward
    from .train import config_from_args, parse_args, train

    out = Path(out or REPO / "runs" / "transfer")
    test = {name: load_dataset(name, "test", data_root=data_root, size=size, sigma=sigma)
            for name in ("phantom", "chaos")}
    results, models = {}, {}
    for train_set in ("phantom", "chaos"):
        cfg = config_from_args(parse_args(["--dataset", train_set, "--size", str(size),
                                           "--sigma", str(sigma), "--seed", str(seed)]))
        res = train(cfg, steps, out / f"train_{train_set}", data_root=data_root,
                    save_every=steps, val_every=0, progress=progress)
        models[train_set] = res["model"]
        for test_set, ds in test.items():
            recs = evaluate_pairs(res["model"], ds, range(min(pairs, len(ds))), progress=progress,
                                  desc=f"{train_set}→{test_set}")
            results[f"{train_set}->{test_set}"] = {"summary": summarize_records(recs),
                                                    "train_seconds": res["seconds"]}
            s = results[f"{train_set}->{test_set}"]["summary"]
            print(f"trained on {train_set:>7}, tested on {test_set:>7}: Dice "
                  f"{s['dice_before']['mean']:.2f} → {s['dice_after']['mean']:.2f} ± "
                  f"{s['dice_after']['std']:.2f} %, |J|>0 {s['pct_positive_jacobian']['mean']:.2f} %")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"steps": steps, "size": size, "sigma": sigma, "pairs": pairs, "results": results},
        indent=1))

    fig, ax = plt.subplots(1, 4, figsize=(18, 4.3), gridspec_kw={"width_ratios": [1.4, 1, 1, 1]})
    keys = list(results)
    x = np.arange(len(keys))
    before = [results[k]["summary"]["dice_before"]["mean"] for k in keys]
    after = [results[k]["summary"]["dice_after"]["mean"] for k in keys]
    err = [results[k]["summary"]["dice_after"]["std"] for k in keys]
    ax[0].bar(x - 0.2, before, 0.4, label="before", color="lightgray")
    ax[0].bar(x + 0.2, after, 0.4, yerr=err, label="after", color="tab:blue")
    ax[0].set_xticks(x, [k.replace("->", "\n→ ") for k in keys], fontsize=8)
    ax[0].set_ylim(50, 100)
    ax[0].set_ylabel("liver + spleen Dice (%)")
    ax[0].set_title(f"Meta-Reg, {steps} steps, {size}², σ = {sigma:g}")
    ax[0].legend()
    b = test["chaos"].batch([0])
    for a, (name, model) in zip(ax[2:], models.items()):
        _, u, _ = model.forward(b["fixed"], b["moving"])
        w = warp_forward(b["moving"], u)[0]
        a.imshow(np.abs(b["fixed"][0, 0] - w[0, 0]), cmap="magma", vmin=0, vmax=0.5)
        a.set_title(f"|F − warped|, model trained on {name}")
    ax[1].imshow(np.abs(b["fixed"][0, 0] - b["moving"][0, 0]), cmap="magma", vmin=0, vmax=0.5)
    ax[1].set_title("a CHAOS test pair: |F − M| before")
    for a in ax[1:]:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    path = Path(fig_dir or REPO / "figures") / "transfer_phantom_to_chaos.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path} and {out / 'results.json'}")
    return results


def _train_and_evaluate(runs, steps, size, sigma, pairs, out, dataset="phantom", data_root=None,
                        extra=(), progress=True, seed=0):
    """Train each ``runs[name] = (folder, flags)`` with the same data/steps/seed and evaluate on
    the same test pairs. Returns ({name: summary + seconds_per_step}, test dataset, indices)."""
    from .data import load_dataset
    from .evaluate import evaluate_pairs, summarize_records
    from .train import config_from_args, parse_args, train
    test = load_dataset(dataset, "test", data_root=data_root, size=size, sigma=sigma)
    idx = range(min(pairs, len(test)))
    results = {}
    for name, (folder, flags) in runs.items():
        cfg = config_from_args(parse_args(list(flags) + list(extra) + [
            "--dataset", dataset, "--size", str(size), "--sigma", str(sigma), "--seed", str(seed)]))
        res = train(cfg, steps, Path(out) / folder, data_root=data_root, save_every=steps,
                    val_every=0, progress=progress)
        s = summarize_records(evaluate_pairs(res["model"], test, idx, progress=progress))
        s["seconds_per_step"] = res["seconds"] / steps
        results[name] = s
        print(f"{name:>28}: Dice {s['dice_before']['mean']:.2f} → {s['dice_after']['mean']:.2f} "
              f"± {s['dice_after']['std']:.2f} %, |J|>0 {s['pct_positive_jacobian']['mean']:.2f} %, "
              f"min det {s['min_jacobian']['mean']:.2f}, {1e3 * s['seconds_per_step']:.0f} ms/step")
    return results, test, idx


def ablation(steps=600, size=128, sigma=16.0, pairs=20, dataset="phantom", data_root=None,
             out=None, progress=True, seed=0):
    """Table 5's ablation: Meta-Reg vs the same network without M (ρ1 = ρ2 = 0), keeping the
    13×13 layer as an unconstrained trainable conv, and without the layer at all."""
    out = Path(out or REPO / "runs" / "ablation")
    runs = {"Meta-Reg": ("metareg", ["--model", "metareg"]),
            "ablated (13×13 kept, no M)": ("ablated", ["--model", "ablated"]),
            "ablated (no 13×13 layer)": ("ablated_nofilter", ["--model", "ablated", "--no-filter"])}
    results, _, idx = _train_and_evaluate(runs, steps, size, sigma, pairs, out, dataset,
                                          data_root, progress=progress, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"steps": steps, "size": size, "sigma": sigma, "dataset": dataset, "pairs": len(idx),
         "results": results}, indent=1))
    print(f"saved {out / 'results.json'}")
    return results


def rkhs_comparison(steps=600, size=128, sigma=10.0, pairs=20, kernel_width=3.0, out=None,
                    fig_dir=None, progress=True, seed=0):
    """Eq. 7 trained two ways — exact K·α (Kronecker) and its 13×13 approximation (eq. 10) —
    next to Meta-Reg and VoxelMorph-2, all with the same steps/seed/pairs, and the classical
    per-pair solver of eq. 6 on the same test pairs. Reports Dice, % det J > 0, min det J,
    seconds per training step and seconds per test pair."""
    import time

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import summarize_records
    from .metrics import dice, folding_stats
    from .ops.warp import warp_nearest
    from .rkhs.solver import register_rkhs

    out = Path(out or REPO / "runs" / "rkhs")
    runs = {                                 # name: (output folder, training flags)
        "rkhs exact (Kronecker)": ("rkhs_exact", ["--model", "rkhs", "--gram", "exact"]),
        "rkhs 13×13 (eq. 10)": ("rkhs_conv13", ["--model", "rkhs", "--gram", "conv13"]),
        "Meta-Reg": ("metareg", ["--model", "metareg"]),
        "VoxelMorph-2": ("vm2", ["--model", "vm2"]),
    }
    results, test, idx = _train_and_evaluate(runs, steps, size, sigma, pairs, out,
                                             extra=["--kernel-width", str(kernel_width)],
                                             progress=progress, seed=seed)
    recs = []
    for i in idx:
        b = test.batch([i])
        t0 = time.perf_counter()
        r = register_rkhs(b["fixed"], b["moving"])          # solver defaults (Gaussian, width 16)
        sec = time.perf_counter() - t0
        wm = warp_nearest(b["moving_mask"], r.u)[0, 0]
        labels = list(test.eval_labels)
        fm = b["fixed_mask"][0, 0]
        before = dice(fm, b["moving_mask"][0, 0], labels=labels)["mean"]
        after = dice(fm, wm, labels=labels)["mean"]
        fold = folding_stats(r.u[0])
        recs.append({"dice_before": before, "dice_after": after, "seconds": sec,
                     "pct_positive_jacobian": float(fold["pct_positive"]),
                     "min_jacobian": float(fold["min_det"]),
                     "dice_before_per_label": {}, "dice_after_per_label": {}})
    s = summarize_records(recs)
    s["seconds_per_step"] = None
    results["classical RKHS solver (eq. 6)"] = s
    print(f"{'classical RKHS solver':>24}: Dice {s['dice_before']['mean']:.2f} → "
          f"{s['dice_after']['mean']:.2f} ± {s['dice_after']['std']:.2f} %, |J|>0 "
          f"{s['pct_positive_jacobian']['mean']:.2f} %, {s['seconds_per_pair_median']:.2f} s/pair")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"steps": steps, "size": size, "sigma": sigma, "pairs": len(idx),
         "kernel_width": kernel_width, "results": results}, indent=1))

    fig, ax = plt.subplots(1, 2, figsize=(13, 4))
    names = list(results)
    x = np.arange(len(names))
    ax[0].bar(x, [results[n]["dice_after"]["mean"] for n in names],
              yerr=[results[n]["dice_after"]["std"] for n in names], color="tab:blue")
    ax[0].axhline(results[names[0]]["dice_before"]["mean"], color="gray", ls=":",
                  label="before registration")
    ax[0].set_xticks(x, [n.replace(" (", "\n(") for n in names], fontsize=7)
    ax[0].set_ylim(50, 100)
    ax[0].set_ylabel("liver + spleen Dice (%)")
    ax[0].legend()
    ax[0].set_title(f"phantom test pairs ({len(idx)}), {size}², σ = {sigma:g}")
    ax[1].bar(x, [results[n]["seconds_per_pair_median"] for n in names], color="tab:orange")
    ax[1].set_yscale("log")
    ax[1].set_xticks(x, [n.replace(" (", "\n(") for n in names], fontsize=7)
    ax[1].set_ylabel("seconds per pair (median)")
    ax[1].set_title("registration time")
    fig.tight_layout()
    path = Path(fig_dir or REPO / "figures") / "rkhs_exact_vs_conv13_vs_solver.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path} and {out / 'results.json'}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m regnp.experiments", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    t = sub.add_parser("transfer", help="phantom-trained vs CHAOS-trained Meta-Reg on CHAOS")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--sigma", type=float, default=10.0)
    t.add_argument("--pairs", type=int, default=40, help="test pairs per set")
    t.add_argument("--data-root", default=None)
    t.add_argument("--out", default=None)
    t.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("ablation", help="Meta-Reg vs ablated (with / without the 13×13 layer)")
    b.add_argument("--steps", type=int, default=600)
    b.add_argument("--size", type=int, default=128)
    b.add_argument("--sigma", type=float, default=16.0)
    b.add_argument("--pairs", type=int, default=20)
    b.add_argument("--dataset", default="phantom")
    b.add_argument("--data-root", default=None)
    b.add_argument("--out", default=None)
    b.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("rkhs", help="eq. 7 exact vs 13×13, Meta-Reg, VM-2 and the eq. 6 solver")
    r.add_argument("--steps", type=int, default=600)
    r.add_argument("--size", type=int, default=128)
    r.add_argument("--sigma", type=float, default=10.0)
    r.add_argument("--pairs", type=int, default=20)
    r.add_argument("--kernel-width", type=float, default=3.0)
    r.add_argument("--out", default=None)
    r.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        if a.experiment == "transfer":
            transfer(a.steps, a.size, a.sigma, a.data_root, a.out, a.pairs, seed=a.seed)
        elif a.experiment == "ablation":
            ablation(a.steps, a.size, a.sigma, a.pairs, a.dataset, a.data_root, a.out,
                     seed=a.seed)
        else:
            rkhs_comparison(a.steps, a.size, a.sigma, a.pairs, a.kernel_width, a.out,
                            seed=a.seed)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
