"""Reading image sets from a folder of PNG images, integer-label PNG masks and a CSV index.

Layout (the shared sets in ``../shared/data/*`` and any set you bring yourself)::

    my_set/
      images/<name>.png     grayscale image (8- or 16-bit; RGB/palette images are converted to gray)
      masks/<name>.png      integer label map, SAME file name and SAME size as the image
      index.csv             one row per image: a file-name column (default ``file``) and optionally
                            a subject column (the train/test split is by subject)
      pairs.csv             (only for real pairs) one row per pair: fixed and moving file names

Everything here is plain I/O and validation; the pair samplers are in ``regnp.data.datasets``.
PNG decoding uses Pillow, which matplotlib already depends on.
"""
import csv
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

__all__ = ["find_data_root", "read_csv", "read_png", "load_images", "normalize_intensity",
           "resize_image", "resize_labels", "split_subjects", "LAYOUT_HELP"]

LAYOUT_HELP = (
    "expected layout: DATA_ROOT/<set>/images/*.png (grayscale), DATA_ROOT/<set>/masks/*.png "
    "(integer labels, same names and sizes) and an index CSV (index.csv, or pairs.csv for ACDC); "
    "the shared sets are chaos_mr_t2_abdomen/, acdc_cine_mri_ed_es/, jsrt_scr_cxr/ "
    "(see docs/data.md)")


def find_data_root(data_root=None):
    """The folder that holds the image sets.

    Order: the ``data_root`` argument; ``$REGNP_DATA_ROOT``; ``../shared/data`` relative to the
    current directory; ``../shared/data`` beside the regnp checkout. Raises FileNotFoundError
    naming the expected layout when none exists.
    """
    if data_root is not None:
        p = Path(data_root).expanduser()
        if p.exists() and not p.is_dir():
            raise ValueError(f"data root {str(p)!r} is a file, not a folder; {LAYOUT_HELP}")
        if not p.is_dir():
            raise FileNotFoundError(f"data root {str(p)!r} does not exist; {LAYOUT_HELP}")
        return p
    env = os.environ.get("REGNP_DATA_ROOT")
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"REGNP_DATA_ROOT={env!r} is not a folder; {LAYOUT_HELP}")
        return p
    tried = [Path.cwd().parent / "shared" / "data",
             Path(__file__).resolve().parents[2].parent / "shared" / "data"]
    for p in tried:
        if p.is_dir():
            return p
    raise FileNotFoundError(
        "no image-set folder found (tried " + ", ".join(repr(str(t)) for t in tried) + "); pass "
        "--data-root DIR or set REGNP_DATA_ROOT, or use the embedded 'phantom' set; " + LAYOUT_HELP)


def read_csv(path, required=()):
    """Rows of a CSV file as a list of dicts; checks that the ``required`` columns exist."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"index {str(path)!r} is a folder, not a CSV file; {LAYOUT_HELP}")
    if not path.is_file():
        raise FileNotFoundError(f"index file {str(path)!r} is missing; {LAYOUT_HELP}")
    # utf-8-sig: spreadsheet programs often save a byte-order mark, which would otherwise stick
    # to the first column's name ("\ufefffile")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() if isinstance(c, str) else c for c in (reader.fieldnames or [])]
            reader.fieldnames = cols
            missing = [c for c in required if c not in cols]
            if missing:
                raise ValueError(f"{path.name} lacks column(s) {missing}; it has {cols}")
            rows = [r for r in reader if any(isinstance(v, str) and v.strip() for v in r.values())]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path.name} is not UTF-8 text ({e.reason} at byte {e.start}); save it "
                         f"as CSV (UTF-8)") from None
    except csv.Error as e:
        raise ValueError(f"{path.name} is not a valid CSV file ({e})") from None
    if not rows:
        raise ValueError(f"{path.name} has no data rows")
    return rows


def read_png(path, kind="image"):
    """One PNG as a 2-D array.

    Inputs:
    - path: the file.
    - kind: "image" (RGB/RGBA/palette converted to gray; returns uint8 or uint16) or
      "mask" (must be single-channel; palette indices are the labels; returns an integer array).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{kind} {str(path)!r} is a folder, not a PNG file")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} is missing")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if kind == "mask":
                if mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                    raise ValueError(f"mask {path.name} has PNG mode {mode!r}; masks must be "
                                     f"single-channel integer label images (mode L, P or I)")
                arr = np.array(im)
                if arr.dtype == bool:
                    arr = arr.astype(np.uint8)
            else:
                if mode in ("RGB", "RGBA", "P", "LA", "1", "CMYK", "YCbCr"):
                    im = im.convert("L")
                arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {kind} {str(path)!r} as PNG ({e}); the file is corrupt or "
                         f"not an image") from None
    if arr.ndim != 2:
        raise ValueError(f"{kind} {path.name} has shape {arr.shape}; expected a 2-D grayscale image")
    return arr


def normalize_intensity(img, method="scale"):
    """Map one image to float32 in [0, 1].

    Methods:
    - "scale": divide by the dtype's maximum (255 for 8-bit, 65535 for 16-bit);
    - "minmax": (img − min) / (max − min) per image;
    - "percentile": per image, the 1st..99th percentile range stretched to [0, 1] and clipped —
      robust to a few saturated pixels and to washed-out exposures (chest X-rays);
    - "none": cast to float32 as is.
    """
    x = img.astype(np.float32)
    if method == "scale":
        top = float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0
        return np.clip(x / top, 0.0, 1.0)
    if method in ("minmax", "percentile"):
        lo, hi = (x.min(), x.max()) if method == "minmax" else np.percentile(x, [1.0, 99.0])
        if hi - lo < 1e-6:
            return np.zeros_like(x)
        return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)
    if method == "none":
        return x
    raise ValueError(f"unknown normalisation {method!r}; use 'scale', 'minmax', 'percentile' or "
                     f"'none'")


