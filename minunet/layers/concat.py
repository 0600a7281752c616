"""Channel concatenation: Concat, the U-Net's skip connection joint.

Forward joins two feature maps along the channel axis:

    a (N, Ca, H, W), b (N, Cb, H, W)  ->  out (N, Ca + Cb, H, W)
    out[:, :Ca] = a,   out[:, Ca:] = b

Backward: each output channel is a copy of exactly one input channel, so the gradient is
split back the same way:

    da = dout[:, :Ca],   db = dout[:, Ca:]      (returned as new arrays, never views of dout)

Saved for backward: Ca, the number of channels that came from `a`.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module


class Concat(Module):
    """forward(a, b) -> (N, Ca + Cb, H, W); backward(dout) -> (da, db)."""

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self._check_inputs(a, b)
        out = np.concatenate([a, b], axis=1)       # (N, Ca + Cb, H, W)
        self.save_for_backward(a.shape[1])         # Ca
        return out

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (Ca,) = self.take_saved()
        self._check_dout(dout, Ca)
        # forward was `out = [a | b]` along channels, so the gradient splits the same way
        da = dout[:, :Ca].copy()                   # (N, Ca, H, W)
        db = dout[:, Ca:].copy()                   # (N, Cb, H, W)
        return da, db

    # ------------------------------------------------------------ argument checks
    def _check_inputs(self, a: np.ndarray, b: np.ndarray, finite: bool = True) -> None:
        check_array("Concat", a, ndim=4, name="first input (a)", finite=finite)
        check_array("Concat", b, ndim=4, name="second input (b)", finite=finite)
        if a.dtype != b.dtype:
            raise TypeError(f"Concat: inputs have different dtypes, a {a.dtype} and b {b.dtype}")
        if (a.shape[0], *a.shape[2:]) != (b.shape[0], *b.shape[2:]):
            raise ValueError(
                f"Concat: inputs must agree in N, H and W (only channels may differ), got "
                f"a {a.shape} and b {b.shape}; crop or pad one of them first")
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"Concat: inputs must be float32 or float64, got {a.dtype}")

    def _check_dout(self, dout: np.ndarray, Ca: int) -> None:
        if dout.ndim != 4 or dout.shape[1] <= Ca:
            raise ValueError(f"Concat.backward: dout of shape {dout.shape} does not match the "
                             f"forward output (its first {Ca} channels came from a)")
