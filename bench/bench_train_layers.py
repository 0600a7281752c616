"""Where minunet's training step spends its time: every layer's forward and backward, timed
inside whole steps of the U-Net, grouped by kind.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_train_layers.py
        [--config C2] [--steps 10] [--top 12]

Each layer's forward and backward is wrapped by a timer (the layers' own methods, called as
the network calls them), and so are the loss, zero_grad and the optimizer step; after two
warm-up steps, `--steps` steps run, and each entry's fastest time over them is shown (the
fastest, because other work on a shared machine only ever adds). The groups: the 3x3
convolutions (`conv`, forward F and backward B, the input and weight gradients together),
batch norm + ReLU (`bn`), the up-steps, the pools, the head; `step` is the whole step's
fastest time, `outside the layers` what the step spends elsewhere (Python between the layers,
the skip connections, the loss and Adam). Configurations as in bench_unet.py.
"""

from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Callable

import numpy as np

import minunet as mu
from minunet.module import Module

CONFIGS = {"C1": (3, 8, 8, 64), "C2": (3, 16, 8, 128), "C3": (4, 32, 4, 256)}


def kind(name: str) -> str:
    """The group of a layer, from its dotted name (`up.0.conv1` -> `conv`, `pool.2` ->
    `pool`, `upconv.1` -> `up-step`)."""
    first, last = name.split(".")[0], name.split(".")[-1].rstrip("0123456789")
    if first in ("upconv", "pool", "head") or not last:
        return {"upconv": "up-step"}.get(first, first)
    return last


def timed(times: dict[str, list[float]], key: str, fn: Callable) -> Callable:
    def wrapper(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times[key].append(time.perf_counter() - start)
        return result
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="C2", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=12, help="single layers to list")
    args = parser.parse_args()
    depth, base, batch, size = CONFIGS[args.config]
    rng = np.random.default_rng(0)
    model = mu.UNet(1, 3, depth=depth, base_channels=base, rng=rng)
    x = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
    target = rng.integers(0, 3, size=(batch, size, size))
    loss_fn = mu.CrossEntropyLoss()
    optimizer = mu.Adam(model.parameters(), lr=1e-3)
    times: dict[str, list[float]] = collections.defaultdict(list)
    leaves: list[str] = []
    for name, module in model.named_modules():
        if name and not list(module.named_children()):
            leaves.append(name)
            layer: Module = module
            layer.forward = timed(times, f"{name} F", layer.forward)
            layer.backward = timed(times, f"{name} B", layer.backward)
    loss_forward = timed(times, "loss", loss_fn.forward)
    loss_backward = timed(times, "loss", loss_fn.backward)
    zero_grad = timed(times, "zero_grad", optimizer.zero_grad)
    adam = timed(times, "adam", optimizer.step)

    def step() -> None:
        loss_forward(model.forward(x), target)
        zero_grad()
        model.backward(loss_backward())
        adam()

    step()
    step()
    times.clear()
    steps = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        steps.append(time.perf_counter() - start)
    fastest = {key: min(values) * 1e3 for key, values in times.items()}
    if "loss" in times:  # forward and backward: the fastest of each, added
        fastest["loss"] = sum(sorted(times["loss"][i::2])[0] for i in range(2)) * 1e3
    total = min(steps) * 1e3
    groups: dict[str, float] = collections.defaultdict(float)
    for name in leaves:
        for direction in "FB":
            groups[f"{kind(name)} {direction}"] += fastest.get(f"{name} {direction}", 0.0)
    in_layers = sum(groups.values())
    print(f"{args.config}: fastest step {total:.1f} ms over {args.steps} steps "
          f"(median {np.median(steps) * 1e3:.1f} ms); each entry its fastest time")
    for key in sorted(groups, key=lambda k: -groups[k]):
        if groups[key] == 0:  # layers the fast network never calls (its concatenations)
            continue
        print(f"  {key:<12} {groups[key]:8.2f} ms  {groups[key] / total * 100:5.1f} %")
    for key in ("loss", "adam", "zero_grad"):
        print(f"  {key:<12} {fastest.get(key, 0.0):8.2f} ms")
    print(f"  outside the layers {total - in_layers:6.2f} ms (the fastest step less the layers' "
          f"fastest times: loss, Adam, Python, and the steps' spread)")
    print(f"the {args.top} slowest single layer passes:")
    single = {k: v for k, v in fastest.items() if k.endswith((" F", " B"))}
    for key in sorted(single, key=lambda k: -single[k])[:args.top]:
        print(f"  {key:<18} {single[key]:8.2f} ms")


if __name__ == "__main__":
    main()
