"""Max pooling: MaxPool2d.

Forward, for each channel separately:

    out[n, c, i, j] = max_{kh, kw < K} x[n, c, i*S + kh, j*S + kw]

    x   (N, C, H, W)  ->  out (N, C, Ho, Wo),   Ho = floor((H - K) / S) + 1  (same for Wo)

Rows and columns that fit no whole window are dropped (floor), as in PyTorch. The U-Net uses
K = S = 2 on even sizes, where nothing is dropped. The code gathers the K*K taps of every
window side by side, `taps` (N, C, Ho, Wo, K*K): tap t = kh*K + kw is the strided slice
x[:, :, kh + i*S, kw + j*S] for all (i, j). The max and its position are then taken over the
last axis.

Backward: the max passes its input through unchanged, so d out / d x is 1 for the winning
pixel of each window and 0 for the others. The upstream gradient goes to the winner only:

    dx[n, c, i*S + kh*, j*S + kw*] += dout[n, c, i, j]      (kh*, kw*) = argmax of the window

(`+=`: with S < K, windows overlap and one pixel can win several of them.)

Ties: when several pixels of a window hold the same maximum, the gradient goes to the FIRST
of them in row-major window order (top row first, left to right; `np.argmax` returns the
first maximum). The max is not differentiable there; any choice is a valid subgradient, this
one is deterministic.

Saved for backward: `winner` (N, C, Ho, Wo), the tap t = kh*K + kw that won each window, and
the input's shape; x itself is not kept. The fast version is `minunet.kernels.layers.MaxPool2d`.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module

MAX_KERNEL_SIZE = 16  # the fast kernel stores the winning tap in one byte: K*K <= 256


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
        Ho, Wo = self._check_input(x)
        K, S = self.kernel_size, self.stride
        taps = np.stack([x[:, :, kh : kh + S * Ho : S, kw : kw + S * Wo : S]
                         for kh in range(K) for kw in range(K)], axis=-1)  # (N, C, Ho, Wo, K*K)
        out = taps.max(axis=-1)                    # (N, C, Ho, Wo)
        winner = taps.argmax(axis=-1)              # (N, C, Ho, Wo), first max on ties
        self.save_for_backward(winner, x.shape)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        winner, x_shape = self.take_saved()        # winner (N, C, Ho, Wo)
        self._check_dout(dout, winner.shape)
        K, S = self.kernel_size, self.stride
        Ho, Wo = winner.shape[2:]
        dx = np.zeros(x_shape, dtype=dout.dtype)   # (N, C, H, W)
        for kh in range(K):
            for kw in range(K):
                # forward was out = taps[..., winner]: tap t = kh*K + kw is the input pixel
                # x[i*S + kh, j*S + kw] of window (i, j); it gets dout[i, j] where winner == t
                t = kh * K + kw
                dx[:, :, kh : kh + S * Ho : S, kw : kw + S * Wo : S] += dout * (winner == t)
        return dx

    # ------------------------------------------------------------ argument checks
    def _check_input(self, x: np.ndarray, finite: bool = True) -> tuple[int, int]:
        """Check x (with `finite`, also refuse NaN and inf); return the output size (Ho, Wo)."""
        who = repr(self)
        check_array(who, x, ndim=4, finite=finite)
        if x.dtype not in (np.float32, np.float64):
            raise TypeError(f"{who}: input must be float32 or float64, got {x.dtype}")
        H, W = x.shape[2:]
        K, S = self.kernel_size, self.stride
        if H < K or W < K:
            raise ValueError(f"{who}: input {H}x{W} is smaller than the {K}x{K} window")
        return (H - K) // S + 1, (W - K) // S + 1

    def _check_dout(self, dout: np.ndarray, shape: tuple[int, ...]) -> None:
        if dout.shape != shape:
            raise ValueError(f"{self!r}.backward: dout has shape {dout.shape}, the forward "
                             f"output had {shape}")

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"
