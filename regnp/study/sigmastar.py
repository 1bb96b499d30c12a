"""The report at σ*, the deformation size of the paper's difficulty (issue 17, Deliver 3).

σ* is the σ of the sweep (liver, velocity-field pairs, σ_train = σ_test) where VoxelMorph-2 at
λ = 0.04 scores nearest the paper's 80.5 Dice at its σ 16/16. ``protocols.SIGMA_STAR`` holds it
(the grid's job list depends on it, so it is a constant, not a query); :func:`sigma_star_rule`
re-applies the rule to the committed JSON so the report says when the answer has moved.

At σ* the `sigmastar` protocol runs, in this order:

1. **λ on validation.** Each method of ``SIGMASTAR_LAMBDA_VARIANTS`` at every λ of
   ``SIGMASTAR_LAMBDAS``, first seed, scored once on the validation split (40 pairs of held-out
   *training* subjects) at its last step: :func:`lambda_choice` takes the λ of the highest
   validation Dice. ``SIGMASTAR_BEST_LAMBDA`` must equal that choice; the report flags a
   difference.
2. **Tables 1, 2 and 5** with each model at its own λ (:func:`regnp.study.protocols.sigmastar_lambda`):
   σ*/σ* (Table 1), σ* → the sweep's neighbouring test σ on either side (Table 2's two
   directions), and Meta-Reg against both ablated networks (Table 5). New runs, three seeds
   for the core models; the test pairs are the sweep's (identical ids at every σ).
3. **Training length.** One plateau-rule run per core model at its λ, scored on the same test
   pairs: does the 6,000-step comparison hold at full length?

Every comparison is :func:`regnp.study.report.diff` (paired, hierarchical bootstrap over test
subjects, slices, pairs and seeds).
"""
from . import protocols as P
from .protocols import LAMBDA, SETTINGS, VARIANTS, is_validation_job, sweep_setting

#: the paper's VoxelMorph-2 at its σ 16/16 and the scenario σ* is compared with
PAPER_SCENARIO = ("liver16", "s16")
#: Table 2's scenarios at σ*: σ* → the neighbouring test σ below (the paper's larger → smaller,
#: liver 16 → 10) and above (smaller → larger, 10 → 16), and the paper's scenario beside each
PAPER_TABLE2 = {"down": ("liver16", "s10"), "up": ("liver10", "s16")}
#: Table 5 at σ*: the paper's ablation (main row) and our unit-sum variant
ABLATIONS = ("ablated_free", "ablated")


def sweep_family():
    """The data set name of the sweep's settings ("chaos-svf")."""
    return f"chaos-{P.SWEEP_FIELD}"


def sigma_star_rule(results):
    """Re-apply σ*'s rule to the finished sweep jobs: for every sweep σ with a VoxelMorph-2 job at
    λ 0.04 scored at its own σ, the cell; the σ whose mean Dice is nearest the paper's.

    Returns dict: ``vm2`` {σ: cell}, ``sigma`` (the rule's σ, None without any), ``paper`` (the
    paper's VM-2 Dice), ``set`` (``SIGMA_STAR``) and ``agrees`` (the rule's σ is the constant,
    or nothing to check yet)."""
    from .report import PAPER, _test_at, cell
    paper = PAPER[PAPER_SCENARIO]["vm2"][0]
    vm2 = {}
    for setting, (dataset, sigma, _) in SETTINGS.items():
        if dataset != sweep_family() or sigma is None:
            continue
        test = _test_at(results, setting, sigma)
        c = test and cell(results, setting, "vm2", test)
        if c:
            vm2[sigma] = c
    best = min(vm2, key=lambda s: (abs(vm2[s]["dice"][0] - paper), s)) if vm2 else None
    return {"vm2": dict(sorted(vm2.items())), "sigma": best, "paper": paper,
            "set": P.SIGMA_STAR, "agrees": best is None or best == P.SIGMA_STAR}


def reached(results):
    """Whether the grid holds any job trained at σ* (``SIGMA_STAR`` set): the σ* section, its
    claims and its bullet appear from then on. (A quick grid stands in its largest σ for σ*
    and so never reaches the real one: its report has no σ* part.)"""
    if P.SIGMA_STAR is None:
        return False
    setting = sweep_setting(float(P.SIGMA_STAR))
    return any(m["config"].get("setting") == setting for m in results.values())


