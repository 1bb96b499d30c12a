"""Training never loses work: kills at random moments (and inside the checkpoint write) resume to
bit-identical parameters; a run is never clobbered or silently changed on --resume; NaN/Inf,
optimizer overflow and divergence stop with a message naming the last good checkpoint."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from process_helpers import ctrl_c_as_in_a_terminal, run_main

from regnp.checkpoint import load_checkpoint
from regnp.train import TrainingError, config_from_args, parse_args, train

REPO = Path(__file__).resolve().parents[1]
TINY = ["--size", "32", "--enc", "4,8", "--dec", "8,8,8,8", "--kernel-size", "5", "--pairs", "16",
        "--val-pairs", "4"]


def tiny_config(*extra):
    return config_from_args(parse_args(TINY + list(extra)))


def cli(*args, cwd):
    """``python -m regnp.train <args>`` in ``cwd``, run in this process through ``main(argv)``
    (``process_helpers.run_main``); the kills and the Ctrl-C below use real processes."""
    import regnp.train
    code, out, err = run_main(regnp.train.main, list(args), cwd)
    return subprocess.CompletedProcess(args, code, out, err)


def last_line(r):
    return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


# ------------------------------------------------------------------------- crash and resume
TRAINER = textwrap.dedent("""
    import os, signal, sys
    from regnp import checkpoint
    from regnp.train import config_from_args, parse_args, train
    out, steps, kill_save, kill_stage = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    real = checkpoint.save_checkpoint
    count = [0]
    def save(path, arrays, config, on_stage=None):
        count[0] += 1
        def stage(name):            # SIGKILL ourselves inside the write of save number kill_save
            if count[0] == kill_save and name == kill_stage:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(path, arrays, config, on_stage=stage)
    import regnp.train
    regnp.train.save_checkpoint = save
    TINY = ["--size", "32", "--enc", "4,8", "--dec", "8,8,8,8", "--kernel-size", "5",
            "--pairs", "16", "--val-pairs", "4"]
    cfg = config_from_args(parse_args(TINY))
    resume = os.path.exists(os.path.join(out, "checkpoint.npz"))
    train(cfg, steps, out, resume=resume, save_every=1, val_every=5, log_every=1,
          progress=False, overwrite=not resume)
