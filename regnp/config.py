"""A run's configuration: the options of ``python -m regnp.train`` and the dict they define.

Two ways to the same dict (the one stored in every checkpoint, which :func:`regnp.train.train`
takes)::

    config_from_args(parse_args(["--model", "metareg", "--size", "64", "--lambda", "0.04"]))
    make_config(model="metareg", size=64, lam=0.04)        # the same, from Python

``make_config``'s keywords are the command line's option names with dashes as underscores
(``--kernel-size 13`` → ``kernel_size=13``; ``--lambda`` is ``lam``, a Python keyword otherwise)
and its values are checked exactly as the command line checks them.
"""
import argparse

import numpy as np

from .models import MODEL_NAMES

__all__ = ["TrainingError", "parse_args", "check_options", "config_from_args", "make_config",
           "SAFE_ON_RESUME", "RUN_KEYS", "BEYOND_PAPER", "DIVERGENCE_FACTOR"]


class TrainingError(RuntimeError):
    """Training cannot go on (NaN/Inf loss, divergence, bad configuration)."""


# Options that may differ between a run and its --resume: they change how long the run goes and
# what it writes, not what it computes. Everything else must match the checkpoint.
SAFE_ON_RESUME = ("steps", "epochs", "save_every", "val_every", "val_pairs", "log_every",
                  "no_progress", "data_root", "out", "resume", "overwrite", "divergence_patience")

# The entries of a run's config that define what it computes, with the flags that set them.
RUN_KEYS = {"model": "--model", "model_options": "--model/--enc/--dec/--kernel-size/--seed/--integrate/...",
            "objective": "--loss/--reg/--lambda/--rho1/--rho2/--bidir/--seg-weight/--seg-labels",
            "data": "--dataset/--size/--sigma/--pairs",
            "batch_size": "--batch-size", "lr": "--lr", "seed": "--seed"}

# Options beyond the paper, with their defaults. A run that leaves all of them at their defaults
# has exactly the config (and stored args) of a run from before they existed, so such runs resume.
BEYOND_PAPER = {"integrate": 0, "int_downsize": 2, "bidir": False, "seg_weight": 0.0,
                "seg_labels": None}
INTEGRATING_MODELS = ("metareg", "ablated", "vm1", "vm2")

# A loss above DIVERGENCE_FACTOR × |its starting value| for --divergence-patience consecutive
# steps is divergence. Healthy runs start at their highest loss (unregistered pairs); 10× is
# far outside anything seen in training, while a diverged run (e.g. --lr 1) goes to 1e28.
DIVERGENCE_FACTOR = 10.0


def parse_args(argv=None):
    """The command line's options as an ``argparse.Namespace``, with ``explicit``: the set of
    destinations the user typed (checked on ``--resume``)."""
    p = _parser()
    a = p.parse_args(argv)
    a.explicit = _explicit_options(p, argv)
    return a


def _parser(cls=argparse.ArgumentParser):
    p = cls(prog="python -m regnp.train",
            description="Train a registration network: ``python -m regnp.train [options]``.")
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
    g.add_argument("--integrate", type=int, default=0, metavar="STEPS",
                   help="diffeomorphic mode (metareg, ablated, vm1, vm2): read the field as a "
                        "stationary velocity v and warp by exp(v), by scaling and squaring with "
                        "STEPS squarings (VoxelMorph uses 7); for metareg the 13x13 filter "
                        "smooths v and --lambda regularises v. Default 0: the field is the "
                        "displacement, as in the paper")
    g.add_argument("--int-downsize", type=int, default=2, choices=(1, 2),
                   help="with --integrate: integrate at full (1) or half (2) resolution and "
                        "upsample (default 2, as VoxelMorph's int_downsize=2; 4x fewer pixels "
                        "per squaring)")
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
    g.add_argument("--bidir", action="store_true",
                   help="with --integrate: symmetric similarity 1/2 [S(F, M∘φ) + S(M, F∘φ⁻¹)], "
                        "φ⁻¹ = exp(−v), as VoxelMorph's bidir")
    g.add_argument("--seg-weight", type=float, default=0.0, metavar="W",
                   help="add W x soft-Dice loss between the warped moving label map (one-hot, "
                        "bilinear) and the fixed one (VoxelMorph's semi-supervised mode; default "
                        "0 = off, training uses no labels)")
    g.add_argument("--seg-labels", default=None, metavar="L1,L2",
                   help="with --seg-weight: the label values that supervise, e.g. 1,4 (default: "
                        "the set's evaluated labels: phantom/chaos 1,4, acdc 3, jsrt 1,2)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=None,
                   help="training steps (default 1000); may change on --resume")
    g.add_argument("--epochs", type=float, default=None, help="alternatively, passes over the pairs")
    g.add_argument("--batch-size", type=int, default=2)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("bookkeeping")
    g.add_argument("--out", default="runs/default", help="output folder")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint. Options that define the "
                        "run (model, data, objective, --lr, --batch-size, --seed) must match the "
                        "checkpoint or be left out; these may change: --steps/--epochs, "
                        "--save-every, --val-every, --val-pairs, --log-every, --no-progress, "
                        "--data-root, --divergence-patience")
    g.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (its checkpoint and log are deleted)")
    g.add_argument("--save-every", type=int, default=100, help="checkpoint interval (steps)")
    g.add_argument("--val-every", type=int, default=250,
                   help="validation interval (steps; 0 = none) on held-out training subjects")
    g.add_argument("--val-pairs", type=int, default=8, help="validation pairs (0 = no validation)")
    g.add_argument("--log-every", type=int, default=10, help="log.jsonl interval (steps)")
    g.add_argument("--divergence-patience", type=int, default=50,
                   help=f"stop when the loss stays above {DIVERGENCE_FACTOR:g}x its starting "
                        f"value for this many steps (0 = never)")
    g.add_argument("--no-progress", action="store_true")
    return p


