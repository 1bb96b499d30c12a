"""Tables 1–5, the λ curves (Figs 3–4) and the training-length curve, from the grid's JSON alone.

``python -m regnp.study report [--out results/runs]`` reads every ``*/metrics.json`` under
the grid folder and writes ``results/TABLES.md`` and ``figures/results_*.png`` in seconds;
nothing is retrained. Jobs that have not finished yet show as "–" and are listed.

Statistics (the conventions of every table):

- A cell pools the test pairs of all training seeds of that model and setting: mean ± sample std
  over (seed, pair) records. The spread over seeds is the range of the per-seed means.
- The t-test compares Meta-Reg with the next-best method of the same table (highest mean Dice):
  an unpaired Welch t-test (``scipy.stats.ttest_ind``, as the paper's sec. 5.4.4) over test pairs,
  each pair's Dice first averaged over the seeds, so the sample size is the number of test pairs.
- CPU is the median seconds to register one pair (batch 1, one forward pass, after warm-up), on
  the machine and thread count recorded in the job.
"""
import json
import os
from pathlib import Path

import numpy as np

from ..metrics import difference_ci, ttest_unpaired
from .protocols import LAMBDA, LAMBDAS, SETTINGS, TABLE_MODELS, TRAIN_STEPS, VARIANTS

# The paper's numbers (Al Safadi & Song, CVPR 2021), for side-by-side comparison:
# variant: (Dice mean, std, %|J|>0 mean, std, |J|min mean, std, CPU s)
PAPER = {
    ("liver10", "s10"): {
        "dirnet": (90.53, 3.27, 99.78, 0.37, -0.07, 0.18, 0.0459),
        "fcnss": (73.85, 6.41, 99.47, 0.11, -4.84, 1.15, 0.0430),
        "vm1": (93.81, 1.87, 99.92, 0.10, -0.39, 0.39, 0.0619),
        "vm2": (93.80, 1.95, 99.78, 0.28, -0.76, 0.66, 0.1016),
        "metareg": (94.12, 1.41, 99.96, 0.10, -0.09, 0.23, 0.1020)},
    ("liver16", "s16"): {
        "dirnet": (76.37, 6.91, 99.46, 0.56, -0.30, 0.29, 0.0440),
        "fcnss": (56.65, 9.05, 99.40, 0.09, -6.22, 1.60, 0.0463),
        "vm1": (76.27, 7.61, 97.86, 0.95, -1.87, 0.52, 0.0771),
        "vm2": (80.50, 6.64, 99.87, 0.21, -0.12, 0.23, 0.1144),
        "metareg": (84.80, 6.09, 99.97, 0.06, -0.05, 0.14, 0.1145)},
    ("liver10", "s16"): {
        "dirnet": (77.60, 8.39, 99.12, 0.51, -0.41, 0.24, 0.0408),
        "fcnss": (56.30, 8.97, 99.38, 0.08, -5.88, 1.27, 0.0368),
        "vm1": (84.91, 6.54, 99.29, 0.45, -1.13, 0.62, 0.0560),
        "vm2": (84.61, 6.27, 98.46, 0.73, -2.47, 1.63, 0.0912),
        "metareg": (85.56, 6.14, 99.15, 0.59, -0.88, 0.50, 0.1004)},
    ("liver16", "s10"): {
        "dirnet": (87.74, 3.11, 99.34, 0.55, -0.39, 0.25, 0.0397),
        "fcnss": (73.87, 6.33, 99.48, 0.11, -5.21, 1.31, 0.0357),
        "vm1": (88.66, 3.79, 98.45, 0.87, -2.09, 0.88, 0.0610),
        "vm2": (86.59, 4.99, 97.61, 1.03, -3.09, 1.72, 0.0985),
        "metareg": (92.60, 1.79, 99.84, 0.21, -0.42, 0.44, 0.1064)},
    ("cardiac", "test"): {
        "dirnet": (84.06, 6.39, 96.42, 2.00, -2.08, 1.22, 0.0212),
        "fcnss": (76.01, 7.21, 97.06, 1.17, -4.85, 1.64, 0.0246),
        "vm1": (84.12, 5.70, 97.18, 1.61, -3.54, 2.04, 0.0416),
        "vm2": (83.96, 5.66, 97.16, 1.53, -3.95, 2.42, 0.0780),
        "metareg": (86.52, 5.26, 98.73, 1.15, -1.64, 1.22, 0.0813)},
    ("chest", "test"): {
        "dirnet": (81.40, 6.92, 96.01, 2.66, -1.10, 0.80, 0.0248),
        "fcnss": (76.41, 7.07, 94.90, 1.23, -6.52, 2.04, 0.0257),
        "vm1": (83.86, 5.85, 96.42, 2.39, -2.08, 1.24, 0.0523),
        "vm2": (82.31, 5.24, 97.74, 1.89, -1.50, 0.96, 0.0865),
        "metareg": (85.20, 4.85, 97.46, 2.06, -1.47, 0.86, 0.0902)},
}
# Table 5: setting -> (ablated Dice, std, |J|>0, std, Meta-Reg Dice, std, |J|>0, std)
PAPER_ABLATION = {
    "liver10": (94.36, 1.40, 99.94, 0.09, 94.12, 1.41, 99.96, 0.10),
    "liver16": (80.08, 7.08, 98.29, 0.71, 84.80, 6.09, 99.97, 0.06),
    "cardiac": (84.00, 5.90, 97.04, 1.68, 86.52, 5.26, 98.73, 1.15),
    "chest": (81.56, 5.55, 98.49, 1.61, 85.20, 4.85, 97.46, 2.06),
}
# scenario tables: (title, [(setting, test set name, scenario label)])
TABLES = [
    ("Table 1 — liver, train and test at the same σ",
     [("liver10", "s10", "σ_train = 10, σ_test = 10"), ("liver16", "s16", "σ_train = 16, σ_test = 16")]),
    ("Table 2 — liver, train and test at different σ",
     [("liver10", "s16", "σ_train = 10, σ_test = 16"), ("liver16", "s10", "σ_train = 16, σ_test = 10")]),
    ("Table 3 — cardiac (ACDC ES←ED, LV cavity Dice; stands in for EchoNet-Dynamic)",
     [("cardiac", "test", "test patients")]),
    ("Table 4 — chest X-ray (JSRT, lungs Dice; stands in for Shenzhen/Montgomery)",
     [("chest", "test", "test pairs")]),
]
ABLATION_TESTS = {"liver10": "s10", "liver16": "s16", "cardiac": "test", "chest": "test"}


