"""Train a registration network: ``python -m regnp.train [options]``.

With no options it trains the paper's Meta-Reg model on the embedded phantom (σ = 10 synthetic
deformations, 256×256 as in the paper, 1000 steps: about 2.5 minutes on 2 cores) and prints Dice
before and after registration on held-out pairs. Everything a VoxelMorph user looks for is a flag::

    python -m regnp.train --model vm2 --dataset chaos --sigma 16 --size 256 --steps 3000 \\
                          --lambda 0.04 --lr 1e-4 --out runs/vm2_chaos16
    python -m regnp.train --out runs/vm2_chaos16 --resume --steps 6000   # continue

Outputs in ``--out``: ``checkpoint.npz`` + ``checkpoint.json`` (weights, Adam state, step,
options; written atomically every ``--save-every`` steps and at the end), ``loss_curve.png``,
``log.jsonl`` (one line per logged step). Batches are drawn from a permutation of the training
pairs seeded by (seed, epoch), so a resumed run sees exactly the batches the uninterrupted run
would have seen, and ends with the same parameters.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluate import evaluate_pairs, summarize_records
from .models import MODEL_NAMES, Objective, build_model
from .nn.optim import Adam


class TrainingError(RuntimeError):
    """Training cannot go on (NaN/Inf loss, bad configuration)."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m regnp.train", description=__doc__.splitlines()[0])
    g = p.add_argument_group("model")
    g.add_argument("--model", default="metareg", choices=MODEL_NAMES)
    g.add_argument("--enc", default=None, help="encoder widths, e.g. 16,32,32,32")
    g.add_argument("--dec", default=None, help="decoder widths, e.g. 32,32,32,32,32,16,16")
    g.add_argument("--upsample", default=None, choices=("transpose", "nearest"),
                   help="decoder upsampling (default: transpose for metareg/ablated, nearest for "
                        "vm1/vm2/rkhs)")
    g.add_argument("--kernel-size", type=int, default=13, help="meta-regularization filter size")
    g.add_argument("--filter-param", default="free", choices=("free", "psd"))
    g.add_argument("--filter-init", default="gaussian", choices=("gaussian", "delta"))
    g.add_argument("--filter-normalize", default="unit_sum", choices=("unit_sum", "none"),
                   help="unit_sum (default) or none; the paper's exact form is "
                        "--filter-normalize none --trace-term linear")
    g.add_argument("--trace-term", default="hinge", choices=("hinge", "linear"),
                   help="hinge (default): penalise a negative trace; linear: eq. 12's reward")
    g.add_argument("--per-channel-filter", action="store_true",
                   help="one filter per displacement channel instead of one shared")
    g.add_argument("--no-filter", action="store_true", help="ablated model without the 13x13 layer")
    g.add_argument("--kernel", default="gaussian",
                   help="rkhs model: gaussian | wendland | matern32 | exponential | imq")
    g.add_argument("--kernel-width", type=float, default=3.0, help="rkhs model: kernel width (px)")
    g.add_argument("--gram", default="exact", choices=("exact", "conv13"),
                   help="rkhs model: exact K·α (Kronecker/FFT) or the 13×13 approximation")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="phantom", help="phantom|chaos|acdc|jsrt")
    g.add_argument("--data-root", default=None, help="folder with the real sets (default ../shared/data)")
    g.add_argument("--size", type=int, default=256, help="working image size (default 256)")
    g.add_argument("--sigma", type=float, default=10.0, help="synthetic deformation σ (px at 256)")
    g.add_argument("--pairs", type=int, default=None, help="number of training pairs (synthetic sets)")
    g = p.add_argument_group("objective")
    g.add_argument("--loss", default="mse", choices=("mse", "ncc"), help="similarity")
    g.add_argument("--reg", default="diffusion", choices=("diffusion", "tv"))
    g.add_argument("--lambda", dest="lam", type=float, default=0.04, help="regularisation weight")
    g.add_argument("--rho1", type=float, default=None, help="symmetry weight (default 10; 0 for baselines)")
    g.add_argument("--rho2", type=float, default=None, help="trace weight (default 1e-3; 0 for baselines)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None, help="training steps (default 1000)")
    g.add_argument("--epochs", type=float, default=None, help="alternatively, passes over the pairs")
    g.add_argument("--batch-size", type=int, default=2)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--out", default="runs/default", help="output folder")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    g.add_argument("--save-every", type=int, default=100)
    g.add_argument("--val-every", type=int, default=250)
    g.add_argument("--val-pairs", type=int, default=8)
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _widths(s):
    return None if s is None else tuple(int(v) for v in s.split(","))


def config_from_args(a):
    """The full, JSON-able description of a run (stored in every checkpoint)."""
    is_meta = a.model == "metareg"
    mopts = {"seed": a.seed}
    if a.enc:
        mopts["enc"] = _widths(a.enc)
    if a.dec:
        mopts["dec"] = _widths(a.dec)
    if a.upsample:
        if a.model not in ("metareg", "ablated", "vm1", "vm2", "rkhs"):
            raise TrainingError(f"--upsample applies to the U-Net models, not {a.model}")
        mopts["upsample"] = a.upsample
    if a.model in ("metareg", "ablated"):
        mopts.update(kernel_size=a.kernel_size, param=a.filter_param, init=a.filter_init,
                     shared=not a.per_channel_filter)
        if is_meta:
            mopts["normalize"] = a.filter_normalize
            mopts["trace"] = a.trace_term
        if a.no_filter:
            if is_meta:
                raise TrainingError("--no-filter is for --model ablated (Meta-Reg is the filter)")
            mopts["filter"] = False
    if a.model == "rkhs":
        mopts.update(kernel=a.kernel, kernel_width=a.kernel_width, gram=a.gram)
    rho1 = a.rho1 if a.rho1 is not None else (10.0 if is_meta else 0.0)
    rho2 = a.rho2 if a.rho2 is not None else (1e-3 if is_meta else 0.0)
    return {
        "model": a.model, "model_options": mopts,
        "objective": {"sim": a.loss, "lam": a.lam, "reg": a.reg, "rho1": rho1, "rho2": rho2},
        "data": {"dataset": a.dataset, "size": a.size, "sigma": a.sigma, "pairs": a.pairs},
        "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed,
    }


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
    return all(np.all(np.isfinite(g)) for _, _, g in model.named_parameters())


def train(config, steps, out, resume=False, data_root=None, save_every=100, val_every=200,
          val_pairs=8, log_every=10, progress=True):
    """Run (or continue) training; returns a dict with the history and validation results."""
    from tqdm import tqdm

    from .data import load_dataset
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ck_path = out / "checkpoint.npz"
    history, start = [], 0
    if resume:
        arrays, saved = load_checkpoint(ck_path)
        for key in ("model", "model_options", "objective", "data", "batch_size", "lr", "seed"):
            if key in saved and saved[key] != config.get(key):
                config[key] = saved[key]                   # the checkpoint's run wins
        start, history = int(saved["step"]), saved.get("history", [])
    d = config["data"]
    train_ds = load_dataset(d["dataset"], "train", data_root=data_root, size=d["size"],
                            sigma=d["sigma"], n_pairs=d.get("pairs"))
    val_ds = load_dataset(d["dataset"], "test", data_root=data_root, size=d["size"],
                          sigma=d["sigma"])
    val_idx = list(range(min(val_pairs, len(val_ds))))
    model = build_model(config["model"], **config["model_options"])
    if model.levels and any(s % 2 ** model.levels for s in train_ds.shape):
        raise TrainingError(f"--size {train_ds.shape} is not divisible by 2^{model.levels}; "
                            f"use a multiple of {2 ** model.levels}")
    obj = Objective(**config["objective"])
    opt = Adam(model, lr=config["lr"])
    if resume:
        try:
            model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
            opt.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("optim.")})
        except ValueError as e:
            raise CheckpointError(f"{ck_path}: {e}") from None
    if start >= steps:
        print(f"checkpoint is already at step {start} >= --steps {steps}; nothing to do")

    def save(step):
        save_checkpoint(ck_path, _state_arrays(model, opt),
                        dict(config, step=step, history=history,
                             rng={"kind": "stateless", "seed": config["seed"], "step": step}))

    log = open(out / "log.jsonl", "a")
    bs, n = config["batch_size"], len(train_ds)
    t_start = time.perf_counter()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=config["model"],
               disable=not progress, dynamic_ncols=True)
    completed, updating, diag = start, False, model.diagnostics()
    try:
        for step in bar:
            b = train_ds.batch(_batch_indices(step, n, bs, config["seed"]))
            model.zero_grad()
            terms, _, _ = obj(model, b["fixed"], b["moving"])
            if not _finite(terms, model):
                raise TrainingError(
                    f"the loss or a gradient became NaN/Inf at step {step + 1} "
                    f"({', '.join(f'{k}={v:.4g}' for k, v in terms.items())}); parameters were "
                    f"not updated. The last good checkpoint is {ck_path} (step "
                    f"{start if not history else history[-1]['step']}). Try a lower --lr or "
                    f"--lambda, or --filter-normalize unit_sum.")
            updating = True                 # parameters are half-updated until opt.step returns
            opt.step()
            updating = False
            s = completed = step + 1
            logging = s % log_every == 0 or s == steps
            if logging:                     # filter diagnostics (eigenvalues, FFT): log steps only
                diag = model.diagnostics()
            bar.set_postfix({k: f"{v:.4g}" for k, v in
                             [("loss", terms["loss"]), ("sim", terms["sim"]), ("reg", terms["reg"]),
                              ("meta", terms["meta"])] + [(k, diag[k]) for k in ("k_sum",) if k in diag]})
            if logging:
                rec = {"step": s, **{k: float(v) for k, v in terms.items()},
                       **{k: float(v) for k, v in diag.items()}}
                if val_every and (s % val_every == 0 or s == steps):
                    recs = evaluate_pairs(model, val_ds, val_idx)
                    rec["val_dice"] = float(np.mean([r["dice_after"] for r in recs]))
                    tqdm.write(f"step {s}: validation Dice {100 * rec['val_dice']:.2f} % "
                               f"({len(val_idx)} held-out pairs)")
                history.append(rec)
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if s % save_every == 0 or s == steps:
                save(s)
    except KeyboardInterrupt:
        # Ctrl-C: keep the work done so far, unless it landed inside an Adam update (then the
        # parameters are a mix of two steps and the previous checkpoint is the consistent one)
        if not updating and completed > start:
            save(completed)
            print(f"\ninterrupted: saved step {completed} to {ck_path}; continue with --resume",
                  file=sys.stderr)
        raise
    finally:
        log.close()
        bar.close()
    seconds = time.perf_counter() - t_start
    return {"model": model, "history": history, "seconds": seconds, "val_ds": val_ds,
            "val_idx": val_idx, "checkpoint": ck_path}


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


