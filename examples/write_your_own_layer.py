"""Write a layer of your own and prove its backward with one call to mu.gradcheck.

    python examples/write_your_own_layer.py

A layer is a `mu.Module` with a forward and a backward (the rules are in minunet/module.py):
- forward computes the output and ends with `self.save_for_backward(...)`: what backward needs;
- backward starts with `... = self.take_saved()`, ADDS parameter gradients into `p.grad`
  (`+=`: gradients accumulate, the optimizer zeroes them), and returns the input gradient as
  a new array (never writing into `dout`).
The same check from the shell: minunet gradcheck examples/write_your_own_layer.py:PReLU \\
    --input-shape 2,3,5,4 --args '[3]'
"""

import numpy as np

import minunet as mu


class PReLU(mu.Module):
    """out = x if x > 0 else a * x, with a learned slope a per channel: x (N, C, H, W), a (C,)."""

    def __init__(self, channels: int, slope: float = 0.25) -> None:
        super().__init__()
        self.slope = mu.Parameter(np.full(channels, slope, np.float32))  # a (C,)

    def forward(self, x):
        self.save_for_backward(x)
        return np.where(x > 0, x, self.slope.data[:, None, None] * x)  # a[c] on every pixel

    def backward(self, dout):
        (x,) = self.take_saved()  # d out / d a = 0 or x;  d out / d x = 1 or a
        self.slope.grad += np.where(x > 0, 0, dout * x).sum(axis=(0, 2, 3))  # sum over N, H, W
        return np.where(x > 0, dout, self.slope.data[:, None, None] * dout)


class WrongPReLU(PReLU):
    """The same layer with a classic bug: the slope gradient forgets to multiply by x."""

    def backward(self, dout):
        (x,) = self.take_saved()
        self.slope.grad += np.where(x > 0, 0, dout).sum(axis=(0, 2, 3))  # BUG: dout, not dout*x
        return np.where(x > 0, dout, self.slope.data[:, None, None] * dout)


def main() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4))

    print("A correct layer:")
    print(mu.gradcheck(PReLU(3), x))  # raises mu.GradcheckError if anything is wrong

    print("\nA wrong one (raise_on_fail=False returns the report instead of raising):")
    report = mu.gradcheck(WrongPReLU(3), x, raise_on_fail=False)
    print(report)
    assert not report.ok, "the checker should have caught the bug"


if __name__ == "__main__":
    main()
