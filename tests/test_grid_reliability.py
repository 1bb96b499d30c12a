"""The experiment grid under a user's hands: Ctrl-C with a process pool, job files of the wrong
shape, two grids started together (issue 20, items 1, 4, 5 and 9)."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from process_helpers import ctrl_c_as_in_a_terminal, run_main
from regnp.study import grid
from regnp.study.experiments import main as study_main
from regnp.study.grid import (BadJobFile, GridError, claim_folder, finished_metrics, job_status,
                              read_metrics, run_grid)
from regnp.study.protocols import job_config, protocol_jobs

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = ("interrupted (Ctrl-C); finished jobs are saved, interrupted ones resume from their "
               "checkpoints; run the same command again to continue")


def _env():
    return dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO), MPLBACKEND="Agg")


def _message_lines(err):
    """stderr without its progress bars (tqdm's ``desc:  40%|████  | 4/10 ...`` redraws)."""
    return [ln for ln in re.split(r"[\r\n]+", err) if ln.strip() and not re.search(r"\d+%\|", ln)]


def _interrupt_grid(cmd, cwd, ready, timeout=300, twice=False, sig=signal.SIGINT, group=True,
                    background=False):
    """Start the grid in a process group of its own (as a terminal runs a command), wait until
    ``ready()``, then Ctrl-C the whole group as a terminal does (``twice``: again 0.3 s later,
    as an impatient user does). Returns (status, stderr, seconds from the Ctrl-C to the
    exit). ``sig``, ``group``: another signal, sent to the whole group or (False) to the grid's
    process only; ``background``: SIGINT ignored, as a job started with ``&`` from a script
    inherits it."""
    def setup():
        if background:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            ctrl_c_as_in_a_terminal()
        os.setpgrp()

    def send():
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
    p = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, preexec_fn=setup)
    try:
        t0 = time.time()
        while not ready():
            assert p.poll() is None, p.stderr.read()[-3000:]
            assert time.time() - t0 < timeout, "the grid never got busy"
            time.sleep(0.1)
        send()
        t1 = time.time()
        if twice:
            time.sleep(0.3)
            try:
                send()
            except ProcessLookupError:          # already gone
                pass
        err = p.communicate(timeout=120)[1]
        return p.returncode, err, time.time() - t1
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _sittings(folder):
    path = folder / "sittings.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_ctrl_c_stops_a_two_worker_grid_and_the_rerun_resumes(tmp_path):
    """Ctrl-C (pressed twice) while two pool workers train: exit 130 within seconds, one line,
    no traceback; the queued jobs never start; the running ones keep their checkpoints and
    record their sitting; running the job again resumes it (it once ran on, starting queued
    jobs, and a second Ctrl-C ended it with three tracebacks)."""
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "regnp.study", "lambda", "--quick", "--phantom", "--seeds", "0",
           "--jobs", "2", "--steps", "100", "--out", str(out)]
    jobs = protocol_jobs("lambda", seeds=[0], quick=True, phantom=True, steps=100)
    assert len(jobs) == 4
    folders = [out / c["name"] for c in jobs]

    def both_training():                     # both past their first checkpoint (step 20)
        return sum((f / "checkpoint.npz").exists() for f in folders) >= 2
    code, err, seconds = _interrupt_grid(cmd, tmp_path, both_training, twice=True)
    assert "Traceback" not in err, err[-3000:]
    assert code == 130, err[-3000:]
    assert _message_lines(err) == [INTERRUPTED], err[-3000:]
    assert seconds < 30, f"took {seconds:.0f} s to stop"
    started = [f for f in folders if (f / "log.jsonl").exists() or (f / "sittings.jsonl").exists()]
    assert len(started) == 2, [f.name for f in started]             # the queue did not start
    for f in started:
        if (f / "metrics.json").exists():                           # it finished just in time
            continue
        assert (f / "checkpoint.npz").exists()
        last = _sittings(f)[-1]
        assert last.get("interrupted") and last["steps_run"] == last["to_step"] >= 20, last
    resumed = next(c for c, f in zip(jobs, folders) if f in started
                   and not (f / "metrics.json").exists())
    saved = _sittings(out / resumed["name"])[-1]["to_step"]
    m = grid.run_job(resumed, out)
    now = _sittings(out / resumed["name"])
    assert now[-1]["steps_run"] == 100 - saved and m["train"]["steps"] == 100
    assert m["train"]["sittings"] == 2                              # the interrupted one counts


