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

Readable or fast: `UNet(..., readable=True)` is this file, built from the layers of
`minunet.layers` (plain NumPy, the math, made to be stepped through in a debugger);
`readable=False` gives a `minunet.kernels.unet.UNet`, the same structure with the layers of
`minunet.kernels.layers` (Numba and BLAS kernels) and a few speed-ups of its own (batch norm
and ReLU fused, no concatenation built, inference split over threads). `readable=None`, the
default, reads the environment variable MINUNET_READABLE (`MINUNET_READABLE=1 python
examples/train_small.py --quick`; unset or 0: fast). Both have the same parameters, state dict
and results, so a checkpoint of one loads into the other.

Other layers without surgery: `norm` and `act` are factories, `norm(channels)` and `act()`,
used in every DoubleConv instead of BatchNorm2d and ReLU (`UNet(norm=lambda c: GroupNorm(4, c),
act=GELU)`); their attribute names stay `bn1`, `relu1`, ... so that the state-dict names do.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from . import layers as readable_layers
from .checks import check_array
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


Norm = Callable[[int], Module]   # channels -> a normalisation layer, e.g. BatchNorm2d
Act = Callable[[], Module]       # () -> an activation layer, e.g. ReLU


def _readable_argument(cls: type, args: tuple, kwargs: dict[str, Any]) -> Any:
    """The `readable` argument of a UNet(...) call, however it was passed (None if not)."""
    try:
        bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs)
    except TypeError:
        return kwargs.get("readable")  # __init__ will report the bad call
    return bound.arguments.get("readable")


@functools.cache
def _fast_version(cls: type) -> type:
    """The fast UNet for UNet; for a subclass of UNet, the subclass on top of the fast UNet
    (its own methods first, the fast network's where it has none)."""
    from .kernels import unet as fast_unet

    if cls is UNet:
        return fast_unet.UNet
    return type(cls.__name__, (cls, fast_unet.UNet), {"__module__": cls.__module__,
                                                       "__qualname__": cls.__qualname__})


class DoubleConv(Module):
    """(3x3 conv -> norm -> act) twice: (N, Cin, H, W) -> (N, Cout, H, W).

    norm, act: factories, norm(Cout) and act(); by default the BatchNorm2d and ReLU of
    `layers` (the readable ones). The attribute names stay bn1, relu1, bn2, relu2 whatever
    they hold, so that state-dict names do not depend on the choice.
    """

    def __init__(self, in_channels: int, out_channels: int, rng: np.random.Generator,
                 layers: ModuleType = readable_layers, norm: Norm | None = None,
                 act: Act | None = None) -> None:
        super().__init__()
        norm = norm or layers.BatchNorm2d
        act = act or layers.ReLU
        self.conv1 = layers.Conv2d(in_channels, out_channels, CONV_KERNEL, padding=1,
                                   bias=False, rng=rng)
        self.bn1 = norm(out_channels)
        self.relu1 = act()
        self.conv2 = layers.Conv2d(out_channels, out_channels, CONV_KERNEL, padding=1,
                                   bias=False, rng=rng)
        self.bn2 = norm(out_channels)
        self.relu2 = act()

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self.relu1(self.bn1(self.conv1(x)))     # (N, Cout, H, W)
        return self.relu2(self.bn2(self.conv2(x)))  # (N, Cout, H, W)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # forward was conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> relu2: the chain rule, reversed
        d = self.conv2.backward(self.bn2.backward(self.relu2.backward(dout)))  # (N, Cout, H, W)
        return self.conv1.backward(self.bn1.backward(self.relu1.backward(d)))  # (N, Cin, H, W)


