"""cs231n's two sanity checks before any real training, on a small readable U-Net.

    python -m exercises.sanity
    python -m exercises.sanity --act exercises/relu.py:ReLU \
        --norm exercises/batchnorm.py:BatchNorm2d

1. The initial loss. With 3 classes and near-zero logits, softmax gives each class 1/3, so
   the cross-entropy is -log(1/3) = log 3 = 1.0986. Checked with the head's weights scaled by
   0.01 (logits near zero): a different number means the loss is wrong. As initialised, the
   logits spread (std ~1) and the loss is somewhat higher (1.53 here); far more means a layer
   blows its activations up.
2. Overfitting one small batch. A network and backward that work drive the loss of ONE batch
   towards 0 within a few dozen steps; if they cannot, a gradient is wrong or missing (however
   the gradient checks looked), or the learning rate is off.

`--act` and `--norm` put your own ReLU and BatchNorm2d (FILE.py:CLASS) into every DoubleConv
(UNet's act= and norm= factories), so the checks run on your layers.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np

import minunet as mu
from exercises.check import load_classes
from minunet.unet import UNet

STEPS = 60        # Adam steps on one batch: enough for a working network to go below 0.05
LR = 1e-2         # Adam's step: large, as one batch and no generalisation are wanted here
OVERFIT_LOSS = 0.05


def tiny_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One 2-image batch of 32x32 blobs, 3 classes (background, inside, border)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    images, targets = [], []
    for _ in range(2):
        cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
        dist = np.hypot(yy - cy, xx - cx)
        target = np.where(dist < r - 1.5, 1, np.where(dist < r + 0.5, 2, 0))
        images.append((dist < r) + 0.3 * rng.standard_normal((32, 32)))
        targets.append(target)
    return np.array(images, np.float32)[:, None], np.array(targets)


def build(act: Any = None, norm: Any = None, seed: int = 0) -> UNet:
    return UNet(1, 3, depth=2, base_channels=8, rng=seed, readable=True, act=act, norm=norm)


def initial_loss(act: Any = None, norm: Any = None) -> tuple[float, float]:
    """(loss with the head scaled by 0.01, loss as initialised) on the tiny batch."""
    x, t = tiny_batch()
    model = build(act, norm)
    as_built = mu.CrossEntropyLoss().forward(model(x), t)
    model.head.weight.data *= 0.01
    return mu.CrossEntropyLoss().forward(model(x), t), as_built


def overfit(act: Any = None, norm: Any = None, steps: int = STEPS) -> list[float]:
    """The loss of each Adam step on one batch."""
    x, t = tiny_batch()
    model = build(act, norm)
    loss_fn = mu.CrossEntropyLoss()
    opt = mu.Adam(model.parameters(), lr=LR)
    losses = []
    for _ in range(steps):
        losses.append(loss_fn.forward(model(x), t))
        opt.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exercises.sanity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--act", help="your activation, FILE.py:CLASS (default minunet's ReLU)")
    parser.add_argument("--norm", help="your normalisation, FILE.py:CLASS (default BatchNorm2d)")
    args = parser.parse_args(argv)
    act = load_classes(args.act)[0] if args.act else None
    norm = load_classes(args.norm)[0] if args.norm else None

    small, as_built = initial_loss(act, norm)
    ok_initial = abs(small - math.log(3)) < 0.01
    print(f"1. initial loss, head x 0.01: {small:.4f}   (log 3 = {math.log(3):.4f}: "
          f"{'ok' if ok_initial else 'WRONG'}); as initialised: {as_built:.4f}")
    losses = overfit(act, norm)
    ok_overfit = losses[-1] < OVERFIT_LOSS
    marks = ", ".join(f"{i}: {losses[i]:.3f}" for i in (0, 10, 20, 40, len(losses) - 1))
    print(f"2. overfitting one batch, loss after steps {marks}   "
          f"({'ok' if ok_overfit else f'WRONG: still >= {OVERFIT_LOSS}'})")
    return 0 if ok_initial and ok_overfit else 1


if __name__ == "__main__":
    sys.exit(main())
