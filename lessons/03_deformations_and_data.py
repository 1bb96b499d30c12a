# %% Lesson 03 — Synthetic deformations and the image sets.
"""Lesson 03 — Synthetic deformations and the image sets.

The paper's liver experiment has no real pairs: it takes one MRI slice and deforms it with random
smooth fields drawn from "a spatial Gaussian mixture model" of "deformation energy" σ = 10
(moderate) or σ = 16 (large). The paper never says what σ measures, so we must choose, and the
choice decides how hard the benchmark is. This lesson builds such a field from scratch, shows
what σ = 10 and σ = 16 do to a real slice (deformed grids and Jacobian maps), compares our
procedural phantom with a real T2 slice, and shows one sample pair from every image set.

Run:  python lessons/03_deformations_and_data.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
The real sets are read from $REGNP_DATA_ROOT or ../shared/data; without them the lesson runs on
the embedded phantom and says so.
"""

import numpy as np

from regnp.data.datasets import load_dataset
from regnp.data.deform import deform, field_stats, foreground_mask, gaussian_mixture_field
from regnp.data.phantom import make_phantom
from regnp.data.plotting import draw_contours
from regnp.figures import (draw_deformed_grid, lesson_options, licensed_output_dir,
                           report_numbers, show_or_close, use_script_backend)
from regnp.metrics import dice, jacobian_determinant

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402

NAME = "03_deformations_and_data"


def _base_slice(quick):
    """A real CHAOS slice (the subject's largest liver+spleen slice) or, failing that, the phantom."""
    try:
        ds = load_dataset("chaos", "test", n_pairs=1, size=128 if quick else None)
        masks = ds.bases.masks[:, 0]                                    # (B, H, W)
        k = int(np.argmax(((masks == 1) | (masks == 4)).sum(axis=(1, 2))))  # largest liver+spleen
        img, lab, _ = ds.bases.get(k)
        return img[0], lab[0], f"CHAOS {ds.base_ids[k]}"
    except FileNotFoundError as e:
        print(f"  (real data not found: {str(e)[:80]}... — using the phantom)")
        img, lab = make_phantom(0, 128 if quick else 256)
        return img, lab, "phantom seed 0"


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
real_dir = licensed_output_dir(out_dir, quick)   # figures with real-set pixels: git-ignored
size = 128 if quick else 256
scale = size / 256                      # σ and widths are quoted for 256×256 images

# %%
# Step 1 — one Gaussian bump --------------------------------------------------------------------
# A bump at centre c with width w carries one displacement vector a:
#     u(p) = a · exp(-|p - c|² / (2 w²)).
# Its steepest slope is |a|/w · e^{-1/2} ≈ 0.61 |a|/w, so the map p + u(p) folds (det ≤ 0)
# once |a| exceeds about 1.65 w: wide bumps can carry large displacements safely.
# (det J is the determinant of φ's 2×2 Jacobian at each pixel, by central differences: the
# factor by which φ scales a small area there. det J ≤ 0 means φ folds — neighbours swap order.)
H = W = size
y, x = np.mgrid[0:H, 0:W].astype(np.float64)
c, w = (H / 2, W / 2), 40.0 * scale
bump = np.exp(-((y - c[0]) ** 2 + (x - c[1]) ** 2) / (2 * w * w))          # (H, W)
print("Step 1 — one bump of width", w, "px")
for amp in (20 * scale, 60 * scale, 80 * scale):
    u1 = np.stack([0 * bump, amp * bump]).astype(np.float32)                # push along x
    print(f"  amplitude {amp:5.1f} px: min det J = {jacobian_determinant(u1).min():+.3f}")

# %%
# Step 2 — a mixture, scaled so that its RMS over the body is σ, built from scratch ------------
# K bumps (4..8) with random centres inside the body, widths 28..60 px and N(0, I) vectors,
# summed, then multiplied by one number s so that sqrt(mean_body |u|²) = σ. Draws whose
# Jacobian determinant falls below 0.1 anywhere are rejected and redrawn. Here it is, line by
# line, in the order regnp.data.deform.gaussian_mixture_field draws its random numbers (so the
# same seed gives the same field); the library then does the σ = 10 and σ = 16 fields.
def mixture_by_hand(shape, sigma, seed, body, widths, n_bumps=(4, 8), min_det=0.1):
    """A fold-free Gaussian-mixture field (2, H, W), float32, with RMS σ px over the body."""
    rng = np.random.default_rng(seed)
    H, W = shape
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    inside = np.flatnonzero(body)                                   # body pixels, row-major
    while True:
        k = int(rng.integers(n_bumps[0], n_bumps[1] + 1))           # how many bumps
        at = inside[rng.integers(inside.size, size=k)]              # a body pixel for each ...
        centres = np.stack([at // W, at % W], 1) + rng.uniform(-0.5, 0.5, (k, 2))  # ... jittered
        w = rng.uniform(widths[0], widths[1], size=k)               # (k,) widths, px
        a = rng.normal(size=(k, 2))                                 # (k, 2) vectors (a_y, a_x)
        u = np.zeros((2, H, W))
        for (cy, cx), wk, ak in zip(centres, w, a):
            u += ak[:, None, None] * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * wk * wk))
        rms = np.sqrt((u[0] ** 2 + u[1] ** 2)[body].mean())          # RMS over the body
        u = (u * (sigma / rms)).astype(np.float32)                  # now it is exactly σ
        if jacobian_determinant(u).min() > min_det:                 # no fold: keep it
            return u


