"""The report at σ* and the sweep's trend (issue 17, Deliver 3–4), from hand-made job JSON:
σ*'s rule, the λ chosen on validation, Tables 1, 2 and 5 with each model at its own λ, the
training-length runs, the claims at σ*, and the answer's bullets — each number checked against
a computation done here."""
import json

import numpy as np
import pytest

import regnp.study.protocols as P
from regnp.study import sigmastar as S
from regnp.study.protocols import job_config
from regnp.study.report import (claim_data, load_results, sigma_points, sweep_answer,
                                write_report)
from regnp.study.stats import compare_paired, trend_bootstrap

N = 12
IDS = [f"p{i}" for i in range(N)]


def _job(root, config, tests, val=None, steps=6000, before=0.6):
    """Write one finished job: ``tests`` {test name: per-pair Dice (fractions)}; ``val``: the
    validation curve [[step, Dice, |J|>0 %], …]."""
    m = {"config": config,
         "train": {"steps": steps, "seconds": 3600.0, "stopped": "steps", "val_curve": val or []},
         "machine": {"threads": 1},
         "tests": {t: {"summary": {}, "pairs": {
             "id": IDS, "dice_before": [before] * N, "dice_after": list(map(float, d)),
             "pct_positive_jacobian": [99.9] * N, "min_jacobian": [-0.1] * N,
             "seconds": [0.1] * N}} for t, d in tests.items()}}
    (root / config["name"]).mkdir(parents=True)
    (root / config["name"] / "metrics.json").write_text(json.dumps(m))


def _boot(x, y):
    return compare_paired([dict(zip(IDS, 100 * np.asarray(a))) for a in x],
                          [dict(zip(IDS, 100 * np.asarray(b))) for b in y])


def test_sigma_star_rule_picks_the_sigma_nearest_the_papers_vm2(tmp_path, monkeypatch):
    for sigma, dice in ((16.0, 0.90), (22.0, 0.83), (28.0, 0.73)):
        _job(tmp_path, job_config(f"sweep{sigma:g}", "vm2"), {f"s{sigma:g}": np.full(N, dice)})
    results = load_results(tmp_path)[0]
    rule = S.sigma_star_rule(results)
    # |90 − 80.5| = 9.5, |83 − 80.5| = 2.5, |73 − 80.5| = 7.5
    assert rule["sigma"] == 22.0 and rule["paper"] == 80.5 and rule["agrees"]
    assert sorted(rule["vm2"]) == [16.0, 22.0, 28.0]
    monkeypatch.setattr(P, "SIGMA_STAR", 28.0)
    rule = S.sigma_star_rule(results)
    assert not rule["agrees"]
    text = "\n".join(S.section(results))
    assert "**the rule has moved; set SIGMA_STAR to 22 in regnp/study/protocols.py**" in text


def test_lambda_is_chosen_on_validation_and_a_stale_constant_is_flagged(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "SIGMA_STAR", 22.0)
    vals = {"vm2": {0.01: 0.80, 0.02: 0.83, 0.04: 0.82, 0.08: 0.79},
            "metareg": {0.01: 0.81, 0.02: 0.82, 0.04: 0.84, 0.08: 0.84}}   # a tie: larger λ
    for v, by_lam in vals.items():
        for lam, d in by_lam.items():
            c = job_config("sweep22", v, lam=lam, validate=True)
            assert P.is_validation_job(c)
            _job(tmp_path, c, {"s22": np.full(N, 0.5)}, val=[[6000, d, 99.5]])
    # an unfinished validation run (its last validation is not at its last step) does not count
    c = job_config("sweep22", "ablated_free", lam=0.02, validate=True)
    _job(tmp_path, c, {"s22": np.full(N, 0.5)}, val=[[3000, 0.99, 99.0]])
    # a training-length run validates too, but is no λ candidate
    c = dict(job_config("sweep22", "vm2", lam=0.08, calibrate=True))
    _job(tmp_path, c, {"s22": np.full(N, 0.5)}, val=[[500, 0.99, 99.0], [1000, 0.99, 99.0]],
         steps=1000)
    results = load_results(tmp_path)[0]
    points, chosen = S.lambda_choice(results, "sweep22")
    assert chosen == {"vm2": 0.02, "metareg": 0.08}
    assert points["vm2"][0.02] == (pytest.approx(83.0), 99.5, 0) and set(points) == {"vm2", "metareg"}
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {"vm2": 0.04, "metareg": 0.08})
    table = S.lambda_table(points, chosen)
    row = next(ln for ln in table.splitlines() if ln.startswith("| VoxelMorph-2 |"))
    assert "| **83.00 (\\|J\\|>0 99.50)** |" in row and "| 0.02 |" in row
    assert "0.04 — **differs from the choice: update it**" in row
    row = next(ln for ln in table.splitlines() if ln.startswith("| Meta-Reg |"))
    assert row.endswith("| 0.08 | 0.08 |")
    assert "| – | – | – | – | – | not set |" in table          # eq. 12 as printed: no runs


