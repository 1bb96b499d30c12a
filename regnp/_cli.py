"""Helpers shared by the command-line entry points (``evaluate``, ``register``, ``data``, ``bench``).

The contract of every ``python -m regnp.X`` tool (README, "Conventions"; the catalogue of bad
inputs is ``docs/ERRORS.md``):

* bad input prints **one** line ``error: <what was wrong>; <what to do>`` on stderr and exits with
  a non-zero status, before anything is written;
* a warning prints one line ``warning: <message>`` (not Python's two-line ``file:line:`` form);
* Ctrl-C prints one line saying what was (not) written, with no traceback, and exits 130.

This module imports only the standard library, so option checks run before the heavy imports
(Numba, SciPy, matplotlib) and a mistyped option fails in a fraction of a second.
"""
import contextlib
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

__all__ = ["CLIError", "positive_int", "nonnegative_int", "finite_float", "nearest_multiples",
           "check_size_divisible", "check_output_folder", "check_output_file", "check_inputs_kept",
           "run_cli",
           "ctrl_c_delivered", "interrupt_handled", "stop_name", "interrupted_exit"]

INTERRUPTED_EXIT = 130          # the shell's convention for "terminated by SIGINT"
TERMINATED_EXIT = 143           # … and for "terminated by SIGTERM" (128 + 15)


class CLIError(ValueError):
    """A command-line option or file is unusable; the message is shown as ``error: <message>``."""


def positive_int(flag, value):
    """Require an integer option to be ≥ 1 (``--repeats 0`` would time nothing)."""
    if value is not None and value <= 0:
        raise CLIError(f"{flag} must be a positive integer, got {value}")
    return value


def nonnegative_int(flag, value):
    """Require an integer option to be ≥ 0."""
    if value is not None and value < 0:
        raise CLIError(f"{flag} must be an integer ≥ 0, got {value}")
    return value


def finite_float(flag, value, strictly_positive=False):
    """Require a float option to be finite and ≥ 0 (> 0 with ``strictly_positive``)."""
    if value is None:
        return value
    bad = not math.isfinite(value) or value < 0 or (strictly_positive and value == 0)
    if bad:
        raise CLIError(f"{flag} must be a finite number {'> 0' if strictly_positive else '≥ 0'}, "
                       f"got {value:g}")
    return value


def nearest_multiples(n, f):
    """The multiples of ``f`` nearest to ``n`` (the one below, when ≥ f, and the one above)."""
    below = n // f * f
    above = below + f
    return (below, above) if below >= f else (above,)


def check_size_divisible(flag, size, levels, model_name):
    """A working size must be divisible by 2^levels (the U-Net halves the image ``levels``
    times); the message names the nearest valid sizes, as ``python -m regnp.train`` does."""
    if not levels or size is None:
        return
    f = 2 ** levels
    sizes = (size,) if isinstance(size, int) else tuple(size)
    for s in sizes:
        if s % f:
            near = " or ".join(str(v) for v in nearest_multiples(s, f))
            raise CLIError(f"{flag} {s} is not divisible by 2^{levels} = {f} ({model_name} halves "
                           f"the image {levels} times); use a multiple of {f}, e.g. {near}")


