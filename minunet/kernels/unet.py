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
5. Only what is kept (`UNet.forward_window`): `predict` keeps the core of each tile and drops
   its margin, which the encoder needs (the context) but the decoder does not. Going up, each
   layer's output is needed on less and less of the tile: the logits on the core, up.0's
   first convolution on the core and 1 px around it, the up-step below on that and 1 px
   more, and so on down to the bottom, which needs most of the tile. `decoder_windows` works
   out these windows (rounded out to Winograd's 4 x 4 tiles and whole vectors of 16 px), and
   the decoder's convolutions and up-steps compute only them, leaving the rest of their
   outputs unset, which no later layer reads. Every pixel they compute is the same bits as
   in the whole forward (the same tiles, the same sums), so the kept logits are too.
"""

from __future__ import annotations

import numpy as np

from .. import module
from .. import unet as readable_unet
from ..checks import check_array
from ..module import Module
from ..unet import Act, Norm
from . import conv as conv_kernels
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

    def forward_parts(self, parts: list[np.ndarray], head: Module | None = None,
                      windows: tuple[Window, Window] | None = None) -> np.ndarray:
        """self(*parts), emptying the list; with `head`, head(self(*parts)). In inference
        (folded, no hooks to see the inputs or outputs), conv1's inputs are freed as soon as
        conv1 is done, before conv2 runs: the decoder then holds three full-size activations
        at its peak instead of four (the caller must hold no other reference to them); and a
        1x1 head takes its sums straight from conv2's output as it is computed
        (`BatchNormReLU2d.after_conv_head`), which is then never stored.
        windows: the parts of conv1's and conv2's (or the head's) outputs that are needed
        (`decoder_windows`; folded inference only), the rest left unset."""
        if not self._folded() or module._hooks_on:
            inputs = tuple(parts)
            parts.clear()
            x = self(*inputs)
            return x if head is None else head(x)
        first, second = (None, None) if windows is None else windows
        self._saved, self._forward_state = None, "no_grad"  # what Module.__call__ records
        x = self.bn1.after_conv(self.conv1, *parts, window=first)  # (N, Cout, H, W)
        parts.clear()                                        # the skip and the up-step's output
        if head is None:
            return self.bn2.after_conv(self.conv2, x, window=second)   # (N, Cout, H, W)
        return self.bn2.after_conv_head(self.conv2, x, head, window=second)  # (N, Kc, H, W)

    def _folded(self) -> bool:
        """Inference (eval mode, gradients off) with the fused batch norm: folded into the
        convolutions (BatchNormReLU2d.after_conv), the same result without their pass."""
        return hasattr(self.bn1, "after_conv") and not self.training and not self.grad_enabled

    def backward(self, dout: np.ndarray) -> np.ndarray:
        d = self.conv2.backward(self.bn2.backward(_back(self.relu2, dout)))  # (N, Cout, H, W)
        return self.conv1.backward(self.bn1.backward(_back(self.relu1, d)))  # (N, Cin, H, W)


Window = tuple[int, int, int, int]  # (top, left, height, width) px of a layer's output


def decoder_windows(depth: int, height: int, width: int,
                    keep: Window) -> list[tuple[Window, Window, Window]]:
    """For each level i of a U-Net of `depth` on an (height, width) input, of whose logits
    only the window `keep` is needed: (up.i conv1's window, up.i conv2's (for level 0 the
    logits'), upconv.i's output window), in level i's pixels. A 3x3 convolution's window
    needs its input on the window and 1 px around it; the 2x2 stride-2 up-step's, its input
    on the half of it. Each window is rounded out to the kernels' grids (Winograd's 4-px tile
    rows, whole vectors of 16 px; the up-step's input columns on 16 px too, so its output on
    32) and clipped to the level. The input of each window, 1 row and 16 columns around it
    (what Winograd's input transform reads, as whole vectors), lies inside the window its
    producer computes. The bottom and the encoder are computed whole."""
    plan = []
    need = keep
    for i in range(depth):
        size = (height >> i, width >> i)
        second = _aligned(need, size, 4, 16)
        first = _aligned(_grown(second, 1), size, 4, 16)
        up = _aligned(_grown(first, 1), size, 2, 32)
        plan.append((first, second, up))
        need = (up[0] // 2, up[1] // 2, up[2] // 2, up[3] // 2)
    return plan


def _grown(window: Window, by: int) -> Window:
    top, left, h, w = window
    return top - by, left - by, h + 2 * by, w + 2 * by


def _aligned(window: Window, size: tuple[int, int], rows: int, cols: int) -> Window:
    """The window rounded out to multiples of rows and cols px, inside (0, 0, *size)."""
    top, left, h, w = window
    t, lft = max(0, top // rows * rows), max(0, left // cols * cols)
    b = min(size[0], -(-(top + h) // rows) * rows)
    r = min(size[1], -(-(left + w) // cols) * cols)
    return t, lft, b - t, r - lft


def _stand_in(channels: int, size: tuple[int, int]) -> np.ndarray:
    """An empty float32 array of a layer's input shape, for the kernels' size rules."""
    return np.empty((0, channels, *size), np.float32)


def _takes_winograd(conv: Module, size: tuple[int, int]) -> bool:
    """Whether inference runs conv (a fast Conv2d) on an input of `size` by Winograd."""
    return (isinstance(conv, fast_layers.Conv2d)
            and conv_kernels._winograd_applies(_stand_in(conv.in_channels, size),
                                               conv.kernel_size, conv.stride, conv.padding))


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

    def forward_window(self, x: np.ndarray, window: Window) -> np.ndarray:
        """self(x) in inference (eval mode, gradients off), of which only the logits' window
        (top, left, height, width) px is needed, e.g. a tile's core: the decoder computes
        only what that window depends on (speed-up 5 of the module docstring), the same
        bits there, and the rest of the logits is unset (do not read it). Where the fast
        kernels do not all apply (`window_plan`), the whole of self(x)."""
        check_array(repr(self), x, ndim=4, channels=self.in_channels, finite=False)
        self._check_size(x.shape[2], x.shape[3])
        plan = self.window_plan(x.shape[2], x.shape[3], x.dtype, window)
        if plan is None:
            return self(x)
        self._saved, self._forward_state = None, "no_grad"  # what Module.__call__ records
        N, _, H, W = x.shape
        return map_batch(lambda part: self._layers_forward(part, plan), x,
                         flops=self.forward_flops(N, H, W))

    def window_plan(self, height: int, width: int, dtype: np.dtype, window: Window,
                    ) -> list[tuple[Window, Window, Window]] | None:
        """`decoder_windows` for an input of (height, width) px, if every decoder layer runs
        on a kernel that computes windows (folded inference, float32, Winograd's and the
        up-step's conditions at each level, the head fused into the last convolution, no
        hooks); otherwise None. A layer that computed all of its output would read all of
        its input, unset parts included, so it is all or nothing."""
        if self.training or self.grad_enabled or module._hooks_on or self.depth < 1:
            return None
        if np.dtype(dtype) != np.float32 or self.dtype != np.float32:
            return None
        for i in range(self.depth):
            up, step = self.up[i], self.upconv[i]
            here = (height >> i, width >> i)
            below = (height >> (i + 1), width >> (i + 1))
            if not (up._folded() and up.relu1 is None and up.relu2 is None
                    and _takes_winograd(up.conv1, here) and _takes_winograd(up.conv2, here)
                    and isinstance(step, fast_layers.ConvTranspose2d)
                    and step._up_step(_stand_in(step.in_channels, below), inference=True)):
                return None
        head, last = self.head, self.up[0].conv2
        if not (head.kernel_size == 1 and head.stride == 1 and head.padding == 0
                and conv_kernels.head_fuses(_stand_in(last.in_channels, (height, width)),
                                            last.weight.data, last.stride, last.padding,
                                            head.weight.data)):
            return None
        top, left, h, w = window
        if not (0 <= top and 0 <= left and h > 0 and w > 0 and top + h <= height
                and left + w <= width):
            raise ValueError(f"{self!r}: window {window} is not inside the {height} x {width} "
                             "input")
        return decoder_windows(self.depth, height, width, window)

    def _layers_forward(self, x: np.ndarray,
                        plan: list[tuple[Window, Window, Window]] | None = None) -> np.ndarray:
        """UNet.forward's layers, in order (x checked already), without the concatenations;
        with `plan` (window_plan), the decoder computes only its windows."""
        skips = []
        for i in range(self.depth):                # encoder, top to bottom
            x = self.down[i](x)                    # (N, c_i, H/2**i, W/2**i)
            skips.append(x)
            x = self.pool[i](x)                    # (N, c_i, H/2**(i+1), W/2**(i+1))
        x = self.bottom(x)                         # (N, c_depth, H/2**depth, W/2**depth)
        for i in reversed(range(self.depth)):      # decoder, bottom to top
            if plan is None:
                x = self.upconv[i](x)              # (N, c_i, H/2**i, W/2**i)
            else:                                  # the same, set on its window only
                x = self.upconv[i].forward_window(x, plan[i][2])
            # concat.i and up.i in one: (N, c_i, ...); the skip is popped and this frame lets
            # go of x, so that both are freed as soon as up.i's conv1 is done with them
            # (DoubleConv.forward_parts: memory at inference)
            parts = [skips.pop(), x]
            del x
            windows = None if plan is None else plan[i][:2]
            if i == 0:                             # up.0 and the head: (N, Kc, H, W)
                return self.up[0].forward_parts(parts, self.head, windows)
            x = self.up[i].forward_parts(parts, windows=windows)
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
