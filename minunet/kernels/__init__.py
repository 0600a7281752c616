"""Numba kernels: the hot loops, as free functions in forward/backward pairs.

Each kernel is a plain loop nest compiled by Numba (`@njit(cache=True)`); `reference.py` holds a
slow, obvious NumPy version of each one, which the tests compare against and which you can read
first to see what a kernel computes.

To step through a kernel as plain Python (breakpoints, prints), turn the compiler off before
minunet is imported:

    NUMBA_DISABLE_JIT=1 python my_script.py

Everything still works, only much slower.
"""
