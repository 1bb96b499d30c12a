"""A Ctrl-C that lands inside a ``__del__`` must not be lost (``regnp._cli.ctrl_c_delivered``).

Numba's compiler (llvmlite) frees its objects in ``__del__`` methods; a SIGINT delivered while one
runs becomes "Exception ignored in ..." and the tool used to run on to the end — this is how CI once
saw ``evaluate`` finish and exit 0 after a Ctrl-C in its first seconds. The scripts below put the
main thread inside a slow ``__del__`` when the signal arrives, without and with the guard.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from process_helpers import ctrl_c_as_in_a_terminal

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import gc, sys, time
    from regnp._cli import run_cli

    class Slow:
        def __del__(self):
            print("in __del__", flush=True)
            t = time.time()
            while time.time() - t < 1.5:     # the SIGINT arrives in here
                time.sleep(0.01)

    def body():
        x = Slow()
        del x                               # __del__ runs now, on the main thread
        t = time.time()
        while time.time() - t < 3:          # the tool's real work
            time.sleep(0.01)
        print("finished the work", flush=True)

    if sys.argv[1] == "guarded":
        run_cli(body, "nothing was written")
    else:
        body()
""")

pytestmark = pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX signals")


def _interrupt_inside_del(mode):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=ctrl_c_as_in_a_terminal)
    assert proc.stdout.readline().strip() == "in __del__"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def test_plain_python_loses_a_ctrl_c_inside_del():
    """The hazard is real: without the guard the interrupt is printed as ignored and dropped."""
    code, out, err = _interrupt_inside_del("plain")
    assert "Exception ignored" in err and "KeyboardInterrupt" in err
    assert "finished the work" in out and code == 0


def test_run_cli_delivers_a_ctrl_c_that_landed_inside_del():
    code, out, err = _interrupt_inside_del("guarded")
    assert code == 130, (code, out, err)
    assert "finished the work" not in out
    assert err.strip() == "interrupted (Ctrl-C); nothing was written"     # one line, no traceback
