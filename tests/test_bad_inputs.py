"""Issue 8, bad inputs: the checks behind the catalogue (tests/test_error_catalogue.py), tested
where they live, plus the cases that need more than an exit status to show they are right
(what was written, what was scored, what a conversion gives)."""
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regnp._cli import (CLIError, check_output_file, check_output_folder, check_size_divisible,
                        nearest_multiples)
from regnp.register import as_image, as_mask

REPO = Path(__file__).resolve().parents[1]
TINY = ["--size", "32", "--enc", "4,8", "--dec", "8,8,8,8", "--kernel-size", "5", "--pairs", "4"]


def run(tool, *args, cwd):
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", f"regnp.{tool}", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, env=env)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A tiny trained run (its folder, as ``--checkpoint`` may now be given)."""
    from regnp.train import config_from_args, parse_args, train
    out = tmp_path_factory.mktemp("run")
    train(config_from_args(parse_args(TINY)), 2, out, save_every=2, val_every=0, progress=False)
    return out


def blobs(H=32, W=32):
    yy, xx = np.mgrid[:H, :W]
    F = np.exp(-((yy - H / 2) ** 2 + (xx - W / 2) ** 2) / (2 * (H / 6) ** 2))
    M = np.exp(-((yy - H / 2 - 2) ** 2 + (xx - W / 2 + 3) ** 2) / (2 * (H / 6) ** 2))
    return F.astype(np.float32), M.astype(np.float32)


# ------------------------------------------------------------------------------------------
# images and masks (item 10)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int64, np.float16, bool])
def test_other_image_dtypes_are_converted_with_a_warning(dtype):
    """Integer, bool and float16 images were accepted silently; now they are converted (to the
    same [0, 1] image a float copy gives) and the conversion is said."""
    F, _ = blobs()
    arr = (F > 0.5) if dtype is bool else (F * 200).astype(dtype)
    with pytest.warns(UserWarning, match="convert|0/1 image"):
        got = as_image(arr, "x.npy")
    want = as_image(arr.astype(np.float64), "x.npy")
    assert got.dtype == np.float32 and got.min() == 0 and got.max() == 1
    np.testing.assert_array_equal(got, want)


def test_float_and_png_images_convert_without_a_warning():
    F, _ = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_image(F, "F.npy")
        as_image(F.astype(np.float64), "F.npy")
        as_image((F * 255).astype(np.uint8), "F.png", from_png=True)


@pytest.mark.parametrize("arr,match", [
    (np.ones((4, 4), np.complex64), "complex"),
    (np.array([["a", "b"], ["c", "d"]]), "not numbers"),
    (np.zeros((4, 4), np.float32), "constant"),
    (np.full((4, 4), np.nan), "NaN"),
])
def test_unusable_images_are_refused(arr, match):
    with pytest.raises((TypeError, ValueError), match=match):
        as_image(arr, "x.npy")


def test_masks():
    m = np.array([[0, 1], [2, 2]])
    assert as_mask(m.astype(np.uint8), "m").dtype == np.int64
    np.testing.assert_array_equal(as_mask(m.astype(bool), "m"), [[0, 1], [1, 1]])
    with pytest.warns(UserWarning, match="integer labels"):
        np.testing.assert_array_equal(as_mask(m.astype(np.float32), "m"), m)
    with pytest.raises(ValueError, match="non-integer values"):
        as_mask(m * 0.5, "m")
    with pytest.raises(ValueError, match="NaN"):
        as_mask(np.array([[0.0, np.nan]]), "m")
    with pytest.raises(ValueError, match=r"negative label value\(s\) \[-1\]"):
        as_mask(-m + 1, "m")
    with pytest.raises(TypeError, match="label map"):
        as_mask(m.astype(np.complex64), "m")


def _register_with_masks(tmp, run_folder, fixed_mask, moving_mask):
    F, M = blobs()
    np.save(tmp / "F.npy", F)
    np.save(tmp / "M.npy", M)
    np.save(tmp / "Fm.npy", fixed_mask)
    np.save(tmp / "Mm.npy", moving_mask)
    r = run("register", "--fixed", "F.npy", "--moving", "M.npy", "--checkpoint", str(run_folder),
            "--fixed-mask", "Fm.npy", "--moving-mask", "Mm.npy", "--out", "res", cwd=tmp)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    return json.loads((tmp / "res" / "result.json").read_text()), r


