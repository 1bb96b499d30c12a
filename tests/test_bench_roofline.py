"""The benchmark's roofline: the byte and FLOP counts, the bound formula, and that the printout
runs. (Benchmarks are scripts: nothing here checks a speed.)"""
import numpy as np
import pytest

import regnp  # noqa: F401
from regnp.bench import machine, roofline
from regnp.bench.bench import UNET_CONVS, _conv_flops, main
from regnp.nn.unet import UNet
from regnp.ops.conv import Workspace, conv2d_backward, conv2d_forward


def _fake_machine(peak=100.0, bw=10.0, llc=0):
    return machine.Machine(cpu="test CPU", cores=2, threads=2, sgemm_gflops=peak, sgemm_n=8,
                           fma_gflops=peak / 2, copy_numpy_gbs=bw, copy_numba_gbs=bw / 2,
                           copy_mb=1.0, caches=((3, "Unified", llc, 2),))


def test_conv3x3_bytes_and_flops_by_hand():
    # stride 1, N=2, C=3 -> Co=5 at 7x10, LeakyReLU fused. rows_per_job: W < 64 gives R = 8,
    # halved to 4 so that there are >= 4 jobs (2 images x 2 row blocks): J = 4.
    isz = 4
    X = 2 * 3 * 7 * 10 * isz                  # 1680: x (and dx)
    Y = 2 * 5 * 7 * 10 * isz                  # 2800: out (and dout, and y read as the mask)
    wts = 5 * 3 * 9 * isz                     # 540
    xt = 4 * 3 * (4 + 2) * (10 + 2) * isz     # 3456: forward tiles, J x C x (R+2)(W+2)
    gt = 4 * 5 * (4 + 2) * (10 + 2) * isz     # 5760: gradient tiles, J x Co x (R+2)(W+2)
    dwp = 4 * 8 * 3 * 9 * isz                 # 3456: J x (Co rounded up to 2 blocks of 4) x C x 9
    # (the NaN/Inf check of x and of dout happens in the tile copy: no separate scan)
    c = roofline.conv3x3_cost(2, 3, 5, 7, 10, stride=1, act=True)
    assert c.bytes_fwd == X + xt + wts + Y == 8476
    assert c.bytes_bwd == 2 * Y + gt + wts + X + xt + gt + dwp == 26252
    assert c.flops_fwd == 2 * 2 * 5 * 3 * 7 * 10 * 9 == 37800
    assert c.flops_bwd == 2 * c.flops_fwd
    # without the activation the backward does not read y
    assert roofline.conv3x3_cost(2, 3, 5, 7, 10, act=False).bytes_bwd == c.bytes_bwd - Y

    # the buffers the count assumes are the ones the code allocates
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 10), dtype=np.float32)
    w = rng.standard_normal((5, 3, 3, 3), dtype=np.float32)
    work = Workspace()
    out, cache = conv2d_forward(x, w, np.zeros(5, np.float32), 1, 1, act=0.2, work=work)
    conv2d_backward(np.ones_like(out), cache)
    terms = dict(c.fwd + c.bwd)
    assert work.get("xtiles", (4, 3, 72), np.float32).nbytes == terms["x tiles (write)"] == xt
    assert work._bufs["gtiles"].nbytes == terms["dz tiles (write)"] == gt
    assert work._bufs["dw_partial3"].nbytes == terms["dw partials"] == dwp
    assert out.nbytes == terms["out"] == Y


def test_stride2_and_copy_layers_count_their_arrays():
    c = roofline.conv3x3_cost(2, 4, 8, 9, 6, stride=2)          # Ho, Wo = 5, 3
    terms = dict(c.fwd + c.bwd)
    assert terms["finite check x"] == 2 * 4 * 9 * 6 * 4         # a separate scan on this path
    assert terms["out"] == 2 * 8 * 5 * 3 * 4 and terms["dx"] == 2 * 4 * 9 * 6 * 4
    assert terms["dz planes (write)"] == 2 * 8 * (5 + 2) * (3 + 2) * 4
    assert c.flops_fwd == 2 * 2 * 8 * 4 * 5 * 3 * 9
    X = 2 * 3 * 4 * 5 * 4
    up = roofline.upsample_nearest_cost(2, 3, 4, 5)
    assert up.bytes_fwd == 6 * X and up.bytes_bwd == 9 * X and up.flops_fwd == 0
    cat = roofline.concat_cost(2, (3, 1), 4, 5)
    assert cat.bytes_fwd == cat.bytes_bwd == 3 * 2 * 4 * 4 * 5 * 4


