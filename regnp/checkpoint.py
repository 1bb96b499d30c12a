"""Checkpoints: one ``.npz`` file holding the arrays *and* the run's JSON description.

A checkpoint is a single file, so it is replaced in one atomic step and can never be half old,
half new. :func:`save_checkpoint` goes through these stages (each named, so a test can kill the
writer at any of them):

1. ``write``   the arrays and the JSON (with a checksum of the arrays) go to a temporary file in
               the same folder (``.checkpoint.npz.<random>.tmp``), which is flushed and fsync'ed;
2. ``verify``  the temporary file is read back and its checksum compared — a bad disk or a full
               one is caught here, while the previous checkpoint is still in place;
3. ``backup``  the previous checkpoint is hard-linked to ``checkpoint.prev.npz`` (a link, not a
               copy: the current file stays in place all the time);
4. ``replace`` ``os.replace`` renames the temporary file over ``checkpoint.npz`` (atomic on POSIX)
               and the folder is fsync'ed so the rename itself survives a power cut.

Killed before stage 4, the old checkpoint is untouched; killed after, the new one is complete.
Either way :func:`load_checkpoint` finds a verified checkpoint; it also falls back to
``checkpoint.prev.npz`` (with a warning) if the current file is damaged by something other than
the writer. Temporary files left by a killed writer are removed by the next save.

The JSON is stored inside the archive as the entry ``__meta__`` (a 0-d unicode array, readable
with ``allow_pickle=False``). Checkpoints of the earlier two-file format (``.npz`` + ``.json``
with a SHA-1 of the npz) are still read.
"""
import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "regnp-checkpoint-2"
LEGACY_FORMAT = "regnp-checkpoint-1"
META_KEY = "__meta__"
STAGES = ("write", "verify", "backup", "replace")


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or from an incompatible model."""


def checkpoint_path(path):
    """Resolve what a user may pass: a ``.npz`` file, a legacy ``.json``, or a run folder
    (``runs/x`` → ``runs/x/checkpoint.npz``; a name without suffix that is not a folder means
    ``name.npz``). Any other suffix is refused rather than swapped (``ck.npy`` once silently
    read ``ck.npz``)."""
    path = Path(path)
    if path.is_dir():
        return path / "checkpoint.npz"
    if path.suffix == ".json":
        return path.with_suffix(".npz")
    if path.suffix == "":
        return path.with_suffix(".npz")
    if path.suffix != ".npz":
        raise CheckpointError(f"{path}: a checkpoint is the .npz file written by python -m "
                              f"regnp.train (or its run folder), not a {path.suffix} file")
    return path


def backup_path(path):
    """The previous checkpoint kept beside ``path``: ``checkpoint.npz`` → ``checkpoint.prev.npz``."""
    path = Path(path)
    return path.with_name(path.stem + ".prev.npz")


def _digest(arrays):
    """SHA-1 over the names, dtypes, shapes and bytes of the arrays (order-independent)."""
    h = hashlib.sha1()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fsync_dir(folder):
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:                       # some file systems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(path):
    stale = [*path.parent.glob(f".{path.name}.*.tmp"),
             *path.parent.glob(f".{backup_path(path).name}.*.tmp")]
    for tmp in stale:
        try:
            tmp.unlink()
        except OSError:
            pass



def give_normal_mode(path):
    """Give a file made by ``tempfile.mkstemp`` (mode 0600, private) the mode ``open`` would
    have given it: 0666 less the process's umask. Used by every atomic write (checkpoints
    here, the experiment grid's JSON) before the temporary file is renamed into place."""
    umask = os.umask(0)                           # reading the umask means setting it
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)

def save_checkpoint(path, arrays, config, on_stage=None):
    """Atomically write one checkpoint file; returns its path.

    Inputs:
    - path: checkpoint file, e.g. ``runs/x/checkpoint.npz`` (a folder means ``folder/checkpoint.npz``).
    - arrays: dict name -> numpy array (weights ``model.*``, optimizer ``optim.*``, ...). Names
      must not be ``__meta__``.
    - config: JSON-serialisable dict (model options, step, RNG state, ...).
    - on_stage: optional callable ``on_stage(stage_name)`` called before each stage of
      :data:`STAGES` (tests use it to kill the writer at every stage).
    """
    path = Path(path)
    path = path / "checkpoint.npz" if path.is_dir() else path.with_suffix(".npz")
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved for the checkpoint's description")
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    meta = dict(config, format=FORMAT, sha1=_digest(arrays))
    text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=False)
    stage = on_stage or (lambda name: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        stage("write")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{META_KEY: np.array(text)})
            f.flush()
            os.fsync(f.fileno())
        give_normal_mode(tmp)                     # a checkpoint is a normal file
        stage("verify")
        _read(Path(tmp))                          # raises CheckpointError if it did not land intact
        stage("backup")
        prev = backup_path(path)
        # (rename() between two links of one file does nothing, so skip a backup that is
        # already this very file — left so by a writer killed between backup and replace)
        # A damaged current file (the one a --resume fell back from) is never rotated into
        # the backup's place: the backup is then the last good checkpoint and stays.
        if path.is_file() and not (prev.is_file() and os.path.samefile(prev, path)) \
                and _readable(path):
            link_tmp = prev.with_name(f".{prev.name}.link.tmp")
            if link_tmp.exists():
                link_tmp.unlink()
            try:
                os.link(path, link_tmp)
            except OSError:                       # no hard links here: fall back to a copy
                import shutil
                shutil.copyfile(path, link_tmp)
            os.replace(link_tmp, prev)
        stage("replace")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _readable(path):
    """True when ``path`` is a checkpoint that loads and verifies (either format)."""
    try:
        if _read(path) is None:
            _read_legacy(path)
    except CheckpointError:
        return False
    return True


