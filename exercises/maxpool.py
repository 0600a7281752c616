"""Exercise 2: MaxPool2d, forward and backward (max-pool routing).

    out[n, c, i, j] = max over kh, kw < K of x[n, c, i*S + kh, j*S + kw]
    x (N, C, H, W) -> out (N, C, Ho, Wo),  Ho = (H - K) // S + 1  (same for Wo)

Backward: the max passes its winner through unchanged, so the upstream gradient of each
window goes to the winning pixel only (the FIRST maximum on ties), and is ADDED there: when
windows overlap (S < K) one pixel can win several. Keep in forward which pixel won.

    python -m exercises.check exercises/maxpool.py

Solution: minunet/layers/pool.py. Notes: docs/learn/maxpool.md.
"""

import numpy as np  # noqa: F401

from minunet import layers


class MaxPool2d(layers.MaxPool2d):
    """The constructor is the reference's: self.kernel_size (K) and self.stride (S)."""

    def forward(self, x):
        K, S = self.kernel_size, self.stride  # noqa: F841
        # TODO: out (N, C, Ho, Wo) and, for each output pixel, which window pixel won;
        #       hint: stack the K*K strided slices x[:, :, kh : kh + S*Ho : S, kw : ...] on
        #       a last axis, then .max(axis=-1) and .argmax(axis=-1) (argmax: first maximum)
        raise NotImplementedError("MaxPool2d.forward")

    def backward(self, dout):
        # TODO: dx = zeros of x's shape; for each tap t = kh*K + kw, ADD dout where tap t won
        #       into the same strided slice of dx that forward read
        raise NotImplementedError("MaxPool2d.backward")
