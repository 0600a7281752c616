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

Mapping ahead (`Prefault`). Even with malloc keeping freed memory, the first forward of a
process meets every page of its working set fresh: the bundled model's first 1152 x 1152 tile
faulted in about 500 MiB, page by page, 0.13-0.16 s of the first tile's 0.45 s. `minunet
predict` knows the size of its first image while it is still setting itself up (importing
Numba, loading the model and its compiled kernels: Python on one core, the other idle), so it
has that much of malloc's heap mapped then, on the idle core: `Prefault(n)` mallocs an n-byte
block from the calling thread (the main thread, so the block comes from the heap the
network's arrays come from), and a background thread writes to each of its pages, which has
the kernel map them; `release()` stops the thread where it is and frees the block, which
malloc keeps (above) for the arrays that follow. A forward of that tile after 420 MiB were
mapped ahead: 8 MiB of page faults instead of 495 MiB, 0.32-0.43 s instead of 0.49 s
(ad-hoc, 2026-12-07, Intel Xeon, 2 vCPUs). Only where malloc keeps freed memory (`applied`);
otherwise the freed block would go straight back to the operating system.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

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


PREFAULT_MAX = TRIM_THRESHOLD // 2  # never more than this (freed, it must stay in the heap)
PREFAULT_STEP = 8 * 2**20         # bytes mapped between two looks at whether to stop


class Prefault:
    """`nbytes` of malloc's heap mapped by a background thread while the caller goes on (see
    "Mapping ahead" above). Call `release()` before the work that needs the memory: it stops
    the thread where it is (the pages not mapped yet are mapped as the work meets them, as
    without this) and frees the block. Does nothing (no block, no thread) for nbytes <= 0 or
    where malloc does not keep freed memory (`applied`); at most PREFAULT_MAX bytes, and at
    most half the memory free now. `mapped`: the bytes mapped when it was released."""

    def __init__(self, nbytes: int) -> None:
        import numpy as np

        self.nbytes = min(int(nbytes), PREFAULT_MAX, _free_memory() // 2) if applied else 0
        self.mapped = 0
        self._stop = threading.Event()
        self._block: np.ndarray | None = None
        self._thread: threading.Thread | None = None
        if self.nbytes > 0:
            self._block = np.empty(self.nbytes, np.uint8)   # from this thread's (main) heap
            self._thread = threading.Thread(target=self._map_pages, args=(self._block,),
                                            name="minunet-prefault", daemon=True)
            self._thread.start()

    def _map_pages(self, block: np.ndarray) -> None:
        """Have the pages of `block` (a uint8 array) mapped, from its start (where malloc
        serves the next blocks from), PREFAULT_STEP bytes at a time until done or stopped:
        one write per page, each a page fault that the kernel serves under the lock of that
        one memory area. (Linux's madvise(MADV_POPULATE_WRITE) maps a range in one call, but
        holds the lock on the process's whole memory map while it does, which Numba's JIT
        needs to map the kernels it loads meanwhile: the first kernel load took 54-147 ms
        against 28-40 ms, ad-hoc, 5 runs each.) NumPy's strided fill runs without the GIL."""
        page = os.sysconf("SC_PAGE_SIZE")
        for start in range(0, block.size, PREFAULT_STEP):
            if self._stop.is_set():
                return
            block[start:start + PREFAULT_STEP:page] = 0
            self.mapped = min(block.size, start + PREFAULT_STEP)

    def release(self) -> None:
        """Stop mapping (within one step), then free the block (malloc keeps its pages)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = self._block = None


def _free_memory() -> int:
    """Bytes of memory available now without swapping (Linux's MemAvailable; 0 where
    unknown)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
