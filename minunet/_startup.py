"""The `minunet` command's first second: Ctrl-C while the package is still being imported.

Importing minunet (NumPy, SciPy, Numba, Matplotlib) takes a second or two before the command's
`main` runs and can catch anything; a Ctrl-C then would print a KeyboardInterrupt traceback
from some library's import. When this process is the command (and only then: a program that
imports minunet keeps Python's own behaviour), a Ctrl-C during the imports prints one line and
exits with 130, as an interrupt does later. `cli.main` gives Ctrl-C back to Python as soon as
it starts.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys


def is_the_command() -> bool:
    """Whether this process runs the `minunet` command (the console script, or
    `python -m minunet.cli`)."""
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if sys.argv and os.path.basename(sys.argv[0]) == "minunet":
        return True
    return any(a == "-m" and b in ("minunet.cli", "minunet") for a, b in
               itertools.pairwise(argv))


def _interrupted_while_starting(signum: int, frame: object) -> None:
    sys.stderr.write("minunet: interrupted while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def guard_start_up() -> None:
    """Install the start-up Ctrl-C handler when this process is the command."""
    if is_the_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, _interrupted_while_starting)
        except ValueError:  # not the main thread: leave Python's handler alone
            pass


def end_start_up() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the command's own handling takes over)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


guard_start_up()
