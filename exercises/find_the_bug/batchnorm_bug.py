"""Find the bug: this batch norm trains worse than minunet's. One line of backward is wrong.

    python -m exercises.check exercises/find_the_bug/batchnorm_bug.py

Which mode passes, which fails, and what does the failing mode have that the other has not?
(docs/learn/batchnorm.md derives the three terms of dx.)
"""

from minunet import layers


class BatchNorm2d(layers.BatchNorm2d):
    def backward(self, dy):
        x_hat, istd, batch_stats = self.take_saved()            # x_hat (N, C, H, W), istd (C,)
        gamma = self.weight.data                                  # (C,)
        self.bias.grad += dy.sum(axis=(0, 2, 3))                  # dbeta
        self.weight.grad += (dy * x_hat).sum(axis=(0, 2, 3))      # dgamma
        dx_hat = gamma[:, None, None] * dy
        if not batch_stats:
            return istd[:, None, None] * dx_hat
        mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=(0, 2, 3))
        return istd[:, None, None] * (dx_hat - x_hat * mean_dx_hat_x_hat[:, None, None])
