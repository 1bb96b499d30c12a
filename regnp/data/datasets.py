"""One pair-sampler interface for every image set: ``load_dataset(name, split, ...)``.

Sets
----
=========  ==================================================================  =================
name       pairs                                                               scored labels
=========  ==================================================================  =================
phantom    embedded procedural abdomen (``regnp.data.phantom``) + synthetic      1 liver, 4 spleen
           Gaussian-mixture deformations; nothing to download
chaos      CHAOS T2 slices as base images + synthetic deformations              1 liver, 4 spleen
acdc       real ED→ES pairs per slice (fixed = ES, moving = ED, as the paper)  3 LV cavity
                                                                               (+ 1 RV, 2 myo)
jsrt       inter-patient chest X-ray pairs, per-image percentile normalisation 1, 2 lungs
=========  ==================================================================  =================

The synthetic sets take their deformation family from a name suffix: ``chaos`` / ``phantom``
use the Gaussian-mixture displacement ("gmm", every committed job), ``chaos-svf`` /
``phantom-svf`` the same mixture as a velocity field integrated to an invertible map ("svf",
the deformation-size sweep); ``field=`` does the same. See ``regnp.data.deform`` and
``docs/deformations.md``.

A dataset is a fixed, reproducible list of pairs. ``ds[i]`` and ``ds.batch(indices)`` return a
dict of arrays with a leading batch axis::

    fixed, moving           (N, 1, H, W) float32 in [0, 1]
    fixed_mask, moving_mask (N, 1, H, W) uint8 label maps
    u                       (N, 2, H, W) float32: the generating field (synthetic sets only:
                            moving = warp(fixed, u); the ideal registration field is its inverse,
                            see ``regnp.data.deform.invert_field``), else None
    ids                     list of N pair ids

Synthetic pairs are generated on demand (pair i from the random stream ``[seed, i]``), so a
1,000-pair training set costs nothing until a batch is asked for and the same seed always gives the
same pairs. Test sets use a fixed default seed, so every run scores the same test-pair list.
Train/val/test splits are by subject (CHAOS subject, ACDC patient, JSRT image = patient): 20 % of
the subjects are test subjects; 15 % of the rest are validation subjects (for choosing the training
length and λ, never the test set); training uses the remaining subjects.
"""
from pathlib import Path

import numpy as np

from .deform import (DEFAULT_COMPONENTS, DEFAULT_MIN_DET, DEFAULT_WIDTHS, FIELDS, REFERENCE_SIZE,
                     deform, field_stats, foreground_mask, random_field, sigma_limit)
from .folders import LAYOUT_HELP, find_data_root, load_images, read_csv, split_subjects
from .phantom import PHANTOM_LABELS, make_phantom
from .._checks import check_positive_int

__all__ = ["PairDataset", "SyntheticPairs", "ImagePairs", "load_dataset", "load_folder",
           "describe", "split_set_name", "DATASETS", "SYNTHETIC_SETS", "TEST_SEED"]

TEST_SEED = 2021          # the fixed seed of every test-pair list
VAL_SEED = 2022           # the fixed seed of every validation-pair list
SPLIT_SEED = 0            # the fixed seed of the subject split
VAL_FRACTION = 0.15       # share of the training subjects held out for validation
SPLITS = ("train", "val", "test")

# label meanings and the labels the paper scores, per set
CHAOS_LABELS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}
ACDC_LABELS = {1: "RV cavity", 2: "LV myocardium", 3: "LV cavity"}
JSRT_LABELS = {1: "right lung", 2: "left lung", 3: "heart"}

