"""Experiments as a grid of pure jobs: a job is a small config dict → its own folder → metrics.

A **job** trains one model on one data setting with one λ and one seed, then scores it on the
setting's test pairs. It is a pure function of its config: :func:`run_job` writes everything into
``ROOT/<job name>/`` and returns the metrics. The folder is the job's memory:

==================  ===================================================================
``job.json``        the config (written first; a different config in the same folder is
                    refused, so two grids never mix; one the grid cannot read stops it)
``checkpoint.npz``  training state (atomic, see ``regnp.checkpoint``); an interrupted job
                    resumes from it; deleted when the job finishes (never committed)
``sittings.jsonl``  one line per sitting that trained it: steps run, seconds, machine (a
                    sitting a Ctrl-C ended too, marked ``interrupted``: its time counts)
``metrics.json``    the result; its presence means *finished*, and a finished job is
                    never run again; one the grid cannot read (not JSON, the wrong shape,
                    another config) is moved aside with a warning, never overwritten, and
                    the job runs again
``running.lock``    held while a process runs the job, so two grids sharing a folder
                    never run the same job (a dead process's lock is taken over)
==================  ===================================================================

Two grids may share a folder and start together: every file appears whole and atomically
(a private temporary, then ``os.replace``, or ``os.link`` where only the first writer may win).
A Ctrl-C stops the grid in seconds, with every pool worker: see "Ctrl-C and the pool" below.

Running many jobs is the business of an executor with the ``concurrent.futures`` interface: a
local process pool (``jobs`` worker processes, each limited to ``threads`` threads) or a
``dask.distributed.Client`` connected to a cluster. regnp schedules nothing itself.

Thread counts: on the 2-core development machine one job with 2 threads ran a Meta-Reg step in
133 ms and a VoxelMorph-2 step in 111 ms; two jobs with 1 thread each ran them at the same time in
197 and 161 ms — 11.3 steps/s in all against 8.2 (1.38×), so 2 single-threaded jobs are the
default on 2 cores (measured on CHAOS batches: 40 training steps per model, medians, two
single-threaded processes running at once against one two-threaded process per model).
"""
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

JOB_FORMAT = "regnp-job-1"


class GridError(RuntimeError):
    """A grid cannot run as asked (conflicting folder, bad protocol, scheduler unreachable)."""


class JobBusy(GridError):
    """Another live process is running this job (its folder holds a ``running.lock``)."""


class JobDeferred(GridError):
    """Not started: the job's estimated run time does not fit before the grid's deadline."""


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, TypeError, ValueError):
        return True
    return True


def _create_exclusive(path, obj):
    """Create ``path`` holding the JSON ``obj``, complete from its first instant, or raise
    ``FileExistsError`` when it exists: the text goes to a private temporary file that is then
    hard-linked to ``path`` (``link`` never replaces an existing name, so of two processes
    creating the same file exactly one succeeds, and no reader ever sees it half written)."""
    path = Path(path)
    tmp = _write_temporary(path, obj)
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _take_over_stale(lock, seen):
    """Remove the stale ``lock`` whose content was ``seen`` — and only it. It is first renamed
    to a name of our own, which only one process can do to one file; if what we moved is not
    the stale lock (another process took it over and wrote its own in the meantime), it is
    linked back in place. Returns True when the stale lock is gone."""
    mine = lock.with_name(f".{lock.name}.{os.getpid()}.{time.monotonic_ns()}.stale")
    try:
        os.rename(lock, mine)
    except FileNotFoundError:
        return True                                   # someone else removed it first
    if _read_json(mine) == seen:
        mine.unlink()
        return True
    try:
        os.link(mine, lock)                           # a live lock: put it back
    except FileExistsError:
        pass
    mine.unlink()
    return False


ORPHAN_LOCK_AGE = 60.0     # seconds: an empty running.lock older than this is nobody's


