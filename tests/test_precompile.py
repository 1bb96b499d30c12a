"""Compiling ahead: the families split between processes without overlap, and compile."""
import pytest

from process_helpers import run_main
from regnp import precompile as pc


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shares_split_every_family_once(count):
    shares = [pc.share(k, count) for k in range(count)]
    flat = [t for s in shares for t in s]
    assert sorted(flat) == sorted(pc.tasks()) and len(set(flat)) == len(flat)
    loads = [sum(pc.FAMILIES[name][1] for name, _ in s) for s in shares]
    biggest = max(cost for _, cost in pc.FAMILIES.values())
    assert max(loads) - min(loads) <= biggest          # greedy: within one family of even
    with pytest.raises(ValueError, match="index must be in"):
        pc.share(count, count)


def test_a_family_compiles_and_the_command_line_runs(tmp_path):
    seconds = pc.precompile([("GEMM convolutions", "float64")], progress=False)
    assert list(seconds) == [("GEMM convolutions", "float64")]
    code, out, err = run_main(pc.main, ["--dtype", "float32", "--jobs", "2"], tmp_path)
    assert code == 0, err
    assert "compiled in" in out and not list(tmp_path.iterdir())   # writes nothing here
