"""regnp.study.stats: every statistic against a hand computation on small made-up data (and scipy
where scipy has it); the hierarchical bootstrap against cases whose answer is known."""
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from regnp.study.stats import (cluster_weights, compare_paired, effect_size_dz,
                               hierarchical_bootstrap, holm, matched, mean_sd, paired_t,
                               pair_levels, trend_bootstrap, wilcoxon)

REPO = Path(__file__).resolve().parents[1]


def test_paired_t_and_effect_size_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 1.0, 3.0]
    # d = 1, 1, 2, 1: mean 1.25, sd sqrt((3·0.25² + 0.75²)/3) = 0.5, t = 1.25 / (0.5/√4) = 5
    t, p = paired_t(x, y)
    assert t == pytest.approx(5.0)
    assert p == pytest.approx(2 * scipy.stats.t.sf(5.0, df=3))
    r = scipy.stats.ttest_rel(x, y)
    assert (t, p) == pytest.approx((r.statistic, r.pvalue))
    assert effect_size_dz(x, y) == pytest.approx(2.5)
    assert paired_t([1, 2], [0, 1]) is None and effect_size_dz([1, 2], [0, 1]) is None  # no spread


def test_wilcoxon_by_enumerating_every_sign_pattern():
    d = np.array([1.0, -2.0, 3.0, 4.0, -5.0])
    # ranks of |d| are 1..5; W+ = 1 + 3 + 4 = 8, W− = 2 + 5 = 7; the statistic is min = 7
    w, p = wilcoxon(d, np.zeros(5))
    assert w == 7.0
    # exact null: each of the 2⁵ sign patterns equally likely; p = 2 · P(W+ ≤ 7), capped at 1
    wplus = [sum(r for r, s in zip(range(1, 6), signs) if s)
             for signs in itertools.product([0, 1], repeat=5)]
    assert p == pytest.approx(min(1.0, 2 * np.mean(np.array(wplus) <= 7)))
    assert p == pytest.approx(scipy.stats.wilcoxon(d).pvalue)
    assert wilcoxon([1.0, 1.0], [1.0, 1.0]) is None


