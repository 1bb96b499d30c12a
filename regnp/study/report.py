"""Tables 1–5, the λ curves (Figs 3–4), the training-length curve and the results page, from the
grid's JSON alone.

``python -m regnp.study report [--out results/runs]`` reads every ``*/metrics.json`` under the
grid folder and writes (nothing is retrained; about a minute, most of it the bootstrap):

- ``TABLES.md`` beside the job folder (``results/TABLES.md``; ``--tables``): every table;
- ``README.md`` beside the tables (``results/README.md``; ``--readme``): the answer in short,
  generated from the numbers, the headline comparisons, the claims, what M does, the figures;
- ``results_*.png``: into the repository's ``figures/`` only when the tables are the
  repository's own ``results/TABLES.md``, else into ``figures/`` beside the tables
  (``--figures``), so the report of a scratch grid never replaces the committed figures;
- with the repository's own tables, the project README's results summary: the block between
  :data:`SUMMARY_BEGIN` and :data:`SUMMARY_END` (:func:`summary_block`), nothing else of it.

The same JSON gives the same files byte for byte. The report refuses to replace a file it did not
write, or a file holding results with the report of a folder holding none. Jobs that have not
finished show as "–".

Statistics (each defined and tested in ``regnp.study.stats``; DESIGN.md §12):

- Every model is scored on the same test pairs, so every comparison is **paired**: per-pair
  differences on identical pair ids (jobs scored on different pairs are refused). A model with
  several training seeds enters as each pair's value averaged over its seeds.
- Headline interval and p: a **hierarchical bootstrap** (10,000 resamples, fixed seed) that
  resamples test subjects → base slices → pairs, and each model's training seeds; p is twice the
  smaller share of resampled mean differences on either side of 0, floored at 1e-4. Beside it
  the paired t-test and the Wilcoxon signed-rank test (both treat pairs as independent, which
  they are not) and the effect size d_z = mean / sd of the per-pair differences.
- The claims table: Holm's adjustment of the bootstrap p over the claims; the verdicts use the
  adjusted p and the interval, and name the regime (σ, Dice before registration).
- A table cell is mean ± sample sd over the values that are tested: each test pair's value
  averaged over the model's seeds. The seeds column lists each seed's mean.
- CPU is the median seconds to register one pair (batch 1, one forward pass, after warm-up), on
  the machine and thread count recorded in the job.
"""
import os
from pathlib import Path

import numpy as np

from .protocols import LAMBDA, LAMBDAS, SETTINGS, TABLE_MODELS, TRAIN_STEPS, VARIANTS
from .stats import compare_paired, holm, mean_sd, trend_bootstrap

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
    """``{job name: metrics}`` for every finished job under ``root``, and the list of files
    skipped: a ``metrics.json`` the grid did not write (wrong shape, no ``tests``, not JSON) is
    named there in one line (``grid.read_metrics``), never a KeyError later."""
    from .grid import BadJobFile, read_metrics
    out, errors = {}, []
    for p in sorted(Path(root).glob("*/metrics.json")):
        try:
            m = read_metrics(p)
        except BadJobFile as e:
            errors.append(str(e))
            continue
        if m is not None:
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
    """One table cell, or None when no seed has finished (``calibration``: the long runs of the
    `steps` protocol instead of the grid's jobs).

    Each test pair's value is averaged over the model's seeds first; ``dice``, ``dice_before``,
    ``jac`` and ``minj`` are (mean, sample sd) over those per-pair values — the values the
    comparisons test. ``seed_dice`` / ``seed_jac``: one {pair id: value} per seed (Dice in
    points, |J| > 0 in %), for :func:`diff`; ``per_seed``: each seed's mean Dice."""
    jobs = [m for m in _jobs_of(results, setting, variant, lam, calibration) if test in m["tests"]]
    if not jobs:
        return None
    pairs = [m["tests"][test]["pairs"] for m in jobs]
    scale = {"dice_after": 100.0, "dice_before": 100.0, "pct_positive_jacobian": 1.0,
             "min_jacobian": 1.0}
    per_seed = {k: [dict(zip(p["id"], (s * float(v) for v in p[k]))) for p in pairs]
                for k, s in scale.items()}
    avg = {k: np.array([np.mean([d[i] for d in seeds if i in d]) for i in seeds[0]])
           for k, seeds in per_seed.items()}
    secs = [s for p in pairs for s in p["seconds"] if s is not None]
    return {"dice": mean_sd(avg["dice_after"]), "dice_before": mean_sd(avg["dice_before"]),
            "jac": mean_sd(avg["pct_positive_jacobian"]), "minj": mean_sd(avg["min_jacobian"]),
            "cpu": float(np.median(secs)) if secs else None,
            "seeds": [m["config"].get("seed") for m in jobs],
            "per_seed": [float(np.mean(list(d.values()))) for d in per_seed["dice_after"]],
            "seed_dice": per_seed["dice_after"], "seed_jac": per_seed["pct_positive_jacobian"],
            "pair_before": dict(zip(per_seed["dice_before"][0], avg["dice_before"].tolist())),
            "label": f"{VARIANTS.get(variant, (variant,))[0]} ({setting}, {test})",
            "steps": [m["train"]["steps"] for m in jobs if m.get("train")],
            "train_seconds": [m["train"]["seconds"] for m in jobs if m.get("train")]}


_DIFFS = {}          # paired comparisons already computed in this report (the bootstrap is slow)


def diff(a, b, key="dice"):
    """Cell ``a`` − cell ``b`` on their identical test pairs: the dict of
    :func:`regnp.study.stats.compare_paired` (``delta``, ``lo``, ``hi``, ``p`` of the
    hierarchical bootstrap, ``p_t``, ``p_w``, ``dz``, …) of ``key`` ("dice": Dice points;
    "jac": % of |J| > 0), or None when a side has not run."""
    if not (a and b):
        return None
    sa, sb = a["seed_" + key], b["seed_" + key]
    fp = (key, tuple(tuple(sorted(d.items())) for d in sa), tuple(tuple(sorted(d.items()))
                                                                    for d in sb))
    if fp not in _DIFFS:
        _DIFFS[fp] = compare_paired(sa, sb, names=(a["label"], b["label"]))
    return _DIFFS[fp]


def _pm(v, nd=2):
    return "–" if v is None else f"{v[0]:.{nd}f} ± {v[1]:.{nd}f}"


def _paper_pm(p, i, nd=2):
    return "–" if p is None else f"{p[i]:.{nd}f} ± {p[i + 1]:.{nd}f}"


def _cpu(c, nd):
    return "–" if not c or c["cpu"] is None else f"{c['cpu']:.{nd}f}"


def _pvalue(p, n_boot=None):
    """A p value to 3 significant digits; a bootstrap p at its floor 1/n_boot as "≤ 1/n_boot"."""
    if p is None:
        return "–"
    if n_boot and p <= 1 / n_boot:
        return f"≤ {1 / n_boot:.0e}".replace("e-0", "e-")
    return f"{p:.3g}"


def _ci_txt(d):
    return f"{d['lo']:+.2f} to {d['hi']:+.2f}"


def _diff_txt(a, b, key="dice"):
    """A table cell for cell ``a`` − cell ``b``: "Δ (CI lo to hi; p = …)", the hierarchical
    bootstrap's 95 % interval and p, in points of ``key`` ("dice" or "jac"); "–" when a side
    has not run."""
    d = diff(a, b, key)
    if d is None:
        return "–"
    return f"{d['delta']:+.2f} (CI {_ci_txt(d)}; p {_p_eq(d['p'], d['n_boot'])})"


def _p_eq(p, n_boot=None):
    """"= 0.012" or "≤ 1e-4": a p value after "p"."""
    txt = _pvalue(p, n_boot)
    return txt if txt.startswith("≤") else f"= {txt}"


def _seeds_txt(c):
    if c is None:
        return "–"
    if len(c["per_seed"]) == 1:
        return f"1 (seed {c['seeds'][0]})"
    return f"{len(c['seeds'])}: " + " / ".join(f"{v:.2f}" for v in c["per_seed"])


def compare(results, setting, test, variant="metareg", others=TABLE_MODELS, lams=None):
    """Meta-Reg vs the method with the highest mean Dice among ``others`` (the paper's "best
    other method"): the :func:`diff` dict plus ``rival``, ``ours``, ``rival_dice``, or None.
    ``lams``: {variant: λ} where a model is not at the default λ (σ*'s chosen λ)."""
    lams = lams or {}
    me = cell(results, setting, variant, test, lam=lams.get(variant, LAMBDA))
    if me is None:
        return None
    rivals = [(v, cell(results, setting, v, test, lam=lams.get(v, LAMBDA))) for v in others
              if v != variant and not v.startswith("metareg")]
    rivals = [(v, c) for v, c in rivals if c is not None]
    if not rivals:
        return None
    best_v, best = max(rivals, key=lambda vc: vc[1]["dice"][0])
    return dict(diff(me, best), rival=best_v, ours=me["dice"][0], rival_dice=best["dice"][0],
                dice_before=me["dice_before"][0])


