import numpy as np
import pytest

from regnp.nn.module import Module
from regnp.nn.optim import Adam


class Quadratic(Module):
    """L(p) = 0.5 * sum(a * (p - c)^2): gradient a * (p - c)."""

    def __init__(self, p0, a, c):
        super().__init__()
        self.add_param("p", np.array(p0, dtype=np.float64))
        self.a = np.asarray(a, dtype=np.float64)
        self.c = np.asarray(c, dtype=np.float64)

    def loss_and_grad(self):
        d = self.params["p"] - self.c
        self.grads["p"] += self.a * d
        return 0.5 * float(np.sum(self.a * d * d))


def test_adam_first_steps_match_hand_computation():
    m = Quadratic([1.0, -2.0], [1.0, 4.0], [0.0, 0.0])
    opt = Adam(m, lr=0.1)
    # step 1: g = (1, -8); m̂ = g, v̂ = g², so the step is lr * sign(g) (up to eps)
    m.loss_and_grad()
    opt.step()
    np.testing.assert_allclose(m.params["p"], [0.9, -1.9], atol=1e-7)
    # step 2, by the formulas
    opt.zero_grad()
    g1 = np.array([1.0, -8.0])
    p1 = m.params["p"].copy()
    m.loss_and_grad()
    g2 = m.grads["p"].copy()
    np.testing.assert_allclose(g2, [0.9, 4 * -1.9], atol=1e-7)
    opt.step()
    mm = 0.9 * (0.1 * g1) + 0.1 * g2
    vv = 0.999 * (0.001 * g1 ** 2) + 0.001 * g2 ** 2
    expect = p1 - 0.1 * (mm / (1 - 0.9 ** 2)) / (np.sqrt(vv / (1 - 0.999 ** 2)) + 1e-8)
    np.testing.assert_allclose(m.params["p"], expect, rtol=1e-12)


def test_adam_minimises_ill_conditioned_quadratic():
    m = Quadratic([3.0, -2.0, 5.0], [1.0, 100.0, 0.01], [1.0, 2.0, -1.0])
    opt = Adam(m, lr=0.05)
    first = m.loss_and_grad()
    for _ in range(3000):
        opt.zero_grad()
        m.loss_and_grad()
        opt.step()
    np.testing.assert_allclose(m.params["p"], [1.0, 2.0, -1.0], atol=1e-2)
    assert m.loss_and_grad() < 1e-4 * first


def test_adam_state_roundtrip_resumes_exactly():
    def run(steps, resume_at=None):
        m = Quadratic([3.0, -2.0], [1.0, 10.0], [0.5, 0.5])
        opt = Adam(m, lr=0.01)
        for s in range(steps):
            if s == resume_at:
                ps, st = m.state_dict(), opt.state_dict()
                m = Quadratic([0.0, 0.0], [1.0, 10.0], [0.5, 0.5])
                opt = Adam(m, lr=0.01)
                m.load_state_dict(ps)
                opt.load_state_dict(st)
            opt.zero_grad()
            m.loss_and_grad()
            opt.step()
        return m.params["p"]

    np.testing.assert_array_equal(run(50), run(50, resume_at=17))


def test_adam_rejects_bad_settings_and_state():
    m = Quadratic([1.0], [1.0], [0.0])
    with pytest.raises(ValueError, match="learning rate"):
        Adam(m, lr=0.0)
    opt = Adam(m)
    with pytest.raises(ValueError, match="incomplete"):
        opt.load_state_dict({"t": 3})
