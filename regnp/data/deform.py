"""Synthetic deformations: spatial Gaussian-mixture displacement fields with a set size σ.

The paper (Sec. 5.1) deforms one liver MRI with "a spatial Gaussian mixture model" whose
"deformation energy σ" is 10 (moderate) or 16 (large), but never defines σ. regnp's definition:

Field
-----
A field is a sum of K isotropic Gaussian bumps, each carrying a random 2-D displacement vector::

    u(p) = s · Σ_k a_k · exp(−|p − c_k|² / (2 w_k²)),        p, c_k in pixels, a_k ~ N(0, I₂)

* K is drawn uniformly from ``n_components`` (default 4..8 inclusive);
* the centres c_k are drawn uniformly from the pixels of ``region`` (the body; the whole image if
  no region is given), so the deformation happens where the anatomy is;
* the widths w_k (the Gaussians' standard deviations, pixels) uniformly from ``widths``
  (default 28..60 px);
* the global scale s is then chosen so that the **RMS displacement over the region is exactly σ**::

      σ = sqrt( mean_{p ∈ region} |u(p)|² )      (pixels)

  i.e. σ is the standard deviation of the displacement over the body — a "deformation energy" in
  the literal sense (the mean squared displacement is σ²).

Why this definition: a first try that scaled a 3–6 bump mixture (widths 20–40 px) so that the
*peak* |u| was σ left the σ = 16 CHAOS pairs at 88 % liver+spleen Dice before registration (mean
|u| in the body ≈ 4 px): most of the body hardly moved. Fixing the RMS over the body makes every
pair move by about σ on average, so σ = 16 is clearly hard and σ = 10 moderate (measured numbers
in the README, "Data"; reproduce them with ``python -m regnp.data sigma-stats chaos``).

Invertibility
-------------
Every returned field is fold-free: ``det J_φ(p) > min_det`` (default 0.1) at every pixel, with
φ = id + u and the Jacobian of :func:`regnp.metrics.jacobian_determinant`. A draw that fails
is **rejected** and redrawn from the same random stream (so σ keeps its exact meaning and the
result stays reproducible); after ``max_tries`` failures a ``RuntimeError`` says which
parameters to change. With the defaults, measured on CHAOS bodies, 0 % of the draws are
rejected at σ = 10 and about 7 % at σ = 16.

Reproducibility: a field is a pure function of (seed, index, shape, region, parameters); fields
are generated on demand, so a dataset of 1,000 pairs costs nothing until a batch is asked for.
"""
import numpy as np
from scipy import ndimage as ndi

from .._checks import check_array, check_positive_int
from ..metrics import folding_stats, jacobian_determinant
from ..ops.warp import warp_forward, warp_nearest

DEFAULT_COMPONENTS = (4, 8)
DEFAULT_WIDTHS = (28.0, 60.0)
DEFAULT_MIN_DET = 0.1
REFERENCE_SIZE = 256  # σ and the widths are quoted for 256×256 images, as in the paper

__all__ = ["gaussian_mixture_field", "random_fields", "deform", "field_stats", "foreground_mask",
           "invert_field", "DEFAULT_COMPONENTS", "DEFAULT_WIDTHS", "DEFAULT_MIN_DET"]


def _as_rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, list, tuple)):
        raise TypeError(f"seed must be an int, a list of ints or a numpy Generator, got {seed!r}")
    return np.random.default_rng(seed)


def _check_range(name, r, kind=float, lo=0.0):
    if not (isinstance(r, (tuple, list)) and len(r) == 2):
        raise ValueError(f"{name} must be a pair (low, high), got {r!r}")
    a, b = kind(r[0]), kind(r[1])
    if not (np.isfinite(a) and np.isfinite(b)) or a <= lo or b < a:
        raise ValueError(f"{name} must satisfy {lo} < low <= high, got {r!r}")
    return a, b


def _check_region(region, H, W):
    if region is None:
        return None
    if not isinstance(region, np.ndarray) or region.shape != (H, W):
        raise ValueError(f"region must be a boolean array of shape {(H, W)} (the body mask), got "
                         f"{getattr(region, 'shape', type(region).__name__)}")
    region = region.astype(bool, copy=False)
    if not region.any():
        raise ValueError("region is empty: σ is measured over the region's pixels, it needs at "
                         "least one (pass region=None to use the whole image)")
    return region