@pytest.mark.slow
@pytest.mark.parametrize("group", [True, False], ids=["to-the-group", "to-the-grid"])
def test_sigterm_stops_a_background_two_worker_grid_in_order(tmp_path, group):
    """A grid started in the background (SIGINT ignored, so Ctrl-C and ``kill -INT`` never reach
    it) gets SIGTERM: from ``kill PID`` (the grid only; it stops its workers) or from a batch
    system ending an allocation (the whole group). Either way: exit 143 within seconds, one line
    naming SIGTERM, the running jobs' checkpoints saved, their sittings recorded and their locks
    released, the queue not started. Before, ``kill PID`` ended the grid and left its workers
    training on as orphans, and a SIGTERM to the group killed the workers mid-step, losing the
    work since their last checkpoint and leaving their locks behind."""
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "regnp.study", "lambda", "--quick", "--phantom", "--seeds", "0",
           "--jobs", "2", "--steps", "100", "--out", str(out)]
    jobs = protocol_jobs("lambda", seeds=[0], quick=True, phantom=True, steps=100)
    folders = [out / c["name"] for c in jobs]

    def both_training():
        return sum((f / "checkpoint.npz").exists() for f in folders) >= 2
    code, err, seconds = _interrupt_grid(cmd, tmp_path, both_training, sig=signal.SIGTERM,
                                         group=group, background=True)
    assert "Traceback" not in err, err[-3000:]
    assert code == 143, err[-3000:]
    assert _message_lines(err) == [INTERRUPTED.replace("Ctrl-C", "SIGTERM")], err[-3000:]
    assert seconds < 30, f"took {seconds:.0f} s to stop"
    started = [f for f in folders if (f / "log.jsonl").exists() or (f / "sittings.jsonl").exists()]
    assert len(started) == 2, [f.name for f in started]
    for f in started:
        assert not (f / "running.lock").exists(), f.name
        if (f / "metrics.json").exists():                           # it finished just in time
            continue
        assert (f / "checkpoint.npz").exists()
        last = _sittings(f)[-1]
        assert last.get("interrupted") and last["steps_run"] == last["to_step"] >= 20, last


@pytest.mark.slow
def test_ctrl_c_with_one_job_at_a_time_is_one_line_and_130(tmp_path):
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "regnp.study", "steps", "--quick", "--phantom", "--seeds", "0",
           "--jobs", "1", "--steps", "60", "--out", str(out)]
    first = out / protocol_jobs("steps", seeds=[0], quick=True, phantom=True, steps=60)[0]["name"]
    code, err, _ = _interrupt_grid(cmd, tmp_path, lambda: (first / "log.jsonl").exists())
    assert "Traceback" not in err and code == 130, err[-3000:]
    assert _message_lines(err) == [INTERRUPTED], err[-3000:]
    last = _sittings(first)[-1]
    assert last.get("interrupted") and last["seconds"] > 0, last


# ----------------------------------------------------------------------------- job files
def _config():
    return job_config("liver16", "vm2", quick=True, phantom=True)


def _metrics(config):
    pairs = {"id": ["a", "b"], "dice_after": [0.8, 0.9]}
    return {"config": config, "tests": {"s10": {"summary": {"n_pairs": 2}, "pairs": pairs}},
            "train": {"steps": 20, "seconds": 2.0, "seconds_per_step": 0.1}}


@pytest.mark.parametrize("text, problem", [
    ("[]", "holds a JSON list, not an object"),
    ('"hello"', "holds a JSON str, not an object"),
    ('{"config": {"name": "x"', "cannot be read as JSON"),                  # truncated
    ('{"format": "something else"}', "has no job config"),                  # foreign
    (None, "has no results ('tests')"),                                     # no "tests"
])
def test_a_metrics_file_of_the_wrong_shape_is_named_in_one_line(tmp_path, text, problem):
    c = _config()
    folder = tmp_path / c["name"]
    folder.mkdir()
    if text is None:
        text = json.dumps({k: v for k, v in _metrics(c).items() if k != "tests"})
    (folder / "metrics.json").write_text(text)
    with pytest.raises(BadJobFile) as e:
        finished_metrics(tmp_path, c)
    msg = str(e.value)
    assert msg.startswith(str(folder / "metrics.json")) and problem in msg and "\n" not in msg
    with pytest.raises(BadJobFile, match=re.escape(problem)):
        read_metrics(folder / "metrics.json")                 # the report's reader
    assert job_status(tmp_path, c) == "unreadable"


def test_a_metrics_file_of_another_config_is_not_taken_for_not_finished(tmp_path):
    c = _config()
    (tmp_path / c["name"]).mkdir()
    (tmp_path / c["name"] / "metrics.json").write_text(json.dumps(_metrics(dict(c, steps=1))))
    with pytest.raises(BadJobFile, match="another config"):
        finished_metrics(tmp_path, c)
    (tmp_path / c["name"] / "metrics.json").write_text(json.dumps(_metrics(c)))
    assert finished_metrics(tmp_path, c)["tests"]["s10"]["pairs"]["id"] == ["a", "b"]


