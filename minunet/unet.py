"""The U-Net: an encoder going down, a decoder coming up, skip connections across.

    x (N, Cin, H, W)                                                  logits (N, Kc, H, W)
      |                                                                     ^
    down.0  DoubleConv(Cin -> c0)  ---------- skip 0 ---------->  concat.0 -> up.0 -> head (1x1)
      |  pool.0 (2x2 max)                                            ^ upconv.0 (2x2, stride 2)
    down.1  DoubleConv(c0 -> c1)   ---------- skip 1 ---------->  concat.1 -> up.1
      |  pool.1                                                      ^ upconv.1
     ...                                                            ...
      |  pool.{depth-1}                                              ^ upconv.{depth-1}
    bottom  DoubleConv(c_{depth-1} -> c_depth)  ---------------------'

    c_i = base_channels * 2**i: channels double on the way down and halve on the way up.

Level i works at (H / 2**i, W / 2**i). A DoubleConv is (3x3 conv, padding 1 -> BatchNorm2d ->
ReLU) twice; the convolutions have no bias, since the batch norm right after them subtracts the
mean and would cancel it. The transposed convolution doubles H and W and halves the channels,
the concatenation puts the skip (c_i channels) before the upsampled map (c_i channels), and `up.i`
brings the 2*c_i channels back to c_i.

`backward` walks the same route in reverse. The encoder output of level i went two ways in
forward (into the pool, and across the skip into the decoder), so its gradient is the SUM of
what comes back along both ways: the line `d += dskip[i]`.

H and W must be divisible by 2**depth (each pool halves them and the decoder must retrace the
sizes exactly); `minunet.predict` tiles images of any size.

Readable or fast: `UNet(..., readable=True)` builds the network from the layers of
`minunet.layers` (plain NumPy, the math, made to be stepped through in a debugger);
`readable=False` from `minunet.kernels.layers` (the same layers computed by Numba and BLAS
kernels). `readable=None`, the default, reads the environment variable MINUNET_READABLE
(`MINUNET_READABLE=1 python examples/train_small.py --quick`; unset or 0: fast). Both have the
same parameters, state dict and results, so a checkpoint of one loads into the other.
The fast set also predicts (eval mode, gradients off) on a slice of the batch per thread at
once (`kernels.threads.map_batch`): images are independent there. And it never builds the
concatenations: up.i's first convolution reads the skip and the up-step's output where they
are (`kernels.layers.Conv2d(a, b)`), and its backward returns their two gradients.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from . import layers as readable_layers
from .checks import check_array
from .kernels import layers as fast_layers
from .kernels.threads import map_batch
from .module import Module

CONV_KERNEL = 3  # 3x3 convolutions with padding 1 keep H and W ("same" size)
POOL = 2         # 2x2 max-pool, stride 2: halves H and W; the up-step's 2x2 stride-2 undoes it
READABLE_ENV = "MINUNET_READABLE"  # =1: UNet(readable=None) builds the readable layers


def use_readable(readable: bool | None = None) -> bool:
    """`readable` if given, else whether the environment variable MINUNET_READABLE says so."""
    if readable is not None:
        return bool(readable)
    value = os.environ.get(READABLE_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"{READABLE_ENV}={value!r}: use 1 for the readable layers, 0 (or unset) "
                     f"for the fast ones")


class DoubleConv(Module):
    """(3x3 conv -> BatchNorm2d -> ReLU) twice: (N, Cin, H, W) -> (N, Cout, H, W).

    The fast layer set fuses each batch norm with the ReLU after it (BatchNormReLU2d: the same
    function and parameters, one pass over memory each way instead of two); there relu1 and
    relu2 are None. The readable set keeps them apart, as the math reads.
    """

    def __init__(self, in_channels: int, out_channels: int, rng: np.random.Generator,
                 layers: ModuleType = readable_layers) -> None:
        super().__init__()
        fused = getattr(layers, "BatchNormReLU2d", None)
        BN = fused or layers.BatchNorm2d
        self.conv1 = layers.Conv2d(in_channels, out_channels, CONV_KERNEL, padding=1,
                                   bias=False, rng=rng)
        self.bn1 = BN(out_channels)
        self.relu1 = None if fused else layers.ReLU()
        self.conv2 = layers.Conv2d(out_channels, out_channels, CONV_KERNEL, padding=1,
                                   bias=False, rng=rng)
        self.bn2 = BN(out_channels)
        self.relu2 = None if fused else layers.ReLU()

    def forward(self, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        """x (N, Cin, H, W) -> (N, Cout, H, W). Fast layers only: forward(a, b) takes the two
        halves of the concatenation [a | b] along channels, and conv1 reads both without
        building it; backward then returns (da, db)."""
        if self._folded():  # fast layers, inference: each batch norm + ReLU inside its conv
            x = self.bn1.after_conv(self.conv1, x, *more)   # (N, Cout, H, W)
            return self.bn2.after_conv(self.conv2, x)       # (N, Cout, H, W)
        x = _then(self.relu1, self.bn1(self.conv1(x, *more)))  # (N, Cout, H, W)
        return _then(self.relu2, self.bn2(self.conv2(x)))      # (N, Cout, H, W)

    def _folded(self) -> bool:
        """Inference with the fast layers (eval mode, gradients off): each batch norm and its
        ReLU run folded into the convolution before them (BatchNormReLU2d.after_conv), the
        same result without their pass over the activation."""
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


class UNet(Module):
    """U-Net for per-pixel classification. See the module docstring for the picture.

    in_channels:   channels of the input image (1 for grey microscopy)
    num_classes:   Kc, logits per pixel (3: background, cell interior, cell boundary)
    depth:         number of 2x2 poolings; H and W must be divisible by 2**depth
    base_channels: channels of the top level; level i has base_channels * 2**i
    rng:           a numpy Generator (or an int seed) for the weight initialisation
    readable:      True: the plain-NumPy layers of minunet.layers; False: the fast ones of
                   minunet.kernels.layers; None: MINUNET_READABLE=1 means readable (default
                   fast). Not part of config(): the weights are the same either way.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 3, depth: int = 3,
                 base_channels: int = 16, rng: np.random.Generator | int | None = None,
                 readable: bool | None = None) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("depth", depth), ("base_channels", base_channels)):
            if int(value) != value or value < 1:
                raise ValueError(f"UNet: {name} must be a positive integer, got {value!r}")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.depth, self.base_channels = int(depth), int(base_channels)
        self.readable = use_readable(readable)
        L = readable_layers if self.readable else fast_layers  # the same classes, by name
        rng = np.random.default_rng(rng)  # a Generator passes through unchanged
        c = [base_channels * 2**i for i in range(depth + 1)]  # c[depth]: the bottom

        self.down = [DoubleConv(in_channels if i == 0 else c[i - 1], c[i], rng, L)
                     for i in range(depth)]
        self.pool = [L.MaxPool2d(POOL) for _ in range(depth)]
        self.bottom = DoubleConv(c[depth - 1], c[depth], rng, L)
        self.upconv = [L.ConvTranspose2d(c[i + 1], c[i], POOL, stride=POOL, rng=rng)
                       for i in range(depth)]
        self.concat = [L.Concat() for _ in range(depth)]
        self.up = [DoubleConv(2 * c[i], c[i], rng, L) for i in range(depth)]
        self.head = L.Conv2d(c[0], num_classes, 1, rng=rng)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able): `UNet(**model.config())` rebuilds the shape."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes,
                "depth": self.depth, "base_channels": self.base_channels}

    # ---------------------------------------------------------------- the pair
    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, Cin, H, W) -> logits (N, Kc, H, W); H and W divisible by 2**depth."""
        check_array(repr(self), x, ndim=4, channels=self.in_channels, finite=False)
        self._check_size(x.shape[2], x.shape[3])
        if self.down[0]._folded():  # fast layers, inference: a slice of the batch per thread
            N, _, H, W = x.shape
            return map_batch(self._layers_forward, x, flops=self.forward_flops(N, H, W))
        return self._layers_forward(x)

    def _layers_forward(self, x: np.ndarray) -> np.ndarray:
        """forward's layers, in order (x checked already)."""
        skips = []
        for i in range(self.depth):                # encoder, top to bottom
            x = self.down[i](x)                    # (N, c_i, H/2**i, W/2**i)
            skips.append(x)
            x = self.pool[i](x)                    # (N, c_i, H/2**(i+1), W/2**(i+1))
        x = self.bottom(x)                         # (N, c_depth, H/2**depth, W/2**depth)
        for i in reversed(range(self.depth)):      # decoder, bottom to top
            x = self.upconv[i](x)                  # (N, c_i, H/2**i, W/2**i)
            if self.readable:
                x = self.concat[i](skips[i], x)    # (N, 2*c_i, H/2**i, W/2**i)
                x = self.up[i](x)                  # (N, c_i, H/2**i, W/2**i)
            else:  # the same without the copy: up.i's first conv reads the two halves
                x = self.up[i](skips[i], x)        # (N, c_i, H/2**i, W/2**i)
        return self.head(x)                        # (N, Kc, H, W)

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """dlogits (N, Kc, H, W) -> dx (N, Cin, H, W); adds every parameter's gradient."""
        d = self.head.backward(dlogits)            # (N, c_0, H, W)
        dskip = [None] * self.depth
        for i in range(self.depth):                # decoder, top to bottom (forward reversed)
            d = self.up[i].backward(d)             # (N, 2*c_i, H/2**i, W/2**i)
            if self.readable:
                dskip[i], d = self.concat[i].backward(d)  # (N, c_i, ...) each: skip, up part
            else:  # fast: up.i returned the two halves already
                dskip[i], d = d
            d = self.upconv[i].backward(d)         # (N, c_{i+1}, H/2**(i+1), W/2**(i+1))
        d = self.bottom.backward(d)                # (N, c_{depth-1}, H/2**depth, W/2**depth)
        for i in reversed(range(self.depth)):      # encoder, bottom to top
            d = self.pool[i].backward(d)           # (N, c_i, H/2**i, W/2**i)
            # down.i's output fanned out to pool.i and, across the skip, to concat.i:
            # the gradients coming back along both paths add up (in place: d is ours).
            d += dskip[i]
            dskip[i] = None                        # free it as soon as it is used
            d = self.down[i].backward(d)           # (N, c_{i-1} or Cin, H/2**i, W/2**i)
        return d

    def forward_flops(self, batch: int, height: int, width: int) -> float:
        """Multiply-adds x 2 of every convolution in one forward pass of a (batch, Cin,
        height, width) input (the batch norms, pools and copies are not counted)."""
        c = [self.base_channels * 2**i for i in range(self.depth + 1)]
        cin, macs = self.in_channels, 0
        for i in range(self.depth + 1):            # encoder levels and the bottom
            pixels = (height // 2**i) * (width // 2**i)
            macs += pixels * 9 * (cin * c[i] + c[i] * c[i])
            cin = c[i]
        for i in range(self.depth):                # decoder levels: up-step, DoubleConv
            pixels = (height // 2**i) * (width // 2**i)
            macs += pixels * c[i + 1] * c[i] + pixels * 9 * (2 * c[i] * c[i] + c[i] * c[i])
        macs += height * width * c[0] * self.num_classes  # the 1x1 head
        return 2.0 * batch * macs

    # ---------------------------------------------------------------- shapes and sizes
    def _check_size(self, H: int, W: int) -> None:
        m = 2**self.depth
        for name, size in (("height", H), ("width", W)):
            if size % m:
                raise ValueError(
                    f"{self!r}: image {name} {size} is not divisible by 2**depth={m}: crop or "
                    f"pad it to {size // m * m or m} or {(size // m + 1) * m}, or use "
                    f"mu.predict(), which tiles images of any size")

    def summary(self, input_size: tuple[int, int] | int) -> str:
        """A table of the parts, their output shape for an (H, W) input, and parameter counts."""
        H, W = (input_size, input_size) if isinstance(input_size, int) else input_size
        self._check_size(H, W)
        c = [self.base_channels * 2**i for i in range(self.depth + 1)]

        def at(channels: int, level: int) -> tuple[int, int, int]:  # (C, H, W) at a level
            return (channels, H // 2**level, W // 2**level)

        rows = []  # (part, what it is, output shape)
        for i in range(self.depth):
            cin = self.in_channels if i == 0 else c[i - 1]
            rows.append((f"down.{i}", f"DoubleConv({cin} -> {c[i]})", at(c[i], i)))
            rows.append((f"pool.{i}", "MaxPool2d(2)", at(c[i], i + 1)))
        rows.append(("bottom", f"DoubleConv({c[-2]} -> {c[-1]})", at(c[-1], self.depth)))
        for i in reversed(range(self.depth)):
            rows.append((f"upconv.{i}", f"ConvTranspose2d({c[i + 1]} -> {c[i]}, 2, stride 2)",
                         at(c[i], i)))
            rows.append((f"concat.{i}", f"Concat(skip {i}, upconv.{i})", at(2 * c[i], i)))
            rows.append((f"up.{i}", f"DoubleConv({2 * c[i]} -> {c[i]})", at(c[i], i)))
        rows.append(("head", f"Conv2d({c[0]} -> {self.num_classes}, 1x1)",
                     at(self.num_classes, 0)))

        modules = dict(self.named_modules())
        lines = [f"{self!r}, input (N, {self.in_channels}, {H}, {W})",
                 f"{'part':<10} {'layer':<40} {'output (C, H, W)':<20} {'parameters':>12}"]
        for name, layer, shape in rows:
            lines.append(f"{name:<10} {layer:<40} {shape!s:<20} "
                         f"{modules[name].num_parameters():>12,}")
        lines.append(f"{'total':<10} {'':<40} {'':<20} {self.num_parameters():>12,}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return "UNet(" + ", ".join(f"{k}={v}" for k, v in self.config().items()) + ")"
