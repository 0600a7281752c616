"""The fast layers: the readable layers of `minunet.layers`, computed by the kernels.

Each class here subclasses the readable layer of the same name and overrides only `forward`
and `backward`: same constructor, same parameters and buffers, same state-dict names, same
errors, same results (tests/test_fast_layers.py compares them in float32 and float64). A
checkpoint written by one loads into the other. `UNet(readable=False)` (the default) builds
its network from these; `UNet(readable=True)` or `MINUNET_READABLE=1` from the readable ones.

What the kernels do differently, each for a reason:

- NaN/inf "probes": forward kernels also return sum(x - x), which is 0 when every value is
  finite and NaN otherwise; that replaces a separate pass over x to check finiteness.
- Batch norm never writes x̂: forward goes straight from x to y = x * scale + shift, backward
  recomputes x̂ from the saved x, mean and istd and folds the three gradient terms into
  per-channel coefficients; that is one reduction pass and one element-wise pass each way
  instead of several temporaries (statistics and sums in float64).
- ReLU keeps its output (the next layer holds it anyway) instead of its input.
- Max-pool keeps the winner's offset in one byte (uint8) per output pixel; 2x2 / stride 2
  has its own branch-free loop.
- Convolutions go one of two routes (see `conv.py`): float32 stride-1 ones on an AVX-512 CPU
  read a zero-padded band of the input directly (register-tiled loops, no im2col); the rest
  are matrix products over im2col columns (BLAS). The NaN/inf check of their input (and of
  dout in backward) is a probe summed while the band or the columns are built. In float32,
  3x3 ones with >= 16 input channels on large enough images (conv.py's `_winograd_pays`)
  compute forward and the input gradient by Winograd F(4x4, 3x3) instead
  (`MINUNET_WINOGRAD=infer` or `0` turns that off): a few 1e-6 of rounding, 4x fewer
  multiply-adds.

`BatchNormReLU2d` (BatchNorm2d then ReLU in one pass each way) lives here only: the fast
U-Net's DoubleConv uses it in place of each BatchNorm2d + ReLU pair.
"""

from __future__ import annotations

import numpy as np

from .. import layers
from ..checks import check_array, check_finite
from . import conv, upsample
from . import conv as conv_kernels  # where a parameter named conv (a layer) hides the module
from .activation import relu_backward, relu_forward
from .batchnorm import (
    batchnorm_backward_input,
    batchnorm_backward_reduce,
    batchnorm_forward,
    batchnorm_relu_backward_input,
    batchnorm_relu_backward_reduce,
    batchnorm_relu_forward,
    batchnorm_relu_train_backward,
    batchnorm_relu_train_forward,
    batchnorm_stats,
    train_coefficients,
)
from .concat import concat_channels
from .conv import (
    conv2d_backward_input,
    conv2d_backward_weight,
    conv2d_forward,
    conv2d_inference,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
)
from .pool import maxpool2d_backward, maxpool2d_forward, maxpool2x2_values

# training's up-steps take upsample.py's kernels up to this many weights per tap (Cin x Cout:
# 128 x 64), BLAS beyond (see ConvTranspose2d._up_step)
UP_STEP_MAX_WEIGHTS = 128 * 64

__all__ = ["BatchNorm2d", "BatchNormReLU2d", "Concat", "Conv2d", "ConvTranspose2d",
           "MaxPool2d", "ReLU"]


