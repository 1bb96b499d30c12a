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

From Python, the first run above is ``train(make_config(model="vm2", dataset="chaos", sigma=16,
size=256, lam=0.04, lr=1e-4), 3000, "runs/vm2_chaos16")`` (the options and their checks are in
:mod:`regnp.config`).

Safety: an ``--out`` that already holds a run is refused unless ``--resume`` (continue it) or
``--overwrite`` (replace it) is given; ``--resume`` refuses options that contradict the
checkpoint (only the options in ``SAFE_ON_RESUME`` may change); a NaN/Inf loss, gradient,
parameter or optimizer state, or a loss that stays far above its starting value (divergence),
stops training with a message naming the step and the last good checkpoint, which is never
overwritten by a bad one. Validation uses held-out *training* subjects (the ``val`` split),
never the test subjects. A new run that fails or is interrupted before its first checkpoint
leaves nothing behind, so the corrected command simply runs; Ctrl-C prints one line naming the
step the checkpoint holds and exits with status 130.
"""
import argparse
import json
import os
import shlex
import sys
import time
import warnings
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

# Synthetic training pairs keep their drawn fields in memory (``SyntheticPairs.keep_fields``)
# up to this many bytes, and never more than a quarter of the memory available at the start:
# 1,000 pairs at 256×256 hold 0.5 GB, and drawing a σ-28 velocity field was about a tenth of a
# training step (the batches are bitwise the same either way).
KEEP_FIELDS_BYTES = 2 ** 30


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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train` (a ``KeyboardInterrupt``, so code that stops on Ctrl-C still
    does). ``saved_step`` is the step stored in ``checkpoint``; None when this run has no
    checkpoint yet (its folder is then as it was before the call)."""

    def __init__(self, checkpoint, saved_step):
        super().__init__(f"training interrupted; checkpoint {checkpoint} at step {saved_step}")
        self.checkpoint, self.saved_step = checkpoint, saved_step