def _read(path):
    """Read and verify one checkpoint file of the current format: ``(arrays, config)``, or None
    for an archive of the legacy two-file format (no description inside)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a regnp checkpoint (not an .npz archive"
                              f"{'; the file is empty' if not magic else ''})")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = list(z.files)
            if META_KEY not in files:
                return None
            arrays = {k: z[k] for k in files if k != META_KEY}
            text = str(z[META_KEY])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise CheckpointError(f"cannot read {path}: {e}; the file is corrupt") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"the description inside {path} is not valid JSON ({e}); the file "
                              f"is corrupt") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a regnp checkpoint (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("sha1") != _digest(arrays):
        raise CheckpointError(f"{path}: the arrays do not match their checksum; the file is corrupt")
    _check_description(path, config)
    return arrays, config


def _check_description(path, config):
    """The entries of a training checkpoint's description that resuming relies on, checked so
    that a hand-edited file gets one clear message (not ``int()``'s, not a silent null)."""
    edited = "the checkpoint was edited or comes from another version"
    step = config.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: its step {step!r} is not a whole number ≥ 0; {edited}")
    if "rng" in config and not isinstance(config["rng"], dict):
        raise CheckpointError(f"{path}: its random-stream state (rng) is {config['rng']!r}, not "
                              f"a mapping; {edited}")


def _sha1_file(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_legacy(npz):
    """The first wave's two-file format: ``x.npz`` (arrays) + ``x.json`` (config, SHA-1 of the npz)."""
    js = npz.with_suffix(".json")
    if not js.is_file():
        raise CheckpointError(f"{npz} is not a regnp checkpoint (no description inside it and no "
                              f"{js.name} beside it)")
    try:
        config = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint config {js} is not valid JSON ({e}); the file is "
                              f"corrupt — use an earlier checkpoint or retrain") from None
    if not isinstance(config, dict) or config.get("format") != LEGACY_FORMAT:
        raise CheckpointError(f"{js} is not a regnp checkpoint (format "
                              f"{config.get('format') if isinstance(config, dict) else None!r})")
    if config.get("sha1") != _sha1_file(npz):
        raise CheckpointError(f"{npz} does not match its config {js.name} (checksum differs): the "
                              f"weights file is corrupt or was replaced")
    _check_description(js, config)
    try:
        with np.load(npz, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, config
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"cannot read {npz}: {e}; the file is corrupt") from None


def load_checkpoint(path, fallback=True):
    """Read a checkpoint written by :func:`save_checkpoint`; returns ``(arrays, config)``.

    ``path`` may be the ``.npz`` file or its run folder. When the file is damaged and
    ``fallback`` is true, the previous checkpoint (``checkpoint.prev.npz``) is used with a
    warning. Raises :class:`CheckpointError` with a one-line explanation otherwise.
    """
    npz = checkpoint_path(path)
    if not npz.is_file():
        if npz.parent.is_dir() and not Path(path).suffix:
            where = f"the folder {npz.parent} holds no checkpoint.npz"
        else:
            where = f"checkpoint file {npz} not found"
        raise CheckpointError(f"{where} (a checkpoint is written by python -m regnp.train into "
                              f"its --out folder)")
    try:
        got = _read(npz)
        return got if got is not None else _read_legacy(npz)
    except CheckpointError as e:
        prev = backup_path(npz)
        if not (fallback and prev.is_file()):
            raise
        try:
            got = _read(prev)
        except CheckpointError:
            raise e from None
        if got is None:
            raise e from None
        # issued from this line (stacklevel 1), so Python's default filter shows it once per
        # process however many times the run is loaded (train reads it to check the options,
        # then to resume)
        warnings.warn(f"{e}; using the previous checkpoint {prev} (step "
                      f"{got[1].get('step', '?')})", RuntimeWarning, stacklevel=1)
        return got


def checkpoint_step(path):
    """The training step recorded in a checkpoint, read from its description alone (the arrays
    are neither loaded nor verified), or None when there is no readable checkpoint. Cheap enough
    for planning (the grid's time estimates); use :func:`load_checkpoint` to resume."""
    npz = checkpoint_path(path)
    try:
        with np.load(npz, allow_pickle=False) as z:
            step = json.loads(str(z[META_KEY])).get("step")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError):
        return None
    return int(step) if isinstance(step, (int, float)) else None


def load_model(path):
    """Rebuild a trained model from a training checkpoint; returns ``(model, config)``.

    ``path``: the checkpoint file or its run folder. The architecture comes from the checkpoint's
    ``model``/``model_options`` entries, the weights from its ``model.*`` arrays (names and shapes
    must match exactly).
    """
    from ._checks import check_memory, estimate_param_bytes
    from .models import build_model
    arrays, config = load_checkpoint(path)
    if not isinstance(config.get("model"), str) or not isinstance(config.get("model_options"), dict):
        raise CheckpointError(f"{path} holds no model description (was it written by "
                              f"python -m regnp.train?)")
    try:
        need = estimate_param_bytes(config["model_options"])
    except (TypeError, ValueError):
        need = 0                                  # a wrong-typed option: build_model says which
    check_memory(need, f"{path}: building its model", "the checkpoint was edited or comes from "
                                                      "another version")
    try:
        model = build_model(config["model"], **config["model_options"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model description does not build a model ({e}); "
                              f"the checkpoint was edited or comes from another version") from None
    state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return model, config
