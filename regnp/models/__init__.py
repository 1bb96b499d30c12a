"""Registration models: Meta-Reg (the paper's), VoxelMorph-1/2, the ablated network, DIRNet,
FCN-SS and the fixed-RKHS network. ``build_model(name, **options)`` makes any of them;
``model.options`` rebuilds the same architecture from a checkpoint."""
from .base import RegistrationModel
from .dirnet import DIRNet
from .fcnss import FCNSS
from .rkhs_net import RKHSNet
from .metareg import MetaReg
from .objective import Objective
from .voxelmorph import VoxelMorph


def _ablated(filter=True, **kw):
    """Table 5's ablation: Meta-Reg's architecture without the meta-regularization term M.
    Keeps the 13×13 layer as an unconstrained trainable conv (``normalize="none"``; the caller
    sets ρ1 = ρ2 = 0), or drops it with ``filter=False``."""
    kw.setdefault("normalize", "none")
    return MetaReg(filter=filter, name="ablated", **kw)


def _builders():
    b = {
        "metareg": lambda **kw: MetaReg(**kw),
        "vm1": lambda **kw: VoxelMorph(variant=1, **{k: v for k, v in kw.items() if k != "variant"}),
        "vm2": lambda **kw: VoxelMorph(variant=2, **{k: v for k, v in kw.items() if k != "variant"}),
        "ablated": lambda **kw: _ablated(**{k: v for k, v in kw.items() if k != "name"}),
    }
    b["dirnet"] = lambda **kw: DIRNet(**kw)
    b["fcnss"] = lambda **kw: FCNSS(**kw)
    b["rkhs"] = lambda **kw: RKHSNet(**kw)
    return b


MODEL_NAMES = ("metareg", "vm1", "vm2", "ablated", "dirnet", "fcnss", "rkhs")


def build_model(name, **options):
    """Make a model by name (``metareg``, ``vm1``, ``vm2``, ``ablated``, ``dirnet``, ``fcnss``,
    ``rkhs``) with architecture options (widths, kernel size, ...) and ``seed``/``dtype``."""
    builders = _builders()
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(builders))}")
    return builders[name](**options)


__all__ = ["RegistrationModel", "MetaReg", "VoxelMorph", "DIRNet", "FCNSS", "RKHSNet", "Objective", "build_model", "MODEL_NAMES"]
