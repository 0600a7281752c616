"""Exercise 3: Conv2d, forward and backward.

    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * x_pad[n, c, i*S + kh, j*S + kw]

x (N, Cin, H, W), x_pad = x with P zeros on each side, w (Cout, Cin, K, K), b (Cout,) or None,
y (N, Cout, Ho, Wo), Ho = (H + 2P - K) // S + 1. Loop over the K*K taps: for one tap (kh, kw),
the pixels x_pad[:, :, i*S + kh, j*S + kw] for all (i, j) are ONE strided slice, and the sum over
c is np.einsum("oc,nchw->nohw", w[:, :, kh, kw], x_tap).

Backward, per tap (each weight met one slice of x_pad):
    dw[:, :, kh, kw]  = sum over n, i, j of dy * x_tap          (einsum "nohw,nchw->oc")
    dx_pad[tap slice] += w[:, :, kh, kw]^T @ dy                  (einsum "oc,nohw->nchw")
    db                = dy summed over n, i, j
and dx is dx_pad without its border. Add into self.weight.grad and self.bias.grad (+=).

    python -m exercises.check exercises/conv2d.py

Solution: minunet/layers/conv.py. Notes: docs/learn/conv2d.md.
"""

import numpy as np  # noqa: F401

from minunet import layers


class Conv2d(layers.Conv2d):
    """The constructor is the reference's: self.weight, self.bias (None with bias=False),
    self.kernel_size (K), self.stride (S), self.padding (P)."""

    def forward(self, x):
        K, S, P = self.kernel_size, self.stride, self.padding  # noqa: F841
        # TODO: pad x (np.pad), loop over the taps, add the bias, save x_pad for backward
        raise NotImplementedError("Conv2d.forward")

    def backward(self, dy):
        # TODO: take x_pad; per tap accumulate dw and dx_pad; add dw (and db) into the
        #       parameters' .grad; return dx_pad without its padding
        raise NotImplementedError("Conv2d.backward")
