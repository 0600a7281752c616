"""Conv2d: a 2-D convolution (PyTorch's cross-correlation), forward and backward.

Forward, for every image n, output channel o and output pixel (i, j):

    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * x_pad[n, c, i*S + kh, j*S + kw]

where x_pad is x with P zero rows/columns on every side, and Ho = floor((H + 2P - K) / S) + 1
(likewise Wo). Shapes: x (N, Cin, H, W), w (Cout, Cin, K, K), b (Cout,), y (N, Cout, Ho, Wo).

Backward: each weight w[o, c, kh, kw] met the input pixel x_pad[n, c, i*S + kh, j*S + kw] in
output pixel (n, o, i, j), so with dy = dL/dy:

    dw[o, c, kh, kw] = sum_{n, i, j} dy[n, o, i, j] * x_pad[n, c, i*S + kh, j*S + kw]
    db[o]            = sum_{n, i, j} dy[n, o, i, j]
    dx_pad[n, c, i*S + kh, j*S + kw] += w[o, c, kh, kw] * dy[n, o, i, j]   (for all o, i, j, kh, kw)

and dx is dx_pad without its padding. Forward saves only x; the kernels (minunet.kernels.conv)
compute these three sums as matrix products, and minunet.kernels.reference spells them out
as plain NumPy loops over the K*K taps.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..kernels.conv import (
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
    conv_output_size,
)
from ..module import Module, Parameter


class Conv2d(Module):
    """y = conv(x, w) + b, NCHW, weight (Cout, Cin, K, K), like torch.nn.Conv2d.

    Weights are He-normal, std = sqrt(2 / (Cin*K*K)) (suited to a ReLU after the conv), drawn
    from `rng`; with rng=None a fresh, unseeded `np.random.default_rng()` is used, so pass
    `np.random.default_rng(seed)` for reproducible weights. The bias starts at zero.
    Parameters are float32; `astype(np.float64)` converts them (the gradient checker does).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = True,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1 or padding < 0:
            raise ValueError(
                f"Conv2d needs in_channels, out_channels, kernel_size, stride >= 1 and "
                f"padding >= 0, got {in_channels}, {out_channels}, {kernel_size}, {stride}, "
                f"{padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        rng = np.random.default_rng() if rng is None else rng
        fan_in = in_channels * kernel_size * kernel_size
        std = np.sqrt(2.0 / fan_in)  # He et al. 2015: keeps the activations' variance through ReLUs
        w = rng.normal(0.0, std, (out_channels, in_channels, kernel_size, kernel_size))
        self.weight = Parameter(w.astype(np.float32))                       # (Cout, Cin, K, K)
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None  # (Cout,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_array("Conv2d", x, ndim=4, channels=self.in_channels,
                    dtype=self.weight.dtype)
        H, W = x.shape[2:]
        K, S, P = self.kernel_size, self.stride, self.padding
        if conv_output_size(H, K, S, P) < 1 or conv_output_size(W, K, S, P) < 1:
            raise ValueError(f"{self!r}: input {H}x{W} is smaller than the kernel "
                             f"{K}x{K} (with padding {P}): no output pixel is left")
        bias = None if self.bias is None else self.bias.data
        y = conv2d_forward(x, self.weight.data, bias, S, P)   # (N, Cout, Ho, Wo)
        self._saved = x                                        # backward needs x for dw
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x = self._take_saved()                                 # (N, Cin, H, W)
        check_array("Conv2d.backward", dout, ndim=4, channels=self.out_channels,
                    dtype=self.weight.dtype, name="dout")
        K, S, P = self.kernel_size, self.stride, self.padding
        # dw[o,c,kh,kw] = sum_{n,i,j} dy[n,o,i,j] x_pad[n,c,i*S+kh,j*S+kw]
        self.weight.grad += conv2d_backward_weight(x, dout, K, S, P)   # (Cout, Cin, K, K)
        if self.bias is not None:
            self.bias.grad += dout.sum(axis=(0, 2, 3))                  # (Cout,)
        # dx_pad[n,c,i*S+kh,j*S+kw] += w[o,c,kh,kw] dy[n,o,i,j]
        return conv2d_backward_input(dout, self.weight.data, S, P, x.shape[2], x.shape[3])

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels} -> {self.out_channels}, kernel_size={self.kernel_size}"
                f", stride={self.stride}, padding={self.padding})")
