"""Max pooling: MaxPool2d.

Forward, for each channel separately:

    out[n, c, i, j] = max_{kh, kw < K} x[n, c, i*S + kh, j*S + kw]

    x   (N, C, H, W)  ->  out (N, C, Ho, Wo),   Ho = floor((H - K) / S) + 1  (same for Wo)

Rows and columns that fit no whole window are dropped (floor), as in PyTorch. The U-Net uses
K = S = 2 on even sizes, where nothing is dropped.

Backward: the max passes its input through unchanged, so d out / d x is 1 for the winning
pixel of each window and 0 for the others. The upstream gradient goes to the winner only:

    dx[n, c, i*S + kh*, j*S + kw*] += dout[n, c, i, j]      (kh*, kw*) = argmax of the window

Ties: when several pixels of a window hold the same maximum, the gradient goes to the FIRST
of them in row-major window order (top row first, left to right). The max is not
differentiable there; any choice is a valid subgradient, this one is deterministic.

Saved for backward: the winner's offset in its window (one uint8 per output pixel) and the
input's height and width; x itself is not kept.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array, check_finite
from ..kernels.pool import MAX_KERNEL_SIZE, maxpool2d_backward, maxpool2d_forward
from ..module import Module


class MaxPool2d(Module):
    """Max over K x K windows with stride S (default S = K). See the module docstring."""

    def __init__(self, kernel_size: int, stride: int | None = None) -> None:
        super().__init__()
        stride = kernel_size if stride is None else stride
        if not 1 <= kernel_size <= MAX_KERNEL_SIZE:
            raise ValueError(f"MaxPool2d: kernel_size must be in 1..{MAX_KERNEL_SIZE}, "
                             f"got {kernel_size}")
        if stride < 1:
            raise ValueError(f"MaxPool2d: stride must be >= 1, got {stride}")
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)

    def forward(self, x: np.ndarray) -> np.ndarray:
        who = repr(self)
        check_array(who, x, ndim=4, finite=False)  # finiteness: checked by the kernel's pass
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{who}: input must be float32 or float64, got {x.dtype}")
        H, W = x.shape[2:]
        K, S = self.kernel_size, self.stride
        if H < K or W < K:
            raise ValueError(f"{who}: input {H}x{W} is smaller than the {K}x{K} window")
        out, argmax, probe = maxpool2d_forward(np.ascontiguousarray(x), K, S)  # (N,C,Ho,Wo)
        if probe != 0:  # sum(x - x) is NaN exactly when some x is NaN or inf
            check_finite(who, x)  # raises, naming how many
        self._saved = (argmax, H, W)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        argmax, H, W = self._take_saved()  # argmax: (N, C, Ho, Wo) offset kh*K + kw
        if dout.shape != argmax.shape:
            raise ValueError(f"{self!r}.backward: dout has shape {dout.shape}, the forward "
                             f"output had {argmax.shape}")
        return maxpool2d_backward(np.ascontiguousarray(dout), argmax, H, W,
                                  self.kernel_size, self.stride)  # (N, C, H, W)

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"
