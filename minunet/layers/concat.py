"""Channel concatenation: Concat, the U-Net's skip connection joint.

Forward joins two feature maps along the channel axis:

    a (N, Ca, H, W), b (N, Cb, H, W)  ->  out (N, Ca + Cb, H, W)
    out[:, :Ca] = a,   out[:, Ca:] = b

Backward: each output channel is a copy of exactly one input channel, so the gradient is
split back the same way:

    da = dout[:, :Ca],   db = dout[:, Ca:]      (returned as new contiguous arrays)

Saved for backward: Ca, the number of channels that came from `a`.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array, check_finite
from ..kernels.concat import concat_channels
from ..module import Module


class Concat(Module):
    """forward(a, b) -> (N, Ca + Cb, H, W); backward(dout) -> (da, db)."""

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # finiteness is checked by the kernel, in the same pass as the copy
        check_array("Concat", a, ndim=4, name="first input (a)", finite=False)
        check_array("Concat", b, ndim=4, name="second input (b)", finite=False)
        if a.dtype != b.dtype:
            raise TypeError(f"Concat: inputs have different dtypes, a {a.dtype} and b {b.dtype}")
        if (a.shape[0], *a.shape[2:]) != (b.shape[0], *b.shape[2:]):
            raise ValueError(
                f"Concat: inputs must agree in N, H and W (only channels may differ), got "
                f"a {a.shape} and b {b.shape}; crop or pad one of them first")
        if a.dtype not in (np.float32, np.float64):
            raise TypeError(f"Concat: inputs must be float32 or float64, got {a.dtype}")
        out, probe = concat_channels(np.ascontiguousarray(a), np.ascontiguousarray(b))
        if probe != 0:  # sum(v - v) is NaN exactly when some value is NaN or inf
            check_finite("Concat", a, name="first input (a)")
            check_finite("Concat", b, name="second input (b)")
        self._saved = a.shape[1]
        return out  # (N, Ca + Cb, H, W)

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Ca = self._take_saved()
        if dout.ndim != 4 or dout.shape[1] <= Ca:
            raise ValueError(f"Concat.backward: dout of shape {dout.shape} does not match the "
                             f"forward output (its first {Ca} channels came from a)")
        # forward was `out = [a | b]` along channels, so the gradient splits the same way
        da = np.ascontiguousarray(dout[:, :Ca])  # (N, Ca, H, W)
        db = np.ascontiguousarray(dout[:, Ca:])  # (N, Cb, H, W)
        return da, db
