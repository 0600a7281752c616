"""Forward + backward time of each layer at the U-Net's shapes, against PyTorch in the same run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_layers.py [--repeats 7]

(The `env -u` drops two settings of the project's build machines that halve OpenBLAS's speed;
a user's machine does not have them.) For every layer the script times minunet's
forward+backward and PyTorch's (float32, `torch.set_num_threads(2)`) alternately, A B A B,
and prints medians and the median of the per-repeat ratios minunet / PyTorch: the ratio is
what to compare across runs, because other processes on a shared machine slow both sides.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_info

import minunet.kernels.layers as mu  # the fast, kernel-backed layers (same constructors)

BATCH = 8  # the U-Net's training batch
THREADS = 2  # the machine's cores; PyTorch gets the same

# (Cin, Cout, H): the U-Net's 3x3 convolutions (C2: depth 3, base 16, 128^2), encoder and bottom
CONV3_SHAPES = [(1, 16, 128), (16, 16, 128), (16, 32, 64), (32, 32, 64), (32, 64, 32),
                (64, 64, 32), (64, 128, 16)]
# (Cin, Cout, H): the 2x2 stride-2 up-steps, H being the input size
UP_SHAPES = [(128, 64, 16), (64, 32, 32), (32, 16, 64)]
HEAD = (16, 3, 128)  # the 1x1 head: 16 channels to 3 classes at full resolution


def layer_cases(rng: np.random.Generator) -> list[tuple[str, object, tuple, float]]:
    """(name, minunet layer, input shapes, forward GFLOP) for each benchmarked layer."""
    cases = []
    for cin, cout, h in CONV3_SHAPES:
        flops = 2 * BATCH * cout * cin * 9 * h * h
        cases.append((f"conv3x3 {cin:>3}->{cout:<3} {h}^2",
                      mu.Conv2d(cin, cout, 3, padding=1, rng=rng), ((BATCH, cin, h, h),), flops))
    for cin, cout, h in UP_SHAPES:
        flops = 2 * BATCH * cin * cout * 4 * h * h
        cases.append((f"upconv2x2 {cin:>3}->{cout:<3} {h}^2",
                      mu.ConvTranspose2d(cin, cout, 2, 2, rng=rng), ((BATCH, cin, h, h),), flops))
    cin, cout, h = HEAD
    cases.append((f"conv1x1 {cin:>3}->{cout:<3} {h}^2", mu.Conv2d(cin, cout, 1, rng=rng),
                   ((BATCH, cin, h, h),), 2 * BATCH * cin * cout * h * h))
    # the other layers, where they exist (written alongside the convolutions)
    for name in ("BatchNorm2d", "ReLU", "MaxPool2d", "Concat"):
        if not hasattr(mu, name):
            print(f"(mu.{name} not available: skipped)")
            continue
        for c, h in ((16, 128), (64, 32)):
            shape = (BATCH, c, h, h)
            layer = {"BatchNorm2d": lambda c=c: mu.BatchNorm2d(c), "ReLU": mu.ReLU,
                     "MaxPool2d": lambda: mu.MaxPool2d(2), "Concat": mu.Concat}[name]()
            inputs = (shape, shape) if name == "Concat" else (shape,)
            cases.append((f"{name} {c} {h}^2", layer, inputs, 0.0))
    return cases


def torch_twin(layer: object, torch: object) -> object:
    """The same layer in PyTorch, with the same weights."""
    nn = torch.nn
    if isinstance(layer, mu.Conv2d):
        twin = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                         layer.stride, layer.padding)
    elif isinstance(layer, mu.ConvTranspose2d):
        twin = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  layer.stride, layer.padding)
    elif type(layer).__name__ == "BatchNorm2d":
        return nn.BatchNorm2d(layer.weight.shape[0])
    elif type(layer).__name__ == "ReLU":
        return nn.ReLU()
    elif type(layer).__name__ == "MaxPool2d":
        return nn.MaxPool2d(2)
    elif type(layer).__name__ == "Concat":
        return lambda a, b: torch.cat([a, b], dim=1)
    else:
        raise TypeError(layer)
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.weight.data))
        twin.bias.copy_(torch.from_numpy(layer.bias.data))
    return twin


def minunet_step(layer: object, xs: list[np.ndarray], dout: np.ndarray) -> Callable[[], None]:
    def step() -> None:
        layer.forward(*xs)
        layer.backward(dout)
    return step


def torch_step(twin: object, xs: list, dout: object) -> Callable[[], None]:
    def step() -> None:
        for x in xs:
            x.grad = None
        twin(*xs).backward(dout)
    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args()

    try:
        import torch
        torch.set_num_threads(THREADS)
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    cases = [c for c in layer_cases(rng) if args.only in c[0]]
    for info in threadpool_info():
        print(f"{info['user_api']}: {info['internal_api']} {info.get('version')} "
              f"kernel={info.get('architecture')} threads={info['num_threads']} "
              f"({info['filepath'].rsplit('/', 1)[-1]})")
    import numba
    print(f"numba {numba.__version__}: threads={numba.get_num_threads()}, "
          f"threading layer set to '{numba.config.THREADING_LAYER}', "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (2 cores; above ~1 both "
          "sides are slowed by other processes)")
    print(f"batch {BATCH}, float32, forward+backward, median of {args.repeats} interleaved "
          f"repeats" + ("" if torch else "; torch not installed: no comparison"))
    print(f"{'layer':<28} {'minunet ms':>10} {'GFLOP/s':>8} {'torch ms':>9} {'GFLOP/s':>8} "
          f"{'ratio':>6}")
    total_mu = total_torch = 0.0
    for name, layer, shapes, flops in cases:
        xs = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
        out = layer.forward(*xs)
        layer._saved = None
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        ours = minunet_step(layer, xs, dout)
        ours()  # compile / warm up
        if torch is not None:
            txs = [torch.from_numpy(x.copy()).requires_grad_(True) for x in xs]
            theirs = torch_step(torch_twin(layer, torch), txs, torch.from_numpy(dout))
            theirs()
        t_mu, t_torch = [], []
        for _ in range(args.repeats):
            t_mu.append(timed(ours))
            if torch is not None:
                t_torch.append(timed(theirs))
        m = float(np.median(t_mu))
        total_mu += m
        gflops = f"{3 * flops / m / 1e9:8.0f}" if flops else f"{'':>8}"
        line = f"{name:<28} {m * 1e3:10.2f} {gflops}"
        if torch is not None:
            mt = float(np.median(t_torch))
            total_torch += mt
            ratio = float(np.median(np.array(t_mu) / np.array(t_torch)))
            tg = f"{3 * flops / mt / 1e9:8.0f}" if flops else f"{'':>8}"
            line += f" {mt * 1e3:9.2f} {tg} {ratio:6.2f}"
        print(line, flush=True)
    summary = f"{'total':<28} {total_mu * 1e3:10.2f} {'':>8}"
    if torch is not None:
        summary += f" {total_torch * 1e3:9.2f} {'':>8} {total_mu / total_torch:6.2f}"
    print(summary)


if __name__ == "__main__":
    main()
