"""ConvTranspose2d: the transposed ("up-") convolution, forward and backward.

Forward: every input pixel stamps a K x K patch of its value times the weights onto a
larger output, at stride S; overlapping stamps add up:

    y_full[n, o, i*S + kh, j*S + kw] += sum_c x[n, c, i, j] * w[c, o, kh, kw]   (all i, j, kh, kw)
    y = y_full with P rows/columns cropped on each side, + b[o]

Shapes: x (N, Cin, H, W), w (Cin, Cout, K, K) (PyTorch's layout), b (Cout,), y_full
(N, Cout, (H-1)S + K, (W-1)S + K) and y (N, Cout, Ho, Wo) with Ho = (H - 1) S - 2P + K. The
U-Net's up-step is K=2, S=2: every input pixel becomes a 2x2 block of its own, and the image
doubles in size. As in Conv2d, the code loops over the K*K taps; for one tap (kh, kw), the
pixels y_full[:, :, i*S + kh, j*S + kw] form one strided slice, which receives
w[:, :, kh, kw]^T times x (a matrix product over c).

Backward: x[n, c, i, j] reached y_full[n, o, i*S + kh, j*S + kw] through w[c, o, kh, kw], so
with dy_full = dy padded back by P on each side (the cropped border got no gradient):

    dx[n, c, i, j]   = sum_{o, kh, kw} w[c, o, kh, kw] * dy_full[n, o, i*S + kh, j*S + kw]
    dw[c, o, kh, kw] = sum_{n, i, j} x[n, c, i, j] * dy_full[n, o, i*S + kh, j*S + kw]
    db[o]            = sum_{n, i, j} dy[n, o, i, j]

The input gradient is an ordinary (strided) convolution of dy: a transposed convolution is
exactly the backward (adjoint) of a Conv2d with the same K, S, P, which is where its name
comes from. Saved for backward: x. The fast version is `minunet.kernels.layers.ConvTranspose2d`.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module, Parameter


class ConvTranspose2d(Module):
    """y = conv_transpose(x, w) + b, NCHW, weight (Cin, Cout, K, K), like torch.nn.ConvTranspose2d.

    Weights are normal with std = sqrt(2 / (Cin*K*K)), drawn from `rng` (rng=None: a fresh,
    unseeded `np.random.default_rng()`); the bias starts at zero; parameters are float32.

    That is He's formula with the fan-in PyTorch computes from this weight's shape, Cin*K*K.
    It is NOT He's variance here: an output pixel of a stride-S transposed convolution sums
    only Cin*(K/S)**2 products (Cin for the U-Net's 2x2 stride-2 up-step, one tap each), so
    a standard-normal input gives an output variance of 2/S**2 (0.5 at S = 2), not the 2 a
    Conv2d gives (tests/test_conv_transpose.py measures both). Harmless in the U-Net, where
    a batch norm follows every up-step; kept because trained results and the bundled model's
    reproducibility depend on these exact numbers.
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
        std = np.sqrt(2.0 / fan_in)  # He's formula on Cin*K*K: output variance 2/S**2 (above)
        w = rng.normal(0.0, std, (in_channels, out_channels, kernel_size, kernel_size))
        self.weight = Parameter(w.astype(np.float32))                       # (Cin, Cout, K, K)
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None  # (Cout,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        Ho, Wo = self._check_input(x)
        N, _, H, W = x.shape
        K, S, P = self.kernel_size, self.stride, self.padding
        w = self.weight.data                                            # (Cin, Cout, K, K)
        y_full = np.zeros((N, self.out_channels, (H - 1) * S + K, (W - 1) * S + K),
                          dtype=x.dtype)                                # (N, Cout, Ho+2P, Wo+2P)
        for kh in range(K):
            for kw in range(K):
                y_full[:, :, kh : kh + S * H : S, kw : kw + S * W : S] += np.einsum(
                    "co,nchw->nohw", w[:, :, kh, kw], x)  # (N, Cout, H, W)
        y = y_full[:, :, P : P + Ho, P : P + Wo]                        # (N, Cout, Ho, Wo)
        if self.bias is not None:
            y = y + self.bias.data[None, :, None, None]                 # b[o] on every pixel
        self.save_for_backward(x)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (x,) = self.take_saved()                                        # (N, Cin, H, W)
        N, _, H, W = x.shape
        K, S, P = self.kernel_size, self.stride, self.padding
        Ho, Wo = (H - 1) * S - 2 * P + K, (W - 1) * S - 2 * P + K
        self._check_dout(dy, (N, self.out_channels, Ho, Wo))            # (N, Cout, Ho, Wo)
        w = self.weight.data                                            # (Cin, Cout, K, K)
        # forward cropped P from each side of y_full: those pixels got no gradient
        dy_full = np.pad(dy, ((0, 0), (0, 0), (P, P), (P, P)))          # (N, Cout, Ho+2P, Wo+2P)
        dx = np.zeros_like(x)                                           # (N, Cin, H, W)
        dw = np.zeros_like(w)                                           # (Cin, Cout, K, K)
        for kh in range(K):
            for kw in range(K):
                # forward was y_full[tap slice] += w[:, :, kh, kw]^T @ x (over c)
                dy_tap = dy_full[:, :, kh : kh + S * H : S, kw : kw + S * W : S]  # (N,Cout,H,W)
                dx += np.einsum("co,nohw->nchw", w[:, :, kh, kw], dy_tap)
                dw[:, :, kh, kw] = np.einsum("nchw,nohw->co", x, dy_tap)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))                    # (Cout,)
        return dx                                                       # (N, Cin, H, W)

    # ------------------------------------------------------------ argument checks
    def _check_input(self, x: np.ndarray, finite: bool = True) -> tuple[int, int]:
        """Check x (with `finite`, also refuse NaN and inf); return the output size (Ho, Wo)."""
        check_array("ConvTranspose2d", x, ndim=4, channels=self.in_channels,
                    dtype=self.weight.dtype, finite=finite)
        H, W = x.shape[2:]
        K, S, P = self.kernel_size, self.stride, self.padding
        Ho, Wo = (H - 1) * S - 2 * P + K, (W - 1) * S - 2 * P + K
        if Ho < 1 or Wo < 1:
            raise ValueError(f"{self!r}: input {H}x{W} gives an empty output: padding {P} "
                             f"crops away the whole (H-1)*{S}+{K} wide result")
        return Ho, Wo

    def _check_dout(self, dy: np.ndarray, shape: tuple[int, ...], finite: bool = True) -> None:
        check_array("ConvTranspose2d.backward", dy, ndim=4, channels=self.out_channels,
                    dtype=self.weight.dtype, name="dout", finite=finite)
        if dy.shape != shape:
            raise ValueError(f"{self!r}.backward: dout has shape {dy.shape}, the forward "
                             f"output had {shape}")

    def __repr__(self) -> str:
        return (f"ConvTranspose2d({self.in_channels} -> {self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})")