def _age(path):
    """Seconds since ``path`` was last written (0 if it is gone)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def acquire_job(folder):
    """Take the job's ``running.lock`` so two grids sharing an ``--out`` never train the same
    job at once. The lock appears complete and atomically (:func:`_create_exclusive`). A lock
    left by a process that no longer exists on this host (a killed grid) is stale and taken
    over (race-free: :func:`_take_over_stale`), and so is an empty or unreadable one older than
    a minute (left by an older regnp); a lock from another host is respected (delete it by
    hand if that machine is gone). Returns the lock path; raises :class:`JobBusy`."""
    lock = Path(folder) / "running.lock"
    me = {"host": platform.node(), "pid": os.getpid(),
          "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    for _ in range(3):
        try:
            _create_exclusive(lock, me)
            return lock
        except FileExistsError:
            raw = _read_json(lock)
            if raw is None and not lock.exists():
                continue                              # released meanwhile: try again
            other = raw if isinstance(raw, dict) else {}
            if other.get("host") == platform.node() and not _pid_alive(other.get("pid")):
                _take_over_stale(lock, raw)
                continue
            if "host" not in other and _age(lock) > ORPHAN_LOCK_AGE:
                # empty or unreadable: an older regnp wrote its lock in two steps and was
                # killed between them (this one writes it whole, at once), so nobody holds it
                _take_over_stale(lock, raw)
                continue
            raise JobBusy(f"job {Path(folder).name} is being run by pid {other.get('pid', '?')} "
                          f"on {other.get('host', '?')} (since {other.get('since', '?')}); "
                          f"skipped here") from None
    raise JobBusy(f"could not take {lock}")


def job_key(config):
    """A short stable hash of a job's config (what it computes, not where it runs)."""
    text = json.dumps(config, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def git_commit(repo=None):
    """The commit of the code (with ``+dirty`` when the work tree has changes), or None."""
    repo = Path(repo or Path(__file__).resolve().parents[1])
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info():
    import numba
    import numpy as np
    return {"host": platform.node(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "threads": int(numba.get_num_threads()), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__}


def set_threads(n):
    """Limit this process to ``n`` compute threads (Numba kernels and our BLAS worker pool read
    Numba's thread count at run time, so this works after import)."""
    import numba
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _read_json(path):
    """The JSON in ``path``, or None when it is missing or not JSON (for files only this code
    writes whole, such as locks; job files go through :func:`read_job_file`)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _write_temporary(path, obj):
    """Write JSON ``obj`` to a new temporary file of this process beside ``path`` (flushed and
    fsync'ed); returns its path. The name is unique (``mkstemp``), so two grids writing the
    same file never share a temporary."""
    from ..checkpoint import give_normal_mode      # (not at the top: it imports NumPy)
    fd, tmp = tempfile.mkstemp(prefix=f".{Path(path).name}.", suffix=".tmp", dir=Path(path).parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(obj, indent=1, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        give_normal_mode(tmp)             # job files are normal files, not mkstemp's 0600
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_json(path, obj):
    """Write JSON atomically: a temporary file of this process, renamed over ``path``."""
    tmp = _write_temporary(path, obj)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class BadJobFile(GridError):
    """A job's ``job.json`` or ``metrics.json`` exists but is not what the grid writes."""


def read_job_file(path, what):
    """The dict in the job file ``path`` (``what``: "job" or "metrics"), or None when the file
    does not exist. A file that exists but cannot be read, is not JSON, or has the wrong shape
    raises :class:`BadJobFile` with one line naming the file and the problem (never a
    ``KeyError`` later). Shape checked: a JSON object with a ``config`` object holding a
    ``name``; a metrics file also needs ``tests``, an object of test sets each with a
    ``summary`` and per-pair ``pairs``."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadJobFile(f"{path} cannot be read as JSON ({e})") from None
    problem = None
    if not isinstance(obj, dict):
        problem = f"holds a JSON {type(obj).__name__}, not an object"
    elif not isinstance(obj.get("config"), dict) or not isinstance(obj["config"].get("name"), str):
        problem = "has no job config (a 'config' object with a 'name')"
    elif what == "metrics":
        tests = obj.get("tests")
        if not isinstance(tests, dict):
            problem = "has no results ('tests')"
        elif not all(isinstance(t, dict) and isinstance(t.get("summary"), dict)
                     and isinstance(t.get("pairs"), dict) for t in tests.values()):
            problem = "has a test set without its 'summary' and 'pairs'"
    if problem:
        raise BadJobFile(f"{path} {problem}; it was not written by the grid")
    return obj


def read_metrics(path):
    """A finished job's ``metrics.json`` as a dict, checked by :func:`read_job_file` (for the
    report: a bad file raises :class:`BadJobFile` with a one-line reason)."""
    return read_job_file(path, "metrics")


def finished_metrics(root, config):
    """The metrics of ``config``'s finished job under ``root`` (its ``metrics.json``, written for
    this very config), or None when the job has not finished. A ``metrics.json`` that cannot be
    read, has the wrong shape, or belongs to another config raises :class:`BadJobFile`: it is
    never taken for "not finished" (a rerun would overwrite it)."""
    path = Path(root) / config["name"] / "metrics.json"
    m = read_job_file(path, "metrics")
    if m is not None and m["config"] != config:
        raise BadJobFile(f"{path} holds the result of another config for this job name")
    return m


def all_finished(root):
    """The metrics of every finished job under ``root``, whatever protocol planned it (what
    :func:`estimate_seconds` learns speeds from: the first jobs of a new protocol are estimated
    from the variants' speed elsewhere). Files that cannot be read are skipped here; the grid
    and the report name them where they matter."""
    out = []
    for path in sorted(Path(root).glob("*/metrics.json")):
        try:
            m = read_metrics(path)
        except GridError:
            continue
        if m is not None:
            out.append(m)
    return out


def set_aside(path):
    """Move an unreadable job file out of the way (``metrics.json`` →
    ``metrics.json.unreadable-<UTC time>``) and return the new path: it is kept, never
    overwritten."""
    path = Path(path)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    new = path.with_name(f"{path.name}.unreadable-{stamp}")
    k = 1
    while new.exists():
        new = path.with_name(f"{path.name}.unreadable-{stamp}-{k}")
        k += 1
    os.rename(path, new)
    return new


def job_status(root, config):
    """``"done"``, ``"running"`` (locked by a live process), ``"partial"`` (has a checkpoint),
    ``"todo"``, or ``"unreadable"`` (its ``metrics.json`` or ``job.json`` is not what the grid
    writes; a run sets such a metrics file aside and reruns the job)."""
    folder = Path(root) / config["name"]
    try:
        read_job_file(folder / "job.json", "job")
        if finished_metrics(root, config) is not None:
            return "done"
    except BadJobFile:
        return "unreadable"
    lock = _read_json(folder / "running.lock")
    if isinstance(lock, dict) and not (lock.get("host") == platform.node() and not _pid_alive(lock.get("pid"))):
        return "running"
    if (folder / "checkpoint.npz").is_file():
        return "partial"
    return "todo"


def check_owner(root, config):
    """The ``job.json`` of ``config``'s folder (None when there is none yet); a folder that
    belongs to another config is refused (:class:`GridError`) before anything in it is read
    or moved, so a changed protocol never disturbs another job's finished result."""
    folder = Path(root) / config["name"]
    try:
        have = read_job_file(folder / "job.json", "job")
    except BadJobFile as e:
        raise BadJobFile(f"{e}; move it away (the job then starts afresh) or use another "
                         f"--out") from None
    if have is not None and have.get("config") != config:
        diff = sorted(k for k in set(have.get("config", {})) | set(config)
                      if have.get("config", {}).get(k) != config.get(k))
        raise GridError(f"{folder} holds job {config['name']!r} with another config (differs in "
                        f"{', '.join(diff)}); use another --out, or delete the folder to redo it")
    return have


def claim_folder(root, config):
    """Create the job's folder with its ``job.json``, or check that the folder belongs to it."""
    folder = Path(root) / config["name"]
    folder.mkdir(parents=True, exist_ok=True)
    have = check_owner(root, config)
    if have is None:
        try:                                  # two grids may claim it at once: one creates it
            _create_exclusive(folder / "job.json", {"format": JOB_FORMAT, "config": config,
                                                    "key": job_key(config)})
        except FileExistsError:
            return claim_folder(root, config)  # the other's: check it is the same config
    return folder


def _median(xs):
    import numpy as np
    return float(np.median(xs)) if len(xs) else None


def _test_pairs(config):
    return sum(int(t.get("pairs", 0)) for t in config.get("tests", []))


def estimate_seconds(config, finished, root=None):
    """Estimated wall seconds still needed to finish job ``config``, from ``finished`` (the
    metrics dicts of jobs already done, measured under whatever load they ran with), or None
    when nothing comparable has finished.

    Scoring: the median of :func:`eval_seconds` per test pair over finished jobs of the same
    kind (training or solver) × its test pairs; that is all a solver job does. A training job
    adds seconds per step (median of finished training jobs of the same variant and setting,
    else of the same variant trained on the same dataset — the other σ of the sweep, whose
    pairs cost alike — else of the same variant on other data, each scaled by
    :func:`_dataset_factor`, else of all) × the steps still to run (its checkpoint's step
    under ``root`` counts as done).
    """
    kind = config.get("kind", "train")
    same_kind = [m for m in finished if m.get("config", {}).get("kind", "train") == kind]
    per_pair = _median([e / max(1, _test_pairs(m["config"])) for m in same_kind
                        for e in [eval_seconds(m)] if e is not None])
    if kind == "solver":
        return None if per_pair is None else per_pair * _test_pairs(config)
    trained = [m for m in same_kind if (m.get("train") or {}).get("seconds_per_step")]
    variant, dataset = config.get("variant"), _train_dataset(config)
    rate = None
    for same in (lambda c: c.get("variant") == variant
                 and c.get("setting") == config.get("setting"),
                 lambda c: c.get("variant") == variant and dataset is not None
                 and _train_dataset(c) == dataset):
        rate = _median([m["train"]["seconds_per_step"] for m in trained if same(m["config"])])
        if rate is not None:
            break
    if rate is None:       # the variant ran on other data only: carry its speed over
        own = [m for m in trained if m["config"].get("variant") == variant]
        factor = {d: _dataset_factor(trained, d, dataset)          # once per source data set
                  for d in {_train_dataset(m["config"]) for m in own}}
        rate = _median([m["train"]["seconds_per_step"] * factor[_train_dataset(m["config"])]
                        for m in own])
    if rate is None:
        rate = _median([m["train"]["seconds_per_step"] for m in trained])
    if rate is None:
        return None
    done = 0
    if root is not None:
        from ..checkpoint import checkpoint_step
        done = checkpoint_step(Path(root) / config["name"] / "checkpoint.npz") or 0
    steps_left = max(0, int(config.get("steps", 0)) - done)
    return rate * steps_left + (per_pair or 0.0) * _test_pairs(config)


def _dataset_factor(trained, source, target):
    """How many times longer a training step on data set ``target`` took than one on
    ``source``: the median, over the variants that finished jobs on both, of their median
    seconds per step on ``target`` / on ``source``; 1 when no variant ran on both (or either
    is unknown).

    Why: a variant's first job on new data (FCN-SS's on the sweep's velocity fields) was
    estimated from its jobs on other data, which had run (on another machine, with other
    fields) at half the seconds per step of the sweep's jobs: estimated at 9 min, it took 19
    in the grid. The other variants' jobs on both data sets carry that difference over (the
    same finished jobs now give 18 min)."""
    if source is None or target is None or source == target:
        return 1.0
    by = {}
    for m in trained:
        key = (m["config"].get("variant"), _train_dataset(m["config"]))
        by.setdefault(key, []).append(m["train"]["seconds_per_step"])
    ratios = [_median(by[(v, target)]) / _median(xs) for (v, d), xs in by.items()
              if d == source and (v, target) in by]
    return _median(ratios) if ratios else 1.0


def _train_dataset(config):
    """The ``--dataset`` a training job's config trains on, or None."""
    args = list(config.get("train_args") or [])
    i = args.index("--dataset") if "--dataset" in args else -1
    return args[i + 1] if 0 <= i < len(args) - 1 else None


def eval_seconds(metrics):
    """Wall seconds a finished job spent scoring its test pairs (for a solver job: all of its
    time), or None when its record cannot tell: ``eval_seconds`` when stored, else the last
    sitting's wall time minus its training time, known only for a job trained in one sitting."""
    if "eval_seconds" in metrics:
        return metrics["eval_seconds"]
    wall = metrics.get("wall_seconds_this_sitting")
    t = metrics.get("train")
    if wall is None:
        return None
    if t is None:
        return wall
    return max(0.0, wall - t["seconds"]) if t.get("sittings") == 1 else None


def run_job(config, root, data_root=None, threads=None, progress=False, deadline=None,
            estimate=None):
    """Train and score one job (resuming it if it was interrupted); returns its metrics dict.

    ``config`` keys (see ``regnp.study.protocols``): ``name`` (folder), ``train_args`` (the
    ``python -m regnp.train`` options that define the run), ``steps``, ``val_every``,
    ``val_pairs``, ``plateau`` (None or [window, min_gain]), ``tests`` (list of
    ``{"name", "dataset", "sigma", "pairs"}``), ``size``. A finished job returns its stored
    metrics at once.

    ``deadline`` (seconds since the epoch) and ``estimate`` (seconds, see
    :func:`estimate_seconds`): when both are given and the job would not finish by the deadline
    if started now, it is not started and :class:`JobDeferred` is raised. The check is made when
    a worker picks the job up, so shorter jobs later in the queue can still use the time left. A
    job that has started is never stopped by the deadline.
    """
    if threads:
        set_threads(threads)
    folder = claim_folder(root, config)
    done = finished_metrics(root, config)
    if done is not None:
        return done
    if deadline is not None and estimate is not None:
        left = deadline - time.time()
        if estimate > left:
            raise JobDeferred(f"{config['name']}: needs about {estimate / 60:.0f} min, "
                              f"{max(0.0, left) / 60:.0f} min left before the time limit")
    lock = acquire_job(folder)
    try:
        done = finished_metrics(root, config)  # finished while we waited for the lock?
        if done is not None:
            return done
        if config.get("kind") == "solver":
            return _run_solver_job(config, folder, data_root, progress)
        return _run_train_job(config, folder, data_root, progress)
    finally:
        lock.unlink(missing_ok=True)


def _run_train_job(config, folder, data_root, progress):
    from ..checkpoint import load_checkpoint
    from ..data import load_dataset
    from ..evaluate import evaluate_pairs
    from ..train import config_from_args, parse_args, train
    from ..checkpoint import checkpoint_step
    run_cfg = config_from_args(parse_args(list(config["train_args"])))
    resume = (folder / "checkpoint.npz").is_file()
    if not resume:                          # a fresh start: no stale log from a killed attempt
        for stale in ("log.jsonl", "checkpoint.prev.npz"):
            if (folder / stale).exists():
                (folder / stale).unlink()
        _keep_interrupted_sittings(folder)
    start = (checkpoint_step(folder / "checkpoint.npz") or 0) if resume else 0
    t0 = time.time()
    try:
        res = train(run_cfg, config["steps"], folder, resume=resume, data_root=data_root,
                    save_every=config.get("save_every", 250),
                    val_every=config.get("val_every", 0), val_pairs=config.get("val_pairs", 0),
                    log_every=config.get("log_every", 50), progress=progress,
                    overwrite=not resume, plateau=config.get("plateau"))
    except KeyboardInterrupt as e:
        # the sitting's CPU time was spent whether or not its steps were saved: record it, with
        # the steps the checkpoint now holds (train says which step it saved; else read it)
        saved = getattr(e, "saved_step", None)
        saved = checkpoint_step(folder / "checkpoint.npz") if saved is None else saved
        _record_sitting(folder, max(0, (saved or start) - start), time.time() - t0,
                        saved or start, interrupted=True)
        raise
    _record_sitting(folder, res["steps_run"], res["seconds"], res["steps_done"])
    model = res["model"]
    t_eval = time.time()
    tests = {}
    for t in config["tests"]:
        ds = load_dataset(t["dataset"], "test", data_root=data_root, size=config["size"],
                          sigma=t.get("sigma", 10.0))
        recs = evaluate_pairs(model, ds, range(min(t["pairs"], len(ds))))
        tests[t["name"]] = _test_record(recs)
    sittings = _read_sittings(folder)
    _, ck = load_checkpoint(folder / "checkpoint.npz")
    history = ck.get("history", [])
    metrics = {
        "format": JOB_FORMAT, "config": config, "key": job_key(config),
        "train": {"steps": res["steps_done"], "stopped": res["stopped"],
                  "seconds": sum(s["seconds"] for s in sittings), "sittings": len(sittings),
                  "seconds_per_step": (sum(s["seconds"] for s in sittings)
                                       / max(1, sum(s["steps_run"] for s in sittings))),
                  "val_curve": [[h["step"], h["val_dice"], h.get("val_pct_positive_jacobian")]
                                for h in history if "val_dice" in h],
                  "loss_curve": [[h["step"], h["loss"], h["sim"], h["reg"], h.get("meta", 0.0)]
                                 for h in history if "loss" in h],
                  "filter": {k: v for k, v in (history[-1] if history else {}).items()
                             if k.startswith("k_")},
                  # what M does during training (issue 17): every logged step's filter numbers
                  # (sum, Tr K̃, Tr JK̃, symmetry errors, eigenvalue and symbol minima) and the
                  # learned 13×13 filter itself, since the checkpoint is deleted below
                  "filter_curve": _filter_curve(history),
                  "filter_weights": _filter_weights(model)},
        "tests": tests, "eval_seconds": time.time() - t_eval,
        "machine": machine_info(), "commit": git_commit(),
        "wall_seconds_this_sitting": time.time() - t0,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(folder / "metrics.json", metrics)
    for p in (folder / "checkpoint.npz", folder / "checkpoint.prev.npz"):
        if p.exists():
            p.unlink()                       # the result is kept; the weights are not needed
    return metrics


def _record_sitting(folder, steps_run, seconds, to_step, interrupted=False):
    """Append one line to the job's ``sittings.jsonl``: steps run, wall seconds, the step the
    job reached, the machine; ``interrupted`` for a sitting a Ctrl-C ended."""
    sitting = {"steps_run": int(steps_run), "seconds": float(seconds), "to_step": int(to_step),
               "machine": platform.node(),
               "ended": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if interrupted:
        sitting["interrupted"] = True
    with open(Path(folder) / "sittings.jsonl", "a") as f:
        f.write(json.dumps(sitting) + "\n")


def _read_sittings(folder):
    """The job's sittings (``sittings.jsonl``), skipping lines that are not a sitting record
    (a line cut short by a killed writer)."""
    path = Path(folder) / "sittings.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            s = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(s, dict) and isinstance(s.get("steps_run"), int) \
                and isinstance(s.get("seconds"), (int, float)):
            out.append(s)
    return out


def _keep_interrupted_sittings(folder):
    """A fresh start (no checkpoint) drops the sittings of an earlier, finished or killed
    attempt, but keeps those a Ctrl-C ended: their time was spent on this job and is counted."""
    path = Path(folder) / "sittings.jsonl"
    if path.exists():
        kept = [s for s in _read_sittings(folder) if s.get("interrupted")]
        path.write_text("".join(json.dumps(s) + "\n" for s in kept))


def _filter_curve(history):
    """``{"keys": [...], "rows": [[step, value per key], ...]}`` of the ``k_*`` filter
    diagnostics at every logged step (empty for models without a 13×13 filter)."""
    keys = sorted({k for h in history for k in h if k.startswith("k_")})
    rows = [[h["step"]] + [h.get(k) for k in keys] for h in history
            if "step" in h and any(k in h for k in keys)]
    return {"keys": keys, "rows": rows} if keys else {}


def _filter_weights(model):
    """The learned filter(s) K̃ the model applies, ``(nf, k, k)`` as nested lists of floats
    rounded to 6 significant digits (a few KB), or None for models without one."""
    import numpy as np
    meta = getattr(model, "meta", None)
    if meta is None or not hasattr(meta, "effective_filter"):
        return None
    K = np.asarray(meta.effective_filter(), dtype=np.float64)
    return [[[float(f"{v:.6g}") for v in row] for row in f] for f in K]


def _test_record(recs):
    """A test set's results as stored in metrics.json: the summary and per-pair lists (for
    t-tests and per-label tables later, without rerunning anything)."""
    from ..evaluate import summarize_records
    return {
        "summary": summarize_records(recs),
        "pairs": {k: [r[k] for r in recs] for k in ("id", "dice_before", "dice_after",
                                                     "pct_positive_jacobian", "min_jacobian",
                                                     "seconds")},
        "dice_after_per_label": {lab: [r["dice_after_per_label"][lab] for r in recs]
                                 for lab in (recs[0]["dice_after_per_label"] if recs else {})},
    }


def _run_solver_job(config, folder, data_root, progress=False):
    """The classical eq. 6 solver (L-BFGS over α, Gaussian kernel) on each test set's pairs,
    scored by the same ``evaluate_pairs`` as the networks."""
    from ..data import load_dataset
    from ..evaluate import evaluate_pairs
    from ..rkhs.solver import register_rkhs
    t0 = time.time()
    tests = {}
    for t in config["tests"]:
        ds = load_dataset(t["dataset"], "test", data_root=data_root, size=config["size"],
                          sigma=t.get("sigma", 10.0))
        recs = evaluate_pairs(None, ds, range(min(t["pairs"], len(ds))), progress=progress,
                              desc=f"eq. 6 solver, {t['name']}",
                              register=lambda F, M: register_rkhs(
                                  F, M, width=config["kernel_width"]).u)
        tests[t["name"]] = _test_record(recs)
    metrics = {"format": JOB_FORMAT, "config": config, "key": job_key(config),
               "train": None, "tests": tests, "eval_seconds": time.time() - t0,
               "machine": machine_info(), "commit": git_commit(),
               "wall_seconds_this_sitting": time.time() - t0,
               "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _write_json(folder / "metrics.json", metrics)
    return metrics


# ------------------------------------------------------------------------ Ctrl-C and the pool
# A Ctrl-C in a terminal reaches every process of the foreground group: the grid and its pool
# workers. Left to Python's defaults, an idle worker dies with a traceback, a busy one hands the
# KeyboardInterrupt back as its job's result and takes the next job, and the pool's shutdown
# waits for every queued job. So: workers ignore SIGINT while idle; while a job runs, its first
# Ctrl-C (from the terminal, or relayed by the grid through the pool's stop event) interrupts
# it — training saves its checkpoint — and later ones are ignored; a job picked up after the
# stop never starts. The grid sets the stop event, cancels the queue and waits for the running
# jobs to save. SIGTERM (`kill PID` of the grid, or of its whole process group as a batch
# system does) takes the same path: the grid hears it as a Ctrl-C (``_cli.ctrl_c_delivered``),
# and workers ignore it while idle and stop their job on it once, like a Ctrl-C. Before, a
# SIGTERM to the group killed the workers mid-step and left the jobs' locks behind.
_WORKER = {"stop": None, "running": False}


class JobCancelled(GridError):
    """Not started: the grid was stopped (Ctrl-C or SIGTERM) before this job began."""


class JobInterrupted(GridError):
    """The job was stopped (Ctrl-C or SIGTERM); it resumes from its checkpoint on the next
    run."""


def _worker_init(threads, stop=None):
    set_threads(threads)
    if stop is None:
        return
    import signal
    import threading
    _WORKER["stop"] = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # idle: the grid decides what stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def relay():
        stop.wait()
        if _WORKER["running"]:                          # does nothing once SIGINT is ignored
            import _thread
            _thread.interrupt_main()
    threading.Thread(target=relay, daemon=True, name="regnp-stop-relay").start()


def run_pool_job(config, *args, **kwargs):
    """:func:`run_job` as a pool worker runs it (see the comment above); elsewhere (a Dask
    worker, this process) the same as :func:`run_job`. Raises :class:`JobCancelled` for a job
    picked up after a stop (Ctrl-C or SIGTERM) and :class:`JobInterrupted` for one it stopped."""
    stop = _WORKER["stop"]
    if stop is None:
        return run_job(config, *args, **kwargs)
    import signal

    from .._cli import ctrl_c_delivered
    if stop.is_set():
        raise JobCancelled(f"{config['name']}: not started (the grid was stopped)")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)      # ctrl_c_delivered takes it over
    _WORKER["running"] = True
    try:
        with ctrl_c_delivered(once=True):
            if stop.is_set():                  # the stop came between the check and here
                raise KeyboardInterrupt
            return run_job(config, *args, **kwargs)
    except KeyboardInterrupt:
        raise JobInterrupted(f"{config['name']}: interrupted; it resumes from its "
                             f"checkpoint on the next run") from None
    finally:
        _WORKER["running"] = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def local_executor(jobs, threads):
    """A process pool of ``jobs`` workers with ``threads`` compute threads each; its
    ``stop_event`` tells the workers to stop (see :func:`stop_executor`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                               initargs=(threads, stop))
    pool.stop_event = stop
    return pool


def stop_executor(executor, futures):
    """After a Ctrl-C: start no further job, interrupt the running ones and wait until they
    have saved their checkpoints (a local pool), or cancel the futures (Dask)."""
    from .._cli import interrupt_handled
    interrupt_handled()                        # the grid has heard it: no re-raise while waiting
    stop = getattr(executor, "stop_event", None)
    if stop is not None:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
    elif hasattr(executor, "cancel"):
        executor.cancel(list(futures))
    else:
        for f in futures:
            f.cancel()


def dask_executor(address):
    """A ``dask.distributed.Client`` for a running scheduler (``dask scheduler``)."""
    try:
        from distributed import Client
    except ImportError:
        raise GridError("--scheduler needs dask.distributed: pip install -e \".[cluster]\"") from None
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise GridError(f"cannot reach the Dask scheduler at {address}: {e}") from None


def _as_completed(executor, futures):
    if type(executor).__module__.startswith("distributed"):
        from distributed import as_completed
        return as_completed(futures)
    from concurrent.futures import as_completed
    return as_completed(futures)


def _finished_or_set_aside(root, config):
    """:func:`finished_metrics`, except that a ``metrics.json`` the grid cannot use is moved
    aside (kept, with a warning) so the job runs again instead of stopping the grid."""
    try:
        return finished_metrics(root, config)
    except BadJobFile as e:
        moved = set_aside(Path(root) / config["name"] / "metrics.json")
        warnings.warn(f"{e}; moved it to {moved.name} and the job runs again")
        return None


def run_grid(configs, root, executor=None, data_root=None, threads=None, progress=True,
             on_result=None, deadline=None):
    """Run every unfinished job of ``configs``; returns ``{name: metrics}`` for all of them.

    Finished jobs are read from their folders and skipped; the others are submitted to
    ``executor`` (any ``concurrent.futures.Executor``-like object, e.g. a process pool or a
    ``dask.distributed.Client``) or run here one after the other when it is None. ``on_result``
    is called with each newly finished job's metrics (the CLI prints a one-line summary). A
    failed job does not stop the others; the failures are raised together at the end.

    ``deadline`` (seconds since the epoch, or None): start only jobs expected to finish by then
    (:func:`estimate_seconds` from the jobs finished so far; a job with no estimate starts
    anyway). The others are left for the next run, which is the same command again.
    """
    from tqdm import tqdm

    names = [c["name"] for c in configs]
    if len(set(names)) != len(names):
        raise GridError("two jobs share a folder name: " + ", ".join(
            sorted({n for n in names if names.count(n) > 1})))
    root = Path(root)
    results, todo = {}, []
    for c in configs:
        check_owner(root, c)                      # another config's folder: refuse, touch nothing
        m = _finished_or_set_aside(root, c)
        if m is not None:
            results[c["name"]] = m
        else:
            claim_folder(root, c)                 # refuse conflicts before any work starts
            todo.append(c)
    estimates = {}
    if deadline is not None:
        finished = all_finished(root)
        estimates = {c["name"]: estimate_seconds(c, finished, root) for c in todo}
        unknown = [n for n, e in estimates.items() if e is None]
        if unknown:
            print(f"time limit: {len(unknown)} job(s) have no finished job to estimate their "
                  f"time from and start regardless ({', '.join(unknown[:3])}"
                  f"{' …' if len(unknown) > 3 else ''})")
    bar = tqdm(total=len(configs), initial=len(results), desc="jobs", unit="job",
               disable=not progress, dynamic_ncols=True)
    errors, busy, deferred = {}, [], []
    try:
        if executor is None:
            for c in todo:
                try:
                    m = run_job(c, root, data_root, threads, progress=progress,
                                deadline=deadline, estimate=estimates.get(c["name"]))
                except JobDeferred:
                    deferred.append(c["name"])
                    continue
                except JobBusy:
                    busy.append(c["name"])
                    bar.update(1)
                    continue
                except Exception as e:          # noqa: BLE001 — reported below, grid goes on
                    errors[c["name"]] = e
                    continue
                results[c["name"]] = m
                bar.update(1)
                if on_result:
                    on_result(m)
        else:
            futures = {}
            try:
                for c in todo:
                    futures[executor.submit(run_pool_job, c, str(root), data_root, threads,
                                            deadline=deadline,
                                            estimate=estimates.get(c["name"]))] = c["name"]
                for fut in _as_completed(executor, list(futures)):
                    name = futures[fut]
                    try:
                        m = fut.result()
                    except (JobCancelled, JobInterrupted, KeyboardInterrupt):
                        raise KeyboardInterrupt from None  # a worker heard Ctrl-C first
                    except JobDeferred:
                        deferred.append(name)
                        continue
                    except JobBusy:
                        busy.append(name)
                        bar.update(1)
                        continue
                    except Exception as e:          # noqa: BLE001
                        errors[name] = e
                        continue
                    results[name] = m
                    bar.update(1)
                    if on_result:
                        on_result(m)
            except KeyboardInterrupt:
                stop_executor(executor, futures)
                raise
    finally:
        bar.close()
    if busy:
        print(f"{len(busy)} job(s) skipped: another live process is running them "
              f"({', '.join(busy[:4])}{' …' if len(busy) > 4 else ''})")
    if deferred:
        print(f"{len(deferred)} job(s) not started: they would not finish before the time limit "
              f"({', '.join(deferred[:4])}{' …' if len(deferred) > 4 else ''}); run the same "
              f"command again to continue")
    if errors:
        lines = [f"{n}: {type(e).__name__}: {e}" for n, e in errors.items()]
        raise GridError(f"{len(errors)} job(s) failed (the others are saved; rerun to retry):\n  "
                        + "\n  ".join(lines))
    return results
