"""Evaluation metrics: Jacobian determinant and folding, Dice overlap, t-tests, timing.

What the paper reports for every method (Sec. 5): Dice before/after registration, the
percentage of pixels where the transformation keeps its orientation (``det J_phi > 0``), the
minimum determinant (how bad the worst fold is), and the CPU seconds needed per pair.

Conventions
-----------
* A displacement ``u`` is ``(N, 2, H, W)`` (or one field ``(2, H, W)``) in pixels; channel 0 is
  the row (y) offset ``u_y``, channel 1 the column (x) offset ``u_x``.
* The Jacobian is the Jacobian of the *transformation* ``phi(p) = p + u(p)``, **not** of ``u``
  (a classic slip: ``det(grad u)`` is 0 for ``u = 0``, while the identity map has det 1)::

      det J_phi = (1 + d u_y/dy) (1 + d u_x/dx) - (d u_y/dx) (d u_x/dy)

  Derivatives are central differences ``(f[i+1] - f[i-1]) / 2`` inside the image and one-sided
  differences ``f[1] - f[0]``, ``f[-1] - f[-2]`` on the border rows/columns (``np.gradient``
  with ``edge_order=1``).
* A pixel is *folded* when ``det <= 0`` (the map reverses orientation or collapses there);
  ``pct_positive`` is the percentage of pixels with ``det > 0``.

Example::

    >>> import numpy as np
    >>> from regnp.metrics import jacobian_determinant, folding_stats
    >>> u = np.zeros((2, 5, 6), np.float32)
    >>> float(jacobian_determinant(u).min()), folding_stats(u)["pct_positive"]
    (1.0, 100.0)
"""
import time

import numpy as np

from ._checks import check_array, check_positive_int

__all__ = ["jacobian_determinant", "folding_stats", "dice", "dice_per_pair", "ttest_unpaired",
           "difference_ci", "summarize", "Timer"]


# ---------------------------------------------------------------------------------------------
# Jacobian determinant and folding
# ---------------------------------------------------------------------------------------------
def _check_field(u, name="u"):
    """Accept ``(N, 2, H, W)`` or ``(2, H, W)``; return the 4-D view and whether it was 3-D."""
    if not isinstance(u, np.ndarray):
        check_array(name, u)  # raises the standard TypeError
    if u.ndim not in (3, 4):
        raise ValueError(f"{name} must be a displacement field (N, 2, H, W) or (2, H, W), got shape "
                         f"{u.shape}")
    single = u.ndim == 3
    u4 = u[None] if single else u
    check_array(name, u4, ndim=4)
    if u4.shape[1] != 2:
        raise ValueError(f"{name} has {u4.shape[1]} channels on axis {0 if single else 1}, expected 2 "
                         f"(channel 0 = row/y offset, channel 1 = column/x offset), shape {u.shape}")
    if u4.shape[2] < 2 or u4.shape[3] < 2:
        raise ValueError(f"{name} has spatial size {u4.shape[2:]}; finite differences need at least "
                         f"2 pixels along each axis")
    return u4, single


def jacobian_determinant(u):
    """Determinant of the Jacobian of ``phi(p) = p + u(p)`` at every pixel.

    Inputs:
    - u: displacement, float array ``(N, 2, H, W)`` or ``(2, H, W)``; channel 0 = y (row) offset,
      channel 1 = x (column) offset, in pixels. H, W >= 2.

    Returns:
    - det: ``(N, H, W)`` (or ``(H, W)`` for a single field), same dtype as ``u``.
      ``det = (1 + dy u_y)(1 + dx u_x) - (dx u_y)(dy u_x)``; central differences inside,
      one-sided differences on the border.
    """
    u4, single = _check_field(u)
    uy, ux = u4[:, 0], u4[:, 1]                                   # (N, H, W) each
    dy_uy, dx_uy = np.gradient(uy, axis=(1, 2))                   # d/d row, d/d column
    dy_ux, dx_ux = np.gradient(ux, axis=(1, 2))
    det = (1 + dy_uy) * (1 + dx_ux) - dx_uy * dy_ux               # (N, H, W)
    det = det.astype(u4.dtype, copy=False)
    return det[0] if single else det


