"""A procedural 2-D abdominal MRI phantom: the embedded default data of regnp.

``make_phantom(seed)`` draws one axial, T2-weighted, fat-suppressed (T2-SPIR-like) slice through
the upper abdomen, in the usual radiological display (anterior at the top, the patient's right —
the liver — on the image *left*, the spine at the bottom), together with an integer label map that
uses the same values as the CHAOS set, so that code and figures work unchanged on both:

=====  =============================================
value  structure
=====  =============================================
0      background and every unlabelled tissue
1      liver
2      right kidney (image left)
3      left kidney (image right)
4      spleen
=====  =============================================

How it is drawn
---------------
Every structure is a smooth closed curve: a (super)ellipse whose radius is modulated by a few
random Fourier terms, ``r(θ) = 1 + Σ_k a_k cos(kθ + φ_k)``, rotated and placed in normalised
coordinates (``y, x ∈ (-1, 1)``, so any image size works). For each structure we compute an
approximate *signed distance in pixels* ``d`` (positive inside) and paint

    image ← image·(1 − occ) + value·occ,      occ = clip(0.5 + d, 0, 1)      (1-px anti-aliasing)
    labels[d > 0] ← label (or 0 for unlabelled structures painted over an organ)

in a fixed order (abdominal wall, bowel, stomach, liver, spleen, kidneys, vessels, spine), so the
image and the label map can never disagree. Then come texture (smoothed noise, stronger in the
bowel), a smooth multiplicative intensity bias (coil shading), a slight blur (the scanner's point
spread), Rician noise, and the per-volume normalisation used for CHAOS (divide by the 99.5th
percentile, clip to [0, 1]).

Each seed is one "subject": body size and shape, every organ's centre, size, rotation and outline,
the intrahepatic vessel tree, the tissue contrasts, the bias field and the noise all change with
the seed; the same seed always gives the same image (bit for bit, independent of anything drawn
before).
"""
import numpy as np
from scipy import ndimage as ndi

from .._checks import check_positive_int

