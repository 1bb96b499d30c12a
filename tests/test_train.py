"""Training: a tiny run learns, resume is exact, NaN stops cleanly, and the CLIs fail clearly."""
import json
import subprocess

import numpy as np
import pytest

from process_helpers import run_main

from regnp.checkpoint import load_checkpoint
from regnp.train import TrainingError, config_from_args, parse_args, train

TINY = ["--size", "32", "--enc", "4,8", "--dec", "8,8,8,8", "--kernel-size", "5", "--pairs", "16",
        "--val-pairs", "4"]


def tiny_config(*extra):
    return config_from_args(parse_args(TINY + list(extra)))


def test_tiny_training_lowers_loss_and_beats_identity(tmp_path):
    """Seconds of training on 4 pairs: the loss on those pairs falls and their Dice beats the
    identity (u = 0, i.e. Dice before registration)."""
    from regnp.data import load_dataset
    from regnp.evaluate import evaluate_pairs
    from regnp.models import Objective, build_model
    cfg = tiny_config("--lr", "3e-3", "--sigma", "24", "--pairs", "4")
    ds = load_dataset("phantom", "train", size=32, sigma=24, n_pairs=4)
    batch = ds.batch(range(4))
    obj = Objective(**cfg["objective"])
    untrained = build_model(cfg["model"], **cfg["model_options"])
    loss0 = obj(untrained, batch["fixed"], batch["moving"])[0]["loss"]
    res = train(cfg, 80, tmp_path, save_every=80, val_every=0, log_every=10, progress=False)
    assert res["history"][-1]["step"] == 80
    loss1 = obj(res["model"], batch["fixed"], batch["moving"])[0]["loss"]
    assert loss1 < 0.7 * loss0, (loss0, loss1)
    recs = evaluate_pairs(res["model"], ds, range(4))
    before = np.mean([r["dice_before"] for r in recs])
    after = np.mean([r["dice_after"] for r in recs])
    assert after > before + 0.02, (before, after)


def test_resume_is_exact(tmp_path):
    cfg = tiny_config()
    a = train(dict(cfg), 12, tmp_path / "a", save_every=100, val_every=0, progress=False)
    train(dict(cfg), 5, tmp_path / "b", save_every=5, val_every=0, progress=False)
    b = train(dict(cfg), 12, tmp_path / "b", resume=True, save_every=100, val_every=0,
              progress=False)
    sa, sb = a["model"].state_dict(), b["model"].state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    arrays, config = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert config["step"] == 12 and int(arrays["optim.t"]) == 12


def test_nan_stops_with_message_and_keeps_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_config()
    train(dict(cfg), 4, tmp_path, save_every=4, val_every=0, progress=False)
    before, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    from regnp.models import objective

    real = objective.Objective.__call__

    def poisoned(self, model, F, M):
        terms, w, u = real(self, model, F, M)
        terms["sim"] = float("nan")
        return terms, w, u
    monkeypatch.setattr(objective.Objective, "__call__", poisoned)
    with pytest.raises(TrainingError, match="NaN/Inf at step 5.*last good checkpoint"):
        train(dict(cfg), 8, tmp_path, resume=True, save_every=1, val_every=0, progress=False)
    after, config = load_checkpoint(tmp_path / "checkpoint.npz")
    assert config["step"] == 4
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def run_cli(module, *args, cwd):
    """``python -m <module> <args>`` in ``cwd``, run in this process through the tool's
    ``main(argv)`` (``process_helpers.run_main``: what these checks need of a fresh interpreter
    — exit status, stdout, stderr, warning filters — without its start-up)."""
    import importlib
    code, out, err = run_main(importlib.import_module(module).main, list(args), cwd)
    return subprocess.CompletedProcess(args, code, out, err)


def test_cli_train_evaluate_and_errors(tmp_path):
    out = tmp_path / "run"
    r = run_cli("regnp.train", *TINY, "--steps", "6", "--val-every", "3", "--out", str(out),
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Dice before" in r.stdout and (out / "loss_curve.png").stat().st_size > 5000
    r = run_cli("regnp.evaluate", "--checkpoint", str(out / "checkpoint.npz"), "--pairs", "3",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "metrics.json").read_text())
    assert len(res["pairs"]) == 3 and "| Method |" in (out / "table.md").read_text()
    # bad inputs: one clear line, non-zero exit
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a checkpoint")
    for args, msg in [
        (("regnp.evaluate", "--checkpoint", str(tmp_path / "missing.npz")), "not found"),
        (("regnp.evaluate", "--checkpoint", str(bad)), "not a regnp checkpoint"),
        (("regnp.train", *TINY, "--size", "34", "--steps", "2", "--out", str(tmp_path / "x"),
          "--no-progress"), "not divisible"),
        (("regnp.train", *TINY, "--steps", "2", "--resume", "--out", str(tmp_path / "none"),
          "--no-progress"), "not found"),
    ]:
        r = run_cli(*args, cwd=tmp_path)
        assert r.returncode != 0
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and msg in last, r.stderr[-1500:]
        assert "Traceback" not in r.stderr