DATASETS = {
    "phantom": dict(labels=PHANTOM_LABELS, eval_labels=(1, 4), report_labels=(1, 2, 3, 4)),
    "chaos": dict(folder="chaos_mr_t2_abdomen", index="index.csv", file_col="file",
                  subject_col="chaos_mr_subject", labels=CHAOS_LABELS, eval_labels=(1, 4),
                  report_labels=(1, 2, 3, 4), normalize="scale"),
    "acdc": dict(folder="acdc_cine_mri_ed_es", index="pairs.csv", fixed_col="es_file",
                 moving_col="ed_file", subject_col="patient", id_col="pair_id", labels=ACDC_LABELS,
                 eval_labels=(3,), report_labels=(1, 2, 3), normalize="scale"),
    "jsrt": dict(folder="jsrt_scr_cxr", index="index.csv", file_col="file", subject_col="jsrt_id",
                 labels=JSRT_LABELS, eval_labels=(1, 2), report_labels=(1, 2, 3),
                 normalize="percentile"),
}


def _stack(items):
    out = {k: np.concatenate([it[k] for it in items]) for k in
           ("fixed", "moving", "fixed_mask", "moving_mask")}
    out["u"] = None if items[0]["u"] is None else np.concatenate([it["u"] for it in items])
    out["ids"] = [i for it in items for i in it["ids"]]
    return out


class PairDataset:
    """Base class: a fixed list of (fixed, moving) pairs with masks.

    Attributes: ``name``, ``split``, ``labels`` ({value: meaning}), ``eval_labels`` (the labels
    of the paper's Dice), ``report_labels`` (every labelled structure), ``shape`` (H, W),
    ``pair_ids`` (list of str, the test-pair list for a test split).
    Subclasses implement ``_item(i) -> dict`` (arrays with N = 1).
    """
    name = "pairs"

    def __len__(self):
        return len(self.pair_ids)

    def __getitem__(self, i):
        if isinstance(i, (int, np.integer)):
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"pair index {i} out of range for {n} pairs")
            return self._item(int(i) % n)
        raise TypeError(f"index a dataset with an int (use .batch(indices) for several), got "
                        f"{type(i).__name__}")

    def batch(self, indices):
        """Stack the pairs ``indices`` into one batch dict (see the module docstring)."""
        return _stack([self[int(i)] for i in indices])

    def batches(self, batch_size, shuffle=False, seed=0, drop_last=False):
        """Iterate over one epoch in batches (shuffled with ``seed`` when asked)."""
        batch_size = check_positive_int("batch_size", batch_size)
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle \
            else np.arange(len(self))
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            if drop_last and len(idx) < batch_size:
                return
            yield self.batch(idx)

    def __repr__(self):
        H, W = self.shape
        return f"<{type(self).__name__} {self.name!r} split={self.split!r} {len(self)} pairs {H}×{W}>"


