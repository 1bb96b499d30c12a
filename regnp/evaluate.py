"""Evaluate a trained model on a test set: Dice before/after, folding, time per pair.

    python -m regnp.evaluate --checkpoint runs/metareg/checkpoint.npz --dataset chaos --sigma 16

Per pair: Dice of the nearest-warped moving mask against the fixed mask for each evaluated label
and their mean (the pair's Dice), before and after registration; % of pixels with a positive
Jacobian determinant of φ = id + u and its minimum; seconds to register the pair (one forward
pass, batch 1; the first pair is a warm-up and not timed). Written as ``metrics.json`` (every
pair) and ``table.md`` (the paper's column order: Dice (%), |J|>0 (%), |J|min, CPU s).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .metrics import dice, folding_stats, summarize, ttest_unpaired
from .ops.warp import warp_nearest


def evaluate_pairs(model, ds, indices=None, progress=False, desc="evaluate"):
    """Register the pairs ``indices`` of ``ds`` one at a time; returns a list of records."""
    from tqdm import tqdm
    indices = range(len(ds)) if indices is None else indices
    labels = list(ds.eval_labels)
    report = list(getattr(ds, "report_labels", labels))
    records = []
    for n, i in enumerate(tqdm(indices, desc=desc, disable=not progress, leave=False)):
        b = ds.batch([i])
        F, M = b["fixed"], b["moving"]
        t0 = time.perf_counter()
        warped, u, _ = model.forward(F, M)
        sec = time.perf_counter() - t0
        fm, mm = b["fixed_mask"][0, 0], b["moving_mask"][0, 0]
        wm = warp_nearest(b["moving_mask"], u)[0, 0]
        before = dice(fm, mm, labels=report)["per_label"]
        after = dice(fm, wm, labels=report)["per_label"]
        fold = folding_stats(u[0])
        records.append({
            "id": b["ids"][0],
            "dice_before": float(np.mean([before[k] for k in labels])),
            "dice_after": float(np.mean([after[k] for k in labels])),
            "dice_before_per_label": {str(k): before[k] for k in report},
            "dice_after_per_label": {str(k): after[k] for k in report},
            "pct_positive_jacobian": float(fold["pct_positive"]),
            "min_jacobian": float(fold["min_det"]),
            "seconds": sec if n > 0 else None,             # first pair warms up (compilation)
        })
    return records


def summarize_records(records):
    """Mean ± std over pairs (Dice in %, sample std) and the median seconds per pair."""
    def ms(key, scale=1.0):
        m, s = summarize([scale * r[key] for r in records])
        return {"mean": m, "std": s}
    out = {"n_pairs": len(records), "dice_before": ms("dice_before", 100),
           "dice_after": ms("dice_after", 100),
           "pct_positive_jacobian": ms("pct_positive_jacobian"),
           "min_jacobian": ms("min_jacobian")}
    labels = records[0]["dice_after_per_label"].keys() if records else []
    out["per_label"] = {lab: {
        "before": dict(zip(("mean", "std"), summarize(
            [100 * r["dice_before_per_label"][lab] for r in records]))),
        "after": dict(zip(("mean", "std"), summarize(
            [100 * r["dice_after_per_label"][lab] for r in records])))} for lab in labels}
    secs = [r["seconds"] for r in records if r["seconds"] is not None]
    out["seconds_per_pair_median"] = float(np.median(secs)) if secs else None
    return out


def markdown_table(rows):
    """rows: list of (method name, summary). The paper's column order (Tables 1–4)."""
    lines = ["| Method | Dice before (%) | Dice (%) | \\|J\\| > 0 (%) | \\|J\\|min | CPU (s) |",
             "|---|---|---|---|---|---|"]
    for name, s in rows:
        sec = s["seconds_per_pair_median"]
        lines.append(
            f"| {name} | {s['dice_before']['mean']:.2f} ± {s['dice_before']['std']:.2f} "
            f"| {s['dice_after']['mean']:.2f} ± {s['dice_after']['std']:.2f} "
            f"| {s['pct_positive_jacobian']['mean']:.2f} ± {s['pct_positive_jacobian']['std']:.2f} "
            f"| {s['min_jacobian']['mean']:.2f} ± {s['min_jacobian']['std']:.2f} "
            f"| {'–' if sec is None else f'{sec:.4f}'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m regnp.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint .npz written by regnp.train, or its run folder")
    p.add_argument("--dataset", default=None, help="phantom|chaos|acdc|jsrt (default: the training set)")
    p.add_argument("--data-root", default=None, help="folder with the real sets (default ../shared/data)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--sigma", type=float, default=None, help="synthetic deformation σ (default: as trained)")
    p.add_argument("--size", type=int, default=None, help="working size (default: as trained)")
    p.add_argument("--pairs", type=int, default=None, help="evaluate only the first N test pairs")
    p.add_argument("--out", default=None, help="folder for metrics.json and table.md "
                                                "(default: the checkpoint's folder)")
    p.add_argument("--name", default=None, help="method name in the table")
    p.add_argument("--compare", nargs="*", default=[], help="other metrics.json files: unpaired "
                                                          "t-tests of Dice against each")
    a = p.parse_args(argv)
    from .checkpoint import CheckpointError, checkpoint_path, load_model
    from .data import load_dataset
    try:
        model, cfg = load_model(a.checkpoint)
        data = cfg.get("data", {})
        name = a.dataset or data.get("dataset", "phantom")
        sigma = a.sigma if a.sigma is not None else data.get("sigma", 10.0)
        size = a.size if a.size is not None else data.get("size")
        ds = load_dataset(name, a.split, data_root=a.data_root, size=size, sigma=sigma)
        idx = range(min(len(ds), a.pairs)) if a.pairs else None
        records = evaluate_pairs(model, ds, idx, progress=True)
        summary = summarize_records(records)
        method = a.name or cfg["model"]
        out = Path(a.out) if a.out else checkpoint_path(a.checkpoint).parent
        out.mkdir(parents=True, exist_ok=True)
        result = {"method": method, "checkpoint": str(a.checkpoint), "dataset": name,
                  "split": a.split, "sigma": sigma, "size": size, "summary": summary,
                  "pairs": records}
        tests = {}
        for other in a.compare:
            o = json.loads(Path(other).read_text())
            t, pv = ttest_unpaired([r["dice_after"] for r in records],
                                   [r["dice_after"] for r in o["pairs"]])
            tests[o.get("method", other)] = {"t": t, "p": pv}
        result["ttests"] = tests
        (out / "metrics.json").write_text(json.dumps(result, indent=1))
        table = markdown_table([(method, summary)])
        (out / "table.md").write_text(table + "\n")
    except (CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: {e}")
    print(table)
    for k, v in tests.items():
        print(f"unpaired Welch t-test of Dice vs {k}: t = {v['t']:.3f}, p = {v['p']:.3g}")
    print(f"wrote {out / 'metrics.json'} and {out / 'table.md'}")


if __name__ == "__main__":
    main()
