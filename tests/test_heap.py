"""regnp.ops._fast.heap: glibc keeps the memory a training step frees. It is set only where it
can be (glibc), left to the user when they tuned malloc themselves, and changes no number: a
short training run learns bitwise the same parameters with and without it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from regnp.ops._fast import heap

REPO = Path(__file__).resolve().parents[1]
GLIBC = heap._glibc() is not None

_RUN = """\
import hashlib, json, sys
from regnp.config import make_config
from regnp.ops._fast.heap import keep_freed_memory
from regnp.train import train
cfg = make_config(model="metareg", dataset="phantom", size=64, pairs=4)
res = train(cfg, 4, sys.argv[1], save_every=100, val_every=0, log_every=1, progress=False)
h = hashlib.sha256()
for name, p, _ in sorted(res["model"].named_parameters(), key=lambda t: t[0]):
    h.update(name.encode()); h.update(p.tobytes())
print(json.dumps({"heap": keep_freed_memory(), "params": h.hexdigest(),
                  "loss": [r["loss"] for r in res["history"]]}))
"""


def _run(code, env_extra, *args):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=str(REPO), **env_extra)
    for v in heap._USER_VARS:                      # the test decides, not the caller's shell
        if v not in env_extra:
            env.pop(v, None)
    r = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


_STATUS = "from regnp.ops._fast.heap import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc: there is nothing to set")
def test_set_on_glibc_unless_switched_off_or_tuned_by_the_user():
    assert _run(_STATUS, {}) == "set"
    assert _run(_STATUS, {"REGNP_KEEP_MEMORY": "0"}) == "off: REGNP_KEEP_MEMORY=0"
    assert _run(_STATUS, {"MALLOC_TRIM_THRESHOLD_": "0"}) == \
        "left to the user's MALLOC_TRIM_THRESHOLD_"


def test_without_glibc_it_does_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    heap.keep_freed_memory.cache_clear()
    monkeypatch.delenv("REGNP_KEEP_MEMORY", raising=False)
    for v in heap._USER_VARS:
        monkeypatch.delenv(v, raising=False)
    try:
        assert heap.keep_freed_memory() == "not glibc"
    finally:
        heap.keep_freed_memory.cache_clear()


@pytest.mark.skipif(not GLIBC, reason="the C library is not glibc: there is nothing to compare")
def test_training_learns_bitwise_the_same_with_freed_memory_kept(tmp_path):
    kept = json.loads(_run(_RUN, {}, str(tmp_path / "kept")))
    default = json.loads(_run(_RUN, {"REGNP_KEEP_MEMORY": "0"}, str(tmp_path / "default")))
    assert kept["heap"] == "set" and default["heap"].startswith("off")
    assert len(kept["loss"]) == 4
    assert kept["loss"] == default["loss"] and kept["params"] == default["params"]