def lambda_choice(results, setting):
    """The validation runs of ``setting``: {variant: {λ: (validation Dice %, |J|>0 % or None,
    seed)}} and the rule's choice {variant: λ of the highest validation Dice (ties: the larger
    λ, the more regular field)}. A run counts once it has finished (its last validation is at
    its last step)."""
    points = {}
    for m in results.values():
        c = m["config"]
        if c.get("setting") != setting or not is_validation_job(c):
            continue
        curve = (m.get("train") or {}).get("val_curve") or []
        if not curve or curve[-1][0] != m["train"]["steps"]:
            continue
        last = curve[-1]
        jac = last[2] if len(last) > 2 else None
        points.setdefault(c["variant"], {})[float(c["lam"])] = (100.0 * last[1], jac,
                                                                c.get("seed", 0))
    chosen = {v: max(pts, key=lambda lam: (pts[lam][0], lam)) for v, pts in points.items()}
    return {v: dict(sorted(p.items())) for v, p in points.items()}, chosen


def model_lambdas(chosen=None):
    """{model: λ} of σ*'s tables: the committed choice (``SIGMASTAR_BEST_LAMBDA``) for the tuned
    methods, λ 0.04 for the others; a tuned method without a choice is left out."""
    out = {}
    for v in P.SIGMASTAR_MODELS:
        lam = P.sigmastar_lambda(v, chosen)
        if lam is not None:
            out[v] = lam
    return out


def neighbours(sigma):
    """The sweep's test σ just below and just above ``sigma`` (None at an end)."""
    tests = sorted(P.SWEEP_TEST_SIGMAS)
    lower = [t for t in tests if t < sigma]
    upper = [t for t in tests if t > sigma]
    return (lower[-1] if lower else None), (upper[0] if upper else None)


def _rule_lines(rule):
    from .report import _pm
    if not rule["vm2"]:
        return []
    pts = ", ".join(f"{s:g}: {_pm(c['dice'], 1)} ({len(c['seeds'])} seed"
                    f"{'s' if len(c['seeds']) > 1 else ''})" for s, c in rule["vm2"].items())
    line = (f"σ* is the sweep's σ where VoxelMorph-2 (σ_train = σ_test, λ {LAMBDA:g}) is nearest "
            f"the paper's {rule['paper']:.1f} Dice at its σ 16/16. VoxelMorph-2 Dice (%) per σ: "
            f"{pts}. The rule picks σ {rule['sigma']:g}")
    if rule["set"] is None:
        line += "; `SIGMA_STAR` is not set yet."
    elif rule["agrees"]:
        line += f", the σ* the protocol runs (`SIGMA_STAR` = {rule['set']:g})."
    else:
        line += (f", but `SIGMA_STAR` = {rule['set']:g}: **the rule has moved; set SIGMA_STAR "
                 f"to {rule['sigma']:g} in regnp/study/protocols.py** (the σ* jobs below are at "
                 f"{rule['set']:g}).")
    return [line, ""]


def lambda_table(points, chosen):
    """Rows: tuned method; columns: validation Dice at each λ; then the rule's choice and the
    committed one."""
    lams = sorted({lam for p in points.values() for lam in p} | set(P.SIGMASTAR_LAMBDAS))
    out = ["| Method | " + " | ".join(f"λ {lam:g}" for lam in lams)
           + " | chosen (highest validation Dice) | in `SIGMASTAR_BEST_LAMBDA` |",
           "|---|" + "---|" * (len(lams) + 2)]
    for v in P.SIGMASTAR_LAMBDA_VARIANTS:
        p = points.get(v, {})
        cells = []
        for lam in lams:
            if lam not in p:
                cells.append("–")
                continue
            d, j, _ = p[lam]
            txt = f"{d:.2f}" + ("" if j is None else f" (\\|J\\|>0 {j:.2f})")
            cells.append(f"**{txt}**" if chosen.get(v) == lam else txt)
        done = len(p)
        pick = ("–" if v not in chosen else f"{chosen[v]:g}"
                + ("" if done == len(P.SIGMASTAR_LAMBDAS) else
                   f" (so far: {done} of {len(P.SIGMASTAR_LAMBDAS)} λ)"))
        committed = P.SIGMASTAR_BEST_LAMBDA.get(v)
        flag = ("not set" if committed is None else f"{committed:g}"
                + ("" if done < len(P.SIGMASTAR_LAMBDAS) or committed == chosen.get(v)
                   else " — **differs from the choice: update it**"))
        out.append(f"| {VARIANTS[v][0]} | " + " | ".join(cells) + f" | {pick} | {flag} |")
    return "\n".join(out)


