"""Comparing two methods scored on the same test pairs (DESIGN.md §12): the unit of evidence.

Every model of the study is scored on one fixed list of test pairs, so a comparison of two models
is a set of **per-pair differences** d_i = a_i − b_i on identical pairs, matched by pair id. This
module holds every statistic the report uses, each a few lines over NumPy/SciPy:

- :func:`matched` — the two sides' values on the same pair ids (refused when the ids differ);
- :func:`paired_t` (``scipy.stats.ttest_rel``) and :func:`wilcoxon` (signed-rank) on the d_i;
- :func:`effect_size_dz` — Cohen's d_z = mean(d) / sd(d), the paired effect size;
- :func:`hierarchical_bootstrap` — the headline 95 % interval and p: it resamples test subjects,
  then base slices within each drawn subject, then pairs within each drawn slice, and each
  model's training seeds, so the interval carries every source of variation the study has;
- :func:`trend_bootstrap` — does a paired difference change with the deformation size? The
  least-squares slope of the mean difference against σ, with the same nested resampling drawn
  once for every σ (the test sets of the sweep share their pair ids);
- :func:`holm` — Holm's step-down adjustment across a family of claims;
- :func:`mean_sd` — a table cell's mean ± sample sd over the same values that are tested.

Where pair ids come from: :func:`pair_levels` reads a pair's subject and base slice from its id
(the ids the data loaders write into every job's ``metrics.json``), so everything here runs from
the committed JSON alone.
"""
import re

import numpy as np

BOOTSTRAP_B = 10_000          # resamples of the headline intervals
BOOTSTRAP_SEED = 2021         # fixed: the report is the same every time it is rebuilt

_CHAOS_STEM = re.compile(r"^(chaos_t2_sub\d+)_z\d+$")
_ACDC_ID = re.compile(r"^(acdc_p\d+)_z\d+$")


def pair_levels(pair_id):
    """The (subject, base slice) a test pair belongs to, read from its id.

    The mapping, per id format the loaders write (``regnp.data.datasets``):

    - synthetic pairs ``"<base>|s<seed>-<i>"`` (CHAOS, phantom): pair i of the list deforms base
      image ``<base>`` (a file stem); the slice is ``<base>``. For CHAOS stems
      ``chaos_t2_sub<NN>_z<MM>`` the subject is ``chaos_t2_sub<NN>`` (the index's
      ``chaos_mr_subject``); any other base (a phantom subject) is its own subject.
    - ACDC ``acdc_p<NNN>_z<MM>``: one real ED/ES pair per slice; the subject is the patient
      ``acdc_p<NNN>``, the slice the id itself.
    - JSRT ``"<fixed><-<moving>"``: an inter-subject pair of two radiographs (one per person).
      The cluster is the **fixed** image's subject: the pair list draws the fixed image first,
      and a pair is scored on the fixed image's lungs. (The moving image's subject is a second,
      crossed source of dependence this nesting cannot hold; with 60 pairs over about 49 test
      images few pairs share either image, so the choice changes little.) Slice = the pair.
    - anything else (e.g. hand-made ids): the pair is its own subject and slice, so the
      bootstrap reduces to the plain pair bootstrap.
    Returns two strings.
    """
    pid = str(pair_id)
    if "|" in pid:
        base = pid.split("|", 1)[0]
        m = _CHAOS_STEM.match(base)
        return (m.group(1) if m else base), base
    m = _ACDC_ID.match(pid)
    if m:
        return m.group(1), pid
    if "<-" in pid:
        return pid.split("<-", 1)[0], pid
    return pid, pid


def matched(a, b, names=("a", "b")):
    """Two sides' per-pair values on identical pairs.

    Inputs: ``a``, ``b`` — dicts {pair id: value}, or lists of such dicts (one per training seed;
    every seed of a side must hold the same ids). Returns ``(ids, A, B)``: the sorted common ids
    and arrays ``A`` (S_a, P), ``B`` (S_b, P) of float64, row = seed, column = pair.
    Raises ValueError when the two sides (or two seeds of one side) were scored on different
    pairs: a paired comparison needs the same test list on both sides.
    """
    sides = []
    for name, side in zip(names, (a, b)):
        seeds = [side] if isinstance(side, dict) else list(side)
        if not seeds or not seeds[0]:
            raise ValueError(f"{name} has no per-pair values to compare")
        sides.append(seeds)
    ids = sorted(sides[0][0])
    for name, seeds in zip(names, sides):
        for k, s in enumerate(seeds):
            if sorted(s) != ids:
                only_a = len(set(ids) - set(s))
                only_b = len(set(s) - set(ids))
                raise ValueError(
                    f"{name} (seed index {k}) was scored on other test pairs than {names[0]}: "
                    f"{only_a} pair ids missing, {only_b} extra; score both on the same test "
                    f"list (same data set, σ and pair count) before comparing them")
    A = np.array([[s[i] for i in ids] for s in sides[0]], dtype=np.float64)
    B = np.array([[s[i] for i in ids] for s in sides[1]], dtype=np.float64)
    if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
        raise ValueError("per-pair values contain NaN/Inf; drop those pairs on both sides first")
    return ids, A, B


