"""Two layers a student writes, each correct on paper, and what `minunet gradcheck` says.

    minunet gradcheck examples/student_layers.py:Dropout --input-shape 2,3,6,5
    minunet gradcheck examples/student_layers.py:GELU --input-shape 2,3,6,5
    minunet gradcheck examples/student_layers.py:SeededDropout --input-shape 2,3,6,5
    minunet gradcheck examples/student_layers.py:GELU32 --input-shape 2,3,6,5 --show 2

Dropout draws a new mask at each call: the checker says its forward is not deterministic
and how to check such a layer (SeededDropout). GELU's constant np.sqrt(2 / np.pi) is a NumPy
float64 scalar: its float64 gradients are right, but float32 in gives float64 out (NumPy 2's
promotion rules), which the checker's float32 round trip catches (GELU32). docs/learn/checker.md
shows the output.
"""

import numpy as np

import minunet as mu


class Dropout(mu.Module):
    """Inverted dropout: keep each value with probability 1 - p, scaled by 1 / (1 - p)."""

    def __init__(self, p: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.p = p
        self.rng = np.random.default_rng(seed)  # randomness passed in, never global

    def _mask(self, x):
        return (self.rng.random(x.shape) >= self.p).astype(x.dtype) / (1 - self.p)

    def forward(self, x):
        if not self.training:           # eval: the identity
            self.save_for_backward(None)
            return x.copy()
        mask = self._mask(x)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, dout):
        (mask,) = self.take_saved()
        return dout.copy() if mask is None else dout * mask


class SeededDropout(Dropout):
    """The same layer, checkable: forward re-seeds its generator, so every call draws the same
    mask (for checking only; in training the mask must change)."""

    def _mask(self, x):
        self.rng = np.random.default_rng(self.seed_for_checks)
        return super()._mask(x)

    seed_for_checks = 0


class GELU(mu.Module):
    """y = x * Phi(x), tanh approximation. Its constant is a NumPy float64 scalar."""

    def forward(self, x):
        c = np.sqrt(2 / np.pi)                      # np.float64: promotes float32 arrays
        t = np.tanh(c * (x + 0.044715 * x**3))
        self.save_for_backward(x, t, c)
        return 0.5 * x * (1 + t)

    def backward(self, dout):
        x, t, c = self.take_saved()
        du = c * (1 + 3 * 0.044715 * x**2)
        return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * du)


class GELU32(GELU):
    """The fix: the constant as a plain Python float, which takes the array's dtype."""

    def forward(self, x):
        c = float(np.sqrt(2 / np.pi))
        t = np.tanh(c * (x + 0.044715 * x**3))
        self.save_for_backward(x, t, c)
        return 0.5 * x * (1 + t)
