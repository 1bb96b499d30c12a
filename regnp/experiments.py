"""Experiments that produce the figures and tables quoted in the README.

    python -m regnp.experiments transfer [--steps 600] [--size 128] [--data-root DIR]

``transfer``: does a network trained only on the embedded phantom register real abdominal MRI?
Trains Meta-Reg (the defaults of ``python -m regnp.train``) once on phantom pairs and once on
CHAOS training slices, with the same σ, size, steps and seed, then evaluates both on the CHAOS
test pairs (subjects never seen) and the phantom test pairs. Writes
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
    a = p.parse_args(argv)
    try:
        transfer(a.steps, a.size, a.sigma, a.data_root, a.out, a.pairs)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
