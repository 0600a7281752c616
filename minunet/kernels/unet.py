"""The fast U-Net: `minunet.unet.UNet`'s structure, built from the fast layers, with four
speed-ups that have no place in the network a learner reads.

`mu.UNet(..., readable=False)` (the default, unless MINUNET_READABLE=1) returns this file's
`UNet`, a subclass of the readable one with the same name (as `kernels/layers.py`'s Conv2d
is `layers.Conv2d`'s): same parameters, buffers and state-dict names, the same results
(tests/test_unet.py compares them), so a checkpoint of one loads into the other.

1. Batch norm and ReLU fused: each DoubleConv uses `BatchNormReLU2d` (one pass over memory
   each way instead of two) where the readable one has BatchNorm2d then ReLU; relu1 and relu2
   are None then. With your own `norm=` or `act=`, the layers run apart, as given.
2. No concatenation built: up.i's first convolution reads the skip and the up-step's output
   where they are (`kernels.layers.Conv2d(a, b)`), and its backward returns their two
   gradients, (dskip, dup): the readable network's `concat.i` and its backward, without the copy.
3. The skip's gradient added by the pool's backward as it places its own (one pass over the
   activation instead of two), unless hooks are on (a trace records the pool's gradient).
4. Inference (eval mode, gradients off): each batch norm + ReLU is folded into the convolution
   before it (`BatchNormReLU2d.after_conv`), which then runs as a Winograd F(4x4, 3x3)
   convolution where it applies (`conv.conv2d_inference`, winograd.py: the levels with >= 16
   input channels), and the batch is split over threads, one slice per thread
   (`threads.map_batch`; images are independent there).
"""

from __future__ import annotations

import numpy as np

from .. import module
from .. import unet as readable_unet
from ..checks import check_array
from ..module import Module
from ..unet import Act, Norm
from . import layers as fast_layers
from .threads import map_batch


