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
import math
import time
from pathlib import Path

import numpy as np

from ._cli import (CLIError, check_inputs_kept, check_output_folder, check_size_divisible,
                   finite_float, positive_int)

OUTPUTS = ("metrics.json", "table.md")


def evaluate_pairs(model, ds, indices=None, progress=False, desc="evaluate", register=None):
    """Register the pairs ``indices`` of ``ds`` one at a time; returns a list of records.

    ``register``: optional ``register(fixed, moving) -> u`` used instead of ``model.forward``
    (e.g. the classical eq. 6 solver, which has no model), so every method is scored by the
    same code."""
    from tqdm import tqdm

    from .metrics import dice, folding_stats
    from .ops.warp import warp_nearest
    indices = range(len(ds)) if indices is None else indices
    labels = list(ds.eval_labels)
    report = list(getattr(ds, "report_labels", labels))
    records = []
    for n, i in enumerate(tqdm(indices, desc=desc, disable=not progress, leave=False)):
        b = ds.batch([i])
        F, M = b["fixed"], b["moving"]
        t0 = time.perf_counter()
        u = model.forward(F, M)[1] if register is None else register(F, M)
        sec = time.perf_counter() - t0
        fm, mm = b["fixed_mask"][0, 0], b["moving_mask"][0, 0]
        wm = warp_nearest(b["moving_mask"], u)[0, 0]
        before = dice(fm, mm, labels=report)["per_label"]
        after = dice(fm, wm, labels=report)["per_label"]
        # A reported organ the fixed slice does not show has no overlap to measure: record None
        # (dice() would say 1.0 when the warped mask has none either, and inflate the mean).
        shown = {k: bool((fm == k).any()) for k in report}
        fold = folding_stats(u[0])
        records.append({
            "id": b["ids"][0],
            "dice_before": float(np.mean([before[k] for k in labels])),
            "dice_after": float(np.mean([after[k] for k in labels])),
            "dice_before_per_label": {str(k): before[k] if shown[k] else None for k in report},
            "dice_after_per_label": {str(k): after[k] if shown[k] else None for k in report},
            "pct_positive_jacobian": float(fold["pct_positive"]),
            "min_jacobian": float(fold["min_det"]),
            "seconds": sec if n > 0 else None,             # first pair warms up (compilation)
        })
    return records


def summarize_records(records):
    """Mean ± std over pairs (Dice in %, sample std) and the median seconds per pair."""
    from .metrics import summarize

    def ms(key, scale=1.0):
        m, s = summarize([scale * r[key] for r in records])
        return {"mean": m, "std": s}
    out = {"n_pairs": len(records), "dice_before": ms("dice_before", 100),
           "dice_after": ms("dice_after", 100),
           "pct_positive_jacobian": ms("pct_positive_jacobian"),
           "min_jacobian": ms("min_jacobian")}
    labels = records[0]["dice_after_per_label"].keys() if records else []

    def over_shown(lab, when):         # pairs whose fixed slice shows the organ (not None)
        v = [100 * r[f"dice_{when}_per_label"][lab] for r in records
             if r[f"dice_{when}_per_label"][lab] is not None]
        return dict(zip(("mean", "std"), summarize(v) if v else (float("nan"),) * 2))
    out["per_label"] = {lab: {
        "n_pairs": sum(r["dice_after_per_label"][lab] is not None for r in records),
        "before": over_shown(lab, "before"), "after": over_shown(lab, "after")}
        for lab in labels}
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


