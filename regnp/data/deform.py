"""Synthetic deformations: random smooth fields of a set size σ, in two families.

The paper (Sec. 5.1) deforms one liver MRI with "a spatial Gaussian mixture model" whose
"deformation energy σ" is 10 (moderate) or 16 (large), but never defines σ. regnp's definition
is the same for both families below:

    σ = sqrt( mean_{p ∈ region} |u(p)|² )      (pixels)

the **RMS of the displacement u over the region** (the body; the whole image if no region is
given), so φ = id + u moves the anatomy by about σ on average (the mean squared displacement is
σ²: a "deformation energy" in the literal sense). Both families start from the same random
Gaussian mixture (the same random stream gives the same bumps):

    m(p) = Σ_k a_k · exp(−|p − c_k|² / (2 w_k²)),        p, c_k in pixels, a_k ~ N(0, I₂)

* K is drawn uniformly from ``n_components`` (default 4..8 inclusive);
* the centres c_k are drawn uniformly from the pixels of ``region``, so the deformation happens
  where the anatomy is;
* the widths w_k (the Gaussians' standard deviations, pixels) uniformly from ``widths``
  (default 28..60 px at 256×256).

Family "gmm" (the default; every committed job uses it): the mixture *is* the displacement
------------------------------------------------------------------------------------------
u = s·m, with the scale s chosen so that the RMS over the region is exactly σ
(:func:`gaussian_mixture_field`). It is not invertible by construction, so a draw with
``det J_φ(p) ≤ min_det`` (default 0.1) anywhere is **rejected** and redrawn from the same
random stream (σ keeps its exact meaning; the result stays reproducible). Measured on the 80
CHAOS test pairs at 256×256 (``results/calibration.json``, ``docs/deformations.md``), the share
of draws rejected grows fast with σ: 0 % at σ = 10, 5 % at 16, 33 % at 22, 58 % at 28, 79 % at
34, 91 % at 40, and every draw folds from about σ = 60. Beyond 20–30 px the accepted fields are
therefore a selected minority (fewer, wider bumps), not the family's distribution. Above
``GMM_MAX_SIGMA_PER_WIDTH`` × the narrowest width (42 px at 256×256) it refuses at once; when
no draw in ``max_tries`` passes below that, a ValueError says the largest σ the draws reached. (A first
try that scaled the *peak* |u| to σ left σ = 16 CHAOS pairs at 88 % Dice before registration;
the RMS over the body makes every pair move by about σ.)

Family "svf": the mixture is a stationary velocity field, and u = exp(v) − id
-----------------------------------------------------------------------------
v = s·m is integrated by scaling and squaring (:func:`regnp.ops.integrate.integrate_velocity_forward`,
at half resolution as VoxelMorph's ``int_downsize=2``; the squarings are chosen so that the
first step moves at most 0.5 px), and s is solved (secant iterations, to 1e-4 relative) so that
the RMS of the resulting **displacement u** over the region is σ — the same σ as the "gmm"
family, so a σ means the same motion of the anatomy in both, and the two families can be
compared at equal σ (``docs/deformations.md``: at σ ≤ 40 they give the same Dice before
registration within 3 points). The flow of a smooth velocity cannot fold, so no draw is
rejected up to σ = 40 at 256×256 (measured). Beyond about two bump widths the flows wind
around their bumps faster than the pixel grid resolves and |u| saturates (a point carried by a
bump stops where the bump ends): ``SVF_MAX_SIGMA_PER_WIDTH`` × the narrowest width (56 px at
256×256) is the family's limit, refused at once above it, and a draw whose resolved field
folds anyway is redrawn (about 1 in 10 at σ = 56).
:func:`random_field` picks the family by name (``field="gmm"`` or ``"svf"``).

Reproducibility: a field is a pure function of (seed, index, shape, region, family,
parameters); fields are generated on demand, so a dataset of 1,000 pairs costs nothing until a
batch is asked for.
"""
import numpy as np
from scipy import ndimage as ndi

