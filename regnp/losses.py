"""Losses as forward/backward pairs: similarity (MSE, local NCC), smoothness (diffusion, TV),
the paper's meta-regularization penalty on the 13×13 filters (eq. 12), and the soft Dice of
segmentation-supervised training.

Every loss returns a Python float and a cache; its backward takes ``dloss`` (the upstream
gradient of the scalar, 1.0 when the loss is the final objective) and returns gradients with the
inputs' shapes and dtypes. Sums are accumulated in float64 even for float32 inputs.

Reductions (stated once more in each docstring):

=================  ==========================================================================
``mse``            mean over all N·C·H·W entries of ``(pred - target)²``
``ncc``            ``-mean`` over all N·C·H·W pixels of the squared local correlation ``cc``
``diffusion``      ``(mean(dy²) + mean(dx²)) / 2`` over the forward differences (VoxelMorph's
                   ``Grad('l2')`` normalisation)
``tv``             ``(mean(ρ(dy)) + mean(ρ(dx))) / 2`` with ``ρ(d) = sqrt(d² + eps²) - eps``
``meta_penalty``   a *sum* over the filters of eq. 12
``soft_dice``      ``1 - mean`` of the soft Dice over the (pair, label) entries whose target is
                   not empty
=================  ==========================================================================
"""
import numba
import numpy as np

from ._checks import check_array, check_same_shape, check_positive_int
from regnp.ops._fast.threads import run, share

__all__ = ["mse_forward", "mse_backward", "ncc_forward", "ncc_backward", "ncc_forward_reference",
           "ncc_backward_reference", "diffusion_forward", "diffusion_backward", "tv_forward", "tv_backward",
           "meta_penalty_forward", "meta_penalty_backward", "psd_from_factor_forward",
           "psd_from_factor_backward", "exchange_matrix", "one_hot", "soft_dice_forward",
           "soft_dice_backward", "soft_dice_reference"]


def _check_pair(pred, target):
    check_array("pred", pred, ndim=4)
    check_array("target", target, ndim=4, dtype=pred.dtype)
    check_same_shape("pred", pred, "target", target)


def _check_dloss(dloss):
    d = float(dloss)
    if not np.isfinite(d):
        raise ValueError(f"dloss must be a finite number, got {dloss!r}")
    return d


# ---------------------------------------------------------------------------------------------
# MSE
# ---------------------------------------------------------------------------------------------
def mse_forward(pred, target):
    """Mean squared error, **mean** over all entries.

    Inputs: pred, target ``(N, C, H, W)`` of one float dtype.
    Returns: ``loss = mean((pred - target)²)`` (float), cache.
    """
    _check_pair(pred, target)
    diff = pred - target                                              # (N, C, H, W)
    # a float64 sum of squares without BLAS: np.dot would hand this 131k-entry product to
    # OpenBLAS, whose threads then spin and compete with the Numba kernels that follow
    loss = float(np.sum(np.square(diff, dtype=np.float64)))
    return loss / diff.size, (diff,)


def mse_backward(cache, dloss=1.0):
    """Returns ``(dpred, dtarget)``: ``dpred = 2 (pred - target) / size · dloss = -dtarget``."""
    (diff,) = cache
    g = diff * diff.dtype.type(2.0 * _check_dloss(dloss) / diff.size)  # (N, C, H, W)
    return g, -g


