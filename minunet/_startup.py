"""The `minunet` command's first second and its last moment: Ctrl-C while the package is
still being imported, the garbage collector during the start-up, and the exit.

When this process is the command (and only then: a program that imports minunet keeps
Python's own behaviour):

- **Ctrl-C.** Importing minunet (NumPy, SciPy, Numba) takes most of a second before the
  command's `main` runs and can catch anything; a Ctrl-C then would print a KeyboardInterrupt
  traceback from some library's import. Instead, a Ctrl-C during the imports prints one line
  and exits with 130, as an interrupt does later. `cli.main` gives Ctrl-C back to Python as
  soon as it starts (`end_start_up`).
- **The garbage collector** is paused from here until the command has set itself up
  (`resume_gc`: `minunet predict` once its model has segmented a blank image, which sets Numba
  up and loads the compiled kernels; the other commands as they start). The start-up creates
  hundreds of thousands of objects that all live to the end (modules, Numba's typing tables),
  and Python's collector would scan them again and again while they are made. No garbage is
  lost: the collector runs as usual afterwards, and the start-up's objects are moved to its
  permanent generation first (`gc.freeze`), so that its later passes skip them.
- **Numba's unused imports** (`defer_unused_numba_imports`). When Numba sets itself up (the
  first compiled kernel loaded), it checks that SciPy's BLAS wrappers can be imported, for the
  matrix products its own compiled code may call: `import scipy.linalg.cython_blas`, which
  imports all of `scipy.linalg`, 0.1-0.18 s, though minunet's kernels never call BLAS from
  compiled code (they call NumPy's `matmul` from Python). The command lets that check see a
  stand-in for the module instead, only while Numba's module making the check is imported,
  and then takes the stand-in out of `sys.modules`: SciPy's real module is imported the first
  time anything asks for it (Numba compiling an `np.dot`, or SciPy itself), as before. Should
  anything touch the stand-in in that window, it imports the real module and hands it on.
  `minunet predict` of a 64 x 64 image: 0.65 s against 0.76 s (fastest of 12, medians 0.70 and
  0.79 s; `python bench/ab_steps.py BEFORE . --command 64 --rounds 12`, BEFORE a worktree of
  600e4ff, 2026-12-07, Intel Xeon, 2 vCPUs, labels identical).
  The same for YAML: Numba's import imports it (about 20 ms) to read a `.numba_config.yaml`
  that it looks for in the working directory only when it reads its settings; while Numba is
  imported, `yaml` is a stand-in too when PyYAML is installed (when it is not, Numba sees it
  missing, as before), so YAML is imported only where such a file is read.
- **Numba's compiler tables** (`load_cached_kernels_directly`). Before it loads a compiled
  kernel from its cache, Numba refreshes its compiler's tables: it imports its
  implementations of Python and NumPy (about 60 modules) and registers thousands of typing
  templates, everything it needs to *compile* code, once per process: about 0.1 s. Loading
  machine code from the cache needs none of it, only Numba's runtime (`rtsys.initialize`,
  which the refresh also does), the symbols the code calls (registered as Numba is
  imported, or by the kernel's own loader: Numba's threads for parallel kernels) and the
  modules its globals came from (Numba's loader imports those itself). In the
  command, a kernel is loaded from the cache without the refresh; compiling one (a cache
  miss, a new signature) refreshes the tables first, as Numba always does before it
  compiles. The first `minunet predict` kernels: 0.20-0.23 s against 0.31-0.33 s to load
  (the dry run on a blank image, 6 alternated runs each, ad-hoc, 2026-12-07, Intel Xeon);
  labels identical. Nor does the command import Numba's array functions then (the module
  that makes the BLAS check above, 28 ms with the modules it imports): it imports Numba
  itself only, with YAML's stand-in; a compile imports them through the refresh, and the
  check then imports scipy.linalg for real. Where this Numba lacks what the direct loading
  replaces, the command imports the array functions with the BLAS stand-in, as above.
- **Numba's events around LLVM's lock** (`drop_llvm_lock_events`). Each of llvmlite's calls
  into LLVM takes a lock, and Numba has a callback on it that announces a
  "numba:llvm_lock" event on either side (for the timers of its compiler's reports): 20-30
  Python calls around each of the thousands of LLVM calls that loading the kernels makes.
  No one listens in the command, so its callbacks come off: the 19 kernel loads of a
  `minunet predict` took 113-116 ms against 133-191 ms (ad-hoc, 5 alternated runs each,
  2026-12-07, Intel Xeon). A compile's report then shows no time in LLVM's lock.
- **The exit** (`exit_now`): once the command is done, its files written, flushed to disk and
  closed, and its locks released, Python would still tear down every module and object
  (Numba's compiled code among them) before the process ends: about 0.2 s after a
  `minunet predict` of a 2048 x 2048 image. The command ends the process right away instead,
  after the atexit handlers and a flush of stdout and stderr, unless a thread of its own is
  still running.

Both together took `minunet predict` of a 2048 x 2048 image from 2.63 to 2.43 s (fastest of
six, medians 3.08 and 2.67 s; `python bench/ab_steps.py BEFORE . --command 2048 --rounds 6`,
BEFORE a worktree of c290695, run at 7e3094e, 2026-12-07, Intel Xeon, 2 vCPUs, labels
identical; docs/speed.md, seventh round, has the later runs).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.util
import itertools
import os
import signal
import sys
import threading
import types
from typing import Any


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


_gc_paused = False  # guard_start_up paused the collector, and resume_gc has not resumed it


def guard_start_up() -> None:
    """Install the start-up Ctrl-C handler, pause the garbage collector, defer Numba's
    unused imports (scipy.linalg, YAML), load its cached kernels directly and drop its LLVM
    lock events, when this process is the command."""
    global _gc_paused
    if not is_the_command():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        try:
            signal.signal(signal.SIGINT, _interrupted_while_starting)
        except ValueError:  # not the main thread: leave Python's handler alone
            pass
    if gc.isenabled():
        gc.disable()
        _gc_paused = True
    defer_unused_numba_imports(array_functions=False)
    if not load_cached_kernels_directly():   # Numba's refresh imports its array functions
        defer_unused_numba_imports()
    drop_llvm_lock_events()


BLAS_MODULE = "scipy.linalg.cython_blas"  # what Numba's BLAS check imports
YAML_MODULE = "yaml"                        # what Numba's settings import, for a file of them


class _Deferred(types.ModuleType):
    """A stand-in for a module in `sys.modules`: the first attribute asked of it takes the
    stand-in out, imports the real module and answers from that."""

    def __getattr__(self, name: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def defer_unused_numba_imports(array_functions: bool = True) -> bool:
    """Import Numba and, with `array_functions`, its array functions (`numba.np.arraymath`,
    which runs Numba's BLAS check on import) with stand-ins for `scipy.linalg.cython_blas`
    and, if installed and Numba is not imported yet, `yaml` in sys.modules, so that neither
    scipy.linalg nor YAML is imported for nothing (see the module docstring); the stand-ins
    are gone when this returns. True if done, False where there was nothing to do (Numba's
    check has run, or SciPy's module is loaded already; without array_functions: Numba is
    imported already). Without SciPy the check fails as it would have (importing `scipy`)."""
    if array_functions and ("numba.np.arraymath" in sys.modules
                            or BLAS_MODULE in sys.modules):
        return False
    if not array_functions and "numba" in sys.modules:
        return False
    names = [BLAS_MODULE] if array_functions else []
    if (YAML_MODULE not in sys.modules and "numba" not in sys.modules
            and importlib.util.find_spec(YAML_MODULE) is not None):
        names.append(YAML_MODULE)
    for name in names:
        sys.modules[name] = _Deferred(name)
    try:
        # numba.np.arraymath's BLAS check runs now, on the stand-in; Numba's settings read
        # YAML's stand-in
        importlib.import_module("numba.np.arraymath" if array_functions else "numba")
    finally:
        for name in names:
            if isinstance(sys.modules.get(name), _Deferred):
                del sys.modules[name]
    return True


def load_cached_kernels_directly() -> bool:
    """Load compiled kernels from Numba's cache without refreshing its compiler's tables
    first (see the module docstring): `numba.core.caching.Cache.load_overload` initialises
    Numba's runtime, then loads. True if installed; False where it was already, or where
    this Numba lacks the methods it replaces and calls (Numba's own loader stays)."""
    try:
        from numba.core import caching
        from numba.core.runtime import nrt
    except ImportError:
        return False
    cache, runtime = caching.Cache, getattr(nrt, "rtsys", None)
    original = getattr(cache, "load_overload", None)
    if (original is None or getattr(original, "_minunet", False) or runtime is None
            or not hasattr(runtime, "initialize")
            or not all(hasattr(cache, name) for name in ("_load_overload",
                                                          "_guard_against_spurious_io_errors"))):
        return False

    def load_overload(self: Any, sig: Any, target_context: Any) -> Any:
        runtime.initialize(target_context)  # what the refresh does that loading needs
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)
        return None  # the guard swallowed an I/O error: compiled instead, as Numba does

    load_overload._minunet = True  # type: ignore[attr-defined]
    load_overload.__wrapped__ = original  # type: ignore[attr-defined]
    cache.load_overload = load_overload
    return True


def drop_llvm_lock_events() -> bool:
    """Take Numba's callbacks off llvmlite's lock (see the module docstring): True if there
    were any and they are gone, False where there were none or llvmlite keeps them
    elsewhere."""
    try:
        from llvmlite.binding import ffi
    except ImportError:
        return False
    callbacks = getattr(getattr(getattr(ffi, "lib", None), "_lock", None), "_cblist", None)
    unregister = getattr(ffi, "unregister_lock_callback", None)
    if not isinstance(callbacks, list) or not callbacks or unregister is None:
        return False
    for acquired, released in list(callbacks):
        unregister(acquired, released)
    return True


def resume_gc() -> None:
    """The garbage collector on again if guard_start_up paused it, with every object made so
    far moved to its permanent generation (they live to the end). Calling it again does
    nothing."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


def exit_now(code: int) -> None:
    """End the command's process with `code` without tearing the interpreter down: the
    atexit handlers run and stdout and stderr are flushed first. Returns (the caller then
    exits as usual) when this process is not the command, or while another non-daemon thread
    is still running (Python's exit waits for those)."""
    if not is_the_command() or any(t is not threading.main_thread() and not t.daemon
                                   for t in threading.enumerate()):
        return
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:  # not CPython: leave the exit to Python
        return
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to write there
            pass
    os._exit(code)


def end_start_up() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the command's own handling takes over)."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


guard_start_up()