def load_results(root):
    """``{job name: metrics}`` for every finished job under ``root`` (unreadable files skipped,
    named in the returned ``errors`` list)."""
    out, errors = {}, []
    for p in sorted(Path(root).glob("*/metrics.json")):
        try:
            m = json.loads(p.read_text())
            m["config"]["name"]                     # noqa: B018 — a minimal shape check
        except (OSError, ValueError, KeyError, TypeError) as e:
            errors.append(f"{p}: {e}")
            continue
        out[m["config"]["name"]] = m
    return out, errors


def _jobs_of(results, setting, variant, lam=LAMBDA, calibration=False):
    """The finished jobs (one per seed) of ``variant`` trained on ``setting`` with ``lam``."""
    out = []
    for m in results.values():
        c = m["config"]
        if (c.get("setting") == setting and c.get("variant") == variant
                and (variant == "solver" or abs(c.get("lam", LAMBDA) - lam) < 1e-12)
                and (c.get("val_every", 0) > 0) == calibration):   # calibration runs validate
            out.append(m)
    return sorted(out, key=lambda m: m["config"].get("seed", 0))


def cell(results, setting, variant, test, lam=LAMBDA, calibration=False):
    """Pooled statistics of one table cell, or None when no seed has finished (``calibration``:
    the long runs of the `steps` protocol instead of the grid's jobs)."""
    jobs = [m for m in _jobs_of(results, setting, variant, lam, calibration) if test in m["tests"]]
    if not jobs:
        return None
    pairs = [m["tests"][test]["pairs"] for m in jobs]
    cat = {k: np.concatenate([np.asarray(p[k], float) for p in pairs])
           for k in ("dice_after", "dice_before", "pct_positive_jacobian", "min_jacobian")}
    secs = [s for p in pairs for s in p["seconds"] if s is not None]
    per_seed = [100 * float(np.mean(p["dice_after"])) for p in pairs]
    by_id, jac_by_id = {}, {}
    for p in pairs:
        for i, d, j in zip(p["id"], p["dice_after"], p["pct_positive_jacobian"]):
            by_id.setdefault(i, []).append(d)
            jac_by_id.setdefault(i, []).append(j)

    def ms(x, scale=1.0):
        x = scale * x
        return float(np.mean(x)), float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    return {"dice": ms(cat["dice_after"], 100), "dice_before": ms(cat["dice_before"], 100),
            "jac": ms(cat["pct_positive_jacobian"]), "minj": ms(cat["min_jacobian"]),
            "cpu": float(np.median(secs)) if secs else None, "seeds": [m["config"].get("seed")
                                                                       for m in jobs],
            "per_seed": per_seed, "pair_dice": {i: float(np.mean(v)) for i, v in by_id.items()},
            "pair_jac": {i: float(np.mean(v)) for i, v in jac_by_id.items()},
            "steps": [m["train"]["steps"] for m in jobs if m.get("train")],
            "train_seconds": [m["train"]["seconds"] for m in jobs if m.get("train")]}


def _cell_samples(a, b, key="pair_dice"):
    """Two cells' per-pair values (``pair_dice``: Dice as a fraction; ``pair_jac``: % of positive
    Jacobian determinants; averaged over seeds), on their common pairs."""
    common = sorted(set(a[key]) & set(b[key]))
    x = [a[key][i] for i in common] if common else list(a[key].values())
    y = [b[key][i] for i in common] if common else list(b[key].values())
    return x, y


def _testable(x, y):
    """Whether a Welch test (and interval) of two samples is defined: at least 2 values each and
    some spread. With no spread on either side (e.g. every pair at 100 % |J| > 0) the t
    statistic is 0/0 or ±inf and scipy warns of precision loss: there is nothing to test."""
    return len(x) >= 2 and len(y) >= 2 and not (np.ptp(x) == 0 and np.ptp(y) == 0)


def ttest_cells(a, b, key="pair_dice"):
    """Welch t-test of two cells' per-pair Dice (or ``key="pair_jac"``: % |J| > 0), averaged over
    seeds, on their common pairs; None when :func:`_testable` says there is no test."""
    x, y = _cell_samples(a, b, key)
    return ttest_unpaired(x, y) if _testable(x, y) else None


def ci_cells(a, b, level=0.95):
    """Welch confidence interval of ``a``'s mean Dice − ``b``'s, in Dice points (%), on the
    samples of :func:`ttest_cells`; None when there is no test either."""
    x, y = _cell_samples(a, b)
    if not _testable(x, y):
        return None
    lo, hi = difference_ci(x, y, level)
    return 100 * lo, 100 * hi


def _pm(v, nd=2):
    return "–" if v is None else f"{v[0]:.{nd}f} ± {v[1]:.{nd}f}"