def train(config, steps, out, resume=False, data_root=None, save_every=100, val_every=250,
          val_pairs=8, log_every=10, progress=True, overwrite=False, divergence_patience=50,
          plateau=None, on_save=None):
    """Run (or continue) training; returns a dict with the history and validation results.

    Inputs:
    - config: run description from :func:`make_config` or :func:`config_from_args` (model,
      objective, data, ...).
    - steps: total training steps (a resumed run continues up to this step).
    - out: run folder. A folder that already holds a run is refused unless ``resume`` or
      ``overwrite``.
    - resume: continue from ``out/checkpoint.npz`` (or, when that file is damaged, from
      ``checkpoint.prev.npz``, with a warning: see :func:`regnp.checkpoint.load_checkpoint`);
      ``config`` must agree with the checkpoint on every entry of ``RUN_KEYS``.
    - save_every, log_every: intervals in steps; val_every: validation interval (0 = none) on
      ``val_pairs`` pairs of the ``val`` split (held-out training subjects).
    - divergence_patience: stop after this many consecutive steps with the loss above
      ``DIVERGENCE_FACTOR`` × |starting loss| (0 = never).
    - plateau: optional ``(window, min_gain)``: stop early once validation Dice (a fraction)
      gains less than ``min_gain`` per ``window`` steps for a whole window (see
      :func:`_plateau_reached`); used to choose the training length, not in normal runs.
    - on_save: optional callable ``on_save(step)`` after each checkpoint (tests use it).
    Returns: dict model, history, seconds (this call's wall time), steps_done, steps_run, val_ds,
    val_idx, checkpoint, stopped ("steps" | "plateau").
    Raises: TrainingError / CheckpointError (one-line messages) on a refused or failed run;
    on Ctrl-C :class:`TrainingInterrupted` (a plain KeyboardInterrupt during the set-up, which
    writes nothing). A new run that fails or is interrupted before its first checkpoint removes
    the files it created, so the same call can simply be made again.
    """
    from tqdm import tqdm
    from .ops._fast.heap import keep_freed_memory
    keep_freed_memory()             # each step re-uses the last one's memory (no page faults)
    run = _Run(config, out, resume, overwrite, data_root, val_every, val_pairs, on_save,
               divergence_patience)
    model, opt, obj, data = run.model, run.opt, run.obj, run.train_ds
    stopped, bar = "steps", None
    try:
        run.begin(steps)
        t_start = time.perf_counter()
        bar = tqdm(range(run.start, steps), initial=run.start, total=steps, desc=config["model"],
                   disable=not progress, dynamic_ncols=True)
        for step in bar:
            s = step + 1
            pairs = _batch_indices(step, len(data), config["batch_size"], config["seed"])
            batch = data.batch(pairs)
            model.zero_grad()
            try:                                # forward and backward: gradients land in model
                terms, _, _ = obj(model, batch["fixed"], batch["moving"], *run.masks(batch))
            except ValueError as e:             # an op met NaN/Inf inside the network
                raise run.failed_pass(s, e) from None
            run.check_gradients(s, terms)
            run.updating = True                 # parameters are half-updated until opt.step returns
            with np.errstate(over="ignore", invalid="ignore"):   # checked just below, in words
                opt.step()
            run.updating = False
            run.check_update(s, terms)
            run.completed = s
            run.check_divergence(s, float(terms["loss"]), steps)
            validating = bool(run.val_idx) and (s % val_every == 0 or s == steps)
            run.report(s, terms, bar, logging=s % log_every == 0 or s == steps,
                       validating=validating)
            if s % save_every == 0 or s == steps or run.save_pending:
                run.save_unless_diverging(s, last=s == steps)
            if plateau and validating and run.stop_on_plateau(s, *plateau):
                stopped = "plateau"
                break
    except KeyboardInterrupt:
        interrupt_handled()         # no second KeyboardInterrupt inside the save below
        raise run.interrupted() from None
    except BaseException:
        run.forget_if_unsaved()
        raise
    finally:
        run.close(bar)
    return {"model": model, "history": run.history, "seconds": time.perf_counter() - t_start,
            "steps_done": run.completed, "steps_run": run.completed - run.start,
            "val_ds": run.val_ds, "val_idx": run.val_idx, "checkpoint": run.ck_path,
            "stopped": stopped}


