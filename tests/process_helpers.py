"""Helpers shared by the tests that run a tool's command line, in a child process (to interrupt
it) or in this one (imported by test files; not a test module)."""
import contextlib
import io
import os
import signal
import warnings


def ctrl_c_as_in_a_terminal():
    """Child-process setup (``preexec_fn``): SIGINT back to its default, so the child's Python
    installs its KeyboardInterrupt handler as it does under a terminal. A test suite started in
    the background (``pytest &``, a CI runner) inherits SIGINT *ignored*, which would make the
    Ctrl-C these tests send a no-op."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_main(main, argv, cwd):
    """Run a tool's ``main(argv)`` in this process, in the folder ``cwd``, as ``python -m
    regnp.<tool>`` would run it; returns (exit status, stdout, stderr).

    ``sys.exit("error: ...")`` gives status 1 and prints its text, as a fresh interpreter does;
    a returned int is the status (``python -m regnp.data``'s contract). What a fresh interpreter
    would not carry over is reset: the warning filters and their once-per-location registries
    (as under ``PYTHONWARNINGS=default``), the SIGINT/SIGTERM/SIGALRM handlers and the working
    folder."""
    out, err = io.StringIO(), io.StringIO()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    here = os.getcwd()
    os.chdir(cwd)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.resetwarnings()
            warnings.simplefilter("default")
            try:
                status = main(argv)
                code = status if isinstance(status, int) else 0
            except SystemExit as e:
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
                if isinstance(e.code, str):
                    err.write(f"{e.code}\n")
    finally:
        os.chdir(here)
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, out.getvalue(), err.getvalue()
