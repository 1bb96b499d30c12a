"""The deformation-size sweep (issue 17): the plan's shape, σ* as one constant, and the quick
sweep end to end from the command line (every trained network scored at every σ)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import regnp.study.protocols as P
from regnp.study.protocols import protocol_jobs

REPO = Path(__file__).resolve().parents[1]


def test_sweep_plan_has_three_seeds_and_a_full_sigma_matrix():
    jobs = protocol_jobs("sweep", seeds=[0])           # --seeds 0 is topped up to 3 seeds
    assert len({c["name"] for c in jobs}) == len(jobs) == 5 * (3 * 3 + 1)
    per = {}
    for c in jobs:
        per.setdefault((c["variant"], c["setting"]), set()).add(c["seed"])
        assert "--dataset" in c["train_args"]
        assert c["train_args"][c["train_args"].index("--dataset") + 1] == "chaos-svf"
        # every network is scored at every σ of the sweep and at σ 40 (a training point that
        # may be added later), on the full 80-pair test lists
        assert [(t["name"], t["dataset"], t["sigma"], t["pairs"]) for t in c["tests"]] == \
            [(f"s{s:g}", "chaos-svf", s, 80) for s in (10.0, 16.0, 22.0, 28.0, 34.0, 40.0)]
        assert c["steps"] == P.TRAIN_STEPS and c["size"] == 256 and c["lam"] == P.LAMBDA
    for s in P.SWEEP_SIGMAS:
        for v in ("vm2", "metareg", "ablated_free"):
            assert per[(v, f"sweep{s:g}")] == {0, 1, 2}
        assert per[("metareg_paper", f"sweep{s:g}")] == {0}
    # the paper-like σ first, all its seeds before the next σ ("seeds before σ points")
    assert [c["setting"] for c in jobs[:10]] == ["sweep28"] * 10
    assert jobs[0]["variant"] == "vm2" and jobs[10]["setting"] == "sweep22"


def test_sigmastar_waits_for_its_constant_then_plans_three_parts(monkeypatch):
    monkeypatch.setattr(P, "SIGMA_STAR", None)
    assert protocol_jobs("sigmastar") == []
    # σ* set, no λ chosen yet: the validation runs, and the untuned models at λ 0.04
    monkeypatch.setattr(P, "SIGMA_STAR", 28.0)
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {})
    jobs = protocol_jobs("sigmastar")
    val = [c for c in jobs if c["name"].startswith("val_")]
    assert len(val) == len(P.SIGMASTAR_LAMBDA_VARIANTS) * len(P.SIGMASTAR_LAMBDAS) == 16
    assert all(P.is_validation_job(c) for c in val)
    untuned = [c for c in jobs if not c["name"].startswith("val_")]
    assert sorted((c["variant"], c["lam"], c["seed"]) for c in untuned) == sorted(
        (v, P.LAMBDA, 0) for v in ("dirnet", "fcnss", "vm1", "ablated"))
    assert not any(P.is_validation_job(c) for c in untuned)
    # λ chosen for three of the four tuned methods
    monkeypatch.setattr(P, "SIGMASTAR_BEST_LAMBDA", {"vm2": 0.02, "metareg": 0.04,
                                                     "ablated_free": 0.08})
    jobs = protocol_jobs("sigmastar")
    val = [c for c in jobs if c["name"].startswith("val_")]
    assert len(val) == 16
    assert all(c["val_every"] == c["steps"] == P.TRAIN_STEPS and c["val_pairs"] == 40
               for c in val)
    main = [c for c in jobs if not c["name"].startswith(("val_", "steps_"))]
    assert sorted((c["variant"], c["lam"], c["seed"]) for c in main) == sorted(
        [(v, lam, s) for v, lam in (("vm2", 0.02), ("metareg", 0.04), ("ablated_free", 0.08))
         for s in (0, 1, 2)] + [(v, P.LAMBDA, 0) for v in ("dirnet", "fcnss", "vm1", "ablated")])
    # the table's runs are new runs: none of them is a validation run
    assert not {c["name"] for c in main} & {c["name"] for c in val}
    long = [c for c in jobs if c["name"].startswith("steps_")]
    assert sorted((c["variant"], c["lam"]) for c in long) == [
        ("ablated_free", 0.08), ("metareg", 0.04), ("vm2", 0.02)]
    assert all(c["plateau"] and c["setting"] == "sweep28" and not P.is_validation_job(c)
               for c in long)
    # a σ* job that is also a sweep job is the same folder with the same config
    sweep = {c["name"]: c for c in protocol_jobs("sweep")}
    shared = [c for c in main if c["name"] in sweep]
    assert shared and all(sweep[c["name"]] == c for c in shared)


def test_sigma_star_is_set_to_a_sweep_sigma():
    assert P.SIGMA_STAR in P.SWEEP_SIGMAS
    assert f"s{P.SIGMA_STAR:g}" in {t["name"] for t in protocol_jobs("sigmastar")[0]["tests"]}


def _env():
    return dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))


def test_quick_sweep_end_to_end_from_the_command_line(tmp_path):
    out = tmp_path / "sweep"
    base = [sys.executable, "-m", "regnp.study", "sweep", "--quick", "--phantom", "--seeds", "0",
            "--steps", "12", "--out", str(out)]
    r = subprocess.run(base + ["--list"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "0 job(s) done, 8 to run" in r.stdout
    r = subprocess.run(base + ["--jobs", "1"], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = protocol_jobs("sweep", seeds=[0], quick=True, phantom=True, steps=12)
    assert len(jobs) == 8                              # 4 models × σ_train ∈ {10, 34}
    matrix = {}
    for c in jobs:
        m = json.loads((out / c["name"] / "metrics.json").read_text())
        assert m["config"] == c and "phantom-svf" in c["train_args"]
        assert m["train"]["steps"] == c["steps"] == 12
        for name, t in m["tests"].items():
            assert len(t["pairs"]["dice_after"]) == 4
            matrix[(c["variant"], c["setting"], name)] = t["summary"]["dice_before"]["mean"]
    assert len(matrix) == 4 * 2 * 2                    # train σ × test σ for every model
    # the larger σ is the harder test set, for every trained network alike (same pairs)
    for v in P.SWEEP_VARIANTS:
        for setting in ("sweep10", "sweep34"):
            assert matrix[(v, setting, "s34")] < matrix[(v, setting, "s10")]
            assert matrix[(v, setting, "s34")] == matrix[("vm2", "sweep10", "s34")]


@pytest.mark.parametrize("sigma", [10.0, 34.0])
def test_sweep_sets_load_with_the_velocity_family(sigma):
    from regnp.data import load_dataset
    ds = load_dataset("phantom-svf", "test", size=64, sigma=sigma, n_pairs=2, n_subjects=2)
    assert ds.field_family == "svf" and ds.name == "phantom-svf"
    u = ds[1]["u"][0]
    body = ds.body(1)
    rms = float(((u.astype("float64") ** 2).sum(0)[body].mean()) ** 0.5)
    assert rms == pytest.approx(sigma * 64 / 256, rel=3e-4)