def _explicit_options(parser, argv):
    """The destinations of the options the user actually typed (not their defaults)."""
    unset = object()
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:                     # same options, every default "unset"
        if action.option_strings and action.dest != "help":
            kw = {"dest": action.dest, "default": unset}
            if isinstance(action, argparse._StoreTrueAction):
                kw["action"] = "store_true"
            else:
                kw["type"] = str
            probe.add_argument(*action.option_strings, **kw)
    ns, _ = probe.parse_known_args(argv)
    return {k for k, v in vars(ns).items() if v is not unset}


def check_options(a):
    """Reject integer options outside their range with one clear message each."""
    positive = {"batch_size": "--batch-size", "save_every": "--save-every",
                "log_every": "--log-every", "size": "--size", "kernel_size": "--kernel-size"}
    for dest, flag in positive.items():
        v = getattr(a, dest)
        if v is not None and v <= 0:
            raise TrainingError(f"{flag} must be a positive integer, got {v}")
    for dest, flag in {"val_every": "--val-every", "val_pairs": "--val-pairs",
                       "divergence_patience": "--divergence-patience",
                       "integrate": "--integrate"}.items():
        if getattr(a, dest) < 0:
            raise TrainingError(f"{flag} must be ≥ 0 (0 turns it off), got {getattr(a, dest)}")
    if a.pairs is not None and a.pairs <= 0:
        raise TrainingError(f"--pairs must be a positive integer (or left out for the set's "
                            f"default), got {a.pairs}")
    if a.steps is not None and a.steps <= 0:
        raise TrainingError(f"--steps must be a positive integer, got {a.steps}")
    if a.epochs is not None and not a.epochs > 0:
        raise TrainingError(f"--epochs must be > 0, got {a.epochs}")
    if a.kernel_size % 2 == 0:
        raise TrainingError(f"--kernel-size must be odd (the filter has a centre), got "
                            f"{a.kernel_size}")
    for dest, flag in (("lr", "--lr"), ("lam", "--lambda"), ("rho1", "--rho1"),
                       ("rho2", "--rho2"), ("sigma", "--sigma"), ("kernel_width", "--kernel-width"),
                       ("seg_weight", "--seg-weight")):
        v = getattr(a, dest)
        if v is not None and (not np.isfinite(v) or v < 0 or (dest in ("lr", "kernel_width")
                                                              and v == 0)):
            raise TrainingError(f"{flag} must be a finite number {'> 0' if dest in ('lr', 'kernel_width') else '≥ 0'}, got {v}")


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
    if a.integrate:
        if a.model not in INTEGRATING_MODELS:
            raise TrainingError(f"--integrate applies to {', '.join(INTEGRATING_MODELS)}, not "
                                f"{a.model}")
        mopts.update(integrate=a.integrate, int_downsize=a.int_downsize)
    elif "int_downsize" in getattr(a, "explicit", ()):
        raise TrainingError("--int-downsize sets where --integrate integrates; give --integrate "
                            "STEPS too (e.g. --integrate 7)")
    rho1 = a.rho1 if a.rho1 is not None else (10.0 if is_meta else 0.0)
    rho2 = a.rho2 if a.rho2 is not None else (1e-3 if is_meta else 0.0)
    objective = {"sim": a.loss, "lam": a.lam, "reg": a.reg, "rho1": rho1, "rho2": rho2}
    if a.bidir:
        if not a.integrate:
            raise TrainingError("--bidir needs --integrate STEPS: the inverse warp F∘φ⁻¹ uses "
                                "φ⁻¹ = exp(−v), which only a velocity field gives (e.g. "
                                "--integrate 7 --bidir)")
        objective["bidir"] = True
    if a.seg_weight > 0:
        objective.update(seg_weight=a.seg_weight, seg_labels=_seg_labels(a))
    elif a.seg_labels is not None:
        raise TrainingError("--seg-labels chooses the labels of the segmentation loss; give "
                            "--seg-weight W (> 0) too, e.g. --seg-weight 0.1")
    return {
        "model": a.model, "model_options": mopts,
        "objective": objective,
        "data": {"dataset": a.dataset, "size": a.size, "sigma": a.sigma, "pairs": a.pairs},
        "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed,
    }


