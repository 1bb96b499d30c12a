"""The memory guard (``regnp._checks``): refuse in one line what cannot fit, before allocating;
estimates checked against the memory the code really takes (issue 20, item 7)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import regnp._checks as checks
from regnp._checks import (MemoryLimitError, available_memory, check_memory,
                           estimate_forward_bytes, estimate_pair_bytes, estimate_param_bytes)

REPO = Path(__file__).resolve().parents[1]


def test_check_memory_refuses_above_what_is_available(monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda: (2_000_000_000, "pretended"))
    assert check_memory(1_999_999_999, "x", "y") == 1_999_999_999
    with pytest.raises(MemoryLimitError) as e:
        check_memory(31_900_000_000, "evaluating at 4096×4096", "use a smaller --size")
    assert str(e.value) == ("evaluating at 4096×4096 needs about 31.9 GB of memory, more than "
                            "the 2.0 GB available on this machine (pretended); use a smaller "
                            "--size")
    assert isinstance(e.value, ValueError)          # every CLI shows it as one error: line
    monkeypatch.setattr(checks, "available_memory", lambda: (None, None))
    assert check_memory(10 ** 15, "x", "y") == 10 ** 15     # unknown: no check


def test_available_memory_is_memavailable_on_linux():
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo (not Linux)")
    kb = next(int(ln.split()[1]) for ln in meminfo.read_text().splitlines()
              if ln.startswith("MemAvailable:"))
    got, source = available_memory()
    assert source == "MemAvailable in /proc/meminfo"
    assert abs(got - kb * 1024) < 0.2 * kb * 1024             # it moves a little meanwhile
    import os
    assert got <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_parameter_estimate_from_options_alone():
    from regnp.models import build_model
    m = build_model("metareg")
    real = 4 * 4 * m.num_parameters()                # weights, gradients, Adam's m and v
    assert real <= estimate_param_bytes({}) <= 2 * real
    assert estimate_param_bytes({"kernel_size": 999999}) > 10 ** 13      # refused, not built
    assert estimate_param_bytes({"enc": [16, 4096], "dec": [32]}) > 10 * estimate_param_bytes({})
    assert estimate_param_bytes({"kernel_size": "5"}) == estimate_param_bytes({})  # typed later


MEASURE = textwrap.dedent("""
    import gc, json, re, sys
    import numpy as np
    from regnp.models import build_model
    from regnp.data import load_dataset
    what, name, S = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def status(key):                             # bytes
        text = open("/proc/self/status").read()
        return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024
    m = build_model(name)
    x = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
    m.forward(x, x)                              # compiled and warmed up at a small size
    load_dataset("phantom", "test", size=32, n_pairs=1).batch([0])
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                             # the peak so far (compilation) is forgotten
    base = status("VmRSS")
    if what == "forward":
        F = np.random.default_rng(1).random((1, 1, S, S), dtype=np.float32)
        m.forward(F, F)
    else:
        ds = load_dataset("phantom", "test", size=S, n_pairs=1)
        ds.batch([0])
    print(json.dumps(status("VmHWM") - base))
""")


def _measured(what, name, size):
    """Peak resident memory (``VmHWM``, reset after the warm-up) above the warmed-up process."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    r = subprocess.run([sys.executable, "-c", MEASURE, what, name, str(size)],
                       capture_output=True, text=True, timeout=600,
                       env={"PYTHONPATH": str(REPO), "NUMBA_NUM_THREADS": "1",
                            "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["metareg", "dirnet"])
def test_forward_estimate_bounds_the_measured_peak(name):
    """Peak resident memory of one forward pass at 384×384 (above a warmed-up process whose
    compilation peak is forgotten): the estimate is an upper bound, and not a wild one."""
    from regnp.models import build_model
    measured = _measured("forward", name, 384)
    est = estimate_forward_bytes(build_model(name), (384, 384))
    assert measured <= est <= 4 * measured, (measured, est)


@pytest.mark.slow
def test_pair_estimate_bounds_the_measured_peak():
    measured = _measured("pair", "dirnet", 384)
    est = estimate_pair_bytes((384, 384))
    assert measured <= est <= 4 * measured, (measured, est)


def test_study_transfer_refuses_an_impossible_size_before_loading(tmp_path, monkeypatch):
    from process_helpers import run_main
    from regnp.study.experiments import main as study_main
    monkeypatch.setattr(checks, "available_memory", lambda: (2_000_000_000, "pretended"))
    code, out, err = run_main(study_main, ["transfer", "--size", "65536", "--data-root",
                                           str(tmp_path / "nothing")], tmp_path)
    assert code != 0 and err.count("\n") == 1, err
    assert "a 65536×65536 pair needs about" in err and "use a smaller --size" in err
    assert not list(tmp_path.iterdir())                 # nothing loaded, nothing written
