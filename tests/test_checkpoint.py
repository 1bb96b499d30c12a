import json

import numpy as np
import pytest

from regnp.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_roundtrip_and_overwrite(tmp_path):
    a = {"model.w": np.arange(6.0).reshape(2, 3), "optim.t": np.array(4)}
    p = save_checkpoint(tmp_path / "ck.npz", a, {"step": 4, "model": "vm2"})
    arrays, cfg = load_checkpoint(p)
    np.testing.assert_array_equal(arrays["model.w"], a["model.w"])
    assert cfg["step"] == 4 and cfg["model"] == "vm2"
    save_checkpoint(p, {"model.w": np.zeros((2, 3)), "optim.t": np.array(5)}, {"step": 5})
    arrays, cfg = load_checkpoint(p)
    assert cfg["step"] == 5 and not arrays["model.w"].any()
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.npz")


def test_corrupt_npz_detected(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(100)}, {"step": 1})
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


def test_truncated_json_detected(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(3)}, {"step": 1})
    js = p.with_suffix(".json")
    js.write_text(js.read_text()[:20])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(p)


def test_foreign_json_rejected(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(3)}, {"step": 1})
    p.with_suffix(".json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a regnp checkpoint"):
        load_checkpoint(p)


def test_failed_write_keeps_previous(tmp_path):
    p = save_checkpoint(tmp_path / "ck.npz", {"w": np.ones(3)}, {"step": 1})

    class Boom:
        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint(p, {"w": Boom()}, {"step": 2})
    arrays, cfg = load_checkpoint(p)
    assert cfg["step"] == 1 and arrays["w"].sum() == 3
