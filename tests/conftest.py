"""Shared fixtures (the real data folder: tests that need it skip when it is absent) and the list
of slow tests (``pytest -m "not slow"`` is the fast core; the full ``pytest`` runs everything)."""
import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root():
    """``$REGNP_DATA_ROOT`` or ``../shared/data`` beside the checkout, or None."""
    env = os.environ.get("REGNP_DATA_ROOT")
    cand = Path(env) if env else REPO.parent / "shared" / "data"
    return cand if cand.is_dir() else None


@pytest.fixture
def data_root():
    root = shared_data_root()
    if root is None:
        pytest.skip("real image sets not found: set REGNP_DATA_ROOT or place them in ../shared/data "
                    "(see README, 'Data')")
    return root


# ----------------------------------------------------------------------------------- slow tests
# The tests that dominate the suite's time, marked ``slow`` here (by node id: a file, a test, or a
# test with all its parameters) so that the list is in one place and test files need no edits.
# The ranking came from one run of the whole suite with per-test durations; what makes each slow
# is said beside it. A test may also carry ``@pytest.mark.slow`` itself. Each is slow because of
# what it checks (a fresh interpreter, a real signal, a training run, the paper's image size),
# not because it is inefficient; the fast core keeps a check of the same code at small sizes.
SLOW = {
    # fresh interpreters: each child pays Python's start-up and the Numba cache load
    "tests/test_lessons.py::test_lesson_runs_quick":
        "every lesson run as a script in a fresh interpreter (seconds to a minute each)",
    "tests/test_ctrl_c.py": "real SIGINTs to child interpreters, timed around a slow __del__",
    "tests/test_checkpoint.py::test_writer_killed_at_every_stage_leaves_a_good_checkpoint":
        "a child writer SIGKILLed inside each stage of the checkpoint write",
    "tests/test_train_safety.py::test_sigkill_at_random_moments_and_inside_the_write_resumes_"
    "bit_identical": "eight SIGKILLed training processes and their resumes",
    "tests/test_train_safety.py::test_ctrl_c_in_the_cli_prints_one_line_exits_130_and_resumes":
        "a real Ctrl-C to a child training process",
    "tests/test_grid_reliability.py::test_ctrl_c_stops_a_two_worker_grid_and_the_rerun_resumes":
        "a real Ctrl-C to a grid with two worker processes, then the rerun",
    "tests/test_grid_reliability.py::test_ctrl_c_with_one_job_at_a_time_is_one_line_and_130":
        "a real Ctrl-C to a grid process",
    "tests/test_grid_reliability.py::test_two_grids_claiming_jobs_at_once_do_not_collide":
        "two real grid processes racing for jobs",
    "tests/test_bad_inputs.py::test_register_accepts_a_run_folder_and_an_int_image":
        "trains a run, then registers through a child `python -m regnp.register`",
    "tests/test_bad_inputs.py::test_data_show_writes_into_the_current_directory":
        "a child `python -m regnp.data show`",
    "tests/test_bad_inputs.py::test_dice_is_per_label_of_the_fixed_mask":
        "a child `python -m regnp.register` on a trained run",
    "tests/test_bad_inputs.py::test_evaluate_run_folder_and_compare":
        "child `python -m regnp.evaluate` runs on a trained run",
    "tests/test_bad_inputs.py::test_evaluate_hand_edited_data_entry":
        "child `python -m regnp.evaluate` runs on an edited checkpoint",
    "tests/test_bad_inputs.py::test_solver_pyramid_fits_small_images":
        "a child `python -m regnp.register --method rkhs`",
    "tests/test_register.py::test_register_odd_size_png_and_npy":
        "child `python -m regnp.register` runs",
    "tests/test_register.py::test_register_rkhs_method_needs_no_checkpoint":
        "a child `python -m regnp.register --method rkhs`",
    "tests/test_register.py::test_colour_png_warns": "a child `python -m regnp.register`",
    "tests/test_experiments.py::test_cli_errors_are_one_line":
        "child `python -m regnp.study` runs",
    "tests/test_experiments.py::test_report_writes_the_results_page_byte_for_byte_and_says_what_"
    "it_wrote": "child `python -m regnp.study report` runs",
    "tests/test_experiments.py::test_report_refuses_to_replace_results_with_empty_tables_or_a_"
    "foreign_file": "child `python -m regnp.study report` runs",
    "tests/test_grid_time_limit.py::test_list_shows_each_job_left_with_its_estimate":
        "a child `python -m regnp.study steps --list`",
    "tests/test_sweep.py::test_quick_sweep_end_to_end_from_the_command_line":
        "a quick sweep listed and trained by child `python -m regnp.study` runs",
    # training runs and grids of them
    "tests/test_experiments.py::test_local_and_dask_local_cluster_give_identical_metrics":
        "the same grid trained twice, locally and on a dask cluster",
    "tests/test_experiments.py::test_every_protocol_quick_on_the_phantom_and_report":
        "trains every protocol's quick jobs, then reports",
    "tests/test_experiments.py::test_kill_and_resume_a_grid": "a grid killed and resumed",
    "tests/test_experiments.py::test_transfer_experiment_runs": "trains on a real set",
    "tests/test_experiments.py::test_real_data_jobs_quick": "trains jobs on the real sets",
    "tests/test_grid_time_limit.py::test_grid_defers_what_does_not_fit_and_runs_what_it_"
    "cannot_estimate": "a grid that trains the jobs it cannot estimate",
    # the paper's image size, or whole models through finite differences
    "tests/test_float32_real_shapes.py":
        "every layer at the paper's 256×256 shapes, float32 against float64",
    "tests/test_models.py::test_model_gradients_through_objective":
        "whole models through central differences (every layer's own check is in the core)",
    "tests/test_models_baselines.py::test_model_gradients_through_objective":
        "whole baseline models through central differences",
    "tests/test_models_diffeo.py::test_diffeomorphic_model_gradients":
        "whole models with scaling and squaring through central differences",
    "tests/test_models_diffeo.py::test_bidirectional_gradients":
        "whole models, both directions, through central differences",
    "tests/test_models_diffeo.py::test_segmentation_supervised_gradients":
        "whole models with the soft-Dice term through central differences",
    # the real data sets (skipped where they are absent)
    "tests/test_data_folders.py::test_real_sets_have_validation_subjects":
        "reads every subject of the three real sets",
    "tests/test_data_folders.py::test_shared_sets": "loads each real set",
    "tests/test_data_deform.py::test_sigma_statistics_on_chaos":
        "deformation statistics over real CHAOS pairs",
}


