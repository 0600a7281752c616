"""Find the bug: this Conv2d is right in the U-Net but wrong elsewhere.

    python -m exercises.check exercises/find_the_bug/conv_bug.py

Which cases pass? What do the failing ones have in common?
"""

import numpy as np

from minunet import layers


class Conv2d(layers.Conv2d):
    def backward(self, dy):
        (x_pad,) = self.take_saved()                              # (N, Cin, H+2P, W+2P)
        K, S, P = self.kernel_size, self.stride, self.padding
        Ho, Wo = dy.shape[2:]
        w = self.weight.data
        dw = np.zeros_like(w)
        dx_pad = np.zeros_like(x_pad)
        for kh in range(K):
            for kw in range(K):
                x_tap = x_pad[:, :, kh : kh + S * Ho : S, kw : kw + S * Wo : S]
                dw[:, :, kh, kw] = np.einsum("nohw,nchw->oc", dy, x_tap)
                dx_pad[:, :, kh : kh + Ho, kw : kw + Wo] += np.einsum(
                    "oc,nohw->nchw", w[:, :, kh, kw], dy)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))
        H, W = x_pad.shape[2] - 2 * P, x_pad.shape[3] - 2 * P
        return dx_pad[:, :, P : P + H, P : P + W]