def folding_stats(u, mask=None):
    """Folding statistics of ``phi = id + u`` per pair.

    Inputs:
    - u: displacement ``(N, 2, H, W)`` or ``(2, H, W)``.
    - mask: optional boolean ``(H, W)`` (same for every pair) or ``(N, H, W)``; statistics are
      then computed over the pixels where the mask is True only (e.g. the body or an organ).

    Returns a dict with
    - ``pct_positive``: percentage of (masked) pixels with ``det > 0``;
    - ``min_det``: the smallest determinant (the worst fold when negative);
    - ``n_folded``: number of (masked) pixels with ``det <= 0``;
    each a Python float/int for a single field, or a ``(N,)`` array over pairs for a batch.
    A pair whose mask is empty gets ``pct_positive = nan``, ``min_det = nan``, ``n_folded = 0``.
    """
    u4, single = _check_field(u)
    det = jacobian_determinant(u4)                                # (N, H, W)
    N, H, W = det.shape
    if mask is None:
        m = np.ones((N, H, W), dtype=bool)
    else:
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"mask must be a numpy boolean array, got {type(mask).__name__}")
        if mask.dtype != bool:
            raise TypeError(f"mask has dtype {mask.dtype}; pass a boolean array (e.g. labels > 0)")
        if mask.shape == (H, W):
            m = np.broadcast_to(mask, (N, H, W))
        elif mask.shape == (N, H, W):
            m = mask
        elif single and mask.shape == (1, H, W):
            m = mask
        else:
            raise ValueError(f"mask has shape {mask.shape}; expected ({H}, {W}) or ({N}, {H}, {W}) "
                             f"to match u of shape {u.shape}")
    pct = np.empty(N)
    mins = np.empty(N)
    nfold = np.zeros(N, dtype=np.int64)
    for n in range(N):
        d = det[n][m[n]]
        if d.size == 0:
            pct[n], mins[n] = np.nan, np.nan
            continue
        pos = int(np.count_nonzero(d > 0))
        pct[n] = 100.0 * pos / d.size
        mins[n] = float(d.min())
        nfold[n] = d.size - pos
    if single:
        return {"pct_positive": float(pct[0]), "min_det": float(mins[0]),
                "n_folded": int(nfold[0])}
    return {"pct_positive": pct, "min_det": mins, "n_folded": nfold}


# ---------------------------------------------------------------------------------------------
# Dice
# ---------------------------------------------------------------------------------------------
def _as_labels(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy integer label map, got {type(x).__name__}")
    if x.dtype == bool or np.issubdtype(x.dtype, np.integer):
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
            raise TypeError(f"{name} has dtype {x.dtype} with non-integer values; Dice needs integer "
                            f"label maps (warp labels with regnp.ops.warp.warp_nearest, not bilinear)")
        return x.astype(np.int64)
    raise TypeError(f"{name} has dtype {x.dtype}; Dice needs an integer label map")


def dice(a, b, labels=None):
    """Per-label Dice overlap ``2 |A ∩ B| / (|A| + |B|)`` between two label maps.

    Inputs:
    - a: the fixed (reference) label map, integer array of any shape (one pair, e.g. ``(H, W)``).
    - b: the warped moving label map, same shape.
    - labels: labels to score; default: every non-zero label present in ``a`` (0 = background
      is never scored by default).

    Returns a dict:
    - ``"per_label"``: ``{label: dice}`` (Python ints to floats in [0, 1]);
    - ``"mean"``: the mean over those labels (this is "the pair's Dice").
    A requested label absent from *both* maps scores 1.0 (both agree it is not there). When there
    is nothing to score (no labels given and ``a`` has no foreground) ``mean`` is ``nan``.
    """
    a = _as_labels("a", a)
    b = _as_labels("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a has shape {a.shape} but b has shape {b.shape}; the label maps must match")
    if labels is None:
        labels = [int(v) for v in np.unique(a) if v != 0]
    else:
        labels = [int(v) for v in np.atleast_1d(labels)]
    per = {}
    for lab in labels:
        A = a == lab
        B = b == lab
        sa, sb = int(np.count_nonzero(A)), int(np.count_nonzero(B))
        if sa + sb == 0:
            per[lab] = 1.0
        else:
            per[lab] = 2.0 * int(np.count_nonzero(A & B)) / (sa + sb)
    mean = float(np.mean(list(per.values()))) if per else float("nan")
    return {"per_label": per, "mean": mean}


def dice_per_pair(a, b, labels=None):
    """Mean Dice of each pair of a batch: ``a``, ``b`` are ``(N, ...)`` label maps; returns ``(N,)``.

    Each pair is scored with :func:`dice` (labels present in that pair's fixed map by default).
    """
    a = _as_labels("a", a)
    b = _as_labels("b", b)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"a and b must be batches (N, ...) of equal shape, got {a.shape} and {b.shape}")
    return np.array([dice(a[n], b[n], labels)["mean"] for n in range(a.shape[0])])