def test_dice_is_per_label_of_the_fixed_mask(tmp_path, run_folder):
    """Labels of the fixed mask that the moving mask lacks score 0 with a warning; labels only
    in the moving mask are not scored (said too); an empty fixed mask reports no Dice at all
    (it used to print "Dice nan → nan")."""
    F, M = blobs()
    fixed = (F > 0.5).astype(np.uint8) * 2                       # label 2 only
    moving = (M > 0.5).astype(np.uint8) + (M > 0.9)              # labels 1 and 2
    moving[moving == 2] = 3                                      # labels 1 and 3: no 2
    res, r = _register_with_masks(tmp_path, run_folder, fixed, moving)
    assert "label(s) [2] of the fixed mask are absent from the moving mask" in r.stderr
    assert "label(s) [1, 3] of the moving mask are absent from the fixed mask" in r.stderr
    assert res["dice_before"]["per_label"] == {"2": 0.0} and res["dice_after"]["mean"] == 0.0
    empty = np.zeros_like(fixed)
    res, r = _register_with_masks(tmp_path, run_folder, empty, empty)
    assert "has no labels" in r.stderr and "dice_after" not in res and "Dice" not in r.stdout


def test_register_accepts_a_run_folder_and_an_int_image(tmp_path, run_folder):
    """--checkpoint runs/x works end to end; an int16 image gives the same field as its float
    copy (the conversion is exact) and says it converted."""
    F, M = blobs()
    np.save(tmp_path / "Fi.npy", (F * 1000).astype(np.int16))
    np.save(tmp_path / "Ff.npy", (F * 1000).astype(np.int16).astype(np.float32))
    np.save(tmp_path / "M.npy", M)
    fields = []
    for name in ("Fi.npy", "Ff.npy"):
        r = run("register", "--fixed", name, "--moving", "M.npy", "--checkpoint", str(run_folder),
                "--out", f"res_{name}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert ("converting it to float" in r.stderr) == (name == "Fi.npy"), r.stderr
        fields.append(np.load(tmp_path / f"res_{name}" / "displacement.npy"))
    np.testing.assert_array_equal(*fields)


def test_register_option_checks(tmp_path):
    """Options are checked before any file is read; a checkpoint given to the classical solver
    is said to be ignored."""
    from argparse import Namespace

    from regnp.register import check_options
    a = Namespace(iterations=10, kernel_width=16.0, lam=1e-4, method="rkhs", checkpoint="ck",
                  fixed="F.npy", moving="M.npy", fixed_mask=None, moving_mask=None,
                  out=str(tmp_path / "res"))
    with pytest.warns(UserWarning, match="--checkpoint is ignored with --method rkhs"):
        check_options(a)
    for change, match in [({"iterations": -1}, "--iterations"), ({"lam": float("inf")}, "--lambda"),
                          ({"method": "network", "checkpoint": None}, "--checkpoint is required"),
                          ({"fixed_mask": "m.npy"}, "give both")]:
        with pytest.raises(CLIError, match=match):
            check_options(Namespace(**{**vars(a), "checkpoint": None, **change}))
    assert not (tmp_path / "res").exists()


def test_solver_pyramid_fits_small_images(tmp_path):
    """--method rkhs on a 12×12 image used to stop with "use levels ≤ 1" (not an option of
    register); the pyramid now has as many levels as the image allows."""
    from regnp.register import pyramid_levels
    assert [pyramid_levels((s, s)) for s in (8, 15, 16, 31, 32, 256)] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(CLIError, match="at least 8×8"):
        pyramid_levels((5, 40))
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.random((12, 12)))
    np.save(tmp_path / "b.npy", rng.random((12, 12)))
    r = run("register", "--fixed", "a.npy", "--moving", "b.npy", "--method", "rkhs",
            "--iterations", "5", "--out", "res", cwd=tmp_path)
    assert r.returncode == 0 and np.load(tmp_path / "res" / "displacement.npy").shape == (2, 12, 12)


