"""Exercise 1: ReLU, forward and backward.

    out = max(x, 0)                (element by element, any shape)
    dx  = dout * (x > 0)           (gradient 0 at x == 0, as in PyTorch)

Rules of every layer (minunet/module.py): forward ends with self.save_for_backward(...);
backward starts with `... = self.take_saved()` and returns dx as a NEW array (never write
into dout). Check your work:

    python -m exercises.check exercises/relu.py

Solution: minunet/layers/activation.py. Notes: docs/learn/README.md.
"""

import numpy as np  # noqa: F401  (you will need it)

import minunet as mu


class ReLU(mu.Module):
    def forward(self, x):
        # TODO: out = max(x, 0); save what backward needs (only the sign of x matters)
        raise NotImplementedError("ReLU.forward")

    def backward(self, dout):
        # TODO: take what forward saved; return dout where x > 0, 0 elsewhere (a new array)
        raise NotImplementedError("ReLU.backward")
