"""Helpers shared by the tests that run a tool in a child process and interrupt it (imported by
test files; not a test module)."""
import signal


def ctrl_c_as_in_a_terminal():
    """Child-process setup (``preexec_fn``): SIGINT back to its default, so the child's Python
    installs its KeyboardInterrupt handler as it does under a terminal. A test suite started in
    the background (``pytest &``, a CI runner) inherits SIGINT *ignored*, which would make the
    Ctrl-C these tests send a no-op."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