class UNet(Module):
    """U-Net for per-pixel classification. See the module docstring for the picture.

    in_channels:   channels of the input image (1 for grey microscopy)
    num_classes:   Kc, logits per pixel (3: background, cell interior, cell boundary)
    depth:         number of 2x2 poolings; H and W must be divisible by 2**depth
    base_channels: channels of the top level; level i has base_channels * 2**i
    rng:           a numpy Generator (or an int seed) for the weight initialisation
    readable:      True: this class, the plain-NumPy layers of minunet.layers; False: its
                   subclass minunet.kernels.unet.UNet (the kernels); None: MINUNET_READABLE=1 means
                   readable (default fast). Not part of config(): the weights are the same.
    norm, act:     factories norm(channels) and act() replacing every DoubleConv's BatchNorm2d
                   and ReLU (None: those). Not part of config(): a checkpoint rebuilds the
                   default network; pass them again when you load.
    """

    layers: ModuleType = readable_layers  # the layer set (fast: minunet.kernels.layers)
    readable = True

    def __new__(cls, *args: Any, **kwargs: Any) -> UNet:
        """UNet(...) with readable False (or MINUNET_READABLE unset) gives the fast network,
        minunet.kernels.unet.UNet; for a subclass of UNet, the subclass on top of it."""
        if cls.readable and not use_readable(_readable_argument(cls, args, kwargs)):
            cls = _fast_version(cls)
        return super().__new__(cls)

    def __getnewargs_ex__(self) -> tuple[tuple, dict[str, Any]]:
        return (), {"readable": self.readable}  # copy.deepcopy keeps the class it copies

    def __init__(self, in_channels: int = 1, num_classes: int = 3, depth: int = 3,
                 base_channels: int = 16, rng: np.random.Generator | int | None = None,
                 readable: bool | None = None, norm: Norm | None = None,
                 act: Act | None = None) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("depth", depth), ("base_channels", base_channels)):
            if int(value) != value or value < 1:
                raise ValueError(f"UNet: {name} must be a positive integer, got {value!r}")
        if readable is not None and bool(readable) != self.readable:
            raise ValueError(f"{type(self).__name__}(readable={readable}) contradicts the class")
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.depth, self.base_channels = int(depth), int(base_channels)
        L = self.layers
        rng = np.random.default_rng(rng)  # a Generator passes through unchanged
        c = [base_channels * 2**i for i in range(depth + 1)]  # c[depth]: the bottom

        def block(cin: int, cout: int) -> Module:
            return self.double_conv(cin, cout, rng, norm, act)

        self.down = [block(in_channels if i == 0 else c[i - 1], c[i]) for i in range(depth)]
        self.pool = [L.MaxPool2d(POOL) for _ in range(depth)]
        self.bottom = block(c[depth - 1], c[depth])
        self.upconv = [L.ConvTranspose2d(c[i + 1], c[i], POOL, stride=POOL, rng=rng)
                       for i in range(depth)]
        self.concat = [L.Concat() for _ in range(depth)]
        self.up = [block(2 * c[i], c[i]) for i in range(depth)]
        self.head = L.Conv2d(c[0], num_classes, 1, rng=rng)

    def double_conv(self, in_channels: int, out_channels: int, rng: np.random.Generator,
                    norm: Norm | None, act: Act | None) -> Module:
        """One level's block; the fast UNet returns its own."""
        return DoubleConv(in_channels, out_channels, rng, self.layers, norm, act)

    def config(self) -> dict[str, Any]:
        """The constructor arguments (JSON-able): `UNet(**model.config())` rebuilds the shape."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes,
                "depth": self.depth, "base_channels": self.base_channels}

    # ---------------------------------------------------------------- the pair
    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, Cin, H, W) -> logits (N, Kc, H, W); H and W divisible by 2**depth."""
        check_array(repr(self), x, ndim=4, channels=self.in_channels, finite=False)
        self._check_size(x.shape[2], x.shape[3])
        skips = []
        for i in range(self.depth):                # encoder, top to bottom
            x = self.down[i](x)                    # (N, c_i, H/2**i, W/2**i)
            skips.append(x)
            x = self.pool[i](x)                    # (N, c_i, H/2**(i+1), W/2**(i+1))
        x = self.bottom(x)                         # (N, c_depth, H/2**depth, W/2**depth)
        for i in reversed(range(self.depth)):      # decoder, bottom to top
            x = self.upconv[i](x)                  # (N, c_i, H/2**i, W/2**i)
            x = self.concat[i](skips[i], x)        # (N, 2*c_i, H/2**i, W/2**i)
            x = self.up[i](x)                      # (N, c_i, H/2**i, W/2**i)
        return self.head(x)                        # (N, Kc, H, W)

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """dlogits (N, Kc, H, W) -> dx (N, Cin, H, W); adds every parameter's gradient."""
        d = self.head.backward(dlogits)            # (N, c_0, H, W)
        dskip = [None] * self.depth
        for i in range(self.depth):                # decoder, top to bottom (forward reversed)
            d = self.up[i].backward(d)             # (N, 2*c_i, H/2**i, W/2**i)
            dskip[i], d = self.concat[i].backward(d)  # (N, c_i, ...) each: skip, up part
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
