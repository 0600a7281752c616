"""Activation: ReLU.

Forward, element by element (any shape):

    out = max(x, 0)

Backward: d out / d x is 1 where x > 0 and 0 where x < 0, so

    dx = dout * (x > 0)

At exactly x = 0 the function has a corner; we use the derivative 0 there (as PyTorch does):
a unit sitting exactly at zero passes no gradient.

Saved for backward: the output `out` (out > 0 exactly where x > 0, so x is not needed).
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array, check_finite
from ..kernels.activation import relu_backward, relu_forward
from ..module import Module


class ReLU(Module):
    """out = max(x, 0); gradient 0 at x == 0. See the module docstring."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array("ReLU", x, finite=False)  # finiteness: checked by the kernel's pass
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"ReLU: input must be float32 or float64, got {x.dtype}")
        out, probe = relu_forward(np.ascontiguousarray(x))  # same shape as x
        if probe != 0:  # sum(x - x) is NaN exactly when some x is NaN or inf
            check_finite("ReLU", x)  # raises, naming how many
        self._saved = out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        out = self._take_saved()
        if dout.shape != out.shape:
            raise ValueError(f"ReLU.backward: dout has shape {dout.shape}, the forward output "
                             f"had {out.shape}")
        # forward was `out = max(x, 0)`, so the gradient passes where out > 0 (x > 0)
        return relu_backward(np.ascontiguousarray(dout), out)