from .._checks import check_array, check_positive_int
from ..metrics import folding_stats, jacobian_determinant
from ..ops.integrate import integrate_velocity_forward
from ..ops.warp import warp_forward, warp_nearest

DEFAULT_COMPONENTS = (4, 8)
DEFAULT_WIDTHS = (28.0, 60.0)
DEFAULT_MIN_DET = 0.1
REFERENCE_SIZE = 256  # σ and the widths are quoted for 256×256 images, as in the paper
FIELDS = ("gmm", "svf")
SVF_FIRST_STEP_PX = 0.5   # scaling and squaring: the first (smallest) step moves at most this
SVF_RTOL = 1e-4           # the svf scale is solved until |RMS − σ| ≤ SVF_RTOL·σ
# Beyond about 2 bump widths of RMS displacement, a velocity-field draw winds points around its
# bumps faster than the pixel grid resolves, and its displacement saturates (a point stops where
# its bump ends). Measured on CHAOS bodies at 256×256, widths 28–60 px: no draw of 480 rejected
# up to σ = 40, 1 of 31 at σ = 45, 3 of 33 at 56, and 7 of 10 folded in the pixel grid at 90.
# So velocity_field draws σ ≤ SVF_MAX_SIGMA_PER_WIDTH × the narrowest width, and says so, in
# one line, above it.
SVF_MAX_SIGMA_PER_WIDTH = 2.0
# The Gaussian-mixture family's fold limit grows with the bump width (|∇u| ~ σ / w). With the
# default widths, measured on the CHAOS test pairs at 256×256, the median draw folds beyond
# σ ≈ 25 and 91 % of the draws fold at σ = 40. Above GMM_MAX_SIGMA_PER_WIDTH × the narrowest
# width (42 px) gaussian_mixture_field refuses at once (rather than after max_tries draws) and
# names the invertible "svf" family.
GMM_MAX_SIGMA_PER_WIDTH = 1.5

__all__ = ["gaussian_mixture_field", "velocity_field", "random_field", "random_fields", "deform",
           "field_stats", "foreground_mask", "invert_field", "fold_limit", "sigma_limit",
           "FIELDS", "DEFAULT_COMPONENTS", "DEFAULT_WIDTHS", "DEFAULT_MIN_DET"]


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


