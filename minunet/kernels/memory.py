"""Keep freed memory for the next step (glibc malloc settings for large NumPy arrays), and
map new memory in small pages.

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

Huge pages. NumPy asks the kernel for transparent huge pages on every array of 4 MiB or more
(`madvise(MADV_HUGEPAGE)`); where the kernel's THP `defrag` setting is `madvise` (the default
of many distributions, and this project's machines), each first touch of such memory may
compact memory to find a free 2 MiB page, synchronously. That cost the first forward of a
1152 x 1152 inference tile (`minunet predict` of one image runs only a few) 1.5 s of system
time, and nothing on later forwards, whose memory malloc keeps (above). `small_pages()`
turns NumPy's request off, so new memory is mapped 4 KiB at a time: `python
bench/bench_inference.py --first-forward` gave 0.86-0.91 s for the first forward against
2.26-2.28 s with huge pages, 0.72-0.78 s for the second either way; training steps
(`NUMPY_MADVISE_HUGEPAGE=1` or not before `python bench/bench_unet.py --configs C2,C3 --modes
train --no-torch --rounds 1`, twice, under another job's load) showed no slowdown: C3 3.24-3.59
s without, 3.94-3.97 s with (2026-12-07, Intel Xeon, 2 vCPUs).

Both are applied when minunet.kernels is imported, on Linux only (malloc: with glibc only),
and never when you chose yourself: `MINUNET_MALLOC=default` leaves both alone;
`NUMPY_MADVISE_HUGEPAGE` (NumPy's own switch) set to anything keeps NumPy's choice of pages;
any `MALLOC_*_` variable of your own (e.g. `MALLOC_MMAP_THRESHOLD_`) or a `glibc.malloc`
tunable in `GLIBC_TUNABLES` leaves malloc alone.
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


def small_pages() -> bool:
    """Turn off NumPy's huge-page requests (see above); True if turned off by this call."""
    if (os.environ.get(ENV_MALLOC, "").strip().lower() == "default"
            or "NUMPY_MADVISE_HUGEPAGE" in os.environ or not sys.platform.startswith("linux")):
        return False
    import numpy as np

    switch = getattr(getattr(getattr(np, "_core", None), "multiarray", None),
                     "_set_madvise_hugepage", None)
    if switch is None:  # NumPy 1.x spells it np.core
        switch = getattr(getattr(getattr(np, "core", None), "multiarray", None),
                         "_set_madvise_hugepage", None)
    if switch is None:
        return False
    switch(False)
    return True


applied = keep_freed_memory()
huge_pages_off = small_pages()