def _blocking_file(folder):
    """The first existing path among ``folder`` and its parents that is not a folder, or None."""
    for p in (folder, *folder.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_output_folder(flag, folder, names=()):
    """Check, before anything is computed or written, that ``folder`` can hold the files ``names``.

    Refuses: a folder path that is a file or lies under a file; an output name taken by a
    folder (or anything else that is not a regular file); an existing output or folder that
    cannot be written. Existing regular files are fine: they are replaced. Returns the Path.
    """
    folder = Path(folder)
    blocker = _blocking_file(folder)
    if blocker is not None:
        where = "is a file" if blocker == folder else f"lies under the file {blocker}"
        raise CLIError(f"{flag} {folder} {where}, not a folder; choose another {flag}")
    existing = folder if folder.exists() else next((p for p in folder.parents if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {folder}: cannot create files in {existing} (permission denied); "
                       f"choose another {flag}")
    for name in names:
        p = folder / name
        if p.is_symlink() and not p.exists():
            continue                                  # a dangling link is simply replaced
        if p.exists() and not p.is_file():
            raise CLIError(f"cannot write {p}: a folder (or other non-file) of that name is in "
                           f"the way; remove it or choose another {flag}")
        if p.is_file() and not os.access(p, os.W_OK):
            raise CLIError(f"cannot write {p}: the existing file is read-only; remove it or "
                           f"choose another {flag}")
    return folder


def check_inputs_kept(flag, folder, names, inputs):
    """Refuse a run whose outputs ``folder/name`` would replace one of its ``inputs`` (paths
    given by the user; ``None`` entries are skipped): nothing a command writes may replace
    what it reads (``register --moving it/warped.npy --out it`` once overwrote its input)."""
    outputs = {os.path.realpath(Path(folder) / n): Path(folder) / n for n in names}
    for given in inputs:
        if given is None:
            continue
        real = os.path.realpath(given)
        if real in outputs:
            raise CLIError(f"{flag} {folder} would replace the input {given} (this command "
                           f"writes {outputs[real].name} there); choose another {flag} or move "
                           f"the input")


def check_output_file(flag, path, suffixes=None):
    """Check that the file ``path`` can be written (its folder is not a file, its name is not a
    folder, its suffix is one of ``suffixes`` when given). Returns the Path."""
    path = Path(path)
    if suffixes is not None and path.suffix.lower().lstrip(".") not in suffixes:
        raise CLIError(f"{flag} {path}: unsupported file type {path.suffix or '(none)'!r}; use one "
                       f"of {', '.join('.' + s for s in sorted(suffixes))}")
    blocker = _blocking_file(path.parent)
    if blocker is not None:
        raise CLIError(f"{flag} {path} lies under the file {blocker}, not in a folder; choose "
                       f"another {flag}")
    check_output_folder(flag, path.parent, (path.name,))
    return path


def _oserror_text(e):
    """``[Errno 13] Permission denied: 'x'`` → ``x: permission denied``; an OSError raised with
    our own message (no errno) is shown as it is."""
    if not e.strerror:
        return str(e)
    what = e.strerror[:1].lower() + e.strerror[1:]
    return f"{e.filename}: {what}" if e.filename else what


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _close_progress_bars():
    """Close tqdm bars left open by an interrupted loop, so the next message starts on a line of
    its own instead of after the bar's carriage return."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:                          # a half-torn-down bar: nothing to tidy
            pass


# --------------------------------------------------------------------------------- Ctrl-C delivery
# Python turns SIGINT into a KeyboardInterrupt raised at the next bytecode boundary of the main
# thread. If that boundary lies inside a ``__del__`` run by the garbage collector — llvmlite frees
# compiler objects that way all through a Numba compilation, which is the first seconds of every
# tool — the exception is printed as "Exception ignored in ..." and dropped, and the tool runs on
# to the end as if the key had never been pressed. So after a Ctrl-C we raise again every
# ``_RETRY_SECONDS`` (an interval timer, SIGALRM) until some ``except KeyboardInterrupt`` has seen
# it and called ``interrupt_handled()``.
#
# SIGTERM asks for the same orderly stop. It is what `kill PID` sends, what a batch system sends
# before its time limit, and the only polite signal a background job (`cmd &` from a script, or
# under nohup) still hears: such a job inherits SIGINT *ignored*, so a Ctrl-C or `kill -INT`
# never reaches it, and an unhandled SIGTERM would end a training run mid-step, losing the work
# since its last checkpoint and leaving the grid's job locks behind.
_RETRY_SECONDS = 0.25
_pending = [False]            # a Ctrl-C was raised and no handler has acknowledged it yet
_stop = ["Ctrl-C"]            # what asked for the last stop: "Ctrl-C" or "SIGTERM"


def stop_name():
    """What stopped the tool, for its one-line message: ``"Ctrl-C"`` or ``"SIGTERM"``."""
    return _stop[0]


def interrupted_exit():
    """The exit status of a stopped tool: 130 after Ctrl-C, 143 after SIGTERM (the shell's
    128 + signal number, so a script can tell the two apart)."""
    return TERMINATED_EXIT if _stop[0] == "SIGTERM" else INTERRUPTED_EXIT


def interrupt_handled():
    """Acknowledge a Ctrl-C: stop re-raising it. Call first thing in an ``except
    KeyboardInterrupt`` that does work (saving a checkpoint) before it re-raises or exits."""
    _pending[0] = False
    if hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


@contextlib.contextmanager
def ctrl_c_delivered(once=False):
    """Inside this block a Ctrl-C is never lost (see the comment above): the KeyboardInterrupt is
    raised again every 0.25 s until a handler calls :func:`interrupt_handled`. SIGTERM raises the
    same KeyboardInterrupt (:func:`stop_name` tells which it was). Does nothing off the main
    thread or on systems without ``setitimer`` (Windows). A signal some caller set to be ignored
    stays ignored (a job started with ``&`` from a script is immune to Ctrl-C, as it was, but
    still stops in order on SIGTERM), and a SIGTERM handler someone else installed is kept.

    ``once``: only the first SIGINT or SIGTERM of the block raises; later ones are ignored (a
    grid worker hears of one Ctrl-C twice, from the terminal and from its grid, and the second
    must not break the checkpoint save the first one started)."""
    main = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    catch_int = main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    catch_term = main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    if not (catch_int or catch_term):
        yield
        return

    heard = [False]

    def on_stop(signum, frame):
        if once and heard[0]:
            return
        heard[0] = True
        _stop[0] = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        _pending[0] = True
        signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS, _RETRY_SECONDS)
        raise KeyboardInterrupt

    def on_alarm(signum, frame):
        if _pending[0]:
            raise KeyboardInterrupt

    def on_unraisable(info, previous=sys.unraisablehook):
        # the dropped KeyboardInterrupt would print a traceback ("Exception ignored in ...");
        # it is not lost any more, so say nothing. Anything else goes to the usual hook.
        if not isinstance(info.exc_value, KeyboardInterrupt):
            previous(info)

    if not _pending[0]:
        _stop[0] = "Ctrl-C"
    old_int = signal.signal(signal.SIGINT, on_stop) if catch_int else None
    old_term = signal.signal(signal.SIGTERM, on_stop) if catch_term else None
    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    old_hook, sys.unraisablehook = sys.unraisablehook, on_unraisable
    try:
        yield
    finally:
        interrupt_handled()
        sys.unraisablehook = old_hook
        signal.signal(signal.SIGALRM, old_alarm)
        if catch_int:
            signal.signal(signal.SIGINT, old_int)
        if catch_term:
            signal.signal(signal.SIGTERM, old_term)


def run_cli(body, interrupted="nothing was written", return_status=False):
    """Run ``body()`` as a command-line tool: bad input (ValueError, TypeError, missing or
    unwritable files) becomes one ``error:`` line and exit status 1; Ctrl-C one line and exit
    status 130 (SIGTERM: the same line naming it, and 143); warnings one ``warning:`` line each.
    ``interrupted`` may be a string or a no-argument callable returning one (what the user
    should know about partial outputs).

    Returns what ``body`` returns. With ``return_status`` (for a ``main`` whose contract is to
    return an exit status, as ``python -m regnp.data``'s does) a failure returns 2 (130 for
    Ctrl-C) after printing its line, instead of calling ``sys.exit``.
    """
    def fail(line, status):
        if return_status:
            print(line, file=sys.stderr)
            return status
        if status in (INTERRUPTED_EXIT, TERMINATED_EXIT):
            print(line, file=sys.stderr)
            sys.exit(status)
        sys.exit(line)

    previous, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        with ctrl_c_delivered():
            return body()
    except KeyboardInterrupt:
        interrupt_handled()
        said = interrupted() if callable(interrupted) else interrupted
        _close_progress_bars()
        return fail(f"interrupted ({stop_name()}); {said}", interrupted_exit())
    except (ValueError, TypeError) as e:
        return fail(f"error: {e}", 2)
    except OSError as e:
        return fail(f"error: {_oserror_text(e)}", 2)
    finally:
        warnings.showwarning = previous