# ------------------------------------------------------------------------------------------
# outputs (items 9, 11)
# ------------------------------------------------------------------------------------------
def test_output_checks(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "out" / "b.png").mkdir(parents=True)
    with pytest.raises(CLIError, match="is a file, not a folder"):
        check_output_folder("--out", tmp_path / "afile")
    with pytest.raises(CLIError, match="lies under the file"):
        check_output_folder("--out", tmp_path / "afile" / "sub" / "deeper")
    with pytest.raises(CLIError, match="b.png: a folder"):
        check_output_folder("--out", tmp_path / "out", ("a.npy", "b.png"))
    assert check_output_folder("--out", tmp_path / "new" / "folder", ("a.npy",)).name == "folder"
    assert not (tmp_path / "new").exists()                       # checking creates nothing
    with pytest.raises(CLIError, match="lies under the file"):
        check_output_file("--out", tmp_path / "afile" / "fig.png")
    with pytest.raises(CLIError, match="unsupported file type"):
        check_output_file("--out", tmp_path / "fig.xyz", ("png", "pdf"))
    ro = tmp_path / "ro.png"
    ro.write_text("x")
    ro.chmod(0o444)
    if not os.access(ro, os.W_OK):                              # (root may write anyway)
        with pytest.raises(CLIError, match="read-only"):
            check_output_file("--out", ro, ("png",))