class SyntheticPairs(PairDataset):
    """Pairs (fixed = base image, moving = base warped by a random field of the family ``field``).

    Inputs:
    - bases: object with ``len()`` and ``get(k) -> (image (1,H,W), mask (1,H,W), body (H,W))``
      (use :meth:`from_arrays` for arrays).
    - sigma: RMS displacement over the body, in pixels of a 256×256 image (scaled by
      min(H, W)/256 at other sizes, as are the widths). See ``regnp.data.deform``.
    - n_pairs: number of pairs.
    - seed: pair i uses the random stream ``[seed, i]`` (base choice and field).
    - field: "gmm" (default: the Gaussian mixture is the displacement; fold-free draws only) or
      "svf" (the mixture is a velocity, u = exp(v) − id; invertible at any σ). See
      ``regnp.data.deform``; a σ means the same RMS displacement in both.
    - n_components, widths, min_det: the field's parameters (see gaussian_mixture_field;
      ``min_det`` is the "gmm" family's only).
    A σ above the family's limit (``regnp.data.deform.sigma_limit``) is refused here, with the
    largest σ it draws, before any pair is made.
    """

    def __init__(self, bases, sigma, n_pairs, seed=0, name="synthetic", split="train",
                 labels=None, eval_labels=(1,), report_labels=None, base_ids=None,
                 n_components=DEFAULT_COMPONENTS, widths=DEFAULT_WIDTHS, min_det=DEFAULT_MIN_DET,
                 field="gmm"):
        self.bases = bases
        self.n_pairs = check_positive_int("n_pairs", n_pairs)
        if not np.isfinite(sigma) or sigma < 0:
            raise ValueError(f"sigma must be a finite number ≥ 0, got {sigma!r}")
        if field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(map(repr, FIELDS))}, got {field!r}")
        limit = sigma_limit(field, widths)
        if sigma > limit:
            more = (f"; the invertible velocity-field deformations (--dataset chaos-svf or "
                    f"phantom-svf, field='svf') draw up to {sigma_limit('svf', widths):g}"
                    if field == "gmm" else "")
            raise ValueError(f"sigma {sigma:g} is more than the {field!r} deformations draw with "
                             f"bumps {widths[0]:g}–{widths[1]:g} px wide (px at 256×256): the "
                             f"largest is {limit:g}{more}")
        self.field_family = field
        self.sigma, self.seed, self.name, self.split = float(sigma), int(seed), name, split
        self.labels = labels or {}
        self.eval_labels, self.report_labels = tuple(eval_labels), tuple(report_labels or eval_labels)
        img0 = bases.get(0)[0]
        self.shape = img0.shape[-2:]
        scale = min(self.shape) / REFERENCE_SIZE
        self.sigma_px = self.sigma * scale
        self.field_kwargs = dict(n_components=tuple(n_components),
                                 widths=(widths[0] * scale, widths[1] * scale))
        if field == "gmm":
            self.field_kwargs["min_det"] = min_det
        self.base_ids = list(base_ids) if base_ids is not None else [f"base{k}" for k in
                                                                     range(len(bases))]
        self.pair_ids = [f"{self._plan(i)[1]}|s{self.seed}-{i}" for i in range(self.n_pairs)]
        self._kept, self._keep_max = {}, 0           # fields kept in memory (keep_fields)

    @classmethod
    def from_arrays(cls, images, masks, sigma, n_pairs, **kwargs):
        """Bases from arrays: images (B, 1, H, W) float32, masks (B, 1, H, W) integer."""
        return cls(_ArrayBases(images, masks), sigma, n_pairs, **kwargs)

    def _plan(self, i):
        rng = np.random.default_rng([self.seed, i])
        k = int(rng.integers(len(self.bases)))
        return rng, self.base_ids[k], k

    def field(self, i, return_info=False):
        """The generating field of pair i, (2, H, W) (with ``return_info``: and the family's
        draw record, e.g. how many draws were rejected before it; see ``regnp.data.deform``)."""
        rng, _, k = self._plan(i)
        return random_field(self.shape, self.sigma_px, seed=rng, region=self.bases.get(k)[2],
                            field=self.field_family, return_info=return_info, **self.field_kwargs)

    def keep_fields(self, max_bytes):
        """Keep the fields of the first pairs drawn in memory, up to ``max_bytes`` in all, so
        that later epochs do not draw them again (drawing a velocity field — a Gaussian mixture
        integrated by scaling and squaring — is most of a training pair's cost). A field is a
        pure function of (seed, i), so a kept field is bitwise the array a new draw would give:
        training sees the same batches either way. ``max_bytes`` 0 keeps nothing (the default).
        Returns how many pairs' fields fit."""
        H, W = self.shape
        per_pair = 2 * H * W * np.dtype(np.float32).itemsize                     # (1, 2, H, W)
        self._keep_max = min(len(self), max(0, int(max_bytes)) // per_pair)
        self._kept = {}
        return self._keep_max

    def _item(self, i):
        img, mask, _ = self.bases.get(self._plan(i)[2])                         # (1,H,W),(1,H,W)
        u = self._kept.get(i)
        if u is None:
            u = self.field(i)[None]                                             # (1, 2, H, W)
            if len(self._kept) < self._keep_max:
                u.setflags(write=False)                  # nothing may change a kept field
                self._kept[i] = u
        if not u.flags.writeable:
            u = u.copy()                                 # callers get their own array
        moving, moving_mask = deform(img[None], mask[None], u)                  # (1, 1, H, W) each
        return dict(fixed=img[None], moving=moving, fixed_mask=mask[None], moving_mask=moving_mask,
                    u=u, ids=[self.pair_ids[i]])

    def body(self, i):
        """The body mask (H, W) over which σ of pair i is measured."""
        return self.bases.get(self._plan(i)[2])[2]


class _ArrayBases:
    def __init__(self, images, masks):
        if images.ndim != 4 or images.shape[1] != 1 or masks.shape != images.shape:
            raise ValueError(f"bases must be images (B, 1, H, W) and masks of the same shape, got "
                             f"{images.shape} and {masks.shape}")
        self.images, self.masks = images.astype(np.float32), masks.astype(np.uint8)
        self._bodies = {}

    def __len__(self):
        return len(self.images)

    def get(self, k):
        if k not in self._bodies:
            self._bodies[k] = foreground_mask(self.images[k, 0])
        return self.images[k], self.masks[k], self._bodies[k]


class _PhantomBases:
    """Phantom subjects drawn on first use and kept (about 0.1 s each at 256×256)."""

    def __init__(self, seeds, shape):
        self.seeds, self.shape, self._cache = list(seeds), shape, {}

    def __len__(self):
        return len(self.seeds)

    def get(self, k):
        if k not in self._cache:
            img, lab = make_phantom(self.seeds[k], self.shape)
            self._cache[k] = (img[None], lab[None], foreground_mask(img))
        return self._cache[k]


class ImagePairs(PairDataset):
    """Pairs of real images: ``pairs`` is a list of (fixed index, moving index) into the arrays.

    Inputs: images (n, 1, H, W) float32, masks (n, 1, H, W) uint8, pairs list of (i, j),
    ids list of str (one per pair).
    """

    def __init__(self, images, masks, pairs, ids, name="pairs", split="train", labels=None,
                 eval_labels=(1,), report_labels=None):
        self.images, self.masks = images, masks
        self.pairs = [(int(a), int(b)) for a, b in pairs]
        self.pair_ids = list(ids)
        self.name, self.split, self.labels = name, split, labels or {}
        self.eval_labels, self.report_labels = tuple(eval_labels), tuple(report_labels or eval_labels)
        self.shape = images.shape[-2:]

    def _item(self, i):
        a, b = self.pairs[i]
        return dict(fixed=self.images[a:a + 1], moving=self.images[b:b + 1],
                    fixed_mask=self.masks[a:a + 1], moving_mask=self.masks[b:b + 1], u=None,
                    ids=[self.pair_ids[i]])


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")


def _split_three(subjects, test_fraction, val_fraction, split_seed):
    """Subjects of the train, val and test splits (disjoint, deterministic).

    The test subjects are drawn first, exactly as a two-way split would draw them, so adding the
    validation split never moves a subject into or out of the test set. The validation subjects
    are then drawn from the remaining (training) subjects with the next seed; with a single
    training subject there is no room for validation and ``val`` is empty.
    """
    train, test = split_subjects(subjects, test_fraction, split_seed)
    if len(train) < 2 or val_fraction <= 0:
        return {"train": train, "val": [], "test": test}
    train, val = split_subjects(train, val_fraction, split_seed + 1)
    return {"train": train, "val": val, "test": test}


def _size(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"size must be an int or (H, W), got {size!r}")
    return (check_positive_int("size[0]", size[0]), check_positive_int("size[1]", size[1]))


def _default_seed(split):
    return {"train": 0, "val": VAL_SEED, "test": TEST_SEED}[split]


def _check_nonempty(subjects, split, folder):
    if not subjects:
        raise ValueError(f"{folder}: too few subjects for a {split!r} split (the test split takes "
                         f"20 % of the subjects, validation 15 % of the rest); add subjects or "
                         f"train without validation (--val-pairs 0)")


def _inter_pairs(n_images, n_pairs, seed):
    """Distinct ordered pairs (i, j), i ≠ j, drawn without replacement."""
    total = n_images * (n_images - 1)
    if total == 0:
        raise ValueError("need at least 2 images to form inter-subject pairs")
    codes = np.random.default_rng(seed).choice(total, size=min(n_pairs, total), replace=False)
    i = codes // (n_images - 1)
    j = codes % (n_images - 1)
    j = j + (j >= i)                                       # skip the diagonal
    return list(zip(i.tolist(), j.tolist()))


def load_folder(folder, mode, split="train", name=None, index=None, file_col="file",
                subject_col=None, fixed_col="fixed_file", moving_col="moving_file", id_col=None,
                labels=None, eval_labels=(1,), report_labels=None, normalize="scale", size=None,
                sigma=10.0, n_pairs=None, seed=None, test_fraction=0.2, val_fraction=VAL_FRACTION,
                split_seed=SPLIT_SEED, **field_kwargs):
    """A dataset from a folder laid out as in ``regnp.data.folders`` (your own images too).

    Inputs:
    - folder: the set folder (holds images/, masks/ and the CSV).
    - mode: "synthetic" (index rows are base images for synthetic pairs), "inter" (random pairs
      of different subjects) or "pairs" (the CSV lists real pairs: ``fixed_col``, ``moving_col``).
    - split: "train", "val" or "test" (by subject: ``subject_col``, or the file name when None).
      The test subjects are ``test_fraction`` of all subjects; the validation subjects are
      ``val_fraction`` of the rest (never test subjects); training uses what remains.
    - index: the CSV's name (default ``pairs.csv`` in pairs mode, else ``index.csv``); its
      columns: ``file_col`` (and ``subject_col``), or ``fixed_col``/``moving_col`` in pairs mode.
    - labels / eval_labels / report_labels: label meanings (their keys, plus 0, are the values a
      mask may hold; None = not checked) and the labels to score.
    - normalize: "scale" | "minmax" | "percentile" | "none" (see ``normalize_intensity``).
    - size: optional (H, W) (or int) to resize to: images bilinear, masks nearest.
    - sigma, field_kwargs: synthetic mode only (``field``, ``n_components``, ``widths``,
      ``min_det``: see :class:`SyntheticPairs`).
    - n_pairs: synthetic/inter: number of pairs (default 1000 train, 80 synthetic test,
      60 inter test); pairs mode: all pairs of the split.
    - seed: pair-sampling seed; default 0 for train, ``VAL_SEED`` for val and ``TEST_SEED`` for
      test (fixed validation and test lists).
    """
    _check_split(split)
    if mode not in ("synthetic", "inter", "pairs"):
        raise ValueError(f"mode must be 'synthetic', 'inter' or 'pairs', got {mode!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image-set folder {str(folder)!r} does not exist; {LAYOUT_HELP}")
    name = name or folder.name
    index = index or ("pairs.csv" if mode == "pairs" else "index.csv")
    size = _size(size)
    seed = _default_seed(split) if seed is None else int(seed)
    label_values = None if labels is None else {0, *labels}
    common = dict(name=name, split=split, labels=labels, eval_labels=eval_labels,
                  report_labels=report_labels)
    if mode == "pairs":
        need = [fixed_col, moving_col] + [c for c in (subject_col, id_col) if c]
        rows = read_csv(folder / index, required=need)
        subjects = [r[subject_col] if subject_col else r[fixed_col] for r in rows]
        keep = set(_split_three(subjects, test_fraction, val_fraction, split_seed)[split])
        _check_nonempty(keep, split, folder)
        rows = [r for r, s in zip(rows, subjects) if s in keep]
        files = sorted({r[c] for r in rows for c in (fixed_col, moving_col)})
        images, masks = load_images(folder, files, normalize, size, label_values)
        pos = {f: k for k, f in enumerate(files)}
        pairs = [(pos[r[fixed_col]], pos[r[moving_col]]) for r in rows]
        ids = [r[id_col] if id_col else f"{r[fixed_col]}<-{r[moving_col]}" for r in rows]
        if n_pairs is not None:
            pairs, ids = pairs[:n_pairs], ids[:n_pairs]
        return ImagePairs(images, masks, pairs, ids, **common)
    need = [file_col] + ([subject_col] if subject_col else [])
    rows = read_csv(folder / index, required=need)
    subjects = [r[subject_col] if subject_col else r[file_col] for r in rows]
    keep = set(_split_three(subjects, test_fraction, val_fraction, split_seed)[split])
    _check_nonempty(keep, split, folder)
    files = [r[file_col] for r, s in zip(rows, subjects) if s in keep]
    images, masks = load_images(folder, files, normalize, size, label_values)
    stems = [Path(f).stem for f in files]
    if mode == "inter":
        n_pairs = n_pairs or (1000 if split == "train" else 60)
        pairs = _inter_pairs(len(files), n_pairs, seed)
        return ImagePairs(images, masks, pairs, [f"{stems[a]}<-{stems[b]}" for a, b in pairs],
                          **common)
    n_pairs = n_pairs or (1000 if split == "train" else 80)
    return SyntheticPairs.from_arrays(images, masks, sigma, n_pairs, seed=seed, base_ids=stems,
                                      **common, **field_kwargs)


SYNTHETIC_SETS = ("phantom", "chaos")


def split_set_name(name):
    """``"chaos-svf"`` → ``("chaos", "svf")``; a plain name → ``(name, None)``.

    A synthetic set's name may end in ``-FIELD`` (FIELD one of ``regnp.data.deform.FIELDS``) to
    choose the deformation family: this is how a command line (``--dataset chaos-svf``) and a
    grid job's test list choose it without another option, and a checkpoint's data config
    then records it."""
    if isinstance(name, str) and "-" in name:
        base, _, field = name.rpartition("-")
        if field in FIELDS:
            if base not in SYNTHETIC_SETS:
                raise ValueError(f"dataset {name!r}: a deformation family (-{field}) applies to "
                                 f"the synthetic sets only ({', '.join(SYNTHETIC_SETS)}), e.g. "
                                 f"chaos-{field}")
            return base, field
    return name, None


def load_dataset(name, split="train", data_root=None, size=None, sigma=10.0, n_pairs=None,
                 seed=None, field=None, **kwargs):
    """The named set as a :class:`PairDataset`.

    Inputs:
    - name: "phantom", "chaos", "acdc" or "jsrt"; a synthetic set may carry its deformation
      family as a suffix: "chaos-svf", "phantom-svf" (same as ``field="svf"``); "chaos-gmm" is
      "chaos".
    - split: "train", "val" (held-out training subjects, for choosing steps and λ) or "test".
    - data_root: folder holding the real sets (default: see ``find_data_root``); unused for
      "phantom".
    - size: optional int or (H, W) working size (default: the files' size; phantom 256×256).
    - sigma: synthetic sets (phantom, chaos): RMS displacement over the body, pixels at 256×256.
    - field: synthetic sets: "gmm" (default) or "svf", see :class:`SyntheticPairs`.
    - n_pairs, seed: see :func:`load_folder`. Phantom extra kwargs: ``n_subjects`` (default 40
      train / 10 val / 10 test, disjoint seeds).
    Example::

        >>> ds = load_dataset("phantom", "test", sigma=16, n_pairs=4)
        >>> b = ds.batch([0, 1]); b["fixed"].shape, b["u"].shape
        ((2, 1, 256, 256), (2, 2, 256, 256))
    """
    _check_split(split)
    full_name = name
    name, suffix = split_set_name(name)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} (a "
                         f"synthetic one may end in -svf: chaos-svf, phantom-svf)")
    if suffix and field and suffix != field:
        raise ValueError(f"dataset {full_name!r} names the field family {suffix!r}, but "
                         f"field={field!r} was given; give one of them")
    field = suffix or field
    if field is not None:
        if name not in SYNTHETIC_SETS:
            raise ValueError(f"field={field!r}: deformation families apply to the synthetic sets "
                             f"only ({', '.join(SYNTHETIC_SETS)}), not {name!r}")
        kwargs["field"] = field
    spec = dict(DATASETS[name])
    if name == "phantom":
        shape = _size(size) or (256, 256)
        n_sub = kwargs.pop("n_subjects", 40 if split == "train" else 10)
        first = {"train": 0, "val": 200_000, "test": 100_000}[split]   # disjoint subjects
        seeds = range(first, first + check_positive_int("n_subjects", n_sub))
        seed = _default_seed(split) if seed is None else int(seed)
        n_pairs = n_pairs or (1000 if split == "train" else 80)
        return SyntheticPairs(_PhantomBases(seeds, shape), sigma, n_pairs, seed=seed,
                              name=full_name if suffix else name,
                              split=split, labels=spec["labels"], eval_labels=spec["eval_labels"],
                              report_labels=spec["report_labels"],
                              base_ids=[f"phantom{s}" for s in seeds], **kwargs)
    root = find_data_root(data_root)
    folder = root / spec.pop("folder")
    if not folder.is_dir() and (root / spec["index"]).is_file():
        folder = root                                      # data_root points at the set itself
    mode = {"chaos": "synthetic", "acdc": "pairs", "jsrt": "inter"}[name]
    spec.update(kwargs)
    return load_folder(folder, mode, split=split, name=full_name if suffix else name, size=size,
                       sigma=sigma,
                       n_pairs=n_pairs, seed=seed, **spec)


