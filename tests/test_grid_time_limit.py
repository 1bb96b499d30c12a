"""``--time-limit``: the grid starts only jobs it expects to finish in time, from the speeds of
the jobs already finished; the rest wait for the next run."""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from regnp.checkpoint import checkpoint_step, save_checkpoint
from regnp.study.experiments import parse_duration
from regnp.study.grid import JobDeferred, estimate_seconds, job_status, run_grid, run_job
from regnp.study.protocols import job_config, solver_config

REPO = Path(__file__).resolve().parents[1]


def test_durations_need_units():
    assert parse_duration("2h30m") == 9000
    assert parse_duration("90m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("1h 5m") == 3900
    for bad in ("90", "", "2x", "h", "-1h", "1h-5m", "5mm"):
        with pytest.raises(argparse.ArgumentTypeError, match="duration such as 2h30m"):
            parse_duration(bad)


def _finished(setting, variant, s_per_step, wall, train_seconds, pairs=80, sittings=1):
    """The parts of a finished job's metrics.json that the estimate reads."""
    c = dict(job_config(setting, variant), tests=[{"name": "t", "pairs": pairs}])
    return {"config": c, "wall_seconds_this_sitting": wall,
            "train": {"seconds_per_step": s_per_step, "seconds": train_seconds,
                      "sittings": sittings}}


def test_estimate_from_finished_jobs(tmp_path):
    done = [_finished("liver16", "vm2", 0.1, wall=700.0, train_seconds=600.0),   # eval 100 s / 80
            _finished("liver16", "vm2", 0.3, wall=1960.0, train_seconds=1800.0),  # eval 160 s / 80
            _finished("cardiac", "metareg", 0.5, wall=3000.0, train_seconds=2000.0,
                      sittings=2)]                       # two sittings: not used for the eval rate
    eval_per_pair = (100 / 80 + 160 / 80) / 2
    c = dict(job_config("liver16", "vm2", seed=1), steps=1000, tests=[{"name": "t", "pairs": 40}])
    assert estimate_seconds(c, done) == pytest.approx(0.2 * 1000 + eval_per_pair * 40)
    # same variant on another setting, then any variant
    c2 = dict(c, setting="chest")
    assert estimate_seconds(c2, done) == pytest.approx(0.2 * 1000 + eval_per_pair * 40)
    c3 = dict(c, variant="dirnet")
    assert estimate_seconds(c3, done) == pytest.approx(0.3 * 1000 + eval_per_pair * 40)
    c4 = dict(c, variant="metareg", setting="cardiac")
    assert estimate_seconds(c4, done) == pytest.approx(0.5 * 1000 + eval_per_pair * 40)
    # another σ of the sweep: the same variant on the same training dataset comes before the
    # same variant on other data (here VM-2 on the σ-28 velocity fields: 0.9 s a step)
    svf = _finished("sweep28", "vm2", 0.9, wall=5500.0, train_seconds=5400.0)
    c5 = dict(job_config("sweep22", "vm2", seed=1), steps=1000,
              tests=[{"name": "t", "pairs": 40}])
    ev = 100 / 80                        # the median per-pair scoring time of the three
    assert estimate_seconds(c5, done + [svf]) == pytest.approx(0.9 * 1000 + ev * 40)
    assert estimate_seconds(c, done + [svf]) == pytest.approx(0.2 * 1000 + ev * 40)
    # a partial job: the steps in its checkpoint are done
    save_checkpoint(tmp_path / c["name"] / "checkpoint.npz", {"w": np.zeros(3)}, {"step": 400})
    assert checkpoint_step(tmp_path / c["name"]) == 400
    assert estimate_seconds(c, done, tmp_path) == pytest.approx(0.2 * 600 + eval_per_pair * 40)
    # nothing comparable finished: no estimate
    assert estimate_seconds(c, []) is None
    s = solver_config("liver16")
    assert estimate_seconds(s, done) is None
    solved = {"config": dict(s, tests=[{"pairs": 10}]), "wall_seconds_this_sitting": 50.0}
    assert estimate_seconds(s, done + [solved]) == pytest.approx(5.0 * sum(
        t["pairs"] for t in s["tests"]))


def test_checkpoint_step_of_a_missing_or_broken_file(tmp_path):
    assert checkpoint_step(tmp_path) is None
    (tmp_path / "checkpoint.npz").write_bytes(b"not a zip")
    assert checkpoint_step(tmp_path) is None


def test_a_job_that_would_overrun_is_not_started(tmp_path):
    c = job_config("liver16", "vm2", quick=True, phantom=True)
    with pytest.raises(JobDeferred, match="needs about 60 min, [0-9] min left"):
        run_job(c, tmp_path, deadline=time.time() + 60, estimate=3600)
    folder = tmp_path / c["name"]
    assert not (folder / "running.lock").exists() and not (folder / "metrics.json").exists()
    assert job_status(tmp_path, c) == "todo"


def _finished_vm2_at_10s_a_step(root):
    """A finished quick VM-2 job under ``root`` whose record says 10 s a training step."""
    finished = job_config("liver10", "vm2", quick=True, phantom=True)
    (root / finished["name"]).mkdir()
    (root / finished["name"] / "metrics.json").write_text(json.dumps(
        {"config": finished, "wall_seconds_this_sitting": 11.0 * finished["steps"],
         "train": {"seconds_per_step": 10.0, "seconds": 10.0 * finished["steps"],
                   "sittings": 1}, "tests": {}}))
    return finished


def test_a_variant_new_to_a_data_set_is_scaled_by_the_others_on_both():
    """FCN-SS's first job on the velocity fields: its only finished jobs are on the mixture
    fields (0.1 s a step), where VM-2 and Meta-Reg took 0.2 and 0.3 s a step against 0.5 and
    0.9 on the velocity fields (2.5× and 3×). The estimate carries FCN-SS's speed over with the
    median factor, 2.75×, rather than taking the mixture-field speed as it is."""
    done = [_finished("liver16", "fcnss", 0.1, wall=700.0, train_seconds=600.0),
            _finished("liver16", "vm2", 0.2, wall=1300.0, train_seconds=1200.0),
            _finished("liver10", "vm2", 0.2, wall=1300.0, train_seconds=1200.0),
            _finished("liver16", "metareg", 0.3, wall=1900.0, train_seconds=1800.0),
            _finished("sweep22", "vm2", 0.5, wall=3100.0, train_seconds=3000.0),
            _finished("sweep28", "metareg", 0.9, wall=5500.0, train_seconds=5400.0)]
    ev = 100 / 80                                      # every job above scored 80 pairs in 100 s
    c = dict(job_config("sweep22", "fcnss", seed=0), steps=1000, tests=[{"name": "t", "pairs": 40}])
    assert estimate_seconds(c, done) == pytest.approx(0.1 * (2.5 + 3.0) / 2 * 1000 + ev * 40)
    # with no variant on both data sets the factor is 1: the other data's speed as it is
    only_mixture = [m for m in done if m["config"]["setting"].startswith("liver")]
    assert estimate_seconds(c, only_mixture) == pytest.approx(0.1 * 1000 + ev * 40)
    # a variant with its own jobs on the data needs no factor
    assert estimate_seconds(dict(c, variant="vm2", name="x"), done) == pytest.approx(0.5 * 1000 + ev * 40)


def test_grid_defers_what_does_not_fit_and_runs_what_it_cannot_estimate(tmp_path, capsys):
    """One finished job says VM-2 takes 10 s a step: a second VM-2 job (hundreds of seconds)
    does not fit into 30 s and is left for later; the solver job has no finished solver to be
    estimated from, so it runs (and finishes)."""
    finished = _finished_vm2_at_10s_a_step(tmp_path)
    vm2 = job_config("liver16", "vm2", quick=True, phantom=True)
    solver = solver_config("liver16", quick=True, phantom=True)
    res = run_grid([finished, vm2, solver], tmp_path, progress=False, deadline=time.time() + 30)
    out = capsys.readouterr().out
    assert set(res) == {finished["name"], solver["name"]}
    assert job_status(tmp_path, vm2) == "todo" and job_status(tmp_path, solver) == "done"
    assert "1 job(s) not started" in out and vm2["name"] in out
    assert "start regardless" in out and solver["name"] in out
    # without a time limit the same grid runs the deferred job
    res = run_grid([finished, vm2], tmp_path, progress=False)
    assert job_status(tmp_path, vm2) == "done"


def test_a_new_protocol_is_estimated_from_jobs_other_protocols_finished(tmp_path, capsys):
    """The first sitting of a new protocol (the σ sweep): none of its own jobs has finished,
    but a VM-2 job of another protocol under the same folder says VM-2 takes 10 s a step, so
    the sweep's VM-2 job is deferred rather than started blind; ``--list`` estimates it too."""
    from regnp.study.grid import all_finished
    from regnp.study.protocols import protocol_jobs
    finished = _finished_vm2_at_10s_a_step(tmp_path)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("[]")       # skipped, not fatal
    assert [m["config"]["name"] for m in all_finished(tmp_path)] == [finished["name"]]
    sweep_vm2 = next(c for c in protocol_jobs("sweep", quick=True, phantom=True)
                     if c["variant"] == "vm2")
    res = run_grid([sweep_vm2], tmp_path, progress=False, deadline=time.time() + 30)
    out = capsys.readouterr().out
    assert res == {} and "1 job(s) not started" in out and "start regardless" not in out
    assert job_status(tmp_path, sweep_vm2) == "todo"
    r = subprocess.run([sys.executable, "-m", "regnp.study", "sweep", "--quick", "--phantom",
                        "--list", "--out", str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.endswith(sweep_vm2["name"]))
    assert "~" in line and "?" not in line


def test_cli_refuses_a_duration_without_unit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "regnp.study", "liver", "--quick",
                        "--time-limit", "90"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "duration such as 2h30m" in r.stderr.strip().splitlines()[-1], r.stderr


def test_cpu_hours_count_scoring_and_solver_time():
    from regnp.study.report import _cpu_hours
    trained = {"train": {"steps": 6000, "seconds": 1800.0, "seconds_per_step": 0.3,
                         "sittings": 1}, "eval_seconds": 360.0, "machine": {"threads": 2}}
    older = {"train": {"steps": 6000, "seconds": 1800.0, "seconds_per_step": 0.3,
                       "sittings": 1}, "wall_seconds_this_sitting": 1890.0,
             "machine": {"threads": 1}}                  # no eval_seconds: wall − training
    solver = {"train": None, "eval_seconds": 720.0, "wall_seconds_this_sitting": 720.0,
              "machine": {"threads": 1}}
    assert _cpu_hours([trained]) == pytest.approx((1800 + 360) * 2 / 3600)
    assert _cpu_hours([older]) == pytest.approx(1890 / 3600)
    assert _cpu_hours([solver]) == pytest.approx(0.2)


def test_cost_table_estimates_each_job_left_from_its_variant():
    """Finished on liver σ 16, seed 0, 6,000 steps, 80 s of scoring for 160 pairs: Meta-Reg
    (0.2 s/step), VM-2 (0.1) and VM-1 (0.05). Of the liver protocol's 13 jobs left, Meta-Reg and
    VM-2 (seed 1; σ 10) and VM-1 (σ 10) take their own variant's rate, the 6 others (eq. 12 as
    printed, DIRNet, FCN-SS on both settings) the median rate, 0.1: 3 × 1280 + 3 × 680 + 380 +
    6 × 680 = 10,340 s (the median finished job × 13 would be 8,840 s)."""
    from regnp.study.report import _protocol_cost
    results = {}
    for v, rate in (("metareg", 0.2), ("vm2", 0.1), ("vm1", 0.05)):
        c = job_config("liver16", v)
        assert sum(t["pairs"] for t in c["tests"]) == 160
        results[c["name"]] = {"config": c, "eval_seconds": 80.0, "machine": {"threads": 1},
                              "tests": {},
                              "train": {"steps": 6000, "seconds": rate * 6000,
                                        "seconds_per_step": rate, "sittings": 1}}
    rows = _protocol_cost(results)
    liver = next(r for r in rows if r.startswith("| liver |"))
    cells = [x.strip() for x in liver.strip("|").split("|")]
    assert cells[1] == "3 / 16"
    assert cells[2] == f"{(1280 + 680 + 380) / 3600:.2f}"
    assert cells[3] == f"{10340 / 3600:.1f}" == "2.9"
    # the generated results/README.md carries the same table and the throughput
    from regnp.study.report import readme_block
    block = readme_block(results)
    assert liver in block.splitlines()
    median_job = 680 / 60                        # CPU minutes of the median finished job (VM-2)
    assert f"took {median_job:.0f} CPU minutes" in block


def test_cost_table_names_the_sigmastar_jobs_that_wait_for_a_lambda(monkeypatch):
    """σ*'s table and plateau runs of a method are planned only once its λ is chosen; until
    then the cost table says how many jobs and hours may still come. With VM-2, Meta-Reg and
    the paper's ablation chosen, only eq. 12 as printed waits: one table run (its first seed;
    no plateau run, it is not a core model), estimated at the one finished job's 0.1 s a step
    and 0.5 s of scoring a pair; with Meta-Reg's choice open too, its three seeds and its
    plateau run join."""
    import regnp.study.protocols as protocols
    from regnp.study.protocols import sigmastar_jobs
    from regnp.study.report import _protocol_cost
    c = job_config("sweep22", "vm2")
    results = {c["name"]: {"config": c, "eval_seconds": 0.5 * _pairs(c), "machine": {"threads": 1},
                           "tests": {}, "train": {"steps": 6000, "seconds": 600.0,
                                                  "seconds_per_step": 0.1, "sittings": 1}}}
    monkeypatch.setattr(protocols, "SIGMASTAR_BEST_LAMBDA",
                        {"vm2": 0.04, "metareg": 0.04, "ablated_free": 0.04})
    line = next(r for r in _protocol_cost(results) if r.startswith("Not in the table yet"))
    waiting = [j for j in sigmastar_jobs(best={"metareg_paper": 0.02})
               if j["variant"] == "metareg_paper" and not j.get("val_every")]
    assert [j["name"] for j in waiting] == ["sweep22_metareg_paper_lam0.02_seed0"]
    hours = (0.1 * waiting[0]["steps"] + 0.5 * _pairs(waiting[0])) / 3600
    assert "σ*'s Table 1/2/5 runs of Meta-Reg (eq. 12 as printed) wait" in line   # no plateau run
    assert f"up to 1 more job, about {hours:.1f} CPU hours" in line
    monkeypatch.setattr(protocols, "SIGMASTAR_BEST_LAMBDA", {"vm2": 0.04, "ablated_free": 0.04})
    line = next(r for r in _protocol_cost(results) if r.startswith("Not in the table yet"))
    assert "Table 1/2/5 runs and plateau runs of Meta-Reg, Meta-Reg (eq. 12 as printed) wait" in line
    assert "up to 5 more jobs" in line
    monkeypatch.setattr(protocols, "SIGMASTAR_BEST_LAMBDA", {v: 0.04 for v in protocols.SWEEP_VARIANTS})
    assert not any(r.startswith("Not in the table yet") for r in _protocol_cost(results))


def _pairs(config):
    return sum(t["pairs"] for t in config["tests"])


def test_list_shows_each_job_left_with_its_estimate(tmp_path):
    """``--list``: a finished VM-2 calibration job that ran at 2 s/step makes the two jobs left
    (no finished job of their variant) 2 s × their steps each."""
    from regnp.study.protocols import protocol_jobs
    vm2, metareg, ablated = protocol_jobs("steps", seeds=[0], quick=True, phantom=True)
    (tmp_path / vm2["name"]).mkdir()
    (tmp_path / vm2["name"] / "metrics.json").write_text(json.dumps(
        {"config": vm2, "eval_seconds": 0.0, "tests": {}, "machine": {"threads": 1},
         "train": {"steps": vm2["steps"], "seconds": 2.0 * vm2["steps"],
                   "seconds_per_step": 2.0, "sittings": 1}}))
    r = subprocess.run([sys.executable, "-m", "regnp.study", "steps", "--quick",
                        "--phantom", "--seeds", "0", "--out", str(tmp_path), "--list"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(ln.split() == ["steps", "done", vm2["name"]] for ln in lines), r.stdout
    for c in (metareg, ablated):
        want = f"~{2.0 * c['steps'] / 60:.0f} min"
        assert any(c["name"] in ln and want in ln and "todo" in ln for ln in lines), r.stdout
    total = 2.0 * (metareg["steps"] + ablated["steps"]) / 3600
    assert lines[-1].startswith(f"1 job(s) done, 2 to run: about {total:.1f} job-hours")


def test_cost_table_counts_plateau_runs_at_their_cap_in_their_row_and_in_all(monkeypatch):
    """With one finished job (σ* VM-2, seed 0: 0.1 s a step, 0.5 s of scoring a pair) every other
    training job is estimated at that rate (no other variant has run anywhere). σ*'s row sums
    its jobs left by hand, the three plateau runs at their 20,000-step cap; "all" counts each
    job once and so can never show less than one protocol's row (it used to leave the plateau
    runs out: 10.7 h left in all beside 15.4 in the sweep and σ* rows)."""
    import regnp.study.protocols as protocols
    from regnp.study.protocols import sigmastar_jobs
    from regnp.study.report import _protocol_cost
    monkeypatch.setattr(protocols, "SIGMASTAR_BEST_LAMBDA",
                        {v: 0.04 for v in protocols.SWEEP_VARIANTS})
    c = job_config("sweep22", "vm2")
    results = {c["name"]: {"config": c, "eval_seconds": 0.5 * _pairs(c), "machine": {"threads": 1},
                           "tests": {}, "train": {"steps": 6000, "seconds": 600.0,
                                                  "seconds_per_step": 0.1, "sittings": 1}}}
    left = [j for j in sigmastar_jobs() if j["name"] not in results]
    plateau = [j for j in left if j["name"].startswith("steps_")]
    assert len(plateau) == 3 and all(j["steps"] == 20000 for j in plateau)
    by_hand = sum(0.1 * j["steps"] + 0.5 * _pairs(j) for j in left) / 3600
    rows = _protocol_cost(results)

    def cells(prefix):
        row = next(r for r in rows if r.startswith(prefix))
        return [x.strip() for x in row.strip("|").split("|")]
    star = cells("| sigmastar |")
    assert star[1] == f"1 / {len(left) + 1}"
    assert star[3] == f"{by_hand:.1f}"
    every = cells("| all (each job once) |")
    for r in rows:
        if r.startswith("| ") and not r.startswith(("| Protocol", "| all")):
            assert float(every[3]) >= float(r.strip("|").split("|")[3]), r
    assert any("plateau-rule run counts at its step cap" in r for r in rows)
