"""Numba kernels: the hot loops, as free functions in forward/backward pairs.

Each kernel is a plain loop nest compiled by Numba (`@njit(cache=True)`); `reference.py` holds a
slow, obvious NumPy version of each one, which the tests compare against and which you can read
first to see what a kernel computes.

To step through a kernel as plain Python (breakpoints, prints), turn the compiler off before
minunet is imported:

    NUMBA_DISABLE_JIT=1 python my_script.py

Everything still works, only much slower.

Threading (see threads.py): the heavy layers (convolutions, batch norm + ReLU) cut their work
into many small items (an image and a band of output rows; a group of channels) and hand
them out one at a time to minunet's own threads, with BLAS single-threaded inside those
regions. A thread the operating system parks delays one item instead of every product, and
OpenBLAS's pool is not woken at all there. Knobs:

- `MINUNET_NUM_THREADS=n` (or `minunet.kernels.threads.set_num_threads(n)`): how many threads
  minunet uses; default, the cores this process may run on. On a machine you share with
  other jobs, fewer threads than cores can be faster.
- Your own NumPy/BLAS calls keep the thread count you gave BLAS (`threadpoolctl`,
  `OPENBLAS_NUM_THREADS`): minunet restores it after each of its regions.
- `OMP_WAIT_POLICY=PASSIVE` (set below, only if you have not set it yourself): the few Numba
  `prange` kernels left (general-geometry im2col/col2im) use an OpenMP pool whose idle
  workers would otherwise spin and take the cores the next product needs. It must be in
  the environment before the OpenMP runtime loads (also before `import torch`, which shares
  it); importing minunet first does that.
"""

import os

# Idle OpenMP workers sleep instead of spinning (see "Threading" above); a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