def describe(ds, max_pairs=None):
    """Counts and statistics of a dataset (Dice before registration, displacement, folding).

    Returns a dict: n_pairs, shape, per-label Dice before registration (mean, std over pairs),
    mean Dice over ``eval_labels``, intensity mean/std, label areas and, for synthetic sets,
    mean/max displacement over the body, RMS, % folded pixels and min det of the fields.
    Dice follows the README's convention: per label present in the fixed mask (a label absent
    from a pair's fixed mask is not scored for that pair, rather than scoring 1.0).
    """
    from ..metrics import dice

    n = len(ds) if max_pairs is None else min(len(ds), max_pairs)
    per_label = {l: [] for l in ds.report_labels}
    pair_dice, means, stds = [], [], []
    disp = []
    areas = {l: [] for l in ds.report_labels}
    for i in range(n):
        it = ds[i]
        fm, mm = it["fixed_mask"][0, 0], it["moving_mask"][0, 0]
        d = dice(fm, mm, labels=list(ds.report_labels))["per_label"]
        for l in ds.report_labels:
            area = int((fm == l).sum())
            areas[l].append(area)
            if area:                      # a label absent from the fixed mask is not scored
                per_label[l].append(d[l])
        present = [l for l in ds.eval_labels if (fm == l).any()]
        if present:                       # a pair whose fixed mask has none of them has no Dice
            pair_dice.append(np.mean(list(dice(fm, mm, labels=present)["per_label"].values())))
        means.append(float(it["fixed"].mean()))
        stds.append(float(it["fixed"].std()))
        if it["u"] is not None:
            disp.append(field_stats(it["u"][0], ds.body(i)))
    out = dict(name=ds.name, split=ds.split, n_pairs=len(ds), n_scored=n, shape=tuple(ds.shape),
               eval_labels=tuple(ds.eval_labels),
               dice_before=((float(np.mean(pair_dice)), float(np.std(pair_dice))) if pair_dice
                            else (float("nan"), float("nan"))),
               dice_per_label={l: (float(np.mean(v)), float(np.std(v))) for l, v in per_label.items() if v},
               label_area_px={l: float(np.mean(v)) for l, v in areas.items()},
               intensity_mean=float(np.mean(means)), intensity_std=float(np.mean(stds)))
    if disp:
        out["field"] = {k: (float(np.mean([s[k] for s in disp])), float(np.max([s[k] for s in disp])))
                        for k in disp[0]}
        out["field"]["min_det"] = (float(np.mean([s["min_det"] for s in disp])),
                                   float(np.min([s["min_det"] for s in disp])))
        out["sigma"] = ds.sigma
    if hasattr(ds, "images"):
        out["n_images"] = len(ds.images)
    elif hasattr(ds, "bases"):
        out["n_images"] = len(ds.bases)
    return out