def test_mean_sd_is_the_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0, 6.0]) == pytest.approx((3.0, np.sqrt(14 / 3)))
    assert mean_sd([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        mean_sd([])


def test_matched_pairs_by_id_and_refuses_other_pairs():
    ids, A, B = matched({"b": 2.0, "a": 1.0}, [{"a": 0.5, "b": 1.0}, {"b": 3.0, "a": 0.0}])
    assert ids == ["a", "b"]
    assert A.tolist() == [[1.0, 2.0]] and B.tolist() == [[0.5, 1.0], [0.0, 3.0]]
    with pytest.raises(ValueError, match="other test pairs.*1 pair ids missing, 1 extra"):
        matched({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}, names=("Meta-Reg", "VM-2"))
    with pytest.raises(ValueError, match="seed index 1"):
        matched([{"a": 1.0}, {"b": 1.0}], {"a": 1.0})


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert holm([0.2, None, 0.01]) == [pytest.approx(0.2), None, pytest.approx(0.02)]


def test_pair_levels_of_every_id_format():
    assert pair_levels("chaos_t2_sub33_z13|s2021-0") == ("chaos_t2_sub33", "chaos_t2_sub33_z13")
    assert pair_levels("phantom100003|s2021-7") == ("phantom100003", "phantom100003")
    assert pair_levels("acdc_p006_z03") == ("acdc_p006", "acdc_p006_z03")
    assert pair_levels("JPCLN153<-JPCLN001") == ("JPCLN153", "JPCLN153<-JPCLN001")
    assert pair_levels("p7") == ("p7", "p7")


def test_pair_levels_agree_with_the_data_loaders(data_root):
    """The subject read from each test pair's id is the subject the loader drew its base from
    (CHAOS: the index's chaos_mr_subject; ACDC: the patient column), and the committed grid
    JSON holds exactly these ids."""
    import csv
    from regnp.data.datasets import load_dataset
    ds = load_dataset("chaos", "test", data_root=data_root, size=64, sigma=16.0, n_pairs=80)
    rows = {Path(r["file"]).stem: r for r in
            csv.DictReader(open(Path(data_root) / "chaos_mr_t2_abdomen" / "index.csv"))}
    for i, pid in enumerate(ds.pair_ids):
        subject, base = pair_levels(pid)
        _, stem, _ = ds._plan(i)                      # the base image pair i deforms
        assert base == stem
        assert subject == f"chaos_t2_sub{int(rows[stem]['chaos_mr_subject']):02d}"
    assert len({pair_levels(p)[0] for p in ds.pair_ids}) >= 2
    committed = REPO / "results" / "runs" / "liver16_vm2_lam0.04_seed0" / "metrics.json"
    if committed.is_file():
        assert json.loads(committed.read_text())["tests"]["s16"]["pairs"]["id"] == ds.pair_ids
    acdc = load_dataset("acdc", "test", data_root=data_root, size=64)
    patients = {r["pair_id"]: int(r["patient"]) for r in
                csv.DictReader(open(Path(data_root) / "acdc_cine_mri_ed_es" / "pairs.csv"))}
    for pid in acdc.pair_ids:
        assert pair_levels(pid)[0] == f"acdc_p{patients[pid]:03d}"


def test_cluster_weights_draw_whole_levels():
    """Subjects of 2 slices × 3 pairs: every resample draws 3 subjects · 2 slices · 3 pairs = 18
    pairs in all, and a pair is drawn only together with others of its subject."""
    subjects = np.repeat(["s0", "s1", "s2"], 6)
    slices = np.repeat([f"z{k}" for k in range(6)], 3)
    W = cluster_weights(subjects, slices, 500, np.random.default_rng(0))
    assert W.shape == (500, 18) and np.all(W.sum(1) == 18) and W.min() >= 0
    per_subject = W.reshape(500, 3, 6).sum(2)
    assert np.all(per_subject % 6 == 0)              # whole subjects: multiples of 6 draws
    assert np.mean(per_subject == 0) > 0.2           # P(a subject not drawn) = (2/3)³ ≈ 0.30


def test_bootstrap_of_a_constant_shift_is_a_point():
    a = np.full(12, 0.9)
    r = hierarchical_bootstrap(a, a - 0.03, np.repeat(["x", "y", "z"], 4), n_boot=300)
    assert r["lo"] == pytest.approx(0.03) and r["hi"] == pytest.approx(0.03)
    assert r["mean"] == pytest.approx(0.03) and r["p"] == pytest.approx(1 / 300)
    r0 = hierarchical_bootstrap(a, a, n_boot=300)
    assert (r0["lo"], r0["hi"], r0["p"]) == (0.0, 0.0, 1.0)


def test_pair_bootstrap_variance_is_the_plug_in_variance():
    """With every pair its own cluster the resampled mean has variance Σ(d − d̄)²/n² exactly;
    20,000 resamples hit it within a few per cent."""
    d = np.random.default_rng(3).standard_normal(15)
    r = hierarchical_bootstrap(d, np.zeros(15), n_boot=20_000, seed=1)
    sd = np.sqrt(np.sum((d - d.mean()) ** 2)) / 15
    z = scipy.stats.norm.ppf(0.975)
    assert (r["hi"] - r["lo"]) / (2 * z) == pytest.approx(sd, rel=0.06)
    assert r["lo"] < d.mean() < r["hi"]


def test_between_subject_variation_widens_the_interval():
    """All variation between 4 subjects (pairs within a subject agree up to tiny noise): the
    nested bootstrap's interval is several times the naive pair bootstrap's, which treats the
    40 pairs as independent; the naive one excludes 0, the nested one does not (the mean over
    4 resampled subjects is ≤ 0 whenever all 4 draws are the two negative ones: 1/16 > 2.5 %)."""
    rng = np.random.default_rng(5)
    subj = np.repeat(["a", "b", "c", "d"], 10)
    d = np.repeat([1.5, -0.2, 1.2, -0.3], 10) + 0.01 * rng.standard_normal(40)
    slices = np.array([f"{s}{k // 2}" for k, s in enumerate(subj)])
    nested = hierarchical_bootstrap(d, np.zeros(40), subj, slices, n_boot=4000)
    naive = hierarchical_bootstrap(d, np.zeros(40), n_boot=4000)
    assert nested["hi"] - nested["lo"] > 2.5 * (naive["hi"] - naive["lo"])
    assert nested["lo"] < 0 < nested["hi"] and not naive["lo"] < 0 < naive["hi"]
    assert nested["n_subjects"] == 4 and nested["n_slices"] == 20 and naive["n_subjects"] == 40


def test_seed_resampling_by_hand():
    """Constant per-pair differences, but side A's two seeds sit at +δ and −δ from their mean:
    resampling 2 of 2 seeds gives +δ, 0, −δ with probability ¼, ½, ¼, so the 95 % interval is
    exactly [d − δ, d + δ]; with one seed per side it is the point d."""
    pairs = 10
    base = np.linspace(0.7, 0.9, pairs)
    A = np.stack([base + 0.05 + 0.02, base + 0.05 - 0.02])     # d = 0.05, δ = 0.02
    r = hierarchical_bootstrap(A, base, n_boot=4000)
    assert r["lo"] == pytest.approx(0.03) and r["hi"] == pytest.approx(0.07)
    assert r["seeds"] == (2, 1)
    one = hierarchical_bootstrap(A[:1], base, n_boot=4000)
    assert one["lo"] == pytest.approx(0.07) == pytest.approx(one["hi"])


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(9)
    d = rng.standard_normal(20)
    subj = np.repeat(["a", "b", "c", "d"], 5)
    r1 = hierarchical_bootstrap(d, 0 * d, subj, n_boot=500, seed=7)
    r2 = hierarchical_bootstrap(d, 0 * d, subj, n_boot=500, seed=7)
    r3 = hierarchical_bootstrap(d, 0 * d, subj, n_boot=500, seed=8)
    assert r1 == r2 and (r1["lo"], r1["hi"]) != (r3["lo"], r3["hi"])


def test_compare_paired_collects_every_statistic():
    rng = np.random.default_rng(11)
    ids = [f"chaos_t2_sub{s:02d}_z{z:02d}|s2021-{k}"
           for k, (s, z) in enumerate((s, z) for s in (1, 2, 3) for z in range(4))]
    b = {i: 0.8 + 0.05 * rng.standard_normal() for i in ids}
    a = [{i: v + 0.01 + 0.01 * rng.standard_normal() for i, v in b.items()} for _ in range(2)]
    r = compare_paired(a, b, n_boot=400)
    x = np.mean([[s[i] for i in sorted(ids)] for s in a], 0)
    y = np.array([b[i] for i in sorted(ids)])
    assert r["delta"] == pytest.approx((x - y).mean())
    assert r["p_t"] == pytest.approx(scipy.stats.ttest_rel(x, y).pvalue)
    assert r["p_w"] == pytest.approx(scipy.stats.wilcoxon(x - y).pvalue)
    assert r["dz"] == pytest.approx((x - y).mean() / (x - y).std(ddof=1))
    assert (r["n_subjects"], r["n_slices"], r["n_pairs"], r["seeds"]) == (3, 12, 12, (2, 1))
    assert r["lo"] <= r["delta"] <= r["hi"]


# ------------------------------------------------------------------ the trend against σ
def _ids(n=12):
    return [f"chaos_t2_sub{s:02d}_z{z:02d}|s2021-{k}"
            for k, (s, z) in enumerate((s, z) for s in (1, 2, 3) for z in range(n // 3))]


def test_trend_of_constant_shifts_is_the_least_squares_slope():
    """Each size's difference is a constant shift c_k: every resample sees the same means, so the
    interval is the point slope. x = 10, 16, 22 and c = 1, 2, 4: x̄ = 16, Σ(x − x̄)² = 72,
    slope = (−6·(1 − 7/3) + 6·(4 − 7/3)) / 72 = 18 / 72 = 0.25."""
    ids = _ids()
    base = {i: 80.0 + k for k, i in enumerate(ids)}
    pts = [(x, {i: v + c for i, v in base.items()}, base) for x, c in ((10, 1.0), (16, 2.0), (22, 4.0))]
    r = trend_bootstrap(pts, n_boot=300)
    assert r["slope"] == pytest.approx(0.25) == pytest.approx(r["lo"]) == pytest.approx(r["hi"])
    assert r["slope"] == pytest.approx(scipy.stats.linregress([10, 16, 22], [1, 2, 4]).slope)
    assert r["means"] == pytest.approx([1.0, 2.0, 4.0]) and r["p"] == pytest.approx(1 / 300)
    assert (r["n_subjects"], r["n_pairs"]) == (3, 12)


def test_trend_draws_the_pairs_once_for_every_size():
    """Per-pair differences e_i + c_k: a pair's own effect e_i is the same at every size (the same
    base slice and field direction). Drawing the pairs once per resample for all sizes adds the
    same weighted mean of e to every m_k, which leaves the slope unchanged: a zero-width
    interval, although each size's own interval (hierarchical_bootstrap) is wide."""
    ids = _ids()
    rng = np.random.default_rng(2)
    e = dict(zip(ids, 3.0 * rng.standard_normal(len(ids))))
    zero = {i: 0.0 for i in ids}
    pts = [(x, {i: e[i] + 0.1 * x for i in ids}, zero) for x in (10.0, 22.0, 34.0)]
    r = trend_bootstrap(pts, n_boot=500)
    assert r["lo"] == pytest.approx(0.1) == pytest.approx(r["hi"])
    one = hierarchical_bootstrap([e[i] for i in ids], np.zeros(len(ids)),
                                 [pair_levels(i)[0] for i in ids], n_boot=500)
    assert one["hi"] - one["lo"] > 1.0


def test_trend_resamples_each_size_s_seeds_on_their_own():
    """Two sizes x = 0, 1 and no pair variation; side a has two seeds at ±δ around its mean at
    each size. A resample's mean at size k is c_k + δ·u_k with u_k = −1, 0, +1 with probability
    ¼, ½, ¼, independent between the sizes (different training runs), so the slope is
    (c_1 − c_0) + δ·(u_1 − u_0): −2δ and +2δ each with probability 1/16 > 2.5 %, and the 95 %
    interval is exactly (c_1 − c_0) ± 2δ. (Seeds drawn once for both sizes would give a point.)"""
    ids, d = _ids(), 0.5
    zero = {i: 0.0 for i in ids}
    pts = [(x, [{i: c + d for i in ids}, {i: c - d for i in ids}], zero)
           for x, c in ((0.0, 1.0), (1.0, 3.0))]
    r = trend_bootstrap(pts, n_boot=4000)
    assert r["slope"] == pytest.approx(2.0)
    assert r["lo"] == pytest.approx(2.0 - 2 * d) and r["hi"] == pytest.approx(2.0 + 2 * d)


def test_trend_refuses_one_size_or_other_pairs_and_is_deterministic():
    ids = _ids()
    a = {i: 1.0 for i in ids}
    with pytest.raises(ValueError, match="two different x"):
        trend_bootstrap([(16, a, a), (16.0, a, a)])
    other = {i.replace("s2021", "s7"): 1.0 for i in ids}
    with pytest.raises(ValueError, match="x = 22 was scored on other test pairs"):
        trend_bootstrap([(16, a, a), (22, other, other)])
    rng = np.random.default_rng(4)
    pts = [(x, {i: rng.standard_normal() for i in ids}, a) for x in (10, 16, 22)]
    assert trend_bootstrap(pts, n_boot=300, seed=3) == trend_bootstrap(pts, n_boot=300, seed=3)
