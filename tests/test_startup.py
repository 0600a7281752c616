"""The command's start-up and exit (minunet/_startup.py): the garbage collector paused while
it starts and resumed, frozen, once it is set up; the process ended without Python's teardown
once the command is done, after the atexit handlers and a flush, but never under a thread
that is still running; Numba's BLAS check made without importing scipy.linalg, whose real
module still comes when asked for. Each case is a fresh process that is (or is not) the
command."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16))
    return path


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_the_command_pauses_the_collector_while_starting_and_resumes_it_frozen(image,
                                                                               tmp_path):
    out = tmp_path / "out"
    code = f"""
import gc, sys
sys.argv = ["minunet", "predict"]      # this process is the command
import minunet
paused = not gc.isenabled()
import minunet.cli as cli
code = cli.main(["predict", "--model", "nuclei", {str(image)!r}, "--out", {str(out)!r}])
print("result", paused, gc.isenabled(), gc.get_freeze_count() > 0, code)
"""
    done = _python(code, tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "result True True True 0", done.stderr
    assert (out / "a.tif").is_file()


def test_a_program_that_imports_minunet_keeps_its_collector(tmp_path):
    done = _python("import gc, minunet; print(gc.isenabled(), gc.get_freeze_count())",
                   tmp_path)
    assert done.stdout.split() == ["True", "0"], done.stderr


def test_other_commands_run_with_the_collector_on(tmp_path):
    code = """
import gc, sys
sys.argv = ["minunet", "generate"]
import minunet.cli as cli
cli.cmd_generate = lambda args: print("collector on:", gc.isenabled()) or 0
print("code", cli.main(["generate", "--n", "1", "--out", "x"]))
"""
    done = _python(code, tmp_path)
    assert "collector on: True" in done.stdout and "code 0" in done.stdout, done.stderr


def test_the_command_ends_the_process_after_atexit_and_a_flush(image, tmp_path):
    out = tmp_path / "out"
    code = f"""
import atexit, sys
sys.argv = ["minunet", "predict", "--model", "nuclei", {str(image)!r}, "--out", {str(out)!r}]
atexit.register(lambda: print("atexit ran"))   # stdout to a pipe: buffered until flushed
import minunet.cli as cli
cli.main()
print("main returned")
"""
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "a.tif (" in done.stdout and "atexit ran" in done.stdout, done.stdout
    assert "main returned" not in done.stdout        # the process ended inside main
    assert (out / "a.tif").is_file()


def test_the_command_exits_with_its_code(tmp_path):
    code = """
import sys
sys.argv = ["minunet", "predict", "--model", "nuclei", "missing.tif", "--out", "out"]
import minunet.cli as cli
cli.main()
print("main returned")
"""
    done = _python(code, tmp_path)
    assert done.returncode == 2 and "missing.tif" in done.stderr, done.stderr
    assert "main returned" not in done.stdout


def test_the_command_leaves_the_exit_to_python_while_a_thread_runs(image, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "marker"
    code = f"""
import os, sys, threading, time
sys.argv = ["minunet", "predict", "--model", "nuclei", {str(image)!r}, "--out", {str(out)!r}]
import minunet.cli as cli
def late():   # still running when the command is done: it waits for its output first
    while not os.path.exists({str(out / "a.tif")!r}):
        time.sleep(0.01)
    time.sleep(0.5)
    open({str(marker)!r}, "w").write("done")
threading.Thread(target=late).start()
code = cli.main()
print("main returned", code)
"""
    done = _python(code, tmp_path)
    assert done.returncode == 0 and "main returned 0" in done.stdout, done.stderr
    assert marker.read_text() == "done"              # Python waited for the thread


def test_the_command_never_imports_scipy_linalg_or_yaml(image, tmp_path):
    """Numba's BLAS check (`import scipy.linalg.cython_blas` as Numba sets itself up) cost
    the command 0.1-0.18 s of its start, and its settings' `import yaml` 20 ms; nothing else
    on predict's path needs scipy.linalg or YAML, nor Numba's array functions (28 ms) once
    the kernels are loaded without the compiler's tables."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "minunet", "predict",
                           "--model", "nuclei", str(image), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "a.tif").is_file()
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "numba.core.dispatcher" in imported    # Numba loaded the kernels in this process
    assert "numba.np.arraymath" not in imported   # ... without its array functions (the BLAS
    assert not [name for name in imported if name.startswith("scipy.linalg")]  # check's module)
    assert "yaml" not in imported


def test_numba_blas_check_passes_and_compiled_dot_still_gets_scipys_blas(tmp_path):
    code = """
import sys
import numpy as np
from minunet import _startup
assert "numba.np.arraymath" not in sys.modules     # not the command: nothing done on import
print("deferred", _startup.defer_unused_numba_imports(), _startup.defer_unused_numba_imports())
print("linalg", "scipy.linalg" in sys.modules, _startup.BLAS_MODULE in sys.modules)
from numba import njit
from numba.np import arraymath
print("blas", arraymath._HAVE_BLAS)

@njit
def dot(a, b):
    return np.dot(a, b)

a = np.arange(6.0).reshape(2, 3)
print("dot", np.array_equal(dot(a, a.T), a @ a.T))
blas = sys.modules[_startup.BLAS_MODULE]
print("real", not isinstance(blas, _startup._Deferred), hasattr(blas, "__pyx_capi__"))
"""
    done = _python(code, tmp_path)
    assert done.stdout.split("\n")[:5] == ["deferred True False", "linalg False False",
                                           "blas True", "dot True", "real True True"], \
        done.stdout + done.stderr