def mean_sd(x):
    """(mean, sample sd with ddof = 1) of a 1-D sample as floats; sd 0.0 for a single value."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("mean_sd of an empty sample")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def _spread(d):
    """Whether a sample of differences can be tested: ≥ 2 values and not all equal (with no
    spread, t is 0/0 or ±inf and the signed-rank test has no non-zero ranks)."""
    d = np.asarray(d, dtype=np.float64)
    return d.size >= 2 and np.ptp(d) > 0


def paired_t(x, y):
    """Paired t-test of mean(x − y) = 0 over matched pairs (``scipy.stats.ttest_rel``).

    Assumes the differences are independent draws from one distribution (approximately normal,
    or enough pairs for the mean to be): it ignores that pairs share slices and subjects, which
    is why the report's headline is :func:`hierarchical_bootstrap`. Returns (t, p) or None when
    the differences have no spread."""
    import scipy.stats                  # here: importing scipy.stats costs ~0.8 s at start-up
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not _spread(x - y):
        return None
    r = scipy.stats.ttest_rel(x, y)
    return float(r.statistic), float(r.pvalue)


def wilcoxon(x, y):
    """Wilcoxon signed-rank test of the differences x − y being symmetric about 0.

    Assumes independent pairs (as :func:`paired_t`) but no normality. Zero differences are
    dropped (Wilcoxon's convention, scipy's ``zero_method="wilcox"``); scipy chooses the exact
    null distribution for small samples without ties and the normal approximation otherwise.
    Returns (W, p), W the smaller of the positive- and negative-rank sums, or None when no
    difference is non-zero or the differences have no spread."""
    import scipy.stats
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    if not _spread(d) or np.count_nonzero(d) < 1:
        return None
    r = scipy.stats.wilcoxon(d)
    return float(r.statistic), float(r.pvalue)


def effect_size_dz(x, y):
    """Cohen's d_z = mean(d) / sd(d) of the paired differences d = x − y (sd with ddof = 1):
    the mean difference in units of its own spread over pairs (not the pooled sd of the two
    sides, which the paired design does not use). None when sd(d) = 0."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    if not _spread(d):
        return None
    return float(d.mean() / d.std(ddof=1))


def cluster_weights(subjects, slices, n_boot, rng):
    """How often each pair is drawn in each of ``n_boot`` nested resamples: (n_boot, P) ints.

    One resample draws the subjects with replacement (as many as there are); each drawn subject
    draws its slices with replacement (as many as it has); each drawn slice draws its pairs with
    replacement. k independent resamples of n items with replacement pool into one multinomial
    draw of k·n, so each level is one vectorised ``multinomial`` per cluster.
    ``subjects``, ``slices``: length-P labels of each pair (a slice belongs to one subject).
    """
    subjects, slices = np.asarray(subjects), np.asarray(slices)
    P = subjects.size
    W = np.zeros((n_boot, P), dtype=np.int64)
    subj = list(dict.fromkeys(subjects.tolist()))                 # first-seen order: stable
    ks = rng.multinomial(len(subj), np.full(len(subj), 1 / len(subj)), size=n_boot)
    for j, s in enumerate(subj):
        in_s = np.nonzero(subjects == s)[0]
        sl = list(dict.fromkeys(slices[in_s].tolist()))
        kl = rng.multinomial(ks[:, j] * len(sl), np.full(len(sl), 1 / len(sl)))   # (n_boot, m)
        for l, name in enumerate(sl):
            pairs = in_s[slices[in_s] == name]
            W[:, pairs] = rng.multinomial(kl[:, l] * pairs.size, np.full(pairs.size, 1 / pairs.size))
    return W