def test_bound_is_the_slower_of_compute_and_memory():
    # 2 GFLOP over 100 MB at 100 GFLOP/s and 10 GB/s: 20 ms of arithmetic, 10 ms of traffic
    assert roofline.bound_seconds(2e9, 1e8, 100.0, 10.0) == pytest.approx(0.02)
    # 0.5 GFLOP over 1 GB: memory-bound, 0.1 s
    assert roofline.bound_seconds(5e8, 1e9, 100.0, 10.0) == pytest.approx(0.1)
    assert roofline.bound_seconds(0.0, 1e9, 100.0, 10.0) == pytest.approx(0.1)
    # the same bound as a rate: min(peak, intensity x bandwidth)
    assert roofline.attainable_gflops(0.5, 100.0, 10.0) == pytest.approx(5.0)
    assert roofline.attainable_gflops(20.0, 100.0, 10.0) == pytest.approx(100.0)
    for f, b in [(2e9, 1e8), (5e8, 1e9), (3e8, 7e6)]:
        rate = f / roofline.bound_seconds(f, b, 100.0, 10.0) / 1e9
        assert rate == pytest.approx(roofline.attainable_gflops(f / b, 100.0, 10.0))
    with pytest.raises(ValueError, match="must be > 0"):
        roofline.bound_seconds(1.0, 1.0, 0.0, 10.0)
    m = _fake_machine(peak=100.0, bw=10.0)
    assert (m.peak_gflops, m.bandwidth_gbs, m.ridge) == (100.0, 10.0, 10.0)


