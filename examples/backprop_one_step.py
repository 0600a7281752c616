"""One training step of a tiny U-Net, layer by layer, with real numbers.

    python examples/backprop_one_step.py            # depth 1 (the default)
    python examples/backprop_one_step.py --depth 2

A U-Net of depth 1 or 2 with 2 base channels, one 8x8 image, float64, the readable layers.
It prints, in the order things happen:

1. forward: each layer's output shape and a few of its values;
2. the loss, and its gradient p - onehot at one pixel;
3. backward: each layer's gradient shape and norm, and that layer checked on its own against
   finite differences (mu.gradcheck on the input it saw in forward);
4. the moment the skip gradient joins the encoder path, `d += dskip`, with both addends;
5. the whole chain checked against finite differences (one input pixel, one weight);
6. the loss before and after one SGD step.

The walkthrough that reads this output with you is docs/learn/README.md.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np

import minunet as mu
from minunet.unet import UNet

LR = 0.1  # plain SGD, one step: large enough to see the loss move


def tiny_example(size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One size x size grey image of a disc, and its 3-class target (0 out, 1 in, 2 border)."""
    yy, xx = np.mgrid[:size, :size]
    dist = np.hypot(yy - 3.6, xx - 4.2)
    target = np.where(dist < 2.0, 1, np.where(dist < 3.0, 2, 0))
    noise = 0.1 * np.random.default_rng(0).standard_normal((size, size))
    image = (dist < 3.0) + noise
    return image[None, None].astype(np.float64), target[None]


def few(a: np.ndarray, n: int = 3) -> str:
    """The first n values of the first row of the first channel of the first image."""
    values = np.asarray(a)[(0,) * (np.ndim(a) - 1)][:n]
    return "[" + ", ".join(f"{v:+.4f}" for v in values) + "]"


def vector(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:+.4f}" for a in v) + "]"


