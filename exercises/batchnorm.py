"""Exercise 4: BatchNorm2d, forward and backward (train and eval mode).

Per channel, over the M = N*H*W values of the batch (axes 0, 2, 3):
    train: mu = mean(x), var = mean((x - mu)**2)    eval: mu, var = running_mean, running_var
    istd = 1 / sqrt(var + eps),  x_hat = (x - mu) * istd,  y = gamma * x_hat + beta
In train mode also update the running statistics with self._update_running_stats(mu, var, x).

Backward (g = dy, dx_hat = gamma * g, means over N, H, W per channel):
    dbeta = sum(g)        dgamma = sum(g * x_hat)
    eval:  dx = istd * dx_hat
    train: dx = istd * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))
                        (1) direct  (2) via mu  (3) via var
gamma is self.weight, beta self.bias; self.training says the mode. Remember the mode of THIS
forward for backward.

    python -m exercises.check exercises/batchnorm.py

Solution: minunet/layers/batchnorm.py (its docstring derives the three terms).
Notes: docs/learn/batchnorm.md.
"""

import numpy as np  # noqa: F401

from minunet import layers


class BatchNorm2d(layers.BatchNorm2d):
    """The constructor is the reference's: weight (gamma), bias (beta), running_mean,
    running_var, eps, momentum."""

    def forward(self, x):
        # TODO: statistics (train) or running statistics (eval), x_hat, y; save x_hat, istd and
        #       self.training for backward
        raise NotImplementedError("BatchNorm2d.forward")

    def backward(self, dy):
        # TODO: dbeta, dgamma into the .grad's; dx with one term (eval) or three (train)
        raise NotImplementedError("BatchNorm2d.backward")