def _verdict(row, alpha=0.05):
    """Our verdict on one claim, no stronger than the evidence. ``row``: a :func:`claim_data`
    row. The decision uses the Holm-adjusted bootstrap p (``p_holm``); the wording names the
    regime (σ, Dice before) and, for a gain the paper reports as significant but we do not
    find, says where the paper's Δ lies against our 95 % interval — never "ruled out": the
    interval covers our test subjects and one or two training runs, not other data or
    tuning."""
    if row.get("delta") is None:
        return "not run yet"
    p, paper, regime = row["p_holm"], row["paper"], row["regime"].split(";")[0]
    rival = "the ablated network" if row["rival"].startswith("ablated") else \
        VARIANTS[row["rival"]][0]
    where = ("the paper's {:+.2f} lies above our interval".format(paper) if paper > row["hi"] else
             "our interval contains the paper's {:+.2f}".format(paper) if paper >= row["lo"] else
             "the paper's {:+.2f} lies below our interval".format(paper))
    ptxt = f"Holm p {_p_eq(p, row['n_boot'])}"
    if p < alpha:
        if row["delta"] < 0:
            return f"reversed under our protocol ({regime}): {rival} better ({ptxt})"
        if not row["sig"]:
            return (f"differs: Meta-Reg better under our protocol ({regime}), where the paper "
                    f"found no significant difference ({ptxt})")
        return f"reproduced in direction ({regime}; {ptxt}); {where}"
    if not row["sig"]:
        return f"agrees: no difference detected here either ({regime}; {ptxt})"
    return (f"not reproduced under our protocol ({regime}): our interval includes 0 ({ptxt}); "
            f"{where}")