# ---------------------------------------------------------------------------------------------
# local normalised cross-correlation (VoxelMorph's NCC)
# ---------------------------------------------------------------------------------------------
# The five window sums ΣI, ΣJ, ΣI², ΣJ², ΣIJ are separable box filters: a horizontal pass over
# each row (fused with forming the products) and a vertical pass (fused with the per-pixel
# formula). Everything after the inputs is float64: var = ΣI² − (ΣI)²/n cancels digits.
# Names: ``row_sums`` = the five horizontal (along-the-row) window sums, ``S`` = the full window
# sums, ``coef_row_sums`` = the horizontal sums of the backward's chain-rule coefficients;
# ``M = N·C`` image planes, ``r = win // 2``, ``n = win²``.
@numba.njit(cache=True, nogil=True)
def _ncc_rows(part, parts, I, J, r, row_sums):
    """row_sums[q, m, i, j] = Σ_{|d|<=r} (I, J, I², J², IJ)[q][m, i, j+d], zero padded.
    I, J: (M, H, W)."""
    M, H, W = I.shape
    job_lo, job_hi = share(M * H, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
        m = t // H
        i = t - m * H
        xp = np.zeros((5, W + 2 * r))                       # padded product rows
        for j in range(W):
            a = np.float64(I[m, i, j])
            b = np.float64(J[m, i, j])
            xp[0, j + r] = a
            xp[1, j + r] = b
            xp[2, j + r] = a * a
            xp[3, j + r] = b * b
            xp[4, j + r] = a * b
        acc = np.zeros((5, W))
        for q in range(5):
            for d in range(2 * r + 1):
                for j in range(W):                          # vectorised
                    acc[q, j] += xp[q, j + d]
            for j in range(W):
                row_sums[q, m, i, j] = acc[q, j]


@numba.njit(cache=True, nogil=True)
def _ncc_cols_cc(part, parts, row_sums, r, n, eps, S, cc):
    """Vertical box pass S = Σ_{|d|<=r} row_sums[:, :, i+d, :] and the per-pixel cc (clamped to
    [0, 1])."""
    _, M, H, W = row_sums.shape
    job_lo, job_hi = share(M * H, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
        m = t // H
        i = t - m * H
        for q in range(5):
            for j in range(W):
                S[q, m, i, j] = 0.0
            for y in range(max(0, i - r), min(H, i + r + 1)):
                for j in range(W):
                    S[q, m, i, j] += row_sums[q, m, y, j]
        for j in range(W):
            sI = S[0, m, i, j]
            sJ = S[1, m, i, j]
            cross = S[4, m, i, j] - sI * sJ / n
            vI = max(S[2, m, i, j] - sI * sI / n, 0.0)
            vJ = max(S[3, m, i, j] - sJ * sJ / n, 0.0)
            cc[m, i, j] = min(cross * cross / (vI * vJ + eps), 1.0)


@numba.njit(cache=True, nogil=True)
def _ncc_coeff_rows(part, parts, S, r, n, eps, scale, coef_row_sums):
    """Per-pixel chain-rule coefficients G = scale · d cc / d(ΣI, ΣJ, ΣI², ΣJ², ΣIJ) (0 where a
    clamp is active), then their horizontal box sums coef_row_sums."""
    _, M, H, W = S.shape
    job_lo, job_hi = share(M * H, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
        m = t // H
        i = t - m * H
        gp = np.zeros((5, W + 2 * r))                       # padded coefficient rows
        for j in range(W):
            sI = S[0, m, i, j]
            sJ = S[1, m, i, j]
            cross = S[4, m, i, j] - sI * sJ / n
            vI_raw = S[2, m, i, j] - sI * sI / n
            vJ_raw = S[3, m, i, j] - sJ * sJ / n
            vI = max(vI_raw, 0.0)
            vJ = max(vJ_raw, 0.0)
            inv = 1.0 / (vI * vJ + eps)
            c2 = cross * cross * inv
            if c2 > 1.0:                                    # clamped at 1: flat, zero gradient
                continue
            d_cross = 2.0 * cross * inv
            d_vI = -c2 * vJ * inv if vI_raw > 0 else 0.0
            d_vJ = -c2 * vI * inv if vJ_raw > 0 else 0.0
            gp[0, j + r] = scale * (-d_cross * sJ - 2.0 * d_vI * sI) / n
            gp[1, j + r] = scale * (-d_cross * sI - 2.0 * d_vJ * sJ) / n
            gp[2, j + r] = scale * d_vI
            gp[3, j + r] = scale * d_vJ
            gp[4, j + r] = scale * d_cross
        acc = np.zeros((5, W))
        for q in range(5):
            for d in range(2 * r + 1):
                for j in range(W):
                    acc[q, j] += gp[q, j + d]
            for j in range(W):
                coef_row_sums[q, m, i, j] = acc[q, j]


@numba.njit(cache=True, nogil=True)
def _ncc_cols_combine(part, parts, coef_row_sums, r, I, J, dI, dJ):
    """Vertical box pass B of the coefficients, then dI = B0 + 2 I B2 + J B4 and
    dJ = B1 + 2 J B3 + I B4 (the adjoint of the window sums of I, J, I², J², IJ)."""
    _, M, H, W = coef_row_sums.shape
    job_lo, job_hi = share(M * H, part, parts)    # this thread's jobs
    for t in range(job_lo, job_hi):
        m = t // H
        i = t - m * H
        B = np.zeros((5, W))
        for q in range(5):
            for y in range(max(0, i - r), min(H, i + r + 1)):
                for j in range(W):
                    B[q, j] += coef_row_sums[q, m, y, j]
        for j in range(W):
            a = np.float64(I[m, i, j])
            b = np.float64(J[m, i, j])
            dI[m, i, j] = B[0, j] + 2.0 * a * B[2, j] + b * B[4, j]
            dJ[m, i, j] = B[1, j] + 2.0 * b * B[3, j] + a * B[4, j]


def _check_win(win, eps):
    win = check_positive_int("win", win)
    if win % 2 == 0:
        raise ValueError(f"win must be odd (a window centred on each pixel), got {win}")
    eps = float(eps)
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"eps must be a positive number (it keeps flat patches at cc = 0 instead "
                         f"of 0/0), got {eps!r}")
    return win, eps


def ncc_forward(pred, target, win=9, eps=1e-5):
    """Local (windowed) normalised cross-correlation loss, as in VoxelMorph.

    For every pixel p of every image/channel, with the sums Σ over the ``win × win`` window
    centred on p (zero padding: pixels outside the image count as 0, and the window always has
    ``n = win²`` entries), ``I = pred``, ``J = target``::

        cross = ΣIJ - ΣI ΣJ / n          (n × local covariance)
        varI  = ΣI² - (ΣI)² / n          (n × local variance, clamped at >= 0 against round-off)
        varJ  = ΣJ² - (ΣJ)² / n
        cc    = min(cross² / (varI varJ + eps), 1)      ∈ [0, 1]

    and ``loss = -mean(cc)`` over all N·C·H·W pixels, so ``loss ∈ [-1, 0]``; it is never below -1
    (Cauchy–Schwarz gives cross² <= varI varJ; the ``min`` only guards round-off).

    * An image compared with itself gives ``cc = varI² / (varI² + eps) ≈ 1`` wherever it has
      texture, so ``loss ≈ -1``.
    * Flat patches (``varI = 0`` or ``varJ = 0``) give ``cc = 0`` (never NaN): they add nothing
      to the similarity, and they still count in the mean's denominator. Because of the zero
      padding, a non-zero constant image is *not* flat in windows that overlap the border.

    Inputs:
    - pred, target: ``(N, C, H, W)``, one float dtype (each channel is compared separately).
    - win: odd window size (default 9, VoxelMorph's 2-D default).
    - eps: added to the denominator (default 1e-5, VoxelMorph's), in units of window sums.

    Returns: loss (float), cache.
    """
    _check_pair(pred, target)
    win, eps = _check_win(win, eps)
    N, C, H, W = pred.shape
    M = N * C
    I = np.ascontiguousarray(pred).reshape(M, H, W)                   # (M, H, W), M = N*C
    J = np.ascontiguousarray(target).reshape(M, H, W)
    row_sums = np.empty((5, M, H, W))                                 # horizontal sums, float64
    S = np.empty((5, M, H, W))                                        # window sums
    cc = np.empty((M, H, W))
    run(_ncc_rows, I, J, win // 2, row_sums)
    run(_ncc_cols_cc, row_sums, win // 2, float(win * win), eps, S, cc)
    loss = -float(cc.sum()) / cc.size
    return loss, (pred, target, S, win, eps)


def ncc_backward(cache, dloss=1.0):
    """Gradients of :func:`ncc_forward` (loss = -mean(cc)); returns ``(dpred, dtarget)``.

    Chain rule through the per-pixel formula gives coefficients for the five window sums; the
    adjoint of a (symmetric, zero-padded) box sum is the same box sum, so
    ``dI = box(g_ΣI) + 2 I box(g_ΣI²) + J box(g_ΣIJ)`` and symmetrically for ``dJ``.
    """
    pred, target, S, win, eps = cache
    d = _check_dloss(dloss)
    N, C, H, W = pred.shape
    M = N * C
    I = np.ascontiguousarray(pred).reshape(M, H, W)
    J = np.ascontiguousarray(target).reshape(M, H, W)
    coef_row_sums = np.empty_like(S)                                  # (5, M, H, W)
    run(_ncc_coeff_rows, S, win // 2, float(win * win), eps, -d / (M * H * W), coef_row_sums)
    dI = np.empty((M, H, W))
    dJ = np.empty((M, H, W))
    run(_ncc_cols_combine, coef_row_sums, win // 2, I, J, dI, dJ)
    return (dI.reshape(pred.shape).astype(pred.dtype, copy=False),
            dJ.reshape(pred.shape).astype(pred.dtype, copy=False))


def ncc_forward_reference(pred, target, win=9, eps=1e-5):
    """Slow loop version of :func:`ncc_forward` (returns only the loss)."""
    N, C, H, W = pred.shape
    r = win // 2
    n = win * win
    total = 0.0
    for b in range(N):
        for c in range(C):
            Ip = np.zeros((H + 2 * r, W + 2 * r)); Ip[r:r + H, r:r + W] = pred[b, c]
            Jp = np.zeros((H + 2 * r, W + 2 * r)); Jp[r:r + H, r:r + W] = target[b, c]
            for i in range(H):
                for j in range(W):
                    a = Ip[i:i + win, j:j + win]
                    t = Jp[i:i + win, j:j + win]
                    cross = np.sum(a * t) - a.sum() * t.sum() / n
                    vI = max(np.sum(a * a) - a.sum() ** 2 / n, 0.0)
                    vJ = max(np.sum(t * t) - t.sum() ** 2 / n, 0.0)
                    total += min(cross ** 2 / (vI * vJ + eps), 1.0)
    return -total / (N * C * H * W)


def ncc_backward_reference(pred, target, win=9, eps=1e-5, dloss=1.0):
    """Slow loop version of :func:`ncc_backward`: ``(dpred, dtarget)`` in float64.

    Written from the per-pixel formula, window by window, independently of the fast version's
    factoring into five box sums. With ``Ī = ΣI / n`` and ``J̄ = ΣJ / n`` the window means and
    ``D = varI varJ + eps``, for every pixel ``a`` of the window (zero-padded pixels get a
    gradient too, and are cropped off at the end)::

        d cross / d I_a = J_a - J̄        d varI / d I_a = 2 (I_a - Ī)   (0 where varI is clamped)
        d cc / d cross  = 2 cross / D    d cc / d varI  = -cross² varJ / D²

    and symmetrically for ``J``; a window whose ``cc`` is clamped at 1 contributes nothing, and
    each window's ``d cc`` is scaled by ``-dloss / (N·C·H·W)`` (the ``-mean``).
    """
    N, C, H, W = pred.shape
    r = win // 2
    n = win * win
    scale = -float(dloss) / (N * C * H * W)
    dpred = np.zeros((N, C, H, W))
    dtarget = np.zeros((N, C, H, W))
    for b in range(N):
        for c in range(C):
            Ip = np.zeros((H + 2 * r, W + 2 * r)); Ip[r:r + H, r:r + W] = pred[b, c]
            Jp = np.zeros((H + 2 * r, W + 2 * r)); Jp[r:r + H, r:r + W] = target[b, c]
            dIp = np.zeros_like(Ip)
            dJp = np.zeros_like(Jp)
            for i in range(H):
                for j in range(W):
                    a = Ip[i:i + win, j:j + win]
                    t = Jp[i:i + win, j:j + win]
                    mean_a, mean_t = a.sum() / n, t.sum() / n
                    cross = np.sum(a * t) - a.sum() * t.sum() / n
                    vI_raw = np.sum(a * a) - a.sum() ** 2 / n
                    vJ_raw = np.sum(t * t) - t.sum() ** 2 / n
                    vI, vJ = max(vI_raw, 0.0), max(vJ_raw, 0.0)
                    D = vI * vJ + eps
                    if cross ** 2 / D > 1.0:                 # clamped: flat, no gradient
                        continue
                    d_cross = 2.0 * cross / D
                    d_vI = -cross ** 2 * vJ / D ** 2 if vI_raw > 0 else 0.0
                    d_vJ = -cross ** 2 * vI / D ** 2 if vJ_raw > 0 else 0.0
                    dIp[i:i + win, j:j + win] += scale * (d_cross * (t - mean_t)
                                                          + d_vI * 2.0 * (a - mean_a))
                    dJp[i:i + win, j:j + win] += scale * (d_cross * (a - mean_a)
                                                          + d_vJ * 2.0 * (t - mean_t))
            dpred[b, c] = dIp[r:r + H, r:r + W]
            dtarget[b, c] = dJp[r:r + H, r:r + W]
    return dpred, dtarget


# ---------------------------------------------------------------------------------------------
# smoothness of a displacement field: diffusion (p = 2) and total variation (p = 1)
# ---------------------------------------------------------------------------------------------
def _check_field(u):
    check_array("u", u, ndim=4)
    if u.shape[2] < 2 or u.shape[3] < 2:
        raise ValueError(f"u has spatial size {u.shape[2:]}; forward differences need at least 2 "
                         f"pixels along each axis")


def diffusion_forward(u):
    """Diffusion regularizer (eq. 3 with p = 2) on forward differences.

    ``dy = u[:, :, 1:, :] - u[:, :, :-1, :]``, ``dx = u[:, :, :, 1:] - u[:, :, :, :-1]``;
    ``loss = (mean(dy²) + mean(dx²)) / 2`` — each mean over all its entries (all channels), then
    averaged over the two directions, as VoxelMorph's ``Grad('l2')``. A constant field gives 0;
    ``u_x = a·x`` gives ``a²/2``.

    Inputs: u ``(N, C, H, W)`` (normally C = 2), H, W >= 2. Returns: loss (float), cache.
    """
    _check_field(u)
    dy = np.diff(u, axis=2)                                           # (N, C, H-1, W)
    dx = np.diff(u, axis=3)                                           # (N, C, H, W-1)
    loss = 0.5 * (float(np.mean(np.square(dy, dtype=np.float64)))
                  + float(np.mean(np.square(dx, dtype=np.float64))))
    return loss, (u.shape, u.dtype, dy, dx)


def _adjoint_diff(gy, gx, shape, dtype):
    """Transpose of the forward differences: du = D_yᵀ gy + D_xᵀ gx."""
    du = np.zeros(shape, dtype=dtype)                                 # (N, C, H, W)
    du[:, :, 1:, :] += gy
    du[:, :, :-1, :] -= gy
    du[:, :, :, 1:] += gx
    du[:, :, :, :-1] -= gx
    return du


def diffusion_backward(cache, dloss=1.0):
    """Returns ``du`` (u's shape): ``dloss · (D_yᵀ dy / |dy| + D_xᵀ dx / |dx|)``."""
    shape, dtype, dy, dx = cache
    d = _check_dloss(dloss)
    gy = dy * dtype.type(d / dy.size)                                 # 0.5 · 2 · dy / |dy|
    gx = dx * dtype.type(d / dx.size)
    return _adjoint_diff(gy, gx, shape, dtype)


def tv_forward(u, eps=1e-3):
    """Smoothed anisotropic total variation (eq. 3 with p = 1) on forward differences.

    ``|d|`` is replaced by the Charbonnier function ``ρ(d) = sqrt(d² + eps²) - eps`` (smooth,
    ``ρ(0) = 0``, ``ρ(d) -> |d|`` for ``|d| >> eps``) so the loss is differentiable at 0;
    ``loss = (mean(ρ(dy)) + mean(ρ(dx))) / 2``, the same normalisation as :func:`diffusion_forward`.

    Inputs: u ``(N, C, H, W)``, H, W >= 2; eps > 0 (pixels). Returns: loss (float), cache.
    """
    _check_field(u)
    eps = float(eps)
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    dy = np.diff(u, axis=2).astype(np.float64)                        # (N, C, H-1, W)
    dx = np.diff(u, axis=3).astype(np.float64)                        # (N, C, H, W-1)
    ry = np.sqrt(dy * dy + eps * eps)
    rx = np.sqrt(dx * dx + eps * eps)
    loss = 0.5 * (float(np.mean(ry - eps)) + float(np.mean(rx - eps)))
    return loss, (u.shape, u.dtype, dy, dx, ry, rx)


def tv_backward(cache, dloss=1.0):
    """Returns ``du``: ``dloss/2 · (D_yᵀ (dy/ρ_y) / |dy| + D_xᵀ (dx/ρ_x) / |dx|)``."""
    shape, dtype, dy, dx, ry, rx = cache
    d = _check_dloss(dloss)
    gy = (0.5 * d / dy.size) * dy / ry
    gx = (0.5 * d / dx.size) * dx / rx
    return _adjoint_diff(gy.astype(dtype), gx.astype(dtype), shape, dtype)


# ---------------------------------------------------------------------------------------------
# meta-regularization penalty (eq. 12) and the PSD factorisation K = U Uᵀ
# ---------------------------------------------------------------------------------------------
def exchange_matrix(k, dtype=np.float64):
    """The k×k exchange matrix J (ones on the anti-diagonal): ``J K`` flips rows, ``K J`` columns."""
    return np.eye(k, dtype=dtype)[::-1].copy()


def _check_filters(name, K):
    if not isinstance(K, np.ndarray) or K.ndim not in (2, 3):
        shape = getattr(K, "shape", None)
        raise ValueError(f"{name} must be a (k, k) filter or a (C, k, k) stack, got "
                         f"{type(K).__name__} with shape {shape}")
    K3 = K[None] if K.ndim == 2 else K
    check_array(name, K3, ndim=3)
    if K3.shape[1] != K3.shape[2]:
        raise ValueError(f"{name} must hold square filters, got shape {K.shape}")
    return K3


def meta_penalty_forward(K, rho1, rho2, trace="linear"):
    """Meta-regularization penalty, eq. 12 of the paper, summed over filters::

        M(K) = ρ1 (‖K − Kᵀ‖² + ‖KJ − JK‖²) − ρ2 (Tr K + Tr JK)

    ‖·‖ is the Frobenius norm and J the exchange matrix. ``K − Kᵀ`` vanishes for filters
    symmetric about the main diagonal; ``KJ − JK`` vanishes for filters unchanged by a 180°
    rotation (``K[i, j] = K[k-1-i, k-1-j]``); both vanish for radially symmetric filters (e.g. a
    Gaussian stencil). ``Tr JK = Σ_i K[k-1-i, i]`` is the anti-diagonal sum. Note the trace term
    is a *reward* that is unbounded below on its own: keep ρ2 small or constrain the filter.

    Inputs:
    - K: ``(k, k)`` or ``(C, k, k)`` float filters.
    - rho1, rho2: non-negative weights (the paper tunes ρ1 ∈ {0.1..1000}, ρ2 ∈ {1e-5..0.1}).
    - trace: ``"linear"`` — eq. 12 as printed, ``−ρ2 (Tr K + Tr JK)``, a reward without a lower
      bound; or ``"hinge"`` — ``ρ2 (max(0, −Tr K) + max(0, −Tr JK))``, which only penalises a
      negative trace. The hinge is what sec. 4.3 describes in words ("a non-negativity trace
      penalty": Tr K̃ ≥ 0 is the necessary condition for PSD) and is bounded below by 0.

    Returns: loss (float), cache — a dict whose ``"parts"`` entry holds the unweighted sums over
    filters ``sym``, ``antisym``, ``trace``, ``antitrace`` and the filters' total ``sum``, for
    logging.
    """
    K3 = _check_filters("K", K)
    rho1, rho2 = float(rho1), float(rho2)
    if trace not in ("linear", "hinge"):
        raise ValueError(f"trace must be 'linear' (eq. 12 as printed) or 'hinge', got {trace!r}")
    if not (np.isfinite(rho1) and np.isfinite(rho2) and rho1 >= 0 and rho2 >= 0):
        raise ValueError(f"rho1 and rho2 must be non-negative numbers, got {rho1!r}, {rho2!r}")
    Kd = K3.astype(np.float64)                                        # (C, k, k)
    Jm = exchange_matrix(Kd.shape[1])
    A = Kd - Kd.transpose(0, 2, 1)                                    # K − Kᵀ
    B = Kd @ Jm - Jm @ Kd                                             # KJ − JK
    parts = {"sym": float(np.sum(A * A)), "antisym": float(np.sum(B * B)),
             "trace": float(np.trace(Kd, axis1=1, axis2=2).sum()),
             "antitrace": float(np.trace(Jm @ Kd, axis1=1, axis2=2).sum()),
             "sum": float(Kd.sum())}
    tr = np.trace(Kd, axis1=1, axis2=2)                               # (C,) per filter
    atr = np.trace(Jm @ Kd, axis1=1, axis2=2)
    if trace == "linear":
        t_term = -(parts["trace"] + parts["antitrace"])
        w_tr, w_atr = -np.ones_like(tr), -np.ones_like(atr)           # d t_term / d Tr
    else:
        t_term = float(np.maximum(0, -tr).sum() + np.maximum(0, -atr).sum())
        w_tr, w_atr = -(tr < 0).astype(np.float64), -(atr < 0).astype(np.float64)
    loss = rho1 * (parts["sym"] + parts["antisym"]) + rho2 * t_term
    return loss, {"A": A, "B": B, "J": Jm, "rho1": rho1, "rho2": rho2, "shape": K.shape,
                  "dtype": K.dtype, "parts": parts, "w_tr": w_tr, "w_atr": w_atr}


def meta_penalty_backward(cache, dloss=1.0):
    """Returns ``dK`` (K's shape): ``dloss · (ρ1 (4 (K − Kᵀ) + 2 (BJ − JB)) + ρ2 (a I + b J))``
    with ``B = KJ − JK`` and, per filter, ``a = b = −1`` (linear) or ``a = −[Tr K < 0]``,
    ``b = −[Tr JK < 0]`` (hinge; at exactly 0 the one-sided derivative 0 is used)."""
    d = _check_dloss(dloss)
    A, B, Jm = cache["A"], cache["B"], cache["J"]
    k = Jm.shape[0]
    I = np.eye(k)
    trace_grad = (cache["w_tr"][:, None, None] * I + cache["w_atr"][:, None, None] * Jm)
    g = cache["rho1"] * (4.0 * A + 2.0 * (B @ Jm - Jm @ B)) + cache["rho2"] * trace_grad
    g = (d * g).astype(cache["dtype"])                                # (C, k, k)
    return g.reshape(cache["shape"])


def psd_from_factor_forward(U):
    """A PSD filter ``K = Ũ Ũᵀ`` from an unconstrained factor ``U`` (the paper's Sec. 4.3).

    ``Ũ`` keeps the strict upper triangle of ``U``, takes ``|U_ii|`` on the diagonal and zeros
    the lower triangle. ``Ũ Ũᵀ`` is PSD for *any* ``Ũ``; the absolute value just picks the
    factor with a non-negative diagonal as the paper asks. ``|·|`` is differentiable except at
    0, where the backward uses the right-hand derivative (+1), so a diagonal entry that reaches 0
    is never stuck there. A zero diagonal is allowed, so a rank-1 ``g gᵀ`` is reachable exactly
    (``U`` = ``g`` in the last column, zeros elsewhere).

    Inputs: U ``(k, k)`` or ``(C, k, k)``. Returns: K (U's shape and dtype), cache.
    """
    U3 = _check_filters("U", U)
    k = U3.shape[1]
    upper = np.triu(np.ones((k, k), dtype=bool), 1)                   # strict upper triangle
    diag = np.eye(k, dtype=bool)
    Ut = np.where(upper, U3, 0) + np.where(diag, np.abs(U3), 0)       # (C, k, k)
    K = Ut @ Ut.transpose(0, 2, 1)                                    # (C, k, k)
    sign = np.where(U3 >= 0, 1.0, -1.0).astype(U3.dtype)
    return K.reshape(U.shape), (Ut, upper, diag, sign, U.shape)


def psd_from_factor_backward(dK, cache):
    """Returns ``dU`` (U's shape): ``dŨ = (dK + dKᵀ) Ũ``, masked to the upper triangle, times
    ``sign(U_ii)`` (``+1`` at 0) on the diagonal."""
    Ut, upper, diag, sign, shape = cache
    check_array("dK", dK, dtype=Ut.dtype, shape=shape)
    dK3 = dK.reshape(Ut.shape)
    dUt = (dK3 + dK3.transpose(0, 2, 1)) @ Ut                         # (C, k, k)
    dU = np.where(upper, dUt, 0) + np.where(diag, sign * dUt, 0)
    return dU.astype(Ut.dtype, copy=False).reshape(shape)


# ---------------------------------------------------------------------------------------------
# soft Dice (segmentation-supervised training, VoxelMorph's semi-supervised mode)
# ---------------------------------------------------------------------------------------------
def one_hot(labels, values, dtype=np.float32):
    """One channel per label value: ``out[n, c] = (labels[n, 0] == values[c])``.

    Inputs: labels ``(N, 1, H, W)`` integer label map; values: the label values (e.g. (1, 4)).
    Returns: ``(N, len(values), H, W)`` array of 0/1 in ``dtype``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 4 or labels.shape[1] != 1:
        raise ValueError(f"labels must be a label map (N, 1, H, W), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer label map, got dtype {labels.dtype}")
    return np.concatenate([labels == v for v in values], axis=1).astype(dtype)


def soft_dice_reference(pred, target):
    """The definition, one (pair, label) entry at a time: the loss of :func:`soft_dice_forward`."""
    N, C = pred.shape[:2]
    dices = []
    for n in range(N):
        for c in range(C):
            p = pred[n, c].astype(np.float64)
            t = target[n, c].astype(np.float64)
            if t.sum() > 0:                                 # a label the fixed map holds
                dices.append(2.0 * np.sum(p * t) / (np.sum(p) + np.sum(t)))
    return 1.0 - float(np.mean(dices)) if dices else 0.0


def soft_dice_forward(pred, target):
    """Soft Dice loss between soft label maps (e.g. a bilinearly warped one-hot map) and targets.

    Per pair n and label channel c, with sums over the pixels,
    ``dice[n,c] = 2 Σ pred·target / (Σ pred + Σ target)``; the loss is ``1 − mean(dice)`` over
    the entries whose target is not empty (the Dice metric scores the labels present in the
    fixed mask too), and 0 if there are none. For 0/1 maps it is 1 − the usual Dice.

    Inputs: pred, target ``(N, C, H, W)`` of one float dtype, values ≥ 0 (probabilities or
    one-hot). Returns: loss (float), cache.
    """
    _check_pair(pred, target)
    P = pred.sum(axis=(2, 3), dtype=np.float64)                       # (N, C)
    T = target.sum(axis=(2, 3), dtype=np.float64)
    inter = np.einsum("ncij,ncij->nc", pred.astype(np.float64), target.astype(np.float64))
    present = T > 0                                                   # (N, C) entries scored
    denom = np.where(present, P + T, 1.0)
    dice = np.where(present, 2.0 * inter / denom, 0.0)                # (N, C)
    k = int(present.sum())
    loss = 1.0 - float(dice.sum()) / k if k else 0.0
    return loss, (pred, target, dice, denom, present, k)


def soft_dice_backward(cache, dloss=1.0):
    """Returns ``(dpred, dtarget)``: for each scored entry,
    ``dpred = −dloss/K · (2·target − dice) / (Σ pred + Σ target)`` and the same with pred and
    target exchanged (K = number of scored entries); 0 on the others. (On an empty target
    channel the loss jumps as soon as it holds anything, so its dtarget there is not a
    derivative; training never needs dtarget: the fixed labels are data.)"""
    pred, target, dice, denom, present, k = cache
    d = _check_dloss(dloss)
    if k == 0:
        return np.zeros_like(pred), np.zeros_like(target)
    w = np.where(present, -d / k / denom, 0.0)[:, :, None, None]     # (N, C, 1, 1)
    dice4 = dice[:, :, None, None]
    dpred = (w * (2.0 * target - dice4)).astype(pred.dtype)          # (N, C, H, W)
    dtarget = (w * (2.0 * pred - dice4)).astype(pred.dtype)
    return dpred, dtarget