def _mixture(rng, H, W, region, n_components, widths):
    """One unscaled mixture draw: (2, H, W) float64."""
    k = int(rng.integers(n_components[0], n_components[1] + 1))
    if region is None:
        centres = rng.uniform((0, 0), (H - 1, W - 1), size=(k, 2))                # (k, 2)
    else:
        pts = np.flatnonzero(region)
        idx = pts[rng.integers(pts.size, size=k)]
        centres = np.stack([idx // W, idx % W], axis=1) + rng.uniform(-0.5, 0.5, size=(k, 2))
    w = rng.uniform(widths[0], widths[1], size=k)                                  # (k,)
    amp = rng.normal(size=(k, 2))                                                  # (k, 2)
    y = np.arange(H, dtype=np.float64)
    x = np.arange(W, dtype=np.float64)
    gy = np.exp(-(y[None, :] - centres[:, :1]) ** 2 / (2 * w[:, None] ** 2))       # (k, H)
    gx = np.exp(-(x[None, :] - centres[:, 1:]) ** 2 / (2 * w[:, None] ** 2))       # (k, W)
    # each bump is separable: exp(-(dy²+dx²)/2w²) = gy ⊗ gx, so u = Σ_k a_k gy_k gx_kᵀ
    return np.einsum("kc,kh,kw->chw", amp, gy, gx)                                 # (2, H, W)


def gaussian_mixture_field(shape, sigma, seed=0, region=None, n_components=DEFAULT_COMPONENTS,
                           widths=DEFAULT_WIDTHS, min_det=DEFAULT_MIN_DET, max_tries=100,
                           dtype=np.float32):
    """One fold-free Gaussian-mixture displacement field with RMS displacement σ over ``region``.

    Inputs:
    - shape: (H, W).
    - sigma: target RMS displacement in pixels over the region (≥ 0; 0 gives u = 0).
    - seed: int, list of ints or ``np.random.Generator``.
    - region: optional bool (H, W) mask (the body): bump centres are drawn from it and σ is
      measured over it; None = the whole image.
    - n_components: (min, max) number of bumps, inclusive.
    - widths: (min, max) Gaussian standard deviation of a bump, pixels.
    - min_det: every pixel must have det J_φ > min_det (fields failing this are redrawn).
    - max_tries: give up after this many rejected draws.
    - dtype: float32 (default) or float64.
    Returns:
    - u: (2, H, W) displacement, channel 0 = row (y), channel 1 = column (x), pixels.
    """
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
        raise ValueError(f"shape must be a pair (H, W), got {shape!r}")
    H, W = check_positive_int("H", shape[0]), check_positive_int("W", shape[1])
    if H < 2 or W < 2:
        raise ValueError(f"shape {(H, W)} is too small: need at least 2×2 pixels")
    if not isinstance(sigma, (int, float, np.integer, np.floating)) or not np.isfinite(sigma) \
            or sigma < 0:
        raise ValueError(f"sigma must be a finite number of pixels ≥ 0, got {sigma!r}")
    n_components = _check_range("n_components", n_components, kind=int, lo=0)
    widths = _check_range("widths", widths)
    max_tries = check_positive_int("max_tries", max_tries)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    region = _check_region(region, H, W)
    rng = _as_rng(seed)
    if sigma == 0:
        return np.zeros((2, H, W), dtype)
    worst = None
    for _ in range(max_tries):
        u = _mixture(rng, H, W, region, n_components, widths)                    # (2, H, W)
        sq = u[0] ** 2 + u[1] ** 2                                                # (H, W)
        rms = np.sqrt(sq[region].mean() if region is not None else sq.mean())
        if rms < 1e-12:
            continue
        u = (u * (sigma / rms)).astype(dtype)
        det_min = float(jacobian_determinant(u).min())
        if det_min > min_det:
            return u
        worst = det_min if worst is None else min(worst, det_min)
    raise RuntimeError(
        f"could not draw a fold-free field (det J > {min_det}) in {max_tries} tries with "
        f"sigma={sigma}, widths={widths}, n_components={n_components} (worst min det {worst:.3f}); "
        f"use wider bumps (larger widths), fewer components, a smaller sigma or a lower min_det")


def random_fields(n, shape, sigma, seed=0, region=None, **kwargs):
    """``n`` fields; field i is ``gaussian_mixture_field(..., seed=[seed, i])`` (order-independent).

    Returns: (n, 2, H, W).
    """
    n = check_positive_int("n", n)
    return np.stack([gaussian_mixture_field(shape, sigma, seed=[int(seed), i], region=region,
                                            **kwargs) for i in range(n)])


def deform(image, labels, u):
    """Warp an image (bilinear) and its label map (nearest) by the same field.

    Inputs:
    - image: (N, C, H, W) float32/float64.
    - labels: (N, C', H, W) integer label map, or None.
    - u: (N, 2, H, W) displacement, same dtype as image.
    Returns:
    - moving: (N, C, H, W), ``moving[p] = image[p + u(p)]`` (zero outside).
    - moving_labels: (N, C', H, W) or None.
    """
    moving, _ = warp_forward(image, u)                                            # (N, C, H, W)
    moving_labels = None if labels is None else warp_nearest(labels, u)
    return moving, moving_labels


def field_stats(u, region=None):
    """Displacement and folding statistics of one field or a batch.

    Inputs:
    - u: (2, H, W) or (N, 2, H, W).
    - region: optional bool (H, W) or (N, H, W): mean/RMS |u| are taken over it (max |u| and the
      folding statistics over the whole image).
    Returns a dict of floats (single field) or (N,) arrays: ``mean_disp``, ``rms_disp``,
    ``max_disp`` (pixels), ``pct_folded`` (% of pixels with det ≤ 0), ``min_det``.
    """
    single = isinstance(u, np.ndarray) and u.ndim == 3
    u4 = u[None] if single else u
    check_array("u", u4, ndim=4)
    mag = np.sqrt(u4[:, 0].astype(np.float64) ** 2 + u4[:, 1] ** 2)               # (N, H, W)
    if region is None:
        reg = np.ones(mag.shape, bool)
    else:
        reg = np.broadcast_to(np.asarray(region, bool), mag.shape)
    cnt = np.maximum(reg.sum(axis=(1, 2)), 1)
    fold = folding_stats(u4)
    out = dict(mean_disp=(mag * reg).sum(axis=(1, 2)) / cnt,
               rms_disp=np.sqrt((mag ** 2 * reg).sum(axis=(1, 2)) / cnt),
               max_disp=mag.max(axis=(1, 2)),
               pct_folded=100.0 - np.asarray(fold["pct_positive"], np.float64),
               min_det=np.asarray(fold["min_det"], np.float64))
    if single:
        out = {k: float(v[0]) for k, v in out.items()}
    return out


def foreground_mask(image, threshold=0.06, smooth=2.0):
    """The body: smoothed image > threshold, holes filled, largest connected component.

    Inputs:
    - image: (H, W) float in [0, 1].
    - threshold: intensity threshold after a Gaussian blur of ``smooth`` pixels.
    Returns: (H, W) bool. If nothing passes the threshold the whole image is returned.
    """
    check_array("image", image, ndim=2)
    fg = ndi.gaussian_filter(image.astype(np.float32), smooth) > threshold if smooth > 0 \
        else image > threshold
    fg = ndi.binary_fill_holes(fg)
    lab, n = ndi.label(fg)
    if n == 0:
        return np.ones(image.shape, bool)
    sizes = np.bincount(lab.ravel())[1:]                                          # (n,)
    return lab == (1 + int(np.argmax(sizes)))


def invert_field(u, n_iter=30):
    """Approximate inverse displacement: v with (id + u)∘(id + v) ≈ id, by fixed-point iteration.

    If ``moving = fixed∘(id + u)`` (a synthetic pair), then ``moving∘(id + v) ≈ fixed``: v is the
    field a perfect registration would find. The iteration ``v ← −u(p + v(p))`` (bilinear
    sampling of u with :func:`regnp.ops.warp.warp_forward`) converges for fold-free fields; near
    the border, where p + v(p) leaves the image, u is taken as 0 (the warp's zero padding).

    Inputs: u (N, 2, H, W) float. Returns: v (N, 2, H, W), same dtype.
    """
    check_array("u", u, ndim=4)
    n_iter = check_positive_int("n_iter", n_iter)
    v = -u
    for _ in range(n_iter):
        v = -warp_forward(u, v)[0]                                                # (N, 2, H, W)
    return v
