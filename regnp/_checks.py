"""Input validation shared by every public function.

Every check raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, NaN/Inf,
bad parameter) with a message that says what was wrong *and what to do about it*, so a user never
sees a Numba typing traceback or gets a silently wrong answer.
"""
import numba
import numpy as np
from regnp.ops._fast.threads import run, share

FLOAT_DTYPES = (np.float32, np.float64)


@numba.njit(cache=True, nogil=True)
def _count_nonfinite(part, parts, flat):
    n = 0
    job_lo, job_hi = share(flat.size, part, parts)    # this thread's jobs
    for i in range(job_lo, job_hi):
        v = flat[i]
        if not np.isfinite(v):
            n += 1
    return n


# Below this many entries the scan runs on the calling thread alone (weights, biases, small
# feature maps): a 10k-entry scan takes 1.8 µs, a handoff to another thread 9 µs (a helper still
# polling) to 70–100 µs (one asleep), measured on a 2-vCPU VM.
_PARALLEL_MIN = 1 << 19


def count_nonfinite(x):
    """Number of NaN/Inf entries of a float array (one pass, no temporaries; parallel for big
    arrays)."""
    flat = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    if flat.size < _PARALLEL_MIN:
        return int(_count_nonfinite(0, 1, flat))          # the whole array as one part
    return int(run(_count_nonfinite, flat))


def check_array(name, x, ndim=None, dtype=None, finite=True, shape=None):
    """Validate one float array argument and return it unchanged.

    Inputs:
    - name: the argument's name, used in messages.
    - x: the array.
    - ndim: required number of dimensions (``4`` for ``(N, C, H, W)``), or None.
    - dtype: required dtype (to match another argument), or None for float32/float64.
    - finite: reject NaN/Inf.
    - shape: required shape; ``None`` entries are free.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}; "
                        f"convert it with np.asarray(..., dtype=np.float32)")
    if ndim is not None and x.ndim != ndim:
        layout = {4: " laid out as (N, C, H, W)", 3: " laid out as (C, k, k)", 2: ""}.get(ndim, "")
        raise ValueError(f"{name} must have {ndim} dimensions{layout}, got shape {x.shape}"
                         + ("; add a batch/channel axis with x[None, None]" if ndim == 4 and x.ndim == 2
                            else ""))
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; regnp computes in float32 (or float64 for "
                        f"gradient checks): convert with {name}.astype(np.float32)")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the other inputs are {np.dtype(dtype)}; "
                        f"use one float dtype for all arguments of a call")
    if shape is not None:
        if len(shape) != x.ndim or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} has shape {x.shape}, expected {want}")
    if finite:
        bad = count_nonfinite(x)
        if bad:
            raise ValueError(f"{name} contains {bad} NaN/Inf value(s); check the data or the "
                             f"previous step (a diverging loss, a division by zero)")
    return x


def check_same_shape(name_a, a, name_b, b, axes=None):
    """Require ``a.shape == b.shape`` (or equality on the given axes only)."""
    if axes is None:
        ok = a.shape == b.shape
    else:
        ok = all(a.shape[i] == b.shape[i] for i in axes)
    if not ok:
        which = "" if axes is None else f" on axes {tuple(axes)}"
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; "
                         f"they must match{which}")


def check_positive_int(name, v):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


# ----------------------------------------------------------------------------------- memory guard
# A request that cannot fit should fail in a second with one line, not after minutes of swapping
# or with the kernel's OOM killer (``evaluate --size 4096`` once grew to 23.7 GB and was killed).
# The estimates below are upper bounds of peak resident memory measured on this project's code
# (RSS growth, ``resource.getrusage``) at 512×512, where every term already scales with H·W:
#   forward pass, batch 1: metareg 695, vm2 679, fcnss 539, vm1 299, dirnet 192 bytes/pixel, i.e.
#   1.2–2.2 bytes per pixel per output channel of the model's convolutions (summed over layers);
#   two synthetic phantom test pairs generated and held: 1205 bytes/pixel.
FORWARD_BYTES_PER_PIXEL_CHANNEL = 2.5
PAIR_BYTES_PER_PIXEL = 1300
# A training step keeps every layer's cache for the backward pass and holds gradients and Adam's
# moments: taken as 3 forward passes per batch item (an assumption; measure before relying on it).
TRAINING_FACTOR = 3


class MemoryLimitError(ValueError):
    """An operation would need more memory than the machine has available."""


def available_memory():
    """``(bytes, source)``: the memory this process can still get without swapping.

    Linux: ``MemAvailable`` of ``/proc/meminfo`` — the kernel's own estimate of what can be
    allocated now (free memory plus reclaimable cache), which is what decides whether a large
    allocation ends in swapping or the OOM killer; the total physical memory would also count
    what other processes hold. Elsewhere: the physical memory, ``os.sysconf('SC_PHYS_PAGES') ×
    os.sysconf('SC_PAGE_SIZE')``. ``(None, None)`` when neither is known (no check is made)."""
    import os
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
    except (ValueError, OSError, AttributeError):
        return None, None


def _gb(n):
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(nbytes, what, hint):
    """Refuse, before allocating, an operation estimated to need ``nbytes``: raises
    :class:`MemoryLimitError` (a ``ValueError``, so every command line shows it as one
    ``error:`` line) when ``nbytes`` exceeds :func:`available_memory`.

    ``what`` names the operation (``"evaluating at 4096×4096"``), ``hint`` says what to do
    (``"use a smaller --size"``). Returns ``nbytes``."""
    avail, source = available_memory()
    if avail is not None and nbytes > avail:
        raise MemoryLimitError(f"{what} needs about {_gb(nbytes)} of memory, more than the "
                               f"{_gb(avail)} available on this machine ({source}); {hint}")
    return nbytes


def estimate_param_bytes(options):
    """Bytes for a model's parameters, their gradients and Adam's two moments, from its
    architecture options alone (before the model is built, so an edited ``kernel_size 999999``
    is refused instead of allocated): 3×3 convolutions between consecutive ``enc``/``dec``
    widths (doubled for the skip connections), plus the ``kernel_size``² filter per channel."""
    def widths(key, default):
        w = options.get(key, default)
        return [int(c) for c in w] if isinstance(w, (list, tuple)) else list(default)
    chans = [2] + widths("enc", (16, 32, 32, 32)) + widths("dec", (32, 32, 32, 32, 32, 16, 16)) + [2]
    conv = sum(9 * 2 * a * b for a, b in zip(chans, chans[1:]))
    k = options.get("kernel_size", 13)
    k = int(k) if isinstance(k, (int, float)) and not isinstance(k, bool) else 13
    return 4 * 4 * (conv + 2 * k * k)


def estimate_forward_bytes(model, shape, batch=1, training=False):
    """Peak bytes of ``model``'s forward pass on a batch of ``shape`` (H, W) images (with
    ``training``: a whole step, forward, backward and update), from the output channels of its
    convolutions (see the measurements above :data:`FORWARD_BYTES_PER_PIXEL_CHANNEL`)."""
    channels = sum(p.shape[0] for _, p, _ in model.named_parameters() if p.ndim == 4)
    per_item = FORWARD_BYTES_PER_PIXEL_CHANNEL * channels * shape[0] * shape[1]
    return int(per_item * batch * (TRAINING_FACTOR if training else 1))


def estimate_pair_bytes(shape, pairs=1):
    """Peak bytes to generate ``pairs`` synthetic pairs of ``shape`` (H, W) at once and hold them
    (base images, labels, the field and its temporaries; measured, see above)."""
    return int(PAIR_BYTES_PER_PIXEL * shape[0] * shape[1] * max(1, pairs))
