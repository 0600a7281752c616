"""minunet's one thread pool: work items handed out one at a time, BLAS single-threaded inside.

Why a pool of our own. A U-Net step makes hundreds of calls into parallel code. If each call
is split evenly between two threads (a 2-thread BLAS product, a `prange` loop), each is a
barrier: when the operating system parks one of the threads (another program wants the core),
the other waits at the end of every call, and on a shared machine the step slows down many
times over. Two thread pools (OpenBLAS's and Numba's OpenMP) also spin against each other.

So the heavy layers cut their work into many small items (an image, or a band of output rows
of one image) and `parallel_for` hands them out dynamically: each thread takes the next item
when it has finished its last one. A thread that is parked holds up at most the one item it
was working on; the other threads take the rest. Inside an item, BLAS runs single-threaded
(the items are the parallelism), so no other pool is ever woken.

Small regions are not worth a second thread: waking a worker and handing the GIL back and
forth costs more than the second core gains there (`bench/bench_conv_parts.py`), so batch
norm and concatenation under SERIAL_BYTES and convolutions under SERIAL_FLOPS run
`parallel_for(..., serial=True)`, in the calling thread (still with single-threaded BLAS, so
no other pool wakes up either).

Knobs, in the order they are read:
- `set_num_threads(n)` at run time;
- the environment variable `MINUNET_NUM_THREADS`;
- otherwise the number of cores this process may run on (`os.sched_getaffinity`).
With 1 thread everything runs in the calling thread, BLAS included (one thread). BLAS's own
thread count (e.g. set with `threadpoolctl` or `OPENBLAS_NUM_THREADS`) is restored after each
of our regions, so your own NumPy code keeps whatever you chose.

The pool's threads are Python threads: the work they run (NumPy copies, BLAS products, Numba
kernels compiled with `nogil=True`) releases the GIL, and only the short bookkeeping between
items holds it.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable

import numpy as np

ENV_THREADS = "MINUNET_NUM_THREADS"


def _available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _default_threads() -> int:
    """MINUNET_NUM_THREADS if it is a usable number, else the cores this process may use.

    A wrong value is read when minunet is imported, where an exception would be a traceback
    before anything could name it; so it is warned about and replaced: not a whole number or
    below 1 -> the cores; more than the cores -> the cores (more threads than cores only wait
    for each other, and 100,000 threads cannot even be started)."""
    import warnings

    cores = _available_cores()
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return cores
    try:
        n = int(value)
    except ValueError:
        n = None
    if n is None or n < 1:
        warnings.warn(f"{ENV_THREADS}={value!r} is not a whole number of threads >= 1; "
                      f"minunet uses {cores} (the cores it may run on). Set it to e.g. 2, or "
                      "unset it", stacklevel=2)
        return cores
    if n > cores:
        warnings.warn(f"{ENV_THREADS}={value!r} is more than the {cores} cores minunet may "
                      f"run on; it uses {cores}", stacklevel=2)
        return cores
    return n


_num_threads = _default_threads()


def get_num_threads() -> int:
    """How many threads minunet's layers use (the pool's workers plus the calling thread)."""
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use `n` threads from now on (1: everything in the calling thread)."""
    global _num_threads
    if int(n) != n or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    _num_threads = int(n)


# ------------------------------------------------------------------ BLAS thread count
class _Blas:
    """Set and restore the thread count of the BLAS library NumPy uses (found lazily)."""

    def __init__(self) -> None:
        self._controllers: list | None = None

    def controllers(self) -> list:
        if self._controllers is None:
            try:
                from threadpoolctl import ThreadpoolController
                self._controllers = ThreadpoolController().select(user_api="blas").lib_controllers
            except Exception:  # threadpoolctl missing or unable: leave BLAS alone
                self._controllers = []
        return self._controllers

    def single(self) -> list[int]:
        """Switch every BLAS library to 1 thread; return what to restore."""
        previous = []
        for c in self.controllers():
            n = c.get_num_threads()
            previous.append(n)
            if n != 1:
                c.set_num_threads(1)
        return previous

    def restore(self, previous: list[int]) -> None:
        for c, n in zip(self.controllers(), previous, strict=False):
            if n != 1:
                c.set_num_threads(n)


