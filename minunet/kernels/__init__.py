"""Numba kernels: the hot loops, as free functions in forward/backward pairs.

Each kernel is a plain loop nest compiled by Numba (`@njit(cache=True)`); `reference.py` holds a
slow, obvious NumPy version of each one, which the tests compare against and which you can read
first to see what a kernel computes.

To step through a kernel as plain Python (breakpoints, prints), turn the compiler off before
minunet is imported:

    NUMBA_DISABLE_JIT=1 python my_script.py

Everything still works, only much slower.

Threading: two thread pools share the cores. Numba's parallel kernels (`prange`) run on an
OpenMP pool (GNU libgomp); the convolutions' matrix products run on OpenBLAS's own pthreads pool.
By default libgomp's workers keep spinning for a while after each parallel kernel, and on a
machine with as many cores as threads (2 here) those spinning workers take the cores that the
next BLAS product needs (and OpenBLAS's idle workers do the same to the next Numba kernel):
a parallel kernel right after a BLAS call measured 2.5x slower. Our policy:

- Numba kernels use `prange` where each thread owns an output slice; BLAS keeps its own threads.
- `OMP_WAIT_POLICY=PASSIVE` (set below, only if you have not set it yourself): idle OpenMP
  workers sleep at once instead of spinning, so they never compete with BLAS. It must be in
  the environment before the OpenMP runtime loads, i.e. before the first parallel kernel (or
  before `import torch`, which shares the same runtime); importing minunet first does that.
- OpenBLAS's own spinning (`OPENBLAS_THREAD_TIMEOUT`) is read when NumPy loads OpenBLAS, before
  any minunet code runs, so it cannot be set here; exporting `OPENBLAS_THREAD_TIMEOUT=4` in the
  shell shortens it further.
"""

import os

# Idle OpenMP workers sleep instead of spinning (see "Threading" above); a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