def seed_spread(results, setting, test):
    """How far the training seed alone moves a test score at σ*: for each tuned method with at
    least two seeds at the sweep's λ (the same pairs, only the seed differs), its seeds' mean
    Dice, lowest and highest. {variant: (lowest, highest, number of seeds)}."""
    from .report import cell
    out = {}
    for v in P.SIGMASTAR_LAMBDA_VARIANTS:
        c = cell(results, setting, v, test, lam=LAMBDA)
        if c is not None and len(c["per_seed"]) >= 2:
            out[v] = (min(c["per_seed"]), max(c["per_seed"]), len(c["per_seed"]))
    return out


def _spread_line(spread, sigma):
    """The sentence under the λ table: one seed's validation Dice is read against this."""
    if not spread:
        return []
    parts = [f"{VARIANTS[v][0]} {hi - lo:.2f} points ({n} seeds, {lo:.2f}–{hi:.2f})"
             for v, (lo, hi, n) in spread.items()]
    return [f"How far the seed alone moves a score: at λ {LAMBDA:g} on the σ {sigma:g} test "
            "pairs, the seeds' mean Dice spread " + "; ".join(parts) + ". Validation Dice "
            "that differ between λ by less than this are within one seed's variation, so the "
            "choice is a weak one there; the rule (highest, ties to the larger λ) was fixed "
            "before the runs and is kept.", ""]


def _table5(results, setting, test, lams):
    from .report import _diff_txt, _pm, _seeds_txt, cell
    rows = [("metareg", "Meta-Reg")] + [(v, VARIANTS[v][0]) for v in ABLATIONS]
    cells = {v: cell(results, setting, v, test, lam=lams.get(v, LAMBDA)) if v in lams else None
             for v, _ in rows}
    out = ["| Network | λ | Dice (%) | \\|J\\|>0 (%) | seeds: Dice per seed "
           "| Meta-Reg − this network: Δ Dice (CI; p) |", "|---|---|---|---|---|---|"]
    for v, name in rows:
        c = cells[v]
        lam = f"{lams[v]:g}" if v in lams else "not chosen yet"
        out.append(f"| {name} | {lam} | {_pm(c and c['dice'])} | {_pm(c and c['jac'])} "
                   f"| {_seeds_txt(c)} | {'(reference)' if v == 'metareg' else _diff_txt(cells['metareg'], c)} |")
    return "\n".join(out)


