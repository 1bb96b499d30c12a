# %% Lesson 02 — Gradient checking
"""Lesson 02 — Gradient checking: how we know every hand-written backward is right.

Every layer in regnp has a backward pass written by hand. A single wrong sign or a missing term
would not crash anything: the network would simply train worse, and we might never notice. So
every backward is checked against the one definition of a derivative we cannot get wrong:

    df/dx ≈ (f(x + h) − f(x − h)) / 2h          (central difference, error O(h²))

This lesson shows (1) why the step h and the float type matter, (2) the vector–Jacobian form we
use for layers with millions of outputs, written out and then as the library's tool
(``regnp.gradcheck``, which every later lesson calls), (3) a broken backward being caught, (4) the
full Jacobian of a tiny op, and (5) why the warp must be checked away from integer displacements.
The op under test is lesson 01's warp, the only one taught so far.

Run:  python lessons/02_gradient_checking.py [--quick] [--out DIR]
(or open it as a notebook: every ``# %%`` line starts a cell).
"""

import numpy as np

from regnp.figures import lesson_options, report_numbers, show_or_close, use_script_backend
from regnp.gradcheck import H, check_vjp, full_jacobian, numerical_vjp, rel_error
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
# Step 1 — the step size h. Take f(x) = sin(x), whose derivative cos(x) we know.
# The central difference has truncation error ~ h²·f'''/6 (shrinks with h) and round-off
# error ~ ε·|f|/h (grows as h shrinks, ε = machine epsilon). The best h balances the two:
# about ε^(1/3) — 1e-5 in float64, 5e-3 in float32. That is why every check runs in float64.
# (regnp.gradcheck's default is H = 1e-6 all the same: Step 5 says why.) Round-off at one
# point is luck (a tiny h can land on a lucky error), so we take the median error over 201
# points x in [0.5, 1.5].
print("Step 1 — central-difference error vs step h, f = sin, median over x in [0.5, 1.5]")
hs = np.logspace(-12, -0.5, 60)
xs = np.linspace(0.5, 1.5, 201)
errs = {}
for dt in (np.float32, np.float64):
    x = xs.astype(dt)
    e = []
    for h in hs:
        h = dt(h)
        num = (np.sin(x + h) - np.sin(x - h)) / (dt(2) * h)
        e.append(np.median(np.abs(num - np.cos(x.astype(np.float64))) / np.cos(xs)))
    errs[dt.__name__] = np.array(e)
    best = hs[np.argmin(errs[dt.__name__])]
    print(f"  {dt.__name__}: best h ≈ {best:.1e}, median relative error there "
          f"{errs[dt.__name__].min():.1e}")
best_h64 = hs[np.argmin(errs["float64"])]

# %%
# Step 2 — the vector–Jacobian check, written out. A network layer maps ~10^6 inputs to ~10^6
# outputs: its Jacobian J is far too big to build. But backward never builds it either: given
# an upstream gradient dout it returns Jᵀ·dout. Entry i of that is the derivative of the
# *scalar* <dout, f(x)> along the i-th input — one central difference per checked entry:
#     (Jᵀ dout)[i] ≈ (<dout, f(x + h e_i)> − <dout, f(x − h e_i)>) / 2h.
# Here f is lesson 01's warp on a batch of 2 odd, non-square images (3 channels, 7×5), with
# non-integer displacements (Step 5 says why), and x is either input: the moving image or u.
print("Step 2 — vector–Jacobian check of the warp (float64, batch 2, 3 channels, 7×5)")
mov = rng.standard_normal((2, 3, 7, 5))                 # (N, C, H, W)
u = rng.uniform(-2, 2, (2, 2, 7, 5)) + 0.013            # (N, 2, H, W), off the integers
out, cache = warp_forward(mov, u)
dout = rng.standard_normal(out.shape)
dmov, du = warp_backward(dout, cache)                   # what backward claims: Jᵀ dout


def numerical_vjp_by_hand(f, x, dout, h):
    """(<dout, f(x + h e_i)> − <dout, f(x − h e_i)>) / 2h for every entry i of x."""
    grad = np.zeros(x.size)
    flat = x.reshape(-1)                                # a view: writing flat[i] nudges x
    for i in range(x.size):
        old = flat[i]
        flat[i] = old + h
        plus = np.sum(dout * f())                       # <dout, f(x + h e_i)>
        flat[i] = old - h
        minus = np.sum(dout * f())                      # <dout, f(x − h e_i)>
        flat[i] = old                                   # put x back
        grad[i] = (plus - minus) / (2 * h)
    return grad.reshape(x.shape)


