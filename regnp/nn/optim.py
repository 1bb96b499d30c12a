"""Adam (Kingma & Ba, 2015) over a Module's parameters, with bias correction.

For each parameter p with gradient g, at step t = 1, 2, ...::

    m ← β1 m + (1 − β1) g            # running mean of gradients
    v ← β2 v + (1 − β2) g²           # running mean of squared gradients
    m̂ = m / (1 − β1^t)               # bias correction: m and v start at 0, so early averages
    v̂ = v / (1 − β2^t)               #   are too small by exactly these factors
    p ← p − lr · m̂ / (√v̂ + ε)

The update is written in place into the module's parameter arrays, so layers that keep views of
their weights see the new values. The optimizer state (t, m, v) is saved with checkpoints so a
resumed run continues exactly.
"""
import numpy as np


class Adam:
    def __init__(self, module, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.module = module
        self.lr = float(lr)
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.t = 0
        self.m = {}
        self.v = {}
        for name, p, _ in module.named_parameters():
            self.m[name] = np.zeros_like(p)
            self.v[name] = np.zeros_like(p)

    def step(self):
        """One update of every parameter from its accumulated gradient."""
        self.t += 1
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        for name, p, g in self.module.named_parameters():
            if self.weight_decay:
                g = g + self.weight_decay * p
            m, v = self.m[name], self.v[name]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            # p -= lr * (m / c1) / (sqrt(v / c2) + eps), without temporaries the size of p twice
            denom = np.sqrt(v / c2)
            denom += self.eps
            p -= (self.lr / c1) * m / denom

    def zero_grad(self):
        self.module.zero_grad()

    def state_dict(self):
        """Optimizer state as flat arrays: ``t``, ``m.<param>``, ``v.<param>``."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for k in self.m:
            out[f"m.{k}"] = self.m[k].copy()
            out[f"v.{k}"] = self.v[k].copy()
        return out

    def load_state_dict(self, state):
        missing = [k for k in self.m if f"m.{k}" not in state or f"v.{k}" not in state]
        if "t" not in state or missing:
            raise ValueError(f"optimizer state is incomplete (missing {missing[:3] or ['t']}); "
                             f"was the checkpoint written by another model?")
        self.t = int(state["t"])
        for k in self.m:
            for buf, key in ((self.m[k], f"m.{k}"), (self.v[k], f"v.{k}")):
                val = np.asarray(state[key])
                if val.shape != buf.shape:
                    raise ValueError(f"optimizer state {key} has shape {val.shape}, "
                                     f"expected {buf.shape}")
                buf[...] = val