def _seg_labels(a):
    """The label values of --seg-weight: --seg-labels, or the set's evaluated labels; checked
    against the labels the set's masks hold."""
    from .data.datasets import DATASETS
    spec = DATASETS.get(a.dataset)
    if spec is None:
        raise TrainingError(f"unknown dataset {a.dataset!r}; choose one of {sorted(DATASETS)}")
    known = spec.get("labels") or {}
    if not known:
        raise TrainingError(f"--seg-weight needs label maps, and the {a.dataset} set has no "
                            f"masks; train without --seg-weight")
    if a.seg_labels is None:
        return [int(v) for v in spec["eval_labels"]]
    try:
        labels = [int(v) for v in a.seg_labels.split(",")]
    except ValueError:
        raise TrainingError(f"--seg-labels must be label values separated by commas, e.g. 1,4; "
                            f"got {a.seg_labels!r}") from None
    bad = [v for v in labels if v not in known]
    if bad or len(set(labels)) != len(labels) or not labels:
        names = ", ".join(f"{k} {v}" for k, v in sorted(known.items()))
        raise TrainingError(f"--seg-labels {a.seg_labels}: the {a.dataset} masks hold labels "
                            f"{names}; give distinct values among them")
    return labels


def _args_record(a):
    """The command-line options as stored in a checkpoint (to check a later --resume). The
    options of ``BEYOND_PAPER`` are left out when all are at their defaults (the record is then
    what it was before they existed)."""
    rec = {k: v for k, v in vars(a).items() if k not in SAFE_ON_RESUME and k != "explicit"}
    if all(rec.get(k, v) == v for k, v in BEYOND_PAPER.items()):
        rec = {k: v for k, v in rec.items() if k not in BEYOND_PAPER}
    return rec


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose errors are exceptions (make_config is called from Python, not a shell)."""

    def error(self, message):
        raise TrainingError(message)


def make_config(**options):
    """The run config for keyword options, e.g. ``make_config(model="metareg", dataset="phantom",
    size=64, pairs=8, lam=0.04, kernel_size=13)``: the same dict as
    ``config_from_args(parse_args([...]))`` for the same options, checked the same way.

    Keywords are the destinations of the command-line options (``--kernel-size`` →
    ``kernel_size``, ``--lambda`` → ``lam``); an on/off flag (``--bidir``) takes True/False;
    widths (``enc``, ``dec``) take a tuple or the command line's ``"16,32"`` text; ``None``
    means "not given" (the default). How long a run goes and where it writes (``steps``,
    ``out``, ``save_every``, ...: ``SAFE_ON_RESUME``) are arguments of :func:`train`, not
    keywords here. Raises TypeError for an unknown keyword and
    :class:`TrainingError` (one line) for a bad value.
    """
    parser = _parser(_RaisingParser)
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    actions.setdefault("lambda", actions["lam"])          # make_config(**{"lambda": 0.04})
    for_train = sorted(set(options) & set(SAFE_ON_RESUME))
    if for_train:        # how long a run goes and where it writes are train()'s arguments
        raise TypeError(f"make_config() got {', '.join(for_train)}: how long a run goes and "
                        f"where it writes are arguments of train(config, steps, out, ...), not "
                        f"of its config; leave them out here")
    for name in SAFE_ON_RESUME:
        actions.pop(name, None)
    unknown = sorted(set(options) - set(actions))
    if unknown:
        raise TypeError(f"make_config() got unknown option(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(k for k in actions if k != 'lambda'))}")
    argv = []
    for key, value in options.items():
        action = actions[key]
        flag = action.option_strings[0]
        if value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, (bool, np.bool_)):
                raise TrainingError(f"{key} ({flag}) is an on/off flag: give True or False, got "
                                    f"{value!r}")
            argv += [flag] if value else []
        else:           # "--flag=value": a value starting with "-" stays a value
            text = ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else value
            argv.append(f"{flag}={text}")
    a = parser.parse_args(argv)
    a.explicit = _explicit_options(parser, argv)
    check_options(a)
    return config_from_args(a)
