"""python -m regnp.register on the user's own images: outputs, padding, warnings, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from regnp.register import pad_to_multiple, register_with_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from regnp.train import config_from_args, parse_args, train
    out = tmp_path_factory.mktemp("ck")
    cfg = config_from_args(parse_args(["--size", "32", "--enc", "4,8", "--dec", "8,8,8,8",
                                       "--kernel-size", "5", "--pairs", "4"]))
    train(cfg, 3, out, save_every=3, val_every=0, progress=False)
    return out / "checkpoint.npz"


def blob_pair(H, W):
    yy, xx = np.mgrid[:H, :W]
    F = np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / (2 * (H / 6) ** 2))
    M = np.exp(-((yy - H / 2 - 2) ** 2 + (xx - W / 2 + 3) ** 2) / (2 * (H / 6) ** 2))
    return F, M


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "regnp.register", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_pad_to_multiple():
    p, hw = pad_to_multiple(np.ones((70, 33)), 16)
    assert p.shape == (80, 48) and hw == (70, 33) and p[:70, :33].all() and not p[70:].any()


def test_register_odd_size_png_and_npy(tmp_path, checkpoint):
    F, M = blob_pair(70, 90)                                  # not divisible by 4
    Image.fromarray((F * 255).astype(np.uint8)).save(tmp_path / "F.png")
    np.save(tmp_path / "M.npy", M)
    Fm = (F > 0.5).astype(np.uint8)
    Mm = (M > 0.5).astype(np.uint8)
    Image.fromarray(Fm).save(tmp_path / "Fm.png")
    Image.fromarray(Mm).save(tmp_path / "Mm.png")
    r = run("--fixed", "F.png", "--moving", "M.npy", "--checkpoint", str(checkpoint),
            "--fixed-mask", "Fm.png", "--moving-mask", "Mm.png", "--out", "res", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "res"
    u = np.load(out / "displacement.npy")
    assert u.shape == (2, 70, 90) and u.dtype == np.float32
    assert np.load(out / "warped.npy").shape == (70, 90)
    assert np.load(out / "jacobian.npy").shape == (70, 90)
    assert Image.open(out / "warped.png").size == (90, 70)
    assert (out / "registration.png").stat().st_size > 10000
    res = json.loads((out / "result.json").read_text())
    assert 0 <= res["dice_after"]["mean"] <= 1 and res["pct_positive_jacobian"] > 50
    assert "Dice" in r.stdout


def test_colour_png_warns(tmp_path, checkpoint):
    F, M = blob_pair(32, 32)
    Image.fromarray((F * 255).astype(np.uint8)).save(tmp_path / "F.png")
    Image.fromarray((M * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "M.png")
    r = run("--fixed", "F.png", "--moving", "M.png", "--checkpoint", str(checkpoint), "--out",
            "res", cwd=tmp_path)
    assert r.returncode == 0 and "converting it to grayscale" in r.stderr


def test_register_function_matches_model_forward(checkpoint):
    from regnp.checkpoint import load_model
    model, _ = load_model(checkpoint)
    F, M = blob_pair(32, 32)
    u, sec = register_with_model(model, F.astype(np.float32), M.astype(np.float32))
    _, u2, _ = model.forward(F[None, None].astype(np.float32), M[None, None].astype(np.float32))
    np.testing.assert_allclose(u, u2[0], atol=1e-6)
    assert sec > 0


@pytest.mark.parametrize("case,msg", [
    ("missing", "not found"), ("size", "resample them"), ("nomask", "both --fixed-mask"),
    ("nockpt", "--checkpoint is required"), ("badckpt", "corrupt"), ("badext", "unsupported"),
])
def test_errors_are_one_line(tmp_path, checkpoint, case, msg):
    F, M = blob_pair(32, 32)
    np.save(tmp_path / "F.npy", F)
    np.save(tmp_path / "M.npy", M)
    np.save(tmp_path / "M40.npy", np.ones((40, 32)))
    ck = ["--checkpoint", str(checkpoint)]
    args = {"missing": ["--fixed", "nope.png", "--moving", "M.npy", *ck],
            "size": ["--fixed", "F.npy", "--moving", "M40.npy", *ck],
            "nomask": ["--fixed", "F.npy", "--moving", "M.npy", "--fixed-mask", "F.npy", *ck],
            "nockpt": ["--fixed", "F.npy", "--moving", "M.npy"],
            "badckpt": ["--fixed", "F.npy", "--moving", "M.npy", "--checkpoint", "bad.npz"],
            "badext": ["--fixed", "F.tif", "--moving", "M.npy", *ck]}[case]
    if case == "badckpt":
        import shutil
        shutil.copy(checkpoint, tmp_path / "bad.npz")
        data = bytearray((tmp_path / "bad.npz").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (tmp_path / "bad.npz").write_bytes(bytes(data))
    if case == "badext":
        (tmp_path / "F.tif").write_bytes(b"II*\x00")
    r = run(*args, "--out", "res", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and msg in last, r.stderr


def test_register_rkhs_method_needs_no_checkpoint(tmp_path):
    F, M = blob_pair(40, 48)
    np.save(tmp_path / "F.npy", F)
    np.save(tmp_path / "M.npy", M)
    r = run("--fixed", "F.npy", "--moving", "M.npy", "--method", "rkhs", "--kernel-width", "6",
            "--iterations", "60", "--out", "res", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    u = np.load(tmp_path / "res" / "displacement.npy")
    assert u.shape == (2, 40, 48)
    w = np.load(tmp_path / "res" / "warped.npy")
    assert np.mean((w - F) ** 2) < 0.5 * np.mean((M - F) ** 2)      # it registered


def _register_in_process(args, cwd):
    from process_helpers import run_main
    from regnp.register import main
    code, _, err = run_main(main, args, cwd)
    return code, err


def test_a_pair_too_large_for_the_memory_is_refused_before_the_network_runs(
        tmp_path, checkpoint, monkeypatch):
    """The guard compares the forward pass's estimate with the memory available (here pretended
    to be 1 MB): one line, nothing written."""
    import regnp._checks as checks
    F, M = blob_pair(96, 80)
    np.save(tmp_path / "F.npy", F)
    np.save(tmp_path / "M.npy", M)
    monkeypatch.setattr(checks, "available_memory", lambda: (1_000_000, "pretended"))
    code, err = _register_in_process(["--fixed", "F.npy", "--moving", "M.npy", "--checkpoint",
                                      str(checkpoint), "--out", "res"], tmp_path)
    assert code and "Traceback" not in err
    assert err.strip().startswith("error: registering a 96×80 pair with this network needs "
                                  "about "), err
    assert ("more than the 1 MB available on this machine (pretended); register a downsampled "
            "pair") in err, err
    assert not (tmp_path / "res").exists()


def test_register_never_replaces_its_own_input(tmp_path, checkpoint):
    """--moving it/warped.npy --out it once overwrote the moving image with its warped self;
    a path spelled differently (./it/../it) is the same file."""
    F, M = blob_pair(32, 32)
    (tmp_path / "it").mkdir()
    np.save(tmp_path / "F.npy", F)
    np.save(tmp_path / "it" / "warped.npy", M)
    before = (tmp_path / "it" / "warped.npy").read_bytes()
    code, err = _register_in_process(["--fixed", "F.npy", "--moving", "./it/../it/warped.npy",
                                      "--checkpoint", str(checkpoint), "--out", "it"],
                                     tmp_path)
    assert code and err.strip() == ("error: --out it would replace the input "
                                    "./it/../it/warped.npy (this command writes warped.npy "
                                    "there); choose another --out or move the input"), err
    assert (tmp_path / "it" / "warped.npy").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "it").iterdir()) == ["warped.npy"]
