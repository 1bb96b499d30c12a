"""Figures of image pairs with mask contours (used by ``python -m regnp.data show`` and lesson 03)."""

CONTOUR_COLORS = ["#ff4040", "#40c0ff", "#ffd000", "#60ff60", "#ff60ff", "#ffa040"]


def draw_contours(ax, mask, labels, lw=1.0):
    """Outline each label of a 2-D mask on an axis (one colour per label, in order)."""
    for k, l in enumerate(labels):
        m = (mask == l)
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=CONTOUR_COLORS[k % len(CONTOUR_COLORS)],
                       linewidths=lw)


def pair_grid(ds, indices, title=None):
    """A figure: one row per pair — fixed (own contours), moving (own contours), moving with the
    fixed contours (the misalignment registration must remove). Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    indices = list(indices)
    fig, axes = plt.subplots(len(indices), 3, figsize=(9, 3 * len(indices)), squeeze=False)
    labels = list(ds.report_labels)
    for r, i in enumerate(indices):
        it = ds[i]
        f, m = it["fixed"][0, 0], it["moving"][0, 0]
        fm, mm = it["fixed_mask"][0, 0], it["moving_mask"][0, 0]
        for c, (img, mask, name) in enumerate([(f, fm, "fixed"), (m, mm, "moving"),
                                               (m, fm, "moving + fixed contours")]):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            draw_contours(ax, mask, labels)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name}" + (f"\n{it['ids'][0]}" if c == 0 else ""), fontsize=8)
    names = ", ".join(f"{ds.labels.get(l, l)}" for l in labels)
    fig.suptitle((title or f"{ds.name} ({ds.split})") + f" — contours: {names}", fontsize=9)
    fig.tight_layout()
    return fig
