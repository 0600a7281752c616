"""Numba kernels: the hot loops, as free functions in forward/backward pairs.

Each kernel is a plain loop nest compiled by Numba (`@njit(cache=True)`) or a BLAS product
around one. The float32 convolutions run on register-tiled Numba kernels where the CPU has
AVX-512 (`gemm.py`, with the 16-lane vector type of `simd.py`; `conv.py` says when), BLAS
elsewhere; `MINUNET_GEMM=blas` sends every product to BLAS. The readable version of each
layer is in `minunet/layers/`; `layers.py` here holds the same layers computed with these
kernels, and `reference.py` holds NumPy oracles of the kernel functions (whole arrays, one
einsum per tap), which the tests compare them with.

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
- `OMP_WAIT_POLICY=PASSIVE` (set below, only if you have not set it yourself): an OpenMP
  pool loaded by other code in the process (another library's parallel loops, torch) would
  otherwise keep idle workers spinning on the cores minunet's threads need. It must be in
  the environment before the OpenMP runtime loads; importing minunet first does that.

Memory (see memory.py): glibc malloc is asked to serve every block from its heap and keep
freed blocks for the next step instead of returning them to the operating system (fresh
pages cost a page fault each, about 10 % of a training step), and NumPy's requests for
transparent huge pages are turned off (their synchronous compaction cost more than a second
on the first forward of a large inference tile). `MINUNET_MALLOC=default` leaves both alone.
"""

import os

# Idle OpenMP workers sleep instead of spinning (see "Threading" above); a user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import memory  # noqa: F401  (applies its malloc settings once, on import)