img, lab, where = _base_slice(quick)
body = foreground_mask(img)
print(f"\nStep 2 — Gaussian mixtures on {where} (body = {body.mean():.0%} of the image)")
u_hand = mixture_by_hand(img.shape, 10 * scale, 7, body, (28 * scale, 60 * scale))
u_lib = gaussian_mixture_field(img.shape, 10 * scale, seed=7, region=body,
                               widths=(28 * scale, 60 * scale))
mixture_diff = float(np.abs(u_hand - u_lib).max())
print(f"  σ = 10 by hand vs gaussian_mixture_field: max abs diff {mixture_diff:.1e} px")
# (same seed for both: the σ = 16 field is the σ = 10 one multiplied by 1.6)
fields, numbers = {}, {"scale": scale, "mixture_by_hand_vs_library": mixture_diff}
for sig in (10, 16):
    u = gaussian_mixture_field(img.shape, sig * scale, seed=7, region=body,
                               widths=(28 * scale, 60 * scale))
    st = field_stats(u, body)
    fields[sig] = u
    numbers[f"rms_sigma{sig}"] = st["rms_disp"]
    numbers[f"min_det_sigma{sig}"] = st["min_det"]
    print(f"  σ = {sig}: RMS over body {st['rms_disp']:.2f} px (σ·{scale:g}), mean {st['mean_disp']:.2f} px, "
          f"max {st['max_disp']:.1f} px, min det {st['min_det']:.2f}, folded "
          f"{st['pct_folded']:.2f} %")

# %%
# A figure of numbers (no pixels of a licensed image, so it may be committed): one bump's
# fold threshold, and how the σ = 10 and σ = 16 displacements spread over the body.
ratios = np.linspace(0, 2.5, 26 if quick else 101)                  # |a| / w
min_dets = [jacobian_determinant(np.stack([0 * bump, r * w * bump]).astype(np.float32)).min()
            for r in ratios]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
ax[0].plot(ratios, min_dets)
ax[0].axhline(0, color="k", lw=0.8)
ax[0].axvline(np.exp(0.5), color="gray", ls=":", label="|a|/w = √e ≈ 1.65")
ax[0].set_xlabel("bump amplitude / width, |a| / w")
ax[0].set_ylabel("min det J of id + u")
ax[0].set_title("Step 1: one bump folds beyond |a| ≈ 1.65 w")
ax[0].legend(fontsize=8)
for sig in (10, 16):
    mag = np.hypot(fields[sig][0], fields[sig][1])[body] / scale       # px at 256×256
    ax[1].hist(mag, bins=60, histtype="step", density=True, label=f"σ = {sig}")
    ax[1].axvline(sig, ls=":", color="C0" if sig == 10 else "C1")