class DoubleConv(readable_unet.DoubleConv):
    """DoubleConv of the fast layers; by default each BatchNorm2d + ReLU is one
    BatchNormReLU2d (relu1, relu2 None). forward(a, b) takes the two halves of the
    concatenation [a | b] along channels, and backward then returns (da, db)."""

    def __init__(self, in_channels: int, out_channels: int, rng: np.random.Generator,
                 norm: Norm | None = None, act: Act | None = None) -> None:
        fused = norm is None and act is None
        super().__init__(in_channels, out_channels, rng, fast_layers,
                         fast_layers.BatchNormReLU2d if fused else norm, act)
        if fused:
            self.relu1 = self.relu2 = None

    def forward(self, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        if self._folded():  # inference: each batch norm + ReLU inside its conv
            x = self.bn1.after_conv(self.conv1, x, *more)   # (N, Cout, H, W)
            return self.bn2.after_conv(self.conv2, x)       # (N, Cout, H, W)
        x = _then(self.relu1, self.bn1(self.conv1(x, *more)))  # (N, Cout, H, W)
        return _then(self.relu2, self.bn2(self.conv2(x)))      # (N, Cout, H, W)

    def forward_parts(self, parts: list[np.ndarray], head: Module | None = None) -> np.ndarray:
        """self(*parts), emptying the list; with `head`, head(self(*parts)). In inference
        (folded, no hooks to see the inputs or outputs), conv1's inputs are freed as soon as
        conv1 is done, before conv2 runs: the decoder then holds three full-size activations
        at its peak instead of four (the caller must hold no other reference to them); and a
        1x1 head takes its sums straight from conv2's output as it is computed
        (`BatchNormReLU2d.after_conv_head`), which is then never stored."""
        if not self._folded() or module._hooks_on:
            inputs = tuple(parts)
            parts.clear()
            x = self(*inputs)
            return x if head is None else head(x)
        self._saved, self._forward_state = None, "no_grad"  # what Module.__call__ records
        x = self.bn1.after_conv(self.conv1, *parts)          # (N, Cout, H, W)
        parts.clear()                                        # the skip and the up-step's output
        if head is None:
            return self.bn2.after_conv(self.conv2, x)        # (N, Cout, H, W)
        return self.bn2.after_conv_head(self.conv2, x, head)  # (N, Kc, H, W)

    def _folded(self) -> bool:
        """Inference (eval mode, gradients off) with the fused batch norm: folded into the
        convolutions (BatchNormReLU2d.after_conv), the same result without their pass."""
        return hasattr(self.bn1, "after_conv") and not self.training and not self.grad_enabled

    def backward(self, dout: np.ndarray) -> np.ndarray:
        d = self.conv2.backward(self.bn2.backward(_back(self.relu2, dout)))  # (N, Cout, H, W)
        return self.conv1.backward(self.bn1.backward(_back(self.relu1, d)))  # (N, Cin, H, W)


def _then(relu: Module | None, x: np.ndarray) -> np.ndarray:
    """relu(x), or x when the ReLU is fused into the batch norm before it."""
    return x if relu is None else relu(x)


def _back(relu: Module | None, dout: np.ndarray) -> np.ndarray:
    """relu.backward(dout), or dout when the ReLU is fused into the batch norm before it."""
    return dout if relu is None else relu.backward(dout)


class UNet(readable_unet.UNet):
    """The readable UNet with the fast layers and the four speed-ups of the module docstring."""

    layers = fast_layers
    readable = False

    def double_conv(self, in_channels: int, out_channels: int, rng: np.random.Generator,
                    norm: Norm | None, act: Act | None) -> Module:
        return DoubleConv(in_channels, out_channels, rng, norm, act)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, Cin, H, W) -> logits (N, Kc, H, W); H and W divisible by 2**depth."""
        check_array(repr(self), x, ndim=4, channels=self.in_channels, finite=False)
        self._check_size(x.shape[2], x.shape[3])
        if self.down[0]._folded():  # inference: a slice of the batch per thread
            N, _, H, W = x.shape
            return map_batch(self._layers_forward, x, flops=self.forward_flops(N, H, W))
        return self._layers_forward(x)

    def _layers_forward(self, x: np.ndarray) -> np.ndarray:
        """UNet.forward's layers, in order (x checked already), without the concatenations."""
        skips = []
        for i in range(self.depth):                # encoder, top to bottom
            x = self.down[i](x)                    # (N, c_i, H/2**i, W/2**i)
            skips.append(x)
            x = self.pool[i](x)                    # (N, c_i, H/2**(i+1), W/2**(i+1))
        x = self.bottom(x)                         # (N, c_depth, H/2**depth, W/2**depth)
        for i in reversed(range(self.depth)):      # decoder, bottom to top
            x = self.upconv[i](x)                  # (N, c_i, H/2**i, W/2**i)
            # concat.i and up.i in one: (N, c_i, ...); the skip is popped and this frame lets
            # go of x, so that both are freed as soon as up.i's conv1 is done with them
            # (DoubleConv.forward_parts: memory at inference)
            parts = [skips.pop(), x]
            del x
            if i == 0:                             # up.0 and the head: (N, Kc, H, W)
                return self.up[0].forward_parts(parts, self.head)
            x = self.up[i].forward_parts(parts)
        return self.head(x)                        # (N, Kc, H, W) (depth 0)

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """UNet.backward, where up.i's backward returns the two halves (dskip, dup) itself."""
        d = self.head.backward(dlogits)            # (N, c_0, H, W)
        dskip = [None] * self.depth
        for i in range(self.depth):                # decoder, top to bottom
            dskip[i], d = self.up[i].backward(d)   # (N, c_i, ...) each: skip, up part
            d = self.upconv[i].backward(d)         # (N, c_{i+1}, H/2**(i+1), W/2**(i+1))
        d = self.bottom.backward(d)                # (N, c_{depth-1}, H/2**depth, W/2**depth)
        for i in reversed(range(self.depth)):      # encoder, bottom to top
            if module._hooks_on:  # a trace records the pool's own gradient: two steps
                d = self.pool[i].backward(d)       # (N, c_i, H/2**i, W/2**i)
                d += dskip[i]                      # the skip's gradient joins (UNet.backward)
            else:  # the same sum, added by the pool as it places its gradient: one pass
                d = self.pool[i].backward(d, plus=dskip[i])  # (N, c_i, H/2**i, W/2**i)
            dskip[i] = None
            d = self.down[i].backward(d)           # (N, c_{i-1} or Cin, H/2**i, W/2**i)
        return d