def test_the_printed_evaluate_command_quotes_a_folder_with_spaces(tmp_path):
    """The last line train prints ends in a command to score the run: copied into a shell, it
    must name the run's folder as one argument even when the folder has spaces."""
    import shlex
    out = tmp_path / "my run"
    r = run_cli("regnp.train", *TINY, "--steps", "3", "--val-every", "3", "--out", str(out),
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cmd = r.stdout.strip().splitlines()[-1].split("test-set scores: ")[1]
    assert shlex.split(cmd) == ["python", "-m", "regnp.evaluate", "--checkpoint", str(out)]


def test_corrupt_checkpoint_is_one_clear_line(tmp_path):
    out = tmp_path / "run"
    r = run_cli("regnp.train", *TINY, "--steps", "2", "--val-every", "0", "--out", str(out),
                "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    ck = out / "checkpoint.npz"
    data = bytearray(ck.read_bytes())
    data[len(data) // 3] ^= 0xFF
    ck.write_bytes(bytes(data))
    r = run_cli("regnp.evaluate", "--checkpoint", str(ck), cwd=tmp_path)
    assert r.returncode != 0 and "corrupt" in r.stderr and "Traceback" not in r.stderr


def test_no_per_step_allocation_growth():
    """After warm-up, 25 more training steps hold no more traced memory than one step did:
    every buffer is either reused or freed (no caches that grow per step)."""
    import tracemalloc

    from regnp.models import Objective, build_model
    from regnp.nn.optim import Adam
    model = build_model("metareg", enc=(8, 8), dec=(8, 8, 8, 8), kernel_size=5, seed=0)
    obj, opt = Objective(), Adam(model)
    rng = np.random.default_rng(0)
    F, M = (rng.random((2, 1, 32, 32), dtype=np.float32) for _ in range(2))

    def step():
        model.zero_grad()
        obj(model, F, M)
        opt.step()
    for _ in range(5):
        step()
    tracemalloc.start()
    step()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(25):
        step()
    growth = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert growth < 256 * 1024, f"traced memory grew by {growth / 1024:.0f} kB over 25 steps"


def test_upsample_flag_reaches_the_model():
    from regnp.models import build_model
    cfg = tiny_config("--model", "metareg", "--upsample", "nearest")
    m = build_model(cfg["model"], **cfg["model_options"])
    assert m.unet.upsample == "nearest"
    cfg = tiny_config("--model", "vm2", "--upsample", "transpose")
    assert build_model(cfg["model"], **cfg["model_options"]).unet.upsample == "transpose"
    with pytest.raises(TrainingError, match="U-Net models"):
        tiny_config("--model", "dirnet", "--upsample", "nearest")


# ------------------------------------------------------------------ beyond the paper: options
def test_unused_beyond_paper_options_leave_the_config_as_before():
    """Runs without --integrate/--bidir/--seg-weight must have exactly the config (and stored
    args) of runs from before these options existed: checkpoints are compared key by key on
    --resume, and experiment jobs are identified by their config."""
    from regnp.train import BEYOND_PAPER, _args_record
    for extra in ([], ["--model", "vm2"], ["--model", "dirnet"], ["--model", "rkhs"]):
        a = parse_args(TINY + extra)
        cfg = config_from_args(a)
        assert not set(BEYOND_PAPER) & set(cfg["model_options"])
        assert set(cfg["objective"]) == {"sim", "lam", "reg", "rho1", "rho2"}
        assert not set(BEYOND_PAPER) & set(_args_record(a))


def test_beyond_paper_options_in_the_config():
    from regnp.train import _args_record
    a = parse_args(TINY + ["--integrate", "7", "--bidir", "--seg-weight", "0.5"])
    cfg = config_from_args(a)
    assert cfg["model_options"]["integrate"] == 7 and cfg["model_options"]["int_downsize"] == 2
    assert cfg["objective"]["bidir"] is True
    assert cfg["objective"]["seg_weight"] == 0.5 and cfg["objective"]["seg_labels"] == [1, 4]
    assert _args_record(a)["integrate"] == 7
    cfg = tiny_config("--model", "vm1", "--integrate", "4", "--int-downsize", "1",
                      "--seg-weight", "1", "--seg-labels", "4")
    assert cfg["model_options"]["int_downsize"] == 1 and cfg["objective"]["seg_labels"] == [4]
    assert "bidir" not in cfg["objective"]
    acdc = config_from_args(parse_args(["--dataset", "acdc", "--seg-weight", "0.1"]))
    assert acdc["objective"]["seg_labels"] == [3]


@pytest.mark.parametrize("extra,match", [
    (["--bidir"], "--bidir needs --integrate"),
    (["--model", "fcnss", "--integrate", "7"], "--integrate applies to"),
    (["--int-downsize", "1"], "--int-downsize sets where --integrate"),
    (["--seg-labels", "1"], "give --seg-weight"),
    (["--seg-weight", "0.1", "--seg-labels", "1,1"], "distinct values"),
    (["--seg-weight", "0.1", "--seg-labels", "x"], "separated by commas"),
])
def test_beyond_paper_bad_combinations(extra, match):
    with pytest.raises(TrainingError, match=match):
        tiny_config(*extra)


def test_diffeomorphic_bidir_seg_run_trains_and_resumes_exactly(tmp_path):
    """All three options on: the loss terms are logged, and resume is bit-identical."""
    cfg = tiny_config("--integrate", "3", "--bidir", "--seg-weight", "0.5")
    a = train(dict(cfg), 8, tmp_path / "a", save_every=100, val_every=0, log_every=1,
              progress=False)
    train(dict(cfg), 4, tmp_path / "b", save_every=4, val_every=0, progress=False)
    b = train(dict(cfg), 8, tmp_path / "b", resume=True, save_every=100, val_every=0,
              progress=False)
    last = a["history"][-1]
    assert {"sim", "sim_inv", "seg", "reg", "meta"} <= set(last) and 0 < last["seg"] < 1
    for k, v in a["model"].state_dict().items():
        np.testing.assert_array_equal(v, b["model"].state_dict()[k], err_msg=k)


# ------------------------------------------------------------------ make_config: keywords
@pytest.mark.parametrize("argv,kwargs", [
    ([], {}),
    (["--model", "metareg", "--dataset", "phantom", "--size", "64", "--pairs", "8",
      "--lambda", "0.04", "--kernel-size", "13"],
     dict(model="metareg", dataset="phantom", size=64, pairs=8, lam=0.04, kernel_size=13)),
    (TINY[:-2] + ["--model", "vm2", "--loss", "ncc", "--lambda", "1", "--lr", "3e-4",
                  "--upsample", "transpose"],
     dict(size=32, enc=(4, 8), dec="8,8,8,8", kernel_size=5, pairs=16, model="vm2", loss="ncc",
          lam=1.0, lr=3e-4, upsample="transpose")),
    (["--model", "ablated", "--no-filter", "--per-channel-filter", "--filter-param", "psd"],
     dict(model="ablated", no_filter=True, per_channel_filter=True, filter_param="psd")),
    (["--model", "vm1", "--integrate", "4", "--int-downsize", "1", "--bidir", "--seg-weight",
      "0.5", "--seg-labels", "4", "--seed", "3", "--batch-size", "4"],
     dict(model="vm1", integrate=4, int_downsize=1, bidir=True, seg_weight=0.5, seg_labels="4",
          seed=3, batch_size=4)),
    (["--model", "rkhs", "--kernel", "wendland", "--kernel-width", "2.5", "--gram", "conv13",
      "--sigma", "16"],
     {"model": "rkhs", "kernel": "wendland", "kernel_width": 2.5, "gram": "conv13",
      "sigma": 16, "bidir": False, "pairs": None}),
])
def test_make_config_equals_the_command_line(argv, kwargs):
    from regnp.config import make_config as from_config_module
    from regnp.train import make_config
    assert make_config is from_config_module
    assert make_config(**kwargs) == config_from_args(parse_args(argv))


def test_make_config_names_the_valid_keywords_for_an_unknown_one():
    from regnp.train import make_config
    with pytest.raises(TypeError, match=r"kernal_size.*valid: .*kernel_size"):
        make_config(kernal_size=13)
    with pytest.raises(TypeError, match=r"steps.*arguments of train"):
        make_config(steps=100)            # train()'s argument, not the config's


@pytest.mark.parametrize("kwargs,match", [
    (dict(size=-64), "--size must be a positive integer"),
    (dict(size=64.5), "--size: invalid int value"),
    (dict(kernel_size=12), "--kernel-size must be odd"),
    (dict(lam=float("nan")), "--lambda must be a finite number"),
    (dict(model="voxelmorph"), "--model: invalid choice"),
    (dict(bidir="yes"), "on/off flag"),
    (dict(bidir=True), "--bidir needs --integrate"),
    (dict(int_downsize=1), "--int-downsize sets where --integrate"),
    (dict(enc="16,x"), "invalid literal"),
])
def test_make_config_refuses_bad_values_as_the_command_line_does(kwargs, match):
    from regnp.train import make_config
    with pytest.raises((TrainingError, ValueError), match=match):
        make_config(**kwargs)
