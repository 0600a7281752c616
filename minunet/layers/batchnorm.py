"""Batch normalisation: BatchNorm2d, and BatchNormReLU2d (the same followed by a ReLU, fused).

Each channel c is normalised with statistics over the batch and the image, axes (N, H, W),
M = N*H*W values per channel, then scaled and shifted by learned gamma (`weight`) and beta (`bias`):

    x (N, C, H, W),  gamma, beta (C,)  ->  y (N, C, H, W)

    train:  mu = mean(x),  var = mean((x - mu)**2)      (biased: divide by M)
    eval:   mu = running_mean,  var = running_var
    xhat = (x - mu) / sqrt(var + eps)
    y    = gamma * xhat + beta

Running statistics (PyTorch's rule; `momentum` weighs the NEW batch, the variance stored is
the unbiased one, sum / (M - 1), while normalisation uses the biased one):

    running_mean = (1 - momentum) * running_mean + momentum * mu
    running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)

Backward, with g = dout and istd = 1 / sqrt(var + eps):

    dbeta  = sum(g)                   dgamma = sum(g * xhat)          (sums over N, H, W)
    eval:   mu and var are constants, y is an affine map of x:   dx = gamma * istd * g
    train:  mu and var depend on every x of the channel, which adds two correction terms:
            dx = gamma * istd * (g - mean(g) - xhat * mean(g * xhat))

(Derivation: dxhat = gamma * g; then dx = istd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
With an all-ones upstream gradient the train-mode dx is exactly zero (g - mean(g) = 0 and
sum(xhat) = 0), so a test with ones proves nothing: the tests use a random one.)

Saved for backward: x itself, the mean used, istd (C,) and the mode (train or eval) of that
forward; xhat is recomputed from them instead of being stored, which saves one (N, C, H, W)
array per layer.
"""

from __future__ import annotations

import numpy as np

