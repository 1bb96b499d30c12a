"""Helpers shared by the whole-model tests (imported by test files; not a test module)."""
import numpy as np

from regnp.gradcheck import border_indices, check_vjp


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


def check_model_gradients(model, loss, per_array=8, select=None, seed=1, h=1e-5):
    """Central-difference check of every parameter array of ``model`` against its gradients.

    Inputs:
    - model: a float64 Module whose ``grads`` hold dL/dθ for the scalar ``loss()`` (the caller
      has run one forward + backward after ``zero_grad``). They are copied first: each numerical
      evaluation below may run the backward again and accumulate into them.
    - loss: callable, no arguments, returning L for the current parameters.
    - per_array: entries checked per array (all of them for smaller arrays): the corners of the
      array first (a conv weight's border taps), then random ones (``border_indices``).
    - select: optional predicate on the parameter name (None: every array).
    - h: the step. 1e-5 (about ε^(1/3) for an O(1) loss) rather than 1e-6: with 8 entries per
      array some gradients are as small as 1e-6, and at h = 1e-6 the round-off of the loss
      (~1e-16 / h = 1e-10 absolute) alone is 1e-5 of them (measured: FCN-SS/NCC ups.0.w, an
      entry of -3.4e-6 gives 1.3e-5 at h = 1e-6, 1.5e-6 at 1e-5, 7e-8 at 1e-4).
    Returns: {parameter name: max relative error over its checked entries}.
    """
    rng = np.random.default_rng(seed)
    analytic = {name: g.copy() for name, _, g in model.named_parameters()}
    one = np.array(1.0)
    errors = {}
    for name, p, _ in model.named_parameters():
        if select is not None and not select(name):
            continue
        idx = border_indices(p.shape, per_array, rng)
        errors[name] = check_vjp(lambda: np.array(loss()), p, analytic[name], one, h=h, idx=idx)
    return errors
