"""Every lesson runs in quick mode, writes its figures, and its key numbers are what it teaches.

Each lesson prints one line ``RESULT {json}`` (``regnp.figures.report_numbers``); ``EXPECT`` below
states, per lesson, the bound each number must meet in quick mode."""
import operator
import re
import sys
import types

import pytest

from regnp.figures import lesson_files, parse_numbers, run_lesson

LT, GT = operator.lt, operator.gt
EXPECT = {
    "01": {"by_hand_vs_warp": (LT, 1e-12), "reference_vs_fast": (LT, 1e-12),
           "gradcheck_moving": (LT, 1e-6), "gradcheck_u": (LT, 1e-6),
           "gradient_vs_reference": (LT, 1e-12),
           "du_y": (GT, 9.999999), "du_x": (GT, 0.999999)},   # the linear image's slopes (10, 1)
    "02": {"by_hand_vs_library": (LT, 1e-12), "by_hand_du_error": (LT, 1e-6),
           "warp_dmoving_error": (LT, 1e-6), "warp_du_error": (LT, 1e-6),
           "warp_jacobian_error": (LT, 1e-7), "warp_smooth_error": (LT, 1e-7),
           "broken_error": (GT, 1e-2), "kink_error": (GT, 1e-2)},
    "03": {"mixture_by_hand_vs_library": (LT, 1e-6),
           "min_det_sigma10": (GT, 0.1), "min_det_sigma16": (GT, 0.1)},
    "04": {"fft_by_hand_vs_library": (LT, 1e-10), "dense_kron_fft_agreement": (LT, 1e-10),
           "fft_vs_loop": (LT, 1e-10),
           "kron_factorisation": (LT, 1e-12), "block_toeplitz": (LT, 1e-12),
           "min_eigenvalue": (GT, -1e-10)},
    "05": {"gradient_by_hand_vs_library": (LT, 1e-10),
           "objective_by_hand_vs_library": (LT, 1e-12),
           "gradcheck_rkhs": (LT, 1e-5), "gradcheck_diffusion": (LT, 1e-5),
           "dice_after": (GT, 0.9), "pct_positive_jacobian": (GT, 99.0)},
    "06": {"im2col_vs_loop": (LT, 1e-10), "forward_vs_loop": (LT, 1e-10),
           "backward_vs_loop": (LT, 1e-10),
           "dx_as_conv": (LT, 1e-10), "dx_as_conv_transpose": (LT, 1e-10),
           "dw_as_correlation": (LT, 1e-10)},
    "07": {"fused_vs_unfused": (LT, 1e-6), "max_gradcheck_error": (LT, 1e-6),
           "skip_by_hand_vs_library": (LT, 1e-6), "without_skip_sums": (GT, 0.1),
           "skip_share_full_res": (GT, 0.01)},
    "08": {"objective_vs_loop_grad": (LT, 1e-6), "objective_vs_loop_loss": (LT, 1e-9),
           "dice_before": (GT, 50)},         # that the loop learns: _check_relations
    "09": {"reduced_vs_window": (LT, 1e-12), "wendland_compact_truncation": (LT, 1e-12),
           "gaussian4_matrix_eig_min": (GT, -1e-12), "gaussian4_symbol_min": (LT, -1e-3),
           "wendland6_symbol_min": (GT, 0)},
    "10": {"layer_forward_vs_hand": (LT, 1e-12), "layer_backward_vs_hand": (LT, 1e-10),
           "gradcheck_dg": (LT, 1e-6), "gradcheck_dK": (LT, 1e-6),
           "penalty_vs_hand": (LT, 1e-10), "gradcheck_penalty": (LT, 1e-7)},
    "11": {"by_hand_vs_op": (LT, 1e-12), "first_step_px": (LT, 0.5),
           "disp_min_det": (LT, 0.0), "disp_pct_folded": (GT, 1.0),
           "exp_min_det": (GT, 0.5), "exp_pct_folded": (LT, 1e-9),
           "pct_positive_exp_lam0.04": (GT, 99.9)},
}