def _is_listed(nodeid, key):
    return nodeid == key or nodeid.startswith(key + "::") or nodeid.startswith(key + "[")


# ------------------------------------------------------------------------- parallel workers
# `pytest` runs the tests in one worker process per core (pytest-xdist, `-n auto` in
# pytest.ini; `-n 0` runs them in this process). Two things make that fast on a small machine:
#
# * one thread per worker. Numba's parallel kernels (OpenMP threads) and OpenBLAS each start a
#   thread per core; two workers on two cores would run four busy threads, and a parallel loop
#   then waits at its barrier for a thread that is not scheduled (measured: a 256² float32
#   test 25 s instead of 1 s with the machine busy). So the controller sets one Numba and one
#   BLAS thread in the environment before it starts the workers, and the workers and every
#   interpreter a test starts inherit it (tests/test_threads.py compares 1 against 2 threads
#   in an interpreter of its own).
# * no kernel compiled twice. With a cold Numba cache the compiling is minutes of the suite's
#   time; each worker first compiles its own share of the kernel families
#   (``regnp.precompile.share``), so the workers compile in parallel and then load what the
#   other compiled from the cache instead of compiling it again.
_ONE_THREAD = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def pytest_configure(config):
    if hasattr(config, "workerinput"):                       # a worker: see sessionstart
        return
    if (config.getoption("numprocesses", None) or 0) != 0:   # the controller, before it forks
        for var in _ONE_THREAD:
            os.environ.setdefault(var, "1")


def pytest_sessionstart(session):
    wi = getattr(session.config, "workerinput", None)
    if wi is None:
        return
    from regnp.precompile import precompile, share
    precompile(share(int(wi["workerid"].lstrip("gw")), int(wi["workercount"])), progress=False)


@pytest.hookimpl(tryfirst=True)        # before -m and -k deselect: they must see the marker
def pytest_collection_modifyitems(config, items):
    used = set()
    for item in items:
        for key in SLOW:
            if _is_listed(item.nodeid, key):
                item.add_marker(pytest.mark.slow)
                used.add(key)
    # an entry whose file was collected whole but that matched nothing was renamed or removed:
    # say so, or the test it meant would silently join the fast core
    if any("::" in arg for arg in config.args):          # only some tests of a file were asked
        return
    files = {item.nodeid.split("::")[0] for item in items}
    for key in sorted(set(SLOW) - used):
        if key.split("::")[0] in files:
            warnings.warn(f"tests/conftest.py SLOW lists {key!r}, which matches no test; update "
                          f"the list", pytest.PytestConfigWarning)