def _paper_pm(p, i, nd=2):
    return "–" if p is None else f"{p[i]:.{nd}f} ± {p[i + 1]:.{nd}f}"


def _cpu(c, nd):
    return "–" if not c or c["cpu"] is None else f"{c['cpu']:.{nd}f}"


def _pvalue(p):
    return "–" if p is None else f"{p:.3g}"


def _diff_txt(a, b, key="dice", ci=False):
    """A table cell for cell ``a`` − cell ``b``: "Δ (p = …)" of ``key`` ("dice" or "jac", in
    points), "Δ (CI lo to hi; p = …)" with ``ci`` (Dice only); "–" when a side has not run,
    "p = –" when there is no test."""
    if not (a and b):
        return "–"
    tt = ttest_cells(a, b, "pair_jac" if key == "jac" else "pair_dice")
    p = f"p = {_pvalue(None if tt is None else tt[1])}"
    iv = ci_cells(a, b) if ci and key == "dice" else None
    return f"{a[key][0] - b[key][0]:+.2f} (" + (
        f"CI {iv[0]:+.2f} to {iv[1]:+.2f}; " if iv else "") + f"{p})"


def _seeds_txt(c):
    if c is None:
        return "–"
    if len(c["per_seed"]) == 1:
        return f"1 (seed {c['seeds'][0]})"
    return f"{len(c['seeds'])}: " + " / ".join(f"{v:.2f}" for v in c["per_seed"])


def compare(results, setting, test, variant="metareg", others=TABLE_MODELS):
    """Meta-Reg vs the best other method of a table: (delta Dice, p, best other) or None."""
    me = cell(results, setting, variant, test)
    if me is None:
        return None
    rivals = [(v, cell(results, setting, v, test)) for v in others
              if v != variant and not v.startswith("metareg")]
    rivals = [(v, c) for v, c in rivals if c is not None]
    if not rivals:
        return None
    best_v, best = max(rivals, key=lambda vc: vc[1]["dice"][0])
    tt = ttest_cells(me, best)
    return {"delta": me["dice"][0] - best["dice"][0], "p": None if tt is None else tt[1],
            "t": None if tt is None else tt[0], "rival": best_v, "ours": me["dice"][0],
            "rival_dice": best["dice"][0], "ci": ci_cells(me, best)}


def _verdict(delta, p, alpha=0.05, paper_significant=True, ci=None, paper_delta=None):
    """Our verdict on one claim. ``paper_significant``: the paper reports the difference as
    significant (sec. 5.4.4); otherwise it reports none, and "no difference" agrees with it.
    When a significant claim is not confirmed, ``ci`` (our 95 % interval) and ``paper_delta``
    say whether our runs still allow a gain as large as the paper's, or rule it out (over test
    pairs: the interval does not include the variation between training runs)."""
    if delta is None:
        return "not run yet"
    if p is None:
        return "no test (too few pairs)"
    if not paper_significant:
        if p >= alpha:
            return f"agrees: no significant difference here either (p = {p:.3g})"
        return (f"differs: significant here (p = {p:.3g}), "
                + ("Meta-Reg better" if delta > 0 else "the other method better"))
    if p >= alpha:
        out = f"not confirmed: difference within noise (p = {p:.3g})"
        if ci is not None and paper_delta is not None:
            out += ("; the paper's gain lies above our 95 % CI" if paper_delta > ci[1] else
                    "; our 95 % CI still contains the paper's gain" if paper_delta >= ci[0] else
                    "; the paper's value lies below our 95 % CI")
        return out
    return (f"confirmed (p = {p:.3g})" if delta > 0 else f"contradicted: the other method is "
            f"better (p = {p:.3g})")


