"""Keep the memory a training step frees inside the process, so the next step does not
page-fault it back in.

Why: a step allocates its activations, caches and gradients afresh (tens of arrays of 1–32 MB
at 256×256) and frees them when it ends. glibc's malloc serves blocks above its mmap threshold
with fresh ``mmap`` calls and hands large freed tops of the heap back to the kernel
(``M_TRIM_THRESHOLD``), so every step touches pages the kernel has to zero and map again
(1,500–3,000 page faults per step). On the 2-vCPU EPYC VM keeping that memory made the step
0.79–0.87× as long with 2 threads, but only 0.95× (VM-2) and 1.02× (Meta-Reg) with one thread,
how grid jobs run (``python -m regnp.bench --heap-ab``; ``docs/performance.md``).

What :func:`keep_freed_memory` sets, once per process, through ``mallopt``:

- ``M_MMAP_THRESHOLD`` = 32 MiB, glibc's ceiling on 64-bit: blocks up to that size come from
  the heap, whose freed memory is reused by the next step;
- ``M_TRIM_THRESHOLD`` = 1 GiB: the heap's free top is returned to the kernel only beyond that;
- ``M_TOP_PAD`` = 64 MiB: the heap grows in larger steps.

Peak memory does not grow (freed memory is reused, not added to); what changes is that the
process keeps its peak between steps instead of returning and re-faulting it. Numbers are
unchanged: only where arrays live moves (a test checks a training run bitwise).

It does nothing outside glibc (macOS, Windows, musl), when ``REGNP_KEEP_MEMORY=0``, or when
the user set any ``MALLOC_*_`` tuning variable (theirs wins).
"""
import ctypes
import ctypes.util
import functools
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3       # glibc's <malloc.h>
SETTINGS = ((M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30), (M_TOP_PAD, 64 * 2**20))
_USER_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
              "GLIBC_TUNABLES")


def _glibc():
    """The C library if it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version
        libc.mallopt
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


@functools.cache
def keep_freed_memory():
    """Set the thresholds above (once per process). Returns a short string saying what was
    done: "set", or why not ("not glibc", "off: REGNP_KEEP_MEMORY=0", "user's MALLOC_…")."""
    if os.environ.get("REGNP_KEEP_MEMORY", "1") == "0":
        return "off: REGNP_KEEP_MEMORY=0"
    user = [v for v in _USER_VARS if v in os.environ]
    if user:
        return f"left to the user's {user[0]}"
    libc = _glibc()
    if libc is None:
        return "not glibc"
    for param, value in SETTINGS:
        if libc.mallopt(param, value) != 1:       # mallopt returns 1 on success
            return f"glibc refused mallopt({param}, {value})"
    return "set"
