"""Numerical gradient checking (float64 central differences).

Two tools, as in CS231n's ``gradient_check.py`` and early tinygrad's ``gradcheck.py``:

* :func:`check_vjp` — the vector–Jacobian form. For an op ``y = f(x)`` and a random upstream
  gradient ``dout``, the backward pass claims ``dx = J(x)^T dout``. Entry ``i`` of that is the
  directional derivative of the scalar ``<dout, f(x)>`` along ``e_i``, which central differences
  estimate as ``(<dout, f(x + h e_i)> - <dout, f(x - h e_i)>) / 2h`` with error O(h^2).
  Checked on every entry of small arrays or on a random subset of big ones.
* :func:`full_jacobian` — the whole Jacobian of a tiny op by finite differences, for checking
  that forward and backward agree *as linear maps*, not just along one ``dout``.

Relative error is ``|a - b| / max(1e-8, |a| + |b|)``; with float64 a correct backward typically
gives 1e-10..1e-7, a wrong one 1e-2 or worse.

The default step is ``H = 1e-6``. Three things pull on h (lesson 02 measures them): truncation
error, O(h²), which favours a small h; round-off, ~ε·|f|/h, which favours a large one — for a
smooth f the two balance near ε^(1/3) ≈ 1e-5 in float64; and *kinks*. Most of regnp's layers
are piecewise linear (the warp at integer displacements, LeakyReLU at 0): they have no
truncation error at all, but a ±h nudge that straddles a kink reads as an error of order 1. In a
network one weight moves thousands of LeakyReLU inputs at once, and at h = 1e-5 some of them
cross 0 (lesson 07 shows it on the U-Net). 1e-6 costs ten times the round-off of 1e-5 — still
about 1e-8 relative on our layers — for ten times fewer crossings. Pass ``h=1e-5`` for smooth
functions with no kinks, where it is the more accurate choice.
"""
import numpy as np

H = 1e-6   # the default central-difference step (float64), see the module docstring


def rel_error(a, b):
    """Elementwise-max relative error ``|a-b| / max(1e-8, |a|+|b|)``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def numerical_vjp(f, x, dout, h=H, idx=None):
    """Central-difference estimate of ``J(x)^T dout`` for the array ``x`` (perturbed in place).

    Inputs:
    - f: callable with no arguments returning the output array (reads ``x``).
    - x: float64 array that ``f`` depends on; restored after each perturbation.
    - dout: upstream gradient, same shape as ``f()``.
    - idx: optional iterable of flat indices to check (default: all).
    Returns: (indices, values) of the estimated gradient entries.
    """
    flat = x.reshape(-1)
    if idx is None:
        idx = range(flat.size)
    idx = np.asarray(list(idx), dtype=np.int64)
    vals = np.empty(idx.size)
    for j, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + h
        fp = np.sum(np.asarray(f()) * dout)
        flat[i] = old - h
        fm = np.sum(np.asarray(f()) * dout)
        flat[i] = old
        vals[j] = (fp - fm) / (2 * h)
    return idx, vals


def check_vjp(f, x, analytic, dout, h=H, max_entries=None, rng=None, idx=None):
    """Relative error between an analytic gradient and central differences.

    Inputs:
    - f: callable, no arguments, returning the op output computed from the current ``x``.
    - x: float64 input array (perturbed in place and restored).
    - analytic: the backward pass's gradient w.r.t. ``x`` for upstream ``dout``.
    - dout: upstream gradient used for ``analytic``.
    - max_entries: check at most this many random entries (None = all).
    - idx: flat indices to check (overrides ``max_entries``), e.g. from :func:`border_indices`.
    Returns: the maximum relative error over the checked entries.
    """
    if x.dtype != np.float64:
        raise TypeError("gradient checks need float64 inputs (float32 round-off swamps h^2)")
    n = x.size
    if idx is None and max_entries is not None and n > max_entries:
        rng = np.random.default_rng(0) if rng is None else rng
        idx = rng.choice(n, size=max_entries, replace=False)
    idx, num = numerical_vjp(f, x, dout, h=h, idx=idx)
    ana = np.asarray(analytic, dtype=np.float64).reshape(-1)[idx]
    return rel_error(ana, num)


def check_vjp_directions(f, x, analytic, dout, n=2, h=H, rng=None):
    """Relative error of the analytic gradient along ``n`` random directions of all of ``x``.

    A per-entry check (:func:`check_vjp`) costs two evaluations of ``f`` per entry, so on a
    big array it samples a few entries and cannot see a wrong one it did not pick. Here each
    check moves every entry at once, along a random Gaussian direction ``v``:

        (<dout, f(x + h v)> - <dout, f(x - h v)>) / 2h   against   <analytic, v>,

    two evaluations per direction whatever the size of ``x``. A wrong gradient entry changes
    ``<analytic, v>`` for almost every ``v`` (it is missed only if the errors of all entries
    cancel along ``v``, an event of probability zero for a Gaussian ``v``), so this covers the
    entries a sampled check skips; a per-entry check on a few entries (the corners) still says
    *which* entry is wrong. Inputs as :func:`check_vjp`; ``x`` is restored afterwards.
    Returns: the maximum relative error over the ``n`` directions.
    """
    if x.dtype != np.float64:
        raise TypeError("gradient checks need float64 inputs (float32 round-off swamps h^2)")
    rng = np.random.default_rng(0) if rng is None else rng
    ana = np.asarray(analytic, dtype=np.float64).reshape(x.shape)
    old = x.copy()
    num, exact = np.empty(n), np.empty(n)
    try:
        for k in range(n):
            v = rng.standard_normal(x.shape)
            x[...] = old + h * v
            fp = np.sum(np.asarray(f()) * dout)
            x[...] = old - h * v
            fm = np.sum(np.asarray(f()) * dout)
            num[k] = (fp - fm) / (2 * h)
            exact[k] = np.sum(ana * v)
    finally:
        x[...] = old
    return rel_error(exact, num)


def border_indices(shape, n, rng=None):
    """Flat indices of ``n`` entries of an array of ``shape`` (all of them if it has <= n):
    the corners first — every axis at its first index, every axis at its last, and the two
    mixed patterns (first/last alternating) — then distinct random entries. For a conv weight
    (Co, C, kh, kw) the corners are the border taps of the filter, the ones that meet the
    image's zero padding; a check that samples only random entries can miss them."""
    size = int(np.prod(shape))
    if size <= n:
        return np.arange(size)
    last = [d - 1 for d in shape]
    corners = [[0] * len(shape), last,
               [0 if a % 2 == 0 else last[a] for a in range(len(shape))],
               [last[a] if a % 2 == 0 else 0 for a in range(len(shape))]]
    picked = list(dict.fromkeys(int(np.ravel_multi_index(c, shape)) for c in corners))[:n]
    rng = np.random.default_rng(0) if rng is None else rng
    rest = np.setdiff1d(np.arange(size), picked)
    picked += [int(i) for i in rng.choice(rest, size=n - len(picked), replace=False)]
    return np.array(picked, dtype=np.int64)


def full_jacobian(f, x, h=H):
    """Finite-difference Jacobian ``d f(x).ravel() / d x.ravel()`` of shape (out.size, x.size)."""
    flat = x.reshape(-1)
    cols = []
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = np.array(f(), dtype=np.float64).reshape(-1)
        flat[i] = old - h
        fm = np.array(f(), dtype=np.float64).reshape(-1)
        flat[i] = old
        cols.append((fp - fm) / (2 * h))
    return np.stack(cols, axis=1)
