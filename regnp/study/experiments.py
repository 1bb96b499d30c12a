"""The paper's experiments as a resumable grid of jobs, and the report built from their JSON.

    python -m regnp.study PROTOCOL [--quick] [--jobs N] [--scheduler tcp://HOST:PORT]
                                         [--seeds 0 1] [--out results/runs]
                                         [--time-limit 2h30m]
    python -m regnp.study report [--out results/runs] [--tables …] [--readme …] [--figures …]
    python -m regnp.study transfer [--steps 600] [--size 128] [--data-root DIR]

PROTOCOL is one of ``steps liver cardiac chest ablation lambda rkhs diffeo sweep sigmastar all``
(see ``regnp.study.protocols``; ``all`` is the paper's grid, without the long ``steps`` runs and
the deformation-size study ``sweep``/``sigmastar``). Each job trains one model in its own folder under ``--out`` and writes
``metrics.json`` when it finishes; a finished job is skipped, an interrupted one resumes from
its checkpoint, so the command can simply be run again after a crash or on another day. Jobs
run in ``--jobs`` local worker processes (default: one per core, one thread each — faster on 2
cores than one job with 2 threads) or on a Dask cluster (``--scheduler``). ``report`` rebuilds
``results/TABLES.md``, ``results/README.md`` and the figures from the JSON files alone (see
``regnp.study.report`` for where it writes and what it refuses).

``transfer``: does a network trained only on the embedded phantom register real abdominal MRI?
Trains Meta-Reg (default options; 600 steps at 128×128 unless told otherwise) once on phantom
pairs and once on CHAOS training slices, with the same σ, size, steps and seed, then evaluates
both on the CHAOS test pairs (subjects never seen) and the phantom test pairs. Writes
``figures/licensed/transfer_phantom_to_chaos.png`` (git-ignored: it shows CHAOS pixels) and
``runs/transfer/results.json`` under the current directory.
"""
import argparse
import json
import os
import shlex
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def transfer(steps=600, size=128, sigma=10.0, data_root=None, out=None, pairs=40, seed=0,
             fig_dir=None, progress=True):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data import load_dataset
    from ..evaluate import evaluate_pairs, summarize_records
    from ..ops.warp import warp_forward
    from ..train import config_from_args, parse_args, train

    from .._checks import check_memory, estimate_pair_bytes
    # the sets are loaded before train() checks its own needs: refuse an impossible size first
    check_memory(estimate_pair_bytes((size, size)), f"a {size}×{size} pair",
                 "use a smaller --size (the default is 128)")
    out = Path(out or Path("runs") / "transfer")          # under the current directory
    test = {name: load_dataset(name, "test", data_root=data_root, size=size, sigma=sigma)
            for name in ("phantom", "chaos")}
    results, models = {}, {}
    for train_set in ("phantom", "chaos"):
        cfg = config_from_args(parse_args(["--dataset", train_set, "--size", str(size),
                                           "--sigma", str(sigma), "--seed", str(seed)]))
        res = train(cfg, steps, out / f"train_{train_set}", data_root=data_root,
                    save_every=steps, val_every=0, progress=progress, overwrite=True)
        models[train_set] = res["model"]
        for test_set, ds in test.items():
            recs = evaluate_pairs(res["model"], ds, range(min(pairs, len(ds))), progress=progress,
                                  desc=f"{train_set}→{test_set}")
            results[f"{train_set}->{test_set}"] = {"summary": summarize_records(recs),
                                                    "train_seconds": res["seconds"]}
            s = results[f"{train_set}->{test_set}"]["summary"]
            print(f"trained on {train_set:>7}, tested on {test_set:>7}: Dice "
                  f"{s['dice_before']['mean']:.2f} → {s['dice_after']['mean']:.2f} ± "
                  f"{s['dice_after']['std']:.2f} %, |J|>0 {s['pct_positive_jacobian']['mean']:.2f} %")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"steps": steps, "size": size, "sigma": sigma, "pairs": pairs, "results": results},
        indent=1))

    fig, ax = plt.subplots(1, 4, figsize=(18, 4.3), gridspec_kw={"width_ratios": [1.4, 1, 1, 1]})
    keys = list(results)
    x = np.arange(len(keys))
    before = [results[k]["summary"]["dice_before"]["mean"] for k in keys]
    after = [results[k]["summary"]["dice_after"]["mean"] for k in keys]
    err = [results[k]["summary"]["dice_after"]["std"] for k in keys]
    ax[0].bar(x - 0.2, before, 0.4, label="before", color="lightgray")
    ax[0].bar(x + 0.2, after, 0.4, yerr=err, label="after", color="tab:blue")
    ax[0].set_xticks(x, [k.replace("->", "\n→ ") for k in keys], fontsize=8)
    ax[0].set_ylim(50, 100)
    ax[0].set_ylabel("liver + spleen Dice (%)")
    ax[0].set_title(f"Meta-Reg, {steps} steps, {size}², σ = {sigma:g}")
    ax[0].legend()
    b = test["chaos"].batch([0])
    for a, (name, model) in zip(ax[2:], models.items()):
        _, u, _ = model.forward(b["fixed"], b["moving"])
        w = warp_forward(b["moving"], u)[0]
        a.imshow(np.abs(b["fixed"][0, 0] - w[0, 0]), cmap="magma", vmin=0, vmax=0.5)
        a.set_title(f"|F − warped|, model trained on {name}")
    ax[1].imshow(np.abs(b["fixed"][0, 0] - b["moving"][0, 0]), cmap="magma", vmin=0, vmax=0.5)
    ax[1].set_title("a CHAOS test pair: |F − M| before")
    for a in ax[1:]:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    # the figure shows CHAOS pixels (CC BY-NC-SA): a git-ignored folder, never committed
    path = Path(fig_dir or REPO / "figures" / "licensed") / "transfer_phantom_to_chaos.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path} and {out / 'results.json'}")
    return results


