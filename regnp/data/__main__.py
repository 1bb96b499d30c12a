"""Command line: look at the image sets.

    python -m regnp.data show DATASET [--split test] [--sigma 16] [--n 4] [--out FILE]
        saves a grid of sample pairs with mask contours (default: data_DATASET_SPLIT.png in the
        current directory) and prints counts and statistics
        (Dice before registration, and for synthetic sets the displacement and folding of the
        generated fields).
    python -m regnp.data sigma-stats [DATASET] [--sigmas 10 16] [--split test]
        the σ calibration table: mean/max displacement, Dice before registration, % folding.

DATASET is phantom, chaos, acdc or jsrt; real sets are read from --data-root (default
$REGNP_DATA_ROOT or ../shared/data).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _fmt_stats(st, labels):
    lines = [f"  pairs: {st['n_pairs']} ({st['n_scored']} scored), images/bases: "
             f"{st.get('n_images', '?')}, size {st['shape'][0]}×{st['shape'][1]}",
             f"  intensity: mean {st['intensity_mean']:.3f}, std {st['intensity_std']:.3f}",
             f"  Dice before registration (labels {list(st['eval_labels'])}): "
             f"{100 * st['dice_before'][0]:.1f} ± {100 * st['dice_before'][1]:.1f} %"]
    for l, (m, s) in st["dice_per_label"].items():
        lines.append(f"    label {l} ({labels.get(l, '?')}): Dice {100 * m:.1f} ± {100 * s:.1f} %, "
                     f"mean area {st['label_area_px'][l]:.0f} px")
    if "field" in st:
        f = st["field"]
        lines.append(f"  fields (σ = {st['sigma']:g}): mean |u| over body {f['mean_disp'][0]:.2f} px, "
                     f"RMS {f['rms_disp'][0]:.2f} px, max |u| {f['max_disp'][0]:.1f} px (largest "
                     f"{f['max_disp'][1]:.1f}), folded {f['pct_folded'][0]:.3f} %, min det "
                     f"{f['min_det'][0]:.2f} (lowest {f['min_det'][1]:.2f})")
    return "\n".join(lines)


# The named sets (the keys of regnp.data.datasets.DATASETS, spelled out so that a mistyped
# option fails before the data code and Numba load; tests/test_bad_inputs.py keeps them equal).
SET_NAMES = ("acdc", "chaos", "jsrt", "phantom")
# File types matplotlib writes (checked before anything is loaded).
FIGURE_TYPES = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "eps", "ps", "webp")
NETWORK_FACTOR = 16             # the U-Nets halve the image 4 times: sizes must divide by 16


def figure_path(out, dataset, split):
    """Where ``show`` saves its figure: ``--out`` (a file, or a folder to put the default name
    in) or, by default, ``data_<dataset>_<split>.png`` in the current directory — never inside
    the regnp checkout, whose figures/ are tracked files."""
    from .._cli import check_output_file
    default = f"data_{dataset}_{split}.png"
    if out is None:
        path = Path(default)
    else:
        path = Path(out)
        if path.is_dir() or out.endswith(("/", "\\")):
            path = path / default
    return check_output_file("--out", path, FIGURE_TYPES)


def check_options(a):
    """Reject unusable options before any data is loaded."""
    from .._cli import finite_float, nonnegative_int, positive_int
    positive_int("--size", a.size)
    positive_int("--n-pairs", a.n_pairs)
    nonnegative_int("--seed", a.seed)
    if a.cmd == "show":
        positive_int("--n", a.n)
        finite_float("--sigma", a.sigma)
    else:
        for sig in a.sigmas:
            finite_float("--sigmas", sig)
    if a.size is not None and a.size % NETWORK_FACTOR:
        from .._cli import nearest_multiples
        near = " or ".join(str(v) for v in nearest_multiples(a.size, NETWORK_FACTOR))
        import warnings
        warnings.warn(f"--size {a.size} is fine for looking at the data, but the U-Net models "
                      f"need a multiple of {NETWORK_FACTOR} (e.g. {near}) to train or evaluate")


def check_memory_for(a):
    """Refuse a ``--size`` whose pairs cannot be generated in this machine's memory (one line,
    before anything is allocated; ``--size 30000`` once ended in a MemoryError traceback)."""
    if a.size is None:
        return
    from .._checks import check_memory, estimate_pair_bytes
    check_memory(estimate_pair_bytes((a.size, a.size)), f"a {a.size}×{a.size} pair",
                 "use a smaller --size")


def check_out_not_in_data(out, a):
    """The image sets are this command's inputs (licensed files among them): refuse a figure
    path inside the data folder, however it is spelled."""
    if a.dataset == "phantom":
        return                                    # drawn in memory: no input files
    from .._cli import CLIError
    from .folders import find_data_root
    root = find_data_root(a.data_root).resolve()
    if out.resolve().is_relative_to(root):
        raise CLIError(f"--out {out} lies inside the data folder {root}; the image sets are "
                       f"inputs and are never written: choose another --out")


def run(a):
    """The work behind :func:`main` (``a``: parsed options)."""
    check_options(a)
    check_memory_for(a)
    from .datasets import describe, load_dataset
    if a.cmd == "show":
        out = figure_path(a.out, a.dataset, a.split)
        check_out_not_in_data(out, a)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from .plotting import pair_grid

        t0 = time.perf_counter()
        ds = load_dataset(a.dataset, a.split, data_root=a.data_root, size=a.size,
                          sigma=a.sigma, n_pairs=a.n_pairs, seed=a.seed)
        t_load = time.perf_counter() - t0
        print(f"{ds!r} loaded in {t_load:.2f} s")
        st = describe(ds)
        print(_fmt_stats(st, ds.labels))
        idx = np.linspace(0, len(ds) - 1, min(a.n, len(ds))).round().astype(int)
        fig = pair_grid(ds, idx, title=f"{a.dataset} ({a.split})"
                        + (f", σ = {a.sigma:g}" if hasattr(ds, "sigma") else ""))
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
        plt.close(fig)
        print(f"figure: {out}")
        return 0
    print(f"{a.dataset} {a.split} pairs: σ = RMS displacement over the body (pixels at "
          f"256×256)")
    print(f"{'sigma':>6} {'pairs':>6} {'mean|u| body':>13} {'max|u|':>14} "
          f"{'Dice before %':>15} {'% folded':>9} {'min det':>8}", flush=True)
    for sig in a.sigmas:
        ds = load_dataset(a.dataset, a.split, data_root=a.data_root, size=a.size,
                          sigma=sig, n_pairs=a.n_pairs, seed=a.seed)
        st = describe(ds)
        f = st["field"]
        print(f"{sig:6g} {st['n_pairs']:6d} {f['mean_disp'][0]:13.2f} "
              f"{f['max_disp'][0]:7.1f} ({f['max_disp'][1]:4.1f}) "
              f"{100 * st['dice_before'][0]:7.1f} ± {100 * st['dice_before'][1]:4.1f} "
              f"{f['pct_folded'][0]:9.3f} {f['min_det'][1]:8.2f}", flush=True)
    print("max|u|: mean over pairs (largest); min det: lowest over pairs; Dice: mean ± std "
          "over pairs of the per-pair mean over liver and spleen")
    return 0


def main(argv=None):
    from .._cli import run_cli

    p = argparse.ArgumentParser(prog="python -m regnp.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--split", default="test", choices=["train", "val", "test"])
    common.add_argument("--data-root", default=None, help="folder holding the real sets")
    common.add_argument("--size", type=int, default=None, help="resize to SIZE×SIZE")
    common.add_argument("--seed", type=int, default=None,
                        help="pair-sampling seed (default: 0 train, the fixed test seed for test)")
    common.add_argument("--n-pairs", type=int, default=None)
    s = sub.add_parser("show", parents=[common], help="figure of sample pairs + statistics")
    s.add_argument("dataset", choices=SET_NAMES)
    s.add_argument("--sigma", type=float, default=10.0)
    s.add_argument("--n", type=int, default=4, help="pairs in the figure")
    s.add_argument("--out", default=None,
                   help="figure file, or a folder for the default name (default: "
                        "data_<dataset>_<split>.png in the current directory)")
    t = sub.add_parser("sigma-stats", parents=[common], help="σ calibration table")
    t.add_argument("dataset", nargs="?", default="chaos", choices=["chaos", "phantom"])
    t.add_argument("--sigmas", type=float, nargs="+", default=[10.0, 16.0])
    a = p.parse_args(argv)
    return run_cli(lambda: run(a), "nothing was written", return_status=True)


if __name__ == "__main__":
    sys.exit(main())
