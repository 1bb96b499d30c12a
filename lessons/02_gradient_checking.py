# %% Lesson 02 — Gradient checking
"""Lesson 02 — Gradient checking: how we know every hand-written backward is right.

Every layer in regnp has a backward pass written by hand. A single wrong sign or a missing term
would not crash anything: the network would simply train worse, and we might never notice. So
every backward is checked against the one definition of a derivative we cannot get wrong:

    df/dx ≈ (f(x + h) − f(x − h)) / 2h          (central difference, error O(h²))

This lesson shows (1) why the step h and the float type matter, (2) the vector–Jacobian form we
use for layers with millions of outputs, (3) a broken backward being caught, (4) the full Jacobian
of a tiny op, and (5) why the warp must be checked away from integer displacements.

Run:  python lessons/02_gradient_checking.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""

import numpy as np

from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.gradcheck import check_vjp, full_jacobian, rel_error
from regnp.ops.conv import conv2d_backward, conv2d_forward
from regnp.ops.warp import warp_backward, warp_forward

use_script_backend()
import matplotlib.pyplot as plt  # noqa: E402


# %% Options
# As a script: --quick (the shortened run the tests use) and --out DIR (the figure folder). In a
# notebook the kernel's own arguments are ignored (a full run into figures/); set quick = True
# here for a short one.
quick, out_dir = lesson_options(__doc__.splitlines()[0])
rng = np.random.default_rng(0)

# %%
# Step 1 — the step size h. Take f(x) = sin(x) at x = 1, whose derivative cos(1) we know.
# The central difference has truncation error ~ h²·f'''/6 (shrinks with h) and round-off
# error ~ ε·|f|/h (grows as h shrinks, ε = machine epsilon). The best h balances the two:
# about ε^(1/3) — 1e-5 in float64, 5e-3 in float32. That is why every check runs in float64.
print("Step 1 — central-difference error vs step h, f = sin at x = 1")
hs = np.logspace(-12, -0.5, 60)
errs = {}
for dt in (np.float32, np.float64):
    x = dt(1.0)
    e = []
    for h in hs:
        h = dt(h)
        num = (np.sin(x + h) - np.sin(x - h)) / (dt(2) * h)
        e.append(abs(float(num) - np.cos(1.0)) / np.cos(1.0))
    errs[dt.__name__] = np.array(e)
    best = hs[np.nanargmin(errs[dt.__name__])]
    print(f"  {dt.__name__}: best h ≈ {best:.1e}, relative error there "
          f"{np.nanmin(errs[dt.__name__]):.1e}")

# %%
# Step 2 — the vector–Jacobian check. A conv layer maps ~10^6 inputs to ~10^6 outputs: its
# Jacobian is far too big to build. But backward never builds it either: given an upstream
# gradient dout it returns Jᵀ·dout. Entry i of that is the derivative of the *scalar*
# <dout, f(x)> along the i-th input — one central difference per checked entry.
print("Step 2 — vector–Jacobian check of conv2d (float64, odd non-square sizes, stride 2)")
x = rng.standard_normal((2, 3, 9, 7))                  # (N, Cin, H, W)
w = rng.standard_normal((4, 3, 3, 3))                  # (Cout, Cin, k, k)
b = rng.standard_normal(4)
out, cache = conv2d_forward(x, w, b, stride=2, pad=1)
dout = rng.standard_normal(out.shape)
dx, dw, db = conv2d_backward(dout, cache)
# h = 1e-5, the float64 optimum of Step 1: at h = 1e-6 the smallest entries of dx already
# sit at the round-off floor (their relative error reads 2e-7 instead of 1e-8).
conv_errs = {}
for name, arr, grad in (("x", x, dx), ("w", w, dw), ("b", b, db)):
    err = check_vjp(lambda: conv2d_forward(x, w, b, stride=2, pad=1)[0], arr, grad, dout,
                    h=1e-5)
    conv_errs[name] = err
    print(f"  d/d{name}: max relative error {err:.1e}")

# %%
# Step 3 — a broken backward is caught. Suppose a sign slipped at the image border (border
# handling is where backward bugs hide): only the first column of dx is wrong, yet the check
# reports a large error at once, because it compares entry by entry.
print("Step 3 — a deliberately wrong backward")
wrong_dx = dx.copy()
wrong_dx[:, :, :, 0] *= -1                             # a wrong sign on one column
err_bad = check_vjp(lambda: conv2d_forward(x, w, b, stride=2, pad=1)[0], x, wrong_dx, dout,
                    h=1e-5)
print(f"  relative error of a backward with one wrong column: {err_bad:.1e}  (correct: ~1e-8, Step 2)")

# %%
# Step 4 — the full Jacobian of a tiny op, compared as a matrix. Checking along one random
# dout could in principle miss an error orthogonal to it; on a tiny input we can afford all
# directions: row j of Jᵀ is what backward returns for dout = e_j.
print("Step 4 — full Jacobian of a 1-channel 5×4 warp")
mov = rng.standard_normal((1, 1, 5, 4))
u = rng.uniform(-1.3, 1.3, (1, 2, 5, 4)) + 0.37        # keep away from integers (Step 5)
J_num = full_jacobian(lambda: warp_forward(mov, u)[0], mov)     # (20, 20) d warped / d moving
_, wcache = warp_forward(mov, u)
J_ana = np.stack([warp_backward(e.reshape(1, 1, 5, 4), wcache)[0].ravel()
                  for e in np.eye(20)], axis=0)        # rows = dout basis vectors → Jᵀ rows
jac_err = rel_error(J_num, J_ana)
print(f"  ‖J_num − J_backwardᵀ‖ relative error: {jac_err:.1e}")

# %%
# Step 5 — kinks. Bilinear interpolation is piecewise linear in u: its derivative jumps at
# integer displacements, where the four neighbours change. A central difference straddling
# an integer averages the two one-sided slopes and disagrees with either — not a bug in the
# backward, a property of the function. So warp checks use non-integer displacements.
# Careful: *both* components must avoid integers — u_y = 0 would be a kink in y.
print("Step 5 — warp gradient at u_x = 1.0 (a kink) vs u_x = 1.37, u_y = 0.21 in both")
img = rng.standard_normal((1, 1, 6, 6))
results = {}
for val in (1.0, 1.37):
    uu = np.zeros((1, 2, 6, 6))
    uu[:, 0] = 0.21
    uu[:, 1] = val
    o, c = warp_forward(img, uu)
    d = rng.standard_normal(o.shape)
    _, du = warp_backward(d, c)
    results[val] = check_vjp(lambda: warp_forward(img, uu)[0], uu, du, d, h=1e-4)
    print(f"  u_x = {val}: relative error {results[val]:.1e}")

fig, ax = plt.subplots(1, 2, figsize=(10, 4))
for k, e in errs.items():
    ax[0].loglog(hs, np.maximum(e, 1e-17), label=k)
ax[0].set_xlabel("step h")
ax[0].set_ylabel("relative error of (f(x+h) − f(x−h)) / 2h")
ax[0].set_title("Step 1: round-off vs truncation")
ax[0].legend()
names = ["conv dx\n(correct)", "conv dx\n(one wrong column)", "warp du\nu=1.37", "warp du\nu=1.0 (kink)"]
good = conv_errs["x"]
vals = [good, err_bad, results[1.37], results[1.0]]
ax[1].bar(names, np.maximum(vals, 1e-16), color=["tab:green", "tab:red", "tab:green", "tab:orange"])
ax[1].set_yscale("log")
ax[1].tick_params(axis="x", labelsize=8)
ax[1].axhline(1e-6, color="k", ls="--", lw=1)
ax[1].set_ylabel("max relative error")
ax[1].set_title("Steps 2–5: what the checks report")
fig.tight_layout()
path = out_dir / "02_gradient_checking.png"
fig.savefig(path, dpi=110)
show_or_close(fig)
print(f"saved {path}")
numbers = {"conv_dx_error": conv_errs["x"], "conv_dw_error": conv_errs["w"],
           "conv_db_error": conv_errs["b"], "broken_error": err_bad,
           "warp_jacobian_error": jac_err, "warp_smooth_error": results[1.37],
           "kink_error": results[1.0]}
report_numbers(**numbers)