class ReLU(layers.ReLU):
    """layers.ReLU in one Numba pass each way (no boolean temporary), NaN probe included."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, finite=False)  # finiteness: the kernel's probe, same pass
        out, probe = relu_forward(np.ascontiguousarray(x))  # same shape as x
        if probe != 0:  # sum(x - x) is NaN exactly when some x is NaN or inf
            check_finite("ReLU", x)  # raises, naming how many
        self.save_for_backward(out)  # out > 0 exactly where x > 0; the next layer holds out
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        (out,) = self.take_saved()
        self._check_dout(dout, out.shape)
        return relu_backward(np.ascontiguousarray(dout), out)  # dout where out > 0, else 0


class Concat(layers.Concat):
    """layers.Concat with the copy and the finiteness check of both inputs in one pass."""

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self._check_inputs(a, b, finite=False)  # finiteness: the kernel's probe, same pass
        out, probe = concat_channels(np.ascontiguousarray(a), np.ascontiguousarray(b))
        if probe != 0:  # sum(v - v) is NaN exactly when some value is NaN or inf
            check_finite("Concat", a, name="first input (a)")
            check_finite("Concat", b, name="second input (b)")
        self.save_for_backward(a.shape[1])
        return out  # (N, Ca + Cb, H, W)

    # backward is the readable one: two slice copies are already memory-bound


class Conv2d(layers.Conv2d):
    """layers.Conv2d by conv.py's kernels (direct or im2col + BLAS); keeps x unpadded.

    Fast-only: `forward(a, b)` convolves the concatenation of a and b along channels without
    building it (the U-Net's skip and up-step: conv.py copies each part into its bands), and
    backward then returns the input gradient in the same two parts, (da, db).
    """

    def forward(self, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        x = self._check_parts(x, more)  # finiteness: the kernel's probe, same pass
        bias = None if self.bias is None else self.bias.data
        inference = not (self.training or self.grad_enabled)
        if not more and self._head(x, inference):
            # the U-Net's head: the sums in registers, no BLAS (upsample.py)
            y = upsample.conv1x1_forward(x, self.weight.data, bias, who="Conv2d")
            if inference:
                return y
        else:
            y = conv2d_forward(x, self.weight.data, bias, self.stride, self.padding,
                               who="Conv2d", winograd=self._winograd())  # (N, Cout, Ho, Wo)
        self.save_for_backward(x)  # backward needs x for dw
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        (x,) = self.take_saved()  # (N, Cin, H, W), or its two parts
        N, _, H, W = x[0].shape if isinstance(x, tuple) else x.shape
        K, S, P = self.kernel_size, self.stride, self.padding
        self._check_dout(dy, (N, self.out_channels, (H + 2 * P - K) // S + 1,
                              (W + 2 * P - K) // S + 1), finite=False)  # the probe below
        if not isinstance(x, tuple) and self._head(x, inference=False):
            # one read of dy for dx, dw and db (upsample.py); NaN/inf in dy raise first
            dx, dw, db = upsample.conv1x1_backward(x, dy, self.weight.data,
                                                   bias=self.bias is not None,
                                                   who="Conv2d.backward")
            self.weight.grad += dw                                   # (Cout, Cin, 1, 1)
            if self.bias is not None:
                self.bias.grad += db                                 # (Cout,)
            return dx
        # dx first: its pass over dy (band or im2col) checks dy for NaN/inf before any
        # gradient is touched
        split = x[0].shape[1] if isinstance(x, tuple) else None
        dx = conv2d_backward_input(dy, self.weight.data, S, P, H, W, who="Conv2d.backward",
                                   split=split, winograd=self._winograd())
        #                                                  (N, Cin, H, W), or (da, db)
        self.weight.grad += conv2d_backward_weight(x, dy, K, S, P)  # (Cout, Cin, K, K)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=(0, 2, 3))                 # (Cout,)
        return dx

    def _winograd(self) -> bool:
        """Whether forward and the input gradient may take Winograd F(4x4, 3x3) (conv.py's
        `_winograd_pays`: float32 3x3 stride-1 pad-1 convolutions of >= 16 input channels on
        images large enough for their channels): unless MINUNET_WINOGRAD is 0 or `infer`. It rounds
        differently from the direct sums (a few 1e-6 of a layer's scale), as the Winograd
        convolutions of cuDNN and oneDNN do; the weight gradient stays the direct sum."""
        return conv.TRAIN_WINOGRAD

    def _head(self, x: np.ndarray, inference: bool) -> bool:
        """Whether upsample.py's 1x1 kernels compute this layer: a 1x1 stride-1 convolution
        without padding of float32 rows a multiple of 16 wide; in inference wherever they
        apply (upsample.applies), in training on the direct route's CPUs (conv.USE_DIRECT:
        there the BLAS route also paid a separate NaN/inf pass over x and over dy, its
        columns being x itself)."""
        if not (self.kernel_size == 1 and self.stride == 1 and self.padding == 0
                and self.weight.dtype == np.float32):
            return False
        return upsample.applies(x) if inference else conv.USE_DIRECT and upsample.fits(x)

    def _check_parts(self, x: np.ndarray, more: tuple[np.ndarray, ...],
                     ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Check the input, one array or two parts; return it (the parts as a tuple)."""
        if not more:
            self._check_input(x, finite=False)
            return x
        if len(more) > 1:
            raise TypeError(f"{self!r}: forward takes one input or two parts, got "
                            f"{1 + len(more)} arrays")
        b = more[0]
        for name, part in (("first part", x), ("second part", b)):
            check_array("Conv2d", part, ndim=4, dtype=self.weight.dtype, name=name,
                        finite=False)
        if (x.shape[0], *x.shape[2:]) != (b.shape[0], *b.shape[2:]):
            raise ValueError(f"{self!r}: the two parts must agree in N, H and W, got "
                             f"{x.shape} and {b.shape}")
        if x.shape[1] + b.shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: the two parts have {x.shape[1]} + {b.shape[1]} "
                             f"channels, the layer takes {self.in_channels}")
        # the size rules of one input: checked on an empty stand-in of the joined shape
        self._check_input(np.empty((0, self.in_channels, *x.shape[2:]), x.dtype), finite=False)
        return x, b