def _long_runs(results, setting, test, lams):
    """The plateau-rule runs at σ*: how long each trained, and Meta-Reg − each rival on the test
    pairs after them beside the same comparison at 6,000 steps (the table's runs)."""
    from .report import _diff_txt, _jobs_of, _pm, cell, chosen_steps, diff
    rows = {v: _jobs_of(results, setting, v, lams[v], calibration=True)
            for v in P.SWEEP_CORE if v in lams}
    rows = {v: [m for m in jobs if not is_validation_job(m["config"])] for v, jobs in rows.items()}
    rows = {v: jobs[0] for v, jobs in rows.items() if jobs}
    if not rows:
        return []
    out = ["| Model | λ | steps run | stopped | chosen by the rule | final validation Dice (%) "
           "| test Dice (%) | test \\|J\\|>0 (%) |", "|---|---|---|---|---|---|---|---|"]
    long = {}
    for v, m in rows.items():
        one = {m["config"]["name"]: m}
        c = cell(one, setting, v, test, lam=lams[v], calibration=True)
        long[v] = c
        curve = m["train"]["val_curve"]
        ch, _ = chosen_steps(curve)
        out.append(f"| {VARIANTS[v][0]} | {lams[v]:g} | {m['train']['steps']} "
                   f"| {m['train']['stopped']} | {ch if ch else 'not reached'} "
                   f"| {100 * curve[-1][1]:.2f} | {_pm(c and c['dice'])} | {_pm(c and c['jac'])} |")
    out.append("")
    for r in ("vm2", "ablated_free"):
        if long.get("metareg") and long.get(r):
            short = diff(cell(results, setting, "metareg", test, lam=lams["metareg"]),
                         cell(results, setting, r, test, lam=lams[r]))
            same = ("" if short is None else
                    f"; at {P.TRAIN_STEPS:,} steps ({'+'.join(map(str, short['seeds']))} seeds): "
                    f"{short['delta']:+.2f} (CI {short['lo']:+.2f} to {short['hi']:+.2f})")
            out.append(f"Meta-Reg − {VARIANTS[r][0]} after the long runs: "
                       f"{_diff_txt(long['metareg'], long[r])} Dice points (one run each, so no "
                       f"seed variation){same}.")
    out.append("")
    return out


def section(results):
    """The σ* section of TABLES.md (markdown lines; empty until the grid has a job at σ*:
    :func:`reached`)."""
    from .report import PAPER, compare, scenario_table
    if not reached(results):
        return []
    rule = sigma_star_rule(results)
    out = ["## At σ*, the paper's difficulty: Tables 1, 2 and 5 at each method's own λ", ""]
    out += _rule_lines(rule)
    sigma = float(P.SIGMA_STAR)
    setting, test = sweep_setting(sigma), f"s{sigma:g}"
    points, chosen = lambda_choice(results, setting)
    out += [f"**λ on validation** (first seed, {P.TRAIN_STEPS:,} steps; Dice on the validation "
            "split, held-out training subjects, at the last step; the chosen λ in bold). "
            "DIRNet, FCN-SS, VoxelMorph-1 and the unit-sum ablation are not tuned: λ "
            f"{LAMBDA:g}, one seed.", "", lambda_table(points, chosen), ""]
    out += _spread_line(seed_spread(results, setting, test), sigma)
    lams = model_lambdas()
    models = [v for v in P.SIGMASTAR_MODELS if v not in ABLATIONS]
    out += [f"**Table 1 at σ* — σ_train = σ_test = {sigma:g}** (the paper's σ 16/16 beside it)", "",
            scenario_table(results, setting, test, [v for v in models if v in lams], lams=lams,
                           paper=PAPER_SCENARIO), ""]
    ranked = tuple(v for v in models if v in lams)       # only models at their own λ
    c = compare(results, setting, test, lams=lams, others=ranked) if "metareg" in lams else None
    if c is not None:
        out += [f"Meta-Reg − {VARIANTS[c['rival']][0]} (next best): {_diff_txt_of(c)}.", ""]
    down, up = neighbours(sigma)
    for where, s_test in (("down", down), ("up", up)):
        if s_test is None:
            continue
        t = f"s{s_test:g}"
        ps, pt = PAPER_TABLE2[where]
        out += [f"**Table 2 at σ* — σ_train = {sigma:g}, σ_test = {s_test:g}** (the paper's "
                f"σ {SETTINGS[ps][1]:g} → {pt.lstrip('s')} beside it)", "",
                scenario_table(results, setting, t, [v for v in models if v in lams], lams=lams,
                               paper=(ps, pt)), ""]
        c = compare(results, setting, t, lams=lams, others=ranked) if "metareg" in lams else None
        if c is not None:
            out += [f"Meta-Reg − {VARIANTS[c['rival']][0]} (next best): {_diff_txt_of(c)}.", ""]
    out += [f"**Table 5 at σ* — σ {sigma:g}/{sigma:g}**: the paper's ablation (free 13×13, no M) "
            "and our unit-sum variant, each at its λ", "", _table5(results, setting, test, lams), ""]
    longs = _long_runs(results, setting, test, lams)
    if longs:
        out += [f"**Training length at σ*** (one plateau-rule run per core model, up to "
                f"{P._scale(False)['calib_steps']:,} steps, scored on the σ {sigma:g} test "
                "pairs)", ""] + longs
    return out


