"""The ``Module`` base class: parameters, gradients, composition, state save/load.

A module owns two dicts with the same keys, as numpy-ml's layer base does:

* ``params[name]`` — a float array, updated in place by the optimizer;
* ``grads[name]``  — dL/d(param), same shape, **accumulated** by ``backward`` (so a module used
  twice in one graph gets the sum of both uses) and reset by ``zero_grad``.

``forward(*inputs)`` computes the output and keeps whatever ``backward`` needs on ``self``;
``backward(dout)`` receives dL/d(output), adds into ``grads`` and returns dL/d(input) (a tuple
when the forward took several inputs). Sub-modules are found automatically from attributes
(and lists of modules), so ``named_parameters()`` yields dotted names like ``"enc.0.conv.w"``.
"""
import numpy as np


class Module:
    def __init__(self):
        self.params = {}
        self.grads = {}

    # -- to be provided by subclasses ------------------------------------------------------
    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, *inputs):
        return self.forward(*inputs)

    # -- parameters ------------------------------------------------------------------------
    def add_param(self, name, value):
        """Register a parameter (and its zero gradient)."""
        value = np.ascontiguousarray(value)
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def children(self):
        """Direct sub-modules as (name, module), in attribute order (lists give name.i)."""
        out = []
        for key, val in vars(self).items():
            if isinstance(val, Module):
                out.append((key, val))
            elif isinstance(val, (list, tuple)):
                for i, v in enumerate(val):
                    if isinstance(v, Module):
                        out.append((f"{key}.{i}", v))
        return out

    def modules(self, prefix=""):
        """This module and all descendants as (dotted name, module)."""
        yield prefix, self
        for name, child in self.children():
            yield from child.modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self):
        """All parameters as (dotted name, param array, grad array)."""
        for mname, m in self.modules():
            for pname, p in m.params.items():
                full = f"{mname}.{pname}" if mname else pname
                yield full, p, m.grads[pname]

    def num_parameters(self):
        return int(sum(p.size for _, p, _ in self.named_parameters()))

    def zero_grad(self):
        for _, m in self.modules():
            for g in m.grads.values():
                g.fill(0)

    def astype(self, dtype):
        """Convert every parameter (and gradient) to ``dtype`` in place; returns self.

        Used to run gradient checks of whole models in float64.
        """
        for _, m in self.modules():
            for k in list(m.params):
                m.params[k] = np.ascontiguousarray(m.params[k], dtype=dtype)
                m.grads[k] = np.zeros_like(m.params[k])
        return self

    # -- state -----------------------------------------------------------------------------
    def state_dict(self):
        """Copies of every parameter, keyed by dotted name."""
        return {name: p.copy() for name, p, _ in self.named_parameters()}

    def load_state_dict(self, state):
        """Load parameters by dotted name; every name and shape must match exactly."""
        own = {name: p for name, p, _ in self.named_parameters()}
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state does not match {type(self).__name__}: missing {missing[:5]}"
                             f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{'...' if len(unexpected) > 5 else ''} (was it saved from a "
                             f"model with other options?)")
        for name, p in own.items():
            v = np.asarray(state[name])
            if v.shape != p.shape:
                raise ValueError(f"parameter {name} has shape {v.shape} in the state but "
                                 f"{p.shape} in the model (different widths or kernel size?)")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"parameter {name} in the state contains NaN/Inf")
            p[...] = v
