"""How the fast kernels use more than one core: a kernel's independent jobs, split over threads.

Every kernel in ``regnp.ops._fast`` (and the NCC and NaN-count loops) is one loop over
independent jobs — output rows, images, tiles of rows. Each is compiled as an ordinary
``nogil`` Numba function whose first two arguments say which share of the jobs to run::

    @numba.njit(cache=True, nogil=True)
    def kernel(part, parts, x, out):
        lo, hi = share(x.shape[0], part, parts)      # jobs [n·part/parts, n·(part+1)/parts)
        for job in range(lo, hi):
            ...

and is called as ``run(kernel, x, out)``. With one thread (the experiment grid's workers, the
test workers) that is ``kernel(0, 1, x, out)``: one direct call. With T threads, ``run`` hands
parts 1..T-1 to T-1 helper threads and runs part 0 itself — Numba releases the GIL inside a
``nogil`` kernel, so the parts run on T cores at once — then returns the sum of what the parts
return (the kernels that count NaN/Inf inputs return their partial count; the others None).

The thread count is Numba's: ``numba.set_num_threads`` (what ``--threads`` calls) and
``NUMBA_NUM_THREADS`` set it, ``numba.get_num_threads()`` reads it.

**Why not Numba's own ``prange``.** The same split (contiguous equal shares: ``prange``'s
default static schedule) costs far more to compile. Measured on this project's largest kernel
(``conv3x3_rows``, float32; AMD EPYC, one run, under load): 4.3–5.0 s of CPU with
``parallel=True`` (4.4–4.7 s with its passes restricted to ``prange``) against 1.4 s compiled
plain; for all ~70 kernel specializations, ``python -m regnp.precompile --jobs 2`` on a cold
cache took 186 s of CPU with ``prange`` and 70 s without (same machine, quiet).

**Why the helpers spin.** A handoff through a lock or ``concurrent.futures`` costs 70–95 µs on
a 2-vCPU virtual machine (the sleeping thread's core must be woken), and a training step makes
about 200 kernel calls: that was 15–40 ms a step. So a helper that finishes its part keeps
polling for the next one, in native code without the GIL (a Numba loop over ``sched_yield``),
for about a millisecond before it sleeps on a condition variable; the caller waits for the
helpers' parts the same way. A spinning handoff measured 9 µs. Where ``sched_yield`` cannot be
found (not a POSIX C library), the helpers only sleep and wake.

**Same answer on any number of threads.** A job writes only its own outputs, and partial sums
are kept per job or per task and added in a fixed order, so the split does not change a result
(``tests/test_threads.py`` compares one thread with two).
"""
import ctypes
import functools
import os
import threading

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def share(n, part, parts):
    """(lo, hi): the jobs [lo, hi) of ``n`` that part ``part`` of ``parts`` runs — contiguous
    and as equal as integers allow; the parts cover 0..n exactly once."""
    return n * part // parts, n * (part + 1) // parts


def num_threads():
    """Threads the kernels use now (Numba's setting)."""
    return int(numba.get_num_threads())


# ------------------------------------------------------------------ waiting without the GIL
SPIN = 2000          # polls (each one sched_yield, ~0.6 µs measured) before sleeping: ~1 ms


def _make_spin():
    """A nogil Numba loop ``spin(flags, i, value, polls)`` → True as soon as flags[i] >= value,
    False after ``polls`` polls; or None where libc's ``sched_yield`` is not available. The
    external call in the loop is what makes LLVM re-read flags[i] on every poll."""
    try:
        libc = ctypes.CDLL(None)
        yield_ = libc.sched_yield
    except (OSError, AttributeError):
        return None
    yield_.restype = ctypes.c_int
    yield_.argtypes = []

    # cache=False: a function that calls a ctypes pointer cannot be cached (the address is
    # baked in); compiling it takes a fraction of a second, once per process, on first use
    @numba.njit(nogil=True, cache=False)
    def spin(flags, i, value, polls):
        for _ in range(polls):
            if flags[i] >= value:
                return True
            yield_()
        return flags[i] >= value

    return spin