def test_a_run_sets_an_unreadable_metrics_file_aside_and_reruns_the_job(tmp_path, monkeypatch):
    """Never overwritten: the file is moved aside, byte for byte, with a warning."""
    c = _config()
    claim_folder(tmp_path, c)
    bad = tmp_path / c["name"] / "metrics.json"
    bad.write_text('{"config": {"name": ')                       # truncated
    ran = []
    monkeypatch.setattr(grid, "run_job", lambda config, *a, **k: ran.append(config) or
                        _metrics(config))
    with pytest.warns(UserWarning, match=r"cannot be read as JSON .*moved it to "
                                         r"metrics\.json\.unreadable-\d{8}T\d{6} and the job runs "
                                         r"again"):
        res = run_grid([c], tmp_path, progress=False)
    assert ran == [c] and c["name"] in res
    aside = list((tmp_path / c["name"]).glob("metrics.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"config": {"name": '


def test_a_job_json_of_the_wrong_shape_stops_the_grid_in_one_line(tmp_path):
    c = _config()
    (tmp_path / c["name"]).mkdir()
    (tmp_path / c["name"] / "job.json").write_text('"hello"')
    with pytest.raises(GridError, match=r"job\.json holds a JSON str, not an object; it was not "
                                        r"written by the grid; move it away"):
        run_grid([c], tmp_path, progress=False)
    assert (tmp_path / c["name"] / "job.json").read_text() == '"hello"'


def test_list_shows_an_unreadable_job_instead_of_a_traceback(tmp_path):
    jobs = protocol_jobs("steps", seeds=[0], quick=True, phantom=True)
    (tmp_path / "g" / jobs[0]["name"]).mkdir(parents=True)
    (tmp_path / "g" / jobs[0]["name"] / "metrics.json").write_text("[]")
    (tmp_path / "g" / jobs[1]["name"]).mkdir(parents=True)
    (tmp_path / "g" / jobs[1]["name"] / "job.json").write_text('"hello"')
    status, out, err = run_main(study_main, ["steps", "--quick", "--phantom", "--seeds", "0",
                                             "--list", "--out", "g"], tmp_path)
    assert status == 0 and "Traceback" not in err, err
    assert re.search(rf"unreadable .*{jobs[0]['name']}", out) and \
        re.search(rf"unreadable .*{jobs[1]['name']}", out), out
    assert "2 job(s) have a job.json or metrics.json the grid did not write" in out


# ----------------------------------------------------------------------- two grids at once
RACE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    from regnp.study.grid import JobBusy, acquire_job, claim_folder
    root, go, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    configs = [{"name": f"job{k}", "steps": 1} for k in range(40)]
    while not go.exists():
        time.sleep(0.001)
    held = 0
    for rnd in range(3):
        for c in configs:
            folder = claim_folder(root, c)
            try:
                lock = acquire_job(folder)
            except JobBusy:
                continue
            # holding the lock: nobody else may hold it now
            fd = os.open(folder / "holder", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
            held += 1
            os.unlink(folder / "holder")
            lock.unlink()
    print(held)
""")


def test_two_grids_claiming_jobs_at_once_do_not_collide(tmp_path):
    """Two real processes claim the same 40 job folders three times over, some holding locks
    left by a dead process (taken over by exactly one of them): no error (they once shared one
    temporary name for job.json: 16 FileNotFoundErrors between them), and never two holders of
    one job at once (the O_EXCL 'holder' file would fail)."""
    import platform
    root = tmp_path / "g"
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    for k in range(0, 40, 3):                       # stale locks of a killed grid
        (root / f"job{k}").mkdir(parents=True)
        (root / f"job{k}" / "running.lock").write_text(
            json.dumps({"host": platform.node(), "pid": dead}))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(root), str(go), name],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("a", "b")]
    time.sleep(2.0)                                  # both imported and waiting
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and not err.strip(), err[-3000:]
    assert sum(int(out) for out, _ in results) >= 40            # every job was held by someone
    for k in range(40):
        cfg = json.loads((root / f"job{k}" / "job.json").read_text())
        assert cfg["config"] == {"name": f"job{k}", "steps": 1}
        assert not (root / f"job{k}" / "running.lock").exists()
    assert not list(root.rglob("*.tmp")) and not list(root.rglob("*.stale"))


def test_job_files_are_normal_files_not_private_ones(tmp_path):
    """The temporary file is made by mkstemp (mode 0600); what lands is readable as any file
    the user writes (0666 less the umask), so a shared results folder stays shared."""
    c = job_config("liver16", "vm2", quick=True, phantom=True)
    umask = os.umask(0o022)
    try:
        grid._write_json(tmp_path / "x.json", {"a": 1})
        claim_folder(tmp_path, c)
        lock = grid.acquire_job(tmp_path / c["name"])
    finally:
        os.umask(umask)
    files = [tmp_path / "x.json", tmp_path / c["name"] / "job.json", lock]
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o644, (f.name, oct(f.stat().st_mode))


def test_an_empty_lock_left_by_an_older_version_is_taken_over_once_old(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    lock = folder / "running.lock"
    lock.write_text("")                                # written in two steps, killed between
    with pytest.raises(grid.JobBusy):                  # fresh: perhaps being written right now
        grid.acquire_job(folder)
    old = time.time() - grid.ORPHAN_LOCK_AGE - 5
    os.utime(lock, (old, old))
    assert grid.acquire_job(folder) == lock            # old: nobody's; taken over
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not list(folder.glob(".running.lock.*"))    # the set-aside copy is gone
