"""Keep freed memory for the next step: glibc malloc settings for large NumPy arrays.

Every training step allocates the same large arrays again (activations, gradients, columns).
By default glibc's malloc serves blocks of a few MiB straight from the operating system
(`mmap`) and gives them back on free, and trims freed memory at the top of its heap; the next
step then touches brand-new pages, and the kernel zeroes each 4 KiB page on its first write
(a page fault per page). On the U-Net's training step that cost about 10 % of the time
(`MINUNET_MALLOC=default python bench/bench_unet.py --configs C2 --modes train --no-torch`:
329-331 ms, against 294-299 ms with the settings below).

`keep_freed_memory()` asks malloc to serve blocks of every size from its heap and to keep what
is freed, so the next step reuses pages already mapped. Two settings do that: blocks up to
32 MiB (the largest threshold glibc allows) stop going to `mmap`, and blocks above it (C3's
activations are 32-64 MiB) do too, because `mmap` is switched off for malloc altogether
(`M_MMAP_MAX` = 0). Those larger blocks matter most: two threads touching fresh pages of
one array fault in turn on the kernel's lock. C3 inference, `bench/bench_unet.py --configs
C3 --modes infer --no-torch --rounds 1`: 439-474 ms with MINUNET_MALLOC=default (malloc left
alone), 423-432 ms with these settings.
The price: the process keeps the memory of its largest step until it exits (RSS stays near
the peak instead of falling between steps), and the peak grows a little (C2 training: 441 MiB
against 423). PyTorch's CPU tuning guides give the same advice (the `MALLOC_*` variables, or
jemalloc/tcmalloc).

It is applied when minunet.kernels is imported, on Linux with glibc only, and never when you
chose yourself: set `MINUNET_MALLOC=default` to leave malloc alone, and any `MALLOC_*_`
variable of your own (e.g. `MALLOC_MMAP_THRESHOLD_`) or a `glibc.malloc` tunable in
`GLIBC_TUNABLES` makes minunet leave malloc alone too.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_MALLOC = "MINUNET_MALLOC"
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4  # mallopt's
MMAP_THRESHOLD = 32 * 2**20   # blocks up to this size come from the heap (glibc's maximum)
MMAP_MAX = 0                  # and larger ones too: malloc never maps a block of its own
TRIM_THRESHOLD = 2**30        # give memory back only when 1 GiB is free at the heap's top
TOP_PAD = 64 * 2**20          # grow the heap in steps of 64 MiB (pages are mapped lazily)


def keep_freed_memory() -> bool:
    """Apply the settings above; True if glibc accepted them, False if skipped or refused."""
    if os.environ.get(ENV_MALLOC, "").strip().lower() == "default":
        return False
    if (any(name.startswith("MALLOC_") and name.endswith("_") for name in os.environ)
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")):
        return False  # the user tuned malloc: theirs wins
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        getattr(libc, "gnu_get_libc_version")  # noqa: B009  (glibc only, not musl)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    accepted = [mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                mallopt(_M_TOP_PAD, TOP_PAD),
                mallopt(_M_MMAP_MAX, MMAP_MAX)]
    return all(accepted)


applied = keep_freed_memory()
