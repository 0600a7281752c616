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


# glibc's mallinfo2(): what malloc holds (its heap: arena; blocks mapped on their own: hblkhd)
MALLINFO = """
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena ordblks smblks hblks hblkhd "
                "usmblks fsmblks uordblks fordblks keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
"""

LARGE_BLOCK_PROBE = MALLINFO + """
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


PREFAULT_PROBE = """
import resource, sys, time
import numpy as np
import minunet.kernels.memory as m
size = 48 * 2**20
mapped = m.Prefault(size if sys.argv[1] == "ahead" else 0)
for _ in range(1000):                      # until every page is mapped (at most 10 s)
    if mapped.mapped == mapped.nbytes:
        break
    time.sleep(0.01)
mapped.release()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.empty(size - 2**20, np.uint8)   # malloc hands back the freed pages ...
block[::4096] = 1                          # ... and touching them faults no more
print(mapped.nbytes, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("MALLOC_") or k in ("MINUNET_MALLOC", "GLIBC_TUNABLES"))}
    return {**env, **extra}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_prefault_maps_the_pages_the_next_arrays_get():
    """`Prefault(n)` has n bytes of the heap mapped by another thread and frees them: the
    arrays malloc makes next reuse those pages instead of faulting fresh ones in."""
    if applied() != "True":
        pytest.skip("malloc not tuned here: nothing is mapped ahead")
    runs = {}
    for mode in ("ahead", "none"):
        out = subprocess.run([sys.executable, "-c", PREFAULT_PROBE, mode], env=_clean_env(),
                             capture_output=True, text=True, check=True).stdout.split()
        runs[mode] = int(out[0]), int(out[1])
    pages = (47 * 2**20) // 4096
    assert runs["none"][0] == 0 and runs["none"][1] > pages // 2     # fresh pages: faults
    assert runs["ahead"][0] == 48 * 2**20 and runs["ahead"][1] < pages // 20  # mapped ahead


def test_prefault_release_stops_the_mapping_where_it_is():
    """`release()` does not wait for the whole block: the command's first image starts when
    its set-up is done, whatever is still unmapped (mapped as the network meets it)."""
    if applied() != "True":
        pytest.skip("malloc not tuned here: nothing is mapped ahead")
    code = ("import minunet.kernels.memory as m; p = m.Prefault(m.PREFAULT_MAX); p.release(); "
            "print(p.nbytes, p.mapped, m.PREFAULT_STEP)")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True,
                         text=True, check=True).stdout.split()
    nbytes, mapped, step = (int(v) for v in out)
    assert nbytes > 8 * step and mapped % step == 0 and mapped <= 2 * step


def test_prefault_does_nothing_where_malloc_is_left_alone():
    """Without minunet's malloc settings, a freed block may go back to the system at once:
    mapping it ahead would be for nothing."""
    code = "import minunet.kernels.memory as m; p = m.Prefault(2**24); p.release(); " \
           "print(p.nbytes)"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(MINUNET_MALLOC="default"),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


ESTIMATE_PROBE = MALLINFO + """
import sys
import numpy as np
import minunet as mu
from minunet.predict import memory_estimate, predict
depth, base, size = (int(v) for v in sys.argv[1:4])
model = mu.UNet(1, 3, depth=depth, base_channels=base, rng=0)
x = np.random.default_rng(0).random((size, size)).astype(np.float32)
predict(model, x[:64, :64], normalized=True)   # kernels loaded, small buffers in place
before = libc.mallinfo2().arena
predict(model, x, normalized=True)
print(memory_estimate(model, (size, size)), libc.mallinfo2().arena - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("depth, base, size", [(3, 8, 1100), (2, 16, 1100)])
def test_memory_estimate_is_near_what_predict_allocates(depth, base, size):
    """`predict.memory_estimate` (what the command maps ahead) against malloc's heap growth
    over one `predict` in a fresh process, within 10 %: depth 3 and 8 channels, depth 2 and
    16 (the bundled model: depth 3, 16)."""
    import ctypes
    if applied() != "True" or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("needs minunet's malloc settings and glibc's mallinfo2")
    out = subprocess.run([sys.executable, "-c", ESTIMATE_PROBE, str(depth), str(base),
                          str(size)], env=_clean_env(), capture_output=True, text=True,
                         check=True).stdout.split()
    estimate, grown = int(out[0]), int(out[1])
    assert 0.9 * grown <= estimate <= 1.1 * grown, (estimate, grown)
