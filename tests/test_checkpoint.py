"""Checkpoints: one atomic file; a writer killed at any stage leaves a loadable checkpoint."""
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from regnp.checkpoint import (STAGES, CheckpointError, backup_path, load_checkpoint,
                              save_checkpoint)


def test_roundtrip_and_overwrite(tmp_path):
    a = {"model.w": np.arange(6.0).reshape(2, 3), "optim.t": np.array(4)}
    p = save_checkpoint(tmp_path / "ck.npz", a, {"step": 4, "model": "vm2"})
    arrays, cfg = load_checkpoint(p)
    np.testing.assert_array_equal(arrays["model.w"], a["model.w"])
    assert set(arrays) == set(a)
    assert cfg["step"] == 4 and cfg["model"] == "vm2"
    save_checkpoint(p, {"model.w": np.zeros((2, 3)), "optim.t": np.array(5)}, {"step": 5})
    arrays, cfg = load_checkpoint(p)
    assert cfg["step"] == 5 and not arrays["model.w"].any()
    assert load_checkpoint(backup_path(p))[1]["step"] == 4            # the one before is kept
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ck.npz", "ck.prev.npz"]


def test_a_run_folder_means_its_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "checkpoint.npz", {"w": np.ones(2)}, {"step": 3})
    assert load_checkpoint(tmp_path)[1]["step"] == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_checkpoint_is_a_normal_readable_file(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(2)}, {"step": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask                # not mkstemp's 0600


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.npz")


def test_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a regnp checkpoint"):
        load_checkpoint(tmp_path / "x.npz")
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "e.npz")


def test_corrupt_npz_detected(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(100)}, {"step": 1})
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


def test_array_bytes_checked_against_checksum(tmp_path):
    """An archive whose arrays were changed after writing (valid zip, wrong bytes) is refused."""
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(4)}, {"step": 1})
    with np.load(p) as z:
        meta = str(z["__meta__"])
    np.savez(p, w=np.zeros(4), __meta__=np.array(meta))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(p)


def test_foreign_description_rejected(tmp_path):
    np.savez(tmp_path / "ck.npz", w=np.ones(3), __meta__=np.array(json.dumps({"hello": 1})))
    with pytest.raises(CheckpointError, match="not a regnp checkpoint"):
        load_checkpoint(tmp_path / "ck.npz")


def test_damaged_current_falls_back_to_previous_with_warning(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(50)}, {"step": 1})
    save_checkpoint(p, {"w": np.full(50, 2.0)}, {"step": 2})
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="using the previous checkpoint"):
        arrays, cfg = load_checkpoint(p)
    assert cfg["step"] == 1 and arrays["w"].sum() == 50
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p, fallback=False)


def test_legacy_two_file_checkpoint_still_reads(tmp_path):
    npz = tmp_path / "old.npz"
    np.savez(npz, **{"model.w": np.arange(3.0)})
    sha = hashlib.sha1(npz.read_bytes()).hexdigest()
    npz.with_suffix(".json").write_text(json.dumps(
        {"format": "regnp-checkpoint-1", "arrays": npz.name, "sha1": sha, "step": 7}))
    arrays, cfg = load_checkpoint(npz)
    assert cfg["step"] == 7 and arrays["model.w"][2] == 2.0
    npz.with_suffix(".json").write_text(json.dumps({"format": "regnp-checkpoint-1", "sha1": "0"}))
    with pytest.raises(CheckpointError, match="checksum differs"):
        load_checkpoint(npz)


def test_failed_write_keeps_previous(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(3)}, {"step": 1})

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(p, {"w": Boom()}, {"step": 2})
    arrays, cfg = load_checkpoint(p)
    assert cfg["step"] == 1 and arrays["w"].sum() == 3
    assert not list(tmp_path.glob(".*.tmp"))


def test_non_finite_description_refused(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(3)}, {"step": 1, "loss": float("nan")})
    assert not (tmp_path / "ck.npz").exists()


KILLER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from regnp.checkpoint import save_checkpoint
    path, stage = sys.argv[1], sys.argv[2]
    def die(name):
        if name == stage:
            os._exit(9)            # like SIGKILL: no cleanup, no finally blocks
    save_checkpoint(path, {"w": np.full(1000, 2.0)}, {"step": 2}, on_stage=die)
