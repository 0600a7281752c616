"""A tiny per-pixel model for the checkpoint and training tests: a 1x1 convolution.

Kept here (not in minunet) so that those tests do not depend on the U-Net's layers, and so
that they show a user's own Module subclass going through save/load/train.
"""

import numpy as np

from minunet.module import Module, Parameter


class PixelNet(Module):
    """logits[n, k] = sum_c weight[k, c] * x[n, c] + bias[k], at every pixel."""

    def __init__(self, in_channels=1, num_classes=3, rng=None):
        super().__init__()
        rng = np.random.default_rng(rng)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.weight = Parameter(rng.standard_normal((num_classes, in_channels)).astype(np.float32))
        self.bias = Parameter(np.zeros(num_classes, np.float32))
        self.register_buffer("seen", np.zeros(1, np.float32))  # a buffer, as batch norm has

    def config(self):
        return {"in_channels": self.in_channels, "num_classes": self.num_classes}

    def forward(self, x):
        if self.training:
            self.seen += x.shape[0]
        self.save_for_backward(x)
        return np.einsum("kc,nchw->nkhw", self.weight.data, x) + self.bias.data[:, None, None]

    def backward(self, dout):
        (x,) = self.take_saved()
        self.weight.grad += np.einsum("nkhw,nchw->kc", dout, x)
        self.bias.grad += dout.sum(axis=(0, 2, 3))
        return np.einsum("kc,nkhw->nchw", self.weight.data, dout)