class ConvTranspose2d(layers.ConvTranspose2d):
    """layers.ConvTranspose2d as matrix products: it is Conv2d's backward, and vice versa.
    The U-Net's up-step (2x2, stride 2, float32) runs on upsample.py's kernels (see
    `_up_step`): forward writes y straight from the products, backward computes dx, dw and
    db from one read of dy. Elsewhere forward adds the bias as it places the columns, and
    backward computes the three gradients from one im2col of dy
    (conv.conv_transpose2d_backward)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, finite=False)  # finiteness: checked by the kernel
        bias = None if self.bias is None else self.bias.data
        inference = not (self.training or self.grad_enabled)
        if self._up_step(x, inference):
            # the U-Net's up-step: written straight into y, no columns (upsample.py)
            y = upsample.conv_transpose2x2_forward(x, self.weight.data, bias,
                                                   who="ConvTranspose2d")
            if inference:
                return y
        else:
            y = conv_transpose2d_forward(x, self.weight.data, bias, self.stride, self.padding,
                                         who="ConvTranspose2d")
        self.save_for_backward(x)  # backward needs x for dw
        return y  # (N, Cout, Ho, Wo)

    def forward_window(self, x: np.ndarray, window: conv_kernels.Window) -> np.ndarray:
        """self(x) for inference (eval mode, gradients off), of which only the output window
        (top, left, height, width) is needed: where upsample.py's up-step runs, only that part
        is computed (`upsample.up_window`: even, columns on a 32-px grid), the same bits, and
        the rest of the output is left unset; elsewhere all of it."""
        if self.training or self.grad_enabled:
            raise RuntimeError(f"{self!r}.forward_window is for inference only: call .eval() "
                               "and .set_grad_enabled(False) first")
        if not self._up_step(x, inference=True):
            return self(x)
        self._check_input(x, finite=False)  # finiteness: checked by the kernel
        self._saved, self._forward_state = None, "no_grad"  # as Module.__call__ records
        return upsample.conv_transpose2x2_forward(
            x, self.weight.data, None if self.bias is None else self.bias.data,
            who="ConvTranspose2d", window=window)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        (x,) = self.take_saved()  # (N, Cin, H, W)
        N, _, H, W = x.shape
        K, S, P = self.kernel_size, self.stride, self.padding
        self._check_dout(dy, (N, self.out_channels, (H - 1) * S - 2 * P + K,
                              (W - 1) * S - 2 * P + K), finite=False)  # the probe below
        if self._up_step(x, inference=False):  # one read of dy, no columns (upsample.py)
            dx, dw, db = upsample.conv_transpose2x2_backward(x, dy, self.weight.data,
                                                             bias=self.bias is not None,
                                                             who="ConvTranspose2d.backward")
        else:  # one im2col of dy for all three gradients
            dx, dw, db = conv_transpose2d_backward(x, dy, self.weight.data, S, P,
                                                   bias=self.bias is not None,
                                                   who="ConvTranspose2d.backward")
        # (NaN/inf in dy raise in either before any gradient is added)
        self.weight.grad += dw          # (Cin, Cout, K, K)
        if self.bias is not None:
            self.bias.grad += db        # (Cout,)
        return dx                       # (N, Cin, H, W)

    def _up_step(self, x: np.ndarray, inference: bool) -> bool:
        """Whether upsample.py's kernels compute this layer: a 2x2 stride-2 transposed
        convolution of float32 rows a multiple of 16 wide; in inference wherever they apply
        (upsample.applies), in training on the direct route's CPUs (conv.USE_DIRECT) and up
        to UP_STEP_MAX_WEIGHTS weights per tap (with more, BLAS's packed products were faster
        than theirs: C3's two deepest up-steps, bench/bench_fast_paths.py)."""
        if not (self.kernel_size == 2 and self.stride == 2 and self.padding == 0
                and self.weight.dtype == np.float32):
            return False
        if inference:
            return upsample.applies(x)
        return (conv.USE_DIRECT and upsample.fits(x)
                and self.in_channels * self.out_channels <= UP_STEP_MAX_WEIGHTS)


class MaxPool2d(layers.MaxPool2d):
    """layers.MaxPool2d in one pass each way; the winner's offset kept in one byte."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check_input(x, finite=False)  # finiteness: the kernel's probe, same pass
        H, W = x.shape[2:]
        if not self.grad_enabled and self.kernel_size == self.stride == 2:
            # inference: no winners to keep, the planes shared between the threads
            out, probe = maxpool2x2_values(np.ascontiguousarray(x))  # (N, C, Ho, Wo)
            argmax = None
        else:
            out, argmax, probe = maxpool2d_forward(np.ascontiguousarray(x), self.kernel_size,
                                                   self.stride)  # (N, C, Ho, Wo)
        if probe != 0:  # sum(x - x) is NaN exactly when some x is NaN or inf
            check_finite(repr(self), x)  # raises, naming how many
        self.save_for_backward(argmax, H, W)  # argmax: uint8 offset kh*K + kw
        return out

    def backward(self, dout: np.ndarray, plus: np.ndarray | None = None) -> np.ndarray:
        """dx (N, C, H, W); fast-only: with `plus` (N, C, H, W), dx + plus in the same pass
        (the fast U-Net adds the skip connection's gradient so)."""
        argmax, H, W = self.take_saved()  # argmax (N, C, Ho, Wo)
        self._check_dout(dout, argmax.shape)
        if plus is not None and (plus.shape != (*argmax.shape[:2], H, W)
                                 or plus.dtype != dout.dtype):
            raise ValueError(f"{self!r}.backward: plus must be {(*argmax.shape[:2], H, W)} "
                             f"{dout.dtype}, got {plus.shape} {plus.dtype}")
        return maxpool2d_backward(np.ascontiguousarray(dout), argmax, H, W, self.kernel_size,
                                  self.stride, plus=plus)  # (N, C, H, W)


class BatchNorm2d(layers.BatchNorm2d):
    """layers.BatchNorm2d in two passes over memory each way.

    Forward: one statistics pass (float64 sums), one pass y = x * scale + shift with
    scale = gamma * istd and shift = beta - mu * scale. Backward: one pass for the per-channel
    sums of g and g * (x - mu), one pass for dx = a * (g - mean_g - (x - mu) * k), where
    a = gamma * istd, mean_g = mean(g) and k = istd * mean(g * x̂): terms (1), (2), (3) of
    the readable layer's docstring with dx̂ = gamma * g, regrouped per channel.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        x, mean, istd = self._statistics(x)  # x (N, C, H, W); mean, istd (C,) float64
        scale = self.weight.data * istd       # (C,)  gamma / sqrt(var + eps)
        shift = self.bias.data - mean * scale  # (C,)  beta - mu * scale
        y, probe = batchnorm_forward(x, scale.astype(x.dtype), shift.astype(x.dtype))
        if probe != 0:  # sum(x - x) is NaN exactly when some x is NaN or inf
            check_finite(repr(self), x)
        self.save_for_backward(x, mean, istd, self.training)  # the mode of THIS forward
        return y  # (N, C, H, W)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, mean, istd, batch_stats = self.take_saved()  # x (N,C,H,W); mean, istd (C,) f64
        self._check_dout(dout, x)
        dout = np.ascontiguousarray(dout)
        sum_g, sum_gxc = batchnorm_backward_reduce(dout, x, mean)  # (C,) float64 each
        coefficients = self._accumulate_and_coefficients(x, mean, istd, batch_stats, sum_g,
                                                         sum_gxc)
        return batchnorm_backward_input(dout, x, *coefficients)  # (N, C, H, W)

    # ------------------------------------------------------------ shared steps
    def _statistics(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check x; return it contiguous with the mean and istd to normalise with (float64).

        Train mode: batch statistics, and the running statistics are updated.
        """
        # NaN/inf are caught from the statistics (train) or the kernel's probe (eval),
        # without an extra pass over x
        self._check_input(x, finite=False)
        x = np.ascontiguousarray(x)
        if self.training:
            mean, var = batchnorm_stats(x)  # (C,) float64 each, biased variance
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
                check_finite(repr(self), x)  # raises, naming how many NaN / inf values
            self._update_running_stats(mean, var, x)
        else:
            mean = self.running_mean.astype(np.float64)  # (C,)
            var = self.running_var.astype(np.float64)    # (C,)
        return x, mean, 1.0 / np.sqrt(var + self.eps)

    def _accumulate_and_coefficients(
        self, x: np.ndarray, mean: np.ndarray, istd: np.ndarray, batch_stats: bool,
        sum_g: np.ndarray, sum_gxc: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add dgamma, dbeta into the gradients; return (mean, a, mean_g, k) in x's dtype for
        dx = a * (g - mean_g - (x - mean) * k)."""
        N, C, H, W = x.shape
        M = N * H * W
        sum_gxhat = sum_gxc * istd  # sum(g * x̂), since x̂ = (x - mean) * istd
        self.bias.grad += sum_g.astype(x.dtype)  # forward was y = gamma * x̂ + beta
        self.weight.grad += sum_gxhat.astype(x.dtype)
        a = self.weight.data * istd  # (C,) gamma * istd
        if batch_stats:
            # terms (2) and (3): a * mean(g) and a * x̂ * mean(g * x̂), x̂ = (x - mean) * istd
            mean_g = sum_g / M
            k = istd * sum_gxhat / M
        else:
            # eval: mean and var are constants, only term (1) is left, dx = a * g
            mean_g = np.zeros(C)
            k = np.zeros(C)
        dtype = x.dtype
        return mean.astype(dtype), a.astype(dtype), mean_g.astype(dtype), k.astype(dtype)


class BatchNormReLU2d(BatchNorm2d):
    """BatchNorm2d followed by ReLU, in one pass over memory each way.

        y = max(gamma * x̂ + beta, 0)

    Same parameters, buffers and state-dict names as BatchNorm2d; the same result as
    `ReLU()(BatchNorm2d(C)(x))`, but without the ReLU's own read and write of the whole
    activation in forward and in backward. Backward is BatchNorm2d's with the upstream gradient
    masked where the ReLU was off (g * (y > 0), gradient 0 at y == 0 as in ReLU).

    Saved for backward: x, the mean, istd (C,), the mode, and for the ReLU's mask the output y
    (eval mode; the next layer holds it anyway) or, in train mode, the forward's per-channel
    (scale, shift), from which backward recomputes y > 0 as x * scale + shift > 0 (the same
    operations, the same bits) instead of reading y.
    """

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.training:  # statistics and y channel by channel: one pass over memory
            self._check_input(x, finite=False)  # finiteness: from the statistics
            x = np.ascontiguousarray(x)
            y, mean, var = batchnorm_relu_train_forward(x, self.weight.data, self.bias.data,
                                                        self.eps)
            if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
                check_finite(repr(self), x)  # raises, naming how many NaN / inf values
            self._update_running_stats(mean, var, x)
            istd = 1.0 / np.sqrt(var + self.eps)
            # y = max(x * scale + shift, 0) with these, as the kernel rounded them: backward
            # recomputes the ReLU's mask from x and them instead of reading y
            mask_from = train_coefficients(self.weight.data, self.bias.data, mean, var,
                                           self.eps, x.dtype)
        else:
            x, mean, istd = self._statistics(x)  # x (N, C, H, W); mean, istd (C,) float64
            scale = self.weight.data * istd
            shift = self.bias.data - mean * scale
            y, probe = batchnorm_relu_forward(x, scale.astype(x.dtype), shift.astype(x.dtype))
            if probe != 0:
                check_finite(repr(self), x)
            mask_from = y
        self.save_for_backward(x, mask_from, mean, istd, self.training)
        return y  # (N, C, H, W)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # mask_from: the forward's (scale, shift) in train mode, y in eval mode
        x, mask_from, mean, istd, batch_stats = self.take_saved()
        self._check_dout(dout, x)
        dout = np.ascontiguousarray(dout)
        # forward was y = max(bn(x), 0): BatchNorm2d's backward with g * (y > 0)
        if batch_stats:  # the sums and dx channel by channel: one pass over memory
            dx, sum_g, sum_gxc = batchnorm_relu_train_backward(dout, x, mean, istd,
                                                               self.weight.data, *mask_from)
            self.bias.grad += sum_g.astype(x.dtype)             # dbeta
            self.weight.grad += (sum_gxc * istd).astype(x.dtype)  # dgamma = sum(g * x̂)
            return dx  # (N, C, H, W)
        y = mask_from
        sum_g, sum_gxc = batchnorm_relu_backward_reduce(dout, y, x, mean)  # (C,) float64
        coefficients = self._accumulate_and_coefficients(x, mean, istd, batch_stats, sum_g,
                                                         sum_gxc)
        return batchnorm_relu_backward_input(dout, y, x, *coefficients)  # (N, C, H, W)

    def after_conv(self, conv: Conv2d, x: np.ndarray, *more: np.ndarray,
                   window: conv_kernels.Window | None = None) -> np.ndarray:
        """self(conv(x)) for inference (eval mode, gradients off), as ONE convolution
        (`after_conv(conv, a, b)`: of the two parts, as conv(a, b)).

        With the running statistics, the batch norm is an affine map per channel, so it folds
        into the convolution before it:

            scale = gamma / sqrt(running_var + eps)
            w'[o] = w[o] * scale[o]
            b'[o] = (b[o] - running_mean[o]) * scale[o] + beta[o]     (b = 0: no conv bias)

        and the ReLU is applied to each tile of the convolution's output as it is computed.
        The same result as the two layers, up to float rounding, without the batch norm's
        pass over the whole activation. Nothing is kept for backward, so the convolution may
        be computed another way: conv2d_inference, Winograd F(4x4, 3x3) where it applies.
        window (top, left, height, width): the part of the output that is needed
        (conv2d_inference: where Winograd runs, only that part is computed, the same bits,
        and the rest of the output is left unset).
        """
        if self.training or self.grad_enabled:
            raise RuntimeError(f"{self!r}.after_conv is for inference only: call .eval() and "
                               f".set_grad_enabled(False) first, or call the two layers")
        x = conv._check_parts(x, more)  # finiteness: the convolution's probe
        weight, shift = self._folded_into(conv)
        y = conv2d_inference(x, weight, shift, conv.stride, conv.padding, who="Conv2d",
                             relu=True, window=window)
        for module in (conv, self):  # as Module.__call__ does with gradients off
            module._saved = None
            module._forward_state = "no_grad"
        return y

    def after_conv_head(self, conv: Conv2d, x: np.ndarray, head: Conv2d,
                        window: conv_kernels.Window | None = None) -> np.ndarray:
        """head(self(conv(x))) for inference, where the head is a 1x1 convolution: as
        after_conv, and the head's sums taken from the convolution's output as it is computed
        (`conv.conv2d_inference_head`: the same logits to the bit, without storing that
        output or reading it again); the three layers one after the other where that does
        not apply (`conv.head_fuses`). window: the part of the logits needed (after_conv)."""
        if not (head.kernel_size == 1 and head.stride == 1 and head.padding == 0
                and not self.training and not self.grad_enabled
                and conv_kernels.head_fuses(x, conv.weight.data, conv.stride, conv.padding,
                                            head.weight.data)):
            return head(self.after_conv(conv, x))  # all of it: the head reads all of it
        x = conv._check_parts(x, ())
        weight, shift = self._folded_into(conv)
        logits = conv_kernels.conv2d_inference_head(
            x, weight, shift, True, head.weight.data,
            None if head.bias is None else head.bias.data, who="Conv2d", head_who=repr(head),
            window=window)
        for module in (conv, self, head):  # as Module.__call__ does with gradients off
            module._saved = None
            module._forward_state = "no_grad"
        return logits

    def _folded_into(self, conv: Conv2d) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) of conv with this batch norm folded in (see after_conv), in conv's
        dtype; FloatingPointError if they are not finite."""
        istd = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)   # (C,)
        scale = self.weight.data * istd                                        # (C,)
        bias = 0.0 if conv.bias is None else conv.bias.data
        shift = (bias - self.running_mean) * scale + self.bias.data            # (C,)
        dtype = conv.weight.dtype  # x, or both its parts, checked to have it
        scale = scale.astype(dtype)  # one multiply per weight, in the input's precision
        weight = conv.weight.data.astype(dtype) * scale[:, None, None, None]  # (C, Cin, K, K)
        if not (np.isfinite(weight).all() and np.isfinite(shift).all()):
            check_finite(repr(self), self.running_var, name="running_var")
            check_finite(repr(conv), conv.weight.data, name="weight")
            raise FloatingPointError(f"{self!r}: its parameters folded into {conv!r} are not "
                                     f"finite: check the model's weights")
        return weight, shift.astype(dtype)

    def __repr__(self) -> str:
        return f"BatchNormReLU2d({self.num_features})"
