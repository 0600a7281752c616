"""Batch normalisation: BatchNorm2d.

Each channel c is normalised with statistics over the batch and the image, axes (N, H, W),
M = N*H*W values per channel, then scaled and shifted by learned gamma (`weight`) and beta
(`bias`). For one channel, with x_m its M values:

    train:  mu = (1/M) sum_m x_m,   var = (1/M) sum_m (x_m - mu)**2      (biased: divide by M)
    eval:   mu = running_mean,      var = running_var
    istd  = 1 / sqrt(var + eps)
    x̂_m   = (x_m - mu) * istd                                            "x_hat" in the code
    y_m   = gamma * x̂_m + beta

    x (N, C, H, W),  gamma, beta, mu, var, istd (C,)  ->  x̂, y (N, C, H, W)

Running statistics (PyTorch's rule; `momentum` weighs the NEW batch, the variance stored is
the unbiased one, sum / (M - 1), while normalisation uses the biased one):

    running_mean = (1 - momentum) * running_mean + momentum * mu
    running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

Backward. With g_m = dL/dy_m the upstream gradient, the parameters are direct:

    dbeta  = sum_m g_m            dgamma = sum_m g_m * x̂_m            (sums over N, H, W)
    dx̂_m   = gamma * g_m

For the input, note that in train mode every x_k of the channel moves mu and var, and so
every x̂_m. Differentiating x̂_m = (x_m - mu) * istd by x_k:

    d mu   / d x_k = 1/M
    d var  / d x_k = (2/M) (x_k - mu)            (the -1/M terms sum to zero: sum_m (x_m - mu) = 0)
    d istd / d x_k = -1/2 (var + eps)**(-3/2) * d var / d x_k = -istd**3 (x_k - mu) / M
    d x̂_m / d x_k  = istd * ([m == k] - 1/M) + (x_m - mu) * d istd / d x_k
                   = istd * ([m == k] - 1/M - x̂_m x̂_k / M)

and dx_k = sum_m dx̂_m * d x̂_m / d x_k gives the three terms:

    dx_k = istd * ( dx̂_k                  (1) direct: x_k -> x̂_k
                  - mean_m(dx̂_m)          (2) through mu: moving every x by the same amount
                                              changes no x̂, so dx sums to zero
                  - x̂_k * mean_m(dx̂_m x̂_m) ) (3) through var: scaling x about mu would
                                              change no x̂ if eps were 0, and dx would be
                                              orthogonal to x̂; with eps > 0 only nearly:
                                              sum_k dx_k x̂_k = istd * sum_m dx̂_m x̂_m *
                                              eps / (var + eps)

In eval mode mu and var are constants and y is an affine map of x: only term (1) is left,
dx = istd * dx̂. (With an all-ones upstream gradient the train-mode dx is exactly zero, terms
(1) and (2) cancel and sum(x̂) = 0, so a test with ones proves nothing: the tests draw g.)

Saved for backward: x̂ (N, C, H, W), istd (C,) and the mode of that forward (train or eval).
The fast version (`minunet.kernels.layers.BatchNorm2d`) keeps x instead of x̂ and does each
direction in two passes over memory.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array
from ..module import Module, Parameter


class BatchNorm2d(Module):
    """Per-channel batch normalisation of (N, C, H, W) arrays. See the module docstring."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        self.eps = float(eps)  # 1e-5: PyTorch's default; keeps 1/sqrt(var + eps) finite
        self.momentum = float(momentum)  # 0.1: PyTorch's default weight of the new batch
        self.weight = Parameter(np.ones(num_features, np.float32))   # gamma (C,)
        self.bias = Parameter(np.zeros(num_features, np.float32))    # beta (C,)
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))  # (C,)
        self.register_buffer("running_var", np.ones(num_features, np.float32))    # (C,)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, finite=True)                   # x (N, C, H, W)
        gamma, beta = self.weight.data, self.bias.data      # (C,) each
        if self.training:
            # float64 sums: a channel can hold ~1e5 float32 values
            mu = x.mean(axis=(0, 2, 3), dtype=np.float64)   # (C,)
            var = x.var(axis=(0, 2, 3), dtype=np.float64)   # (C,)  biased, divides by M
            self._update_running_stats(mu, var, x)
        else:
            mu, var = self.running_mean, self.running_var   # (C,)
        istd = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)          # (C,)
        # (C,) -> (C, 1, 1) broadcasts over (N, C, H, W): one value per channel
        x_hat = (x - mu.astype(x.dtype)[:, None, None]) * istd[:, None, None]  # (N, C, H, W)
        y = gamma[:, None, None] * x_hat + beta[:, None, None]                  # (N, C, H, W)
        self.save_for_backward(x_hat, istd, self.training)  # the mode of THIS forward
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x_hat, istd, batch_stats = self.take_saved()        # x_hat (N, C, H, W), istd (C,)
        self._check_dout(dy, x_hat)                         # dy = g (N, C, H, W)
        gamma = self.weight.data                            # (C,)
        # forward was y = gamma * x_hat + beta
        self.bias.grad += dy.sum(axis=(0, 2, 3))            # dbeta  (C,)
        self.weight.grad += (dy * x_hat).sum(axis=(0, 2, 3))  # dgamma (C,)
        dx_hat = gamma[:, None, None] * dy                  # (N, C, H, W)
        if not batch_stats:  # eval: mu and var were constants, only the direct term
            return istd[:, None, None] * dx_hat             # (N, C, H, W)
        mean_dx_hat = dx_hat.mean(axis=(0, 2, 3))                 # (C,)  term (2)
        mean_dx_hat_x_hat = (dx_hat * x_hat).mean(axis=(0, 2, 3))  # (C,)  term (3)
        return istd[:, None, None] * (dx_hat                                   # (1)
                                      - mean_dx_hat[:, None, None]             # (2)
                                      - x_hat * mean_dx_hat_x_hat[:, None, None])  # (3)

    # ------------------------------------------------------------ shared steps
    def _update_running_stats(self, mu: np.ndarray, var: np.ndarray, x: np.ndarray) -> None:
        """The running averages eval() normalises with (PyTorch's rule, module docstring)."""
        N, _, H, W = x.shape
        M = N * H * W
        m = self.momentum
        self.running_mean[...] = (1 - m) * self.running_mean + m * mu
        self.running_var[...] = (1 - m) * self.running_var + m * var * (M / (M - 1))

    def _check_input(self, x: np.ndarray, finite: bool) -> None:
        who = repr(self)
        check_array(who, x, ndim=4, channels=self.num_features, dtype=self.weight.dtype,
                    finite=finite)
        N, _, H, W = x.shape
        if self.training and N * H * W < 2:
            raise ValueError(f"{who}: training needs more than 1 value per channel, got "
                             f"input shape {x.shape} (use eval() for single pixels)")

    def _check_dout(self, dy: np.ndarray, like: np.ndarray) -> None:
        if dy.shape != like.shape or dy.dtype != like.dtype:
            raise ValueError(f"{self!r}.backward: dout has shape {dy.shape} and dtype "
                             f"{dy.dtype}, the forward output had {like.shape} {like.dtype}")

    def __repr__(self) -> str:
        return f"BatchNorm2d({self.num_features})"