def _tables_grid(root):
    """σ* = 22 with λ chosen: Meta-Reg (0.04, seeds 0–1), VM-2 (0.02; a λ-0.04 sweep run that
    must not be used), the paper's ablation (0.08), the unit-sum ablation and DIRNet (0.04)."""
    rng = np.random.default_rng(1)
    base = 0.80 + 0.03 * rng.standard_normal(N)
    d = {("metareg", 0): base + 0.02 + 0.005 * rng.standard_normal(N),
         ("metareg", 1): base + 0.03 + 0.005 * rng.standard_normal(N),
         ("vm2", 0): base + 0.005 * rng.standard_normal(N),
         ("ablated_free", 0): base + 0.01 + 0.005 * rng.standard_normal(N),
         ("ablated", 0): base - 0.01 + 0.005 * rng.standard_normal(N),
         ("dirnet", 0): base - 0.05 + 0.005 * rng.standard_normal(N)}
    lams = {"metareg": 0.04, "vm2": 0.02, "ablated_free": 0.08, "ablated": 0.04, "dirnet": 0.04}
    for (v, seed), x in d.items():
        _job(root, job_config("sweep22", v, lam=lams[v], seed=seed),
             {"s16": x + 0.05, "s22": x, "s28": x - 0.05})
    _job(root, job_config("sweep22", "vm2", lam=0.04), {"s16": base + 0.1, "s22": base + 0.1,
                                                        "s28": base + 0.1})
    return d


def test_tables_at_sigma_star_use_each_models_own_lambda(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "SIGMA_STAR", 22.0)
    d = _tables_grid(tmp_path)
    results = load_results(tmp_path)[0]
    # before the choice: the claims at σ* wait, although λ-0.04 sweep runs of both exist
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {})
    star = [r for r in claim_data(results) if r["text"].startswith("at σ* = 22")]
    assert len(star) == 3 and all(r.get("delta") is None for r in star)
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {"vm2": 0.02, "metareg": 0.04,
                                                     "ablated_free": 0.08})
    meta = [d["metareg", 0], d["metareg", 1]]
    text = "\n".join(S.section(results))
    # Table 1: VM-2's row is its λ-0.02 run (mean over pairs, in %), not the λ-0.04 one
    row = next(ln for ln in text.splitlines() if ln.startswith("| VoxelMorph-2 (λ 0.02) |"))
    x = 100 * d["vm2", 0]
    assert f"| {x.mean():.2f} ± {x.std(ddof=1):.2f} |" in row
    # Meta-Reg − the next best (VM-2 at 0.02; DIRNet is lower) at σ* and at the neighbours
    for t, shift in (("s22", 0.0), ("s16", 0.05), ("s28", -0.05)):
        b = _boot([m + shift for m in meta], [d["vm2", 0] + shift])
        assert f"Meta-Reg − VoxelMorph-2 (next best): {b['delta']:+.2f} Dice points (95 % CI " \
               f"{b['lo']:+.2f} to {b['hi']:+.2f};" in text
    assert "**Table 2 at σ* — σ_train = 22, σ_test = 16** (the paper's σ 16 → 10 beside it)" in text
    assert "**Table 2 at σ* — σ_train = 22, σ_test = 28** (the paper's σ 10 → 16 beside it)" in text
    # Table 5: the paper's ablation at its 0.08, the unit-sum one at 0.04
    t5 = text[text.index("**Table 5 at σ*"):]
    for v in ("ablated_free", "ablated"):
        b = _boot(meta, [d[v, 0]])
        p = "≤ 1e-4" if b["p"] <= 1e-4 else f"= {b['p']:.3g}"
        assert f"{b['delta']:+.2f} (CI {b['lo']:+.2f} to {b['hi']:+.2f}; p {p})" in t5
    assert "| Ablated (free 13×13, no M) | 0.08 |" in t5
    # the claims at σ*: the same differences, Holm-adjusted with the others
    rows = {r["text"]: r for r in claim_data(results)}
    best = rows["at σ* = 22: Meta-Reg beats the best other method"]
    assert best["rival"] == "vm2" and best["delta"] == pytest.approx(_boot(meta, [d["vm2", 0]])["delta"])
    assert best["paper"] == pytest.approx(84.80 - 80.50)
    gen = rows["at σ* = 22: generalises 22 → 16"]
    assert gen["delta"] == pytest.approx(best["delta"]) and "liver σ 22→16" in gen["regime"]
    abl = rows["at σ* = 22: M adds Dice over the ablated network"]
    assert abl["rival"] == "ablated_free"
    assert abl["delta"] == pytest.approx(_boot(meta, [d["ablated_free", 0]])["delta"])
    # the answer's bullet names each λ and the seeds
    ans = " ".join(S.answer_lines(results))
    b = _boot(meta, [d["vm2", 0]])
    assert (f"Meta-Reg (λ 0.04) − VoxelMorph-2 (λ 0.02): {b['delta']:+.2f} "
            f"[{b['lo']:+.2f} to {b['hi']:+.2f}], 2+1 seeds") in ans


