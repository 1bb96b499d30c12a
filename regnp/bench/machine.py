"""What bounds this machine: the two numbers of a roofline, measured, and the facts beside them.

A kernel cannot run faster than the machine's arithmetic peak (FLOP/s) nor move data faster
than its memory bandwidth (bytes/s). Both are *measured* here, on the machine at hand, with the
same tools regnp's kernels use:

* **peak FLOP/s** — a large float32 matrix product through NumPy's BLAS (``sgemm``, n×n,
  2·n³ FLOPs), and a Numba loop of independent fused multiply-adds, split over the threads as regnp's
  kernels are (``regnp.ops._fast.threads``), on data
  that stays in L1 (what regnp's direct convolution kernels are made of). The roofline uses the
  larger: a bound must be one no kernel can beat.
* **bandwidth** — a large array copy, counted as its bytes read + bytes written (the STREAM
  "copy" convention; on most CPUs the store also reads the line first, so the wires carry a bit
  more): ``numpy.copyto`` (one thread) and a Numba parallel copy (all threads). Arrays are far
  larger than the last-level cache, so this is main memory, not cache. The roofline uses the
  larger.
* the CPU model, core and thread counts, and the cache sizes (from
  ``/sys/devices/system/cpu/cpu0/cache``, or ``lscpu`` where that is missing).

Every figure is a median of a few runs after a warm-up; on a machine shared with other work it
is what the machine gave at that moment, so quote it with the CPU model and measure both sides
of any comparison in one run.
"""
import os
import subprocess
import time
from typing import NamedTuple

import numba
import numpy as np
from regnp.ops._fast.threads import run, share


class Machine(NamedTuple):
    """Measured limits (rates in GFLOP/s and GB/s, 1 G = 1e9) and facts of this machine."""
    cpu: str                 # CPU model name
    cores: int               # logical CPUs the OS offers (os.cpu_count)
    threads: int             # Numba worker threads (what the kernels use)
    sgemm_gflops: float      # BLAS float32 matrix product, n × n
    sgemm_n: int
    fma_gflops: float        # Numba parallel FMA loop, L1-resident
    copy_numpy_gbs: float    # numpy.copyto, bytes read + written per second
    copy_numba_gbs: float    # Numba parallel copy, bytes read + written per second
    copy_mb: float           # size of the copied array, MB (1 MB = 2**20 bytes)
    caches: tuple            # ((level, type, size in bytes, shared by N cpus), ...)

    @property
    def peak_gflops(self):
        """The roofline's flat roof: the best arithmetic rate measured."""
        return max(self.sgemm_gflops, self.fma_gflops)

    @property
    def bandwidth_gbs(self):
        """The roofline's slope: the best copy bandwidth measured."""
        return max(self.copy_numpy_gbs, self.copy_numba_gbs)

    @property
    def ridge(self):
        """FLOPs per byte at which the two limits meet: below it a kernel is memory-bound."""
        return self.peak_gflops / self.bandwidth_gbs


def cpu_model():
    """The CPU's model name ('model name' in /proc/cpuinfo, else lscpu, else platform)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    for key, val in _lscpu().items():
        if key.lower() == "model name":
            return val
    import platform
    return platform.processor() or platform.machine() or "unknown CPU"


def _lscpu():
    """lscpu's 'Key: value' lines as a dict ({} where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines()) if v}


def _parse_size(text):
    """'32K', '1 MiB', '512 KiB (2 instances)', '32768K' -> bytes (None if unreadable)."""
    t = text.split("(")[0].strip().upper().replace("IB", "").replace("B", "").replace(" ", "")
    mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(t)
    except ValueError:
        return None


def _count_cpus(cpu_list):
    """'0-1,4' -> 3: how many CPUs a sysfs cpu list names."""
    n = 0
    for part in cpu_list.split(","):
        lo, _, hi = part.strip().partition("-")
        if lo.isdigit():
            n += int(hi) - int(lo) + 1 if hi.isdigit() else 1
    return n


def cache_sizes(root="/sys/devices/system/cpu/cpu0/cache"):
    """((level, type, bytes, cpus sharing it), ...) for cpu0's caches, L1 first.

    Reads the kernel's sysfs description; falls back to lscpu's per-level totals (shared count
    0 = unknown) and to () when neither exists."""
    rows = []
    if os.path.isdir(root):
        for d in sorted(os.listdir(root)):
            p = os.path.join(root, d)
            try:
                level = int(open(os.path.join(p, "level")).read())
                kind = open(os.path.join(p, "type")).read().strip()
                size = _parse_size(open(os.path.join(p, "size")).read())
                shared = open(os.path.join(p, "shared_cpu_list")).read().strip()
            except (OSError, ValueError):
                continue
            rows.append((level, kind, size, _count_cpus(shared)))
    if not rows:
        for key, val in _lscpu().items():
            if key.startswith("L") and "cache" in key and key[1].isdigit():
                kind = {"d": "Data", "i": "Instruction"}.get(key[2:3], "Unified")
                rows.append((int(key[1]), kind, _parse_size(val), 0))
    return tuple(sorted(rows))