ax[1].set_xlabel("|u| over the body (px at 256×256); dotted: σ = the RMS")
ax[1].set_ylabel("density")
ax[1].set_title("Step 2: the displacements behind σ")
ax[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(out_dir / f"{NAME}.png", dpi=100)
show_or_close(fig)

# %%
# Step 3 — what σ = 10 and σ = 16 do: deformed grid, |u|, Jacobian determinant ----------------
# moving = base∘(id + u): each pixel p of the moving image shows the base at p + u(p) (lesson
# 01's warp; labels by nearest neighbour). How far apart are base and moving? Dice per organ,
# 2|A ∩ B| / (|A| + |B|) of its two masks (100 % = identical), averaged over liver and spleen:
# the score every later lesson reports.
print("\nStep 3 — deformed grids, |u| and det J for σ = 10 and 16")
fig, axes = plt.subplots(2, 4, figsize=(15, 7.6))
for r, sig in enumerate((10, 16)):
    u = fields[sig]
    moving, moving_lab = deform(img[None, None], lab[None, None], u[None])
    d = dice(lab, moving_lab[0, 0], labels=[1, 4])
    det = jacobian_determinant(u)
    axes[r, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
    draw_deformed_grid(axes[r, 0], u, step=max(4, size // 16), color="yellow")
    axes[r, 0].set_title(f"σ = {sig}: base + grid of φ = id + u", fontsize=9)
    axes[r, 1].imshow(moving[0, 0], cmap="gray", vmin=0, vmax=1)
    draw_contours(axes[r, 1], lab, [1, 4])
    axes[r, 1].set_title(f"moving, base contours (Dice {100 * d['mean']:.0f} %)", fontsize=9)
    im = axes[r, 2].imshow(np.hypot(u[0], u[1]), cmap="magma")
    plt.colorbar(im, ax=axes[r, 2], fraction=0.046)
    axes[r, 2].set_title("|u| (pixels)", fontsize=9)
    im = axes[r, 3].imshow(det, cmap="RdBu_r", vmin=0, vmax=2)
    plt.colorbar(im, ax=axes[r, 3], fraction=0.046)
    axes[r, 3].set_title(f"det J_φ (min {det.min():.2f})", fontsize=9)
    print(f"  σ = {sig}: liver+spleen Dice before registration {100 * d['mean']:.1f} % "
          f"(liver {100 * d['per_label'][1]:.1f}, spleen {100 * d['per_label'][4]:.1f})")
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle(f"Gaussian-mixture deformations on {where}", fontsize=10)
fig.tight_layout()
# a real slice's pixels stay on this machine (git-ignored); the phantom's may be committed
fig.savefig((out_dir if where.startswith("phantom") else real_dir) / f"{NAME}_sigma.png",
            dpi=90)
show_or_close(fig)

# %%
# Step 4 — the embedded phantom next to a real T2 slice -------------------------------------
# Same display convention (liver on the image left, spine at the bottom), same label values
# (1 liver, 2 right kidney, 3 left kidney, 4 spleen), same [0, 1] intensity normalisation.
n_ph = 2 if quick else 3
fig, axes = plt.subplots(2, n_ph + 1, figsize=(3.6 * (n_ph + 1), 7.2))
axes[0, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
axes[0, 0].set_title(where, fontsize=9)
axes[1, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
draw_contours(axes[1, 0], lab, [1, 2, 3, 4])
print("\nStep 4 — phantom vs real: mean intensity per organ (liver, R kidney, L kidney, spleen)")
print("  " + where + ": " + ", ".join(f"{img[lab == l].mean():.2f}" if (lab == l).any() else "-"
                                      for l in (1, 2, 3, 4)))
for k in range(n_ph):
    p_img, p_lab = make_phantom(k, size)
    axes[0, k + 1].imshow(p_img, cmap="gray", vmin=0, vmax=1)
    axes[0, k + 1].set_title(f"phantom seed {k}", fontsize=9)
    axes[1, k + 1].imshow(p_img, cmap="gray", vmin=0, vmax=1)
    draw_contours(axes[1, k + 1], p_lab, [1, 2, 3, 4])
    print(f"  phantom seed {k}: " + ", ".join(f"{p_img[p_lab == l].mean():.2f}" for l in (1, 2, 3, 4)))
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.suptitle("real T2-SPIR slice (left) and procedural phantoms; bottom: label contours",
             fontsize=10)
fig.tight_layout()
fig.savefig(real_dir / f"{NAME}_phantom_vs_real.png", dpi=90)
show_or_close(fig)

# %%
# Step 5 — one sample pair from every set ------------------------------------------------------
# phantom and chaos: synthetic pairs (σ = 16); acdc: a real ES (fixed) / ED (moving) pair;
# jsrt: two different patients, each normalised to its own 1st–99th percentile range.
print("\nStep 5 — one test pair per set (Dice before registration on the scored labels)")
rows = []
for name in ("phantom", "chaos", "acdc", "jsrt"):
    try:
        kw = dict(n_subjects=2) if name == "phantom" else {}
        ds = load_dataset(name, "test", sigma=16, size=size if quick else None,
                          n_pairs=2 if name != "acdc" else None, **kw)
    except FileNotFoundError:
        print(f"  {name}: not available (no data root) — skipped")
        continue
    it = ds[0]
    d = dice(it["fixed_mask"][0, 0], it["moving_mask"][0, 0], labels=list(ds.eval_labels))
    print(f"  {name:8s} {it['ids'][0]:32s} Dice {100 * d['mean']:.1f} % on "
          f"{[ds.labels[l] for l in ds.eval_labels]}")
    rows.append((name, ds, it))
fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
for r, (name, ds, it) in enumerate(rows):
    labels = list(ds.report_labels)
    for c, (im, m, t) in enumerate([(it["fixed"], it["fixed_mask"], "fixed"),
                                    (it["moving"], it["moving_mask"], "moving"),
                                    (it["moving"], it["fixed_mask"], "moving + fixed contours")]):
        axes[r, c].imshow(im[0, 0], cmap="gray", vmin=0, vmax=1)
        draw_contours(axes[r, c], m[0, 0], labels)
        axes[r, c].set_title(f"{name}: {t}", fontsize=9)
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
fig.tight_layout()
fig.savefig(real_dir / f"{NAME}_sets.png", dpi=90)
show_or_close(fig)
print(f"\nfigures saved in {real_dir} (they show licensed images: git-ignored, never "
      f"commit them)")
report_numbers(**numbers)
