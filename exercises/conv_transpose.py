"""Exercise 5: ConvTranspose2d, forward and backward (the U-Net's up-step).

Every input pixel stamps its value times the weights onto a K x K patch of a larger output,
at stride S; overlapping stamps add up; then P rows/columns are cropped from each side:
    y_full[n, o, i*S + kh, j*S + kw] += sum_c x[n, c, i, j] * w[c, o, kh, kw]
    y = y_full[:, :, P : P + Ho, P : P + Wo] + b[o],   Ho = (H - 1) S - 2P + K
x (N, Cin, H, W), w (Cin, Cout, K, K) (PyTorch's layout), b (Cout,).

Backward: pad dy back by P (dy_full), then per tap the slice dy_full[:, :, kh : kh + S*H : S, ...]
    dx += w[:, :, kh, kw] @ dy_tap over o      dw[:, :, kh, kw] = sum over n, i, j of x * dy_tap
    db  = dy summed over n, i, j
It is the forward of a strided Conv2d: a transposed convolution is a convolution's adjoint.

    python -m exercises.check exercises/conv_transpose.py

Solution: minunet/layers/conv_transpose.py. Notes: docs/learn/conv_transpose.md.
"""

import numpy as np  # noqa: F401

from minunet import layers


class ConvTranspose2d(layers.ConvTranspose2d):
    """The constructor is the reference's: self.weight (Cin, Cout, K, K), self.bias,
    self.kernel_size, self.stride, self.padding."""

    def forward(self, x):
        # TODO: y_full of zeros, stamp per tap (einsum "co,nchw->nohw"), crop, add the bias,
        #       save x
        raise NotImplementedError("ConvTranspose2d.forward")

    def backward(self, dy):
        # TODO: pad dy back, per tap dx and dw, db; add into the .grad's; return dx
        raise NotImplementedError("ConvTranspose2d.backward")
