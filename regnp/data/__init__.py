"""Data: the embedded phantom, synthetic Gaussian-mixture deformations, real image-set folders.

    from regnp.data import load_dataset
    ds = load_dataset("phantom", "train", sigma=16)     # or "chaos", "acdc", "jsrt"
    for batch in ds.batches(8, shuffle=True, seed=0):
        batch["fixed"], batch["moving"]                  # (8, 1, 256, 256) float32 in [0, 1]

See ``regnp.data.datasets`` for the pair interface, ``regnp.data.deform`` for the definition of
σ, ``regnp.data.folders`` for the folder layout (bring your own images), and
``python -m regnp.data show DATASET`` for a look at any set.
"""
from .datasets import DATASETS, PairDataset, describe, load_dataset, load_folder
from .deform import field_stats, foreground_mask, gaussian_mixture_field, invert_field, random_fields
from .phantom import PHANTOM_LABELS, make_phantom, phantom_set

__all__ = ["DATASETS", "PairDataset", "describe", "load_dataset", "load_folder", "field_stats",
           "foreground_mask", "gaussian_mixture_field", "invert_field", "random_fields",
           "PHANTOM_LABELS", "make_phantom", "phantom_set"]