""")


@pytest.mark.parametrize("stage", STAGES + ("after",))
def test_writer_killed_at_every_stage_leaves_a_good_checkpoint(tmp_path, stage):
    """A process killed before each stage of the write (and after the last) leaves a checkpoint
    that loads without fallback: the old one (step 1) before the rename, the new one after. The
    next save removes the killed writer's temporary file."""
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(1000)}, {"step": 1})
    r = subprocess.run([sys.executable, "-c", KILLER, str(p), stage], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == (9 if stage != "after" else 0), r.stderr
    arrays, cfg = load_checkpoint(p, fallback=False)
    expect = 2 if stage == "after" else 1
    assert cfg["step"] == expect and arrays["w"][0] == float(expect)
    save_checkpoint(p, {"w": np.full(1000, 3.0)}, {"step": 3})
    assert load_checkpoint(p, fallback=False)[1]["step"] == 3
    assert not list(tmp_path.glob(".*.tmp")), "a killed writer's temporary file survived"


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_save_after_falling_back_keeps_the_good_backup(tmp_path):
    """--resume fell back to checkpoint.prev.npz because checkpoint.npz is damaged: the next save
    must not rotate the damaged file into the backup's place (it once did, leaving no good
    checkpoint at all if that save was then interrupted)."""
    p = tmp_path / "checkpoint.npz"
    save_checkpoint(p, {"w": np.full(3, 1.0)}, {"step": 1})
    save_checkpoint(p, {"w": np.full(3, 2.0)}, {"step": 2})
    _corrupt(p)
    with pytest.warns(RuntimeWarning, match="previous checkpoint"):
        assert load_checkpoint(p)[1]["step"] == 1
    save_checkpoint(p, {"w": np.full(3, 3.0)}, {"step": 3})
    assert load_checkpoint(p)[1]["step"] == 3
    arrays, cfg = load_checkpoint(backup_path(p), fallback=False)      # still the good step 1
    assert cfg["step"] == 1 and arrays["w"][0] == 1.0
    save_checkpoint(p, {"w": np.full(3, 4.0)}, {"step": 4})              # healthy again: rotates
    assert load_checkpoint(backup_path(p), fallback=False)[1]["step"] == 3


def test_the_fallback_warning_shows_once_per_process(tmp_path):
    """train reads a checkpoint twice on --resume (to check the options, then to resume): the
    fallback is said once, under Python's default warning filter."""
    import warnings
    p = tmp_path / "checkpoint.npz"
    save_checkpoint(p, {"w": np.ones(3)}, {"step": 1})
    save_checkpoint(p, {"w": np.ones(3)}, {"step": 2})
    _corrupt(p)
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        load_checkpoint(p)
        load_checkpoint(p)
    assert len([w for w in seen if "previous checkpoint" in str(w.message)]) == 1


def test_a_checkpoint_is_not_guessed_from_another_suffix(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(2)}, {"step": 1})
    with pytest.raises(CheckpointError, match=r"ck.npy: a checkpoint is the .npz file .* not a "
                                              r"\.npy file"):
        load_checkpoint(p.with_suffix(".npy"))                 # once read ck.npz silently
    assert load_checkpoint(tmp_path / "ck")[1]["step"] == 1     # no suffix: still ck.npz


@pytest.mark.parametrize("entry, value, match", [
    ("step", "five", r"its step 'five' is not a whole number ≥ 0"),
    ("step", -3, r"its step -3 is not a whole number ≥ 0"),
    ("step", True, r"its step True is not"),
    ("rng", None, r"its random-stream state \(rng\) is None, not a mapping"),
])
def test_hand_edited_step_or_rng_is_refused_in_one_line(tmp_path, entry, value, match):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(2)},
                        {"step": 4, "rng": {"kind": "stateless", "seed": 0, "step": 4}})
    with np.load(p, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    meta[entry] = value
    with open(p, "wb") as f:
        np.savez(f, **arrays, __meta__=np.array(json.dumps(meta)))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(p)
