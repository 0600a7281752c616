"""Conv2d: a 2-D convolution (PyTorch's cross-correlation), forward and backward.

Forward, for every image n, output channel o and output pixel (i, j):

    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * x_pad[n, c, i*S + kh, j*S + kw]

where x_pad is x with P zero rows/columns on every side, and Ho = floor((H + 2P - K) / S) + 1
(likewise Wo). Shapes: x (N, Cin, H, W), w (Cout, Cin, K, K), b (Cout,), y (N, Cout, Ho, Wo).

The code below runs the sum over (kh, kw) as a Python loop over the K*K taps. For one tap,
the input pixels x_pad[n, c, i*S + kh, j*S + kw] for all (i, j) are one strided slice of
x_pad, `x_tap` (N, Cin, Ho, Wo), and the sum over c is a matrix product with w[:, :, kh, kw]
(Cout, Cin), spelled `np.einsum("oc,nchw->nohw", ...)` with the letters of the formula (o: Cout,
c: Cin, h, w: output rows and columns): whole arrays per tap, no loop over pixels.

Backward: each weight w[o, c, kh, kw] met the input pixel x_pad[n, c, i*S + kh, j*S + kw] in
output pixel (n, o, i, j), so with dy = dL/dy:

    dw[o, c, kh, kw] = sum_{n, i, j} dy[n, o, i, j] * x_pad[n, c, i*S + kh, j*S + kw]
    db[o]            = sum_{n, i, j} dy[n, o, i, j]
    dx_pad[n, c, i*S + kh, j*S + kw] += sum_o w[o, c, kh, kw] * dy[n, o, i, j]

and dx is dx_pad without its padding. Per tap: dw is x_tap against dy, and dx_pad's tap slice
receives w[:, :, kh, kw]^T times dy: the forward's slice, read backwards.

Saved for backward: x_pad (the padded input; dw needs it). The fast version
(`minunet.kernels.layers.Conv2d`) computes the same sums in Numba kernels: on a CPU with
AVX-512 a float32 stride-1 convolution reads its input straight from a padded band, with
no im2col; other cases (float64, strides, no AVX-512) are matrix products over im2col
columns (minunet/kernels/conv.py's docstring).
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
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
        Ho, Wo = self._check_input(x)
        N = x.shape[0]                                                  # x (N, Cin, H, W)
        K, S, P = self.kernel_size, self.stride, self.padding
        w = self.weight.data                                            # (Cout, Cin, K, K)
        x_pad = np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))             # (N, Cin, H+2P, W+2P)
        y = np.zeros((N, self.out_channels, Ho, Wo), dtype=x.dtype)     # (N, Cout, Ho, Wo)
        for kh in range(K):
            for kw in range(K):
                x_tap = x_pad[:, :, kh : kh + S * Ho : S, kw : kw + S * Wo : S]  # (N,Cin,Ho,Wo)
                y += np.einsum("oc,nchw->nohw", w[:, :, kh, kw], x_tap)
        if self.bias is not None:
            y += self.bias.data[None, :, None, None]                    # b[o] on every pixel
        self.save_for_backward(x_pad)
        return y                                                        # (N, Cout, Ho, Wo)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (x_pad,) = self.take_saved()                                    # (N, Cin, H+2P, W+2P)
        K, S, P = self.kernel_size, self.stride, self.padding
        N, _, Hp, Wp = x_pad.shape
        Ho, Wo = (Hp - K) // S + 1, (Wp - K) // S + 1
        self._check_dout(dy, (N, self.out_channels, Ho, Wo))
        w = self.weight.data                                            # (Cout, Cin, K, K)
        dw = np.zeros_like(w)                                           # (Cout, Cin, K, K)
        dx_pad = np.zeros_like(x_pad)                                   # (N, Cin, H+2P, W+2P)
        for kh in range(K):
            for kw in range(K):
                # forward was y += w[:, :, kh, kw] @ x_tap (over c), for this tap's slice
                x_tap = x_pad[:, :, kh : kh + S * Ho : S, kw : kw + S * Wo : S]  # (N,Cin,Ho,Wo)
                dw[:, :, kh, kw] = np.einsum("nohw,nchw->oc", dy, x_tap)
                dx_pad[:, :, kh : kh + S * Ho : S, kw : kw + S * Wo : S] += np.einsum(
                    "oc,nohw->nchw", w[:, :, kh, kw], dy)   # (N, Cin, Ho, Wo)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))                    # (Cout,)
        H, W = x_pad.shape[2] - 2 * P, x_pad.shape[3] - 2 * P
        return dx_pad[:, :, P : P + H, P : P + W]                       # (N, Cin, H, W)

    # ------------------------------------------------------------ argument checks
    def _check_input(self, x: np.ndarray, finite: bool = True) -> tuple[int, int]:
        """Check x (with `finite`, also refuse NaN and inf); return the output size (Ho, Wo)."""
        check_array("Conv2d", x, ndim=4, channels=self.in_channels, dtype=self.weight.dtype,
                    finite=finite)
        H, W = x.shape[2:]
        K, S, P = self.kernel_size, self.stride, self.padding
        Ho, Wo = (H + 2 * P - K) // S + 1, (W + 2 * P - K) // S + 1  # floor, as PyTorch
        if Ho < 1 or Wo < 1:
            raise ValueError(f"{self!r}: input {H}x{W} is smaller than the kernel "
                             f"{K}x{K} (with padding {P}): no output pixel is left")
        return Ho, Wo

    def _check_dout(self, dy: np.ndarray, shape: tuple[int, ...], finite: bool = True) -> None:
        check_array("Conv2d.backward", dy, ndim=4, channels=self.out_channels,
                    dtype=self.weight.dtype, name="dout", finite=finite)
        if dy.shape != shape:
            raise ValueError(f"{self!r}.backward: dout has shape {dy.shape}, the forward "
                             f"output had {shape}")

    def __repr__(self) -> str:
        return (f"Conv2d({self.in_channels} -> {self.out_channels}, kernel_size={self.kernel_size}"
                f", stride={self.stride}, padding={self.padding})")
