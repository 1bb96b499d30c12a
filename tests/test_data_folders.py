"""Folder loaders: a tiny generated set (always runs) incl. corrupt/missing/mismatched files,
and the shared real sets (skipped when ../shared/data is absent)."""
import time

import numpy as np
import pytest
from PIL import Image

from regnp.data.__main__ import main as cli
from regnp.data.datasets import (TEST_SEED, VAL_FRACTION, VAL_SEED, _split_three, load_dataset,
                                 load_folder)
from regnp.data.folders import (find_data_root, normalize_intensity, read_png, resize_image,
                                resize_labels, split_subjects)

LABELS = {1: "a", 2: "b"}


def _make_set(root, n_sub=5, per_sub=2, shape=(32, 48)):
    """images/ + masks/ + index.csv + pairs.csv with n_sub subjects."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    rows, files = [], []
    for s in range(n_sub):
        for k in range(per_sub):
            f = f"s{s}_k{k}.png"
            img = (rng.uniform(0, 255, shape)).astype(np.uint8)
            m = np.zeros(shape, np.uint8)
            m[5:15, 5 + s:20 + s] = 1
            m[18:28, 25:40 - k] = 2
            Image.fromarray(img).save(root / "images" / f)
            Image.fromarray(m).save(root / "masks" / f)
            rows.append(f"{f},{s}")
            files.append(f)
    (root / "index.csv").write_text("file,subject\n" + "\n".join(rows) + "\n")
    pairs = [f"s{s}_k0.png,s{s}_k1.png,{s}" for s in range(n_sub)]
    (root / "pairs.csv").write_text("fixed_file,moving_file,subject\n" + "\n".join(pairs) + "\n")
    return files


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "tiny"
    _make_set(root)
    return root


# the tiny set's train subjects with the default split (so a broken file is actually loaded)
TRAIN_SUBJECTS = _split_three([str(s) for s in range(5)], 0.2, VAL_FRACTION, 0)["train"]
T = TRAIN_SUBJECTS[0]


def _kw(**k):
    base = dict(subject_col="subject", labels=LABELS, eval_labels=(1, 2))
    base.update(k)
    return base


def test_synthetic_mode_split_by_subject_batches_and_reproducible(tiny):
    tr = load_folder(tiny, "synthetic", "train", sigma=4.0, n_pairs=6, **_kw(widths=(20, 40)))
    te = load_folder(tiny, "synthetic", "test", sigma=4.0, n_pairs=5, **_kw(widths=(20, 40)))
    subj = lambda ids: {i.split("_")[0] for i in ids}
    assert subj(tr.pair_ids).isdisjoint(subj(te.pair_ids))
    assert len(tr) == 6 and len(te) == 5 and te.seed == TEST_SEED
    b = tr.batch([0, 3, 5])
    assert b["fixed"].shape == (3, 1, 32, 48) and b["fixed"].dtype == np.float32
    assert b["moving_mask"].shape == (3, 1, 32, 48) and b["moving_mask"].dtype == np.uint8
    assert b["u"].shape == (3, 2, 32, 48) and len(b["ids"]) == 3
    assert 0.0 <= b["fixed"].min() and b["fixed"].max() <= 1.0
    again = load_folder(tiny, "synthetic", "train", sigma=4.0, n_pairs=6, **_kw(widths=(20, 40)))
    assert np.array_equal(again[3]["moving"], tr[3]["moving"])
    assert np.array_equal(tr[3]["moving"], tr[3]["moving"])          # lazily regenerated, same
    batches = list(tr.batches(4, shuffle=True, seed=1))
    assert [len(x["ids"]) for x in batches] == [4, 2]
    assert sorted(i for x in batches for i in x["ids"]) == sorted(tr.pair_ids)
    assert len(list(tr.batches(4, drop_last=True))) == 1


def test_three_way_split_is_disjoint_and_keeps_the_test_subjects(tiny):
    """Validation subjects come out of the training subjects; the test subjects are the ones a
    two-way split picks, so adding validation never changed the test set."""
    sub = lambda ds: {i.split("_")[0] for i in ds.pair_ids}
    parts = {sp: load_folder(tiny, "synthetic", sp, sigma=4.0, n_pairs=12, **_kw(widths=(20, 40)))
             for sp in ("train", "val", "test")}
    tr, va, te = (sub(parts[sp]) for sp in ("train", "val", "test"))
    assert tr and va and te and not (tr & va) and not (tr & te) and not (va & te)
    two_way_test = split_subjects([str(s) for s in range(5)], 0.2, 0)[1]
    assert te == {f"s{s}" for s in two_way_test}
    assert parts["val"].seed == VAL_SEED
    for name, n_val in (("phantom", 10),):
        v = load_dataset(name, "val", size=32, n_pairs=3)
        t = load_dataset(name, "test", size=32, n_pairs=3)
        assert len(v.base_ids) == n_val and not set(v.base_ids) & set(t.base_ids)


def test_real_sets_have_validation_subjects(data_root):
    for name in ("chaos", "acdc", "jsrt"):
        ids = {sp: load_dataset(name, sp, data_root=data_root, size=64).pair_ids
               for sp in ("train", "val", "test")}
        subj = {sp: {i.split("|")[0].split("<-")[0] for i in v} for sp, v in ids.items()}
        assert all(ids.values()), name
        if name != "acdc":
            assert not subj["val"] & subj["test"] and not subj["val"] & subj["train"], name


def test_inter_and_pairs_modes(tiny):
    inter = load_folder(tiny, "inter", "train", n_pairs=20, **_kw())
    assert len(inter) == 20           # of the 6·5 ordered pairs of 6 train images (3 subjects)
    assert len(load_folder(tiny, "inter", "train", n_pairs=50, **_kw())) == 30   # all of them
    assert all(a != b for a, b in inter.pairs)
    assert len(set(inter.pairs)) == len(inter.pairs)
    assert inter[0]["u"] is None
    pr = load_folder(tiny, "pairs", "test", **_kw())
    assert len(pr) == 1
    it = pr[0]
    assert it["ids"][0].endswith("_k1.png") and it["fixed"].shape == (1, 1, 32, 48)


def test_resize_and_normalisation(tiny):
    ds = load_folder(tiny, "pairs", "train", size=(16, 24), normalize="minmax", **_kw())
    b = ds.batch(range(len(ds)))
    assert b["fixed"].shape[-2:] == (16, 24)
    assert set(np.unique(b["fixed_mask"])) <= {0, 1, 2}
    assert 0.0 <= b["fixed"].min() and b["fixed"].max() <= 1.0   # normalised, then resized
    full = load_folder(tiny, "pairs", "train", normalize="minmax", **_kw()).batch([0])["fixed"]
    assert full.min() == 0.0 and full.max() == 1.0


def test_resize_helpers_by_hand():
    lab = np.array([[1, 2], [3, 4]], np.uint8)
    assert np.array_equal(resize_labels(lab, (4, 4)),
                          [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    big = np.kron(lab, np.ones((2, 2), np.uint8))
    assert np.array_equal(resize_labels(big, (2, 2)), lab)
    flat = np.full((10, 12), 0.3, np.float32)
    assert np.allclose(resize_image(flat, (5, 7)), 0.3)
    ramp = np.tile(np.arange(8, dtype=np.float32), (4, 1))
    assert np.allclose(resize_image(ramp, (4, 16))[0, 1:-1], (np.arange(16)[1:-1] + 0.5) / 2 - 0.5)


def test_normalize_intensity_methods():
    x = np.array([[0, 51], [102, 255]], np.uint8)
    assert np.allclose(normalize_intensity(x, "scale"), x / 255.0)
    assert normalize_intensity(x.astype(np.uint16) * 257, "scale").max() == pytest.approx(1.0)
    p = normalize_intensity(np.arange(1000, dtype=np.uint16).reshape(10, 100), "percentile")
    assert p.dtype == np.float32 and p.min() == 0 and p.max() == 1 and 0.45 < p.mean() < 0.55
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_intensity(x, "zscore")


def test_split_subjects_deterministic_disjoint():
    subs = [str(i) for i in range(20)] * 2
    tr, te = split_subjects(subs, 0.2, seed=0)
    assert (tr, te) == split_subjects(subs, 0.2, seed=0)
    assert len(te) == 4 and set(tr).isdisjoint(te) and len(tr) + len(te) == 20
    with pytest.raises(ValueError, match="at least 2 subjects"):
        split_subjects(["a", "a"])


def test_corrupt_file(tiny):
    (tiny / "images" / f"s{T}_k0.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_folder(tiny, "pairs", "train", **_kw())


def test_missing_mask_and_missing_image(tiny, tmp_path):
    (tiny / "masks" / f"s{T}_k1.png").unlink()
    with pytest.raises(FileNotFoundError, match="mask.*missing from masks/"):
        load_folder(tiny, "inter", "train", **_kw())
    with pytest.raises(FileNotFoundError, match="missing"):
        read_png(tiny / "images" / "nope.png")


def test_mismatched_sizes_and_labels(tmp_path):
    root = tmp_path / "a"
    _make_set(root)
    Image.fromarray(np.zeros((30, 48), np.uint8)).save(root / "masks" / f"s{T}_k0.png")
    with pytest.raises(ValueError, match="same size"):
        load_folder(root, "inter", "train", **_kw())
    root = tmp_path / "b"
    _make_set(root)
    m = np.zeros((32, 48), np.uint8)
    m[0, 0] = 7
    for k in range(2):
        for s in range(5):
            Image.fromarray(m).save(root / "masks" / f"s{s}_k{k}.png")
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\]"):
        load_folder(root, "inter", "train", **_kw())
    root = tmp_path / "c"
    _make_set(root)
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(root / "masks" / f"s{T}_k0.png")
    with pytest.raises(ValueError, match="single-channel"):
        load_folder(root, "pairs", "train", **_kw())
    root = tmp_path / "d"
    _make_set(root)
    for sub in ("images", "masks"):
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / sub / f"s{T}_k0.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_folder(root, "inter", "train", **_kw())


def test_bad_csv_and_layout(tiny, tmp_path):
    (tiny / "index.csv").write_text("name,subject\na.png,1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['file'\]"):
        load_folder(tiny, "inter", "train", **_kw())
    (tiny / "index.csv").write_text("file,subject\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_folder(tiny, "inter", "train", **_kw())
    with pytest.raises(FileNotFoundError, match="expected layout"):
        load_folder(tmp_path / "nowhere", "inter")
    with pytest.raises(ValueError, match="mode must be"):
        load_folder(tiny, "triplets")
    with pytest.raises(ValueError, match="split must be"):
        load_folder(tiny, "inter", split="validation")


def test_find_data_root(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="expected layout"):
        find_data_root(tmp_path / "missing")
    assert find_data_root(tmp_path) == tmp_path
    monkeypatch.setenv("REGNP_DATA_ROOT", str(tmp_path))
    assert find_data_root() == tmp_path
    monkeypatch.setenv("REGNP_DATA_ROOT", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="REGNP_DATA_ROOT"):
        find_data_root()
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist")


def test_phantom_dataset_and_cli(tmp_path):
    ds = load_dataset("phantom", "train", sigma=10, n_pairs=3, n_subjects=2, size=64)
    b = ds.batch([0, 1, 2])
    assert b["fixed"].shape == (3, 1, 64, 64) and b["u"].shape == (3, 2, 64, 64)
    te = load_dataset("phantom", "test", n_pairs=2, n_subjects=2, size=64)
    assert set(ds.base_ids).isdisjoint(te.base_ids)
    out = tmp_path / "grid.png"
    assert cli(["show", "phantom", "--size", "64", "--n-pairs", "2", "--n", "2",
                "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 1000
    assert cli(["show", "chaos", "--data-root", str(tmp_path / "nope")]) == 2


# ------------------------------------------------------------------------------------------------
# the shared real sets
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, n_test, labels", [
    ("chaos", 80, {0, 1, 2, 3, 4}), ("acdc", 45, {0, 1, 2, 3}), ("jsrt", 60, {0, 1, 2, 3})])
def test_shared_sets(data_root, name, n_test, labels):
    t0 = time.perf_counter()
    tr = load_dataset(name, "train", data_root=data_root)
    te = load_dataset(name, "test", data_root=data_root)
    elapsed = time.perf_counter() - t0
    assert len(te) == n_test and tuple(te.shape) == (256, 256)
    b = te.batch([0, len(te) - 1])
    assert b["fixed"].dtype == np.float32 and 0 <= b["fixed"].min() and b["fixed"].max() <= 1
    assert set(np.unique(b["fixed_mask"])) <= labels
    for lab in te.eval_labels:
        assert (b["fixed_mask"] == lab).any()
    # subject split: no subject in both
    key = {"chaos": lambda i: i.split("_")[2], "acdc": lambda i: i.split("_")[1],
           "jsrt": lambda i: i}
    if name == "jsrt":
        tr_s = {s for p in tr.pair_ids for s in p.split("<-")}
        te_s = {s for p in te.pair_ids for s in p.split("<-")}
    else:
        tr_s = {key[name](p) for p in tr.pair_ids}
        te_s = {key[name](p) for p in te.pair_ids}
    assert tr_s.isdisjoint(te_s)
    # the test list is fixed
    assert load_dataset(name, "test", data_root=data_root).pair_ids == te.pair_ids