def test_the_lambda_table_is_read_against_the_seed_spread(tmp_path, monkeypatch):
    """Under the λ table: how far the seed alone moves the σ* test Dice at λ 0.04 (only methods
    with two or more seeds there; VM-2 has one λ-0.04 run, so it is not named)."""
    monkeypatch.setattr(P, "SIGMA_STAR", 22.0)
    d = _tables_grid(tmp_path)
    results = load_results(tmp_path)[0]
    means = [100 * d["metareg", s].mean() for s in (0, 1)]
    lo, hi = min(means), max(means)
    assert S.seed_spread(results, "sweep22", "s22") == {
        "metareg": (pytest.approx(lo), pytest.approx(hi), 2)}
    text = "\n".join(S.section(results))
    # one sentence from "spread" to "Validation": Meta-Reg is the only method in it
    assert (f"the seeds' mean Dice spread Meta-Reg {hi - lo:.2f} points (2 seeds, "
            f"{lo:.2f}–{hi:.2f}). Validation Dice that differ") in text


def test_long_runs_at_sigma_star_beside_the_short_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "SIGMA_STAR", 22.0)
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {"vm2": 0.02, "metareg": 0.04,
                                                     "ablated_free": 0.08})
    d = _tables_grid(tmp_path)
    curve = [[s, 0.80 + 0.05 * (1 - np.exp(-s / 1500)), 99.0] for s in range(500, 12001, 500)]
    long = {"metareg": d["metareg", 0] + 0.01, "vm2": d["vm2", 0] + 0.02}
    for v, x in long.items():
        c = job_config("sweep22", v, lam=P.sigmastar_lambda(v), calibrate=True)
        _job(tmp_path, c, {"s22": x}, val=curve, steps=12000)
    text = "\n".join(S.section(load_results(tmp_path)[0]))
    assert "**Training length at σ*** (one plateau-rule run per core model, up to 20,000 steps" \
        in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| Meta-Reg | 0.04 | 12000 |"))
    assert f"| {100 * curve[-1][1]:.2f} |" in row
    b = _boot([long["metareg"]], [long["vm2"]])
    short = _boot([d["metareg", 0], d["metareg", 1]], [d["vm2", 0]])
    line = next(ln for ln in text.splitlines()
                if ln.startswith("Meta-Reg − VoxelMorph-2 after the long runs:"))
    assert f"{b['delta']:+.2f} (CI {b['lo']:+.2f} to {b['hi']:+.2f};" in line
    assert f"at 6,000 steps (2+1 seeds): {short['delta']:+.2f}" in line


def test_the_answer_says_whether_the_advantage_grows_with_sigma(tmp_path):
    """Three σ of the sweep, Meta-Reg − VM-2 growing by 1 point per 6 px; the bullet quotes each
    σ's Δ and the trend of :func:`trend_bootstrap` (pairs drawn once for all σ), per 10 px."""
    rng = np.random.default_rng(7)
    base = 0.80 + 0.03 * rng.standard_normal(N)
    for k, sigma in enumerate((16.0, 22.0, 28.0)):
        t = f"s{sigma:g}"
        for seed in (0, 1):
            noise = 0.002 * rng.standard_normal(N)
            _job(tmp_path, job_config(f"sweep{sigma:g}", "metareg", seed=seed),
                 {t: base + 0.01 * k + noise})
            _job(tmp_path, job_config(f"sweep{sigma:g}", "vm2", seed=seed), {t: base - noise})
    results = load_results(tmp_path)[0]
    assert sweep_answer(results, min_points=4) == []
    ans = sweep_answer(results)[0]
    pts = sigma_points(results, "chaos-svf")
    use = [(s, c["metareg"]["seed_dice"], c["vm2"]["seed_dice"]) for s, c, _ in pts]
    t = trend_bootstrap(use)
    means = [100 * 0.01 * k for k in range(3)]
    assert t["slope"] == pytest.approx(np.polyfit([16, 22, 28], means, 1)[0], abs=0.02)
    assert f"its trend is {10 * t['slope']:+.2f} per 10 px (CI {10 * t['lo']:+.2f} to " \
           f"{10 * t['hi']:+.2f}; p" in ans
    assert t["lo"] > 0 and "the advantage grows with σ" in ans
    assert "(training seeds, Meta-Reg + the other, per σ: 2+2, 2+2, 2+2)" in ans
    text, _ = write_report(tmp_path, tmp_path / "T.md", tmp_path / "f")
    assert "Trend against σ: the least-squares slope" in text
    from regnp.study.report import summary_table
    row = next(ln for ln in summary_table(results) if ln.startswith("| trend per 10 px"))
    assert f"| {10 * t['slope']:+.2f} [{10 * t['lo']:+.2f} to {10 * t['hi']:+.2f}] over σ " \
           "16–28 | – |" in row


