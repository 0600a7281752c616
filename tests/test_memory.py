"""The malloc settings minunet applies on import, and the ways to keep it from doing so."""

import os
import subprocess
import sys

import pytest

PROBE = "import minunet.kernels.memory as m; print(m.applied)"


def applied(**env_changes: str | None) -> str:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("MINUNET_MALLOC", "GLIBC_TUNABLES"))}
    for key, value in env_changes.items():
        if value is not None:
            env[key] = value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_applied_on_import_with_glibc():
    import ctypes
    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    assert applied() == "True"


def test_user_opt_out_is_respected():
    assert applied(MINUNET_MALLOC="default") == "False"


@pytest.mark.parametrize("name, value", [("MALLOC_TOP_PAD_", "0"),
                                         ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")])
def test_users_own_malloc_settings_win(name, value):
    assert applied(**{name: value}) == "False"


LARGE_BLOCK_PROBE = """
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena ordblks smblks hblks hblkhd "
                "usmblks fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
import numpy as np
import minunet  # noqa: F401
before = libc.mallinfo2().hblkhd     # bytes malloc holds in blocks mapped on their own
block = np.ones(2**24, np.float32)  # 64 MiB: above glibc's largest mmap threshold
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_blocks_above_32_mib_come_from_the_heap_too():
    """C3's activations (32-64 MiB) must not be fresh mmap pages on every step."""
    import ctypes
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc older than 2.33: no mallinfo2")
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("MINUNET_MALLOC", "GLIBC_TUNABLES"))}
    run = subprocess.run([sys.executable, "-c", LARGE_BLOCK_PROBE], env=env,
                         capture_output=True, text=True, check=True)
    assert int(run.stdout) == 0


HUGE_PAGES_PROBE = ("import minunet.kernels.memory as m, numpy as np; "
                    "print(m.huge_pages_off, np._core.multiarray._set_madvise_hugepage(True))")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
@pytest.mark.parametrize("env, expected", [({}, "True False"),
                                           ({"NUMPY_MADVISE_HUGEPAGE": "1"}, "False True"),
                                           ({"MINUNET_MALLOC": "default"}, "False True")])
def test_numpy_huge_pages_off_unless_the_user_chose(env, expected):
    """NumPy's madvise(MADV_HUGEPAGE) is off after import (the setter returns the previous
    value), unless NUMPY_MADVISE_HUGEPAGE or MINUNET_MALLOC=default says otherwise."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("NUMPY_MADVISE_HUGEPAGE", "MINUNET_MALLOC")}
    run = subprocess.run([sys.executable, "-c", HUGE_PAGES_PROBE], env={**base, **env},
                         capture_output=True, text=True, check=True)
    assert run.stdout.strip() == expected
