"""Data: the embedded phantom, synthetic Gaussian-mixture deformations, real image-set folders.

    from regnp.data import load_dataset
    ds = load_dataset("phantom", "train", sigma=16)     # or "chaos", "acdc", "jsrt"
    for batch in ds.batches(8, shuffle=True, seed=0):
        batch["fixed"], batch["moving"]                  # (8, 1, 256, 256) float32 in [0, 1]

See ``regnp.data.datasets`` for the pair interface, ``regnp.data.deform`` for the definition of
σ, ``regnp.data.folders`` for the folder layout (bring your own images), and
``python -m regnp.data show DATASET`` for a look at any set.

The names below are imported from their submodules on first use (PEP 562), so that
``python -m regnp.data`` and ``regnp.data.folders.read_png`` can check their input before
Numba and SciPy are loaded.
"""
import importlib

_SOURCES = {
    "datasets": ("DATASETS", "PairDataset", "describe", "load_dataset", "load_folder"),
    "deform": ("field_stats", "foreground_mask", "gaussian_mixture_field", "invert_field",
               "random_fields"),
    "phantom": ("PHANTOM_LABELS", "make_phantom", "phantom_set"),
}
_WHERE = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [name for names in _SOURCES.values() for name in names]


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value                     # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
