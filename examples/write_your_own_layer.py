"""Write a layer of your own and prove its backward with one call to mu.gradcheck.

    python examples/write_your_own_layer.py

A layer is a `mu.Module` with a forward and a backward:
- forward computes the output and saves what backward needs in `self._saved`;
- backward takes it back with `self._take_saved()`, ADDS parameter gradients into `p.grad`,
  and returns the input gradient as a new array (never writing into `dout`).
"""

import numpy as np

import minunet as mu


class LeakyReLU(mu.Module):
    """out = x if x > 0 else slope * x, with a learned slope per channel (PReLU).

    x (N, C, H, W), slope (C,)  ->  out (N, C, H, W)
    """

    def __init__(self, channels: int, slope: float = 0.1) -> None:
        super().__init__()
        self.slope = mu.Parameter(np.full(channels, slope, np.float32))  # (C,)

    def forward(self, x):
        a = self.slope.data[None, :, None, None]  # (1, C, 1, 1), broadcasts over N, H, W
        self._saved = x
        return np.where(x > 0, x, a * x)

    def backward(self, dout):
        x = self._take_saved()
        a = self.slope.data[None, :, None, None]
        # forward was out = x (x > 0) or a * x (x <= 0):
        #   d out / d x = 1 or a,   d out / d a = 0 or x   (summed over N, H, W per channel)
        self.slope.grad += np.where(x > 0, 0, dout * x).sum(axis=(0, 2, 3))
        return np.where(x > 0, dout, a * dout)


class WrongLeakyReLU(LeakyReLU):
    """The same layer with a classic bug: the slope gradient forgets to multiply by x."""

    def backward(self, dout):
        x = self._take_saved()
        a = self.slope.data[None, :, None, None]
        self.slope.grad += np.where(x > 0, 0, dout).sum(axis=(0, 2, 3))  # BUG: dout, not dout*x
        return np.where(x > 0, dout, a * dout)


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 4))
    x += np.sign(x) * 0.1  # stay away from the kink at 0, where the derivative jumps

    print("A correct layer:")
    print(mu.gradcheck(LeakyReLU(3), x))  # raises mu.GradcheckError if anything is wrong

    print("\nA wrong one (raise_on_fail=False returns the report instead of raising):")
    report = mu.gradcheck(WrongLeakyReLU(3), x, raise_on_fail=False)
    print(report)
    assert not report.ok, "the checker should have caught the bug"


if __name__ == "__main__":
    main()