class _Helpers:
    """``n`` helper threads; helper h (1..n) runs the part posted to it.

    Per helper: ``posted[h]`` / ``done[h]`` count the parts posted to it and finished by it
    (int64, written by one side each, polled by the other); ``slot[h]`` holds the call."""

    def __init__(self, n):
        self.n = n
        self.posted = np.zeros(n + 1, np.int64)
        self.done = np.zeros(n + 1, np.int64)
        self.slot = [None] * (n + 1)
        self.result = [None] * (n + 1)
        self.cond = threading.Condition()
        self.spin = _spin()
        self.threads = [threading.Thread(target=self._loop, args=(h,), daemon=True,
                                         name=f"regnp-kernel-{h}") for h in range(1, n + 1)]
        for t in self.threads:
            t.start()

    def _wait(self, flags, h, value):
        if self.spin is not None and self.spin(flags, h, value, SPIN):
            return
        with self.cond:
            while flags[h] < value:
                self.cond.wait()

    def _loop(self, h):
        seen = 0
        while True:
            self._wait(self.posted, h, seen + 1)
            seen += 1
            kernel, part, parts, args = self.slot[h]
            self.slot[h] = None
            try:
                self.result[h] = (kernel(part, parts, *args), None)
            except BaseException as e:           # handed to the caller, raised there
                self.result[h] = (None, e)
            with self.cond:
                self.done[h] = seen
                self.cond.notify_all()

    def post(self, h, kernel, part, parts, args):
        self.slot[h] = (kernel, part, parts, args)
        with self.cond:
            self.posted[h] += 1
            self.cond.notify_all()

    def collect(self, h):
        """Wait for helper h's part; (return value, exception or None)."""
        self._wait(self.done, h, self.posted[h])
        r = self.result[h]
        self.result[h] = None
        return r


_helpers = None
_lock = threading.Lock()
_busy = threading.Lock()       # held by the one caller that has the helpers


@functools.cache
def _spin():
    """The process's spin loop (made once; None without ``sched_yield``)."""
    return _make_spin()


def _add(total, r):
    """Sum of the parts' returns so far, None while every part has returned None."""
    return r if total is None else (total if r is None else total + r)


def _get_helpers(n):
    global _helpers
    with _lock:
        if _helpers is None or _helpers.n < n:
            # a smaller old set just stays idle (asleep after ~1 ms): thread counts only grow
            # within a process in practice (set_num_threads up to NUMBA_NUM_THREADS)
            _helpers = _Helpers(n)
        return _helpers


def _forget_helpers_after_fork():
    # a forked child inherits the objects but not the threads
    global _helpers
    _helpers = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers_after_fork)


def run(kernel, *args):
    """Run ``kernel(part, parts, *args)`` for every part, one per thread (see the module
    docstring); returns the sum of the parts' return values (None if they return None).
    An exception in any part is raised here, after every part has finished."""
    parts = num_threads()
    if parts <= 1:
        return kernel(0, 1, *args)
    if not _busy.acquire(blocking=False):
        # another Python thread is using the helpers: run every part here, one after another
        total = None
        for p in range(parts):
            total = _add(total, kernel(p, parts, *args))
        return total
    try:
        return _run_on_helpers(kernel, parts, args)
    finally:
        _busy.release()


def _run_on_helpers(kernel, parts, args):
    helpers = _get_helpers(parts - 1)
    for h in range(1, parts):
        helpers.post(h, kernel, h, parts, args)
    error = None
    try:
        total = kernel(0, parts, *args)
    except BaseException as e:
        total, error = None, e
    for h in range(1, parts):                  # every part finishes before anything is raised:
        r, e = helpers.collect(h)              # they write into arrays the caller holds
        if error is None and e is not None:
            error = e
        total = _add(total, r)
    if error is not None:
        raise error
    return total