""")


def test_sigkill_at_random_moments_and_inside_the_write_resumes_bit_identical(tmp_path):
    """SIGKILL a training run (save every step) several times — at random moments and inside
    the checkpoint write at each of its stages — and resume each time: the final parameters and
    optimizer state equal an uninterrupted run's, bit for bit, and log.jsonl has each step once."""
    steps = 40
    ref = train(tiny_config(), steps, tmp_path / "ref", save_every=1, val_every=5, log_every=1,
                progress=False)
    out = tmp_path / "killed"
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    rng = np.random.default_rng(1)
    # inside the write: die during the 3rd/4th/5th/6th save of a sitting, at each stage
    plan = [(3, "write"), (4, "verify"), (5, "backup"), (6, "replace")] + [(0, "")] * 4
    kills = 0
    for kill_save, stage in plan:
        p = subprocess.Popen([sys.executable, "-c", TRAINER, str(out), str(steps), str(kill_save),
                              stage or "none"], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill_save == 0:                       # a random moment once training is under way
            t0 = time.time()
            while not (out / "log.jsonl").exists() and time.time() - t0 < 60:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.6))
            p.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=300)
        kills += rc == -signal.SIGKILL
        if rc == 0:
            break
        assert rc == -signal.SIGKILL, p.stderr.read().decode()[-2000:]
        step = load_checkpoint(out / "checkpoint.npz", fallback=False)[1]["step"]
        assert 0 < step <= steps
    assert kills >= 4
    r = subprocess.run([sys.executable, "-c", TRAINER, str(out), str(steps), "0", "none"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, ca = load_checkpoint(tmp_path / "ref" / "checkpoint.npz")
    b, cb = load_checkpoint(out / "checkpoint.npz", fallback=False)
    assert ca["step"] == cb["step"] == steps and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    logged = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == steps    # no step logged twice
    assert [h["step"] for h in cb["history"]] == [h["step"] for h in ca["history"]]
    assert not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------------ clobbering, resume
def test_new_run_in_existing_out_is_refused_unless_resume_or_overwrite(tmp_path):
    r = cli(*TINY, "--steps", "3", "--val-every", "0", "--out", "run", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    ck = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    log = (tmp_path / "run" / "log.jsonl").read_bytes()
    r = cli(*TINY, "--steps", "3", "--out", "run", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "already holds a run" in last_line(r) and "--overwrite" in last_line(r)
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == ck
    assert (tmp_path / "run" / "log.jsonl").read_bytes() == log
    r = cli(*TINY, "--steps", "2", "--val-every", "0", "--out", "run", "--overwrite",
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 2
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 1   # a fresh log


def test_resume_refuses_conflicting_options_and_accepts_safe_ones(tmp_path):
    r = cli(*TINY, "--steps", "3", "--val-every", "0", "--lr", "1e-3", "--out", "run",
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    r = cli("--out", "run", "--resume", "--steps", "5", "--lr", "0.01", "--lambda", "0.5",
            "--model", "vm2", "--seed", "3", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    line = last_line(r)
    for flag in ("--lr", "--lambda", "--model", "--seed"):
        assert flag in line, line
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before
    # only safe options (and options equal to the checkpoint's) given: it continues
    r = cli("--out", "run", "--resume", "--steps", "5", "--lr", "1e-3", "--log-every", "1",
            "--save-every", "2", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 5
    r = cli("--out", "run", "--resume", "--overwrite", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "give one of them" in last_line(r)


def test_api_resume_with_another_config_is_refused(tmp_path):
    train(tiny_config(), 2, tmp_path, save_every=2, val_every=0, progress=False)
    with pytest.raises(TrainingError, match="lr.*checkpoint 0.001, now 0.5"):
        train(tiny_config("--lr", "0.5"), 4, tmp_path, resume=True, val_every=0, progress=False)


def test_log_lines_past_the_checkpoint_are_dropped_on_resume(tmp_path):
    cfg = tiny_config()
    train(dict(cfg), 4, tmp_path, save_every=4, val_every=0, log_every=1, progress=False)
    with open(tmp_path / "log.jsonl", "a") as f:        # a kill after logging 5, 6, before saving
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + json.dumps({"step": 6}) + "\n")
        f.write('{"step": 7, "lo')                        # and a line cut short
    train(dict(cfg), 6, tmp_path, resume=True, save_every=6, val_every=0, log_every=1,
          progress=False)
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# ---------------------------------------------------------------------------- NaN, overflow
def _poison(monkeypatch, at_step, how):
    """Make the objective misbehave from call number ``at_step`` on."""
    from regnp.models import objective
    real = objective.Objective.__call__
    calls = [0]

    def wrapped(self, model, F, M):
        calls[0] += 1
        terms, w, u = real(self, model, F, M)
        if calls[0] >= at_step:
            how(terms, model)
        return terms, w, u
    monkeypatch.setattr(objective.Objective, "__call__", wrapped)


def _nan_similarity(terms, model):
    terms["sim"] = float("nan")


def test_adam_overflow_stops_before_saving_a_non_finite_checkpoint(tmp_path, monkeypatch):
    """A gradient of 1e30 in float32: g² overflows Adam's v to Inf while the loss is finite."""
    def huge_gradient(terms, model):
        name, p, g = next(iter(model.named_parameters()))
        g[...] = np.float32(1e30)
    cfg = tiny_config()
    _poison(monkeypatch, 5, huge_gradient)
    with pytest.raises(TrainingError, match=r"overflowed.*step 5.*checkpoint.*\(step 4\)"):
        train(cfg, 10, tmp_path, save_every=1, val_every=0, progress=False)
    arrays, config = load_checkpoint(tmp_path / "checkpoint.npz")
    assert config["step"] == 4
    assert all(np.all(np.isfinite(v)) for v in arrays.values() if v.dtype.kind == "f")
    monkeypatch.undo()
    res = train(cfg, 6, tmp_path, resume=True, save_every=1, val_every=0, progress=False)
    assert res["steps_done"] == 6                       # the kept checkpoint resumes cleanly


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    def diverge(terms, model):
        terms["loss"] = 1e6
    _poison(monkeypatch, 16, diverge)
    with pytest.raises(TrainingError, match=r"diverged.*step 20.*checkpoint.*\(step 15\)"):
        train(tiny_config(), 100, tmp_path, save_every=1, val_every=0, progress=False,
              divergence_patience=5)
    assert load_checkpoint(tmp_path / "checkpoint.npz")[1]["step"] == 15   # no diverged save


def test_nan_message_names_the_last_saved_not_the_last_logged_step(tmp_path, monkeypatch):
    _poison(monkeypatch, 8, _nan_similarity)
    with pytest.raises(TrainingError, match=r"NaN/Inf at step 8.*checkpoint.*\(step 5\)"):
        train(tiny_config(), 20, tmp_path, save_every=5, log_every=1, val_every=0,
              progress=False)


def test_nan_before_any_save_says_so(tmp_path, monkeypatch):
    _poison(monkeypatch, 2, _nan_similarity)
    with pytest.raises(TrainingError, match="no checkpoint was written yet"):
        train(tiny_config(), 20, tmp_path, save_every=5, val_every=0, progress=False)


def test_validation_runs_on_its_own_schedule_and_the_val_split(tmp_path):
    res = train(tiny_config(), 9, tmp_path, save_every=9, val_every=3, log_every=10,
                progress=False)
    assert [h["step"] for h in res["history"] if "val_dice" in h] == [3, 6, 9]
    assert res["val_ds"].split == "val"


def test_diverging_cli_run_exits_non_zero(tmp_path):
    r = cli(*TINY, "--steps", "300", "--lr", "1", "--val-every", "0", "--divergence-patience",
            "20", "--out", "run", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert last_line(r).startswith("error:")
    assert any(w in last_line(r) for w in ("diverged", "NaN/Inf", "overflowed")), last_line(r)


def test_a_refused_run_writes_nothing_and_overwrite_keeps_the_old_run_until_the_new_starts(tmp_path):
    r = cli(*TINY, "--size", "34", "--steps", "2", "--out", "new", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "not divisible" in last_line(r)
    assert not (tmp_path / "new").exists()                    # no empty folder left behind
    r = cli(*TINY, "--steps", "2", "--val-every", "0", "--out", "run", "--no-progress",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    before = (tmp_path / "run" / "checkpoint.npz").read_bytes()
    r = cli(*TINY, "--size", "34", "--steps", "2", "--out", "run", "--overwrite", "--no-progress",
            cwd=tmp_path)
    assert r.returncode != 0 and "not divisible" in last_line(r)
    assert (tmp_path / "run" / "checkpoint.npz").read_bytes() == before
    r = cli("--resume", "--steps", "3", "--out", "nothing", "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "start a new run without --resume" in last_line(r)


def test_a_resumed_run_can_be_resumed_again_with_its_own_options(tmp_path):
    r = cli(*TINY, "--steps", "2", "--val-every", "0", "--out", "run", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    for steps in ("3", "4"):                       # the record of the options survives a resume
        r = cli("--out", "run", "--resume", "--steps", steps, "--lr", "0.001", "--integrate", "0",
                "--no-progress", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-1500:]
    assert load_checkpoint(tmp_path / "run")[1]["step"] == 4


# ------------------------------------------------- a failed start, Ctrl-C, a damaged checkpoint
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    """A bad σ (met when the first batch is drawn), a full disk at the first save or NaN at step
    2 must not leave a log.jsonl that makes the corrected command be refused until --overwrite."""
    import errno

    import regnp.train

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    failures = [("bad sigma", lambda: tiny_config("--sigma", "80"), ValueError),
                ("disk full", lambda: monkeypatch.setattr(regnp.train, "save_checkpoint",
                                                          disk_full) or tiny_config(), OSError),
                ("nan", lambda: _poison(monkeypatch, 2, _nan_similarity) or tiny_config(),
                 TrainingError)]
    for name, make, error in failures:
        out = tmp_path / name.replace(" ", "_") / "run"         # two new folders
        with pytest.raises(error):
            train(make(), 4, out, save_every=2, log_every=1, val_every=0, progress=False)
        monkeypatch.undo()
        assert not out.parent.exists(), (name, sorted(p.name for p in out.parent.rglob("*")))
        res = train(tiny_config(), 2, out, save_every=2, val_every=0, progress=False)
        assert res["steps_done"] == 2, name          # the corrected call is not refused
    # a folder that existed before keeps existing (only the run's files go)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    monkeypatch.setattr(regnp.train, "save_checkpoint", disk_full)
    with pytest.raises(OSError):
        train(tiny_config(), 2, tmp_path / "mine", save_every=1, val_every=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_failure_after_a_checkpoint_keeps_the_run_resumable(tmp_path, monkeypatch):
    _poison(monkeypatch, 4, _nan_similarity)
    with pytest.raises(TrainingError, match=r"step 4.*\(step 2\)"):
        train(tiny_config(), 6, tmp_path, save_every=2, log_every=1, val_every=0,
              progress=False)
    monkeypatch.undo()
    assert {"checkpoint.npz", "log.jsonl"} <= {p.name for p in tmp_path.iterdir()}
    assert train(tiny_config(), 6, tmp_path, resume=True, val_every=0,
                 progress=False)["steps_done"] == 6


def test_cli_bad_sigma_leaves_no_run_behind(tmp_path):
    r = cli(*TINY, "--sigma", "80", "--steps", "3", "--val-every", "0", "--out", "run",
            "--no-progress", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert last_line(r).startswith("error:") and "sigma" in last_line(r)
    assert not (tmp_path / "run").exists()


def _stop_a_cli_run(tmp_path, sig, setup):
    """Start ``python -m regnp.train`` (a long run, no periodic checkpoint), send it ``sig`` once
    three steps are logged; returns (exit status, its stderr lines)."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "regnp.train", *TINY, "--steps", "100000",
                             "--save-every", "100000", "--log-every", "1", "--val-every", "0",
                             "--out", "run", "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=setup)
    log = tmp_path / "run" / "log.jsonl"
    t0 = time.time()
    while time.time() - t0 < 240 and proc.poll() is None and (
            not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err.strip().splitlines()


def _assert_saved_and_named(tmp_path, lines, how):
    import re
    assert len(lines) == 1, lines[-20:]
    m = re.fullmatch(rf"interrupted \({how}\); (\S+) holds step (\d+); continue with the same "
                     r"command and --resume", lines[0])
    assert m, lines[0]
    assert load_checkpoint(tmp_path / "run", fallback=False)[1]["step"] == int(m[2]) >= 3


def test_ctrl_c_in_the_cli_prints_one_line_exits_130_and_resumes(tmp_path):
    """The README's promise for ``python -m regnp.train``: one line, exit status 130, and the
    step it names is the one in the checkpoint."""
    code, lines = _stop_a_cli_run(tmp_path, signal.SIGINT, ctrl_c_as_in_a_terminal)
    assert code == 130, (code, lines[-20:])
    _assert_saved_and_named(tmp_path, lines, "Ctrl-C")


def _as_a_background_job():
    """``preexec_fn``: SIGINT ignored, as a job started with ``&`` from a script (or ``nohup``
    under one) inherits it — a Ctrl-C never reaches it, SIGTERM (``kill PID``) does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_sigterm_to_a_background_run_saves_its_checkpoint_and_exits_143(tmp_path):
    """``kill PID`` of a background training run: the same orderly stop as Ctrl-C (the step in
    the checkpoint, one line naming SIGTERM), exit status 143 (128 + 15). Before, SIGTERM
    ended the run at once: everything since the last periodic checkpoint was lost (here all of
    it: there is none within 100,000 steps)."""
    code, lines = _stop_a_cli_run(tmp_path, signal.SIGTERM, _as_a_background_job)
    assert code == 143, (code, lines[-20:])
    _assert_saved_and_named(tmp_path, lines, "SIGTERM")


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_resume_from_the_backup_keeps_a_good_backup_and_ends_as_an_uninterrupted_run(tmp_path):
    """checkpoint.npz damaged, resume falls back to checkpoint.prev.npz (with a warning). The
    next save must not rotate the damaged file into the backup's place: at every save a good
    backup remains, and the run ends bit-identical to one never damaged (it redid the step the
    damaged file held)."""
    ref = train(tiny_config(), 6, tmp_path / "ref", save_every=1, val_every=0, progress=False)
    out = tmp_path / "run"
    train(tiny_config(), 3, out, save_every=1, val_every=0, progress=False)
    _corrupt(out / "checkpoint.npz")
    backups = []

    def on_save(step):
        backups.append(load_checkpoint(out / "checkpoint.prev.npz", fallback=False)[1]["step"])
    with pytest.warns(RuntimeWarning, match=r"previous checkpoint .*\(step 2\)"):
        res = train(tiny_config(), 6, out, resume=True, save_every=1, val_every=0,
                    progress=False, on_save=on_save)
    assert backups == [2, 3, 4, 5]                 # never the damaged file
    for k, v in ref["model"].state_dict().items():
        np.testing.assert_array_equal(v, res["model"].state_dict()[k], err_msg=k)


def test_cli_resume_from_the_backup_warns_once_in_one_line(tmp_path):
    r = cli(*TINY, "--steps", "2", "--save-every", "1", "--val-every", "0", "--out", "run",
            "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    _corrupt(tmp_path / "run" / "checkpoint.npz")
    r = cli("--out", "run", "--resume", "--steps", "3", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    said = [line for line in r.stderr.splitlines() if "previous checkpoint" in line]
    assert len(said) == 1 and said[0].startswith("warning: "), r.stderr[-1500:]
    assert load_checkpoint(tmp_path / "run", fallback=False)[1]["step"] == 3


def test_a_run_too_large_for_the_memory_is_refused_before_anything_is_allocated(tmp_path,
                                                                               monkeypatch):
    """The machine is made small (10 MB available) rather than the run huge: were the guard
    missing, these runs would be merely slow or a quick MemoryError, not an OOM kill."""
    import regnp._checks
    monkeypatch.setattr(regnp._checks, "available_memory", lambda: (10_000_000, "a test"))
    with pytest.raises(ValueError, match=r"training step at 256×256 .*needs about"):
        train(tiny_config("--size", "256"), 2, tmp_path / "big", val_every=0, progress=False)
    with pytest.raises(ValueError, match=r"metareg model needs about"):
        train(tiny_config("--kernel-size", "999999"), 2, tmp_path / "big", val_every=0,
              progress=False)
    assert not (tmp_path / "big").exists()
    train(tiny_config(), 2, tmp_path / "small", val_every=0, progress=False)    # 32×32 fits