_blas = _Blas()


# ------------------------------------------------------------------ the pool
class _Region:
    """One parallel_for call: the function, the item count and the shared item counter."""

    def __init__(self, fn: Callable[[int, int], None], count: int, workers: int) -> None:
        self.fn = fn
        self.count = count
        self.workers = workers           # how many pool workers may join
        self.items = itertools.count()   # next(items) is atomic: no lock per item
        self.active = 0                  # threads inside drain(), the caller included
        self.error: BaseException | None = None

    def drain(self, slot: int) -> None:
        """Run items until none are left (or one failed); record the first error."""
        fn, count, items = self.fn, self.count, self.items
        while self.error is None:
            i = next(items)
            if i >= count:
                return
            try:
                fn(i, slot)
            except BaseException as error:  # re-raised in the caller
                if self.error is None:
                    self.error = error
                return


class _Pool:
    """Persistent worker threads that run `parallel_for` regions with the caller.

    Items are handed out by an atomic counter, so an item costs no lock. A region ends when
    the caller and the workers that joined it have drained it: a worker that wakes up after
    the region is over (the OS had it parked, or the caller was quicker) does not join it,
    so a short region costs the caller no wake-up latency.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._workers: list[threading.Thread] = []
        self._generation = 0                 # one per region
        self._region: _Region | None = None  # the region running now
        self._busy = False                   # a region is running (nested calls run inline)
        self._local = threading.local()      # .slot: a worker's slot (the caller's is 0)

    def _ensure(self, workers: int) -> None:
        while len(self._workers) < workers:
            t = threading.Thread(target=self._loop, args=(len(self._workers) + 1,),
                                 name=f"minunet-worker-{len(self._workers) + 1}", daemon=True)
            self._workers.append(t)
            t.start()

    def _loop(self, slot: int) -> None:
        self._local.slot = slot  # nested regions in this thread use this thread's scratch
        seen = 0
        while True:
            with self._lock:
                while self._generation == seen:
                    self._wake.wait()
                seen = self._generation
                region = self._region
                if region is None or slot > region.workers:
                    continue  # over already, or not wanted
                region.active += 1
            region.drain(slot)
            with self._lock:
                region.active -= 1
                if region.active == 0:
                    self._done.notify_all()
            # drop it while waiting: its function holds the region's arrays (a convolution's
            # input and output: 160 MiB for a 1024-px tile) until the next region otherwise
            region = None

    def run(self, fn: Callable[[int, int], None], count: int, threads: int,
            blas: bool = True) -> None:
        workers = min(threads, count) - 1
        if self._busy:  # nested in one of our regions: BLAS is single-threaded already
            slot = getattr(self._local, "slot", 0)  # the slot of the item running this one
            for i in range(count):
                fn(i, slot)
            return
        if workers <= 0:  # one thread: the caller runs every item, BLAS single-threaded too
            previous = _blas.single() if blas else None
            try:
                for i in range(count):
                    fn(i, 0)
            finally:
                if previous is not None:
                    _blas.restore(previous)
            return
        self._ensure(workers)
        previous = _blas.single() if blas else None
        region = _Region(fn, count, workers)
        try:
            with self._lock:
                self._busy = True
                self._region = region
                region.active = 1  # the caller
                self._generation += 1
                self._wake.notify_all()
            region.drain(0)
            with self._lock:
                region.active -= 1
                while region.active:  # workers still running an item
                    self._done.wait()
                self._region = None
                self._busy = False
        finally:
            if previous is not None:
                _blas.restore(previous)
        if region.error is not None:
            raise region.error


_pool = _Pool()


SERIAL_BYTES = 4 << 20   # element-wise regions over less data than this run on one thread
SERIAL_FLOPS = 25e6      # and so do convolution regions of fewer multiply-adds x 2


def parallel_for(fn: Callable[[int, int], None], count: int, *, serial: bool = False,
                 blas: bool = True) -> None:
    """Call fn(item, slot) for item in range(count), spread over `get_num_threads()` threads.

    Items are handed out one at a time, in order, to whichever thread is free; `slot` (0 for
    the calling thread, 1.. for workers) is the same for every item one thread runs, so fn may
    keep per-thread scratch buffers indexed by it. Items must write disjoint outputs. BLAS is
    single-threaded while the region runs. Returns when every item is done; the first
    exception raised by an item is re-raised here.

    serial=True runs every item in the calling thread, in order (the same items, so the same
    results). The callers ask for it below SERIAL_BYTES / SERIAL_FLOPS of work: there, waking
    a worker and passing the GIL back and forth costs more than the second core gains
    (`bench/bench_conv_parts.py`, `bench/bench_unet.py --configs C1`).

    blas=False: the items never call BLAS, so its thread count is left as it is (switching it
    and back costs a few ctypes calls per BLAS library, some microseconds per region; most of
    the U-Net's regions run Numba kernels only).
    """
    _pool.run(fn, count, 1 if serial else _num_threads, blas)


def parallel_rows(fn: Callable[[int, int], None], rows: int, band: int, *,
                  serial: bool = False) -> None:
    """Call fn(first, stop) for the bands [first, stop) of `band` rows that cover range(rows),
    as `parallel_for`'s items (BLAS left alone: the bands run compiled loops). For passes over
    an image whose output rows are independent (smoothing, a tile's gather and softmax)."""
    starts = range(0, rows, band)

    def item(k: int, slot: int) -> None:
        fn(starts[k], min(rows, starts[k] + band))

    parallel_for(item, len(starts), serial=serial, blas=False)


SPLIT_FLOPS = 0.5e9  # map_batch splits only when each slice is at least this much work


def map_batch(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
              flops: float = math.inf) -> np.ndarray:
    """fn(x) computed as fn on slices of the batch, one slice per item of ONE parallel region:
    fn(x[a:b]) for consecutive slices, joined along axis 0. `flops`: fn(x)'s work.

    For work that treats every image of the batch on its own (inference: no batch statistics,
    nothing kept for backward), this makes the whole of fn one region instead of one per
    layer: each thread runs fn on a slice, and the regions fn opens run inside it, on that
    thread's own scratch buffers. A U-Net's inference on a small batch is dozens of regions
    of a few hundred microseconds, each paying for a worker's wake-up; here there is one. The
    result is the same, to the bit, as fn(x) when fn's per-image results do not depend on
    which other images are in the batch (minunet's kernels: tests/test_unet.py).

    Slices: one per thread. Each thread runs fn's Python code too, and the threads take turns
    holding the GIL; the more and smaller the slices, the more those waits cost: C1 inference
    (8 images of 64 x 64, 0.29 GFLOP a slice for 2 threads) is slower split, C1 at 16 images
    (0.58 GFLOP a slice) about even, C2 and C3 10-14 % faster (`bench/bench_fast_paths.py`);
    four slices for two threads were slower than two when this was written. Below SPLIT_FLOPS
    per thread, fn(x) runs unsplit.
    The price: when the operating system parks one thread, the other waits for its slice
    at the end (the layers' own regions hand their items to whichever thread is free).
    """
    N = x.shape[0]
    if _num_threads <= 1 or N < 2 or _pool._busy or flops / _num_threads < SPLIT_FLOPS:
        return fn(x)
    parts = min(N, _num_threads)
    bounds = [N * i // parts for i in range(parts + 1)]
    out: list[np.ndarray | None] = [None] * parts

    def item(i: int, slot: int) -> None:
        out[i] = fn(x[bounds[i]:bounds[i + 1]])

    parallel_for(item, parts)
    return np.concatenate(out, axis=0)


def single_threaded_blas() -> tuple[Callable[[], list[int]], Callable[[list[int]], None]]:
    """The pair (switch BLAS to 1 thread, restore) `parallel_for` uses, for other callers."""
    return _blas.single, _blas.restore