f = lambda: warp_forward(mov, u)[0]
num_u = numerical_vjp_by_hand(f, u, dout, H)
rel_u = np.max(np.abs(num_u - du) / np.maximum(1e-8, np.abs(num_u) + np.abs(du)))
lib_vs_hand = np.abs(numerical_vjp(f, u, dout, h=H)[1] - num_u.ravel()).max()
print(f"  by hand: max relative error of du {rel_u:.1e}")
print(f"  by hand vs regnp.gradcheck.numerical_vjp: max abs diff {lib_vs_hand:.1e}")
# From here on the library's check_vjp does the same: the numerical VJP and the relative error.
warp_errs = {"moving": check_vjp(f, mov, dmov, dout), "u": check_vjp(f, u, du, dout)}
for name, err in warp_errs.items():
    print(f"  check_vjp, d/d{name}: max relative error {err:.1e}")
# The warp is linear in M and, between integer displacements, linear in each entry of u: the
# central difference has no truncation error left, only round-off ~ ε·|f|/h. So here a
# *smaller* h is only worse — 1e-6 is not "more exact" than 1e-5:
steps = (1e-4, 1e-5, 1e-6, 1e-7)
warp_by_h = [check_vjp(f, u, du, dout, h=h) for h in steps]
print("  d/du at h = " + ", ".join(f"{h:.0e}: {e:.1e}" for h, e in zip(steps, warp_by_h)))

# %%
# Step 3 — a broken backward is caught. Suppose a sign slipped at the image border (border
# handling is where backward bugs hide): only the first column of du is wrong, yet the check
# reports a large error at once, because it compares entry by entry.
print("Step 3 — a deliberately wrong backward")
wrong_du = du.copy()
wrong_du[:, :, :, 0] *= -1                             # a wrong sign on one column
err_bad = check_vjp(f, u, wrong_du, dout)
print(f"  relative error of a backward with one wrong column: {err_bad:.1e}  "
      f"(correct: {warp_errs['u']:.0e}, Step 2)")

# %%
# Step 4 — the full Jacobian of a tiny op, compared as a matrix. Checking along one random
# dout could in principle miss an error orthogonal to it; on a tiny input we can afford all
# directions: for dout = e_j backward returns Jᵀ e_j, the j-th row of J (output j's
# derivatives with respect to every input). Stacking those rows builds J from backward.
print("Step 4 — full Jacobian of a 1-channel 5×4 warp")
mov = rng.standard_normal((1, 1, 5, 4))
u = rng.uniform(-1.3, 1.3, (1, 2, 5, 4)) + 0.37        # keep away from integers (Step 5)
J_num = full_jacobian(lambda: warp_forward(mov, u)[0], mov)     # (20, 20) d warped / d moving
_, wcache = warp_forward(mov, u)
J_ana = np.stack([warp_backward(e.reshape(1, 1, 5, 4), wcache)[0].ravel()
                  for e in np.eye(20)], axis=0)        # row j = backward(e_j) = row j of J
jac_err = rel_error(J_num, J_ana)
print(f"  J by finite differences vs J from backward: max relative error {jac_err:.1e}")

# %%
# Step 5 — kinks. Bilinear interpolation is piecewise linear in u: its derivative jumps at
# integer displacements, where the four neighbours change. A central difference straddling
# an integer averages the two one-sided slopes and disagrees with either — not a bug in the
# backward, a property of the function. So warp checks use non-integer displacements.
# Careful: *both* components must avoid integers — u_y = 0 would be a kink in y.
# A network is full of kinks: LeakyReLU bends at 0, and one weight of an early layer moves
# thousands of LeakyReLU inputs at once. The larger h, the likelier one of them crosses 0
# inside ±h. That is why regnp.gradcheck's default step is H = 1e-6 rather than Step 1's
# smooth optimum 1e-5: our layers are piecewise linear, so a smaller h costs only round-off
# (ten times more, Step 2: still well below the 1e-6 a check accepts) and crosses ten times
# fewer kinks. Lesson 07
# measures it on the U-Net. Where round-off matters more than kinks — gradient entries tiny
# next to f — a check passes h=1e-5 explicitly (lesson 05).
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
ax[0].set_ylabel("median relative error of (f(x+h) − f(x−h)) / 2h", fontsize=9)
ax[0].set_title("Step 1: round-off vs truncation")
ax[0].legend()
names = ["warp du\n(correct)", "warp du\n(one wrong column)", "warp du\nu=1.37",
         "warp du\nu=1.0 (kink)"]
vals = [warp_errs["u"], err_bad, results[1.37], results[1.0]]
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
numbers = {"best_h_float64": best_h64, "by_hand_vs_library": lib_vs_hand,
           "by_hand_du_error": rel_u,
           "warp_dmoving_error": warp_errs["moving"], "warp_du_error": warp_errs["u"],
           "warp_du_error_h1e-5": warp_by_h[1],
           "broken_error": err_bad,
           "warp_jacobian_error": jac_err, "warp_smooth_error": results[1.37],
           "kink_error": results[1.0]}
report_numbers(**numbers)