def _src_coords(n_out, n_in):
    """Pixel-centre aligned source coordinates of n_out output pixels on an n_in grid."""
    return (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5


def resize_image(img, size):
    """Bilinear resize of a 2-D float image to ``size = (H, W)`` (pixel centres aligned).

    When shrinking, the image is first blurred (Gaussian, σ = (factor − 1)/2 px) against aliasing.
    """
    H, W = img.shape
    h, w = size
    if (h, w) == (H, W):
        return img
    fy, fx = H / h, W / w
    sig = (max(fy - 1, 0) / 2, max(fx - 1, 0) / 2)
    src = ndi.gaussian_filter(img, sig, mode="nearest") if max(sig) > 0 else img
    yy, xx = np.meshgrid(_src_coords(h, H), _src_coords(w, W), indexing="ij")
    return ndi.map_coordinates(src, [yy, xx], order=1, mode="nearest").astype(img.dtype)


def resize_labels(lab, size):
    """Nearest-neighbour resize of a 2-D label map to ``size = (H, W)`` (labels never mix)."""
    H, W = lab.shape
    h, w = size
    if (h, w) == (H, W):
        return lab
    yi = np.clip(np.floor(_src_coords(h, H) + 0.5).astype(int), 0, H - 1)
    xi = np.clip(np.floor(_src_coords(w, W) + 0.5).astype(int), 0, W - 1)
    return lab[yi[:, None], xi[None, :]]


def load_images(folder, files, normalize="scale", size=None, label_values=None):
    """Load images and their masks by file name, validating everything.

    Inputs:
    - folder: the set folder (holds images/ and masks/).
    - files: list of file names (as in the CSV).
    - normalize: see :func:`normalize_intensity`.
    - size: optional (H, W): resize images (bilinear) and masks (nearest).
    - label_values: optional set of allowed label values (checked on every mask).
    Returns:
    - images: (n, 1, H, W) float32 in [0, 1].
    - masks: (n, 1, H, W) uint8.
    """
    folder = Path(folder)
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"{str(folder / sub)!r} is missing; {LAYOUT_HELP}")
    missing = [f for f in files if not (folder / "images" / f).is_file()]
    missing_m = [f for f in files if not (folder / "masks" / f).is_file()]
    if missing or missing_m:
        msg = []
        if missing:
            msg.append(f"{len(missing)} image(s) listed in the index are missing from images/ "
                       f"(first: {missing[:3]})")
        if missing_m:
            msg.append(f"{len(missing_m)} mask(s) are missing from masks/ (first: {missing_m[:3]}); "
                       f"each image needs a mask with the same file name")
        raise FileNotFoundError(f"in {str(folder)!r}: " + "; ".join(msg))
    imgs, masks = [], []
    allowed = None if label_values is None else np.array(sorted(label_values))
    for f in files:
        im = read_png(folder / "images" / f, "image")
        m = read_png(folder / "masks" / f, "mask")
        if im.shape != m.shape:
            raise ValueError(f"image {f} is {im.shape} but its mask is {m.shape}; image and mask "
                             f"must have the same size")
        if allowed is not None:
            vals = np.unique(m)
            bad = vals[~np.isin(vals, allowed)]
            if bad.size:
                raise ValueError(f"mask {f} contains label value(s) {bad.tolist()} not among the "
                                 f"documented labels {allowed.tolist()}")
        if m.size and m.min() < 0:
            raise ValueError(f"mask {f} has negative label value(s) "
                             f"{np.unique(m[m < 0])[:5].tolist()}; labels must be 0 (background) "
                             f"or positive integers")
        if m.max() > 255:
            raise ValueError(f"mask {f} has label {int(m.max())} > 255; regnp stores labels as uint8")
        x = normalize_intensity(im, normalize)
        m = m.astype(np.uint8)
        if size is not None:
            x, m = resize_image(x, size), resize_labels(m, size)
        imgs.append(x)
        masks.append(m)
    shapes = {a.shape for a in imgs}
    if len(shapes) > 1:
        raise ValueError(f"images in {str(folder)!r} have different sizes {sorted(shapes)}; pass "
                         f"size=(H, W) (--size) to resize them to one size")
    return np.stack(imgs).astype(np.float32)[:, None], np.stack(masks)[:, None]


def split_subjects(subjects, test_fraction=0.2, seed=0):
    """Deterministic train/test split of subject ids.

    The sorted unique subjects are permuted with ``np.random.default_rng(seed)``; the first
    ``max(1, round(test_fraction·n))`` are the test subjects. Returns (train, test), sorted lists.
    """
    subs = sorted(set(subjects), key=lambda s: (len(str(s)), str(s)))
    if len(subs) < 2:
        raise ValueError(f"need at least 2 subjects to split into train and test, got {subs}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(len(subs))
    n_test = min(len(subs) - 1, max(1, int(round(test_fraction * len(subs)))))
    test = sorted((subs[i] for i in perm[:n_test]), key=lambda s: (len(str(s)), str(s)))
    train = [s for s in subs if s not in set(test)]
    return train, test