PHANTOM_LABELS = {1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"}


# --------------------------------------------------------------------------------------------------
# Geometry helpers (all vectorised over the pixel grid)
# --------------------------------------------------------------------------------------------------
class _Grid:
    """Normalised pixel-centre coordinates of an H×W image and the pixels-per-unit scale."""

    def __init__(self, H, W):
        self.H, self.W = H, W
        self.y = ((np.arange(H) + 0.5) / H * 2.0 - 1.0)[:, None]    # (H, 1), top = -1
        self.x = ((np.arange(W) + 0.5) / W * 2.0 - 1.0)[None, :]    # (1, W), left = -1
        self.sy, self.sx = H / 2.0, W / 2.0                          # pixels per normalised unit


def _blob(g, cy, cx, ry, rx, angle=0.0, coeffs=(), power=2.0):
    """Signed distance (pixels, > 0 inside) to a rotated, Fourier-perturbed superellipse.

    Inputs:
    - g: the _Grid.
    - cy, cx: centre (normalised); ry, rx: semi-axes (normalised) before rotation.
    - angle: rotation in radians (counter-clockwise on screen).
    - coeffs: sequence of (k, a_k, phi_k): radius modulation 1 + Σ a_k cos(kθ + φ_k).
    - power: superellipse exponent (2 = ellipse, larger = boxier).
    Returns: (H, W) float64.
    """
    dy = (g.y - cy) * g.sy                                          # (H, 1) pixels
    dx = (g.x - cx) * g.sx                                          # (1, W) pixels
    c, s = np.cos(angle), np.sin(angle)
    # rotate the offset into the blob's frame (screen y points down, so flip the sign of sin)
    v = c * dy + s * dx                                             # (H, W) along the "ry" axis
    w = -s * dy + c * dx                                            # (H, W) along the "rx" axis
    ay, ax = ry * g.sy, rx * g.sx                                   # semi-axes in pixels
    qy, qx = v / ay, w / ax
    if power == 2.0:
        rho = np.sqrt(qy * qy + qx * qx)
    else:
        rho = (np.abs(qy) ** power + np.abs(qx) ** power) ** (1.0 / power)
    boundary = np.ones_like(rho)
    if len(coeffs):
        theta = np.arctan2(qy, qx)
        for k, a, phi in coeffs:
            boundary += a * np.cos(k * theta + phi)
    # radial distance to the boundary, scaled by the local radius in pixels: ≈ signed distance
    r_px = np.sqrt((qy * ay) ** 2 + (qx * ax) ** 2) / np.maximum(rho, 1e-9)
    return (boundary - rho) * r_px


def _segment(g, p0, p1, radius_px):
    """Signed distance (pixels, > 0 inside) to a capsule of the given radius around a segment."""
    py, px = (g.y - p0[0]) * g.sy, (g.x - p0[1]) * g.sx            # (H, 1), (1, W)
    vy, vx = (p1[0] - p0[0]) * g.sy, (p1[1] - p0[1]) * g.sx
    t = np.clip((py * vy + px * vx) / max(vy * vy + vx * vx, 1e-12), 0.0, 1.0)   # (H, W)
    return radius_px - np.sqrt((py - t * vy) ** 2 + (px - t * vx) ** 2)


def _fourier(rng, kmax, amp):
    """Random outline perturbation: (k, a_k, φ_k) for k = 2..kmax, amplitude ~ amp / k."""
    return [(k, rng.normal(0.0, amp / (k - 1)), rng.uniform(0, 2 * np.pi)) for k in range(2, kmax + 1)]


def _occ(d):
    """Anti-aliased occupancy of a signed distance map (1 px ramp)."""
    return np.clip(0.5 + d, 0.0, 1.0)


class _Canvas:
    """Painter's-algorithm image + label map; later structures cover earlier ones."""

    def __init__(self, g):
        self.img = np.zeros((g.H, g.W))
        self.tex = np.zeros((g.H, g.W))        # per-pixel texture amplitude
        self.lab = np.zeros((g.H, g.W), dtype=np.uint8)

    def paint(self, d, value, label=None, texture=0.05):
        occ = _occ(d)
        self.img += (value - self.img) * occ   # value may be a scalar or an (H, W) map
        self.tex += (texture - self.tex) * occ
        if label is not None:
            self.lab[d > 0] = label


# --------------------------------------------------------------------------------------------------
# The phantom
# --------------------------------------------------------------------------------------------------
def make_phantom(seed=0, shape=(256, 256), noise=0.015, bias=0.15, texture=1.0):
    """Draw one phantom subject.

    Inputs:
    - seed: integer; one seed = one subject (shapes, contrasts, vessels, bias, noise).
    - shape: (H, W) of the output, or an int for a square image; each side ≥ 32.
      The anatomy is defined in normalised coordinates, so it scales with the size.
    - noise: standard deviation of the Rician noise, relative to the [0, 1] range (0 disables).
    - bias: strength of the smooth multiplicative intensity bias (0 disables).
    - texture: multiplier of the tissue texture (0 gives piecewise-constant tissues).
    Returns:
    - image: (H, W) float32 in [0, 1].
    - labels: (H, W) uint8, values in {0, 1, 2, 3, 4} (see ``PHANTOM_LABELS``); every label is
      present for every seed.
    """
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
        raise ValueError(f"shape must be an int or a pair (H, W), got {shape!r}")
    H, W = (check_positive_int("shape[0]", shape[0]), check_positive_int("shape[1]", shape[1]))
    if min(H, W) < 32:
        raise ValueError(f"shape {(H, W)} is too small to draw the anatomy; use at least 32×32")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got {type(seed).__name__}")
    for name, v in (("noise", noise), ("bias", bias), ("texture", texture)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number ≥ 0, got {v!r}")
    # one subject is the same arrays every time: drawn once per process and copied out (a
    # grid of phantom jobs, or a test, asks for the same few subjects hundreds of times)
    key = (int(seed), H, W, float(noise), float(bias), float(texture))
    if key not in _DRAWN:
        if len(_DRAWN) >= _DRAWN_MAX:
            _DRAWN.pop(next(iter(_DRAWN)))            # the oldest
        _DRAWN[key] = _draw_phantom(*key)
    img, lab = _DRAWN[key]
    return img.copy(), lab.copy()


_DRAWN = {}            # (seed, H, W, noise, bias, texture) -> (image, labels), insertion order
_DRAWN_MAX = 64        # 64 subjects: 21 MB at 256×256


def _draw_phantom(seed, H, W, noise, bias, texture):
    """The drawing itself (arguments checked by ``make_phantom``)."""
    rng = np.random.default_rng([int(seed), 0x9A7])  # one independent stream per subject
    g = _Grid(H, W)
    px = min(H, W) / 256.0                            # pixel sizes below are for a 256² image
    cv = _Canvas(g)
    U = rng.uniform
    N = rng.normal

    # tissue contrasts (fractions of the final range before normalisation), varied per subject
    gain = U(0.9, 1.1, size=12)
    val = dict(skin=0.36 * gain[0], fat=0.09 * gain[1], muscle=0.20 * gain[2], abdomen=0.27 * gain[3],
               liver=0.42 * gain[4], spleen=0.76 * gain[5], kidney=0.80 * gain[6], sinus=0.40 * gain[7],
               vessel=0.85 * gain[8], bone=0.32 * gain[9], csf=0.90 * gain[10], stomach=0.30 * gain[11])

    # Step 1 — body outline, skin, subcutaneous fat and the muscular wall -------------------------
    by, bx = U(-0.02, 0.06), U(-0.03, 0.03)
    bry, brx = U(0.66, 0.76), U(0.85, 0.95)
    body_coeffs = _fourier(rng, 4, 0.025)
    body = _blob(g, by, bx, bry, brx, U(-0.04, 0.04), body_coeffs, power=U(2.2, 2.7))
    fat_px, wall_px = U(6, 14) * px, U(3, 6) * px
    cv.paint(body, val["skin"], texture=0.05)
    cv.paint(body - 1.5 * px, val["fat"], texture=0.15)
    cv.paint(body - 1.5 * px - fat_px, val["muscle"], texture=0.08)
    inner = body - 1.5 * px - fat_px - wall_px        # > 0 inside the abdominal cavity
    cv.paint(inner, val["abdomen"], texture=0.25)

    def inside(d, margin=1.0):
        """Restrict a structure to the abdominal cavity (minus a margin in pixels)."""
        return np.minimum(d, inner - margin * px)

    # Step 2 — bowel loops: a few soft blobs of mixed intensity (unlabelled) ----------------------
    for _ in range(rng.integers(5, 10)):
        d = _blob(g, U(-0.35, 0.35), U(-0.3, 0.7), U(0.05, 0.12), U(0.05, 0.12), U(0, np.pi),
                  _fourier(rng, 3, 0.1))
        cv.paint(inside(d), U(0.15, 0.55), texture=0.25)

    # Step 3 — stomach (image right, anterior), fluid/air content, unlabelled ---------------------
    st = _blob(g, U(-0.38, -0.2), U(0.25, 0.45), U(0.14, 0.22), U(0.18, 0.26), U(-0.5, 0.5),
               _fourier(rng, 4, 0.08))
    cv.paint(inside(st), val["stomach"] * 1.2, texture=0.1)
    cv.paint(inside(st - 3 * px), val["stomach"] * U(0.4, 1.6), texture=0.3)

    # Step 4 — liver: a large right lobe joined to a tapering left lobe ---------------------------
    ly, lx = U(-0.08, 0.06), U(-0.5, -0.38)
    right_lobe = _blob(g, ly, lx, U(0.38, 0.48), U(0.34, 0.42), U(-0.3, 0.1), _fourier(rng, 5, 0.06))
    left_lobe = _blob(g, ly + U(-0.25, -0.12), lx + U(0.35, 0.5), U(0.12, 0.18), U(0.28, 0.4),
                      U(-0.45, -0.1), _fourier(rng, 4, 0.08))
    liver = inside(np.maximum(right_lobe, left_lobe), margin=2.0)
    hilum = (ly + U(0.0, 0.1), lx + U(0.25, 0.32))

    # Step 5 — kidneys (posterior, either side of the spine) and their positions ------------------
    kid = []
    for side in (-1, 1):  # -1 = image left = patient's right kidney
        ky, kx = U(0.2, 0.34), side * U(0.34, 0.46)
        kry, krx = U(0.16, 0.22), U(0.11, 0.14)
        ang = side * U(0.2, 0.5)
        d = _blob(g, ky, kx, kry, krx, ang, _fourier(rng, 3, 0.05))
        notch = _blob(g, ky, kx - side * krx * 1.05, kry * 0.3, krx * 0.35, ang)  # medial hilum
        kid.append((np.minimum(d, -notch), ky, kx, kry, krx, ang))
    # the liver wraps around the right kidney instead of overlapping it
    liver = np.minimum(liver, -(kid[0][0] + 3 * px))

    # Step 6 — spleen: a crescent along the left posterior wall -----------------------------------
    sy_, sx_ = U(0.0, 0.2), U(0.52, 0.64)
    sang = U(-0.9, -0.5)
    spleen = _blob(g, sy_, sx_, U(0.26, 0.34), U(0.13, 0.17), sang, _fourier(rng, 4, 0.06))
    bite = _blob(g, sy_ + 0.02, sx_ - U(0.17, 0.21), U(0.16, 0.22), U(0.08, 0.11), sang)
    spleen = inside(np.minimum(spleen, -bite), margin=1.5)
    spleen = np.minimum(spleen, -(kid[1][0] + 2 * px))

    cv.paint(liver, val["liver"], label=1, texture=0.07)
    # intrahepatic vessels: a random branching tree from the hilum, kept inside the liver
    segs = []

    def grow(p, ang, length, radius, depth):
        q = (p[0] + length * np.sin(ang), p[1] + length * np.cos(ang))
        segs.append((p, q, radius))
        if depth > 0:
            for turn in (-1, 1):
                if rng.uniform() < 0.85:
                    grow(q, ang + turn * U(0.2, 0.8), length * U(0.5, 0.9), radius * 0.75, depth - 1)

    for _ in range(rng.integers(4, 7)):
        grow(hilum, np.pi + U(-1.6, 1.6), U(0.16, 0.28), U(1.0, 1.6) * px, 3)
    vessels = np.max(np.stack([_segment(g, p, q, r) for p, q, r in segs]), axis=0)
    cv.paint(np.minimum(vessels, liver - 1.0), val["vessel"] * U(0.75, 0.95), label=1, texture=0.05)

    cv.paint(spleen, val["spleen"], label=4, texture=0.05)
    for lab, (d, ky, kx, kry, krx, ang) in zip((2, 3), kid):
        d = inside(d, margin=1.0)
        cv.paint(d, val["kidney"], label=lab, texture=0.05)
        side = -1 if lab == 2 else 1
        sinus = _blob(g, ky, kx - side * krx * 0.25, kry * 0.5, krx * 0.35, ang, _fourier(rng, 3, 0.1))
        cv.paint(np.minimum(sinus, d - 2 * px), val["sinus"], label=lab, texture=0.15)

    # Step 7 — great vessels and the spine (unlabelled; they cut into nothing labelled) ----------
    sp_y, sp_x = U(0.22, 0.3), U(-0.03, 0.03)
    aorta = _blob(g, sp_y - U(0.15, 0.19), sp_x + U(0.04, 0.08), 0.045, 0.035)
    ivc = _blob(g, sp_y - U(0.17, 0.22), sp_x - U(0.12, 0.16), 0.04, 0.05, U(-0.3, 0.3))
    cv.paint(np.minimum(ivc, -(kid[0][0] + 1 * px)), val["vessel"] * 0.75, label=0, texture=0.05)
    cv.paint(aorta, val["fat"] * 1.4, label=0, texture=0.05)
    cv.paint(aorta - 2.0 * px, val["fat"], label=0, texture=0.05)
    for side in (-1, 1):  # paraspinal muscles
        m = _blob(g, sp_y + U(0.16, 0.22), sp_x + side * U(0.14, 0.18), U(0.08, 0.11), U(0.1, 0.13),
                  side * U(0.1, 0.4))
        cv.paint(np.minimum(m, body - 4 * px), val["muscle"], label=0, texture=0.08)
    vert = _blob(g, sp_y, sp_x, U(0.08, 0.1), U(0.1, 0.12), U(-0.1, 0.1), _fourier(rng, 3, 0.04))
    cv.paint(vert, val["bone"] * 0.7, label=0, texture=0.05)
    cv.paint(vert - 2 * px, val["bone"], label=0, texture=0.2)
    canal_y = sp_y + U(0.13, 0.16)
    cv.paint(_blob(g, canal_y, sp_x, 0.045, 0.04), val["csf"], label=0, texture=0.05)
    cv.paint(_blob(g, canal_y, sp_x, 0.022, 0.022), val["muscle"] * 1.3, label=0, texture=0.05)
    spinous = _segment(g, (canal_y + 0.04, sp_x), (canal_y + U(0.12, 0.16), sp_x + U(-0.02, 0.02)),
                       3.5 * px)
    cv.paint(np.minimum(spinous, body - 3 * px), val["bone"] * 0.8, label=0, texture=0.1)

    # Step 8 — texture, bias, blur, noise, normalisation ------------------------------------------
    img = cv.img
    if texture > 0:
        t = ndi.gaussian_filter(rng.standard_normal((H, W)), 1.2 * px)
        t /= t.std() + 1e-12
        coarse = ndi.gaussian_filter(rng.standard_normal((H, W)), 4.0 * px)
        coarse /= coarse.std() + 1e-12
        img = img * (1.0 + texture * cv.tex * (0.6 * t + 0.8 * coarse))
    if bias > 0:
        b = bias * (N() * g.y + N() * g.x + 0.7 * N() * (g.y ** 2 - 0.33) + 0.7 * N() * g.x * g.y
                    + 0.7 * N() * (g.x ** 2 - 0.33))
        img = img * np.exp(b)
    img = ndi.gaussian_filter(img, 0.6 * px)
    if noise > 0:
        n1 = rng.normal(0.0, noise, size=(H, W))
        n2 = rng.normal(0.0, noise, size=(H, W))
        img = np.sqrt((img + n1) ** 2 + n2 ** 2)      # magnitude image: Rician noise
    scale = np.percentile(img, 99.5)
    img = np.clip(img / max(scale, 1e-12), 0.0, 1.0)
    return img.astype(np.float32), cv.lab


def phantom_set(n, shape=(256, 256), first_seed=0, **kwargs):
    """``n`` phantom subjects with seeds ``first_seed .. first_seed + n - 1``.

    Returns:
    - images: (n, 1, H, W) float32 in [0, 1].
    - labels: (n, 1, H, W) uint8 (see ``PHANTOM_LABELS``).
    """
    n = check_positive_int("n", n)
    out = [make_phantom(first_seed + i, shape, **kwargs) for i in range(n)]
    images = np.stack([o[0] for o in out])[:, None]   # (n, 1, H, W)
    labels = np.stack([o[1] for o in out])[:, None]   # (n, 1, H, W)
    return images, labels
