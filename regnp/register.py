"""Register your own pair of images with a trained network (or the classical RKHS solver).

    python -m regnp.register --fixed F.png --moving M.png --checkpoint runs/x/checkpoint.npz \\
                             --out result/ [--fixed-mask Fm.png --moving-mask Mm.png]

Inputs: 2-D grayscale PNG (8/16-bit; colour is converted to gray with a warning) or ``.npy``
arrays, both of the same size. Intensities are mapped to [0, 1] per image (min–max), as in
training. Sizes need not be divisible by 2^levels: the pair is zero-padded at the bottom/right to
the next multiple (the network sees background there) and every output is cropped back.

Outputs in ``--out``:

* ``warped.png`` / ``warped.npy`` — the moving image resampled onto the fixed image's grid;
* ``displacement.npy`` — float32 ``(2, H, W)`` in pixels; channel 0 = row (y) offset, channel 1 =
  column (x) offset; ``warped[i, j] = moving[i + u[0, i, j], j + u[1, i, j]]`` (bilinear);
* ``jacobian.npy`` / ``jacobian.png`` — det of the Jacobian of φ(p) = p + u(p) (≤ 0 = folding);
* ``registration.png`` — fixed, moving, warped, deformation grid, |F − M| and |F − warped|;
* ``result.json`` — folding statistics, time, and Dice when masks are given (the moving mask is
  warped by nearest neighbour).
"""
import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .metrics import dice, folding_stats, jacobian_determinant
from .ops.warp import warp_forward, warp_nearest


def read_image(path, kind="image"):
    """A 2-D array from PNG or NPY (colour PNGs converted to gray with a warning)."""
    from .data.folders import read_png
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} not found")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"cannot read {path} as a .npy array ({e})") from None
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and kind == "image":
            warnings.warn(f"{path.name} looks like a colour image {arr.shape}; using the mean of "
                          f"its colour channels as gray")
            arr = arr[..., :3].mean(-1)
        if arr.ndim != 2:
            raise ValueError(f"{path.name} has shape {arr.shape}; expected a 2-D image (H, W)")
        return arr
    if path.suffix.lower() != ".png":
        raise ValueError(f"{path.name}: unsupported file type; give a .png or .npy file")
    if kind == "image":
        from PIL import Image
        try:
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
                    warnings.warn(f"{path.name} is a colour ({im.mode}) PNG; converting it to "
                                  f"grayscale")
        except OSError:
            pass                                          # read_png reports it properly
    return read_png(path, kind=kind)


def _to_unit(img):
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise ValueError("the image contains NaN/Inf values")
    lo, hi = img.min(), img.max()
    return ((img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)).astype(np.float32)