def main(argv=None):
    a = parse_args(argv)
    try:
        config = config_from_args(a)
        steps = a.steps
        if steps is None and a.epochs is not None:
            from .data import load_dataset
            n = len(load_dataset(a.dataset, "train", data_root=a.data_root, size=a.size,
                                 sigma=a.sigma, n_pairs=a.pairs))
            steps = int(np.ceil(a.epochs * n / a.batch_size))
        steps = 1000 if steps is None else steps
        if steps <= 0:
            raise TrainingError(f"--steps must be positive, got {steps}")
        res = train(config, steps, a.out, resume=a.resume, data_root=a.data_root,
                    save_every=a.save_every, val_every=a.val_every, val_pairs=a.val_pairs,
                    log_every=a.log_every, progress=not a.no_progress)
    except (TrainingError, CheckpointError, ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    out = Path(a.out)
    plot_history(res["history"], out / "loss_curve.png",
                 f"{config['model']} on {config['data']['dataset']}, σ={config['data']['sigma']}")
    recs = evaluate_pairs(res["model"], res["val_ds"], res["val_idx"])
    s = summarize_records(recs)
    print(f"trained {steps} steps in {res['seconds']:.0f} s; held-out pairs ({s['n_pairs']}): "
          f"Dice before {s['dice_before']['mean']:.2f} ± {s['dice_before']['std']:.2f} %, "
          f"after {s['dice_after']['mean']:.2f} ± {s['dice_after']['std']:.2f} %; "
          f"|J|>0 {s['pct_positive_jacobian']['mean']:.2f} %")
    print(f"checkpoint: {res['checkpoint']}; loss curve: {out / 'loss_curve.png'}")


if __name__ == "__main__":
    main()
