"""The models the benchmark times, built once and shared by ``bench.py`` (regnp's side) and
``torch_side.py`` (which times regnp and PyTorch in fresh processes): a training step and one-pair
inference at batch N, S×S, on random images."""
import numpy as np


def training_setup(name, N=2, S=256, fuse_joins=True, **options):
    """(model, objective, Adam, F, M) for timing ``name`` at batch N, S×S (random images).
    ``fuse_joins=False``: the U-Net (if any) runs its skip joins as upsample + concatenate +
    conv, as before they were read in place (for A/B timings). Like training, it asks glibc to
    keep freed memory (``regnp.ops._fast.heap``) unless ``REGNP_KEEP_MEMORY=0``."""
    from regnp.models import Objective, build_model
    from regnp.nn.optim import Adam
    from regnp.ops._fast.heap import keep_freed_memory
    keep_freed_memory()             # as regnp.train does (REGNP_KEEP_MEMORY=0: glibc's defaults)
    model = build_model(name, seed=0, **options)
    if hasattr(model, "unet"):
        model.unet.fuse_joins = fuse_joins
    meta = name == "metareg"
    obj = Objective(rho1=10.0 if meta else 0.0, rho2=1e-3 if meta else 0.0)
    opt = Adam(model, lr=1e-4)
    rng = np.random.default_rng(0)
    F = rng.random((N, 1, S, S), dtype=np.float32)
    M = rng.random((N, 1, S, S), dtype=np.float32)
    return model, obj, opt, F, M


def prep_model(name, N=2, S=256, fuse_joins=True, **options):
    """'forward' = inference on one pair; 'forward+backward' = one training step at batch N
    (model forward, loss, backward, Adam update). ``options`` go to ``build_model`` (e.g.
    ``integrate=7``); ``fuse_joins`` as in ``training_setup``."""
    model, obj, opt, F, M = training_setup(name, N, S, fuse_joins, **options)

    def infer():
        model.forward(F[:1], M[:1])

    def step():
        model.zero_grad()
        obj(model, F, M)
        opt.step()
    return infer, step