def tied_windows(x: np.ndarray) -> int:
    """How many 2x2 windows of x have their maximum at more than one pixel."""
    N, C, H, W = x.shape
    windows = x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(N, C, H // 2, W // 2, 4)
    return int(np.sum((windows == windows.max(axis=-1, keepdims=True)).sum(axis=-1) > 1))


def main(depth: int = 1) -> None:
    x, target = tiny_example()
    model = UNet(1, 3, depth=depth, base_channels=2, rng=0, readable=True).astype(np.float64)
    loss_fn = mu.CrossEntropyLoss()

    # hooks keep each layer's inputs (for its own gradient check) and each dout
    inputs: dict[str, tuple] = {}
    douts: dict[str, np.ndarray] = {}
    leaves = [(n, m) for n, m in model.named_modules() if not any(m.named_children())]
    for name, layer in leaves:
        layer.register_forward_hook(
            lambda m, args, out, name=name: inputs.__setitem__(name, copy.deepcopy(args)))
        layer.register_backward_hook(
            lambda m, dout, dx, name=name: douts.__setitem__(name, np.copy(dout)))
    frozen = copy.deepcopy(model)  # the weights before the step, for the checks below

    print(f"{model!r}, input {x.shape}, float64, readable layers\n")
    print("1. FORWARD (in the order the layers run)")
    with mu.trace(model, keep=True) as t:
        logits = model(x)
        loss = loss_fn.forward(logits, target)
        dlogits = loss_fn.backward()
        dx = model.backward(dlogits)
    for r in t.forward_records():
        print(f"   {r.name:<13} {r.layer:<52} -> {r.shapes[0]!s:<13} {few(r.arrays[0])}")

    print(f"\n2. LOSS = {loss:.6f}   (mean over {target.size} pixels of -log p[true class]; "
          f"log 3 = {np.log(3):.4f})")
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    spread = p.max(axis=1) - p.min(axis=1)                    # (1, H, W)
    i, j = np.unravel_index(int(np.argmax(spread[0])), spread[0].shape)  # the surest pixel
    onehot = np.eye(3)[target[0, i, j]]
    print(f"   pixel ({i}, {j}), class {target[0, i, j]}: p = {vector(p[0, :, i, j])}, "
          f"onehot = {vector(onehot)}")
    print(f"   dlogits there = (p - onehot) / {target.size} = "
          f"{vector(dlogits[0, :, i, j] * target.size)} / {target.size}")

    print("\n3. BACKWARD (reverse order); each layer checked alone against finite differences")
    for r in t.backward_records():
        layer = dict(frozen.named_modules())[r.name]
        report = mu.gradcheck(layer, *inputs[r.name], max_elements=20, raise_on_fail=False,
                              check_float32=False)
        worst = max((c.rel_error for c in report.tensors), default=0.0)
        shapes = " + ".join(str(s) for s in r.shapes)
        print(f"   {r.name:<13} grad {shapes:<30} norm {r.norm:9.3e}   "
              f"check: {'ok' if report.ok else 'FAIL'} (max rel.err {worst:.0e})")
        if r.name.startswith("pool.") and not report.ok:
            ties = tied_windows(inputs[r.name][0])
            print(f"   {'':<13} ({ties} windows hold a tied maximum, most of them all 0 after "
                  f"the ReLU: the max has a corner there, and a step of +eps on one of the\n"
                  f"   {'':<13}  tied values makes it win, so the finite difference is not "
                  f"defined; backward follows the tie rule, the first maximum gets the "
                  f"gradient.\n   {'':<13}  docs/learn/maxpool.md)")
        if r.name.startswith("pool."):
            level = int(r.name.split(".")[1])
            skip = next(s for s in t.backward_records() if s.name == f"concat.{level}")
            d_pool, d_skip = r.arrays[0], skip.arrays[0]
            into_down = douts[f"down.{level}.relu2"]
            print(f"\n   4. THE SKIP JOINS at level {level}: d += dskip[{level}]")
            print(f"      d        (from pool.{level}, the way down) norm "
                  f"{np.linalg.norm(d_pool):.4e} {few(d_pool)}")
            print(f"      dskip    (from concat.{level}, across)    norm "
                  f"{np.linalg.norm(d_skip):.4e} {few(d_skip)}")
            print(f"      d+dskip  (what down.{level} receives)     norm "
                  f"{np.linalg.norm(into_down):.4e} {few(into_down)}   "
                  f"sum exact: {np.array_equal(into_down, d_pool + d_skip)}\n")

    print("5. THE WHOLE CHAIN against finite differences (loss(theta + eps) - loss(theta - eps))"
          " / 2 eps")
    eps = 1e-6

    def loss_of(m: UNet, image: np.ndarray) -> float:
        return mu.CrossEntropyLoss().forward(m.forward(image), target)

    for what, analytic in (("input pixel (0, 0, 3, 4)", dx[0, 0, 3, 4]),
                           ("down.0.conv1.weight[0, 0, 1, 1]",
                            model.down[0].conv1.weight.grad[0, 0, 1, 1])):
        plus, minus = copy.deepcopy(frozen), copy.deepcopy(frozen)
        if what.startswith("input"):
            xp, xm = x.copy(), x.copy()
            xp[0, 0, 3, 4] += eps
            xm[0, 0, 3, 4] -= eps
            numeric = (loss_of(plus, xp) - loss_of(minus, xm)) / (2 * eps)
        else:
            plus.down[0].conv1.weight.data[0, 0, 1, 1] += eps
            minus.down[0].conv1.weight.data[0, 0, 1, 1] -= eps
            numeric = (loss_of(plus, x) - loss_of(minus, x)) / (2 * eps)
        print(f"   d loss / d {what:<32} analytic {analytic:+.8e}  numeric {numeric:+.8e}")

    print(f"\n6. ONE SGD STEP, lr = {LR}: p -= lr * p.grad for every parameter")
    mu.SGD(model.parameters(), lr=LR).step()
    after = loss_of(model, x)
    print(f"   loss before {loss:.6f}   after {after:.6f}   ({after - loss:+.6f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1, choices=(1, 2))
    main(parser.parse_args().depth)
