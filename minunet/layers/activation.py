"""Activation: ReLU.

Forward, element by element (any shape):

    out = max(x, 0)

Backward: d out / d x is 1 where x > 0 and 0 where x < 0, so by the chain rule

    dx = dout * (x > 0)

At exactly x = 0 the function has a corner; we use the derivative 0 there (as PyTorch does):
a unit sitting exactly at zero passes no gradient.

Saved for backward: x (only the sign of each element matters).
The fast version (`minunet.kernels.layers.ReLU`) computes the same in one Numba pass each way.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module


class ReLU(Module):
    """out = max(x, 0); gradient 0 at x == 0. See the module docstring."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x)
        out = np.maximum(x, 0)                   # same shape as x
        self.save_for_backward(x)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        (x,) = self.take_saved()                 # same shape as dout
        self._check_dout(dout, x.shape)
        # forward was `out = max(x, 0)`: the gradient passes where x > 0, and stops elsewhere
        return dout * (x > 0)                    # a new array, dtype of dout

    # ------------------------------------------------------------ argument checks
    def _check_input(self, x: np.ndarray, finite: bool = True) -> None:
        check_array("ReLU", x, finite=finite)  # finite: refuse NaN and inf, naming how many
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"ReLU: input must be float32 or float64, got {x.dtype}")

    def _check_dout(self, dout: np.ndarray, shape: tuple[int, ...]) -> None:
        if dout.shape != shape:
            raise ValueError(f"ReLU.backward: dout has shape {dout.shape}, the forward output "
                             f"had {shape}")