def _check_relations(prefix, got):
    """Relations between numbers (beyond fixed bounds)."""
    if prefix == "02":        # sin's best step is near ε^(1/3); the linear warp only loses
        assert 1e-6 < got["best_h_float64"] < 1e-4, got       # accuracy as h shrinks
        assert got["warp_du_error_h1e-5"] < got["warp_du_error"], got
    if prefix == "08":        # the loop learns: its loss falls and held-out Dice rises clearly
        assert got["loop_sim_last"] < 0.7 * got["loop_sim_first"], got   # (0.43 measured)
        for key in ("dice_after_loop", "dice_after_train"):                # (+9.6, +10.1)
            assert got[key] > got["dice_before"] + 5.0, (key, got)
    if prefix == "10":        # the paper form's filter grows; the default keeps unit sum
        assert got["paper_sum_last"] > got["paper_sum_first"] + 0.1, got
        assert abs(got["default_sum_last"] - 1.0) < 1e-4, got
    if prefix == "03":        # σ is the RMS displacement over the body (σ·scale at this size)
        for sig in (10, 16):
            assert abs(got[f"rms_sigma{sig}"] - sig * got["scale"]) < 1e-6, got
    if prefix == "05":        # the solver improves Dice
        assert got["dice_after"] > got["dice_before"] + 0.1, got
    if prefix == "11":        # exp(−v) inverts exp(v); integration does not add folding; it learns
        assert got["inverse_residual"] < 0.05 * got["naive_inverse_residual"], got
        assert got["pct_positive_exp_lam0.04"] >= got["pct_positive_disp_lam0.04"], got
        assert got["dice_exp_lam0.04"] > got["dice_before_exp_lam0.04"] + 1.0, got


@pytest.mark.parametrize("path", lesson_files(), ids=lambda p: p.name)
def test_lesson_runs_quick(path, tmp_path):
    rc, seconds, out = run_lesson(path, quick=True, out_dir=tmp_path, timeout=300)
    assert rc == 0, f"{path.name} failed:\n{out[-4000:]}"
    pngs = list(tmp_path.rglob("*.png"))            # licensed/ holds real-set figures
    assert pngs, f"{path.name} saved no figure into --out"
    assert all(p.stat().st_size > 5000 for p in pngs), "a figure is (nearly) empty"
    got = parse_numbers(out)
    assert got is not None, f"{path.name} printed no RESULT line"
    prefix = path.name[:2]
    for key, (op, bound) in EXPECT[prefix].items():
        assert key in got, f"{path.name}: no {key!r} in {got}"
        assert op(got[key], bound), (f"{path.name}: {key} = {got[key]:.3g}, expected "
                                     f"{'<' if op is LT else '>'} {bound:g}")
    _check_relations(prefix, got)


def test_quick_runs_do_not_touch_the_committed_figures():
    from regnp.figures import FIGURES, QUICK_FIGURES, lesson_output_dir
    assert lesson_output_dir(None, quick=True) == QUICK_FIGURES
    assert lesson_output_dir(None, quick=False) == FIGURES
    assert QUICK_FIGURES.parent == FIGURES


@pytest.mark.parametrize("path", lesson_files(), ids=lambda p: p.name)
def test_lesson_cells_stand_alone(path):
    """Each lesson is in the percent cell format: it starts with a ``# %%`` cell, and every cell
    compiles on its own (a ``# %%`` line never splits a statement), so Jupyter (jupytext) and VS
    Code can run it cell by cell."""
    src = path.read_text()
    assert src.startswith("# %%"), f"{path.name}: the first line must be a '# %%' cell marker"
    cells = re.split(r"^# %%.*$", src, flags=re.M)[1:]
    assert len(cells) >= 4, f"{path.name}: only {len(cells)} cells"
    for k, cell in enumerate(cells):
        compile(cell, f"{path.name} [cell {k}]", "exec")
    assert sum("lesson_options(" in c for c in cells) == 1


def test_lesson_options_in_a_notebook_ignore_the_kernel_arguments(monkeypatch):
    """In a Jupyter kernel sys.argv holds the kernel's own flags (-f kernel.json, or --f=...):
    a lesson opened as a notebook ignores them and does the full run into figures/."""
    from regnp import figures
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    for argv in (["ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"],
                 ["ipykernel_launcher.py", "--f=/tmp/kernel-1.json"]):
        monkeypatch.setattr(sys, "argv", argv)
        assert figures.lesson_options("test") == (False, figures.FIGURES)
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "--quick", "-f", "k.json"])
    assert figures.lesson_options("test") == (True, figures.QUICK_FIGURES)