def _check_field_args(field, shape, sigma, region, n_components, widths, max_tries, dtype):
    """The checks both families share, σ against the family's limit included; returns
    (H, W, region, n_components, widths, max_tries)."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
        raise ValueError(f"shape must be a pair (H, W), got {shape!r}")
    H, W = check_positive_int("H", shape[0]), check_positive_int("W", shape[1])
    if H < 2 or W < 2:
        raise ValueError(f"shape {(H, W)} is too small: need at least 2×2 pixels")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.integer, np.floating)) \
            or not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number of pixels ≥ 0, got {sigma!r}")
    n_components = _check_range("n_components", n_components, kind=int, lo=0)
    widths = _check_range("widths", widths)
    max_tries = check_positive_int("max_tries", max_tries)
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    _check_limit(field, sigma, widths)
    return H, W, _check_region(region, H, W), n_components, widths, max_tries


def _draw_bumps(rng, H, W, region, n_components, widths):
    """The random part of a mixture: centres (k, 2) in pixels, widths (k,), vectors a_k (k, 2)."""
    k = int(rng.integers(n_components[0], n_components[1] + 1))
    if region is None:
        centres = rng.uniform((0, 0), (H - 1, W - 1), size=(k, 2))                # (k, 2)
    else:
        pts = np.flatnonzero(region)
        idx = pts[rng.integers(pts.size, size=k)]
        centres = np.stack([idx // W, idx % W], axis=1) + rng.uniform(-0.5, 0.5, size=(k, 2))
    w = rng.uniform(widths[0], widths[1], size=k)                                  # (k,)
    amp = rng.normal(size=(k, 2))                                                  # (k, 2)
    return centres, w, amp


def _bumps_on_grid(bumps, y, x):
    """m(p) = Σ_k a_k exp(−|p − c_k|²/2w_k²) on the grid rows y (H,) × columns x (W,): (2, H, W)."""
    centres, w, amp = bumps
    gy = np.exp(-(y[None, :] - centres[:, :1]) ** 2 / (2 * w[:, None] ** 2))       # (k, H)
    gx = np.exp(-(x[None, :] - centres[:, 1:]) ** 2 / (2 * w[:, None] ** 2))       # (k, W)
    # each bump is separable: exp(-(dy²+dx²)/2w²) = gy ⊗ gx, so m = Σ_k a_k gy_k gx_kᵀ
    return np.einsum("kc,kh,kw->chw", amp, gy, gx)                                 # (2, H, W)


def _mixture(rng, H, W, region, n_components, widths):
    """One unscaled mixture draw on the image grid: (2, H, W) float64."""
    bumps = _draw_bumps(rng, H, W, region, n_components, widths)
    return _bumps_on_grid(bumps, np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64))


def _rms(u, region):
    """RMS of |u| over the region (the whole image when None): the σ of a field."""
    sq = u[0] ** 2 + u[1] ** 2                                                    # (H, W)
    return float(np.sqrt(sq[region].mean() if region is not None else sq.mean()))


def fold_limit(u, min_det=DEFAULT_MIN_DET, region=None):
    """The largest σ to which the Gaussian-mixture draw ``u`` can be scaled fold-free.

    With central differences the Jacobian of s·u is s·G (G that of u), so at every pixel
    ``det(I + s·G) = 1 + s·tr G + s²·det G``: a quadratic in s. The draw stays above
    ``min_det`` up to the smallest positive root over the pixels, s*; the σ it reaches there is
    s*·RMS(u over ``region``). Inputs: u (2, H, W). Returns σ in pixels (``inf`` if the draw
    never folds, e.g. a constant field).
    """
    gy = np.gradient(u[0].astype(np.float64), axis=(0, 1))                        # d/dy, d/dx of u_y
    gx = np.gradient(u[1].astype(np.float64), axis=(0, 1))                        # d/dy, d/dx of u_x
    tr = gy[0] + gx[1]                                                             # (H, W)
    dt = gy[0] * gx[1] - gy[1] * gx[0]                                             # (H, W)
    c = 1.0 - min_det                                 # solve dt·s² + tr·s + c = 0, s > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.sqrt(np.maximum(tr ** 2 - 4 * dt * c, 0.0))
        roots = np.stack([(-tr - disc) / (2 * dt), (-tr + disc) / (2 * dt)])
        lin = np.where(tr < 0, -c / tr, np.inf)                 # dt = 0: a straight line
    roots = np.where(np.abs(dt) > 1e-15, roots, lin)
    real = tr ** 2 - 4 * dt * c >= 0
    roots = np.where((roots > 0) & real, roots, np.inf)
    s_star = float(roots.min())
    return s_star * _rms(u, region)


def _pick_sigma_hint(sig_max):
    return f"{np.floor(sig_max * 10) / 10:g}"


def gaussian_mixture_field(shape, sigma, seed=0, region=None, n_components=DEFAULT_COMPONENTS,
                           widths=DEFAULT_WIDTHS, min_det=DEFAULT_MIN_DET, max_tries=100,
                           dtype=np.float32, return_info=False):
    """One fold-free Gaussian-mixture displacement field with RMS displacement σ over ``region``
    (the "gmm" family of the module docstring).

    Inputs:
    - shape: (H, W).
    - sigma: target RMS displacement in pixels over the region (≥ 0; 0 gives u = 0).
    - seed: int, list of ints or ``np.random.Generator``.
    - region: optional bool (H, W) mask (the body): bump centres are drawn from it and σ is
      measured over it; None = the whole image.
    - n_components: (min, max) number of bumps, inclusive.
    - widths: (min, max) Gaussian standard deviation of a bump, pixels.
    - min_det: every pixel must have det J_φ > min_det (fields failing this are redrawn).
    - max_tries: give up after this many rejected draws (ValueError with the largest σ the
      tried draws could reach fold-free, see :func:`fold_limit`).
    - dtype: float32 (default) or float64.
    - return_info: also return a dict ``{"rejected": draws rejected before this one}``.
    Returns:
    - u: (2, H, W) displacement, channel 0 = row (y), channel 1 = column (x), pixels.
    """
    H, W, region, n_components, widths, max_tries = _check_field_args(
        "gmm", shape, sigma, region, n_components, widths, max_tries, dtype)
    rng = _as_rng(seed)
    if sigma == 0:
        u = np.zeros((2, H, W), dtype)
        return (u, {"rejected": 0}) if return_info else u
    reach = []
    for tries in range(max_tries):
        u = _mixture(rng, H, W, region, n_components, widths)                    # (2, H, W)
        rms = _rms(u, region)
        if rms < 1e-12:
            continue
        u = (u * (sigma / rms)).astype(dtype)
        if float(jacobian_determinant(u).min()) > min_det:
            return (u, {"rejected": tries}) if return_info else u
        reach.append(fold_limit(u, min_det, region))
    best = max(reach) if reach else 0.0
    raise ValueError(
        f"sigma={sigma:g} px is more than the Gaussian-mixture field can reach without folding "
        f"(det J > {min_det:g}) at {H}×{W} with widths {widths[0]:g}–{widths[1]:g} px and "
        f"{n_components[0]}–{n_components[1]} bumps: the largest σ among {max_tries} draws was "
        f"{_pick_sigma_hint(best)} px (median {_pick_sigma_hint(float(np.median(reach or [0])))}"
        f"); ask for a smaller sigma, wider bumps, or the invertible field='svf'")


def _svf_steps(vmax):
    """Squarings so that the first step, vmax / 2^T, moves at most SVF_FIRST_STEP_PX."""
    return int(min(20, max(4, np.ceil(np.log2(max(vmax, 1e-12) / SVF_FIRST_STEP_PX)))))


def _linear_weights(n, start, step, n_coarse):
    """Linear interpolation from samples at start + step·j (j = 0..n_coarse−1) to the pixels
    0..n−1: the left sample index j (n,) and the weight of the right one (n,)."""
    t = (np.arange(n) - start) / step                                             # (n,)
    j = np.clip(np.floor(t).astype(int), 0, n_coarse - 2)
    return j, (t - j)


class _Flow:
    """exp(s·m) − id on the image grid for one mixture draw m (unit RMS over the region).

    The velocity is defined on the whole plane, so the flow is integrated on the image grid
    padded by P ≥ the farthest any image point can travel (s·max|m| pixels, as |dφ/dt| ≤ |v|):
    every trajectory that starts in the image stays inside the padded grid, and the warp's zero
    padding at the grid's edge never reaches the result. (Integrating on the image grid alone
    stops every point at the image border: det J → 0 there even at σ = 10.) The grid is coarse:
    the mixture is evaluated exactly every ``stride`` pixels (stride = the narrowest width / 7,
    at least 1; 4 at 256×256, so a bump spans ≥ 7 grid steps), integrated there by scaling and
    squaring, and interpolated back to the pixels bilinearly (a relative error of order
    (stride / width)² / 8 < 0.3 %; σ is measured on the interpolated field itself).
    """

    def __init__(self, bumps, H, W, norm, vmax, stride):
        self.bumps, self.H, self.W, self.norm, self.vmax = bumps, H, W, norm, vmax
        self.stride, self.pad = stride, -1

    def _grid(self, reach):
        st = self.stride
        self.pad = st * int(np.ceil((reach + 2 * st + 2) / st))
        y = np.arange(-self.pad, self.H + self.pad + st, st, dtype=np.float64)     # (Hc,)
        x = np.arange(-self.pad, self.W + self.pad + st, st, dtype=np.float64)     # (Wc,)
        self.m = _bumps_on_grid(self.bumps, y, x) / (self.norm * st)   # coarse pixels per unit s
        self.iy = _linear_weights(self.H, -self.pad, st, y.size)                  # (H,), (H,)
        self.ix = _linear_weights(self.W, -self.pad, st, x.size)                  # (W,), (W,)

    def __call__(self, s):
        reach = s * self.vmax                               # pixels
        if reach + self.stride + 1 > self.pad:              # grow the padded grid (rarely twice)
            self._grid(1.25 * reach)
        uc, _ = integrate_velocity_forward((s * self.m)[None],
                                           _svf_steps(reach / self.stride))        # (1, 2, Hc, Wc)
        (jy, fy), (jx, fx) = self.iy, self.ix
        rows = uc[0][:, jy] * (1 - fy)[:, None] + uc[0][:, jy + 1] * fy[:, None]   # (2, H, Wc)
        return self.stride * (rows[:, :, jx] * (1 - fx) + rows[:, :, jx + 1] * fx)  # (2, H, W)


def _svf_solve(flow, sigma, region, max_iter=40):
    """Solve RMS(exp(s·m) − id over the region) = σ for the scale s (secant steps, kept inside
    a bracket). Returns (u, s, reached): u is None when the draw cannot reach σ — its RMS
    saturates below σ, or reaching it would need a flow longer than 8 image sizes — and
    ``reached`` is the largest RMS seen."""
    s_cap = 8 * max(flow.H, flow.W) / flow.vmax
    lo, hi = 0.0, None                                # the bracket: RMS(lo) < σ < RMS(hi)
    s, best = float(sigma), 0.0
    pts = []                                          # (s, rms) of the last two evaluations
    for _ in range(max_iter):
        u = flow(s)
        r = _rms(u, region)
        best = max(best, r)
        if abs(r - sigma) <= SVF_RTOL * sigma:
            return u, s, r
        if r < sigma:
            lo = s
        else:
            hi = s
        pts = (pts + [(s, r)])[-2:]
        if len(pts) == 2 and pts[0][1] != pts[1][1]:
            (s0, r0), (s1, r1) = pts
            s_new = s1 + (sigma - r1) * (s1 - s0) / (r1 - r0)
        else:
            s_new = s * sigma / max(r, 1e-12)         # first step: RMS ≈ proportional to s
        if hi is None:                                # no upper end yet: at most double
            s_new = min(max(s_new, 1.05 * lo), 2 * lo)
            if s_new > s_cap:
                return None, s, best
        elif not lo < s_new < hi:                     # a secant step outside: bisect
            s_new = 0.5 * (lo + hi)
        s = s_new
    return None, s, best


def sigma_limit(field="gmm", widths=DEFAULT_WIDTHS):
    """The largest σ (pixels) the family ``field`` draws with bumps of ``widths`` (px at the
    working size): ``GMM_MAX_SIGMA_PER_WIDTH`` or ``SVF_MAX_SIGMA_PER_WIDTH`` × the narrowest
    width (42 and 56 px at 256×256 with the default widths; σ and the widths scale with the
    image together, so the limit in 256-pixel units does not depend on the size)."""
    per_width = {"gmm": GMM_MAX_SIGMA_PER_WIDTH, "svf": SVF_MAX_SIGMA_PER_WIDTH}
    if field not in per_width:
        raise ValueError(f"field must be one of {', '.join(map(repr, FIELDS))}, got {field!r}")
    return per_width[field] * float(widths[0])


def _check_limit(field, sigma, widths):
    if sigma > sigma_limit(field, widths):
        name = {"gmm": "Gaussian-mixture field (field='gmm')",
                "svf": "velocity-field deformation (field='svf')"}[field]
        advice = {"gmm": "ask for a smaller sigma, wider bumps, or the invertible field='svf'",
                  "svf": "ask for a smaller sigma or wider bumps"}[field]
        raise ValueError(
            f"sigma={sigma:g} px is more than the {name} draws with widths "
            f"{widths[0]:g}–{widths[1]:g} px: the largest is "
            f"{_pick_sigma_hint(sigma_limit(field, widths))} px; {advice}")


def velocity_field(shape, sigma, seed=0, region=None, n_components=DEFAULT_COMPONENTS,
                   widths=DEFAULT_WIDTHS, max_tries=100, dtype=np.float32, return_info=False):
    """One diffeomorphic field u = exp(v) − id, v a Gaussian-mixture velocity, with RMS |u| = σ
    over ``region`` (the "svf" family of the module docstring).

    Inputs: as :func:`gaussian_mixture_field` (no ``min_det``: the flow does not fold); a draw is
    redrawn only when its displacement saturates below σ or its field, resolved on the pixel
    grid, folds somewhere (det J ≤ 0: none in 480 draws up to σ = 40 at 256×256).
    Returns:
    - u: (2, H, W) displacement of φ = exp(v) (channel 0 = rows), pixels, RMS over the region
      equal to σ within ``SVF_RTOL`` (relative).
    - with ``return_info``: a dict ``rejected`` (draws that could not reach σ) and ``scale``
      (s with v = s·m, m the mixture normalised to RMS 1 over the region).
    """
    H, W, region, n_components, widths, max_tries = _check_field_args(
        "svf", shape, sigma, region, n_components, widths, max_tries, dtype)
    rng = _as_rng(seed)
    if sigma == 0:
        u = np.zeros((2, H, W), dtype)
        return (u, {"rejected": 0, "scale": 0.0}) if return_info else u
    reach = []
    for tries in range(max_tries):
        bumps = _draw_bumps(rng, H, W, region, n_components, widths)
        m = _bumps_on_grid(bumps, np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64))
        rms = _rms(m, region)
        if rms < 1e-12:
            continue
        # the speed bound: the bumps are centred in the image, so |m| peaks inside it (a 25 %
        # margin covers the sum of bumps peaking just outside)
        vmax = 1.25 * float(np.sqrt(m[0] ** 2 + m[1] ** 2).max()) / rms
        stride = max(1, int(widths[0] // 7))
        u, s, reached = _svf_solve(_Flow(bumps, H, W, rms, vmax, stride), float(sigma), region)
        if u is not None and float(jacobian_determinant(u).min()) > 0:
            u = u.astype(dtype)
            return (u, {"rejected": tries, "scale": s}) if return_info else u
        reach.append(reached)
    raise ValueError(
        f"sigma={sigma:g} px: none of {max_tries} velocity-field draws at {H}×{W} (widths "
        f"{widths[0]:g}–{widths[1]:g} px) reached it with a flow the pixel grid resolves "
        f"(largest RMS {_pick_sigma_hint(max(reach or [0.0]))} px); ask for sigma ≤ "
        f"{_pick_sigma_hint(sigma_limit('svf', widths))} or wider bumps")


def random_field(shape, sigma, seed=0, region=None, field="gmm", **kwargs):
    """One field of the family ``field`` ("gmm": :func:`gaussian_mixture_field`, "svf":
    :func:`velocity_field`); ``kwargs`` go to it (``min_det`` is a "gmm" parameter only)."""
    if field == "gmm":
        return gaussian_mixture_field(shape, sigma, seed=seed, region=region, **kwargs)
    if field == "svf":
        kwargs.pop("min_det", None)                       # the flow cannot fold: nothing to check
        return velocity_field(shape, sigma, seed=seed, region=region, **kwargs)
    raise ValueError(f"field must be one of {', '.join(map(repr, FIELDS))}, got {field!r}")


def random_fields(n, shape, sigma, seed=0, region=None, field="gmm", **kwargs):
    """``n`` fields; field i is ``random_field(..., seed=[seed, i])`` (order-independent).

    Returns: (n, 2, H, W).
    """
    n = check_positive_int("n", n)
    return np.stack([random_field(shape, sigma, seed=[int(seed), i], region=region, field=field,
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
