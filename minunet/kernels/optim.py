"""Optimizer kernels: Adam's whole update in one pass over memory.

The readable update in `minunet/optim.py` (Adam.step's formulas) makes about ten NumPy passes
over every parameter (each `m *= beta1`, `m += ...`, `np.sqrt`, ... reads and writes a whole
array). `adam_update` reads p, g, m, v once and writes p, m, v once, doing the same arithmetic
in the same order, element by element, in the parameters' dtype (the scalars come in that
dtype too: a float64 scalar would turn a float32 loop into a float64 one).

`error_model="numpy"`: Numba's default ("python") tests every division for a zero divisor,
to raise ZeroDivisionError, and that test keeps LLVM from vectorising the loop; with NumPy's
model a division by zero gives inf or NaN, as NumPy's own arrays do (Adam's divisor is
sqrt(v) / bias2_sqrt + eps > 0 anyway). The same bits, 4.5x faster: 7.3 -> 1.6 ms for
C3's deepest weight (2.4 M values), one thread.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy")
def adam_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, beta1: float,
                one_minus_beta1: float, beta2: float, one_minus_beta2: float,
                bias2_sqrt: float, eps: float, step_size: float, weight_decay: float,
                decay_factor: float) -> None:
    """In place, element by element (flat views of same-shaped contiguous arrays):

        g = g + weight_decay * p        (Adam's L2 term; weight_decay = 0: none)
        p = p * decay_factor            (AdamW's decoupled decay; decay_factor = 1: none)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        p = p - step_size * m / (sqrt(v) / bias2_sqrt + eps)

    Every scalar must have p's dtype. g is only read.
    """
    pf = p.reshape(-1)
    gf = g.reshape(-1)
    mf = m.reshape(-1)
    vf = v.reshape(-1)
    zero = p.dtype.type(0)
    one = p.dtype.type(1)
    for i in range(pf.size):
        w = pf[i]
        gi = gf[i]
        if weight_decay != zero:
            gi = gi + weight_decay * w
        if decay_factor != one:
            w = w * decay_factor
        mi = mf[i] * beta1 + one_minus_beta1 * gi
        vi = vf[i] * beta2 + one_minus_beta2 * gi * gi
        mf[i] = mi
        vf[i] = vi
        pf[i] = w - mi / (np.sqrt(vi) / bias2_sqrt + eps) * step_size