from ..checks import check_array, check_finite
from ..kernels.batchnorm import (
    batchnorm_backward_input,
    batchnorm_backward_reduce,
    batchnorm_forward,
    batchnorm_relu_backward_input,
    batchnorm_relu_backward_reduce,
    batchnorm_relu_forward,
    batchnorm_stats,
)
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
        x, mean, istd = self._statistics(x)  # x (N, C, H, W); mean, istd (C,) float64
        scale = self.weight.data * istd       # (C,)  gamma / sqrt(var + eps)
        shift = self.bias.data - mean * scale  # (C,)  beta - mu * scale
        y, probe = batchnorm_forward(x, scale.astype(x.dtype), shift.astype(x.dtype))
        if probe != 0:  # sum(x - x) is NaN exactly when some x is NaN or inf
            check_finite(repr(self), x)
        self._saved = (x, mean, istd, self.training)  # the mode of THIS forward
        return y  # (N, C, H, W)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, mean, istd, batch_stats = self._take_saved()  # x (N,C,H,W); mean, istd (C,) f64
        dout = self._check_dout(dout, x)
        sum_g, sum_gxc = batchnorm_backward_reduce(dout, x, mean)  # (C,) float64 each
        coefficients = self._accumulate_and_coefficients(x, mean, istd, batch_stats, sum_g,
                                                         sum_gxc)
        return batchnorm_backward_input(dout, x, *coefficients)  # (N, C, H, W)

    # ------------------------------------------------------------ shared steps
    def _statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check x; return it contiguous with the mean and istd to normalise with (float64).

        Train mode: batch statistics, and the running statistics are updated.
        """
        who = repr(self)
        # NaN/inf are caught from the statistics (train) or the kernel's probe (eval),
        # without an extra pass over x
        check_array(who, x, ndim=4, channels=self.num_features, dtype=self.weight.dtype,
                    finite=False)
        x = np.ascontiguousarray(x)
        N, _, H, W = x.shape
        M = N * H * W
        if self.training:
            if M < 2:
                raise ValueError(f"{who}: training needs more than 1 value per channel, got "
                                 f"input shape {x.shape} (use eval() for single pixels)")
            mean, var = batchnorm_stats(x)  # (C,) float64 each, biased variance
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
                check_finite(who, x)  # raises, naming how many NaN / inf values
            m = self.momentum
            self.running_mean[...] = (1 - m) * self.running_mean + m * mean
            self.running_var[...] = (1 - m) * self.running_var + m * var * (M / (M - 1))
        else:
            mean = self.running_mean.astype(np.float64)  # (C,)
            var = self.running_var.astype(np.float64)    # (C,)
        return x, mean, 1.0 / np.sqrt(var + self.eps)

    def _check_dout(self, dout: np.ndarray, x: np.ndarray) -> np.ndarray:
        if dout.shape != x.shape or dout.dtype != x.dtype:
            raise ValueError(f"{self!r}.backward: dout has shape {dout.shape} and dtype "
                             f"{dout.dtype}, the forward output had {x.shape} {x.dtype}")
        return np.ascontiguousarray(dout)

    def _accumulate_and_coefficients(
        self, x: np.ndarray, mean: np.ndarray, istd: np.ndarray, batch_stats: bool,
        sum_g: np.ndarray, sum_gxc: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add dgamma, dbeta into the gradients; return (mean, a, mean_g, k) in x's dtype for
        dx = a * (g - mean_g - (x - mean) * k)."""
        N, C, H, W = x.shape
        M = N * H * W
        sum_gxhat = sum_gxc * istd  # sum(g * xhat), since xhat = (x - mean) * istd
        self.bias.grad += sum_g.astype(x.dtype)  # forward was y = gamma * xhat + beta
        self.weight.grad += sum_gxhat.astype(x.dtype)
        a = self.weight.data * istd  # (C,) gamma * istd
        if batch_stats:
            # dx = a * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * istd
            mean_g = sum_g / M
            k = istd * sum_gxhat / M
        else:
            # mean and var are constants here: y is an affine map of x, dx = a * g
            mean_g = np.zeros(C)
            k = np.zeros(C)
        dtype = x.dtype
        return mean.astype(dtype), a.astype(dtype), mean_g.astype(dtype), k.astype(dtype)

    def __repr__(self) -> str:
        return f"BatchNorm2d({self.num_features})"


class BatchNormReLU2d(BatchNorm2d):
    """BatchNorm2d followed by ReLU, in one pass over memory each way.

        y = max(gamma * xhat + beta, 0)

    Same parameters, buffers and state-dict names as BatchNorm2d; the same result as
    `ReLU()(BatchNorm2d(C)(x))`, but without the ReLU's own read and write of the whole
    activation in forward and in backward. Backward is BatchNorm2d's with the upstream gradient
    masked where the ReLU was off (g * (y > 0), gradient 0 at y == 0 as in ReLU).

    Saved for backward: x, the output y (for the mask; the next layer holds it anyway), the
    mean, istd (C,) and the mode.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, mean, istd = self._statistics(x)  # x (N, C, H, W); mean, istd (C,) float64
        scale = self.weight.data * istd
        shift = self.bias.data - mean * scale
        y, probe = batchnorm_relu_forward(x, scale.astype(x.dtype), shift.astype(x.dtype))
        if probe != 0:
            check_finite(repr(self), x)
        self._saved = (x, y, mean, istd, self.training)
        return y  # (N, C, H, W)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, y, mean, istd, batch_stats = self._take_saved()
        dout = self._check_dout(dout, x)
        # forward was y = max(bn(x), 0): BatchNorm2d's backward with g * (y > 0)
        sum_g, sum_gxc = batchnorm_relu_backward_reduce(dout, y, x, mean)  # (C,) float64
        coefficients = self._accumulate_and_coefficients(x, mean, istd, batch_stats, sum_g,
                                                         sum_gxc)
        return batchnorm_relu_backward_input(dout, y, x, *coefficients)  # (N, C, H, W)

    def __repr__(self) -> str:
        return f"BatchNormReLU2d({self.num_features})"