def test_register_blocked_output_writes_nothing(tmp_path, run_folder):
    """One output name taken by a folder used to fail after displacement.npy etc. were written."""
    F, M = blobs()
    np.save(tmp_path / "F.npy", F)
    np.save(tmp_path / "M.npy", M)
    (tmp_path / "res" / "result.json").mkdir(parents=True)       # the last file register writes
    r = run("register", "--fixed", "F.npy", "--moving", "M.npy", "--checkpoint", str(run_folder),
            "--out", "res", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot write res/result.json")
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["result.json"]


def test_data_show_writes_into_the_current_directory(tmp_path):
    """Without --out, data show used to overwrite the tracked figures/data_<set>_<split>.png in
    the package checkout."""
    tracked = REPO / "figures" / "data_phantom_test.png"
    before = hashlib.sha1(tracked.read_bytes()).hexdigest() if tracked.exists() else None
    r = run("data", "show", "phantom", "--size", "32", "--n-pairs", "2", "--n", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data_phantom_test.png").stat().st_size > 1000
    after = hashlib.sha1(tracked.read_bytes()).hexdigest() if tracked.exists() else None
    assert before == after
    r = run("data", "show", "phantom", "--size", "32", "--n-pairs", "2", "--n", "1", "--out",
            "figs/", cwd=tmp_path)                                # a folder: default name inside
    assert r.returncode == 0 and (tmp_path / "figs" / "data_phantom_test.png").is_file(), r.stderr


def test_data_cli_names_every_dataset():
    from regnp.data import DATASETS
    from regnp.data.__main__ import SET_NAMES
    assert sorted(SET_NAMES) == sorted(DATASETS)


# ------------------------------------------------------------------------------------------
# evaluate (items 8, 9, 11)
# ------------------------------------------------------------------------------------------
def test_evaluate_run_folder_and_compare(tmp_path, run_folder):
    """--checkpoint runs/x writes into runs/x; a --compare file written by evaluate itself is
    read, a malformed one is refused before anything is evaluated or written."""
    r = run("evaluate", "--checkpoint", str(run_folder), "--pairs", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = run_folder / "metrics.json"
    assert len(json.loads(metrics.read_text())["pairs"]) == 3
    r = run("evaluate", "--checkpoint", str(run_folder), "--pairs", "3", "--out", "b",
            "--compare", str(metrics), "--name", "again", cwd=tmp_path)
    assert r.returncode == 0 and "t-test of Dice vs metareg" in r.stdout, r.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"pairs": 3}))
    r = run("evaluate", "--checkpoint", str(run_folder), "--pairs", "3", "--out", "c",
            "--compare", "bad.json", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and not (tmp_path / "c").exists()
    assert "no list of per-pair results" in r.stderr


def test_evaluate_hand_edited_data_entry(tmp_path, run_folder):
    """A wrong-typed data entry in a hand-edited checkpoint is named in one line, and the option
    that overrides it makes the checkpoint usable again."""
    with np.load(run_folder / "checkpoint.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    meta["data"]["size"] = "32"
    (tmp_path / "ed").mkdir()
    with open(tmp_path / "ed" / "checkpoint.npz", "wb") as f:
        np.savez(f, **arrays, __meta__=np.array(json.dumps(meta)))
    r = run("evaluate", "--checkpoint", "ed", "--pairs", "2", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "size '32' is not a positive integer (override: --size)" in r.stderr
    r = run("evaluate", "--checkpoint", "ed", "--pairs", "2", "--size", "32", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "ed" / "metrics.json").read_text())["size"] == 32


def test_size_messages_name_the_nearest_valid_sizes():
    assert nearest_multiples(50, 16) == (48, 64) and nearest_multiples(5, 16) == (16,)
    with pytest.raises(CLIError, match="e.g. 48 or 64"):
        check_size_divisible("--size", 50, 4, "vm2")
    check_size_divisible("--size", 64, 4, "vm2")
    check_size_divisible("--size", (48, 64), 4, "vm2")


# ------------------------------------------------------------------------------------------
# data folders (items 10, 11)
# ------------------------------------------------------------------------------------------
def _folder(root, csv_text, masks):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    F, _ = blobs()
    for name, mask in masks.items():
        Image.fromarray((F * 255).astype(np.uint8)).save(root / "images" / name)
        Image.fromarray(mask).save(root / "masks" / name)
    (root / "index.csv").write_bytes(csv_text)
    return root


def test_csv_with_a_byte_order_mark(tmp_path):
    """A CSV saved by a spreadsheet with a UTF-8 BOM failed on its first column ('\\ufefffile')."""
    from regnp.data import load_folder
    F, _ = blobs()
    names = [f"s{k}.png" for k in range(5)]
    rows = "file,subject\n" + "".join(f"{n},{k}\n" for k, n in enumerate(names))
    root = _folder(tmp_path / "set", b"\xef\xbb\xbf" + rows.encode(),
                   {n: (F > 0.5).astype(np.uint8) for n in names})
    ds = load_folder(root, "synthetic", split="test", subject_col="subject", n_pairs=2)
    assert len(ds) == 2
    (root / "index.csv").write_bytes("file,subject\nä.png,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        load_folder(root, "synthetic", subject_col="subject")


def test_negative_labels_in_a_mask_are_refused(tmp_path, monkeypatch):
    """A mask whose reader yields label -1 used to be cast to uint8 (label 255) silently. (PNG
    itself stores no negative values; the check guards every other reader.)"""
    from regnp.data import folders
    F, _ = blobs()
    root = _folder(tmp_path / "set", b"file\nneg.png\n", {"neg.png": (F > 0.5).astype(np.uint8)})
    png = folders.read_png

    def read_signed(path, kind="image"):
        arr = png(path, kind)
        return -arr.astype(np.int32) if kind == "mask" else arr
    monkeypatch.setattr(folders, "read_png", read_signed)
    with pytest.raises(ValueError, match=r"negative label value\(s\) \[-1\]"):
        folders.load_images(root, ["neg.png"])


def test_describe_scores_labels_of_the_fixed_mask_only():
    """data show's "Dice before registration" counted an evaluated label absent from both masks
    as a perfect 1.0 (README convention: Dice per label present in the fixed mask)."""
    from regnp.data.datasets import ImagePairs, describe
    F, M = blobs()
    images = np.stack([F, M])[:, None]
    masks = np.stack([(F > 0.5), (M > 0.5)]).astype(np.uint8)[:, None]      # label 1 only
    ds = ImagePairs(images, masks, [(0, 1)], ["p"], eval_labels=(1, 4))
    st = describe(ds)
    from regnp.metrics import dice
    want = dice(masks[0, 0], masks[1, 0], labels=[1])["mean"]
    assert st["dice_before"][0] == pytest.approx(want) and want < 0.9


def test_a_folder_given_as_a_png_is_not_called_missing(tmp_path):
    from regnp.data.folders import read_csv, read_png
    with pytest.raises(ValueError, match="is a folder"):
        read_png(tmp_path)
    with pytest.raises(ValueError, match="is a folder"):
        read_csv(tmp_path)
