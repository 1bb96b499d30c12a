"""Every lesson runs in quick mode and writes at least one figure (so no lesson can rot)."""
import pytest

from regnp.figures import lesson_files, run_lesson


@pytest.mark.parametrize("path", lesson_files(), ids=lambda p: p.name)
def test_lesson_runs_quick(path, tmp_path):
    rc, seconds, out = run_lesson(path, quick=True, out_dir=tmp_path, timeout=300)
    assert rc == 0, f"{path.name} failed:\n{out[-4000:]}"
    pngs = list(tmp_path.glob("*.png"))
    assert pngs, f"{path.name} saved no figure into --out"
    assert all(p.stat().st_size > 5000 for p in pngs), "a figure is (nearly) empty"
