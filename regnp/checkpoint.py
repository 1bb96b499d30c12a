"""Checkpoints: one ``.npz`` of arrays (weights, optimizer state, RNG state) + one ``.json`` config.

Written atomically: each file goes to a temporary name in the same folder, is flushed and
fsync'ed, then renamed over the old one (``os.replace`` is atomic on POSIX), so a crash or Ctrl-C
mid-write leaves the previous checkpoint intact — training never loses more than the steps since
the last save. The JSON is written last and names the npz it belongs to together with a checksum
of it, so a half-updated pair is detected on load.
"""
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "regnp-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or from an incompatible model."""


def _atomic_write(path, write_fn, mode="wb"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha1(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(path, arrays, config):
    """Write ``path`` (.npz) and ``path`` with suffix .json atomically.

    Inputs:
    - path: checkpoint file, e.g. ``runs/x/checkpoint.npz``.
    - arrays: dict name -> numpy array (weights ``model.*``, optimizer ``optim.*``, ...).
    - config: JSON-serialisable dict (model options, step, RNG state, ...).
    """
    path = Path(path).with_suffix(".npz")
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    meta = dict(config, format=FORMAT, arrays=path.name, sha1=_sha1(path))
    _atomic_write(path.with_suffix(".json"),
                  lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True)), mode="w")
    return path


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`; returns ``(arrays, config)``.

    Raises :class:`CheckpointError` with a one-line explanation when a file is missing, the two
    files do not belong together, or the archive is corrupt.
    """
    path = Path(path)
    if path.suffix not in (".npz", ".json"):
        path = path.with_suffix(".npz")
    npz, js = path.with_suffix(".npz"), path.with_suffix(".json")
    for p in (npz, js):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} not found (a checkpoint is a .npz + .json "
                                  f"pair written by python -m regnp.train into its --out folder)")
    try:
        config = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint config {js} is not valid JSON ({e}); the file is "
                              f"corrupt — use an earlier checkpoint or retrain") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{js} is not a regnp checkpoint (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("sha1") != _sha1(npz):
        raise CheckpointError(f"{npz} does not match its config {js.name} (checksum differs): the "
                              f"weights file is corrupt or was replaced; use an earlier checkpoint")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"cannot read {npz}: {e}; the file is corrupt") from None
    return arrays, config


def load_model(path):
    """Rebuild a trained model from a training checkpoint; returns ``(model, config)``.

    The architecture comes from the checkpoint's ``model``/``model_options`` entries, the weights
    from its ``model.*`` arrays (names and shapes must match exactly).
    """
    from .models import build_model
    arrays, config = load_checkpoint(path)
    if "model" not in config or "model_options" not in config:
        raise CheckpointError(f"{path} holds no model description (was it written by "
                              f"python -m regnp.train?)")
    model = build_model(config["model"], **config["model_options"])
    state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, config