def _diff_txt_of(c):
    from .report import _ci_txt, _p_eq, _pvalue
    return (f"{c['delta']:+.2f} Dice points (95 % CI {_ci_txt(c)}; bootstrap p "
            f"{_p_eq(c['p'], c['n_boot'])}; paired t p = {_pvalue(c['p_t'])}, Wilcoxon p = "
            f"{_pvalue(c['p_w'])})")


def claim_rows(results):
    """σ*'s rows of the claims table: the paper's three significant liver claims at its σ 16
    (Meta-Reg beats the best other method at 16/16, generalises 16 → 10, M adds over the
    ablation), tested at σ* with each method at its λ. Each row: (setting, test, text, paper Δ,
    paper's significance, rival or None for "best other", λ per model). A comparison whose
    tuned models have no chosen λ yet stays "not run yet" (the sweep's λ-0.04 runs do not
    stand in for them). No rows until the grid has reached σ* (:func:`reached`)."""
    if not reached(results):
        return []
    from .report import PAPER, PAPER_ABLATION
    sigma = float(P.SIGMA_STAR)
    setting, test = sweep_setting(sigma), f"s{sigma:g}"
    down, _ = neighbours(sigma)
    lams = model_lambdas()
    p16, p16_10 = PAPER[("liver16", "s16")], PAPER[("liver16", "s10")]
    rows = [(setting, test, f"at σ* = {sigma:g}: Meta-Reg beats the best other method",
             p16["metareg"][0] - p16["vm2"][0], True, None, lams)]
    if down is not None:
        rows.append((setting, f"s{down:g}", f"at σ* = {sigma:g}: generalises {sigma:g} → {down:g}",
                     p16_10["metareg"][0] - p16_10["vm1"][0], True, None, lams))
    pa = PAPER_ABLATION["liver16"]
    rows.append((setting, test, f"at σ* = {sigma:g}: M adds Dice over the ablated network",
                 pa[4] - pa[0], True, "ablated_free", lams))
    return rows


def answer_lines(results):
    """The answer's bullet at σ*: where the λ choice stands, then Meta-Reg − VoxelMorph-2 and −
    the paper's ablation, each network at its own λ (empty until :func:`reached`)."""
    if not reached(results):
        return []
    from .report import _ci_txt, cell, diff
    sigma = float(P.SIGMA_STAR)
    setting, test = sweep_setting(sigma), f"s{sigma:g}"
    rule = sigma_star_rule(results)
    points, _ = lambda_choice(results, setting)
    n_val = sum(len(p) for p in points.values())
    total = len(P.SIGMASTAR_LAMBDA_VARIANTS) * len(P.SIGMASTAR_LAMBDAS)
    vm2 = rule["vm2"].get(sigma)
    head = (f"- **At σ* = {sigma:g}, the paper's difficulty** (VoxelMorph-2 at λ {LAMBDA:g}: "
            + (f"{vm2['dice'][0]:.1f}" if vm2 else "–") + f" Dice; the paper's {rule['paper']:.1f})")
    if not rule["agrees"]:
        head += f" — the rule now points at σ {rule['sigma']:g}, see TABLES.md"
    lams = model_lambdas()
    found = []
    if "metareg" in lams:
        m = cell(results, setting, "metareg", test, lam=lams["metareg"])
        for r in ("vm2", "ablated_free"):
            c = m and r in lams and cell(results, setting, r, test, lam=lams[r])
            if c:
                d = diff(m, c)
                found.append(f"Meta-Reg (λ {lams['metareg']:g}) − {VARIANTS[r][0]} "
                             f"(λ {lams[r]:g}): {d['delta']:+.2f} [{_ci_txt(d)}], "
                             f"{'+'.join(map(str, d['seeds']))} seeds")
    if not found:
        return [head + f": the λ-validation runs are under way ({n_val} of {total} finished); "
                "Tables 1, 2 and 5 at each method's own λ follow them."]
    return [head + ", each network at the λ chosen on the validation split: "
            + "; ".join(found) + " (Δ Dice, hierarchical 95 % CI)."]
