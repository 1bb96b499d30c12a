"""Helpers shared by the whole-model tests (imported by test files; not a test module)."""
import numpy as np


def smooth_pair(seed=0, shape=(2, 1, 32, 32)):
    """A fixed/moving pair of smooth, textured float64 images (shifted sinusoids + noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[2], :shape[3]] / shape[2]
    F = 0.5 + 0.4 * np.sin(6 * yy + 1) * np.cos(5 * xx) + 0.05 * rng.standard_normal(shape)
    M = 0.5 + 0.4 * np.sin(6 * yy + 1.3) * np.cos(5 * xx - 0.4) + 0.05 * rng.standard_normal(shape)
    return F, M


def liven_heads(model, is_head, seed=5):
    """Move a model's output heads off u ≈ 0: bilinear warping has kinks at integer
    displacements, and a field of exact zeros sits on all of them at once, which finite
    differences cannot check. ``is_head(module_name)`` picks the head convolutions."""
    rng = np.random.default_rng(seed)
    for mname, m in model.modules():
        if is_head(mname):
            m.params["w"][...] = rng.normal(0, 0.2, m.params["w"].shape)
            m.params["b"][...] = rng.uniform(0.2, 0.4, m.params["b"].shape)
    return model
