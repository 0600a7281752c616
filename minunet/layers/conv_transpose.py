"""ConvTranspose2d: the transposed ("up-") convolution, forward and backward.

Forward: every input pixel stamps a K x K patch of its value times the weights onto a
larger output, at stride S; overlapping stamps add up:

    y_full[n, o, i*S + kh, j*S + kw] += x[n, c, i, j] * w[c, o, kh, kw]   (for all c, i, j, kh, kw)
    y = y_full with P rows/columns cropped on each side, + b[o]

Shapes: x (N, Cin, H, W), w (Cin, Cout, K, K) (PyTorch's layout), b (Cout,), and
y (N, Cout, Ho, Wo) with Ho = (H - 1) S - 2P + K. The U-Net's up-step is K=2, S=2: every input
pixel becomes a 2x2 block of its own, and the image doubles in size.

Backward: x[n, c, i, j] reached y_pad[n, o, i*S + kh, j*S + kw] through w[c, o, kh, kw], so

    dx[n, c, i, j]   = sum_{o, kh, kw} w[c, o, kh, kw] * dy_pad[n, o, i*S + kh, j*S + kw]
    dw[c, o, kh, kw] = sum_{n, i, j} x[n, c, i, j] * dy_pad[n, o, i*S + kh, j*S + kw]
    db[o]            = sum_{n, i, j} dy[n, o, i, j]

The input gradient is an ordinary convolution of dy: a transposed convolution is exactly the
backward (adjoint) of a Conv2d with the same K, S, P, which is where its name comes from.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..kernels.conv import (
    conv_transpose2d_backward_input,
    conv_transpose2d_backward_weight,
    conv_transpose2d_forward,
    conv_transpose_output_size,
)
from ..module import Module, Parameter


class ConvTranspose2d(Module):
    """y = conv_transpose(x, w) + b, NCHW, weight (Cin, Cout, K, K), like torch.nn.ConvTranspose2d.

    Weights are He-normal, std = sqrt(2 / (Cin*K*K)), drawn from `rng` (rng=None: a fresh,
    unseeded `np.random.default_rng()`); the bias starts at zero; parameters are float32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int = 0, bias: bool = True,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1 or padding < 0:
            raise ValueError(
                f"ConvTranspose2d needs in_channels, out_channels, kernel_size, stride >= 1 and "
                f"padding >= 0, got {in_channels}, {out_channels}, {kernel_size}, {stride}, "
                f"{padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        rng = np.random.default_rng() if rng is None else rng
        fan_in = in_channels * kernel_size * kernel_size
        std = np.sqrt(2.0 / fan_in)  # He et al. 2015, the same rule as Conv2d
        w = rng.normal(0.0, std, (in_channels, out_channels, kernel_size, kernel_size))
        self.weight = Parameter(w.astype(np.float32))                       # (Cin, Cout, K, K)
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None  # (Cout,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array("ConvTranspose2d", x, ndim=4, channels=self.in_channels,
                    dtype=self.weight.dtype)
        H, W = x.shape[2:]
        K, S, P = self.kernel_size, self.stride, self.padding
        if conv_transpose_output_size(min(H, W), K, S, P) < 1:
            raise ValueError(f"{self!r}: input {H}x{W} gives an empty output: padding {P} "
                             f"crops away the whole (H-1)*{S}+{K} wide result")
        bias = None if self.bias is None else self.bias.data
        y = conv_transpose2d_forward(x, self.weight.data, bias, S, P)   # (N, Cout, Ho, Wo)
        self._saved = x                                                  # backward needs x for dw
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x = self._take_saved()                                 # (N, Cin, H, W)
        check_array("ConvTranspose2d.backward", dout, ndim=4, channels=self.out_channels,
                    dtype=self.weight.dtype, name="dout")
        K, S, P = self.kernel_size, self.stride, self.padding
        # dw[c,o,kh,kw] = sum_{n,i,j} x[n,c,i,j] dy_pad[n,o,i*S+kh,j*S+kw]
        self.weight.grad += conv_transpose2d_backward_weight(x, dout, K, S, P)  # (Cin, Cout, K, K)
        if self.bias is not None:
            self.bias.grad += dout.sum(axis=(0, 2, 3))                          # (Cout,)
        # dx[n,c,i,j] = sum_{o,kh,kw} w[c,o,kh,kw] dy_pad[n,o,i*S+kh,j*S+kw]: a plain convolution
        return conv_transpose2d_backward_input(dout, self.weight.data, S, P)   # (N, Cin, H, W)

    def __repr__(self) -> str:
        return (f"ConvTranspose2d({self.in_channels} -> {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})")