def _median_s(fn, repeats):
    fn()                                                       # warm-up (compile, fault pages)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def sgemm_gflops(n=1024, repeats=5):
    """float32 n×n @ n×n through NumPy's BLAS (all its threads): 2·n³ / median seconds / 1e9."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    return 2.0 * n ** 3 / _median_s(lambda: np.matmul(a, b, out=c), repeats) / 1e9


@numba.njit(cache=True, nogil=True, fastmath={"contract"})
def _fma_kernel(part, parts, acc, reps, s, t):
    """acc[k, :] ← (acc[k, :]·s + t) applied 8 times, ``reps`` times, one row per parallel job.

    A row holds 64 float32 = 8 AVX2 registers of independent chains, so the FMA units are
    kept busy (not waiting on one chain's latency), and 8 FMAs per load and store keep the loop
    from being bound by L1 traffic: 16 FLOPs per element per rep."""
    job_lo, job_hi = share(acc.shape[0], part, parts)    # this thread's jobs
    for k in range(job_lo, job_hi):
        a = acc[k]
        for _ in range(reps):
            for j in range(a.shape[0]):
                v = a[j]
                v = v * s + t
                v = v * s + t
                v = v * s + t
                v = v * s + t
                v = v * s + t
                v = v * s + t
                v = v * s + t
                a[j] = v * s + t


def fma_gflops(reps=20000, repeats=5):
    """Numba parallel FMA loop on L1-resident rows (one per thread): GFLOP/s (2 per FMA)."""
    rows = max(1, numba.get_num_threads())
    acc = np.ones((rows, 64), np.float32)
    s, t = np.float32(0.999), np.float32(1e-3)     # |s| < 1: values stay finite and normal
    sec = _median_s(lambda: run(_fma_kernel, acc, reps, s, t), repeats)
    return 16.0 * acc.size * reps / sec / 1e9


@numba.njit(cache=True, nogil=True)
def _copy_kernel(part, parts, src, dst, jobs):
    """dst[:] = src[:], split into ``jobs`` contiguous blocks run in parallel."""
    n = src.shape[0]
    job_lo, job_hi = share(jobs, part, parts)    # this thread's jobs
    for b in range(job_lo, job_hi):
        lo = n * b // jobs
        hi = n * (b + 1) // jobs
        for i in range(lo, hi):
            dst[i] = src[i]


def copy_bandwidth(mb=64, repeats=5):
    """(numpy.copyto GB/s, Numba parallel copy GB/s) for an ``mb`` MB float32 array, counting
    the bytes read and the bytes written (2 × the array's size per copy)."""
    n = int(mb * 2 ** 20) // 4
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)                  # touched once here: no page faults timed
    moved = 2.0 * src.nbytes
    t_np = _median_s(lambda: np.copyto(dst, src), repeats)
    jobs = 4 * numba.get_num_threads()
    t_nb = _median_s(lambda: run(_copy_kernel, src, dst, jobs), repeats)
    return moved / t_np / 1e9, moved / t_nb / 1e9


def measure(quick=False):
    """Measure this machine's limits. ``quick``: smaller sizes, fewer repeats (~0.5 s; the
    numbers are rougher — the copy is still larger than most last-level caches)."""
    n, reps, mb, repeats = (512, 20000, 32, 3) if quick else (1024, 100000, 128, 7)
    sg = sgemm_gflops(n, repeats)
    fma = fma_gflops(reps, repeats)
    c_np, c_nb = copy_bandwidth(mb, repeats)
    return Machine(cpu=cpu_model(), cores=os.cpu_count() or 1, threads=numba.get_num_threads(),
                   sgemm_gflops=sg, sgemm_n=n, fma_gflops=fma, copy_numpy_gbs=c_np,
                   copy_numba_gbs=c_nb, copy_mb=float(mb), caches=cache_sizes())


def _fmt_bytes(n):
    if n is None:
        return "?"
    for unit, size in (("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def format_machine(m):
    """The machine block printed first by ``python -m regnp.bench``."""
    caches = ", ".join(f"L{lvl} {kind.lower()[:5]} {_fmt_bytes(size)}"
                       + (f" (shared by {sh})" if sh > 1 else "")
                       for lvl, kind, size, sh in m.caches) or "unknown"
    return "\n".join([
        f"machine: {m.cpu}, {m.cores} logical CPUs, {m.threads} Numba threads",
        f"  arithmetic: sgemm {m.sgemm_n}x{m.sgemm_n} (BLAS) {m.sgemm_gflops:.1f} GFLOP/s; "
        f"Numba FMA loop {m.fma_gflops:.1f} GFLOP/s  -> peak {m.peak_gflops:.1f} GFLOP/s",
        f"  memory: copy of {m.copy_mb:g} MB (read + write counted) numpy.copyto "
        f"{m.copy_numpy_gbs:.1f} GB/s; Numba parallel {m.copy_numba_gbs:.1f} GB/s  -> bandwidth "
        f"{m.bandwidth_gbs:.1f} GB/s",
        f"  caches (cpu0): {caches}",
        f"  ridge point: {m.ridge:.1f} FLOP/byte (a layer with fewer FLOPs per byte moved is "
        f"bound by memory on this machine)",
    ])
