"""Register your own pair of images with a trained network (or the classical RKHS solver).

    python -m regnp.register --fixed F.png --moving M.png --checkpoint runs/x/checkpoint.npz \\
                             --out result/ [--fixed-mask Fm.png --moving-mask Mm.png]

Inputs: 2-D grayscale PNG (8/16-bit; colour is converted to gray with a warning) or ``.npy``
arrays, both of the same size. Float ``.npy`` images are used as they are; integer, boolean and
float16 ones are converted to float with a warning; complex ones, NaN/Inf and constant images are
refused. Intensities are mapped to [0, 1] per image (min–max), as in training. Sizes need not be
divisible by 2^levels: the pair is zero-padded at the bottom/right to the next multiple (the
network sees background there) and every output is cropped back. Masks are integer label maps
(0 = background; see :func:`as_mask`); Dice is scored per label of the fixed mask. Every output
destination is checked before anything is computed, so a refused run writes nothing.

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
import time
import warnings
from pathlib import Path

import numpy as np

from ._cli import (CLIError, check_inputs_kept, check_output_folder, finite_float, positive_int,
                   run_cli)

# Every file register writes into --out (all checked before anything is computed or written).
OUTPUTS = ("displacement.npy", "warped.npy", "warped.png", "jacobian.npy", "jacobian.png",
           "registration.png", "result.json")


def read_image(path, kind="image"):
    """A 2-D array from PNG or NPY (colour PNGs converted to gray with a warning).

    ``kind`` is "image" or "mask" (only used in messages and for the colour conversion). The
    dtype is returned as stored; :func:`as_image` and :func:`as_mask` check and convert it.
    """
    from .data.folders import read_png
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{kind} {str(path)!r} is a folder, not a file; give a .png or .npy file")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {str(path)!r} not found")
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"cannot read {path} as a .npy array ({e})") from None
        if arr.ndim == 3 and arr.shape[-1] in (3, 4) and kind == "image":
            warnings.warn(f"{path.name} looks like a colour image {arr.shape}; using the mean of "
                          f"its colour channels as gray")
            arr = arr[..., :3].mean(-1) if arr.dtype.kind in "biuf" else arr
        if arr.ndim != 2:
            raise ValueError(f"{path.name} has shape {arr.shape}; expected a 2-D {kind} (H, W)")
        if min(arr.shape) < 2:
            raise ValueError(f"{path.name} is {arr.shape[0]}x{arr.shape[1]}; a {kind} needs at "
                             f"least 2 pixels along each axis")
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


def as_image(arr, name, from_png=False):
    """Check one image and map it to float32 in [0, 1] (min–max per image).

    Float32/float64 arrays and PNG integers are used as they are. Other NPY dtypes are converted
    with a warning that says so: integers and booleans to float, float16 to float32 (a lossless
    widening). Complex values are an error (which part is the intensity?), as are strings and
    objects, NaN/Inf, and a constant image (nothing to register: every field fits it equally).
    """
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} holds complex values ({arr.dtype}); registration needs real "
                        f"intensities: save np.abs(x) (magnitude) or x.real instead")
    if kind not in "biuf":
        raise TypeError(f"{name} has dtype {arr.dtype}, not numbers; save the image as a numeric "
                        f"array (float32 is best)")
    if not from_png and (kind in "biu" or arr.dtype == np.float16):
        what = {"b": "a boolean array; using it as a 0/1 image",
                "i": f"integer ({arr.dtype}); converting it to float",
                "u": f"integer ({arr.dtype}); converting it to float"}.get(kind, "float16; "
                                                                        "converting it to float32")
        warnings.warn(f"{name} is {what} (intensities are then min–max normalised to [0, 1])")
    img = arr.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(img)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); fix or mask them in the file "
                         f"(e.g. np.nan_to_num) before registering")
    lo, hi = img.min(), img.max()
    if not hi > lo:
        raise ValueError(f"{name} is constant (every pixel is {lo:g}): there is nothing to "
                         f"register; check that the right file was given")
    return ((img - lo) / (hi - lo)).astype(np.float32)


def as_mask(arr, name):
    """Check one label map and return it as int64: 0 = background, labels are integers ≥ 1.

    Booleans are labels 0/1. Float masks holding whole numbers are converted with a warning;
    NaN/Inf, fractional values (a bilinearly resampled mask?), negative labels and complex or
    non-numeric arrays are errors.
    """
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"mask {name} has dtype {arr.dtype}; a mask is an integer label map "
                        f"(0 = background, 1, 2, ... = structures)")
    if kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"mask {name} contains {bad} NaN/Inf value(s); a mask is an integer "
                             f"label map (0 = background)")
        frac = arr[arr != np.round(arr)]
        if frac.size:
            raise ValueError(f"mask {name} has non-integer values (e.g. {float(frac.flat[0]):g}); "
                             f"a mask is an integer label map (resample masks by nearest "
                             f"neighbour, never bilinearly)")
        warnings.warn(f"mask {name} is stored as {arr.dtype}; using its values as integer labels")
    labels = arr.astype(np.int64)
    if labels.size and labels.min() < 0:
        neg = np.unique(labels[labels < 0])
        raise ValueError(f"mask {name} has negative label value(s) {neg[:5].tolist()}; labels "
                         f"must be ≥ 0 (0 = background)")
    return labels


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


def load_pair(fixed_path, moving_path):
    """Read, check and normalise the two images; returns (fixed, moving) float32 (H, W)."""
    raw = [read_image(fixed_path), read_image(moving_path)]
    (h0, w0), (h1, w1) = raw[0].shape, raw[1].shape
    if (h0, w0) != (h1, w1):
        raise ValueError(f"fixed is {h0}x{w0} but moving is {h1}x{w1}; resample them to one grid "
                         f"first")
    return tuple(as_image(arr, Path(path).name, from_png=Path(path).suffix.lower() == ".png")
                 for arr, path in zip(raw, (fixed_path, moving_path)))


def load_masks(fixed_mask_path, moving_mask_path, shape):
    """Read and check the two label maps; returns (fixed mask, moving mask, labels to score).

    Dice is scored per label present in the fixed mask (README, "Conventions"). Warnings, not
    errors, for what is legal but probably not meant: a fixed mask with no labels (nothing to
    score: the labels are None), fixed labels the moving mask lacks (Dice 0 for them), moving
    labels the fixed mask lacks (not scored).
    """
    fm = as_mask(read_image(fixed_mask_path, "mask"), Path(fixed_mask_path).name)
    mm = as_mask(read_image(moving_mask_path, "mask"), Path(moving_mask_path).name)
    if fm.shape != shape or mm.shape != shape:
        raise ValueError(f"masks must have the image size {shape}; got {fm.shape} and {mm.shape}")
    in_fixed = [int(v) for v in np.unique(fm) if v != 0]
    in_moving = [int(v) for v in np.unique(mm) if v != 0]
    if not in_fixed:
        warnings.warn(f"the fixed mask {Path(fixed_mask_path).name} has no labels (every pixel "
                      f"is 0); Dice is scored per label of the fixed mask, so it is not reported")
        return fm, mm, None
    lacking = [v for v in in_fixed if v not in in_moving]
    if lacking:
        warnings.warn(f"label(s) {lacking} of the fixed mask are absent from the moving mask "
                      f"{Path(moving_mask_path).name}: they score Dice 0 before and after; check "
                      f"that the masks use the same label values")
    extra = [v for v in in_moving if v not in in_fixed]
    if extra:
        warnings.warn(f"label(s) {extra} of the moving mask are absent from the fixed mask and "
                      f"are not scored (Dice is per label of the fixed mask)")
    return fm, mm, in_fixed


def pyramid_levels(shape, most=3, coarsest=8):
    """Levels of the solver's coarse-to-fine pyramid for an image of ``shape``: ``most`` (the
    solver's default), fewer for small images, so that the coarsest level keeps ≥ ``coarsest``
    pixels per side. Images below that size cannot be solved at all."""
    side = min(shape)
    if side < coarsest:
        raise CLIError(f"--method rkhs needs images of at least {coarsest}×{coarsest} pixels, got "
                       f"{shape[0]}×{shape[1]}")
    levels = most
    while levels > 1 and side // 2 ** (levels - 1) < coarsest:
        levels -= 1
    return levels


def check_options(a):
    """Reject unusable options before reading any file."""
    positive_int("--iterations", a.iterations)
    finite_float("--kernel-width", a.kernel_width, strictly_positive=True)
    finite_float("--lambda", a.lam)
    if a.method == "network" and not a.checkpoint:
        raise CLIError("--checkpoint is required with --method network (train one with python "
                       "-m regnp.train, or use --method rkhs, which needs no training)")
    if a.method == "rkhs" and a.checkpoint:
        warnings.warn("--checkpoint is ignored with --method rkhs (the classical solver)")
    if bool(a.fixed_mask) != bool(a.moving_mask):
        raise CLIError("give both --fixed-mask and --moving-mask to report Dice")
    check_output_folder("--out", a.out, OUTPUTS)
    check_inputs_kept("--out", a.out, OUTPUTS, (a.fixed, a.moving, a.fixed_mask, a.moving_mask))


def write_outputs(out, fixed, moving, warped, u, det, result):
    """Write every file of :data:`OUTPUTS` into ``out``."""
    import json
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


def run(a, state):
    """The registration behind :func:`main` (``a``: parsed options)."""
    check_options(a)
    fixed, moving = load_pair(a.fixed, a.moving)
    if a.method == "rkhs" and a.gram == "dense":
        from .rkhs.gram import MAX_DENSE_PIXELS
        H, W = fixed.shape
        if H * W > MAX_DENSE_PIXELS:
            side = int(MAX_DENSE_PIXELS ** 0.5)
            raise CLIError(f"--gram dense builds the (H·W)² Gram matrix, {(H * W) ** 2 * 8 / 1e9:.1f} "
                           f"GB for this {H}×{W} image (at most {MAX_DENSE_PIXELS} pixels, "
                           f"{side}×{side}); use --gram auto, kronecker or fft (exact and fast)")
    masks = load_masks(a.fixed_mask, a.moving_mask, fixed.shape) if a.fixed_mask else None
    from .metrics import dice, folding_stats, jacobian_determinant
    from .ops.warp import warp_forward, warp_nearest
    if a.method == "network":
        from ._checks import check_memory, estimate_forward_bytes
        from .checkpoint import load_model
        model, _ = load_model(a.checkpoint)
        f = 2 ** model.levels
        padded = tuple(-(-n // f) * f for n in fixed.shape)
        check_memory(estimate_forward_bytes(model, padded),
                     f"registering a {fixed.shape[0]}×{fixed.shape[1]} pair with this network",
                     "register a downsampled pair (or crops) instead")
        u, seconds = register_with_model(model, fixed, moving)
    else:
        from .rkhs.solver import register_rkhs
        t0 = time.perf_counter()
        res = register_rkhs(fixed, moving, kernel=a.kernel, width=a.kernel_width, gram=a.gram,
                            lam=a.lam, max_iter=a.iterations, levels=pyramid_levels(fixed.shape),
                            progress=True)
        seconds = time.perf_counter() - t0
        u = np.ascontiguousarray(res.u[0], dtype=np.float32)          # (2, H, W)
    warped = warp_forward(moving[None, None], u[None])[0][0, 0]
    det = jacobian_determinant(u)
    fold = folding_stats(u)
    result = {"seconds": seconds, "pct_positive_jacobian": float(fold["pct_positive"]),
              "min_jacobian": float(fold["min_det"]), "method": a.method}
    if masks is not None and masks[2] is not None:
        fm, mm, labels = masks
        wm = warp_nearest(mm[None, None].astype(np.int32), u[None])[0, 0]
        result["dice_before"] = dice(fm, mm, labels=labels)
        result["dice_after"] = dice(fm, wm, labels=labels)
    out = Path(a.out)
    state["writing"] = out
    write_outputs(out, fixed, moving, warped, u, det, result)
    state["writing"] = None
    msg = (f"registered in {seconds:.3f} s; |J| > 0 on {result['pct_positive_jacobian']:.2f} % of "
           f"pixels (min {result['min_jacobian']:.3f})")
    if "dice_after" in result:
        msg += (f"; Dice {100 * result['dice_before']['mean']:.2f} → "
                f"{100 * result['dice_after']['mean']:.2f} %")
    print(msg)
    print(f"outputs in {out}/ (displacement.npy: (2, H, W) pixels, channel 0 = rows)")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m regnp.register", description=__doc__.splitlines()[0])
    p.add_argument("--fixed", required=True, help="fixed image (.png or .npy)")
    p.add_argument("--moving", required=True, help="moving image (.png or .npy)")
    p.add_argument("--checkpoint", default=None,
                   help="trained network: a regnp.train checkpoint .npz or its run folder")
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
    p.add_argument("--fixed-mask", default=None, help="integer label map of the fixed image "
                                                      "(.png or .npy; 0 = background)")
    p.add_argument("--moving-mask", default=None, help="label map of the moving image")
    p.add_argument("--out", required=True, help="output folder (existing outputs are replaced)")
    a = p.parse_args(argv)
    state = {"writing": None}

    def interrupted():
        if state["writing"] is not None:
            return f"the outputs in {state['writing']}/ may be incomplete; run again"
        return "nothing was written"
    return run_cli(lambda: run(a, state), interrupted)


if __name__ == "__main__":
    main()