def test_no_sigma_star_part_before_the_grid_reaches_it(tmp_path, monkeypatch):
    """A grid with sweep jobs at other σ only (or a quick grid, whose stand-in σ* is its largest
    σ) has no σ* section, claims or bullet; one job at σ* brings them in, the claims waiting
    for the chosen λ."""
    monkeypatch.setattr(P, "SIGMA_STAR", 22.0)
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {})
    for sigma in (16.0, 28.0):
        _job(tmp_path, job_config(f"sweep{sigma:g}", "vm2"), {f"s{sigma:g}": np.full(N, 0.8)})
    results = load_results(tmp_path)[0]
    assert not S.reached(results) and S.section(results) == [] and S.answer_lines(results) == []
    assert not any(r["text"].startswith("at σ*") for r in claim_data(results))
    _job(tmp_path, job_config("sweep22", "vm2"), {"s22": np.full(N, 0.8)})
    results = load_results(tmp_path)[0]
    assert S.reached(results) and S.section(results)[0].startswith("## At σ*")
    star = [r for r in claim_data(results) if r["text"].startswith("at σ*")]
    assert len(star) == 3 and all(r.get("delta") is None for r in star)
    assert "(0 of 16 finished)" in S.answer_lines(results)[0]


def test_the_project_readme_block_is_regenerated_between_its_markers(tmp_path, monkeypatch):
    """`report` of the repository's own results rewrites only the README's block between the
    two markers, the same bytes on every run; a scratch grid's report leaves the README alone;
    a README with one marker is refused before anything is written."""
    from regnp.study.report import (SUMMARY_BEGIN, SUMMARY_END, ReportError, run_report,
                                    summary_block)
    monkeypatch.setattr(P, "SIGMA_STAR", 22.0)
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {"vm2": 0.02, "metareg": 0.04,
                                                     "ablated_free": 0.08})
    repo = tmp_path / "repo"
    runs = repo / "results" / "runs"
    runs.mkdir(parents=True)
    d = _tables_grid(runs)
    readme = repo / "README.md"
    head, tail = "# project\n\nprose before\n\n", "\n\nprose after\n"
    readme.write_text(head + SUMMARY_BEGIN + "\nstale\n" + SUMMARY_END + tail, encoding="utf-8")
    written = run_report(runs, repo=repo)
    text = readme.read_text(encoding="utf-8")
    assert readme in written and text.startswith(head) and text.endswith(tail)
    results = load_results(runs)[0]
    assert text == head + summary_block(results) + tail
    row = next(ln for ln in text.splitlines() if ln.startswith("| σ* = 22, each at its own λ"))
    b = _boot([d["metareg", 0], d["metareg", 1]], [d["vm2", 0]])
    assert f"| {b['delta']:+.2f} [{b['lo']:+.2f} to {b['hi']:+.2f}] |" in row
    assert "(Meta-Reg 0.04, VoxelMorph-2 0.02, Ablated (free 13×13, no M) 0.08)" in row
    assert row.endswith("| 2/1/1 |")
    before = readme.read_bytes()
    assert readme not in run_report(runs, repo=repo) and readme.read_bytes() == before
    # a scratch grid's report (other tables) leaves the project README alone
    run_report(runs, tables=tmp_path / "scratch" / "T.md", repo=repo)
    assert readme.read_bytes() == before
    readme.write_text(head + SUMMARY_BEGIN + tail, encoding="utf-8")
    tables = repo / "results" / "TABLES.md"
    tables_before = tables.read_bytes()
    _job(runs, job_config("sweep22", "vm1"), {"s22": d["vm2", 0]})    # would change the tables
    with pytest.raises(ReportError, match="only one of the results-summary markers"):
        run_report(runs, repo=repo)
    assert tables.read_bytes() == tables_before