def _summary_line(m):
    """One line per finished job: name, Dice per test set, folding, time."""
    parts = []
    for name, t in m["tests"].items():
        s = t["summary"]
        parts.append(f"{name}: Dice {s['dice_before']['mean']:.1f} → {s['dice_after']['mean']:.2f} "
                     f"± {s['dice_after']['std']:.2f} %, |J|>0 {s['pct_positive_jacobian']['mean']:.2f} %")
    tr = m.get("train")
    tail = (f"; {tr['steps']} steps in {tr['seconds'] / 60:.1f} min" if tr else "")
    return f"{m['config']['name']}: " + "; ".join(parts) + tail


def _default_jobs():
    return max(1, os.cpu_count() or 1)


def run_protocols(protocols, out, quick=False, seeds=None, all_seeds=False, steps=None,
                  phantom=False, jobs=None, threads=None, scheduler=None, data_root=None,
                  progress=True, executor=None, deadline=None):
    """Expand ``protocols`` into jobs (shared jobs once) and run the unfinished ones.

    ``executor``: an Executor-like object to use as is (tests pass a Dask LocalCluster's
    client); otherwise ``scheduler`` (a Dask address), else a local pool of ``jobs`` processes
    with ``threads`` threads each (``jobs=1`` runs in this process). ``deadline`` (seconds since
    the epoch): start only the jobs expected to finish by then (``grid.run_grid``). Returns
    ``{name: metrics}``.
    """
    from .grid import dask_executor, local_executor, run_grid
    from .protocols import SEEDS, priority, protocol_jobs
    configs, seen = [], set()
    for proto in protocols:
        for c in protocol_jobs(proto, seeds=seeds or SEEDS, quick=quick, steps=steps,
                               phantom=phantom, all_seeds=all_seeds):
            if c["name"] not in seen:
                seen.add(c["name"])
                configs.append(c)
    if len(protocols) > 1:                  # several protocols: the most important jobs first
        configs.sort(key=priority)
    cores = os.cpu_count() or 1
    jobs = jobs or _default_jobs()
    threads = threads or max(1, cores // jobs)
    own = executor is None
    if own and scheduler:
        executor = dask_executor(scheduler)
    elif own and jobs > 1:
        executor = local_executor(jobs, threads)
    try:
        return run_grid(configs, out, executor=executor, data_root=data_root,
                        threads=None if scheduler else threads, progress=progress,
                        on_result=lambda m: print(_summary_line(m), flush=True),
                        deadline=deadline)
    finally:
        if own and executor is not None:
            if hasattr(executor, "shutdown"):
                executor.shutdown()
            if hasattr(executor, "close"):
                executor.close()


def _seed(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer ≥ 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"a seed is an integer ≥ 0, got {v}")
    return v


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text):
    """``"2h30m"``, ``"90m"``, ``"1.5h"``, ``"45s"`` → seconds (float). Every number needs a
    unit (h, m or s), so "90" is refused rather than guessed."""
    import re
    t = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)([hms])", t)
    if not t or "".join(n + u for n, u in parts) != t:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 2h30m, 90m, 1.5h or 45s, got {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def main(argv=None):
    """The command line (``_cli.run_cli``): a bad option or job file is one ``error:`` line and
    exit status 1, a warning one ``warning:`` line, Ctrl-C one line and exit status 130 — with
    ``--jobs 2`` too: queued jobs are not started, running ones save their checkpoints."""
    from .._cli import run_cli
    return run_cli(lambda: _main(argv), "finished jobs are saved, interrupted ones resume from "
                                        "their checkpoints; run the same command again to continue")


def _main(argv=None):
    from .protocols import PROTOCOLS, SEEDS
    p = argparse.ArgumentParser(prog="python -m regnp.study",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="experiment", required=True)
    for proto in PROTOCOLS + ("all",):
        g = sub.add_parser(proto, help=f"run the {proto} protocol" if proto != "all"
                           else "the paper's grid: every protocol but steps, sweep and "
                                "sigmastar, most important first")
        g.add_argument("--quick", action="store_true",
                       help="64×64, a few steps and pairs: minutes (results go to runs/grid-quick)")
        g.add_argument("--jobs", type=_positive_int, default=None,
                       help="local worker processes (default: one per core)")
        g.add_argument("--threads", type=_positive_int, default=None,
                       help="threads per job (default: cores / jobs)")
        g.add_argument("--scheduler", default=None,
                       help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
        g.add_argument("--seeds", type=_seed, nargs="+", default=list(SEEDS),
                       help="training seeds of Meta-Reg, VM-2 and the ablated network "
                            "(other models use the first)")
        g.add_argument("--all-seeds", action="store_true", help="every model with every seed")
        g.add_argument("--steps", type=_positive_int, default=None,
                       help="override the training length (default: the protocol's)")
        g.add_argument("--phantom", action="store_true",
                       help="use the embedded phantom in place of every real set (no data needed)")
        g.add_argument("--out", default=None, help="job folders (default results/runs, or "
                                                   "runs/grid-quick with --quick)")
        g.add_argument("--data-root", default=None)
        g.add_argument("--list", action="store_true", help="list the jobs and their status only")
        g.add_argument("--time-limit", type=parse_duration, default=None, metavar="DURATION",
                       help="e.g. 2h30m: start only jobs expected to finish within this time "
                            "(estimated from the finished jobs; running jobs are never stopped, "
                            "the rest wait for the next run)")
    r = sub.add_parser("report", help="rebuild results/TABLES.md, results/README.md and the "
                                          "figures from the JSON")
    r.add_argument("--out", default="results/runs", help="the grid's job folders")
    r.add_argument("--tables", default=None, help="output (default: TABLES.md beside --out)")
    r.add_argument("--readme", default=None, help="the results page (default: README.md beside "
                                                  "the tables)")
    r.add_argument("--figures", default=None,
                   help="folder for the result plots (default: the repository's figures/ for "
                        "its own results/TABLES.md, else figures/ beside the tables)")
    t = sub.add_parser("transfer", help="phantom-trained vs CHAOS-trained Meta-Reg on CHAOS")
    t.add_argument("--steps", type=_positive_int, default=600)
    t.add_argument("--size", type=_positive_int, default=128)
    t.add_argument("--sigma", type=float, default=10.0)
    t.add_argument("--pairs", type=_positive_int, default=40, help="test pairs per set")
    t.add_argument("--data-root", default=None)
    t.add_argument("--out", default=None)
    t.add_argument("--seed", type=_seed, default=0)
    a = p.parse_args(argv)
    from .grid import GridError
    from ..train import TrainingError
    try:
        if a.experiment == "transfer":
            transfer(a.steps, a.size, a.sigma, a.data_root, a.out, a.pairs, seed=a.seed)
            return
        if a.experiment == "report":
            from .report import run_report
            for path in run_report(a.out, a.tables, a.figures, a.readme):
                print(f"wrote {path}")
            return
        # `all` is the paper's grid; the long runs and the deformation-size study run by name
        protos = ([x for x in PROTOCOLS if x not in ("steps", "sweep", "sigmastar")]
                  if a.experiment == "all" else [a.experiment])
        out = Path(a.out or ("runs/grid-quick" if a.quick else "results/runs"))
        if out.exists() and not out.is_dir():
            raise GridError(f"--out {out} is a file; give a folder")
        if a.list:
            from .grid import all_finished, estimate_seconds, finished_metrics, job_status
            from .protocols import protocol_jobs
            listed = [(proto, c, job_status(out, c)) for proto in protos
                      for c in protocol_jobs(proto, seeds=a.seeds, quick=a.quick, steps=a.steps,
                                             phantom=a.phantom, all_seeds=a.all_seeds)]
            finished = {c["name"]: finished_metrics(out, c)
                        for _, c, st in listed if st == "done"}
            speeds = all_finished(out)          # every finished job, not only the listed ones
            left = {}                            # a job shared by two protocols counts once
            for proto, c, st in listed:
                est = None if st == "done" else estimate_seconds(c, speeds, out)
                if st != "done":
                    left[c["name"]] = est or 0.0
                when = "" if st == "done" else ("    ?" if est is None else f"~{est / 60:.0f} min")
                print(f"{proto:>9}  {st:>7}  {when:>8}  {c['name']}")
            bad = sorted({c["name"] for _, c, st in listed if st == "unreadable"})
            if bad:
                print(f"{len(bad)} job(s) have a job.json or metrics.json the grid did not write "
                      f"({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}): a run sets such "
                      f"a metrics.json aside and reruns the job; a bad job.json stops it")
            print(f"{len(finished)} job(s) done, {len(left)} to run: about "
                  f"{sum(left.values()) / 3600:.1f} job-hours at the speed of the finished jobs "
                  f"(? = nothing to estimate from yet)")
            return
        deadline = None if a.time_limit is None else time.time() + a.time_limit
        res = run_protocols(protos, out, quick=a.quick, seeds=a.seeds, all_seeds=a.all_seeds,
                            steps=a.steps, phantom=a.phantom, jobs=a.jobs, threads=a.threads,
                            scheduler=a.scheduler, data_root=a.data_root, deadline=deadline)
        print(f"{len(res)} job(s) finished in {out}; tables: python -m regnp.study report "
              f"--out {shlex.quote(str(out))}")
    except (GridError, TrainingError) as e:       # the rest (ValueError, OSError): run_cli
        from .._cli import CLIError
        raise CLIError(str(e)) from None


if __name__ == "__main__":
    main()