def test_unet_layers_follow_the_network():
    # VoxelMorph-2 widths, joins run as three ops: upsampling, concatenation, conv
    rows = roofline.unet_layers(UNet(fuse_joins=False), 2, 256, 256)
    kinds = [r.kind for r in rows]
    assert kinds.count("conv") == 12 and kinds.count("up") == 4
    assert kinds.count("concat") == 4 and kinds.count("add") == 4
    # the convolutions' FLOPs agree with the benchmark's own table of the same layers
    conv_flops = sum(r.cost.flops for r in rows if r.kind == "conv")
    assert conv_flops == sum(_conv_flops(2, ci, co, H // s, H // s, 3)[1]
                             for _, ci, co, H, s in UNET_CONVS)
    names = [r.name for r in rows]
    assert "concat3 32+2 @256x256" in names and "flow 16->2 @256x256" in names
    # joins read in place (the default): the up and concat rows are gone, the 4 convs after
    # them are join convs with the same FLOPs and fewer bytes than up + concat + conv
    fused = roofline.unet_layers(UNet(), 2, 256, 256)
    fk = [r.kind for r in fused]
    assert fk.count("join") == 4 and fk.count("conv") == 8 and "up" not in fk
    assert sum(r.cost.flops_fwd for r in fused) == sum(r.cost.flops_fwd for r in rows)
    by_name = {r.name: r for r in rows}
    j = {r.name: r for r in fused}["dec5 32^+2->16 @256x256"]
    three = [by_name[n] for n in ("up3 32 @128x128", "concat3 32+2 @256x256",
                                  "dec5 34->16 @256x256")]
    assert j.cost.nbytes < sum(r.cost.nbytes for r in three) - 100e6
    meta = roofline.unet_layers(UNet(upsample="transpose"), 2, 64, 64)
    assert [r.kind for r in meta].count("convT") == 4 and "concat" not in [r.kind for r in meta]


def test_join_bytes_by_hand():
    # a (2, 3, 5, 7) upsampled x2 to 10x14, joined with s (2, 2, 10, 14), 3x3 conv to 5
    # channels. rows_per_job(2, 10, 14, 5) = 8 (W < 64; already even and 2 x 2 = 4 jobs): J = 4
    isz = 4
    A, S = 2 * 3 * 5 * 7 * isz, 2 * 2 * 10 * 14 * isz          # 840, 2240
    Y = 2 * 5 * 10 * 14 * isz                                   # 5600
    xt = 4 * 5 * 10 * 16 * isz                                  # 12800: J x 5 x (R+2)(W+2)
    gt = 4 * 5 * 10 * 16 * isz                                  # 12800: J x Co x (R+2)(W+2)
    wts = 5 * 5 * 9 * isz
    dwp = 4 * 8 * 5 * 9 * isz
    c = roofline.skip_conv3x3_cost(2, 3, 2, 5, 10, 14, up=2, act=True)
    assert c.bytes_fwd == (A + S) + xt + wts + Y
    assert c.bytes_bwd == 2 * Y + gt + wts + (A + S) + xt + gt + dwp
    # the tiles it counts are the ones the fused forward allocates
    from regnp.nn.layers import Conv2d
    conv = Conv2d(5, 5, act=0.2)
    rng = np.random.default_rng(0)
    out = conv.forward_join(rng.standard_normal((2, 3, 5, 7), dtype=np.float32),
                            rng.standard_normal((2, 2, 10, 14), dtype=np.float32), 2)
    conv.backward_join(np.ones_like(out))
    assert conv.work._bufs["xtiles"].nbytes == xt and conv.work._bufs["gtiles"].nbytes == gt


def test_roofline_rows_mark_cache_resident_layers():
    layers = roofline.unet_layers(UNet(enc=(4,), dec=(4, 4, 4)), 2, 8, 6)
    rows = roofline.roofline_rows(layers, _fake_machine(llc=2 ** 20), repeats=1, progress=False)
    assert len(rows) == len(layers) and all(r["fits_cache"] and r["ms"] > 0 for r in rows)
    text = roofline.format_roofline(rows, _fake_machine(llc=2 ** 20))
    assert "sum of the layers" in text and "* moves less than the last-level cache" in text


def test_cache_sizes_from_sysfs(tmp_path):
    for i, (lvl, kind, size, shared) in enumerate([(1, "Data", "32K", "0"),
                                                   (3, "Unified", "32768K", "0-1")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, val in (("level", lvl), ("type", kind), ("size", size),
                          ("shared_cpu_list", shared)):
            (d / name).write_text(f"{val}\n")
    assert machine.cache_sizes(str(tmp_path)) == ((1, "Data", 32768, 1),
                                                  (3, "Unified", 32 * 2 ** 20, 2))
    assert machine._parse_size("512 KiB (2 instances)") == 512 * 1024


def test_machine_and_roofline_printouts_run(capsys):
    m = main(["--machine", "--quick"])
    out = capsys.readouterr().out
    assert m.cpu in out and "ridge point" in out and m.peak_gflops > 0 and m.bandwidth_gbs > 0
    rows, step_ms = main(["--roofline", "--quick", "--size", "32", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "enc0 2->16 s2 @32x32" in out and "whole training step" in out and step_ms > 0
    assert len(rows) == 16                      # vm2: 8 convs, 4 join convs, 4 skip adds


def test_unfused_table_and_joins_ab_run(capsys):
    rows, _ = main(["--roofline", "--unfused", "--quick", "--size", "32", "--repeats", "1"])
    assert [r["name"] for r in rows].count("concat3 32+2 @32x32") == 1 and len(rows) == 24
    assert "as upsample + concatenate + conv" in capsys.readouterr().out
    ab = main(["--joins-ab", "--quick", "--size", "32", "--rounds", "2"])
    assert [(r["model"], r["what"]) for r in ab] == [("metareg", "step"), ("metareg", "inference"),
                                                     ("vm2", "step"), ("vm2", "inference")]
    assert all(r["fused_ms"] > 0 and r["unfused_ms"] > 0 for r in ab)
    assert "ratio = in place / three ops" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["--roofline", "--quick", "--size", "30"], "not divisible by 2^4"),
    (["--roofline", "--quick", "--model", "dirnet"], "has no U-Net"),
    (["--roofline", "--quick", "--model", "nope"], "choose one of"),
    (["--quick", "--size", "40"], "not divisible by 2^4"),
    (["--roofline", "--size", "0"], "--size must be a positive integer"),
])
def test_roofline_bad_options_are_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert capsys.readouterr().out == ""                 # refused before measuring anything
