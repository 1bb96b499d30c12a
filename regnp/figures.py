"""Regenerate every figure in ``figures/`` by running the lessons in order.

Usage::

    python -m regnp.figures            # all lessons, full mode
    python -m regnp.figures --quick    # shortened runs (what the test suite does)
    python -m regnp.figures --only 03  # lessons whose file name contains "03"

Each lesson is a script ``lessons/NN_topic.py`` that runs top to bottom (options ``--quick`` and
``--out DIR``, read by :func:`lesson_options`); it is run in a fresh Python process so one
lesson's state (imports, RNG, Numba threads) cannot leak into the next. Its steps are marked with
``# %%`` lines (the "percent" cell format), so the same file opens as a notebook in VS Code or,
with jupytext, in Jupyter; there :func:`use_script_backend` and :func:`show_or_close` show the
figures under their cells instead of only saving them.

Where figures go: full runs write ``figures/`` (the committed figures); ``--quick`` runs write the
git-ignored ``figures/quick/``, so a quick run never overwrites a real figure; ``--out DIR``
overrides both. Figures that show pixels of the licensed real sets go to a git-ignored
``licensed/`` folder inside it (:func:`licensed_output_dir`). Each lesson also prints its key numbers as one line ``RESULT {json}``
(:func:`report_numbers`), which ``tests/test_lessons.py`` reads and checks.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
LESSONS = REPO / "lessons"
FIGURES = REPO / "figures"
QUICK_FIGURES = FIGURES / "quick"          # git-ignored
LICENSED_FIGURES = FIGURES / "licensed"    # git-ignored: pixels of the licensed real sets
RESULT_PREFIX = "RESULT "


def lesson_output_dir(out_dir=None, quick=False):
    """The folder a lesson saves its figures in (created): ``out_dir`` when given, else
    ``figures/`` for a full run and ``figures/quick/`` (git-ignored) for a quick one."""
    path = Path(out_dir) if out_dir else (QUICK_FIGURES if quick else FIGURES)
    path.mkdir(parents=True, exist_ok=True)
    return path


def licensed_output_dir(out_dir=None, quick=False):
    """Where a figure showing pixels of the licensed real sets goes (created): a ``licensed/``
    folder inside the lesson's output folder, git-ignored. CHAOS and ACDC are CC BY-NC-SA and
    JSRT's terms forbid redistribution, so such figures are made on the user's machine and never
    committed; committed figures show the phantom or plots of numbers."""
    path = lesson_output_dir(out_dir, quick) / "licensed"
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_notebook():
    """True inside a Jupyter kernel (a lesson opened as a notebook in Jupyter, JupyterLab or VS
    Code), False when it runs as ``python lessons/NN_topic.py``."""
    return "ipykernel" in sys.modules


def lesson_options(description):
    """A lesson's options, ``(quick, out_dir)``: ``--quick`` (the shortened run the tests use) and
    ``--out DIR`` (figure folder, see :func:`lesson_output_dir`). In a notebook the kernel's own
    command-line arguments are ignored, so a notebook does the full run into ``figures/``."""
    p = argparse.ArgumentParser(description=description, allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="a shortened run (what the tests do)")
    p.add_argument("--out", default=None,
                   help="figure folder (default: figures/, or figures/quick/ with --quick)")
    a = p.parse_known_args()[0] if in_notebook() else p.parse_args()
    return a.quick, lesson_output_dir(a.out, a.quick)


def use_script_backend():
    """Draw off-screen (matplotlib's Agg backend) in a script; a notebook keeps its inline
    backend, so figures show under their cells. Call before importing ``matplotlib.pyplot``."""
    import matplotlib
    if not in_notebook():
        matplotlib.use("Agg")


def show_or_close(fig):
    """After saving ``fig``: show it under the cell in a notebook, close it in a script."""
    import matplotlib.pyplot as plt
    if in_notebook():
        plt.show()
    else:
        plt.close(fig)


def draw_deformed_grid(ax, u, step, color="k"):
    """Draw on ``ax`` the image of a square grid under φ(p) = p + u(p): every ``step``-th row
    line and column line of the map, in the image's frame (rows down). ``u``: (2, H, W)
    displacement in pixels, channel 0 = rows (y), channel 1 = columns (x)."""
    import numpy as np
    H, W = u.shape[1:]
    yy, xx = np.mgrid[0:H, 0:W]
    py, px = yy + u[0], xx + u[1]                        # where each grid point goes
    for i in range(0, H, step):
        ax.plot(px[i], py[i], color=color, lw=0.5)
    for j in range(0, W, step):
        ax.plot(px[:, j], py[:, j], color=color, lw=0.5)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)


def report_numbers(**numbers):
    """Print a lesson's key numbers as one parseable line, ``RESULT {"name": value, ...}``."""
    print(RESULT_PREFIX + json.dumps({k: float(v) for k, v in numbers.items()}))


def parse_numbers(output):
    """The dict of the last ``RESULT {...}`` line in a lesson's output (None if there is none)."""
    lines = [ln for ln in output.splitlines() if ln.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


def lesson_files(only=None):
    files = sorted(LESSONS.glob("[0-9][0-9]_*.py"))
    if only:
        files = [f for f in files if only in f.name]
    return files


def run_lesson(path, quick=False, out_dir=None, timeout=None):
    """Run one lesson script in a subprocess; returns (returncode, seconds, output)."""
    cmd = [sys.executable, str(path)]
    if quick:
        cmd.append("--quick")
    if out_dir is not None:
        cmd += ["--out", str(out_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
    return proc.returncode, time.perf_counter() - t0, proc.stdout + proc.stderr


def main(argv=None):
    p = argparse.ArgumentParser(description="Regenerate figures/ by running every lesson.")
    p.add_argument("--quick", action="store_true", help="run the lessons' shortened versions")
    p.add_argument("--only", default=None, help="run only lessons whose name contains this")
    p.add_argument("--out", default=None,
                   help="write figures here instead of figures/ (figures/quick/ with --quick)")
    a = p.parse_args(argv)
    files = lesson_files(a.only)
    if not files:
        sys.exit(f"no lessons found in {LESSONS} matching {a.only!r}")
    failed = []
    for f in tqdm(files, desc="lessons", unit="lesson"):
        rc, sec, out = run_lesson(f, quick=a.quick, out_dir=a.out)
        tqdm.write(f"{f.name}: {'ok' if rc == 0 else 'FAILED'} in {sec:.1f} s")
        if rc:
            failed.append(f.name)
            tqdm.write(out[-3000:])
    if failed:
        sys.exit(f"{len(failed)} lesson(s) failed: {', '.join(failed)}")
    print(f"all {len(files)} lessons ran; figures in {lesson_output_dir(a.out, a.quick)}")


if __name__ == "__main__":
    main()