def test_the_stand_in_hands_on_the_real_module_when_touched(tmp_path):
    code = """
import sys
from minunet._startup import _Deferred
stand_in = sys.modules["colorsys"] = _Deferred("colorsys")
print(stand_in.rgb_to_hsv(1.0, 0.0, 0.0), sys.modules["colorsys"] is not stand_in)
import colorsys
print(type(colorsys).__name__, colorsys.hsv_to_rgb(0.0, 0.0, 1.0))
"""
    done = _python(code, tmp_path)
    assert done.stdout.split("\n")[:2] == ["(0.0, 1.0, 1.0) True", "module (1.0, 1.0, 1.0)"], \
        done.stdout + done.stderr


def test_numbas_settings_file_is_still_read_through_the_yaml_stand_in(tmp_path):
    """A `.numba_config.yaml` in the working directory (Numba reads it as it is imported)
    still sets Numba's settings when the command defers YAML: the stand-in imports the real
    module when Numba asks it to parse the file."""
    (tmp_path / ".numba_config.yaml").write_text("opt: '2'\n")   # Numba's default: 3
    code = """
import sys
from minunet import _startup
print("deferred", _startup.defer_unused_numba_imports())
from numba.core import config
print("opt", int(config.OPT), "yaml real", type(sys.modules["yaml"]).__name__ == "module"
      and hasattr(sys.modules["yaml"], "safe_load"))
"""
    done = _python(code, tmp_path)
    assert done.stdout.split("\n")[:2] == ["deferred True", "opt 2 yaml real True"], \
        done.stdout + done.stderr


def test_the_command_loads_its_kernels_without_numbas_compiler_tables(tmp_path):
    """The command loads its compiled kernels straight from Numba's cache: the modules that
    only Numba's compiler needs (its NumPy implementations, imported by the refresh of its
    tables) are never imported, and the labels are those `mu.segment` gives in a process
    that refreshed them (this one)."""
    import minunet as mu

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:96, :96]
    image = np.full((96, 96), 400.0)
    for _ in range(6):
        cy, cx = rng.integers(12, 84, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 3000
    image = (image + rng.normal(0, 40, image.shape)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", image)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "minunet", "predict",
                           "--model", "nuclei", str(tmp_path / "a.tif"), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = [line.split("|")[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "numba.core.dispatcher" in imported and "numba.np.npyimpl" not in imported
    labels = tifffile.imread(out / "a.tif")
    expected = mu.segment("nuclei", image)
    assert labels.max() >= 4 and np.array_equal(labels, expected)


def test_kernels_loaded_directly_and_then_compiled_ones_both_work(tmp_path):
    """After a kernel was loaded from the cache without the refresh, compiling a new one
    (which needs Numba's tables) still works: Numba refreshes them before it compiles."""
    (tmp_path / "kern.py").write_text(
        "import numpy as np\nfrom numba import njit\n\n"
        "@njit(cache=True)\ndef twice_sum(x):\n    total = 0.0\n    for v in x:\n"
        "        total += 2.0 * v\n    return total\n")
    fill = "import numpy as np, kern; print(kern.twice_sum(np.arange(4.0)))"
    use = """
import sys
import numpy as np
from minunet import _startup
print("installed", _startup.load_cached_kernels_directly(),
      _startup.load_cached_kernels_directly())
import kern
from numba import njit
print("loaded", kern.twice_sum(np.arange(4.0)), sum(kern.twice_sum.stats.cache_hits.values()),
      "numba.np.npyimpl" in sys.modules)

@njit
def running(x):
    return np.cumsum(x)[-1] + np.linalg.norm(x)

print("compiled", running(np.array([3.0, 4.0])), "numba.np.npyimpl" in sys.modules)
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", fill], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=300)
    assert first.returncode == 0 and first.stdout.strip() == "12.0", first.stderr
    done = subprocess.run([sys.executable, "-c", use], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "installed True False"
    assert lines[1] == "loaded 12.0 1 False"      # from the cache, without the tables
    assert lines[2] == "compiled 12.0 True"


def test_the_command_drops_numbas_llvm_lock_events_and_compiles_without_them(tmp_path):
    """In the command (and only there), Numba's callbacks around llvmlite's lock are taken
    off; compiling still works without them."""
    code = """
import sys
sys.argv = [{argv0!r}]
import minunet
from llvmlite.binding import ffi
from numba import njit

@njit
def add(a, b):
    return a + b

print(len(ffi.lib._lock._cblist), add(2, 3))
"""
    for argv0, callbacks in (("minunet", "0"), ("other", "1")):
        done = _python(code.format(argv0=argv0), tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split() == [callbacks, "5"], (argv0, done.stdout)