def pad_to_multiple(img, f):
    """Zero-pad (H, W) at the bottom/right to multiples of f; returns (padded, (H, W))."""
    H, W = img.shape
    Hp, Wp = -(-H // f) * f, -(-W // f) * f
    return np.pad(img, ((0, Hp - H), (0, Wp - W))), (H, W)


def register_with_model(model, fixed, moving):
    """fixed, moving: (H, W) float32 in [0, 1]. Returns (u (2,H,W), seconds)."""
    f = 2 ** model.levels
    Fp, (H, W) = pad_to_multiple(fixed, f)
    Mp, _ = pad_to_multiple(moving, f)
    dt = next(iter(model.named_parameters()))[1].dtype
    Fp, Mp = Fp[None, None].astype(dt), Mp[None, None].astype(dt)
    model.forward(Fp, Mp)                                 # warm-up (Numba compilation)
    t0 = time.perf_counter()
    _, u, _ = model.forward(Fp, Mp)
    return np.ascontiguousarray(u[0, :, :H, :W], dtype=np.float32), time.perf_counter() - t0


def save_figure(path, fixed, moving, warped, u, det):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(2, 3, figsize=(12, 8))
    for a, img, t in ((ax[0, 0], fixed, "(a) fixed"), (ax[0, 1], moving, "(b) moving"),
                      (ax[0, 2], warped, "(c) registered moving")):
        a.imshow(img, cmap="gray", vmin=0, vmax=1)
        a.set_title(t)
    H, W = fixed.shape
    step = max(4, min(H, W) // 32)
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    py, px = yy + u[0], xx + u[1]                         # φ(p) = p + u(p)
    ax[1, 0].imshow(np.zeros_like(fixed), cmap="gray", vmin=0, vmax=1)
    for i in range(0, H, step):
        ax[1, 0].plot(px[i], py[i], "y-", lw=0.6)
    for j in range(0, W, step):
        ax[1, 0].plot(px[:, j], py[:, j], "y-", lw=0.6)
    if np.any(det <= 0):
        fy, fx = np.nonzero(det <= 0)
        ax[1, 0].plot(fx, fy, "r.", ms=1)
    ax[1, 0].set_xlim(0, W - 1)
    ax[1, 0].set_ylim(H - 1, 0)
    ax[1, 0].set_title("(d) deformation φ = id + u (red: det ≤ 0)")
    d0, d1 = np.abs(fixed - moving), np.abs(fixed - warped)
    vmax = max(d0.max(), 1e-6)
    ax[1, 1].imshow(d0, cmap="magma", vmin=0, vmax=vmax)
    ax[1, 1].set_title(f"(e) |F − M|, mean {d0.mean():.4f}")
    ax[1, 2].imshow(d1, cmap="magma", vmin=0, vmax=vmax)
    ax[1, 2].set_title(f"(f) |F − warped|, mean {d1.mean():.4f}")
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m regnp.register", description=__doc__.splitlines()[0])
    p.add_argument("--fixed", required=True, help="fixed image (.png or .npy)")
    p.add_argument("--moving", required=True, help="moving image (.png or .npy)")
    p.add_argument("--checkpoint", default=None, help="trained network (regnp.train checkpoint)")
    p.add_argument("--method", default="network", choices=("network", "rkhs"),
                   help="network (needs --checkpoint) or rkhs: the classical solver of eq. 6")
    p.add_argument("--kernel", default="gaussian",
                   help="rkhs: gaussian | wendland | matern32 | exponential | imq")
    p.add_argument("--kernel-width", type=float, default=16.0, help="rkhs: kernel width (px)")
    p.add_argument("--gram", default="auto", choices=("auto", "kronecker", "fft", "dense", "conv13"),
                   help="rkhs: how K·α is computed (exact forms, or the 13×13 approximation)")
    p.add_argument("--lambda", dest="lam", type=float, default=1e-4,
                   help="rkhs: regularisation weight of the RKHS norm")
    p.add_argument("--iterations", type=int, default=200, help="rkhs: L-BFGS iterations per level")
    p.add_argument("--fixed-mask", default=None)
    p.add_argument("--moving-mask", default=None)
    p.add_argument("--out", required=True, help="output folder")
    a = p.parse_args(argv)
    try:
        fixed = _to_unit(read_image(a.fixed))
        moving = _to_unit(read_image(a.moving))
        if fixed.shape != moving.shape:
            raise ValueError(f"fixed is {fixed.shape[0]}x{fixed.shape[1]} but moving is "
                             f"{moving.shape[0]}x{moving.shape[1]}; resample them to one grid first")
        if a.method == "network":
            if not a.checkpoint:
                raise ValueError("--checkpoint is required with --method network "
                                 "(train one with python -m regnp.train)")
            from .checkpoint import load_model
            model, _ = load_model(a.checkpoint)
            u, seconds = register_with_model(model, fixed, moving)
        else:
            from .rkhs.solver import register_rkhs
            t0 = time.perf_counter()
            res = register_rkhs(fixed, moving, kernel=a.kernel, width=a.kernel_width, gram=a.gram,
                                lam=a.lam, max_iter=a.iterations, progress=True)
            seconds = time.perf_counter() - t0
            u = np.ascontiguousarray(res.u[0], dtype=np.float32)          # (2, H, W)
        warped = warp_forward(moving[None, None], u[None])[0][0, 0]
        det = jacobian_determinant(u)
        fold = folding_stats(u)
        result = {"seconds": seconds, "pct_positive_jacobian": float(fold["pct_positive"]),
                  "min_jacobian": float(fold["min_det"]), "method": a.method}
        if a.fixed_mask and a.moving_mask:
            fm = read_image(a.fixed_mask, "mask")
            mm = read_image(a.moving_mask, "mask")
            if fm.shape != fixed.shape or mm.shape != fixed.shape:
                raise ValueError(f"masks must have the image size {fixed.shape}; got "
                                 f"{fm.shape} and {mm.shape}")
            wm = warp_nearest(mm[None, None].astype(np.int32), u[None])[0, 0]
            result["dice_before"] = dice(fm, mm)
            result["dice_after"] = dice(fm, wm)
        elif a.fixed_mask or a.moving_mask:
            raise ValueError("give both --fixed-mask and --moving-mask to report Dice")
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "displacement.npy", u)
        np.save(out / "warped.npy", warped.astype(np.float32))
        np.save(out / "jacobian.npy", det.astype(np.float32))
        from PIL import Image
        Image.fromarray(np.clip(warped * 255 + 0.5, 0, 255).astype(np.uint8)).save(out / "warped.png")
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        lim = max(1.0, float(np.abs(det - 1).max()))
        plt.imsave(out / "jacobian.png", det, cmap="RdBu", vmin=1 - lim, vmax=1 + lim)
        save_figure(out / "registration.png", fixed, moving, warped, u, det)
        (out / "result.json").write_text(json.dumps(result, indent=1, default=str))
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit(f"error: {e}")
    msg = (f"registered in {seconds:.3f} s; |J| > 0 on {result['pct_positive_jacobian']:.2f} % of "
           f"pixels (min {result['min_jacobian']:.3f})")
    if "dice_after" in result:
        msg += (f"; Dice {100 * result['dice_before']['mean']:.2f} → "
                f"{100 * result['dice_after']['mean']:.2f} %")
    print(msg)
    print(f"outputs in {out}/ (displacement.npy: (2, H, W) pixels, channel 0 = rows)")


if __name__ == "__main__":
    main()