def scenario_table(results, setting, test, variants=TABLE_MODELS):
    lines = ["| Method | Dice (%) | paper | \\|J\\|>0 (%) | paper | \\|J\\|min | paper | CPU (s) "
             "| paper | seeds: Dice per seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    paper = PAPER.get((setting, test), {})
    for v in variants:
        c = cell(results, setting, v, test)
        p = paper.get(v)
        lines.append(
            f"| {VARIANTS[v][0]} | {_pm(c and c['dice'])} | {_paper_pm(p, 0)} "
            f"| {_pm(c and c['jac'])} | {_paper_pm(p, 2)} | {_pm(c and c['minj'])} "
            f"| {_paper_pm(p, 4)} | {_cpu(c, 4)} "
            f"| {'–' if p is None else f'{p[6]:.4f}'} | {_seeds_txt(c)} |")
    before = next((c for c in (cell(results, setting, v, test) for v in variants) if c), None)
    if before:
        lines.append(f"\nDice before registration: {_pm(before['dice_before'])} %.")
    return "\n".join(lines)


def ablation_table(results):
    lines = ["| Setting | Ablated: Dice (%) | paper | Ablated: \\|J\\|>0 | paper | Meta-Reg: Dice (%) "
             "| paper | Meta-Reg: \\|J\\|>0 | paper | Δ Dice ours (p) | Δ Dice paper | free 13×13: Dice "
             "| no 13×13: Dice |", "|---|" * 1 + "---|" * 12]
    for setting, test in ABLATION_TESTS.items():
        a = cell(results, setting, "ablated", test)
        m = cell(results, setting, "metareg", test)
        free = cell(results, setting, "ablated_free", test)
        none = cell(results, setting, "ablated_nofilter", test)
        p = PAPER_ABLATION[setting]
        d = _diff_txt(m, a)
        lines.append(f"| {SETTINGS[setting][2]} | {_pm(a and a['dice'])} | {p[0]:.2f} ± {p[1]:.2f} "
                     f"| {_pm(a and a['jac'])} | {p[2]:.2f} ± {p[3]:.2f} | {_pm(m and m['dice'])} "
                     f"| {p[4]:.2f} ± {p[5]:.2f} | {_pm(m and m['jac'])} | {p[6]:.2f} ± {p[7]:.2f} "
                     f"| {d} | {p[4] - p[0]:+.2f} | {_pm(free and free['dice'])} "
                     f"| {_pm(none and none['dice'])} |")
    return "\n".join(lines)


def ablation_variants_table(results):
    """What each piece adds, as Δ Dice (Welch p) between networks that differ in one piece: the
    unit-sum constraint (ablated − free 13×13, neither with M), the 13×13 layer (free 13×13 −
    no 13×13) and all three with M (Meta-Reg − no 13×13). M alone is Table 5's Δ column."""
    lines = ["| Setting | unit-sum 13×13 − free 13×13 (the constraint) | free 13×13 − no 13×13 "
             "(the layer) | Meta-Reg − no 13×13 (layer, constraint and M) |", "|---|---|---|---|"]
    for setting, test in ABLATION_TESTS.items():
        m, a, free, none = (cell(results, setting, v, test)
                            for v in ("metareg", "ablated", "ablated_free", "ablated_nofilter"))
        row = [_diff_txt(x, y) for x, y in ((a, free), (free, none), (m, none))]
        lines.append(f"| {SETTINGS[setting][2]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


RKHS_DIFFERENCES = (("rkhs_conv13", "rkhs_exact", "13×13 K̃ − exact K·α (the approximation)"),
                    ("metareg", "rkhs_conv13", "Meta-Reg − eq. 7 with 13×13 K̃ (learning K̃ and M)"),
                    ("solver", "metareg", "eq. 6 solver − Meta-Reg (optimising each pair)"))


def rkhs_differences_table(results):
    """The RKHS protocol's three questions as Δ Dice with a 95 % Welch interval and p, each on the
    test σ equal to the training σ: does the 13×13 approximation of eq. 7 lose Dice against the
    exact K·α; does learning K̃ (Meta-Reg) beat the fixed 13×13 K̃; how far is the per-pair
    classical solver ahead of the network."""
    lines = ["| Setting | " + " | ".join(t for _, _, t in RKHS_DIFFERENCES) + " |",
             "|---|" + "---|" * len(RKHS_DIFFERENCES)]
    for setting, test in (("liver10", "s10"), ("liver16", "s16")):
        row = [_diff_txt(cell(results, setting, x, test), cell(results, setting, y, test), ci=True)
               for x, y, _ in RKHS_DIFFERENCES]
        lines.append(f"| {SETTINGS[setting][2]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def lambda_points(results, variant, setting="liver16", test="s16", lams=LAMBDAS):
    pts = []
    for lam in lams:
        c = cell(results, setting, variant, test, lam=lam)
        if c is not None:
            pts.append((lam, c))
    return pts


def chosen_steps(curve, window=2000, min_gain=0.003, smooth=3):
    """The training length rule: the first validation step after which the (smoothed) validation
    Dice never again gains ``min_gain`` (a fraction) or more over ``window`` steps, i.e. the start
    of the first ``window``-step window from which on every window gains less. ``curve``:
    list of [step, val_dice, ...]. Returns (step or None, smoothed curve)."""
    if len(curve) < smooth:
        return None, []
    st = np.array([c[0] for c in curve], float)
    v = np.convolve([c[1] for c in curve], np.ones(smooth) / smooth, mode="valid")
    st = st[smooth - 1:]
    gains = []
    for s, val in zip(st, v):
        earlier = np.nonzero(st <= s - window)[0]
        gains.append(None if not len(earlier) else val - v[earlier[-1]])
    ok = [g is not None and g < min_gain for g in gains]
    for k in range(len(st)):
        if all(ok[k:]) and gains[k] is not None:
            # every window from here on gains too little: the run could have stopped at the
            # start of the first such window
            start = st[np.nonzero(st <= st[k] - window)[0][-1]]
            return int(start), list(zip(st.tolist(), v.tolist()))
    return None, list(zip(st.tolist(), v.tolist()))


def lambda_summary(pts, alpha=0.05):
    """The paper's Figs 3–4 claims in one paragraph: Meta-Reg above VoxelMorph-2 "across the entire
    range" of λ, best at λ = 0.04, "more robust" to λ; the share of positive Jacobians rising
    with λ. ``pts``: {"vm2": [(λ, cell)], "metareg": [(λ, cell)]} from :func:`lambda_points`.
    Only the λ values both networks ran are compared. Robustness is read as the spread of mean
    Dice over them (max − min)."""
    v, m = dict(pts.get("vm2", [])), dict(pts.get("metareg", []))
    both = sorted(set(v) & set(m))
    if not both:
        return "Meta-Reg and VoxelMorph-2 have no λ in common yet."
    diffs = [(lam, m[lam]["dice"][0] - v[lam]["dice"][0], ttest_cells(m[lam], v[lam]))
             for lam in both]
    above = [lam for lam, d, _ in diffs if d > 0]
    sig = [(lam, d) for lam, d, t in diffs if t is not None and t[1] < alpha]
    best = {k: max(both, key=lambda lam: c[lam]["dice"][0]) for k, c in (("vm2", v), ("metareg", m))}
    jac_up = sum(m[lam]["jac"][0] >= v[lam]["jac"][0] for lam in both)
    rising = {k: bool(np.all(np.diff([c[lam]["jac"][0] for lam in both]) >= 0))
              for k, c in (("vm2", v), ("metareg", m))}
    spread = {k: max(c[lam]["dice"][0] for lam in both) - min(c[lam]["dice"][0] for lam in both)
              for k, c in (("vm2", v), ("metareg", m))}
    rise_txt = {(True, True): "both networks", (True, False): "Meta-Reg only",
                (False, True): "VoxelMorph-2 only", (False, False): "neither network"}[
        (rising["metareg"], rising["vm2"])]
    sig_txt = ("at none of them" if not sig else
               "at λ = " + ", ".join(f"{lam:g} ({d:+.2f})" for lam, d in sig))
    return (f"Meta-Reg's mean Dice is above VoxelMorph-2's at {len(above)} of the {len(both)} λ "
            f"values both have run (the paper: at every λ); the difference is significant "
            f"(Welch p < {alpha:g}) {sig_txt}. Best λ: Meta-Reg {best['metareg']:g}, VoxelMorph-2 "
            f"{best['vm2']:g} (the paper: 0.04 for Meta-Reg). Spread of mean Dice over these λ "
            f"(max − min; the paper finds Meta-Reg more robust): Meta-Reg "
            f"{spread['metareg']:.2f}, VoxelMorph-2 {spread['vm2']:.2f} points. Fig. 4: the share "
            f"of positive Jacobian determinants rises monotonically with λ for {rise_txt} (the "
            f"paper: it rises); Meta-Reg's is at or above VoxelMorph-2's at {jac_up} of the "
            f"{len(both)} λ values.")


def _long_training_table(calib):
    """The long runs of the `steps` protocol scored on the test pairs: does the comparison of the
    shorter grid runs hold at (nearly) full training length?"""
    rows = {v: jobs[0] for v, jobs in calib.items() if jobs}
    if not rows:
        return []
    out = ["Long runs scored on the liver test pairs (80 pairs, one seed; the grid's jobs train "
           "for fewer steps):", "",
           "| Model | steps | Dice σ_test = 16 (%) | \\|J\\|>0 (%) | Dice σ_test = 10 (%) | \\|J\\|>0 (%) |",
           "|---|---|---|---|---|---|"]
    cells = {}
    for v, m in rows.items():
        one = {m["config"]["name"]: m}
        c16 = cell(one, "liver16", v, "s16", calibration=True)
        c10 = cell(one, "liver16", v, "s10", calibration=True)
        cells[v] = c16
        out.append(f"| {VARIANTS[v][0]} | {m['train']['steps']} | {_pm(c16 and c16['dice'])} | "
                   f"{_pm(c16 and c16['jac'])} | {_pm(c10 and c10['dice'])} | "
                   f"{_pm(c10 and c10['jac'])} |")
    out.append("")
    for other in ("vm2", "ablated"):
        if cells.get("metareg") and cells.get(other):
            t = ttest_cells(cells["metareg"], cells[other])
            out.append(f"Meta-Reg − {VARIANTS[other][0]} at σ 16/16 after the long runs: "
                       f"{cells['metareg']['dice'][0] - cells[other]['dice'][0]:+.2f} Dice points "
                       f"(Welch p = {_pvalue(None if t is None else t[1])}).")
    out.append("")
    return out


def _cpu_hours(jobs):
    """CPU hours: (training + scoring seconds) × threads. Training is the measured seconds per
    step × the steps trained: a sitting killed mid-job (the end of a working session) leaves no
    record of its time in ``sittings.jsonl``, so its steps are counted at the rate of the
    recorded sittings; when every sitting is recorded this is exactly their summed wall time.
    Scoring is ``grid.eval_seconds`` (0 for the few older records that cannot tell it)."""
    from .grid import eval_seconds
    total = 0.0
    for m in jobs:
        t = m.get("train")
        threads = (m.get("machine") or {}).get("threads", 1)
        if t:
            per_step = t.get("seconds_per_step") or t["seconds"] / max(1, t["steps"])
            total += max(t["seconds"], per_step * t["steps"]) * threads
        total += (eval_seconds(m) or 0.0) * threads
    return total / 3600


def _planned_jobs():
    """{protocol: {job name: config}} of the full protocols with the default seeds."""
    from .protocols import PROTOCOLS, protocol_jobs
    return {p: {c["name"]: c for c in protocol_jobs(p)} for p in PROTOCOLS}


def _protocol_cost(results):
    """Rows of the per-protocol cost table: planned jobs (the full protocols, default seeds),
    finished ones, their CPU hours, and an estimate of what is left: each remaining job's
    ``grid.estimate_seconds`` from the finished grid jobs (its variant's seconds per step, the
    scoring time per pair) × their median thread count; a job with no estimate (no finished job
    of its kind, e.g. the first solver job) counts as the median finished grid job. A job shared
    by two protocols (e.g. liver σ 16 Meta-Reg is in liver, ablation, lambda, rkhs and diffeo)
    counts in each, and once in "all". Empty when no finished job belongs to a full protocol (a
    --quick grid)."""
    from .grid import estimate_seconds
    planned = _planned_jobs()
    configs = {n: c for jobs in planned.values() for n, c in jobs.items()}
    if not any(n in results for names in planned.values() for n in names):
        return []
    grid_done = [m for m in results.values() if not m["config"].get("val_every")]
    typical = float(np.median([_cpu_hours([m]) for m in grid_done])) if grid_done else 0.0
    threads = float(np.median([(m.get("machine") or {}).get("threads", 1) for m in grid_done])
                    ) if grid_done else 1.0

    def left_hours(name):
        e = estimate_seconds(configs[name], grid_done)
        return typical if e is None else e * threads / 3600

    cores = int(np.median([(m.get("machine") or {}).get("cpus") or 1 for m in grid_done])
                ) if grid_done else 1
    rows = ["", "Per protocol (planned = the full protocol with the default seeds; CPU hours "
            "count training and scoring; the estimate for each job left is its variant's "
            "measured seconds per step × its steps + the scoring time of its test pairs). "
            f"The median finished grid job took {typical * 60:.0f} CPU minutes; run as one "
            f"single-threaded job per core, a {cores}-core machine finishes about "
            f"{cores / max(typical, 1e-9):.1f} such jobs per hour.", "",
            "| Protocol | finished / planned jobs | CPU hours so far | estimated CPU hours left |",
            "|---|---|---|---|"]
    every = {}
    for p, names in planned.items():
        every.update(dict.fromkeys(names))
        done = [results[n] for n in names if n in results]
        left = sum(left_hours(n) for n in names if n not in results)
        rows.append(f"| {p} | {len(done)} / {len(names)} | {_cpu_hours(done):.2f} | "
                    f"{'–' if p == 'steps' else f'{left:.1f}'} |")
    done = [results[n] for n in every if n in results]
    grid_left = sum(left_hours(n) for n in every if n not in results and not n.startswith("steps_"))
    rows.append(f"| all (each job once) | {len(done)} / {len(every)} | {_cpu_hours(done):.2f} | "
                f"{grid_left:.1f} |")
    return rows


def claim_data(results):
    """The paper's claims, one by one, as dicts: ``text``, the paper's Δ Dice ``paper`` and
    whether it reports it as significant (``sig``), our ``delta`` (None until both sides have
    finished), its Welch ``p`` and 95 % ``ci`` (Dice points), ``rival`` (the variant compared
    with), and ``ours`` / ``rival_dice`` (mean Dice)."""
    rows = []
    # (setting, test, claim, the paper's Δ, whether the paper reports it as significant: its
    # sec. 5.4.4 rejects H0 for liver 16/16, liver 16→10 and cardiac, and for the ablation on
    # liver 16, cardiac and chest; chest only against VM-2, not against VM-1)
    for setting, test, text, paper_delta, sig in (
            ("liver16", "s16", "Meta-Reg beats the best other method at σ 16/16", 84.80 - 80.50, True),
            ("liver10", "s10", "Meta-Reg vs the best other method at σ 10/10", 94.12 - 93.81, False),
            ("liver10", "s16", "generalises 10 → 16", 85.56 - 84.91, False),
            ("liver16", "s10", "generalises 16 → 10", 92.60 - 88.66, True),
            ("cardiac", "test", "cardiac: Meta-Reg beats the best other method", 86.52 - 84.12, True),
            ("chest", "test", "chest: Meta-Reg vs the best other method", 85.20 - 83.86, False)):
        c = compare(results, setting, test) or {}
        rows.append({"text": text, "paper": paper_delta, "sig": sig, "delta": c.get("delta"),
                     "p": c.get("p"), "ci": c.get("ci"), "rival": c.get("rival"),
                     "ours": c.get("ours"), "rival_dice": c.get("rival_dice")})
    for setting, test in ABLATION_TESTS.items():
        a, m = cell(results, setting, "ablated", test), cell(results, setting, "metareg", test)
        p = PAPER_ABLATION[setting]
        row = {"text": f"M adds Dice over the ablated network ({SETTINGS[setting][2]})",
               "paper": p[4] - p[0], "sig": setting != "liver10",  # paper: no gain at liver 10
               "delta": None, "p": None, "ci": None, "rival": "ablated", "ours": None,
               "rival_dice": None}
        if a and m:
            tt = ttest_cells(m, a)
            row.update(delta=m["dice"][0] - a["dice"][0], p=None if tt is None else tt[1],
                       ci=ci_cells(m, a), ours=m["dice"][0], rival_dice=a["dice"][0])
        rows.append(row)
    return rows


def claims(results):
    """The paper's claims, one by one, as (claim, paper's number, ours, verdict)."""
    rows = []
    for c in claim_data(results):
        if c["delta"] is None:
            ours = "–"
        elif c["rival"] == "ablated":
            ours = f"{c['delta']:+.2f}"
        else:
            ours = (f"{c['delta']:+.2f} vs {VARIANTS[c['rival']][0]} "
                    f"({c['ours']:.2f} vs {c['rival_dice']:.2f})")
        if c["ci"] is not None:
            ours += f"; 95 % CI {c['ci'][0]:+.2f} to {c['ci'][1]:+.2f}"
        rows.append((c["text"], f"{c['paper']:+.2f}" + ("" if c["sig"] else " (n.s.)"), ours,
                     _verdict(c["delta"], c["p"], paper_significant=c["sig"], ci=c["ci"],
                              paper_delta=c["paper"])))
    return rows


def _plot_claims(results, path):
    """Each claim: the paper's Δ Dice (open diamond) and ours with its 95 % Welch interval."""
    rows = claim_data(results)
    if all(r["delta"] is None for r in rows):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    ax.axvline(0, color="gray", lw=1)
    for yi, r in zip(y, rows):
        ax.plot(r["paper"], yi, "D", mfc="none", mec="tab:red", ms=7,
                label="paper" if yi == y[0] else None)
        if r["delta"] is None:
            ax.text(0.2, yi, "not run yet", va="center", fontsize=8, color="gray")
            continue
        lo, hi = r["ci"] if r["ci"] else (r["delta"], r["delta"])
        ax.errorbar(r["delta"], yi, xerr=[[r["delta"] - lo], [hi - r["delta"]]], fmt="o",
                    color="tab:blue", capsize=3, label="ours (95 % CI)" if yi == y[0] else None)
    labels = [r["text"] + ("" if r["rival"] in (None, "ablated") else
                           f" (vs {VARIANTS[r['rival']][0]})") for r in rows]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("Δ Dice (points): Meta-Reg − the method compared with")
    fig.suptitle("The paper's claims (open diamonds) and ours (95 % Welch CI over test pairs); "
                 f"256², {TRAIN_STEPS:,} training steps, seeds pooled", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(root, tables_path, fig_dir):
    """Write TABLES.md and the figures; returns (tables text, list of figure paths)."""
    results, errors = load_results(root)
    grid = list(results.values())
    out = ["# Results: the paper's Tables 1–5 and Figs 3–4, reproduced with regnp",
           "",
           "Generated by `python -m regnp.study report` from the job JSON in "
           f"`{root}` — do not edit by hand. Our numbers beside the paper's. Conventions "
           "(pooling over seeds, the t-test) are in `regnp/study/report.py`'s docstring. Data sets stand "
           "in for the paper's: liver MRI → CHAOS T2 slices with our synthetic Gaussian-mixture "
           "fields (σ = RMS displacement over the body, px at 256²), EchoNet-Dynamic → ACDC cine "
           "MRI ED/ES, Shenzhen/Montgomery → JSRT.", ""]
    steps = sorted({m["train"]["steps"] for m in grid if m.get("train")
                    and not m["config"].get("val_every")})
    if steps:
        out.append(f"Training steps per job: {', '.join(map(str, steps))} (batch 2, 256×256).")
    out.append("")
    figs = []
    # --- training length
    calib = {v: _jobs_of(results, "liver16", v, calibration=True)
             for v in ("vm2", "metareg", "ablated")}
    if any(calib.values()):
        out += ["## Training length (the `steps` protocol)", "",
                "| Model | steps run | stopped | chosen by the rule | final val. Dice (%) |",
                "|---|---|---|---|---|"]
        for v, jobs in calib.items():
            for m in jobs:
                curve = m["train"]["val_curve"]
                ch, _ = chosen_steps(curve)
                out.append(f"| {VARIANTS[v][0]} | {m['train']['steps']} | {m['train']['stopped']} "
                           f"| {ch if ch else 'not reached'} | {100 * curve[-1][1]:.2f} |")
        out.append("")
        out += _long_training_table(calib)
        figs.append(_plot_steps(calib, Path(fig_dir) / "results_training_length.png"))
    # --- tables 1-4
    for title, scen in TABLES:
        out += [f"## {title}", ""]
        for setting, test, label in scen:
            out += [f"**{label}**", "", scenario_table(results, setting, test), ""]
            c = compare(results, setting, test)
            if c is not None:
                out.append(f"Meta-Reg − {VARIANTS[c['rival']][0]} (next best): "
                           f"{c['delta']:+.2f} Dice points; Welch t-test p = "
                           f"{_pvalue(c['p'])}.")
                out.append("")
    out += ["## Table 5 — ablation (M removed; same architecture, unit-sum 13×13 layer, same "
            "explicit regularization)", "", ablation_table(results), "",
            "What the other pieces add (Δ Dice, Welch p; the free- and no-filter variants have one "
            "seed, the others two, pooled):", "", ablation_variants_table(results), ""]
    # --- lambda
    pts = {v: lambda_points(results, v) for v in ("vm2", "metareg")}
    if any(len(p) >= 2 for p in pts.values()):      # a curve needs two λ values at least
        out += ["## Figs 3–4 — λ sweep, liver σ 16/16", "",
                "| λ | VM-2 Dice (%) | Meta-Reg Dice (%) | Meta-Reg − VM-2 (Welch p) "
                "| VM-2 \\|J\\|>0 (%) | Meta-Reg \\|J\\|>0 (%) | Meta-Reg − VM-2 (Welch p) |",
                "|---|---|---|---|---|---|---|"]
        for lam in LAMBDAS:
            cv = dict(pts["vm2"]).get(lam)
            cm = dict(pts["metareg"]).get(lam)
            out.append(f"| {lam:g} | {_pm(cv and cv['dice'])} | {_pm(cm and cm['dice'])} "
                       f"| {_diff_txt(cm, cv)} | {_pm(cv and cv['jac'])} | {_pm(cm and cm['jac'])} "
                       f"| {_diff_txt(cm, cv, 'jac')} |")
        out += ["", lambda_summary(pts), ""]
        figs += _plot_lambda(pts, Path(fig_dir))
    # --- rkhs
    rk = [(v, s) for s in ("liver10", "liver16") for v in ("rkhs_exact", "rkhs_conv13", "metareg",
                                                           "vm2", "solver")]
    if any(_jobs_of(results, s, v) for v, s in rk if v.startswith(("rkhs", "solver"))):
        out += ["## RKHS (beyond the paper): eq. 7 exact vs 13×13, Meta-Reg, VM-2, eq. 6 solver",
                "", "| Setting | Method | Dice (%) | \\|J\\|>0 (%) | \\|J\\|min | s/pair |",
                "|---|---|---|---|---|---|"]
        for v, s in rk:
            test = "s10" if s == "liver10" else "s16"
            c = cell(results, s, v, test)
            name = "classical eq. 6 solver" if v == "solver" else VARIANTS[v][0]
            out.append(f"| {SETTINGS[s][2]} | {name} | {_pm(c and c['dice'])} | "
                       f"{_pm(c and c['jac'])} | {_pm(c and c['minj'])} | "
                       f"{_cpu(c, 3)} |")
        out += ["", "Differences on the same test pairs (Δ Dice points, 95 % Welch interval, p):",
                "", rkhs_differences_table(results), ""]
    # --- diffeomorphic variants
    dv = [("metareg", "Meta-Reg"), ("metareg_int7", None), ("vm2", "VM-2"), ("vm2_int7", None)]
    if any(_jobs_of(results, "liver16", v) for v, _ in dv if v.endswith("int7")):
        out += ["## Diffeomorphic variants (beyond the paper): liver σ 16/16", "",
                "| Method | Dice (%) | \\|J\\|>0 (%) | \\|J\\|min | CPU (s) |", "|---|---|---|---|---|"]
        for v, _ in dv:
            c = cell(results, "liver16", v, "s16")
            out.append(f"| {VARIANTS[v][0]} | {_pm(c and c['dice'])} | {_pm(c and c['jac'])} | "
                       f"{_pm(c and c['minj'])} | {_cpu(c, 4)} |")
        out.append("")
    # --- claims
    out += ["## The paper's claims, one by one", "",
            "| Claim | paper (Δ Dice; n.s. = not significant there) | ours (Δ Dice) | verdict |",
            "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in claims(results)]
    out.append("")
    f = _plot_claims(results, Path(fig_dir) / "results_claims.png")
    if f is not None:
        figs.append(f)
        rel = Path(os.path.relpath(f, Path(tables_path).parent)).as_posix()
        out += [f"![the claims: the paper's Δ Dice and ours with 95 % intervals]({rel})", ""]
    # --- cost
    by_proto = {}
    for m in grid:
        by_proto.setdefault(m["config"].get("setting", "?"), []).append(m)
    out += ["## Cost", "", "| Setting | finished jobs | CPU hours (training + scoring, × threads) |",
            "|---|---|---|"]
    for k in sorted(by_proto):
        out.append(f"| {k} | {len(by_proto[k])} | {_cpu_hours(by_proto[k]):.2f} |")
    out.append(f"| all | {len(grid)} | {_cpu_hours(grid):.2f} |")
    out += _protocol_cost(results)
    if errors:
        out += ["", "Unreadable result files (skipped): " + "; ".join(errors)]
    text = "\n".join(out) + "\n"
    Path(tables_path).parent.mkdir(parents=True, exist_ok=True)
    Path(tables_path).write_text(text)
    return text, [f for f in figs if f]


README_BEGIN = "<!-- results: generated by python -m regnp.study report --readme; do not edit -->"
README_END = "<!-- results: end -->"


def readme_block(results):
    """The README's generated part of "Results": how far the grid is, and the claims table."""
    planned = {n for p, names in _planned_jobs().items() if p != "steps" for n in names}
    done = sorted(n for n in planned if n in results)
    complete = len(done) == len(planned)
    status = (f"**Grid status: all {len(planned)} grid jobs finished** (the `steps` calibration "
              "runs not counted). Each table cell pools the seeds of its model." if complete else
              f"**Grid status: {len(done)} of {len(planned)} grid jobs finished** (the `steps` "
              "calibration runs not counted). Each table cell pools the seeds finished so far; "
              "\"not run yet\" means the jobs are still queued.")
    out = [status, "",
           "| Claim | paper (Δ Dice; n.s. = not significant there) | ours (Δ Dice) | verdict |",
           "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in claims(results)]
    cost = _protocol_cost(results)
    if cost:
        out += ["", ("**Cost.** " if complete else "**Cost so far.** ") + cost[1]] + cost[2:]
    return "\n".join(out)


def update_readme(readme, root):
    """Replace the text between ``README_BEGIN`` and ``README_END`` in ``readme`` with
    :func:`readme_block` of the jobs under ``root``. The markers must be there (once each, in
    that order); the rest of the file is left byte for byte. Returns the new block."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1 \
            or text.index(README_BEGIN) > text.index(README_END):
        raise ValueError(f"{readme} needs the two marker lines, once each and in this order, "
                         f"around the part to regenerate: {README_BEGIN} … {README_END}")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    results, _ = load_results(root)
    block = readme_block(results)
    readme.write_text(f"{head}{README_BEGIN}\n{block}\n{README_END}{tail}", encoding="utf-8")
    return block


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _plot_steps(calib, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for v, jobs in calib.items():
        for m in jobs:
            curve = m["train"]["val_curve"]
            if not curve:
                continue
            ax.plot([c[0] for c in curve], [100 * c[1] for c in curve], "o-", ms=3,
                    label=f"{VARIANTS[v][0]} (seed {m['config']['seed']})")
            ch, _ = chosen_steps(curve)
            if ch:
                ax.axvline(ch, ls=":", color=ax.lines[-1].get_color())
    ax.axvline(TRAIN_STEPS, color="gray", ls="--", lw=1)
    # top of the axes: the legend sits in the lower right, and the curves are still low here
    ax.text(TRAIN_STEPS, ax.get_ylim()[1], f" grid jobs: {TRAIN_STEPS} steps\n (the stated compromise)",
            color="gray", fontsize=8, va="top")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation Dice (%)")
    ax.set_title("liver σ 16: validation Dice on held-out training subjects\n(dotted: step after "
                 "which it gains < 0.3 points per 2,000 steps)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_lambda(pts, fig_dir):
    plt = _plt()
    paths = []
    for key, ylabel, fname in (("dice", "Dice (%)", "results_lambda_dice.png"),
                               ("jac", "% of |J| > 0", "results_lambda_jacobian.png")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for v, p in pts.items():
            if not p:
                continue
            ax.errorbar([lam for lam, _ in p], [c[key][0] for _, c in p],
                        yerr=[c[key][1] for _, c in p], marker="o", capsize=3, label=VARIANTS[v][0])
        ax.set_xscale("log")
        ax.set_xlabel("λ")
        ax.set_ylabel(ylabel)
        ax.set_title(f"liver σ_train = σ_test = 16: {ylabel} vs λ (mean ± std over test pairs)",
                     fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(fig_dir / fname, dpi=100)
        plt.close(fig)
        paths.append(fig_dir / fname)
    return paths