class _Run:
    """One sitting of a training run in its folder: set-up (checks, data, model, optimizer,
    resumed state), the checks after each step, logging and validation, checkpointing, and what
    to do when the sitting ends early. :func:`train` holds the loop itself."""

    def __init__(self, config, out, resume, overwrite, data_root, val_every, val_pairs,
                 on_save, divergence_patience):
        """Check everything and build the model without writing anything: a refused run
        leaves no file and no empty folder, and --overwrite deletes the old run only in
        :meth:`begin`, when the new one is about to start."""
        self.config, self.out, self.on_save = config, Path(out), on_save
        self.ck_path = self.out / "checkpoint.npz"
        self.resume, self.patience = resume, divergence_patience
        # the outermost folder this sitting would create (None: ``out`` exists already)
        self.made_folder = next((p for p in [*reversed(self.out.parents), self.out]
                                 if not p.exists()), None)
        self.existing = self._check_folder(overwrite)
        self.history, self.start, self.loss_ref, self.last_saved = [], 0, None, None
        self.arrays = self._read_checkpoint() if resume else None
        self._build(data_root, val_every, val_pairs)
        self.log, self.completed, self.updating = None, self.start, False
        self.first_losses, self.above, self.save_pending = [], 0, False
        self.diag = self.model.diagnostics()

    def _check_folder(self, overwrite):
        """The run files already in ``out`` (refused unless resuming or overwriting)."""
        _check_out_folder(self.out)
        existing = run_files(self.out)
        if self.resume and not self.ck_path.is_file():
            raise CheckpointError(f"--resume: checkpoint file {self.ck_path} not found (start a "
                                  f"new run without --resume)")
        if existing and not (self.resume or overwrite):
            raise TrainingError(f"--out {self.out} already holds a run "
                                f"({', '.join(p.name for p in existing)}); continue it with "
                                f"--resume, replace it with --overwrite, or choose another --out")
        return existing

    def _read_checkpoint(self):
        """The arrays to resume from (checkpoint.npz, or its backup with a warning when it is
        damaged), after checking that the checkpoint's run is the one described by config."""
        arrays, saved = load_checkpoint(self.ck_path)
        bad = config_conflicts(self.config, saved)
        if bad:
            raise TrainingError("--resume: these options differ from the checkpoint's run; leave "
                                "them out or give the checkpoint's values: " + "; ".join(bad))
        self.start, self.history = int(saved["step"]), list(saved.get("history", []))
        self.loss_ref, self.last_saved = saved.get("loss_ref"), self.start
        return arrays

    def _build(self, data_root, val_every, val_pairs):
        """Model, objective, optimizer and data; the memory they will need is checked first
        (a --size or --kernel-size too large for the machine is one line, not a kill)."""
        from ._checks import (available_memory, check_memory, estimate_forward_bytes,
                              estimate_pair_bytes, estimate_param_bytes)
        from .data import load_dataset
        cfg, d = self.config, self.config["data"]
        check_memory(estimate_param_bytes(cfg["model_options"]), f"the {cfg['model']} model",
                     "use a smaller --kernel-size or narrower --enc/--dec")
        self.model = build_model(cfg["model"], **cfg["model_options"])
        shape, bs = (d["size"], d["size"]), cfg["batch_size"]
        check_memory(estimate_forward_bytes(self.model, shape, batch=bs, training=True)
                     + estimate_pair_bytes(shape, bs),
                     f"a training step at {d['size']}×{d['size']} with --batch-size {bs}",
                     "use a smaller --size or --batch-size")
        self.train_ds = load_dataset(d["dataset"], "train", data_root=data_root, size=d["size"],
                                     sigma=d["sigma"], n_pairs=d.get("pairs"))
        if hasattr(self.train_ds, "keep_fields"):
            avail, _ = available_memory()
            self.train_ds.keep_fields(KEEP_FIELDS_BYTES if avail is None
                                      else min(KEEP_FIELDS_BYTES, avail // 4))
        self.val_ds, self.val_idx = None, []
        if val_every and val_pairs:
            self.val_ds = load_dataset(d["dataset"], "val", data_root=data_root, size=d["size"],
                                       sigma=d["sigma"])
            self.val_idx = list(range(min(val_pairs, len(self.val_ds))))
        levels = self.model.levels
        if levels and any(s % 2 ** levels for s in self.train_ds.shape):
            f = 2 ** levels
            lo = max(f, self.train_ds.shape[0] // f * f)
            raise TrainingError(f"--size {self.train_ds.shape[0]} is not divisible by 2^{levels} "
                                f"= {f} ({cfg['model']} halves the image {levels} times); use a "
                                f"multiple of {f}, e.g. {lo} or {lo + f}")
        self.obj = Objective(**cfg["objective"])
        self.opt = Adam(self.model, lr=cfg["lr"])

    # ------------------------------------------------------------------ start, end, Ctrl-C
    def begin(self, steps):
        """Set-up has succeeded: replace an old run (--overwrite), load the resumed state, open
        the log."""
        if self.existing and not self.resume:              # --overwrite
            for p in self.existing + [self.out / "loss_curve.png"]:
                if p.exists():
                    p.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.resume:
            try:
                self.model.load_state_dict(_prefixed(self.arrays, "model."))
                self.opt.load_state_dict(_prefixed(self.arrays, "optim."))
            except ValueError as e:
                raise CheckpointError(f"{self.ck_path}: {e}") from None
            if not _state_finite(self.model, self.opt):
                raise CheckpointError(f"{self.ck_path} holds NaN/Inf weights or optimizer state "
                                      f"(written by an older version); retrain or use "
                                      f"{backup_path(self.ck_path)}")
            _rewrite_log(self.out / "log.jsonl", self.start)
        if self.start >= steps:
            print(f"checkpoint is already at step {self.start} >= --steps {steps}; nothing to do")
        self.log = open(self.out / "log.jsonl", "a")

    def close(self, bar=None):
        if self.log is not None:
            self.log.close()
        if bar is not None:
            bar.close()

    def forget_if_unsaved(self):
        """A new run that ends before its first checkpoint (a bad σ met in the first batch, a
        full disk, NaN at step 3, Ctrl-C) removes the files it created, so that the corrected
        command is not refused as "already holds a run"."""
        if self.resume or self.last_saved is not None:
            return
        self.close()
        if self.log is not None:        # begin() has run: the run files here are this sitting's
            for p in run_files(self.out):
                p.unlink()
        for folder in [self.out, *self.out.parents] if self.made_folder else []:
            if not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
            if folder == self.made_folder:
                break

    def interrupted(self):
        """Ctrl-C: keep the work done so far, unless it landed inside an Adam update (then the
        parameters are a mix of two steps and the previous checkpoint is the consistent one)
        or while the loss is diverging. Returns the exception to raise."""
        if (not self.updating and self.completed > self.start
                and self.completed != self.last_saved and self.above == 0):
            self.save(self.completed)
        self.forget_if_unsaved()
        return TrainingInterrupted(self.ck_path, self.last_saved)

    # ---------------------------------------------------------------------- step checks
    def masks(self, batch):
        """The label maps the objective needs (only with --seg-weight)."""
        return (batch["fixed_mask"], batch["moving_mask"]) if self.obj.seg_weight > 0 else ()

    def last_good(self):
        if self.last_saved is None:
            return "no checkpoint was written yet (nothing to resume; start again)"
        return (f"the last good checkpoint is {self.ck_path} (step {self.last_saved}); continue "
                f"with --resume")

    def failed_pass(self, s, e):
        return TrainingError(f"step {s}: the forward/backward pass failed ({e}); parameters "
                             f"were not updated; {self.last_good()}. Try a lower --lr or "
                             f"--lambda")

    def check_gradients(self, s, terms):
        if not _finite(terms, self.model):
            raise TrainingError(
                f"the loss or a gradient became NaN/Inf at step {s} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); parameters were not "
                f"updated; {self.last_good()}. Try a lower --lr or --lambda, or "
                f"--filter-normalize unit_sum.")

    def check_update(self, s, terms):
        if not _state_finite(self.model, self.opt):
            raise TrainingError(
                f"the parameters or Adam's moment estimates overflowed to NaN/Inf in the update "
                f"of step {s} (the loss was finite: {terms['loss']:.4g}); nothing was saved from "
                f"this step; {self.last_good()}. Lower --lr (now {self.config['lr']:g}).")

    def check_divergence(self, s, loss, steps):
        """The starting loss is the mean of the first 10 steps; after that, count the steps in
        a row with the loss above ``DIVERGENCE_FACTOR`` times it."""
        if self.loss_ref is None:
            self.first_losses.append(loss)
            if len(self.first_losses) == 10 or s == steps:
                self.loss_ref = float(np.mean(self.first_losses))
        elif self.patience:
            self.above = self.above + 1 if loss > DIVERGENCE_FACTOR * abs(self.loss_ref) else 0
            if self.above >= self.patience:
                raise TrainingError(
                    f"training diverged: the loss has stayed above {DIVERGENCE_FACTOR:g}× its "
                    f"starting value ({self.loss_ref:.4g}) for {self.above} steps (step {s}: "
                    f"loss {loss:.4g}); {self.last_good()}. Lower --lr (now "
                    f"{self.config['lr']:g}) or --lambda.")

    # -------------------------------------------------------------- logging, validation
    def report(self, s, terms, bar, logging, validating):
        """The progress bar every step; a log.jsonl line (with validation Dice) when due."""
        from tqdm import tqdm
        if logging:                     # filter diagnostics (eigenvalues, FFT): log steps only
            self.diag = self.model.diagnostics()
        shown = [(k, terms[k]) for k in ("loss", "sim", "reg", "meta")]
        bar.set_postfix({k: f"{v:.4g}" for k, v in
                         shown + [(k, self.diag[k]) for k in ("k_sum",) if k in self.diag]})
        if not (logging or validating):
            return
        rec = {"step": s, **{k: float(v) for k, v in terms.items()},
               **{k: float(v) for k, v in self.diag.items()}}
        if validating:
            recs = evaluate_pairs(self.model, self.val_ds, self.val_idx)
            rec["val_dice"] = float(np.mean([r["dice_after"] for r in recs]))
            rec["val_pct_positive_jacobian"] = float(
                np.mean([r["pct_positive_jacobian"] for r in recs]))
            tqdm.write(f"step {s}: validation Dice {100 * rec['val_dice']:.2f} % "
                       f"({len(self.val_idx)} pairs of held-out training subjects)")
        self.history.append(rec)
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def stop_on_plateau(self, s, window, min_gain):
        """True (after saving step ``s``) when validation Dice has stopped rising."""
        from tqdm import tqdm
        if not _plateau_reached(self.history, window, min_gain):
            return False
        tqdm.write(f"step {s}: validation Dice has gained less than {100 * min_gain:.2g} points "
                   f"per {window} steps for {window} steps; stopping")
        if self.last_saved != s:
            self.save(s)
        return True

    # --------------------------------------------------------------------- checkpointing
    def save_unless_diverging(self, s, last):
        """Never checkpoint a loss that is far above its start: the last good one stays, and
        the save waits for the loss to come back (or for the last step)."""
        self.save_pending = self.above > 0 and not last
        if not self.save_pending:
            self.save(s)

    def save(self, step):
        save_checkpoint(self.ck_path, _state_arrays(self.model, self.opt),
                        dict(self.config, step=step, history=self.history,
                             loss_ref=self.loss_ref,
                             rng={"kind": "stateless", "seed": self.config["seed"],
                                  "step": step}))
        self.last_saved = step
        if self.on_save is not None:
            self.on_save(step)


def _prefixed(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


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
    """The command line. Bad input prints one ``error:`` line (exit 1), a warning one
    ``warning:`` line, and Ctrl-C one line saying what was kept (exit 130; SIGTERM the same,
    exit 143); a Ctrl-C is never lost (``_cli.ctrl_c_delivered``)."""
    from ._cli import _one_line_warning, ctrl_c_delivered, interrupted_exit
    a = parse_args(argv)
    finished = []                       # the result of train(), once it has returned
    previous, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        with ctrl_c_delivered():
            return _main(a, finished)
    except KeyboardInterrupt as e:
        interrupt_handled()
        print(_interrupted_line(e, finished), file=sys.stderr)
        sys.exit(interrupted_exit())
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except OSError as e:
        sys.exit(f"error: cannot write the run in --out {a.out}: {e.strerror or e}")
    finally:
        warnings.showwarning = previous


def _interrupted_line(e, finished):
    """The one line a Ctrl-C (or SIGTERM) prints: where the run can be continued from, if
    anywhere."""
    from ._cli import stop_name
    how = stop_name()
    if finished:
        res = finished[0]
        return (f"interrupted ({how}) after training: {res['checkpoint']} holds step "
                f"{res['steps_done']}; the loss curve or the example picture may be missing")
    if getattr(e, "saved_step", None) is not None:
        return (f"interrupted ({how}); {e.checkpoint} holds step {e.saved_step}; continue with "
                f"the same command and --resume")
    if isinstance(e, TrainingInterrupted):
        return (f"interrupted ({how}) before the first checkpoint; nothing was kept: run the "
                "same command again")
    return f"interrupted ({how}); nothing was written"


def _main(a, finished):
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
    finished.append(res)
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
          f"; test-set scores: python -m regnp.evaluate --checkpoint {shlex.quote(str(out))}")


if __name__ == "__main__":
    main()
