"""The experiment grid: every protocol end to end in --quick mode, kill-and-resume, local vs Dask,
and the report generator against hand-made job JSON."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from regnp.study.experiments import run_protocols
from regnp.study.grid import GridError, job_status, run_grid
from regnp.study.protocols import PROTOCOLS, job_config, protocol_jobs, solver_config
from regnp.study.report import PAPER, cell, chosen_steps, compare, write_report

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def test_every_protocol_quick_on_the_phantom_and_report(tmp_path):
    """Every protocol (shared jobs once) at 64×64 with the phantom standing in for the real
    sets; then the report fills every table from the JSON alone."""
    # 12 steps a job (quick: 20): two logged steps and two validations, the wiring unchanged
    res = run_protocols(PROTOCOLS, tmp_path / "grid", quick=True, phantom=True, seeds=[0],
                        steps=12, jobs=2, threads=1, progress=False)   # 2 worker processes
    names = {c["name"] for p in PROTOCOLS for c in protocol_jobs(p, seeds=[0], quick=True,
                                                                 phantom=True, steps=12)}
    assert set(res) == names
    for m in res.values():
        assert (tmp_path / "grid" / m["config"]["name"] / "metrics.json").is_file()
        assert not (tmp_path / "grid" / m["config"]["name"] / "checkpoint.npz").exists()
        for t in m["tests"].values():
            assert len(t["pairs"]["dice_after"]) == 4
            assert 0 <= t["summary"]["dice_after"]["mean"] <= 100
        assert m["commit"] is None or len(m["commit"]) >= 40
        if m["train"]:
            assert m["train"]["steps"] == m["config"]["steps"] and m["train"]["seconds"] > 0
            fw, curve = m["train"]["filter_weights"], m["train"]["filter_curve"]
            if m["config"]["variant"] in ("metareg", "metareg_paper", "ablated", "ablated_free"):
                K = np.asarray(fw)                        # the learned filter(s), (nf, k, k)
                assert K.ndim == 3 and K.shape[1] == K.shape[2] and K.shape[1] % 2 == 1
                last = m["train"]["filter"]               # the last logged diagnostics
                assert K[0].sum() == pytest.approx(last["k_sum"], rel=1e-4, abs=1e-5)
                assert np.trace(K[0]) == pytest.approx(last["k_trace"], rel=1e-4, abs=1e-5)
                assert "k_anti_trace" in curve["keys"] and len(curve["rows"]) >= 2
                assert curve["rows"][-1][1:] == [last[k] for k in curve["keys"]]
            elif m["config"]["variant"] in ("vm1", "vm2", "dirnet", "fcnss"):
                assert fw is None and curve == {}
    text, figs = write_report(tmp_path / "grid", tmp_path / "TABLES.md", tmp_path / "figs")
    assert "| Meta-Reg |" in text and "not run yet" not in text.split("claims")[1]
    names = {f.name for f in figs}
    main = {"results_training_length.png", "results_lambda_dice.png", "results_claims.png",
            "results_lambda_jacobian.png", "results_sigma.png", "results_filters.png"}
    assert names >= main
    assert all(n.startswith("results_sigma_") for n in names - main)   # a σ sweep's own family
    assert "## The filters the networks learn" in text and "Tr JK̃ at every logged step" in text
    # a second run finds everything done and trains nothing
    t0 = time.perf_counter()
    again = run_protocols(["liver"], tmp_path / "grid", quick=True, phantom=True, seeds=[0],
                          steps=12, jobs=1, progress=False)
    assert time.perf_counter() - t0 < 5 and again.keys() <= res.keys()


def test_real_data_jobs_quick(tmp_path, data_root):
    """One quick job per real set (the protocols' wiring is covered on the phantom above)."""
    jobs = [job_config(s, v, quick=True) for s, v in (("cardiac", "metareg"), ("chest", "vm1"),
                                                      ("liver16", "vm2"))]
    res = run_grid(jobs, tmp_path, data_root=data_root, progress=False)
    by = {(m["config"]["setting"], m["config"]["variant"]): m for m in res.values()}
    assert by[("cardiac", "metareg")]["tests"]["test"]["pairs"]["dice_after"]
    assert set(by[("liver16", "vm2")]["tests"]) == {"s10", "s16"}
    assert len(by[("chest", "vm1")]["tests"]["test"]["pairs"]["id"]) == 4


def test_a_folder_with_another_config_is_refused(tmp_path):
    c = job_config("liver16", "vm2", quick=True, phantom=True)
    run_grid([c], tmp_path, progress=False)
    other = dict(c, steps=c["steps"] + 1)
    before = (tmp_path / c["name"] / "metrics.json").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # nothing is set aside on the way
        with pytest.raises(GridError, match="another config.*steps"):
            run_grid([other], tmp_path, progress=False)
    # the finished job's result is untouched: still there, still finished
    assert (tmp_path / c["name"] / "metrics.json").read_bytes() == before
    assert not list((tmp_path / c["name"]).glob("metrics.json.unreadable*"))
    assert job_status(tmp_path, c) == "done"


def test_kill_and_resume_a_grid(tmp_path):
    """SIGKILL the grid while its second job trains: rerunning does not rerun the finished job
    (its metrics file is untouched) and resumes the interrupted one from its checkpoint."""
    out = tmp_path / "g"
    # 60 steps a job, a checkpoint every 20 (quick): the kill lands between steps 20 and 60
    cmd = [sys.executable, "-m", "regnp.study", "steps", "--quick", "--phantom",
           "--seeds", "0", "--jobs", "1", "--steps", "60", "--out", str(out)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    jobs = protocol_jobs("steps", seeds=[0], quick=True, phantom=True, steps=60)
    first, second = (out / c["name"] for c in jobs[:2])
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if (first / "metrics.json").exists() and (second / "checkpoint.npz").exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the grid did not reach its second job in time")
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    done_bytes = (first / "metrics.json").read_bytes()
    assert job_status(out, jobs[1]) == "partial"
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (first / "metrics.json").read_bytes() == done_bytes
    sittings = [json.loads(x) for x in (second / "sittings.jsonl").read_text().splitlines()]
    assert len(sittings) == 1 and sittings[0]["steps_run"] < 60       # resumed, not restarted
    m = json.loads((second / "metrics.json").read_text())
    assert m["train"]["steps"] == 60


def test_local_and_dask_local_cluster_give_identical_metrics(tmp_path):
    distributed = pytest.importorskip("distributed")
    # 12 steps a job (quick: 40): the same code paths, a third of the training
    local = run_protocols(["steps"], tmp_path / "local", quick=True, phantom=True, seeds=[0],
                          steps=12, jobs=1, threads=1, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = run_protocols(["steps"], tmp_path / "dask", quick=True, phantom=True, seeds=[0],
                               steps=12, threads=1, executor=client, progress=False)
    assert local.keys() == remote.keys()
    for name in local:
        a, b = local[name], remote[name]
        assert a["config"] == b["config"]
        for t in a["tests"]:
            for k in ("dice_after", "pct_positive_jacobian", "min_jacobian"):
                assert a["tests"][t]["pairs"][k] == b["tests"][t]["pairs"][k], (name, t, k)
        assert a["train"]["val_curve"] == b["train"]["val_curve"]


# ------------------------------------------------------------------- report from hand-made JSON
def _fake_job(root, setting, variant, seed, dice, jac=99.9, test="s16", lam=0.04, val=None):
    c = (solver_config(setting) if variant == "solver"
         else job_config(setting, variant, lam=lam, seed=seed))
    if val is not None:
        c = dict(c, name="steps_" + c["name"], val_every=500)
    n = len(dice)
    m = {"config": c, "train": {"steps": 6000, "seconds": 3600.0, "stopped": "steps",
                                "val_curve": val or []},
         "machine": {"threads": 1},
         "tests": {test: {"summary": {}, "pairs": {"id": [f"p{i}" for i in range(n)],
                                    "dice_before": [0.6] * n, "dice_after": list(dice),
                                    "pct_positive_jacobian": list(np.broadcast_to(jac, n).astype(float)),
                                    "min_jacobian": [-0.1] * n, "seconds": [None] + [0.1] * (n - 1)}}}}
    (root / c["name"]).mkdir(parents=True)
    (root / c["name"] / "metrics.json").write_text(json.dumps(m))


def test_report_from_hand_made_json(tmp_path):
    """Cells are mean ± sd over the tested per-pair values (seeds averaged per pair); the
    comparison is paired and its interval and p are the hierarchical bootstrap's (hand-made ids
    name no subject, so each pair is its own cluster)."""
    from scipy import stats
    from regnp.study.stats import compare_paired
    rng = np.random.default_rng(0)
    meta = [0.85 + 0.02 * rng.standard_normal(20) for _ in range(2)]
    vm2 = 0.80 + 0.02 * rng.standard_normal(20)
    _fake_job(tmp_path, "liver16", "metareg", 0, meta[0])
    _fake_job(tmp_path, "liver16", "metareg", 1, meta[1])
    _fake_job(tmp_path, "liver16", "vm2", 0, vm2)
    _fake_job(tmp_path, "liver16", "ablated", 0, vm2 + 0.01)
    curve = [[s, 0.80 + 0.05 * (1 - np.exp(-s / 1500))] for s in range(500, 12001, 500)]
    _fake_job(tmp_path, "liver16", "metareg", 0, meta[0], val=curve)
    from regnp.study.report import load_results
    results, errors = load_results(tmp_path)
    assert not errors
    c = cell(results, "liver16", "metareg", "s16")
    per_pair = 100 * (meta[0] + meta[1]) / 2                      # the values that are tested
    assert c["dice"][0] == pytest.approx(per_pair.mean()) and c["dice"][1] == pytest.approx(
        per_pair.std(ddof=1))
    assert c["seeds"] == [0, 1] and c["per_seed"] == pytest.approx([100 * meta[0].mean(), 100 * meta[1].mean()])
    cmp = compare(results, "liver16", "s16")
    assert cmp["rival"] == "vm2"
    assert cmp["p_t"] == pytest.approx(stats.ttest_rel(per_pair, 100 * vm2).pvalue)
    assert cmp["delta"] == pytest.approx((per_pair - 100 * vm2).mean())
    ids = [f"p{i}" for i in range(20)]
    boot = compare_paired([dict(zip(ids, 100 * m)) for m in meta], dict(zip(ids, 100 * vm2)))
    assert (cmp["lo"], cmp["hi"], cmp["p"]) == pytest.approx((boot["lo"], boot["hi"], boot["p"]))
    assert cmp["lo"] > 0 and cmp["p"] == pytest.approx(1e-4)       # ~5 points over 20 pairs
    text, figs = write_report(tmp_path, tmp_path / "T.md", tmp_path / "f")
    assert f"{per_pair.mean():.2f} ± {per_pair.std(ddof=1):.2f}" in text
    assert "84.80 ± 6.09" in text                                  # the paper's number beside it
    assert "| 1 (seed 0) |" in text and f"| 2: {100 * meta[0].mean():.2f} / " in text   # seeds column
    row = next(ln for ln in text.splitlines()
               if ln.startswith("| Meta-Reg beats the best other method at σ 16/16 |"))
    assert "| +4.30 |" in row and f"| {cmp['lo']:+.2f} to {cmp['hi']:+.2f} |" in row
    assert "reproduced in direction (liver σ 16→16, Dice before 60.0 %; Holm p ≤ 1e-4)" in row
    assert cmp["lo"] < 4.30 < cmp["hi"] and "our interval contains the paper's +4.30" in row
    assert "not run yet" in text                                    # σ 10/10 was not run
    step, _ = chosen_steps(curve)
    assert step is not None and 3000 <= step <= 9000
    assert f"| {step} |" in text
    assert (tmp_path / "f" / "results_training_length.png").stat().st_size > 5000
    assert (tmp_path / "f" / "results_claims.png").stat().st_size > 5000
    # cost per protocol: each fake job is 1 CPU hour; liver holds metareg s0, s1 and vm2 s0 of
    # its 16 planned jobs (the ablated network is in the ablation protocol, not in liver)
    assert "| liver | 3 / 16 | 3.00 | 13.0 |" in text
    assert "| ablation | 3 / 24 | 3.00 | 21.0 |" in text


def _boot_txt(x, y, ids=None):
    """The report's "Δ (CI lo to hi; p …)" cell for per-pair Dice x − y, computed here."""
    from regnp.study.stats import compare_paired
    ids = ids or [f"p{i}" for i in range(len(x))]
    r = compare_paired(dict(zip(ids, 100 * np.asarray(x))), dict(zip(ids, 100 * np.asarray(y))))
    p = "≤ 1e-4" if r["p"] <= 1e-4 else f"= {r['p']:.3g}"
    return f"{100 * (np.mean(x) - np.mean(y)):+.2f} (CI {r['lo']:+.2f} to {r['hi']:+.2f}; p {p})"


def test_ablation_variants_table_by_hand(tmp_path):
    """Each column is one paired difference of per-pair Dice with its bootstrap interval and p."""
    from regnp.study.report import ablation_variants_table, load_results
    rng = np.random.default_rng(4)
    d = {v: 0.85 + mu + 0.02 * rng.standard_normal(30) for v, mu in
         (("metareg", 0.01), ("ablated", 0.0), ("ablated_free", 0.005), ("ablated_nofilter", -0.01))}
    for v, x in d.items():
        _fake_job(tmp_path, "chest", v, 0, x, test="test")
    row = next(ln for ln in ablation_variants_table(load_results(tmp_path)[0]).splitlines()
               if ln.startswith("| chest"))
    for x, y in (("ablated", "ablated_free"), ("ablated_free", "ablated_nofilter"),
                 ("metareg", "ablated_nofilter")):
        assert _boot_txt(d[x], d[y]) in row
    liver = next(ln for ln in ablation_variants_table(load_results(tmp_path)[0]).splitlines()
                 if ln.startswith("| liver, σ_train = 16"))
    assert liver.count("–") == 3                                  # nothing run there


def test_table5_main_row_is_the_papers_ablation(tmp_path):
    """Table 5 compares Meta-Reg with the free 13×13 network without M (the paper's ablation)
    first, and with the unit-sum variant beside it; the claims table uses the paper's."""
    from regnp.study.report import ablation_table, claim_data, load_results
    rng = np.random.default_rng(8)
    d = {v: 0.85 + mu + 0.02 * rng.standard_normal(30) for v, mu in
         (("metareg", 0.0), ("ablated", -0.02), ("ablated_free", 0.01))}
    for v, x in d.items():
        _fake_job(tmp_path, "chest", v, 0, x, test="test")
    results = load_results(tmp_path)[0]
    row = next(ln for ln in ablation_table(results).splitlines() if ln.startswith("| chest"))
    free, unit = _boot_txt(d["metareg"], d["ablated_free"]), _boot_txt(d["metareg"], d["ablated"])
    assert free in row and unit in row and row.index(free) < row.index(unit)
    claim = next(r for r in claim_data(results) if r["text"].endswith("(chest X-ray (JSRT))"))
    assert claim["rival"] == "ablated_free"
    assert claim["delta"] == pytest.approx(100 * (d["metareg"].mean() - d["ablated_free"].mean()))


def test_advantage_against_sigma_by_hand(tmp_path):
    """Each liver setting scored at its own σ is one point of the σ figure, in order of σ, with
    Meta-Reg − VM-2 and − the paper's ablation as paired differences; a setting where Meta-Reg
    has not run is left out."""
    from regnp.study.report import load_results, sigma_matrix, sigma_points
    rng = np.random.default_rng(12)
    d = {}
    for setting, test, gain in (("liver16", "s16", 0.02), ("liver10", "s10", 0.005)):
        base = 0.85 + 0.02 * rng.standard_normal(16)
        d[setting] = {"vm2": base, "metareg": base + gain + 0.01 * rng.standard_normal(16),
                      "ablated_free": base + 0.01}
        for v, x in d[setting].items():
            _fake_job(tmp_path, setting, v, 0, x, test=test)
            # the other σ's test set as well: it must not be taken for the setting's own
            p = tmp_path / job_config(setting, v)["name"] / "metrics.json"
            m = json.loads(p.read_text())
            other = "s10" if test == "s16" else "s16"
            m["tests"][other] = json.loads(json.dumps(m["tests"][test]))
            m["tests"][other]["pairs"]["dice_after"] = [0.5] * 16
            p.write_text(json.dumps(m))
    _fake_job(tmp_path, "cardiac", "vm2", 0, 0.8 + 0.01 * rng.standard_normal(16), test="test")
    pts = sigma_points(load_results(tmp_path)[0])
    assert [p[0] for p in pts] == [10.0, 16.0]
    for (sigma, cells, diffs), setting in zip(pts, ("liver10", "liver16")):
        x = d[setting]
        assert diffs["vm2"]["delta"] == pytest.approx(100 * (x["metareg"] - x["vm2"]).mean())
        assert diffs["ablated_free"]["delta"] == pytest.approx(
            100 * (x["metareg"] - x["ablated_free"]).mean())
    mat = sigma_matrix(load_results(tmp_path)[0], rival="vm2")
    assert set(mat) == {(10.0, 10.0), (10.0, 16.0), (16.0, 10.0), (16.0, 16.0)}
    x = d["liver16"]
    assert mat[16.0, 16.0]["delta"] == pytest.approx(100 * (x["metareg"] - x["vm2"]).mean())
    assert mat[10.0, 16.0]["delta"] == 0.0                    # every job 0.5 off its own σ
    text, figs = write_report(tmp_path, tmp_path / "T.md", tmp_path / "f")
    assert (tmp_path / "f" / "results_sigma.png") in figs
    assert "| 16 | 60.0 ± 0.0 |" in text
    assert "| σ_train \\ σ_test (Meta-Reg − VoxelMorph-2) | 10 | 16 |" in text


def test_a_sweep_with_one_sigma_done_shows_its_row_and_its_networks_on_every_test_sigma(
        tmp_path):
    """A sweep in progress: only σ_train 28 has finished. Its section appears with the one-row σ
    table and the σ_train × σ_test row (the σ-28 networks on the other σ's test sets); there is
    no curve to draw from one σ."""
    from regnp.study.report import load_results, sigma_matrix
    rng = np.random.default_rng(3)
    base = 0.7 + 0.02 * rng.standard_normal(16)
    gains = {"s22": 0.02, "s28": 0.03}
    for v, add in (("vm2", 0.0), ("metareg", 1.0), ("ablated_free", 0.5)):
        _fake_job(tmp_path, "sweep28", v, 0, base + add * gains["s28"], test="s28")
        p = tmp_path / job_config("sweep28", v)["name"] / "metrics.json"
        m = json.loads(p.read_text())
        m["tests"]["s22"] = json.loads(json.dumps(m["tests"]["s28"]))
        m["tests"]["s22"]["pairs"]["dice_after"] = list(base + add * gains["s22"])
        m["config"]["tests"] = [{"name": n, "sigma": s, "dataset": "chaos-svf", "pairs": 16}
                                for n, s in (("s22", 22.0), ("s28", 28.0))]
        p.write_text(json.dumps(m))
    mat = sigma_matrix(load_results(tmp_path)[0], family="chaos-svf", rival="vm2")
    assert set(mat) == {(28.0, 22.0), (28.0, 28.0)}
    assert mat[28.0, 22.0]["delta"] == pytest.approx(2.0)
    text, figs = write_report(tmp_path, tmp_path / "T.md", tmp_path / "f")
    assert "(liver, σ_train = σ_test; svf fields)" in text
    assert "| σ_train \\ σ_test (Meta-Reg − VoxelMorph-2) | 22 | 28 |" in text
    assert "| 28 | +2.00 [" in text and not (tmp_path / "f" / "results_sigma_svf.png").exists()


def test_learned_filters_against_eq9_and_the_hinge_by_hand():
    from regnp.study.report import fit_gram_filter, gram_filter, hinge_activity
    g = gram_filter(2.0, 13)                              # eq. 9's K̃ of a Gaussian, unit sum
    assert g.shape == (13, 13) and g.sum() == pytest.approx(1.0)
    assert g[6, 6] == g.max() and np.allclose(g, g.T) and np.allclose(g, g[::-1, ::-1])
    width, fitted, dist = fit_gram_filter(3.0 * g)        # a scaled copy: the scale is ignored
    assert width == pytest.approx(2.0, abs=0.03) and dist < 1e-2 and np.allclose(fitted.sum(), 1)
    width_b, _, dist_b = fit_gram_filter(gram_filter(4.5, 13))
    assert width_b == pytest.approx(4.5, abs=0.03) and dist_b < 1e-2
    ring = np.zeros((13, 13))
    ring[[0, 0, 12, 12], [0, 12, 0, 12]] = 0.25           # the corners: far from any Gaussian
    assert fit_gram_filter(ring)[2] > 0.9
    # two runs: traces negative at 1 of 3 logged steps in the first, never in the second
    curve = lambda rows: {"train": {"filter_curve": {"keys": ["k_anti_trace", "k_sum",
                                                              "k_trace"], "rows": rows}}}
    jobs = [curve([[10, 0.2, 1.0, 0.3], [20, -0.1, 1.0, 0.3], [30, 0.1, 1.0, 0.2]]),
            curve([[10, 0.2, 1.0, 0.3], [20, 0.3, 1.0, 0.4]]), {"train": {}}]
    assert hinge_activity(jobs) == (2, 1, 1, 5)
    assert hinge_activity([{"train": {}}]) is None


def test_by_difficulty_splits_the_same_pairs_on_both_sides():
    """9 pairs, Dice before 0.9 … 0.1 (pair p8 hardest): thirds hardest first, each a paired
    difference over its own 3 pairs; Meta-Reg gains 3 points on the hardest third only."""
    from regnp.study.report import by_difficulty
    ids = [f"p{i}" for i in range(9)]
    before = {i: 100 * (0.9 - 0.1 * k) for k, i in enumerate(ids)}
    vm2 = {i: 80.0 + k for k, i in enumerate(ids)}
    meta = {i: v + (3.0 if k >= 6 else 0.0) for k, (i, v) in enumerate(vm2.items())}
    m = {"seed_dice": [meta], "pair_before": before, "label": "m"}
    groups = by_difficulty(m, {"vm2": {"seed_dice": [vm2], "label": "v"}, "none": None})
    assert [(round(lo), round(hi), n) for lo, hi, n, _ in groups] == [(10, 30, 3), (40, 60, 3),
                                                                       (70, 90, 3)]
    assert [g[3]["vm2"]["delta"] for g in groups] == pytest.approx([3.0, 0.0, 0.0])
    assert all(set(g[3]) == {"vm2"} and g[3]["vm2"]["n_pairs"] == 3 for g in groups)


def test_rkhs_differences_table_by_hand(tmp_path):
    """Each cell is one paired difference of per-pair Dice with its bootstrap interval and p; a
    comparison with a side not run shows '–'."""
    from regnp.study.report import load_results, rkhs_differences_table
    rng = np.random.default_rng(5)
    d = {v: 0.9 + mu + 0.02 * rng.standard_normal(25) for v, mu in
         (("rkhs_exact", 0.0), ("rkhs_conv13", -0.004), ("metareg", 0.003), ("solver", 0.04))}
    for v, x in d.items():
        _fake_job(tmp_path, "liver16", v, 0, x)
    _fake_job(tmp_path, "liver10", "metareg", 0, d["metareg"], test="s10")
    lines = rkhs_differences_table(load_results(tmp_path)[0]).splitlines()
    row16 = next(ln for ln in lines if ln.startswith("| liver, σ_train = 16"))
    for x, y in (("rkhs_conv13", "rkhs_exact"), ("metareg", "rkhs_conv13"), ("solver", "metareg")):
        assert _boot_txt(d[x], d[y]) in row16
    row10 = next(ln for ln in lines if ln.startswith("| liver, σ_train = 10"))
    assert row10.count("–") == 3                      # only Meta-Reg ran there: nothing to compare


def test_lambda_summary_by_hand(tmp_path):
    """Counts, significance, best λ, spread and the Jacobian trend of the λ sweep, from fake jobs
    whose means are known: Meta-Reg is far above VM-2 at λ 0.01 (significant), slightly below at
    0.04, slightly above at 0.16; VM-2's |J|>0 dips at 0.16, Meta-Reg's rises."""
    from regnp.study.report import lambda_points, lambda_summary, load_results
    # VM-2 and Meta-Reg share the noise e; Meta-Reg adds g (mean 0, sd 0.03), so each paired
    # difference of means is exactly the shift below and its standard error 0.03/√30: the
    # shifts are 11, −1.8 and +0.9 standard errors (significant at λ 0.01 only)
    e = np.random.default_rng(6).standard_normal(30)
    e = 0.03 * (e - e.mean()) / e.std(ddof=1)
    g = np.random.default_rng(60).standard_normal(30)
    g = 0.03 * (g - g.mean()) / g.std(ddof=1)
    for lam, dv, dm, jv, jm in ((0.01, 0.80, 0.86, 97.0, 97.5), (0.04, 0.84, 0.83, 99.5, 99.4),
                                (0.16, 0.82, 0.825, 99.0, 99.9)):
        _fake_job(tmp_path, "liver16", "vm2", 0, dv + e, jac=jv, lam=lam)
        _fake_job(tmp_path, "liver16", "metareg", 0, dm + e + g, jac=jm, lam=lam)
    _fake_job(tmp_path, "liver16", "vm2", 0, 0.7 + e, lam=0.32)   # VM-2 only: not compared
    results = load_results(tmp_path)[0]
    pts = {v: lambda_points(results, v) for v in ("vm2", "metareg")}
    text = lambda_summary(pts)
    assert "above VoxelMorph-2's at 2 of the 3 λ values" in text
    assert ("significant (hierarchical bootstrap p < 0.05, not adjusted for the 3 λ values) at "
            "λ = 0.01 (+6.00).") in text
    assert "Best λ: Meta-Reg 0.01, VoxelMorph-2 0.04" in text
    assert "Meta-Reg 3.50, VoxelMorph-2 4.00 points" in text        # 86 − 82.5 and 84 − 80
    assert "rises monotonically with λ for Meta-Reg only" in text
    assert "at or above VoxelMorph-2's at 2 of the 3 λ values" in text
    assert lambda_summary({"vm2": pts["vm2"], "metareg": []}).endswith("no λ in common yet.")


def test_lambda_table_compares_jacobians_per_pair(tmp_path):
    """The λ table's |J|>0 column: Meta-Reg − VM-2 in points, paired over per-pair shares of
    positive Jacobians (seeds averaged per pair), like the Dice column."""
    from scipy import stats
    from regnp.study.report import cell, diff, load_results
    rng = np.random.default_rng(7)
    dice = 0.85 + 0.02 * rng.standard_normal(20)
    jv = 98.0 + rng.standard_normal(20)
    jm = [98.5 + rng.standard_normal(20) for _ in range(2)]
    for lam in (0.01, 0.02):
        _fake_job(tmp_path, "liver16", "vm2", 0, dice, jac=jv, lam=lam)
        _fake_job(tmp_path, "liver16", "metareg", 0, dice, jac=jm[0], lam=lam)
        _fake_job(tmp_path, "liver16", "metareg", 1, dice, jac=jm[1], lam=lam)
    results = load_results(tmp_path)[0]
    m, v = (cell(results, "liver16", x, "s16", lam=0.02) for x in ("metareg", "vm2"))
    d = diff(m, v, "jac")
    assert d["p_t"] == pytest.approx(stats.ttest_rel((jm[0] + jm[1]) / 2, jv).pvalue)
    assert d["seeds"] == (2, 1)
    # every pair at 100 % on both sides: a zero difference, no t-test (and no scipy warning)
    _fake_job(tmp_path, "liver16", "vm2", 0, dice, jac=100.0, lam=0.04)
    _fake_job(tmp_path, "liver16", "metareg", 0, dice + 0.01, jac=100.0, lam=0.04)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text, _ = write_report(tmp_path, tmp_path / "T.md", tmp_path / "f")
    row = next(ln for ln in text.splitlines() if ln.startswith("| 0.02 |"))
    ptxt = "≤ 1e-4" if d["p"] <= 1e-4 else f"= {d['p']:.3g}"
    assert row.endswith(f"| {np.concatenate(jm).mean() - jv.mean():+.2f} (CI {d['lo']:+.2f} to "
                        f"{d['hi']:+.2f}; p {ptxt}) |")
    row = next(ln for ln in text.splitlines() if ln.startswith("| 0.04 |"))
    assert row.endswith("| +0.00 (CI +0.00 to +0.00; p = 1) |")


def test_verdicts_are_no_stronger_than_the_evidence():
    """The verdict reads the Holm-adjusted bootstrap p and the interval, names the regime, and
    never says "ruled out"."""
    from regnp.study.report import _verdict
    base = dict(rival="vm2", regime="liver σ 16→16, Dice before 65.6 %; 3 subjects", n_boot=10_000)
    v = _verdict(dict(base, delta=0.2, lo=-1.9, hi=2.3, p_holm=0.85, paper=4.3, sig=True))
    assert v == ("not reproduced under our protocol (liver σ 16→16, Dice before 65.6 %): our "
                 "interval includes 0 (Holm p = 0.85); the paper's +4.30 lies above our interval")
    v = _verdict(dict(base, delta=-0.7, lo=-5.3, hi=3.9, p_holm=0.76, paper=2.4, sig=True))
    assert v.endswith("our interval contains the paper's +2.40")
    v = _verdict(dict(base, delta=3.0, lo=1.0, hi=5.0, p_holm=0.01, paper=4.3, sig=True))
    assert v.startswith("reproduced in direction (liver σ 16→16") and "contains the paper's" in v
    v = _verdict(dict(base, delta=-0.8, lo=-1.5, hi=-0.2, p_holm=0.02, paper=1.3, sig=False))
    assert v.startswith("reversed under our protocol") and "VoxelMorph-2 better" in v
    v = _verdict(dict(base, delta=0.1, lo=-1.0, hi=1.0, p_holm=1.0, paper=0.3, sig=False))
    assert v.startswith("agrees: no difference detected")
    v = _verdict(dict(base, delta=0.9, lo=0.3, hi=1.6, p_holm=1e-4, paper=0.3, sig=False))
    assert v.startswith("differs: Meta-Reg better") and "Holm p ≤ 1e-4" in v
    assert _verdict({"delta": None}) == "not run yet"


def test_chosen_steps_rule_by_hand():
    flat = [[s, 0.8] for s in range(500, 8001, 500)]
    assert chosen_steps(flat)[0] == 1500                 # first smoothed point, never gains
    rising = [[s, 0.5 + s * 1e-5] for s in range(500, 8001, 500)]      # 2 points / 2000 steps
    assert chosen_steps(rising)[0] is None


def test_paper_tables_are_complete():
    for key, rows in PAPER.items():
        assert set(rows) == {"dirnet", "fcnss", "vm1", "vm2", "metareg"}, key
        assert all(len(r) == 7 for r in rows.values())


def test_cli_errors_are_one_line(tmp_path):
    for args, msg in ((["liver", "--quick", "--steps", "0"], "positive integer"),
                      (["report", "--out", str(tmp_path / "none")], "not a folder"),
                      (["liver", "--quick", "--jobs", "-1"], "positive integer")):
        r = subprocess.run([sys.executable, "-m", "regnp.study", *args], cwd=tmp_path,
                           env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert msg in r.stderr.strip().splitlines()[-1], r.stderr


def test_transfer_experiment_runs(tmp_path, data_root):
    from regnp.study.experiments import transfer
    res = transfer(steps=3, size=32, pairs=2, data_root=data_root, out=tmp_path / "run",
                   fig_dir=tmp_path, progress=False)
    assert set(res) == {"phantom->phantom", "phantom->chaos", "chaos->phantom", "chaos->chaos"}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["results"]["phantom->chaos"]["summary"]["n_pairs"] == 2
    assert (tmp_path / "transfer_phantom_to_chaos.png").stat().st_size > 10000


def test_a_running_job_is_not_run_twice_and_a_dead_lock_is_taken_over(tmp_path):
    from regnp.study.grid import JobBusy, acquire_job
    lock = acquire_job(tmp_path)
    with pytest.raises(JobBusy, match="being run by pid"):
        acquire_job(tmp_path)                        # this (live) process holds it
    c = job_config("liver16", "vm2", quick=True, phantom=True)
    (tmp_path / "g" / c["name"]).mkdir(parents=True)
    held = acquire_job(tmp_path / "g" / c["name"])
    assert job_status(tmp_path / "g", c) == "running"
    assert run_grid([c], tmp_path / "g", progress=False) == {}      # skipped, not failed
    held.unlink()
    lock.unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    import platform
    (tmp_path / "running.lock").write_text(json.dumps({"host": platform.node(), "pid": int(dead)}))
    acquire_job(tmp_path).unlink()                   # a dead process's lock is stale


def _report_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "regnp.study", "report", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=_env(), timeout=600)


def test_report_writes_the_results_page_byte_for_byte_and_says_what_it_wrote(tmp_path):
    """``report`` writes TABLES.md and README.md beside the job folder and the figures beside
    them (not into the repository's figures/), prints each path, and a second run gives the
    same bytes."""
    rng = np.random.default_rng(1)
    runs = tmp_path / "results" / "runs"
    _fake_job(runs, "liver16", "metareg", 0, 0.85 + 0.02 * rng.standard_normal(20))
    _fake_job(runs, "liver16", "vm2", 0, 0.80 + 0.02 * rng.standard_normal(20))
    _fake_job(runs, "chest", "metareg", 0, 0.85 + 0.02 * rng.standard_normal(20), test="test")
    _fake_job(runs, "chest", "ablated_free", 0, 0.85 + 0.02 * rng.standard_normal(20), test="test")
    repo_fig = REPO / "figures" / "results_claims.png"
    before = repo_fig.read_bytes() if repo_fig.is_file() else None
    r = _report_cli("--out", runs, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = tmp_path / "results"
    written = [ln.removeprefix("wrote ") for ln in r.stdout.splitlines()]
    expect = [res / "TABLES.md", res / "README.md", res / "figures" / "results_claims.png"]
    assert all(str(p) in written for p in expect) and all(Path(p).is_file() for p in written)
    assert all(Path(p).resolve().is_relative_to(tmp_path.resolve()) for p in written)
    assert (repo_fig.read_bytes() if repo_fig.is_file() else None) == before
    page = (res / "README.md").read_text(encoding="utf-8")
    assert "## The answer in short" in page and "[TABLES.md](TABLES.md)" in page
    assert "](figures/results_claims.png)" in page
    assert "**Meta-Reg − VoxelMorph-2**" in page and "| Ablated (free 13×13, no M) | chest" in page
    from regnp.study.report import _planned_jobs
    planned = {n for p, names in _planned_jobs().items() if p != "steps" for n in names}
    assert f"**Grid status: 4 of {len(planned)} grid jobs finished**" in page
    assert "**Cost so far.**" in page
    first = {p: Path(p).read_bytes() for p in written}
    r2 = _report_cli("--out", runs, cwd=tmp_path)
    assert r2.returncode == 0 and r2.stdout == r.stdout
    assert {p: Path(p).read_bytes() for p in written} == first


def test_report_names_a_metrics_file_of_the_wrong_shape_and_goes_on(tmp_path):
    """Issue 20: a metrics.json without "tests" made the report raise KeyError. Now it is
    skipped and named in one line under the tables, and the other jobs are reported."""
    from regnp.study.report import load_results
    rng = np.random.default_rng(2)
    _fake_job(tmp_path, "liver16", "vm2", 0, 0.8 + 0.02 * rng.standard_normal(10))
    for name, text in (("a", "[]"), ("b", json.dumps({"config": {"name": "b"}}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(text)
    results, errors = load_results(tmp_path)
    assert list(results) == [job_config("liver16", "vm2")["name"]] and len(errors) == 2
    assert "holds a JSON list" in errors[0] and "has no results ('tests')" in errors[1]
    text, _ = write_report(tmp_path, tmp_path / "T.md", tmp_path / "f")
    assert "Unreadable result files (skipped): " in text and "has no results" in text


def test_report_figures_follow_the_tables_unless_they_are_the_repositorys():
    """Issue 20: ``report --out runs/grid-quick`` from the repository root wrote the scratch
    grid's plots over the committed figures/results_*.png."""
    from regnp.study.report import default_paths
    t, f, r = default_paths(REPO / "results" / "runs")
    assert (t, f, r) == (REPO / "results" / "TABLES.md", REPO / "figures",
                         REPO / "results" / "README.md")
    t, f, r = default_paths(REPO / "runs" / "grid-quick")
    assert (t, f, r) == (REPO / "runs" / "TABLES.md", REPO / "runs" / "figures",
                         REPO / "runs" / "README.md")
    assert default_paths("x/runs", tables="y/T.md")[1:] == (Path("y/figures"), Path("y/README.md"))
    assert default_paths("x/runs", figures="z")[1] == Path("z")


def test_report_refuses_to_replace_results_with_empty_tables_or_a_foreign_file(tmp_path):
    """Issue 20: ``report --out results/runs_new`` on an empty folder replaced the committed
    TABLES.md with blank tables and exited 0. Now: one line, exit ≠ 0, nothing written; and a
    target the report did not write (a hand-written README) is never replaced."""
    res = tmp_path / "results"
    (res / "runs_new").mkdir(parents=True)
    committed = (REPO / "results" / "TABLES.md").read_text(encoding="utf-8")
    (res / "TABLES.md").write_text(committed, encoding="utf-8")
    r = _report_cli("--out", res / "runs_new", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "no finished jobs" in r.stderr
    assert "--tables" in r.stderr                                  # says what to do
    assert (res / "TABLES.md").read_text(encoding="utf-8") == committed
    assert not (res / "README.md").exists() and not (res / "figures").exists()
    # an empty grid into a fresh place is fine (nothing is lost)
    assert _report_cli("--out", res / "runs_new", "--tables", tmp_path / "new" / "T.md",
                       cwd=tmp_path).returncode == 0
    # a file the report did not write is refused, even with finished jobs
    rng = np.random.default_rng(3)
    _fake_job(res / "runs", "liver16", "vm2", 0, 0.8 + 0.02 * rng.standard_normal(10))
    mine = tmp_path / "README.md"
    mine.write_text("# my project\n", encoding="utf-8")
    r = _report_cli("--out", res / "runs", "--readme", mine, cwd=tmp_path)
    assert r.returncode != 0 and "not written by the report" in r.stderr
    assert mine.read_text(encoding="utf-8") == "# my project\n"


def test_readme_block_of_a_finished_grid_says_so(tmp_path, monkeypatch):
    """When every planned job has finished, the status line says so and drops "still queued"."""
    from regnp.study import report
    rng = np.random.default_rng(2)
    for v in ("metareg", "vm2"):
        _fake_job(tmp_path, "liver16", v, 0, 0.8 + 0.02 * rng.standard_normal(20))
    results, _ = report.load_results(tmp_path)
    monkeypatch.setattr(report, "_planned_jobs",
                        lambda: {"liver": {n: m["config"] for n, m in results.items()}})
    block = report.readme_block(results)
    assert block.startswith("**Grid status: all 2 grid jobs finished**")
    assert "still queued" not in block and "**Cost.**" in block and "Cost so far" not in block


def test_cpu_hours_count_the_steps_of_a_sitting_that_left_no_record():
    """A job killed at the end of a session and finished in the next has one recorded sitting
    (1,500 of its 6,000 steps): its CPU time is the recorded rate × all 6,000 steps."""
    from regnp.study.report import _cpu_hours
    whole = {"train": {"steps": 6000, "seconds": 1800.0, "seconds_per_step": 0.3},
             "machine": {"threads": 1}}
    resumed = {"train": {"steps": 6000, "seconds": 450.0, "seconds_per_step": 0.3},
               "machine": {"threads": 2}}
    assert _cpu_hours([whole]) == pytest.approx(0.5)
    assert _cpu_hours([resumed]) == pytest.approx(1.0)           # 0.3 s × 6000 × 2 threads


def test_regime_sentence_names_the_nearest_size_once_ours_reach_the_paper_s():
    from regnp.study.report import regime_sentence
    easier = regime_sentence([("σ 10", 95.5), ("σ 16", 90.7)], 80.5)
    assert "easier than the paper's" in easier
    # one size 3.3 points above, one below: the nearest is named, not "easier"
    both = regime_sentence([("σ 16", 90.7), ("σ 22", 83.8), ("σ 28", 73.2)], 80.5)
    assert both == ". Our σ 22 is nearest the paper's difficulty; our sizes reach past it on both sides"
    assert regime_sentence([("σ 16", 90.7), ("σ 28", 82.0)], 80.5) == \
        ". Our σ 28 is nearest the paper's difficulty"


@pytest.mark.slow      # the whole report of the committed grid: every bootstrap (~10 s)
def test_committed_results_are_what_the_report_makes_of_the_committed_json(tmp_path,
                                                                           monkeypatch):
    """results/TABLES.md, results/README.md and the project README's summary block are, byte
    for byte, what ``python -m regnp.study report`` makes of the committed results/runs: after
    new jobs are committed, run the report and commit its output with them."""
    from regnp.study.report import (SUMMARY_BEGIN, SUMMARY_END, _DIFFS, load_results,
                                    summary_block)
    monkeypatch.chdir(REPO)
    root = Path("results") / "runs"
    if not any(root.glob("*/metrics.json")):
        pytest.skip("no committed grid results in results/runs")
    _DIFFS.clear()
    tables, page = tmp_path / "results" / "TABLES.md", tmp_path / "results" / "README.md"
    write_report(root, tables, tmp_path / "figures", readme_path=page)
    for made, committed in ((tables, REPO / "results" / "TABLES.md"),
                            (page, REPO / "results" / "README.md")):
        assert made.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), (
            f"{committed.relative_to(REPO)} is not what the report makes of results/runs: run "
            "`python -m regnp.study report` and commit what it writes")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    a, b = readme.index(SUMMARY_BEGIN), readme.index(SUMMARY_END) + len(SUMMARY_END)
    assert readme[a:b] == summary_block(load_results(root)[0]), (
        "the README's results summary is stale: run `python -m regnp.study report`")
