"""The σ calibration of the deformation-size sweep: what each field family does at each σ.

    python -m regnp.study.calibrate [--dataset chaos] [--sigmas 10 16 22 28 34]
                                    [--fields gmm svf] [--pairs 80] [--out results/calibration.json]

For every family ("gmm": the Gaussian mixture is the displacement, fold-free draws only; "svf":
the mixture is a velocity, u = exp(v) − id; see ``regnp.data.deform``) and every σ, on the
fixed test pairs of the set at 256×256 (the sweep's test sets), it records:

- ``dice_before``: liver+spleen Dice before registration, mean and sd over pairs (%), the
  difficulty the networks start from;
- ``rejected_pct``: the share of field draws the family rejected (gmm: a fold, det J ≤ 0.1
  somewhere; svf: a draw that could not reach σ with a flow the pixel grid resolves), over all
  draws made for the pairs;
- ``pct_positive_jacobian``: |J| > 0 of the true fields, mean over pairs (and the lowest), and
  ``min_det``: mean over pairs of each field's smallest det J (and the lowest);
- displacement statistics over the body: ``rms_disp`` (= σ by definition; a check),
  ``mean_disp``, ``max_disp`` (mean over pairs, and the largest), pixels of the working size.

The JSON (small, committed) holds the command, the commit and the table; ``docs/deformations.md``
prints it. The phantom stands in when the real set is absent (``--dataset phantom``).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SWEEP_SIGMAS = (10.0, 16.0, 22.0, 28.0, 34.0)
FORMAT = "regnp-calibration-1"


def calibrate_one(dataset, sigma, field, pairs=80, size=256, data_root=None):
    """The calibration row of one (family, σ) on the test split of ``dataset``."""
    from ..data.datasets import describe, load_dataset
    ds = load_dataset(dataset, "test", data_root=data_root, size=size, sigma=sigma,
                      n_pairs=pairs, field=field)
    t0 = time.perf_counter()
    st = describe(ds)
    rejected = [ds.field(i, return_info=True)[1]["rejected"] for i in range(len(ds))]
    f = st["field"]
    return {
        "field": field, "sigma": sigma, "pairs": len(ds),
        "dice_before": [100 * st["dice_before"][0], 100 * st["dice_before"][1]],
        "rejected_pct": 100.0 * sum(rejected) / (sum(rejected) + len(rejected)),
        "pct_positive_jacobian": [100.0 - f["pct_folded"][0], 100.0 - f["pct_folded"][1]],
        "min_det": list(f["min_det"]),
        "rms_disp": list(f["rms_disp"]), "mean_disp": list(f["mean_disp"]),
        "max_disp": list(f["max_disp"]),
        "seconds": time.perf_counter() - t0,
    }


def calibrate(dataset="chaos", sigmas=SWEEP_SIGMAS, fields=("gmm", "svf"), pairs=80, size=256,
              data_root=None, progress=True):
    """Every (family, σ) row; a σ a family cannot draw is recorded with its one-line reason."""
    from tqdm import tqdm
    rows = []
    todo = [(f, s) for f in fields for s in sigmas]
    for field, sigma in tqdm(todo, desc="calibration", unit="σ", disable=not progress):
        try:
            rows.append(calibrate_one(dataset, sigma, field, pairs, size, data_root))
        except ValueError as e:
            rows.append({"field": field, "sigma": sigma, "error": str(e)})
    return rows


def table(rows):
    """The calibration as a Markdown table (what docs/deformations.md shows)."""
    head = ("| family | σ | Dice before (%) | draws rejected | \\|J\\| > 0 of the true fields (lowest) "
            "| min det J (lowest) | RMS \\|u\\| | mean \\|u\\| | max \\|u\\| mean (largest) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['field']} | {r['sigma']:g} | refused: {r['error']} "
                         f"| | | | | | |")
            continue
        lines.append(
            f"| {r['field']} | {r['sigma']:g} | {r['dice_before'][0]:.1f} ± {r['dice_before'][1]:.1f} "
            f"| {r['rejected_pct']:.1f} % | {r['pct_positive_jacobian'][0]:.2f} % "
            f"({r['pct_positive_jacobian'][1]:.2f} %) | {r['min_det'][0]:.2f} ({r['min_det'][1]:.2f}) "
            f"| {r['rms_disp'][0]:.2f} | {r['mean_disp'][0]:.1f} "
            f"| {r['max_disp'][0]:.1f} ({r['max_disp'][1]:.1f}) |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m regnp.study.calibrate",
                                description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="chaos", choices=("chaos", "phantom"))
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SWEEP_SIGMAS))
    p.add_argument("--fields", nargs="+", default=["gmm", "svf"], choices=("gmm", "svf"))
    p.add_argument("--pairs", type=int, default=80, help="test pairs per σ (default 80: all)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default="results/calibration.json")
    a = p.parse_args(argv)
    if a.pairs <= 0 or a.size < 16 or any(not np.isfinite(s) or s < 0 for s in a.sigmas):
        sys.exit("error: --pairs must be ≥ 1, --size ≥ 16 and every σ a finite number ≥ 0")
    from .grid import _write_json, git_commit
    try:
        rows = calibrate(a.dataset, a.sigmas, a.fields, a.pairs, a.size, a.data_root)
    except FileNotFoundError as e:
        sys.exit(f"error: {e} (use --dataset phantom to calibrate on the embedded phantom)")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = "python -m regnp.study.calibrate " + " ".join(argv if argv is not None else sys.argv[1:])
    _write_json(out, {"format": FORMAT, "command": cmd.strip(), "commit": git_commit(),
                      "dataset": a.dataset, "size": a.size, "rows": rows})
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