def scenario_table(results, setting, test, variants=TABLE_MODELS, lams=None, paper=None):
    """One scenario of Tables 1–4: every model's cell beside the paper's. ``lams``: {variant: λ}
    for models not at the default λ (the Method column then names each model's λ); ``paper``:
    the paper's scenario to print beside ours (default: the same setting and test)."""
    lines = ["| Method | Dice (%) | paper | \\|J\\|>0 (%) | paper | \\|J\\|min | paper | CPU (s) "
             "| paper | seeds: Dice per seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    paper = PAPER.get(paper or (setting, test), {})
    for v in variants:
        lam = (lams or {}).get(v, LAMBDA)
        c = cell(results, setting, v, test, lam=lam)
        p = paper.get(v)
        name = VARIANTS[v][0] + (f" (λ {lam:g})" if lams else "")
        lines.append(
            f"| {name} | {_pm(c and c['dice'])} | {_paper_pm(p, 0)} "
            f"| {_pm(c and c['jac'])} | {_paper_pm(p, 2)} | {_pm(c and c['minj'])} "
            f"| {_paper_pm(p, 4)} | {_cpu(c, 4)} "
            f"| {'–' if p is None else f'{p[6]:.4f}'} | {_seeds_txt(c)} |")
    before = next((c for c in (cell(results, setting, v, test, lam=(lams or {}).get(v, LAMBDA))
                               for v in variants) if c), None)
    if before:
        lines.append(f"\nDice before registration: {_pm(before['dice_before'])} %.")
    return "\n".join(lines)


def ablation_table(results):
    """Table 5 as the paper runs it: the ablated network is the same architecture with a free
    13×13 layer and no M (``ablated_free``), the main row; our unit-sum variant (the 13×13
    layer keeps Meta-Reg's DC-gain-1 normalisation, no M) beside it, since the constraint alone
    changes Dice. Δ columns: the hierarchical bootstrap's Δ, 95 % interval and p."""
    lines = ["| Setting | Dice before (%) | Ablated, free 13×13, no M: Dice (%) | paper | \\|J\\|>0 (%) "
             "| paper | Meta-Reg: Dice (%) | paper | \\|J\\|>0 (%) | paper "
             "| Meta-Reg − ablated (free): Δ Dice (CI; p) | paper Δ "
             "| Ablated, unit-sum 13×13, no M: Dice (%) | Meta-Reg − ablated (unit-sum): Δ Dice "
             "(CI; p) |", "|---|" + "---|" * 13]
    for setting, test in ABLATION_TESTS.items():
        free = cell(results, setting, "ablated_free", test)
        m = cell(results, setting, "metareg", test)
        unit = cell(results, setting, "ablated", test)
        before = next((c for c in (m, free, unit) if c), None)
        p = PAPER_ABLATION[setting]
        lines.append(f"| {_scenario_label(setting, test)} | {_pm(before and before['dice_before'], 1)} "
                     f"| {_pm(free and free['dice'])} | {p[0]:.2f} ± {p[1]:.2f} "
                     f"| {_pm(free and free['jac'])} | {p[2]:.2f} ± {p[3]:.2f} | {_pm(m and m['dice'])} "
                     f"| {p[4]:.2f} ± {p[5]:.2f} | {_pm(m and m['jac'])} | {p[6]:.2f} ± {p[7]:.2f} "
                     f"| {_diff_txt(m, free)} | {p[4] - p[0]:+.2f} | {_pm(unit and unit['dice'])} "
                     f"| {_diff_txt(m, unit)} |")
    return "\n".join(lines)


def _scenario_label(setting, test):
    """"liver σ 16→10", "cardiac (ACDC ES←ED)", …: where a comparison was made."""
    sigma = SETTINGS[setting][1]
    if sigma is None:
        return SETTINGS[setting][2]
    return f"liver σ {sigma:g}→{test.lstrip('s')}"


def ablation_variants_table(results):
    """What each piece adds, as Δ Dice (hierarchical 95 % interval and p) between networks that
    differ in one piece: the unit-sum constraint (ablated − free 13×13, neither with M), the
    13×13 layer (free 13×13 − no 13×13) and all three with M (Meta-Reg − no 13×13). M alone is
    Table 5's Δ column."""
    lines = ["| Setting | unit-sum 13×13 − free 13×13 (the constraint) | free 13×13 − no 13×13 "
             "(the layer) | Meta-Reg − no 13×13 (layer, constraint and M) |", "|---|---|---|---|"]
    for setting, test in ABLATION_TESTS.items():
        m, a, free, none = (cell(results, setting, v, test)
                            for v in ("metareg", "ablated", "ablated_free", "ablated_nofilter"))
        row = [_diff_txt(x, y) for x, y in ((a, free), (free, none), (m, none))]
        lines.append(f"| {SETTINGS[setting][2]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def seeds_table(results):
    """Training-seed spread: every model and setting with two or more seeds, each seed's mean
    Dice and the paired difference seed 1 − seed 0 on the same test pairs (hierarchical 95 %
    interval over subjects, slices and pairs). A comparison of single-seed cells carries none of
    this variation; this table shows how large it is."""
    lines = ["| Setting | Model | seeds: mean Dice (%) | seed 1 − seed 0: Δ Dice (CI; p) |",
             "|---|---|---|---|"]
    spread = []
    for setting, test in ABLATION_TESTS.items():
        for v in TABLE_MODELS + ("ablated", "ablated_free", "ablated_nofilter"):
            jobs = _jobs_of(results, setting, v)
            if len(jobs) < 2:
                continue
            one = [cell({m["config"]["name"]: m}, setting, v, test) for m in jobs[:2]]
            if None in one:
                continue
            c = cell(results, setting, v, test)
            spread.append((abs(one[1]["dice"][0] - one[0]["dice"][0]), VARIANTS[v][0],
                           _scenario_label(setting, test)))
            lines.append(f"| {_scenario_label(setting, test)} | {VARIANTS[v][0]} | {_seeds_txt(c)} "
                         f"| {_diff_txt(one[1], one[0])} |")
    return ("\n".join(lines), max(spread)) if spread else ("", None)


RKHS_DIFFERENCES = (("rkhs_conv13", "rkhs_exact", "13×13 K̃ − exact K·α (the approximation)"),
                    ("metareg", "rkhs_conv13", "Meta-Reg − eq. 7 with 13×13 K̃ (learning K̃ and M)"),
                    ("solver", "metareg", "eq. 6 solver − Meta-Reg (optimising each pair)"))


def rkhs_differences_table(results):
    """The RKHS protocol's three questions as Δ Dice with the hierarchical 95 % interval and p, on the
    test σ equal to the training σ: does the 13×13 approximation of eq. 7 lose Dice against the
    exact K·α; does learning K̃ (Meta-Reg) beat the fixed 13×13 K̃; how far is the per-pair
    classical solver ahead of the network."""
    lines = ["| Setting | " + " | ".join(t for _, _, t in RKHS_DIFFERENCES) + " |",
             "|---|" + "---|" * len(RKHS_DIFFERENCES)]
    for setting, test in (("liver10", "s10"), ("liver16", "s16")):
        row = [_diff_txt(cell(results, setting, x, test), cell(results, setting, y, test))
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
    diffs = [(lam, m[lam]["dice"][0] - v[lam]["dice"][0], diff(m[lam], v[lam]))
             for lam in both]
    above = [lam for lam, d, _ in diffs if d > 0]
    sig = [(lam, d) for lam, d, t in diffs if t["p"] < alpha]
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
            f"(hierarchical bootstrap p < {alpha:g}, not adjusted for the {len(both)} λ values) "
            f"{sig_txt}. Best λ: Meta-Reg {best['metareg']:g}, VoxelMorph-2 "
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
            out.append(f"Meta-Reg − {VARIANTS[other][0]} at σ 16/16 after the long runs: "
                       f"{_diff_txt(cells['metareg'], cells[other])} Dice points "
                       "(hierarchical 95 % interval over subjects, slices and pairs; one seed "
                       "each, so no seed variation).")
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
    counts in each, and once in "all". A plateau-rule run (``steps_…``) is estimated at its step
    cap (``steps``); the rule may stop it sooner, and its validation passes are not counted.
    Empty when no finished job belongs to a full protocol (a --quick grid)."""
    from .grid import estimate_seconds
    planned = _planned_jobs()
    configs = {n: c for jobs in planned.values() for n, c in jobs.items()}
    if not any(n in results for names in planned.values() for n in names):
        return []
    grid_done = [m for m in results.values() if not m["config"].get("val_every")]
    typical = float(np.median([_cpu_hours([m]) for m in grid_done])) if grid_done else 0.0
    threads = float(np.median([(m.get("machine") or {}).get("threads", 1) for m in grid_done])
                    ) if grid_done else 1.0

    def left_hours(config):
        e = estimate_seconds(config, grid_done)
        return typical if e is None else e * threads / 3600

    cores = int(np.median([(m.get("machine") or {}).get("cpus") or 1 for m in grid_done])
                ) if grid_done else 1
    rows = ["", "Per protocol (planned = the full protocol with the default seeds; CPU hours "
            "count training and scoring; the estimate for each job left is its variant's "
            "measured seconds per step × its steps + the scoring time of its test pairs; a "
            "plateau-rule run counts at its step cap, which the rule may stop short of). "
            f"The median finished grid job took {typical * 60:.0f} CPU minutes; run as one "
            f"single-threaded job per core, a {cores}-core machine finishes about "
            f"{cores / max(typical, 1e-9):.1f} such jobs per hour.", "",
            "| Protocol | finished / planned jobs | CPU hours so far | estimated CPU hours left |",
            "|---|---|---|---|"]
    every = {}
    for p, names in planned.items():
        every.update(dict.fromkeys(names))
        done = [results[n] for n in names if n in results]
        left = sum(left_hours(configs[n]) for n in names if n not in results)
        rows.append(f"| {p} | {len(done)} / {len(names)} | {_cpu_hours(done):.2f} | {left:.1f} |")
    done = [results[n] for n in every if n in results]
    # every job left, plateau runs included (σ*'s are in its row too: "all" is never the smaller)
    grid_left = sum(left_hours(configs[n]) for n in every if n not in results)
    rows.append(f"| all (each job once) | {len(done)} / {len(every)} | {_cpu_hours(done):.2f} | "
                f"{grid_left:.1f} |")
    waiting, methods = _sigmastar_waiting(every)
    if waiting:
        hours = sum(left_hours(c) for c in waiting)
        kinds = "Table 1/2/5 runs" + (" and plateau runs" if any(
            c["name"].startswith("steps_") for c in waiting) else "")
        jobs = f"{len(waiting)} more job{'s' * (len(waiting) != 1)}"
        rows += ["", f"Not in the table yet: σ*'s {kinds} of "
                 f"{', '.join(VARIANTS[v][0] for v in methods)} wait for their λ to be chosen on "
                 f"validation: up to {jobs}, about {hours:.1f} CPU hours (fewer where the choice "
                 "is λ 0.04: the sweep's σ* runs are then its table runs)."]
    return rows


def _sigmastar_waiting(planned):
    """The σ* jobs not planned yet because their method's λ is not chosen: (their configs, the
    methods), planned with a λ no sweep run has (0.02), so that none counts as done — the most
    the choice can add."""
    from .protocols import (SIGMA_STAR, SIGMASTAR_BEST_LAMBDA, SIGMASTAR_LAMBDA_VARIANTS,
                            sigmastar_jobs)
    methods = [v for v in SIGMASTAR_LAMBDA_VARIANTS if v not in SIGMASTAR_BEST_LAMBDA]
    if SIGMA_STAR is None or not methods:
        return [], []
    jobs = sigmastar_jobs(best={**SIGMASTAR_BEST_LAMBDA, **{v: 0.02 for v in methods}})
    return [c for c in jobs if c["name"] not in planned], methods


# (setting, test, claim, the paper's Δ, whether the paper reports it as significant: its sec.
# 5.4.4 rejects H0 for liver 16/16, liver 16→10 and cardiac, and for the ablation on liver 16,
# cardiac and chest; chest only against VM-2, not against VM-1)
SCENARIO_CLAIMS = (
    ("liver16", "s16", "Meta-Reg beats the best other method at σ 16/16", 84.80 - 80.50, True),
    ("liver10", "s10", "Meta-Reg vs the best other method at σ 10/10", 94.12 - 93.81, False),
    ("liver10", "s16", "generalises 10 → 16", 85.56 - 84.91, False),
    ("liver16", "s10", "generalises 16 → 10", 92.60 - 88.66, True),
    ("cardiac", "test", "cardiac: Meta-Reg beats the best other method", 86.52 - 84.12, True),
    ("chest", "test", "chest: Meta-Reg vs the best other method", 85.20 - 83.86, False))


def _regime(c, setting, test):
    """Where a comparison was made: σ (or the real pairs), Dice before registration, and how
    many subjects / pairs / seeds the interval resamples."""
    what = _scenario_label(setting, test) if SETTINGS[setting][1] else {
        "cardiac": "real ED→ES pairs", "chest": "inter-patient pairs"}[setting]
    return (f"{what}, Dice before {c['dice_before']:.1f} %; {c['n_subjects']} subjects, "
            f"{c['n_pairs']} pairs, seeds {c['seeds'][0]}+{c['seeds'][1]}")


def claim_data(results):
    """The paper's claims, one by one, as dicts: ``text``, the paper's Δ Dice ``paper`` and
    whether it reports it as significant (``sig``), ``rival`` (the variant compared with),
    ``regime``, and — once both sides have finished — the :func:`diff` keys (``delta``, ``lo``,
    ``hi``, ``p``, ``p_t``, ``p_w``, ``dz``, …), ``ours`` / ``rival_dice`` (mean Dice) and
    ``p_holm``: the bootstrap p adjusted by Holm over the claims that have one. The ablation
    claims compare with the paper's ablation (free 13×13, no M)."""
    rows = []
    for setting, test, text, paper_delta, sig in SCENARIO_CLAIMS:
        c = compare(results, setting, test)
        rows.append(dict(c or {}, text=text, paper=paper_delta, sig=sig,
                         rival=(c or {}).get("rival", "vm2"),
                         regime=_regime(c, setting, test) if c else None))
    for setting, test in ABLATION_TESTS.items():
        a, m = cell(results, setting, "ablated_free", test), cell(results, setting, "metareg", test)
        p = PAPER_ABLATION[setting]
        row = {"text": f"M adds Dice over the ablated network ({SETTINGS[setting][2]})",
               "paper": p[4] - p[0], "sig": setting != "liver10",  # paper: no gain at liver 10
               "rival": "ablated_free", "regime": None}
        if a and m:
            d = dict(diff(m, a), ours=m["dice"][0], rival_dice=a["dice"][0],
                     dice_before=m["dice_before"][0])
            row.update(d, regime=_regime(d, setting, test))
        rows.append(row)
    from .sigmastar import claim_rows
    for setting, test, text, paper_delta, sig, rival, lams in claim_rows(results):
        if "metareg" not in lams:                # σ*'s models wait for their chosen λ
            c = None
        elif rival is None:                      # Meta-Reg vs the best other method there
            c = compare(results, setting, test, lams=lams,
                        others=tuple(v for v in TABLE_MODELS if v in lams))
        elif rival not in lams:
            c = None
        else:
            m = cell(results, setting, "metareg", test, lam=lams.get("metareg", LAMBDA))
            a = cell(results, setting, rival, test, lam=lams.get(rival, LAMBDA))
            c = m and a and dict(diff(m, a), rival=rival, ours=m["dice"][0],
                                 rival_dice=a["dice"][0], dice_before=m["dice_before"][0])
        rows.append(dict(c or {}, text=text, paper=paper_delta, sig=sig,
                         rival=(c or {}).get("rival", rival or "vm2"),
                         regime=_regime(c, setting, test) if c else None))
    adjusted = holm([r.get("p") for r in rows])
    for r, ph in zip(rows, adjusted):
        r["p_holm"] = ph
    return rows


CLAIMS_HEADER = ["| Claim | regime | paper Δ Dice (n.s. = not significant there) | ours: Δ Dice "
                 "(Meta-Reg − …) | 95 % CI (hierarchical) | p (bootstrap) | p (Holm) "
                 "| paired t p | Wilcoxon p | d_z | verdict |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]


def claims(results, rows=None):
    """The claims table's rows (markdown lines after :data:`CLAIMS_HEADER`)."""
    out = []
    for c in rows if rows is not None else claim_data(results):
        paper = f"{c['paper']:+.2f}" + ("" if c["sig"] else " (n.s.)")
        if c.get("delta") is None:
            out.append(f"| {c['text']} | – | {paper} | – | – | – | – | – | – | – | not run yet |")
            continue
        ours = (f"{c['delta']:+.2f} − {VARIANTS[c['rival']][0]} "
                f"({c['ours']:.2f} vs {c['rival_dice']:.2f})")
        dz = "–" if c["dz"] is None else f"{c['dz']:+.2f}"
        out.append(f"| {c['text']} | {c['regime']} | {paper} | {ours} | {_ci_txt(c)} "
                   f"| {_pvalue(c['p'], c['n_boot'])} | {_pvalue(c['p_holm'], c['n_boot'])} "
                   f"| {_pvalue(c['p_t'])} | {_pvalue(c['p_w'])} | {dz} | {_verdict(c)} |")
    return out


def _plot_claims(rows, path):
    """Each claim: the paper's Δ Dice (open diamond) and ours with its hierarchical 95 %
    interval."""
    if all(r.get("delta") is None for r in rows):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.4))
    y = np.arange(len(rows))[::-1]
    ax.axvline(0, color="gray", lw=1)
    for yi, r in zip(y, rows):
        ax.plot(r["paper"], yi, "D", mfc="none", mec="tab:red", ms=7,
                label="paper" if yi == y[0] else None)
        if r.get("delta") is None:
            ax.text(0.2, yi, "not run yet", va="center", fontsize=8, color="gray")
            continue
        ax.errorbar(r["delta"], yi, xerr=[[r["delta"] - r["lo"]], [r["hi"] - r["delta"]]],
                    fmt="o", color="tab:blue", capsize=3,
                    label="ours (hierarchical 95 % CI)" if yi == y[0] else None)
    labels = [r["text"] + ("" if r["rival"].startswith("ablated") else
                           f" (vs {VARIANTS[r['rival']][0]})") for r in rows]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("Δ Dice (points): Meta-Reg − the method compared with")
    fig.suptitle("The paper's claims (open diamonds) and ours (95 % interval: bootstrap over test "
                 f"subjects, slices, pairs and seeds); 256², {TRAIN_STEPS:,} training steps",
                 fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


HEADLINE = (("liver10", "s10", "vm2"), ("liver16", "s16", "vm2"), ("liver10", "s16", "vm2"),
            ("liver16", "s10", "vm2"), ("cardiac", "test", "vm2"), ("chest", "test", "vm2"),
            ("liver10", "s10", "ablated_free"), ("liver16", "s16", "ablated_free"),
            ("cardiac", "test", "ablated_free"), ("chest", "test", "ablated_free"),
            ("liver10", "s10", "ablated"), ("liver16", "s16", "ablated"),
            ("cardiac", "test", "ablated"), ("chest", "test", "ablated"))


def headline_rows(results):
    """Meta-Reg − VoxelMorph-2 in every scenario, and Meta-Reg − each ablated network (the
    paper's free 13×13 and our unit-sum variant), as (scenario, rival, cell Meta-Reg, diff)
    for the comparisons whose two sides have run."""
    rows = []
    for setting, test, rival in HEADLINE:
        m, r = cell(results, setting, "metareg", test), cell(results, setting, rival, test)
        if m and r:
            rows.append((setting, test, rival, m, diff(m, r)))
    return rows


def headline_table(rows):
    out = ["| Meta-Reg − … | where | Dice before (%) | Δ Dice | 95 % CI (hierarchical) "
           "| p (bootstrap) | paired t p | Wilcoxon p | d_z | subjects / pairs / seeds |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, test, rival, m, d in rows:
        dz = "–" if d["dz"] is None else f"{d['dz']:+.2f}"
        out.append(f"| {VARIANTS[rival][0]} | {_scenario_label(setting, test)} "
                   f"| {m['dice_before'][0]:.1f} | {d['delta']:+.2f} | {_ci_txt(d)} "
                   f"| {_pvalue(d['p'], d['n_boot'])} | {_pvalue(d['p_t'])} | {_pvalue(d['p_w'])} "
                   f"| {dz} | {d['n_subjects']} / {d['n_pairs']} / {d['seeds'][0]}+{d['seeds'][1]} |")
    return out


def m_summary(results):
    """What M does during training, measured from the JSON: each loss term's value over the last
    10 % of logged steps (``train.loss_curve``: step, loss, similarity, R, M — the objective is
    similarity + λ·R + M), and the learned filter's trace at the end (``train.filter``). With
    the default hinge, M's trace part is ρ2·(max(0, −Tr K̃) + max(0, −Tr JK̃)): it is active
    only while a trace is negative. The JSON records Tr K̃ at the end of training only (Tr JK̃
    not at all), so whether the hinge was ever active earlier cannot be read from it."""
    out = []
    for v in ("metareg", "metareg_paper"):
        jobs = [m for m in results.values() if m["config"].get("variant") == v
                and (m.get("train") or {}).get("loss_curve")]
        if not jobs:
            continue
        share, terms, traces, sums, centres = [], [], [], [], []
        for m in jobs:
            curve = np.asarray(m["train"]["loss_curve"], float)       # (steps, 5)
            tail = curve[-max(1, len(curve) // 10):]
            lam = m["config"].get("lam", LAMBDA)
            sim, reg, meta = tail[:, 2].mean(), lam * tail[:, 3].mean(), tail[:, 4].mean()
            terms.append((sim, reg, meta))
            share.append(abs(meta) / (abs(sim) + abs(reg) + abs(meta)))
            f = m["train"].get("filter") or {}
            if "k_trace" in f:
                traces.append(f["k_trace"])
                sums.append(f.get("k_sum", np.nan))
                centres.append(f.get("k_center", np.nan))
        t = np.array(terms)
        txt = (f"**{VARIANTS[v][0]}** ({len(jobs)} runs of the grid): over the last 10 % "
               f"of training, similarity {np.median(t[:, 0]):.2g}, λ·R {np.median(t[:, 1]):.2g}, "
               f"M {np.median(t[:, 2]):+.2g} (medians over runs); M is {100 * min(share):.2g}–"
               f"{100 * max(share):.2g} % of the loss's magnitude (median "
               f"{100 * np.median(share):.2g} %).")
        if traces:
            neg = sum(tr < 0 for tr in traces)
            txt += (f" The learned filter's trace Tr K̃ at the end: {min(traces):.3g} to "
                    f"{max(traces):.3g} ({neg} of {len(traces)} runs negative); its sum "
                    + (f"{np.nanmean(sums):.3f} in every run" if np.nanmax(sums) - np.nanmin(sums)
                       < 1e-3 else f"{np.nanmin(sums):.3g} to {np.nanmax(sums):.3g}")
                    + "; its centre tap "
                    f"{np.nanmin(centres):.3g} to {np.nanmax(centres):.3g}.")
            if v == "metareg":
                curves = hinge_activity(jobs)
                txt += (" So at the end of every run the hinge on Tr K̃ is inactive"
                        if neg == 0 else " The hinge on Tr K̃ is active at the end of "
                        f"{neg} runs") + (": M acts through its symmetry terms (ρ1) alone. "
                                          if neg == 0 else ". ")
                if curves is None:
                    txt += "Earlier steps and Tr JK̃ are not recorded in the JSON."
                else:
                    n_runs, active_runs, active_steps, steps = curves
                    txt += (f"Of the {n_runs} run{'s' if n_runs != 1 else ''} that recorded "
                            f"Tr K̃ and Tr JK̃ at every logged step, the hinge (a negative "
                            f"trace) was active in {active_runs}, at {active_steps} of {steps} "
                            f"logged steps.")
                txt = txt.rstrip()
            else:
                txt += (" Eq. 12 as printed rewards the trace without bound (−ρ2·Tr): a "
                        "negative M means the reward outweighs the symmetry terms.")
        out.append(txt)
    return out


FILTER_VARIANTS = ("metareg", "metareg_paper", "ablated_free", "ablated")


def gram_filter(width, k):
    """The reduced K̃ of eq. 9 for a Gaussian kernel of ``width`` px, cut to k×k (the kernel's
    stencil around the centre pixel, :meth:`regnp.rkhs.kernels.Kernel.stencil`), scaled to unit
    sum as our Meta-Reg's filters are."""
    from ..rkhs.kernels import make_kernel
    h = k // 2
    st = make_kernel("gaussian", width).stencil(h + 1, h + 1)      # (2h+1, 2h+1), centre [h, h]
    return st / st.sum()


def fit_gram_filter(w, widths=np.linspace(0.3, 8.0, 155)):
    """The Gaussian width whose eq. 9 K̃ is nearest (least squares, both at unit sum) to the
    k×k filter ``w``; returns (width, K̃, relative L2 distance ‖w/Σw − K̃‖ / ‖K̃‖)."""
    w = np.asarray(w, float)
    wn = w / w.sum() if abs(w.sum()) > 1e-12 else w
    best = None
    for s in widths:
        g = gram_filter(float(s), w.shape[0])
        e = float(np.linalg.norm(wn - g) / np.linalg.norm(g))
        if best is None or e < best[2]:
            best = (float(s), g, e)
    return best


def learned_filters(results):
    """``{variant: [(setting, seed, (k, k) filter), ...]}``: the first learned filter of every
    finished job that stored it (``train.filter_weights``; jobs finished before it was recorded
    have none)."""
    out = {}
    for m in results.values():
        c, fw = m["config"], (m.get("train") or {}).get("filter_weights")
        if fw and c.get("variant") in FILTER_VARIANTS:
            out.setdefault(c["variant"], []).append((c["setting"], c["seed"],
                                                     np.asarray(fw[0], float)))
    return {v: sorted(out[v], key=lambda t: (t[0], t[1])) for v in FILTER_VARIANTS if v in out}


def filters_table(filt):
    """Per variant: how many filters, their sum, trace, centre tap and smallest eigenvalue
    (ranges), and the nearest eq. 9 Gaussian K̃ (width, relative distance)."""
    from ..rkhs.reduced import filter_diagnostics
    rows = ["| Model | filters | sum | Tr K̃ | centre tap | min eigenvalue (matrix PSD if ≥ 0) "
            "| nearest eq. 9 Gaussian K̃: width (px) | its relative distance |",
            "|---|---|---|---|---|---|---|---|"]
    for v, items in filt.items():
        d = [filter_diagnostics(w) for _, _, w in items]
        fits = [fit_gram_filter(w) for _, _, w in items]

        def rng(vals, nd=3):
            return f"{min(vals):.{nd}g}" if max(vals) - min(vals) < 1e-9 else \
                f"{min(vals):.{nd}g} to {max(vals):.{nd}g}"
        rows.append(f"| {VARIANTS[v][0]} | {len(items)} | {rng([x.sum for x in d])} | "
                    f"{rng([x.trace for x in d])} | {rng([x.centre for x in d])} | "
                    f"{rng([x.eig_min for x in d])} | {rng([f[0] for f in fits], 2)} | "
                    f"{rng([f[2] for f in fits], 2)} |")
    return "\n".join(rows)


def _plot_filters(filt, path):
    """Top: one learned filter per model (its first job) beside the eq. 9 K̃ of the Gaussian
    nearest to it. Bottom: the centre row of each, unit-sum."""
    plt = _plt()
    n = len(filt)
    fig, ax = plt.subplots(2, n + 1, figsize=(2.8 * (n + 1), 5.4), squeeze=False)
    first = next(iter(filt.values()))[0][2]
    width, g, _ = fit_gram_filter(first)
    panels = [(VARIANTS[v][0] + f"\n({items[0][0]}, seed {items[0][1]})", items[0][2])
              for v, items in filt.items()] + [(f"eq. 9 K̃, Gaussian width {width:.2g} px\n"
                                                 f"(nearest to the first)", g)]
    h = first.shape[0] // 2
    for j, (title, w) in enumerate(panels):
        a = ax[0, j]
        lim = float(np.abs(w).max()) or 1.0
        a.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)
        a.set_title(title, fontsize=7)
        a.set_xticks([])
        a.set_yticks([])
        wn = w / w.sum() if abs(w.sum()) > 1e-12 else w
        ax[1, 0].plot(np.arange(-h, h + 1), wn[h], "o-" if j < n else "k--", ms=3,
                      label=title.split("\n")[0])
    ax[1, 0].set_xlabel("offset from the centre (px)")
    ax[1, 0].set_ylabel("tap / sum")
    ax[1, 0].legend(fontsize=6)
    ax[1, 0].set_title("centre row, unit sum", fontsize=8)
    for j in range(1, n + 1):
        ax[1, j].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def hinge_activity(jobs):
    """From the jobs that stored ``train.filter_curve`` with both traces: (runs, runs in which
    the hinge was ever active, logged steps with Tr K̃ < 0 or Tr JK̃ < 0, logged steps), or
    None when no job recorded them."""
    runs = active_runs = active = total = 0
    for m in jobs:
        fc = (m.get("train") or {}).get("filter_curve") or {}
        keys = fc.get("keys", [])
        if "k_trace" not in keys or "k_anti_trace" not in keys:
            continue
        i, j = 1 + keys.index("k_trace"), 1 + keys.index("k_anti_trace")
        neg = [r[i] < 0 or r[j] < 0 for r in fc["rows"] if r[i] is not None and r[j] is not None]
        runs += 1
        active_runs += any(neg)
        active += sum(neg)
        total += len(neg)
    return None if runs == 0 else (runs, active_runs, active, total)


def write_report(root, tables_path, fig_dir, readme_path=None):
    """Write TABLES.md, the figures into ``fig_dir`` and (with ``readme_path``) the results page;
    returns (tables text, list of figure paths). No checks: :func:`run_report` makes them."""
    results, errors = load_results(root)
    grid = list(results.values())
    out = ["# Results: the paper's Tables 1–5 and Figs 3–4, reproduced with regnp",
           "",
           f"{GENERATED} from the job JSON in "
           f"`{root}` — do not edit by hand. Our numbers beside the paper's. Every comparison "
           "is paired on identical test pairs; intervals and p come from a hierarchical "
           "bootstrap over test subjects, base slices, pairs and training seeds (conventions in "
           "`regnp/study/report.py`'s docstring, the statistics in `regnp/study/stats.py`). "
           "A cell is mean ± sd over test pairs, each pair's value averaged over the seeds. "
           "Data sets stand "
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
                           f"{c['delta']:+.2f} Dice points (95 % CI {_ci_txt(c)}; bootstrap p "
                           f"{_p_eq(c['p'], c['n_boot'])}; paired t p = {_pvalue(c['p_t'])}, "
                           f"Wilcoxon p = {_pvalue(c['p_w'])}).")
                out.append("")
    out += ["## Table 5 — ablation (M removed; same architecture and explicit regularization)",
            "", "The paper's ablation keeps the free 13×13 layer and removes M (our "
            "`ablated_free`): the main row. Our earlier tables used a unit-sum variant (the "
            "13×13 layer keeps Meta-Reg's DC-gain-1 normalisation, no M); it is shown beside it.",
            "", ablation_table(results), "",
            "What the other pieces add (Δ Dice, hierarchical 95 % interval and p; the free- and "
            "no-filter variants have one seed, the others two):", "",
            ablation_variants_table(results), ""]
    seeds_md, widest = seeds_table(results)
    if seeds_md:
        out += ["## Training seeds", "", "Two seeds of the core models: each seed's mean Dice and "
                "the paired difference between them on the same test pairs. Comparisons of "
                "single-seed models carry none of this variation.", "", seeds_md, ""]
    # --- deformation size, one section per field family
    for family in sigma_families():
        spts = sigma_points(results, family)
        if not spts:                 # a sweep in progress shows its first σ, and that σ's
            continue                 # networks on every test σ (the matrix row) at once
        suffix = family.split("-", 1)[1] if "-" in family else ""
        out += [f"## Meta-Reg's advantage against deformation size (liver, σ_train = σ_test"
                + (f"; {suffix} fields)" if suffix else ")"), "",
                sigma_table(spts), ""] + trend_lines(spts) + ["Within each test set, by thirds of the pairs' Dice "
                "before registration (hardest first; the same pairs on both sides):", "",
                difficulty_table(spts), ""]
        mats = [(r, sigma_matrix(results, family, r)) for r in SIGMA_RIVALS]
        mats = [(r, m) for r, m in mats if len({b for _, b in m}) >= 2]
        if mats:
            out += ["Every trained network on every σ test set (Δ Dice [hierarchical 95 % "
                    "interval]; off the diagonal: the paper's generalisation scenarios):", ""]
            for r, m in mats:
                out += [sigma_matrix_table(m, r), ""]
        if len(spts) >= 2:           # a curve needs two σ
            figs.append(_plot_sigma(spts, Path(fig_dir) / ("results_sigma" + (
                f"_{suffix}" if suffix else "") + ".png")))
    # --- σ*: Tables 1, 2 and 5 at the paper's difficulty
    from .sigmastar import section
    out += section(results)
    # --- lambda
    pts = {v: lambda_points(results, v) for v in ("vm2", "metareg")}
    if any(len(p) >= 2 for p in pts.values()):      # a curve needs two λ values at least
        out += ["## Figs 3–4 — λ sweep, liver σ 16/16", "",
                "| λ | VM-2 Dice (%) | Meta-Reg Dice (%) | Meta-Reg − VM-2: Δ Dice (CI; p) "
                "| VM-2 \\|J\\|>0 (%) | Meta-Reg \\|J\\|>0 (%) | Meta-Reg − VM-2: Δ \\|J\\|>0 (CI; p) |",
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
        out += ["", "Differences on the same test pairs (Δ Dice points, hierarchical 95 % interval, "
                "bootstrap p):",
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
    rows = claim_data(results)
    out += ["## The paper's claims, one by one", "",
            "Holm's adjustment runs over the bootstrap p of every claim that has one; a verdict "
            "uses the adjusted p and the hierarchical interval. The paired t and Wilcoxon tests "
            "treat the test pairs as independent (they share base slices and subjects), so "
            "their p values are smaller than the bootstrap's; they are shown for comparison.",
            ""] + CLAIMS_HEADER + claims(results, rows) + [""]
    f = _plot_claims(rows, Path(fig_dir) / "results_claims.png")
    if f is not None:
        figs.append(f)
        rel = Path(os.path.relpath(f, Path(tables_path).parent)).as_posix()
        out += [f"![the claims: the paper's Δ Dice and ours with 95 % intervals]({rel})", ""]
    # --- what M does
    msum = m_summary(results)
    if msum:
        out += ["## What M does during training", "", "\n\n".join(msum), ""]
    filt = learned_filters(results)
    if filt:
        out += ["## The filters the networks learn", "", "The 13×13 filter each job learned "
                "(stored since the σ sweep), beside the reduced Gram matrix K̃ of eq. 9 of the "
                "Gaussian kernel nearest to it (least squares at unit sum, widths 0.3–8 px):", "",
                filters_table(filt), ""]
        figs.append(_plot_filters(filt, Path(fig_dir) / "results_filters.png"))
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
    Path(tables_path).write_text(text, encoding="utf-8")
    figs = [f for f in figs if f]
    if readme_path is not None:
        Path(readme_path).write_text(results_page(results, rows, root, readme_path, tables_path,
                                                  figs), encoding="utf-8")
    return text, figs


GENERATED = "Generated by `python -m regnp.study report`"


def _status(results):
    """(status line, whether every planned grid job has finished)."""
    planned = {n for p, names in _planned_jobs().items() if p != "steps" for n in names}
    done = sorted(n for n in planned if n in results)
    complete = len(done) == len(planned)
    return ((f"**Grid status: all {len(planned)} grid jobs finished** (the `steps` calibration "
             "runs not counted)." if complete else
             f"**Grid status: {len(done)} of {len(planned)} grid jobs finished** (the `steps` "
             "calibration runs not counted); \"not run yet\" means the jobs are still queued."),
            complete)


def readme_block(results, rows=None):
    """The core of the results page: the grid's status, the claims table and the cost."""
    status, complete = _status(results)
    out = [status, "", "### The paper's claims, one by one", ""] + CLAIMS_HEADER + claims(results, rows)
    cost = _protocol_cost(results)
    if cost:
        out += ["", ("**Cost.** " if complete else "**Cost so far.** ") + cost[1]] + cost[2:]
    return "\n".join(out)


def answer_in_short(results, rows):
    """The results page's first paragraph, every number from the JSON: Meta-Reg − VoxelMorph-2
    and − each ablated network in every scenario, how hard our pairs are against the paper's
    (our VoxelMorph-2 more than 3 Dice points above the paper's 80.5 at every σ we ran counts
    as "easier"), how many of the paper's significant claims we reproduce, and the seed
    spread."""
    head = headline_rows(results)
    if not head:
        return ["No comparison has both sides finished yet."]
    out = []
    for rival in ("vm2", "ablated_free", "ablated"):
        hs = [h for h in head if h[2] == rival]
        if not hs:
            continue
        sig = [h for h in hs if h[4]["p"] < 0.05]
        parts = "; ".join(f"{_scenario_label(s, t)}, Dice before {m['dice_before'][0]:.0f} %: "
                          f"{d['delta']:+.2f} [{_ci_txt(d)}]" for s, t, _, m, d in hs)
        out.append(f"- **Meta-Reg − {VARIANTS[rival][0]}**, Δ Dice [hierarchical 95 % CI]: {parts}. "
                   f"The interval excludes 0 in {len(sig)} of {len(hs)}"
                   + (" (" + ", ".join(f"{_scenario_label(s, t)}: "
                                      + ("Meta-Reg better" if d["delta"] > 0 else
                                         f"{VARIANTS[rival][0]} better")
                                      for s, t, _, _, d in sig) + ")" if sig else "")
                   + ".")
    spts = [(f"σ {sg:g} ({_FAMILY_WORDS.get(f, f)})", c)
            for f in sigma_families() for sg, c, _ in sigma_points(results, f) if c.get("vm2")]
    if spts:
        paper_vm2 = PAPER[("liver16", "s16")]["vm2"][0]
        out.append(f"- **The paper's regime:** its VoxelMorph-2 scores {paper_vm2:.1f} Dice at σ 16/16; "
                   + "ours: " + "; ".join(f"{c['vm2']['dice'][0]:.1f} at {where}, Dice before "
                                          f"{c['metareg']['dice_before'][0]:.0f} %"
                                          for where, c in spts)
                   + regime_sentence([(where, c["vm2"]["dice"][0]) for where, c in spts],
                                     paper_vm2) + ".")
    out += sweep_answer(results)
    from .sigmastar import answer_lines
    out += answer_lines(results)
    done = [r for r in rows if r.get("delta") is not None]
    claimed = [r for r in done if r["sig"]]
    repro = [r for r in claimed if r["p_holm"] < 0.05 and r["delta"] > 0]
    reversed_ = [r for r in done if r["p_holm"] < 0.05 and r["delta"] < 0]
    out.append(f"- **The paper's claims:** of the {len(claimed)} gains the paper reports as "
               f"significant (and we have run), {len(repro)} reproduce in direction after Holm's "
               f"adjustment over all {len(done)} claims"
               + (f"; {len(reversed_)} claim(s) reverse (the other network better: "
                  + ", ".join(r["text"] for r in reversed_) + ")" if reversed_ else "")
               + ". Where a gain is not reproduced, the wording is \"not reproduced under our "
               "protocol\" at that σ and Dice before: our intervals rest on "
               f"{_span(r['n_subjects'] for r in done)} test subjects per scenario and "
               f"{_span(n for r in done for n in r['seeds'])} training run(s) per model, not on "
               "other data or tuning.")
    _, widest = seeds_table(results)
    if widest:
        out.append(f"- **Training seeds:** two runs of one model differ by up to {widest[0]:.2f} "
                   f"Dice points ({widest[1]}, {widest[2]}); the intervals of two-seed models "
                   "resample the seeds, those of one-seed models cannot.")
    return out


def _trend_word(t):
    if t["lo"] > 0:
        return "grows with σ"
    if t["hi"] < 0:
        return "shrinks with σ"
    return "shows no trend with σ that the interval can tell from none"


def sweep_answer(results, min_points=3):
    """The answer's bullet on the deformation-size sweep: Meta-Reg − VoxelMorph-2 and − the
    paper's ablation at every σ of the sweep and their trend (:func:`sigma_trend`); empty until
    ``min_points`` σ have both Meta-Reg and VoxelMorph-2."""
    from .protocols import SWEEP_FIELD
    pts = sigma_points(results, f"chaos-{SWEEP_FIELD}")
    if sum(1 for _, c, _ in pts if c.get("vm2")) < min_points:
        return []
    before = [c["metareg"]["dice_before"][0] for _, c, _ in pts]
    parts = []
    for r in SIGMA_RIVALS:
        here = [(sg, d[r], c[r]) for sg, c, d in pts if r in d]
        t = sigma_trend(pts, r)
        if not here or t is None:
            continue
        seeds = ", ".join(f"{d['seeds'][0]}+{d['seeds'][1]}" for _, d, _ in here)
        parts.append(f"Meta-Reg − {VARIANTS[r][0]} is "
                     + ", ".join(f"{d['delta']:+.2f} [{_ci_txt(d)}] at σ {sg:g}" for sg, d, _ in here)
                     + f" (training seeds, Meta-Reg + the other, per σ: {seeds}); its trend is "
                     f"{trend_txt(t)}: the advantage {_trend_word(t)}")
    return [f"- **Does the advantage grow with deformation size?** On the sweep (liver, "
            f"velocity-field pairs, σ_train = σ_test, λ {LAMBDA:g}, Dice before "
            f"{max(before):.0f} → {min(before):.0f} %): " + ". ".join(parts)
            + ". Each interval is one σ's (hierarchical bootstrap), not adjusted for the "
            "sweep's many comparisons."]


FIGURES = {"results_sigma": "Meta-Reg − VoxelMorph-2 and − the paper's ablation against σ; Dice "
                            "before and |J| > 0 beside it",
           "results_training_length": "Validation Dice against training step (liver σ 16, the "
                                      "`steps` protocol)",
           "results_lambda_dice": "Dice against λ at liver σ 16/16 (Fig. 3)",
           "results_lambda_jacobian": "% of positive Jacobian determinants against λ (Fig. 4)",
           "results_claims": "The paper's claims and ours, with hierarchical 95 % intervals",
           "results_filters": "The 13×13 filters the networks learn, beside eq. 9's K̃ of the "
                              "nearest Gaussian kernel"}


def regime_sentence(points, paper_vm2, margin=3.0):
    """Where our deformation sizes stand against the paper's difficulty, from [(where, our
    VM-2 Dice)] and the paper's VM-2 Dice: every size easier (all more than ``margin`` points
    above it), or the nearest size — and whether our sizes reach past it on both sides."""
    dice = [d for _, d in points]
    if min(dice) - paper_vm2 > margin:
        return (". Our pairs are easier than the paper's at the same nominal σ, so these "
                "verdicts hold for our regime, not for the paper's large deformations")
    near = min(points, key=lambda p: abs(p[1] - paper_vm2))[0]
    return (f". Our {near} is nearest the paper's difficulty"
            + ("; our sizes reach past it on both sides" if min(dice) < paper_vm2 < max(dice)
               else ""))


def _span(values):
    """"3" or "3–31": the range of some counts."""
    v = sorted(set(values))
    return f"{v[0]}" if len(v) == 1 else f"{v[0]}–{v[-1]}"


def results_page(results, rows, root, readme_path, tables_path, figs):
    """results/README.md: the answer in short (generated from the numbers), the headline
    comparisons, the claims, what M does, the figures and the cost."""
    base = Path(readme_path).parent

    def rel(p):
        return Path(os.path.relpath(p, base)).as_posix()
    out = ["# Results", "", f"<!-- {GENERATED} from {Path(root).as_posix()}; do not edit. -->", "",
           f"{GENERATED} from the job JSON in `{Path(root).as_posix()}`; every table is in "
           f"[{Path(tables_path).name}]({rel(tables_path)}). Each comparison is paired on "
           "identical test pairs; its 95 % interval and p come from a hierarchical bootstrap over "
           "test subjects, base slices, pairs and training seeds (`regnp/study/stats.py`). "
           "Our data stand in for the paper's: liver → CHAOS T2 slices with synthetic fields "
           "(σ = RMS displacement over the body, px at 256²), cardiac → ACDC ED/ES, chest → JSRT.",
           "", "## The answer in short", ""] + answer_in_short(results, rows)
    head = headline_rows(results)
    if head:
        out += ["", "## Meta-Reg against VoxelMorph-2 and the ablated networks", ""] + \
            headline_table(head)
    out += ["", readme_block(results, rows).replace("### The paper's claims", "## The paper's claims")]
    msum = m_summary(results)
    if msum:
        out += ["", "## What M does during training", "", "\n\n".join(msum)]
    if figs:
        out += ["", "## Figures", ""]
        for f in figs:
            cap = FIGURES.get(Path(f).stem, FIGURES["results_sigma"] + " (" + Path(f).stem[
                len("results_sigma_"):] + " fields)" if Path(f).stem.startswith(
                "results_sigma_") else Path(f).stem)
            out += [f"**{cap}**", "", f"![{cap}]({rel(f)})", ""]
        out.pop()
    return "\n".join(out) + "\n"


class ReportError(ValueError):
    """The report refuses to write (one line, for the command line)."""


# the project README's generated summary sits between these two lines
SUMMARY_BEGIN = ("<!-- results summary: generated by `python -m regnp.study report` from "
                 "results/runs; do not edit by hand -->")
SUMMARY_END = "<!-- end of the generated results summary -->"
_FAMILY_WORDS = {"chaos": "mixture fields", "chaos-svf": "velocity fields"}


def _dice_txt(c):
    return "–" if not c else f"{c['dice'][0]:.1f}"


def _summary_cell(d):
    return "–" if d is None else f"{d['delta']:+.2f} [{_ci_txt(d)}]"


def summary_table(results):
    """The project README's results table: Meta-Reg − VoxelMorph-2 and − the paper's ablation at
    every liver σ (σ_train = σ_test; both field families), the sweep's trend per 10 px, and σ*
    with each network at its own λ — each a paired difference with its hierarchical 95 %
    interval. Markdown lines (empty when no σ point has finished)."""
    from .protocols import SWEEP_FIELD
    from .sigmastar import model_lambdas, reached
    out = []
    for family in sigma_families():
        for sigma, c, d in sigma_points(results, family):
            seeds = "/".join("–" if not c.get(v) else str(len(c[v]["seeds"]))
                             for v in ("metareg",) + SIGMA_RIVALS)
            out.append(f"| σ {sigma:g}, {_FAMILY_WORDS.get(family, family)} "
                       f"| {c['metareg']['dice_before'][0]:.1f} | {_dice_txt(c.get('vm2'))} "
                       f"| {_summary_cell(d.get('vm2'))} | {_summary_cell(d.get('ablated_free'))} "
                       f"| {seeds} |")
        if family == f"chaos-{SWEEP_FIELD}":
            pts = sigma_points(results, family)
            ts = {r: sigma_trend(pts, r) for r in SIGMA_RIVALS}
            if any(ts.values()):
                out.append(f"| trend per {TREND_PER:g} px of σ (velocity fields) | | | "
                           + " | ".join(
                               "–" if t is None else
                               f"{TREND_PER * t['slope']:+.2f} [{TREND_PER * t['lo']:+.2f} to "
                               f"{TREND_PER * t['hi']:+.2f}] over σ {t['x'][0]:g}–{t['x'][-1]:g}"
                               for t in ts.values()) + " | |")
    from .protocols import SIGMA_STAR, sweep_setting
    if reached(results):
        lams = model_lambdas()
        setting, test = sweep_setting(SIGMA_STAR), f"s{SIGMA_STAR:g}"
        cells = {v: cell(results, setting, v, test, lam=lams[v]) if v in lams else None
                 for v in ("metareg",) + SIGMA_RIVALS}
        m = cells["metareg"]
        label = f"σ* = {SIGMA_STAR:g}, each at its own λ"
        if m is None:
            out.append(f"| {label} | | | λ chosen on validation: runs under way | | |")
        else:
            which = ", ".join(f"{VARIANTS[v][0]} {lams[v]:g}" for v in cells if v in lams)
            out.append(f"| {label} ({which}) | {m['dice_before'][0]:.1f} "
                       f"| {_dice_txt(cells['vm2'])} | {_summary_cell(diff(m, cells['vm2']))} "
                       f"| {_summary_cell(diff(m, cells['ablated_free']))} | "
                       + "/".join("–" if not c else str(len(c["seeds"])) for c in cells.values())
                       + " |")
    if not out:
        return []
    return ["| liver, σ_train = σ_test | Dice before (%) | VoxelMorph-2 Dice (%) "
            "| Meta-Reg − VoxelMorph-2 | Meta-Reg − the paper's ablation | seeds (Meta-Reg / "
            "VM-2 / ablation) |", "|---|---|---|---|---|---|"] + out


def summary_block(results):
    """The generated block of the project README, markers included (text)."""
    lines = summary_table(results) or ["No liver comparison has finished yet."]
    return "\n".join([SUMMARY_BEGIN, "",
                      "Δ Dice points, paired on identical test pairs, with the 95 % interval of "
                      "the hierarchical bootstrap over test subjects, slices, pairs and training "
                      "seeds (not adjusted for multiplicity; the claims table in "
                      "[results/README.md](results/README.md) is):", ""] + lines
                     + ["", SUMMARY_END])


def _summary_span(readme):
    """(text, start of the begin marker, start of the end marker) of the project README, or None
    when it has no markers (or does not exist); :class:`ReportError` for a broken pair."""
    readme = Path(readme)
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8")
    a, b = text.find(SUMMARY_BEGIN), text.find(SUMMARY_END)
    if a < 0 and b < 0:
        return None
    if a < 0 or b < 0 or b < a:
        raise ReportError(f"{readme} has only one of the results-summary markers, or they are "
                          "in the wrong order; put back both lines (see regnp/study/report.py: "
                          "SUMMARY_BEGIN / SUMMARY_END) or remove both")
    return text, a, b


def write_summary(readme, results):
    """Replace the block between :data:`SUMMARY_BEGIN` and :data:`SUMMARY_END` in ``readme``
    (the project README) with :func:`summary_block`; returns True if the file changed. A README
    without the markers is left alone (False); one with a single marker is refused."""
    span = _summary_span(readme)
    if span is None:
        return False
    text, a, b = span
    new = text[:a] + summary_block(results) + text[b + len(SUMMARY_END):]
    if new == text:
        return False
    readme.write_text(new, encoding="utf-8")
    return True


def default_paths(root, tables=None, figures=None, readme=None, repo=None):
    """Where ``report`` writes, from ``--out`` and the optional overrides.

    - tables: ``--tables``, else ``TABLES.md`` beside the job folder (``<out>/../TABLES.md``);
    - readme: ``--readme``, else ``README.md`` beside the tables;
    - figures: ``--figures``, else the repository's ``figures/`` **only** when the tables are
      the repository's own ``results/TABLES.md``, and ``figures/`` beside the tables otherwise —
      so a report of a scratch grid (``--out runs/grid-quick``) never replaces the committed
      figures. Returns (tables, figures, readme) as Paths."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    tables = Path(tables) if tables else Path(root).parent / "TABLES.md"
    readme = Path(readme) if readme else tables.parent / "README.md"
    if figures:
        figures = Path(figures)
    elif tables.resolve() == (repo / "results" / "TABLES.md").resolve():
        figures = repo / "figures"
    else:
        figures = tables.parent / "figures"
    return tables, figures, readme


def run_report(root, tables=None, figures=None, readme=None, repo=None):
    """``python -m regnp.study report``: check, then write TABLES.md, the results page and the
    figures; returns the paths written. Refuses (:class:`ReportError`, nothing written) when
    ``root`` is not a folder, when it holds no finished job while a target file already holds
    results (an empty report never replaces a full one), and when a target exists that the
    report did not write (e.g. ``--readme README.md`` would replace the project's README).
    When the tables are the repository's own ``results/TABLES.md``, the block between the
    project README's summary markers is rewritten too (:func:`write_summary`)."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"--out {root} is not a folder of grid jobs (run a protocol first)")
    tables, figures, readme = default_paths(root, tables, figures, readme, repo)
    results, _ = load_results(root)
    for target in (tables, readme):
        if not target.exists():
            continue
        text = target.read_text(encoding="utf-8", errors="replace") if target.is_file() else None
        if text is None or (text.strip() and GENERATED not in text[:2000]):
            raise ReportError(f"{target} exists and was not written by the report; refusing to "
                              "replace it: choose another path with --tables / --readme")
        if not results and text.strip():
            raise ReportError(f"--out {root} holds no finished jobs (no */metrics.json), and "
                              f"{target} already holds results: refusing to replace them with "
                              "empty tables; point --out at the grid's job folders, or write "
                              "elsewhere with --tables")
    repo = Path(repo) if repo else Path(__file__).resolve().parents[2]
    own = tables.resolve() == (repo / "results" / "TABLES.md").resolve()
    if own:                                   # only the repository's own results touch its README
        _summary_span(repo / "README.md")     # a broken marker pair: refuse before writing
    _DIFFS.clear()
    _, figs = write_report(root, tables, figures, readme_path=readme)
    written = [tables, readme] + figs
    if own and write_summary(repo / "README.md", results):
        written.append(repo / "README.md")
    return written


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


SIGMA_RIVALS = ("vm2", "ablated_free")


def _test_at(results, setting, sigma):
    """The name of the test set scored at ``sigma`` by the jobs of ``setting`` (None if none)."""
    for m in results.values():
        if m["config"].get("setting") == setting:
            for t in m["config"].get("tests", []):
                if t.get("sigma") == sigma and t.get("name") in m["tests"]:
                    return t["name"]
    return None


def sigma_families():
    """The field families of the synthetic settings, in ``SETTINGS`` order: the data set name
    of each setting with a training σ ("chaos": the Gaussian-mixture fields of liver10/16; a σ
    sweep with another field family has its own, e.g. "chaos-velocity")."""
    return list(dict.fromkeys(d for d, sigma, _ in SETTINGS.values() if sigma is not None))


def sigma_points(results, family="chaos", rivals=SIGMA_RIVALS):
    """Does Meta-Reg's advantage grow with the deformation size? Every setting of one field
    ``family`` (see :func:`sigma_families`) scored at its own σ, in order of σ: a list of
    (σ, {variant: cell}, {rival: :func:`diff` of Meta-Reg − rival}). Settings added to
    ``SETTINGS`` (a σ sweep) join their family's curve by themselves."""
    pts = []
    for setting, (dataset, sigma, _) in SETTINGS.items():
        test = None if sigma is None or dataset != family else _test_at(results, setting, sigma)
        if test is None:
            continue
        cells = {v: cell(results, setting, v, test) for v in ("metareg",) + tuple(rivals)}
        if cells["metareg"] is None:
            continue
        pts.append((sigma, cells, {r: diff(cells["metareg"], cells[r]) for r in rivals
                                   if cells[r] is not None}))
    return sorted(pts, key=lambda p: p[0])


def sigma_trend(pts, rival):
    """Meta-Reg − ``rival`` against σ: :func:`regnp.study.stats.trend_bootstrap` over the σ
    points of :func:`sigma_points` where both have run (the test pairs drawn once for every σ,
    each σ's seeds on their own); None with fewer than two σ. Slope in Dice points per px."""
    use = [(s, c["metareg"]["seed_dice"], c[rival]["seed_dice"]) for s, c, _ in pts
           if c.get(rival)]
    if len({s for s, _, _ in use}) < 2:
        return None
    fp = ("trend", rival, tuple((s, tuple(tuple(sorted(d.items())) for d in a + b))
                                for s, a, b in use))
    if fp not in _DIFFS:
        _DIFFS[fp] = trend_bootstrap(use)
    return _DIFFS[fp]


TREND_PER = 10.0        # the trend is quoted per 10 px of σ


def trend_txt(t):
    """"+0.52 per 10 px (CI −0.10 to +1.20; p = 0.09)"."""
    k = TREND_PER
    return (f"{k * t['slope']:+.2f} per {k:g} px (CI {k * t['lo']:+.2f} to {k * t['hi']:+.2f}; "
            f"p {_p_eq(t['p'], t['n_boot'])})")


def trend_lines(pts):
    """The sweep section's trend paragraph (markdown lines; empty with fewer than two σ)."""
    parts = [(r, sigma_trend(pts, r)) for r in SIGMA_RIVALS]
    parts = [(r, t) for r, t in parts if t]
    if not parts:
        return []
    return ["Trend against σ: the least-squares slope of Meta-Reg's Δ Dice over the σ where both "
            "networks have run, with a 95 % interval from the hierarchical bootstrap that draws "
            "the test subjects, slices and pairs once for every σ (the same pair ids at every "
            "size) and each σ's training seeds on their own: "
            + "; ".join(f"Meta-Reg − {VARIANTS[r][0]} {trend_txt(t)} over σ "
                        + ", ".join(f"{x:g}" for x in t["x"]) for r, t in parts)
            + ". A slope summarises the direction; it does not say the change is linear.", ""]


def sigma_table(pts):
    out = ["| σ_train = σ_test | Dice before (%) | VM-2 Dice (%) | Meta-Reg Dice (%) "
           "| Meta-Reg − VM-2: Δ Dice (CI; p) | Ablated (free 13×13, no M) Dice (%) "
           "| Meta-Reg − ablated (free): Δ Dice (CI; p) | VM-2 \\|J\\|>0 (%) | Meta-Reg \\|J\\|>0 (%) |",
           "|---|---|---|---|---|---|---|---|---|"]
    for sigma, c, _ in pts:
        m, v, a = c["metareg"], c.get("vm2"), c.get("ablated_free")
        out.append(f"| {sigma:g} | {_pm(m['dice_before'], 1)} | {_pm(v and v['dice'])} "
                   f"| {_pm(m['dice'])} | {_diff_txt(m, v)} | {_pm(a and a['dice'])} "
                   f"| {_diff_txt(m, a)} | {_pm(v and v['jac'])} | {_pm(m['jac'])} |")
    return "\n".join(out)


def by_difficulty(m, others, parts=3):
    """Meta-Reg − each cell of ``others`` within ``parts`` groups of the test pairs, hardest
    first: the pairs sorted by Dice before registration (ties by id) and split into equal
    parts. Returns [(lowest, highest Dice before, pairs, {variant: diff})]. The group is
    chosen by the pair (the same for both sides), so each difference stays paired."""
    before = m["pair_before"]
    ids = sorted(before, key=lambda i: (before[i], i))
    out = []
    for group in np.array_split(np.array(ids, dtype=object), parts):
        keep = set(group.tolist())

        def sub(c):
            return dict(c, seed_dice=[{i: v for i, v in d.items() if i in keep}
                                      for d in c["seed_dice"]])
        out.append((before[group[0]], before[group[-1]], len(group),
                    {v: diff(sub(m), sub(c)) for v, c in others.items() if c}))
    return out


def difficulty_table(pts):
    """:func:`by_difficulty` of every σ point: does Meta-Reg's edge grow with how hard the pair
    is, within one test set?"""
    out = ["| σ | Dice before (%) | pairs | Meta-Reg − VM-2: Δ Dice (CI; p) "
           "| Meta-Reg − ablated (free): Δ Dice (CI; p) |", "|---|---|---|---|---|"]
    for sigma, c, _ in pts:
        others = {r: c.get(r) for r in SIGMA_RIVALS}
        for lo, hi, n, d in by_difficulty(c["metareg"], others):
            cells = [("–" if r not in d else f"{d[r]['delta']:+.2f} (CI {_ci_txt(d[r])}; p "
                      f"{_p_eq(d[r]['p'], d[r]['n_boot'])})") for r in SIGMA_RIVALS]
            out.append(f"| {sigma:g} | {lo:.1f} – {hi:.1f} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def sigma_matrix(results, family="chaos", rival="vm2"):
    """Meta-Reg − ``rival`` for every training σ × test σ of one field family (the paper's
    Tables 1–2 scenarios at every size): {(σ_train, σ_test): diff}, from every test set with a
    σ that both networks were scored on."""
    out = {}
    for setting, (dataset, sigma, _) in SETTINGS.items():
        if dataset != family or sigma is None:
            continue
        tests = {t["name"]: t["sigma"] for m in results.values()
                 if m["config"].get("setting") == setting
                 for t in m["config"].get("tests", []) if t.get("sigma") is not None}
        for test, s_test in tests.items():
            d = diff(cell(results, setting, "metareg", test), cell(results, setting, rival, test))
            if d is not None:
                out[(sigma, s_test)] = d
    return out


def sigma_matrix_table(mat, rival="vm2"):
    """Rows σ_train, columns σ_test; each cell "Δ [lo, hi]" (hierarchical 95 % interval)."""
    trains = sorted({a for a, _ in mat})
    tests = sorted({b for _, b in mat})
    out = [f"| σ_train \\ σ_test (Meta-Reg − {VARIANTS[rival][0]}) | "
           + " | ".join(f"{t:g}" for t in tests) + " |", "|---|" + "---|" * len(tests)]
    for a in trains:
        out.append(f"| {a:g} | " + " | ".join(
            "–" if (a, b) not in mat else f"{mat[a, b]['delta']:+.2f} [{_ci_txt(mat[a, b])}]"
            for b in tests) + " |")
    return "\n".join(out)


def _plot_sigma(pts, path):
    """Left: Meta-Reg − VM-2 and − the paper's ablation against σ, hierarchical 95 % intervals.
    Right: Dice before registration and the share of positive Jacobians against σ."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 5))
    ax.axhline(0, color="gray", lw=1)
    for k, r in enumerate(SIGMA_RIVALS):
        xs = [(s, d[r]) for s, _, d in pts if r in d]
        if not xs:
            continue
        off = (k - 0.5) * 0.3                         # side by side, not on top of each other
        t = sigma_trend(pts, r)
        trend = "" if t is None else (f"\ntrend {TREND_PER * t['slope']:+.2f} per {TREND_PER:g} px "
                                      f"[{TREND_PER * t['lo']:+.2f}, {TREND_PER * t['hi']:+.2f}]")
        ax.errorbar([s + off for s, _ in xs], [d["delta"] for _, d in xs],
                    yerr=[[d["delta"] - d["lo"] for _, d in xs], [d["hi"] - d["delta"] for _, d in xs]],
                    marker="o", capsize=3, label=f"Meta-Reg − {VARIANTS[r][0]}{trend}")
    from .protocols import SIGMA_STAR
    sig = [s for s, _, _ in pts]
    if SIGMA_STAR is not None and min(sig) <= SIGMA_STAR <= max(sig):
        # named in the legend, not annotated on the axes: a free-standing label ends up under
        # the legend or the error bars, wherever the data put them
        ax.axvline(SIGMA_STAR, color="gray", ls=":", lw=1,
                   label=f"σ* = {SIGMA_STAR:g}: VM-2 nearest the paper's difficulty")
    ax.set_xlabel("σ_train = σ_test (px RMS at 256²)")
    ax.set_ylabel("Δ Dice (points)")
    ax.set_title("Meta-Reg's advantage against deformation size\n(hierarchical 95 % intervals)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))   # below: off the bars
    bx.plot(sig, [c["metareg"]["dice_before"][0] for _, c, _ in pts], "ks-", label="Dice before")
    bx.set_xlabel("σ_train = σ_test (px RMS at 256²)")
    bx.set_ylabel("Dice before registration (%)")
    jx = bx.twinx()
    for v, style in (("vm2", "o--"), ("metareg", "^--")):
        jx.plot([s for s, c, _ in pts if c.get(v)], [c[v]["jac"][0] for _, c, _ in pts if c.get(v)],
                style, label=f"{VARIANTS[v][0]} |J|>0")
    jx.set_ylabel("% of |J| > 0 after registration")
    lines = bx.get_legend_handles_labels()
    more = jx.get_legend_handles_labels()
    bx.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    bx.set_title("How hard the pairs are, and how regular the fields", fontsize=9)
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
