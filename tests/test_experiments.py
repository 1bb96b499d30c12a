"""The experiment scripts run end to end (tiny settings; real data needed)."""
import json


def test_transfer_experiment_runs(tmp_path, data_root):
    from regnp.experiments import transfer
    res = transfer(steps=3, size=32, pairs=2, data_root=data_root, out=tmp_path / "run",
                   fig_dir=tmp_path, progress=False)
    assert set(res) == {"phantom->phantom", "phantom->chaos", "chaos->phantom", "chaos->chaos"}
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["results"]["phantom->chaos"]["summary"]["n_pairs"] == 2
    assert (tmp_path / "transfer_phantom_to_chaos.png").stat().st_size > 10000


def test_rkhs_comparison_runs(tmp_path):
    from regnp.experiments import rkhs_comparison
    res = rkhs_comparison(steps=2, size=32, pairs=2, out=tmp_path / "run", fig_dir=tmp_path,
                          progress=False)
    assert len(res) == 5 and all(r["n_pairs"] == 2 for r in res.values())
    assert (tmp_path / "rkhs_exact_vs_conv13_vs_solver.png").stat().st_size > 10000


def test_ablation_runs(tmp_path):
    from regnp.experiments import ablation
    res = ablation(steps=2, size=32, pairs=2, out=tmp_path / "run", progress=False)
    assert len(res) == 3 and all(r["n_pairs"] == 2 for r in res.values())