# ---------------------------------------------------------------------------------------------
# Statistics and timing
# ---------------------------------------------------------------------------------------------
def _as_sample(name, v):
    x = np.asarray(v, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN/Inf; drop those pairs explicitly before summarising")
    return x


def ttest_unpaired(a, b, equal_var=False):
    """Two-sided unpaired t-test of ``mean(a) == mean(b)`` (``scipy.stats.ttest_ind``).

    Welch's test (unequal variances) by default — it does not assume both methods have the same
    spread; pass ``equal_var=True`` for Student's test. Returns ``(t, p)`` as floats.

    Only for two independent samples (e.g. your own pairs against a table's). Two methods scored
    on the *same* test pairs are a paired design: use ``regnp.study.stats`` (paired t, Wilcoxon,
    the hierarchical bootstrap), as the study's report does.
    """
    import scipy.stats                  # imported here: it alone costs ~0.8 s at start-up
    x, y = _as_sample("a", a), _as_sample("b", b)
    if x.size < 2 or y.size < 2:
        raise ValueError("each sample needs at least 2 values for a t-test")
    res = scipy.stats.ttest_ind(x, y, equal_var=equal_var)
    return float(res.statistic), float(res.pvalue)


def difference_ci(a, b, level=0.95):
    """Confidence interval of ``mean(a) − mean(b)`` for two independent samples, Welch's form
    (the interval that goes with :func:`ttest_unpaired`'s default test: it excludes 0 exactly
    when that test's p < 1 − level). Returns ``(low, high)`` in the samples' units.

    Welch: ``se² = s_a²/n_a + s_b²/n_b`` with sample variances, degrees of freedom by
    Welch–Satterthwaite, ``diff ± t_{(1+level)/2, df} · se``.
    """
    import scipy.stats
    x, y = _as_sample("a", a), _as_sample("b", b)
    if x.size < 2 or y.size < 2:
        raise ValueError("each sample needs at least 2 values for a confidence interval")
    if not 0 < level < 1:
        raise ValueError(f"level is a probability in (0, 1), got {level}")
    ci = scipy.stats.ttest_ind(x, y, equal_var=False).confidence_interval(level)
    return float(ci.low), float(ci.high)


def summarize(values, ddof=1):
    """``(mean, std)`` of a sample as Python floats; std with ``ddof=1`` (sample std) by default.

    A single value gives std 0.0.
    """
    x = _as_sample("values", values)
    if x.size <= ddof:
        return float(x.mean()), 0.0
    return float(x.mean()), float(x.std(ddof=ddof))


class Timer:
    """Wall-clock seconds per pair, discarding warm-up runs (Numba compilation, cold caches).

    As a context manager, one ``with`` block = one lap::

        timer = Timer(warmup=1)
        for pair in pairs:
            with timer:
                register(pair)
        mean, std = timer.summary()          # over the laps after the warm-up

    Or in one call: ``Timer.measure(lambda: register(pair), repeats=5, warmup=1, n_pairs=1)``
    returns the median seconds per pair.
    """

    def __init__(self, warmup=1):
        if not isinstance(warmup, (int, np.integer)) or isinstance(warmup, bool) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
        self.warmup = int(warmup)
        self.n_pairs = 1
        self._all = []
        self._t0 = None

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._all.append(time.perf_counter() - self._t0)
        self._t0 = None
        return False

    @property
    def seconds(self):
        """Recorded laps after the warm-up (seconds per lap)."""
        return list(self._all[self.warmup:])

    def summary(self):
        """``(mean, std)`` seconds per lap after the warm-up."""
        if not self.seconds:
            raise ValueError(f"no laps recorded after the {self.warmup} warm-up lap(s)")
        return summarize(self.seconds)

    @property
    def median(self):
        if not self.seconds:
            raise ValueError(f"no laps recorded after the {self.warmup} warm-up lap(s)")
        return float(np.median(self.seconds))

    @staticmethod
    def measure(fn, repeats=5, warmup=1, n_pairs=1):
        """Median seconds per pair of ``fn()`` which registers ``n_pairs`` pairs per call."""
        check_positive_int("repeats", repeats)
        check_positive_int("n_pairs", n_pairs)
        t = Timer(warmup=warmup)
        for _ in range(warmup + repeats):
            with t:
                fn()
        return t.median / n_pairs