def read_compare(path):
    """Dice-after values and method name of another run's ``metrics.json`` (for ``--compare``).

    Checked before anything is evaluated: the file must exist and hold JSON written by this
    command (a ``pairs`` list whose entries have a finite ``dice_after``), with at least two
    pairs (a t-test needs two values). Returns ``(name, values)``.
    """
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"--compare {path} is a folder; give the metrics.json file written by "
                       f"python -m regnp.evaluate")
    if not path.is_file():
        raise CLIError(f"--compare {path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CLIError(f"--compare {path} is not a JSON file ({e}); give a metrics.json written "
                       f"by python -m regnp.evaluate") from None
    pairs = data.get("pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, list):
        raise CLIError(f"--compare {path} has no list of per-pair results ('pairs'); give a "
                       f"metrics.json written by python -m regnp.evaluate")
    values = []
    for k, r in enumerate(pairs):
        v = r.get("dice_after") if isinstance(r, dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CLIError(f"--compare {path}: pair {k} has no finite 'dice_after' value "
                           f"(got {v!r}); the file was edited or is not from regnp.evaluate")
        values.append(float(v))
    if len(values) < 2:
        raise CLIError(f"--compare {path} holds {len(values)} pair(s); a t-test needs at least 2")
    name = data.get("method") if isinstance(data.get("method"), str) else str(path)
    return name, values


def data_settings(cfg, ck, dataset=None, size=None, sigma=None):
    """The data set, size and σ to evaluate on: the options given, else the checkpoint's.

    The checkpoint's entries that are used are checked first, so a hand-edited or foreign
    checkpoint gets one clear message (naming the option that overrides the bad entry) instead of
    a failure deep in the data loader. Returns ``(dataset, size, sigma)``.
    """
    data = cfg.get("data", {})
    if not isinstance(data, dict):
        if None in (dataset, sigma):
            raise CLIError(f"{ck}: its data description is a {type(data).__name__}, not a "
                           f"mapping; the checkpoint was edited or comes from another version "
                           f"(give --dataset, --size and --sigma)")
        data = {}
    problems = []
    if dataset is None:
        dataset = data.get("dataset", "phantom")
        if not isinstance(dataset, str):
            problems.append(f"dataset {dataset!r} is not a name (override: --dataset)")
    if size is None:
        size = data.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
            problems.append(f"size {size!r} is not a positive integer (override: --size)")
    if sigma is None:
        sigma = data.get("sigma", 10.0)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
                or not math.isfinite(sigma) or sigma < 0:
            problems.append(f"sigma {sigma!r} is not a number ≥ 0 (override: --sigma)")
    if problems:
        raise CLIError(f"{ck}: its data description is not valid ({'; '.join(problems)}); the "
                       f"checkpoint was edited or comes from another version")
    return dataset, size, sigma


def check_evaluation_memory(model, size):
    """Refuse a size whose pairs and forward pass cannot fit in memory (one line, before any
    allocation; ``evaluate --size 4096`` once grew to 23.7 GB and was killed)."""
    from ._checks import check_memory, estimate_forward_bytes, estimate_pair_bytes
    shape = (size, size) if isinstance(size, int) else tuple(size)
    check_memory(estimate_forward_bytes(model, shape) + estimate_pair_bytes(shape),
                 f"evaluating at {shape[0]}×{shape[1]}", "use a smaller --size")


def warn_unlike_training(a, cfg, ds):
    """Warnings for options that are legal but make the scores unlike the training run's."""
    import warnings
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    trained = data.get("size")
    if a.size is not None and isinstance(trained, int) and a.size != trained:
        warnings.warn(f"--size {a.size} differs from the training size {trained}: the network "
                      f"learned displacements in pixels at {trained}×{trained}, so these scores "
                      f"are not comparable with ones at the training size")
    if a.sigma is not None and not hasattr(ds, "sigma"):
        warnings.warn(f"--sigma {a.sigma:g} is ignored: the {ds.name} pairs are real image pairs, "
                      f"not synthetic deformations")
    elif a.sigma == 0:
        warnings.warn("--sigma 0 draws no deformation: every moving image equals its fixed "
                      "image, so the scores only show what the network does to identical pairs")


def run(a, state):
    """The evaluation behind :func:`main` (``a``: parsed options)."""
    positive_int("--pairs", a.pairs)
    positive_int("--size", a.size)
    finite_float("--sigma", a.sigma)
    compare = [read_compare(c) for c in a.compare]
    from .checkpoint import checkpoint_path, load_model
    out = Path(a.out) if a.out else checkpoint_path(a.checkpoint).parent
    check_output_folder("--out", out, OUTPUTS)
    check_inputs_kept("--out", out, OUTPUTS, a.compare)
    model, cfg = load_model(a.checkpoint)
    from .data import load_dataset
    name, size, sigma = data_settings(cfg, a.checkpoint, a.dataset, a.size, a.sigma)
    check_size_divisible("--size" if a.size is not None else "the checkpoint's size", size,
                         model.levels, cfg["model"])
    if size is not None:
        check_evaluation_memory(model, size)
    ds = load_dataset(name, a.split, data_root=a.data_root, size=size, sigma=sigma)
    if size is None:
        check_size_divisible("the data's size", tuple(ds.shape), model.levels, cfg["model"])
        check_evaluation_memory(model, tuple(ds.shape))
    warn_unlike_training(a, cfg, ds)
    idx = range(min(len(ds), a.pairs)) if a.pairs else None
    records = evaluate_pairs(model, ds, idx, progress=True)
    summary = summarize_records(records)
    method = a.name or cfg["model"]
    result = {"method": method, "checkpoint": str(a.checkpoint), "dataset": name,
              "split": a.split, "sigma": sigma, "size": size, "summary": summary,
              "pairs": records}
    tests = {}
    from .metrics import ttest_unpaired
    for other, values in compare:
        t, pv = ttest_unpaired([r["dice_after"] for r in records], values)
        tests[other] = {"t": t, "p": pv}
    result["ttests"] = tests
    table = markdown_table([(method, summary)])
    state["writing"] = out
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(table + "\n")
    state["writing"] = None
    print(table)
    for k, v in tests.items():
        print(f"unpaired Welch t-test of Dice vs {k}: t = {v['t']:.3f}, p = {v['p']:.3g}")
    print(f"wrote {out / 'metrics.json'} and {out / 'table.md'}")
    return result


def main(argv=None):
    from ._cli import run_cli
    p = argparse.ArgumentParser(prog="python -m regnp.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint .npz written by regnp.train, or its run folder")
    p.add_argument("--dataset", default=None, help="phantom|chaos|acdc|jsrt (default: the training set)")
    p.add_argument("--data-root", default=None, help="folder with the real sets (default ../shared/data)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--sigma", type=float, default=None, help="synthetic deformation σ (default: as trained)")
    p.add_argument("--size", type=int, default=None,
                   help="working size, a multiple of 2^levels (default: as trained)")
    p.add_argument("--pairs", type=int, default=None, help="evaluate only the first N test pairs")
    p.add_argument("--out", default=None, help="folder for metrics.json and table.md "
                                                "(default: the checkpoint's folder)")
    p.add_argument("--name", default=None, help="method name in the table")
    p.add_argument("--compare", nargs="*", default=[], help="other metrics.json files: unpaired "
                                                          "t-tests of Dice against each")
    a = p.parse_args(argv)
    state = {"writing": None}

    def interrupted():
        if state["writing"] is not None:
            return f"the files in {state['writing']}/ may be incomplete; run again"
        return "nothing was written"
    return run_cli(lambda: run(a, state), interrupted)


if __name__ == "__main__":
    main()
