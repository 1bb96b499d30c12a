"""Train a registration network: ``python -m regnp.train [options]``.

With no options it trains the paper's Meta-Reg model on the embedded phantom (σ = 10 synthetic
deformations, 256×256 as in the paper, 1000 steps: about 2.5 minutes on 2 cores) and prints Dice
before and after registration on held-out pairs. Everything a VoxelMorph user looks for is a flag::

    python -m regnp.train --model vm2 --dataset chaos --sigma 16 --size 256 --steps 3000 \\
                          --lambda 0.04 --lr 1e-4 --out runs/vm2_chaos16
    python -m regnp.train --out runs/vm2_chaos16 --resume --steps 6000   # continue

Outputs in ``--out``: ``checkpoint.npz`` (weights, Adam state, step and options in one file,
replaced atomically every ``--save-every`` steps and at the end; the one before it is kept as
``checkpoint.prev.npz``), ``loss_curve.png``, ``log.jsonl`` (one line per logged step) and
``example.png`` (a held-out pair registered, as the paper's Fig. 2, with the learned filter).
Batches are drawn from a permutation of the training pairs seeded by (seed, epoch), so a resumed
run sees exactly the batches the uninterrupted run would have seen, and ends with the same
parameters.

Safety: an ``--out`` that already holds a run is refused unless ``--resume`` (continue it) or
``--overwrite`` (replace it) is given; ``--resume`` refuses options that contradict the
checkpoint (only the options in ``SAFE_ON_RESUME`` may change); a NaN/Inf loss, gradient,
parameter or optimizer state, or a loss that stays far above its starting value (divergence),
stops training with a message naming the step and the last good checkpoint, which is never
overwritten by a bad one. Validation uses held-out *training* subjects (the ``val`` split),
never the test subjects.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ._checks import count_nonfinite
from ._cli import interrupt_handled
from .checkpoint import CheckpointError, backup_path, load_checkpoint, save_checkpoint
from .config import (BEYOND_PAPER, DIVERGENCE_FACTOR, RUN_KEYS, SAFE_ON_RESUME,  # noqa: F401
                     TrainingError, _args_record, check_options, config_from_args, make_config,
                     parse_args)
from .evaluate import evaluate_pairs, summarize_records
from .models import Objective, build_model
from .nn.optim import Adam


def _batch_indices(step, n, batch_size, seed):
    """Pairs of training step ``step``: slice of the permutation of epoch ``step // per_epoch``
    drawn from the generator seeded by (seed, epoch). Stateless, so resuming is exact."""
    per_epoch = max(1, n // batch_size)
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[pos * batch_size:(pos + 1) * batch_size]


def _state_arrays(model, opt):
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optim.{k}": v for k, v in opt.state_dict().items()})
    return arrays


def _finite(terms, model):
    if not all(np.isfinite(v) for v in terms.values()):
        return False
    return all(count_nonfinite(g) == 0 for _, _, g in model.named_parameters())


def _state_finite(model, opt):
    """Parameters and Adam moments all finite (Adam's v can overflow while the loss is finite)."""
    if any(count_nonfinite(p) for _, p, _ in model.named_parameters()):
        return False
    return all(count_nonfinite(b) == 0 for bufs in (opt.m, opt.v) for b in bufs.values())


def run_files(out):
    """The files of a run in ``out`` that a new run there would replace or mix with."""
    out = Path(out)
    names = ("checkpoint.npz", "checkpoint.prev.npz", "checkpoint.json", "log.jsonl")
    return [out / n for n in names if (out / n).exists()]


def _check_out_folder(out):
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise TrainingError(f"--out {out}: {parent} is a file, not a folder; choose another "
                                f"--out")
        if parent.exists():
            break


def config_conflicts(config, saved):
    """Entries of ``config`` that differ from the checkpoint's ``saved`` run, as readable lines."""
    lines = []
    config = json.loads(json.dumps(config))           # tuples -> lists, as stored
    for key, flags in RUN_KEYS.items():
        if key in saved and saved[key] != config.get(key):
            lines.append(f"{key} ({flags}): checkpoint {saved[key]!r}, now {config.get(key)!r}")
    return lines


def _rewrite_log(path, last_step):
    """Keep the lines of ``log.jsonl`` up to ``last_step`` (a run killed between logging and
    saving logged steps that its resume will run again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue                               # a line cut short by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    os.replace(tmp, path)


def _plateau_reached(history, window, min_gain, smooth=3):
    """True when the validation Dice (smoothed over ``smooth`` validations) has gained less than
    ``min_gain`` (a fraction, e.g. 0.003 = 0.3 points) over the last ``window`` steps, at every
    validation of the last ``window`` steps. Conservative on purpose: a plateau must last a full
    window before it stops a run, so the curve shows it."""
    pts = [(h["step"], h["val_dice"]) for h in history if "val_dice" in h]
    if len(pts) < smooth:
        return False
    steps = np.array([p[0] for p in pts])
    sm = np.convolve([p[1] for p in pts], np.ones(smooth) / smooth, mode="valid")
    st = steps[smooth - 1:]
    last = st[-1]
    if last - st[0] < 2 * window:
        return False
    for s_now, v_now in zip(st, sm):
        if s_now < last - window:
            continue
        earlier = np.nonzero(st <= s_now - window)[0]
        if not len(earlier) or v_now - sm[earlier[-1]] >= min_gain:
            return False
    return True


def train(config, steps, out, resume=False, data_root=None, save_every=100, val_every=250,
          val_pairs=8, log_every=10, progress=True, overwrite=False, divergence_patience=50,
          plateau=None, on_save=None):
    """Run (or continue) training; returns a dict with the history and validation results.

    Inputs:
    - config: run description from :func:`config_from_args` (model, objective, data, ...).
    - steps: total training steps (a resumed run continues up to this step).
    - out: run folder. A folder that already holds a run is refused unless ``resume`` or
      ``overwrite``.
    - resume: continue from ``out/checkpoint.npz``; ``config`` must agree with the checkpoint
      on every entry of ``RUN_KEYS``.
    - save_every, log_every: intervals in steps; val_every: validation interval (0 = none) on
      ``val_pairs`` pairs of the ``val`` split (held-out training subjects).
    - divergence_patience: stop after this many consecutive steps with the loss above
      ``DIVERGENCE_FACTOR`` × |starting loss| (0 = never).
    - plateau: optional ``(window, min_gain)``: stop early once validation Dice (a fraction)
      gains less than ``min_gain`` per ``window`` steps for a whole window (see
      :func:`_plateau_reached`); used to choose the training length, not in normal runs.
    - on_save: optional callable ``on_save(step)`` after each checkpoint (tests use it).
    Returns: dict model, history, seconds (this call's wall time), steps_done, val_ds, val_idx,
    checkpoint, stopped ("steps" | "plateau").
    """
    from tqdm import tqdm

    from .data import load_dataset
    out = Path(out)
    _check_out_folder(out)
    ck_path = out / "checkpoint.npz"
    existing = run_files(out)
    if resume:
        if not ck_path.is_file():
            raise CheckpointError(f"--resume: checkpoint file {ck_path} not found (start a new run "
                                  f"without --resume)")
    elif existing and not overwrite:
        raise TrainingError(f"--out {out} already holds a run ({', '.join(p.name for p in existing)}); "
                            f"continue it with --resume, replace it with --overwrite, or choose "
                            f"another --out")
    history, start, loss_ref, last_saved = [], 0, None, None
    if resume:
        arrays, saved = load_checkpoint(ck_path)
        bad = config_conflicts(config, saved)
        if bad:
            raise TrainingError("--resume: these options differ from the checkpoint's run; leave "
                                "them out or give the checkpoint's values: " + "; ".join(bad))
        start, history = int(saved["step"]), list(saved.get("history", []))
        loss_ref, last_saved = saved.get("loss_ref"), start
        _rewrite_log(out / "log.jsonl", start)
    d = config["data"]
    train_ds = load_dataset(d["dataset"], "train", data_root=data_root, size=d["size"],
                            sigma=d["sigma"], n_pairs=d.get("pairs"))
    val_ds, val_idx = None, []
    if val_every and val_pairs:
        val_ds = load_dataset(d["dataset"], "val", data_root=data_root, size=d["size"],
                              sigma=d["sigma"])
        val_idx = list(range(min(val_pairs, len(val_ds))))
    model = build_model(config["model"], **config["model_options"])
    if model.levels and any(s % 2 ** model.levels for s in train_ds.shape):
        f = 2 ** model.levels
        lo = max(f, train_ds.shape[0] // f * f)
        raise TrainingError(f"--size {train_ds.shape[0]} is not divisible by 2^{model.levels} = "
                            f"{f} ({config['model']} halves the image {model.levels} times); use "
                            f"a multiple of {f}, e.g. {lo} or {lo + f}")
    obj = Objective(**config["objective"])
    opt = Adam(model, lr=config["lr"])
    # only now, with everything checked: a refused run leaves no empty folder, and --overwrite
    # deletes the old run only when the new one is about to start
    if existing and overwrite and not resume:
        for p in existing + [out / "loss_curve.png"]:
            if p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        try:
            model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
            opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
        except ValueError as e:
            raise CheckpointError(f"{ck_path}: {e}") from None
        if not _state_finite(model, opt):
            raise CheckpointError(f"{ck_path} holds NaN/Inf weights or optimizer state (written "
                                  f"by an older version); retrain or use {backup_path(ck_path)}")
    if start >= steps:
        print(f"checkpoint is already at step {start} >= --steps {steps}; nothing to do")

    def last_good():
        if last_saved is None:
            return "no checkpoint was written yet (nothing to resume; start again)"
        return f"the last good checkpoint is {ck_path} (step {last_saved}); continue with --resume"

    def save(step):
        nonlocal last_saved
        save_checkpoint(ck_path, _state_arrays(model, opt),
                        dict(config, step=step, history=history, loss_ref=loss_ref,
                             rng={"kind": "stateless", "seed": config["seed"], "step": step}))
        last_saved = step
        if on_save is not None:
            on_save(step)

    log = open(out / "log.jsonl", "a")
    bs, n = config["batch_size"], len(train_ds)
    t_start = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=config["model"],
               disable=not progress, dynamic_ncols=True)
    completed, updating, diag = start, False, model.diagnostics()
    first_losses, above, save_pending, stopped = [], 0, False, "steps"
    try:
        for step in bar:
            s = step + 1
            b = train_ds.batch(_batch_indices(step, n, bs, config["seed"]))
            model.zero_grad()
            try:
                masks = (b["fixed_mask"], b["moving_mask"]) if obj.seg_weight > 0 else ()
                terms, _, _ = obj(model, b["fixed"], b["moving"], *masks)
            except ValueError as e:       # an op met NaN/Inf inside the network
                raise TrainingError(f"step {s}: the forward/backward pass failed ({e}); "
                                    f"parameters were not updated; {last_good()}. Try a lower "
                                    f"--lr or --lambda") from None
            if not _finite(terms, model):
                raise TrainingError(
                    f"the loss or a gradient became NaN/Inf at step {s} "
                    f"({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); parameters were "
                    f"not updated; {last_good()}. Try a lower --lr or --lambda, or "
                    f"--filter-normalize unit_sum.")
            updating = True                 # parameters are half-updated until opt.step returns
            with np.errstate(over="ignore", invalid="ignore"):   # checked just below, in words
                opt.step()
            updating = False
            if not _state_finite(model, opt):
                raise TrainingError(
                    f"the parameters or Adam's moment estimates overflowed to NaN/Inf in the "
                    f"update of step {s} (the loss was finite: {terms['loss']:.4g}); nothing was "
                    f"saved from this step; {last_good()}. Lower --lr (now {config['lr']:g}).")
            completed = s
            loss = float(terms["loss"])
            if loss_ref is None:            # the starting loss: mean of the first 10 steps
                first_losses.append(loss)
                if len(first_losses) == 10 or s == steps:
                    loss_ref = float(np.mean(first_losses))
            elif divergence_patience:
                above = above + 1 if loss > DIVERGENCE_FACTOR * abs(loss_ref) else 0
                if above >= divergence_patience:
                    raise TrainingError(
                        f"training diverged: the loss has stayed above {DIVERGENCE_FACTOR:g}× its "
                        f"starting value ({loss_ref:.4g}) for {above} steps (step {s}: loss "
                        f"{loss:.4g}); {last_good()}. Lower --lr (now {config['lr']:g}) or "
                        f"--lambda.")
            logging = s % log_every == 0 or s == steps
            validating = bool(val_idx) and (s % val_every == 0 or s == steps)
            if logging:                     # filter diagnostics (eigenvalues, FFT): log steps only
                diag = model.diagnostics()
            bar.set_postfix({k: f"{v:.4g}" for k, v in
                             [("loss", terms["loss"]), ("sim", terms["sim"]), ("reg", terms["reg"]),
                              ("meta", terms["meta"])] + [(k, diag[k]) for k in ("k_sum",) if k in diag]})
            if logging or validating:
                rec = {"step": s, **{k: float(v) for k, v in terms.items()},
                       **{k: float(v) for k, v in diag.items()}}
                if validating:
                    recs = evaluate_pairs(model, val_ds, val_idx)
                    rec["val_dice"] = float(np.mean([r["dice_after"] for r in recs]))
                    rec["val_pct_positive_jacobian"] = float(
                        np.mean([r["pct_positive_jacobian"] for r in recs]))
                    tqdm.write(f"step {s}: validation Dice {100 * rec['val_dice']:.2f} % "
                               f"({len(val_idx)} pairs of held-out training subjects)")
                history.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            # never checkpoint a loss that is far above its start: the last good one stays
            if s % save_every == 0 or s == steps or save_pending:
                if above == 0 or s == steps:
                    save(s)
                    save_pending = False
                else:
                    save_pending = True
            if plateau and validating and _plateau_reached(history, *plateau):
                tqdm.write(f"step {s}: validation Dice has gained less than "
                           f"{100 * plateau[1]:.2g} points per {plateau[0]} steps for "
                           f"{plateau[0]} steps; stopping")
                if last_saved != s:
                    save(s)
                stopped = "plateau"
                break
    except KeyboardInterrupt:
        # Ctrl-C: keep the work done so far, unless it landed inside an Adam update (then the
        # parameters are a mix of two steps and the previous checkpoint is the consistent one)
        interrupt_handled()         # no second KeyboardInterrupt inside the save below
        if not updating and completed > start and completed != last_saved and above == 0:
            save(completed)
            print(f"\ninterrupted: saved step {completed} to {ck_path}; continue with --resume",
                  file=sys.stderr)
        raise
    finally:
        log.close()
        bar.close()
    seconds = time.perf_counter() - t_start
    return {"model": model, "history": history, "seconds": seconds, "steps_done": completed,
            "steps_run": completed - start, "val_ds": val_ds, "val_idx": val_idx,
            "checkpoint": ck_path, "stopped": stopped}


def plot_history(history, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in ("loss", "sim", "reg", "meta"):
        vals = [h.get(key, np.nan) for h in history]
        if np.any(np.abs(np.nan_to_num(vals)) > 0):
            ax[0].plot(steps, vals, label=key)
    ax[0].set_yscale("symlog", linthresh=1e-4)
    ax[0].set_xlabel("step")
    ax[0].set_title("loss terms (unweighted R)")
    ax[0].legend()
    vd = [(h["step"], 100 * h["val_dice"]) for h in history if "val_dice" in h]
    if vd:
        ax[1].plot(*zip(*vd), "o-")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("validation Dice (%)")
    ax[1].set_title("held-out pairs")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_example(path, model, ds, i=0, title=""):
    """One pair registered by ``model``, as the paper's Fig. 2 (fixed, moving, registered, the
    deformed grid with folds in red, |F − M| and |F − warped|), plus the learned 13×13 filter for
    Meta-Reg. Returns the pair's Dice before and after (%)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .metrics import dice, jacobian_determinant
    from .ops.warp import warp_nearest
    b = ds.batch([i])
    warped, u, _ = model.forward(b["fixed"], b["moving"])
    F, M, Wd, U = b["fixed"][0, 0], b["moving"][0, 0], warped[0, 0], u[0]
    det = jacobian_determinant(U)
    labels = list(ds.eval_labels)
    before = 100 * dice(b["fixed_mask"][0, 0], b["moving_mask"][0, 0], labels=labels)["mean"]
    after = 100 * dice(b["fixed_mask"][0, 0], warp_nearest(b["moving_mask"], u)[0, 0],
                       labels=labels)["mean"]
    filt = getattr(getattr(model, "meta", None), "effective_filter", None)
    ncol = 4 if filt is not None else 3
    fig, ax = plt.subplots(2, ncol, figsize=(3.6 * ncol, 7.4))
    for a, img, t in ((ax[0, 0], F, "fixed"), (ax[0, 1], M, f"moving (Dice {before:.1f} %)"),
                      (ax[0, 2], Wd, f"registered (Dice {after:.1f} %)")):
        a.imshow(img, cmap="gray", vmin=0, vmax=1)
        a.set_title(t, fontsize=10)
    H, W = F.shape
    step = max(4, min(H, W) // 24)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    py, px = yy + U[0], xx + U[1]                          # φ(p) = p + u(p)
    ax[1, 0].imshow(F, cmap="gray", vmin=0, vmax=1, alpha=0.35)
    for r in range(0, H, step):
        ax[1, 0].plot(px[r], py[r], "-", color="tab:orange", lw=0.6)
    for c in range(0, W, step):
        ax[1, 0].plot(px[:, c], py[:, c], "-", color="tab:orange", lw=0.6)
    fy, fx = np.nonzero(det <= 0)
    ax[1, 0].plot(fx, fy, "r.", ms=1)
    ax[1, 0].set_xlim(0, W - 1)
    ax[1, 0].set_ylim(H - 1, 0)
    ax[1, 0].set_title(f"φ = id + u ({100 * np.mean(det > 0):.2f} % det > 0)", fontsize=10)
    d0, d1 = np.abs(F - M), np.abs(F - Wd)
    vmax = max(float(d0.max()), 1e-6)
    ax[1, 1].imshow(d0, cmap="magma", vmin=0, vmax=vmax)
    ax[1, 1].set_title(f"|F − M|, mean {d0.mean():.4f}", fontsize=10)
    ax[1, 2].imshow(d1, cmap="magma", vmin=0, vmax=vmax)
    ax[1, 2].set_title(f"|F − registered|, mean {d1.mean():.4f}", fontsize=10)
    if filt is not None:
        K = np.asarray(filt())[0]
        m = float(np.abs(K).max())
        im = ax[0, 3].imshow(K, cmap="RdBu_r", vmin=-m, vmax=m)
        plt.colorbar(im, ax=ax[0, 3], fraction=0.046)
        ax[0, 3].set_title(f"learned K̃ ({K.shape[0]}×{K.shape[1]}, sum {K.sum():.2f})", fontsize=10)
        ax[1, 3].imshow(np.hypot(U[0], U[1]), cmap="viridis")
        ax[1, 3].set_title("|u| (pixels)", fontsize=10)
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return before, after


def _config_for_resume(a):
    """The run's config when continuing ``--out``: the checkpoint's own options, with the ones
    the user typed checked against them (only ``SAFE_ON_RESUME`` options may differ)."""
    ck = Path(a.out) / "checkpoint.npz"
    if not ck.is_file():
        raise CheckpointError(f"--resume: there is no checkpoint in --out {a.out} ({ck} not "
                              f"found); start a new run without --resume")
    _, saved = load_checkpoint(ck)
    typed = sorted(a.explicit - set(SAFE_ON_RESUME))
    if not isinstance(saved.get("args"), dict):
        if typed:
            raise TrainingError(f"--resume: {ck} was not written by this command line, so only "
                                f"{', '.join('--' + k.replace('_', '-') for k in SAFE_ON_RESUME[:6])} "
                                f"... may be given; drop {', '.join('--' + k.replace('_', '-') for k in typed)}")
        return {k: saved[k] for k in RUN_KEYS if k in saved}
    # an option the checkpoint does not record (an older version, or an option left at its
    # default) had its default value in that run
    defaults = vars(parse_args([]))
    args = {**{k: v for k, v in defaults.items() if k not in SAFE_ON_RESUME and k != "explicit"},
            **saved["args"]}
    flag = {"lam": "lambda", "loss": "loss", "per_channel_filter": "per-channel-filter"}
    bad = [f"--{flag.get(k, k).replace('_', '-')} {getattr(a, k)!r} (checkpoint: {args.get(k)!r})"
           for k in typed if getattr(a, k) != args.get(k)]
    if bad:
        raise TrainingError("--resume: these options contradict the checkpoint's run: "
                            + "; ".join(bad) + ". Leave them out (the checkpoint's values are "
                            "used) or start a new run in another --out")
    merged = argparse.Namespace(**{**vars(a), **{k: v for k, v in args.items()
                                                 if k not in SAFE_ON_RESUME}})
    # keep the command-line record, so that a second --resume can check its options too
    return dict(config_from_args(merged), args=saved["args"])


def main(argv=None):
    """The command line; a Ctrl-C during it is never lost (``_cli.ctrl_c_delivered``)."""
    from ._cli import ctrl_c_delivered
    with ctrl_c_delivered():
        return _main(argv)


def _main(argv=None):
    a = parse_args(argv)
    try:
        check_options(a)
        _check_out_folder(a.out)
        if a.resume and a.overwrite:
            raise TrainingError("--resume continues the run in --out and --overwrite replaces it; "
                                "give one of them")
        config = _config_for_resume(a) if a.resume else dict(config_from_args(a),
                                                              args=_args_record(a))
        steps = a.steps
        if steps is None and a.epochs is not None:
            from .data import load_dataset
            d = config["data"]
            n = len(load_dataset(d["dataset"], "train", data_root=a.data_root, size=d["size"],
                                 sigma=d["sigma"], n_pairs=d["pairs"]))
            steps = int(np.ceil(a.epochs * n / config["batch_size"]))
        steps = 1000 if steps is None else steps
        res = train(config, steps, a.out, resume=a.resume, data_root=a.data_root,
                    save_every=a.save_every, val_every=a.val_every, val_pairs=a.val_pairs,
                    log_every=a.log_every, progress=not a.no_progress, overwrite=a.overwrite,
                    divergence_patience=a.divergence_patience)
    except KeyboardInterrupt:
        interrupt_handled()
        sys.exit("interrupted (Ctrl-C); continue with the same command and --resume")
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot write the run in --out {a.out}: {e.strerror or e}")
    out = Path(a.out)
    plot_history(res["history"], out / "loss_curve.png",
                 f"{config['model']} on {config['data']['dataset']}, σ={config['data']['sigma']}")
    print(f"trained to step {res['steps_done']} ({res['steps_run']} steps in {res['seconds']:.0f} s)")
    if res["val_ds"] is not None:
        s = summarize_records(evaluate_pairs(res["model"], res["val_ds"], res["val_idx"]))
        print(f"validation pairs ({s['n_pairs']}, held-out training subjects): "
              f"Dice before {s['dice_before']['mean']:.2f} ± {s['dice_before']['std']:.2f} %, "
              f"after {s['dice_after']['mean']:.2f} ± {s['dice_after']['std']:.2f} %; "
              f"|J|>0 {s['pct_positive_jacobian']['mean']:.2f} %")
    if res["val_ds"] is not None:
        save_example(out / "example.png", res["model"], res["val_ds"], 0,
                     f"{config['model']} after {res['steps_done']} steps: a held-out "
                     f"{config['data']['dataset']} pair (σ = {config['data']['sigma']:g})")
    print(f"checkpoint: {res['checkpoint']}; loss curve: {out / 'loss_curve.png'}"
          f"{'; an example pair: ' + str(out / 'example.png') if res['val_ds'] is not None else ''}"
          f"; test-set scores: python -m regnp.evaluate --checkpoint {out}")


if __name__ == "__main__":
    main()
