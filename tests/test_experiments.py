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