def hierarchical_bootstrap(A, B, subjects=None, slices=None, n_boot=BOOTSTRAP_B,
                           seed=BOOTSTRAP_SEED, level=0.95):
    """Cluster bootstrap of the mean paired difference: 95 % percentile interval and p.

    Inputs:
    - A (S_a, P), B (S_b, P): per-pair values of the two sides, one row per training seed, the
      columns matched by pair (see :func:`matched`); a 1-D array is one seed.
    - subjects, slices: length-P labels (see :func:`pair_levels`); None = each pair its own
      cluster (the plain pair bootstrap).
    - n_boot resamples, a fixed ``seed`` (same inputs → same numbers), ``level``.

    Each resample: (1) nested draws of pairs — subjects, slices within a drawn subject, pairs
    within a drawn slice (:func:`cluster_weights`); (2) per side, S draws with replacement from
    its S seeds, and each pair's value is the average over the drawn seeds (with one seed this
    level adds nothing: the interval then carries no training-seed variation); (3) the weighted
    mean of the per-pair differences. The interval is the (1 ∓ level)/2 percentiles of the
    resampled means (numpy's default linear interpolation). The two-sided p is twice the smaller
    share of resampled means at or below 0 and at or above 0, floored at 1/n_boot and capped at
    1: it is < 1 − level exactly when the interval excludes 0, up to percentile interpolation.
    The percentile interval is known to be somewhat too narrow when the top level has few
    clusters (3 test subjects for liver); read it as a lower bound on the uncertainty.

    Returns dict: ``mean`` (observed mean difference over pairs, seeds averaged), ``lo``, ``hi``,
    ``p``, ``n_boot``, ``n_subjects``, ``n_slices``, ``n_pairs``, ``seeds`` ((S_a, S_b)).
    """
    A, B = np.atleast_2d(np.asarray(A, np.float64)), np.atleast_2d(np.asarray(B, np.float64))
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B must hold the same pairs (columns), got {A.shape} and {B.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level is a probability in (0, 1), got {level}")
    P = A.shape[1]
    subjects = np.arange(P).astype(str) if subjects is None else np.asarray(subjects).astype(str)
    slices = subjects if slices is None else np.asarray(slices).astype(str)
    if subjects.size != P or slices.size != P:
        raise ValueError(f"need one subject and one slice label per pair ({P})")
    rng = np.random.default_rng(seed)
    W = cluster_weights(subjects, slices, int(n_boot), rng)                 # (n_boot, P)
    means = []
    for M in (A, B):
        S = M.shape[0]
        c = rng.multinomial(S, np.full(S, 1 / S), size=int(n_boot))         # (n_boot, S)
        means.append(c @ M / S)                                             # (n_boot, P)
    d = means[0] - means[1]
    boot = (W * d).sum(1) / W.sum(1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    p = 2 * min(np.mean(boot <= 0), np.mean(boot >= 0))
    return {"mean": float((A.mean(0) - B.mean(0)).mean()), "lo": float(lo), "hi": float(hi),
            "p": float(min(1.0, max(p, 1 / n_boot))), "n_boot": int(n_boot),
            "n_subjects": len(set(subjects.tolist())), "n_slices": len(set(slices.tolist())),
            "n_pairs": P, "seeds": (A.shape[0], B.shape[0])}


def compare_paired(a, b, n_boot=BOOTSTRAP_B, seed=BOOTSTRAP_SEED, names=("a", "b")):
    """Everything the report says about side ``a`` − side ``b`` on their (identical) test pairs.

    ``a``, ``b``: lists of per-seed dicts {pair id: value} (or one dict). Returns dict with
    ``delta`` (mean difference, seeds averaged per pair), ``t``/``p_t`` (paired t), ``w``/``p_w``
    (Wilcoxon), ``dz`` (d_z), and the :func:`hierarchical_bootstrap` keys ``lo``, ``hi``,
    ``p`` (the headline), ``n_subjects``, ``n_slices``, ``n_pairs``, ``seeds``. Tests that are
    not defined (no spread) are None; ``lo``/``hi``/``p`` are always there (a constant shift has
    a zero-width interval)."""
    ids, A, B = matched(a, b, names)
    x, y = A.mean(0), B.mean(0)
    levels = [pair_levels(i) for i in ids]
    out = hierarchical_bootstrap(A, B, [s for s, _ in levels], [s for _, s in levels],
                                 n_boot=n_boot, seed=seed)
    t, w = paired_t(x, y), wilcoxon(x, y)
    out.update(delta=float((x - y).mean()), dz=effect_size_dz(x, y),
               t=None if t is None else t[0], p_t=None if t is None else t[1],
               w=None if w is None else w[0], p_w=None if w is None else w[1])
    return out


def _slope(x, y):
    """Least-squares slope of ``y`` against ``x`` along the last axis of ``y``:
    Σ (x − x̄)(y − ȳ) / Σ (x − x̄)²."""
    xc = np.asarray(x, np.float64) - np.mean(x)
    y = np.asarray(y, np.float64)
    return (y - y.mean(-1, keepdims=True)) @ xc / (xc @ xc)


def trend_bootstrap(points, n_boot=BOOTSTRAP_B, seed=BOOTSTRAP_SEED, level=0.95):
    """Does the mean paired difference a − b grow (or shrink) with x? Slope, 95 % interval, p.

    ``points``: a list of (x, a, b), one per deformation size x (σ in px), where ``a`` and ``b``
    are the two sides' per-pair values at that x as in :func:`matched` (lists of per-seed dicts
    {pair id: value}; the networks of different x are different training runs). Every point
    must hold the **same pair ids** (the sweep scores one test list at every σ: the same base
    slices with fields of another size), and at least two distinct x.

    The statistic is the least-squares slope of the K mean differences m_k against x_k (units:
    value per unit of x). Each resample draws the nested pair weights of
    :func:`cluster_weights` **once** and applies them at every x (a subject drawn twice counts
    twice at every size, which keeps the correlation between the sizes' differences), and draws
    each side's seeds at each x independently (separate training runs). Interval: percentiles of
    the resampled slopes; p: twice the smaller share on either side of 0, floored at 1/n_boot
    (as :func:`hierarchical_bootstrap`). The slope summarises a trend; it does not say the trend
    is linear — read it with the per-σ differences.

    Returns dict: ``slope`` (observed: the slope of the observed means), ``lo``, ``hi``, ``p``,
    ``n_boot``, ``x`` and ``means`` (the observed m_k), ``n_subjects``, ``n_pairs``.
    """
    if len({float(x) for x, _, _ in points}) < 2:
        raise ValueError("a trend needs points at two different x at least")
    ids, sides = None, []
    for x, a, b in points:
        i, A, B = matched(a, b, names=(f"a at x = {x:g}", f"b at x = {x:g}"))
        if ids is None:
            ids = i
        elif i != ids:
            raise ValueError(f"the point at x = {x:g} was scored on other test pairs than the "
                             f"first; a trend over sizes needs one test list at every size")
        sides.append((float(x), A, B))
    levels = [pair_levels(i) for i in ids]
    rng = np.random.default_rng(seed)
    W = cluster_weights([s for s, _ in levels], [s for _, s in levels], int(n_boot), rng)
    xs = np.array([x for x, _, _ in sides])
    boot = np.empty((int(n_boot), len(sides)))
    for k, (_, A, B) in enumerate(sides):
        d = 0.0
        for sign, M in ((1.0, A), (-1.0, B)):
            S = M.shape[0]
            c = rng.multinomial(S, np.full(S, 1 / S), size=int(n_boot))       # (n_boot, S)
            d = d + sign * (c @ M / S)                                        # (n_boot, P)
        boot[:, k] = (W * d).sum(1) / W.sum(1)
    slopes = _slope(xs, boot)
    means = np.array([(A.mean(0) - B.mean(0)).mean() for _, A, B in sides])
    lo, hi = np.quantile(slopes, [(1 - level) / 2, (1 + level) / 2])
    p = 2 * min(np.mean(slopes <= 0), np.mean(slopes >= 0))
    return {"slope": float(_slope(xs, means)), "lo": float(lo), "hi": float(hi),
            "p": float(min(1.0, max(p, 1 / n_boot))), "n_boot": int(n_boot),
            "x": xs.tolist(), "means": means.tolist(),
            "n_subjects": len({s for s, _ in levels}), "n_pairs": len(ids)}


def holm(pvalues):
    """Holm's step-down adjustment of a family of p values (None entries are skipped and stay
    None; they do not count in the family size m).

    Sort the m p values ascending, p_(1) ≤ … ≤ p_(m); the adjusted p_(j) is
    max over i ≤ j of min(1, (m − i + 1) · p_(i)). Rejecting where the adjusted p < α keeps the
    family-wise error rate ≤ α under any dependence between the tests. Returns a list in the
    input order."""
    idx = [k for k, p in enumerate(pvalues) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda k: pvalues[k])
    out, running = list(pvalues), 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[k])))
        out[k] = running
    return out
