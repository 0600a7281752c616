"""Forward + backward time of BatchNorm2d, ReLU, MaxPool2d, Concat and the losses at the U-Net's
shapes (batch 8; 16 ch 128², 32 ch 64², 64 ch 32²), float32, against

  - base: the same layer written with plain NumPy array expressions (what the kernels replace);
    for "BN+ReLU fused" (BatchNormReLU2d) the base is our BatchNorm2d then our ReLU,
  - torch: PyTorch CPU with 2 threads, autograd forward + backward (when torch is installed).

    python bench/bench_bn_relu_pool.py [--repeats 15] [--torch-threads 2]

Sides are interleaved in a rotating order (A B C, B C A, C A B, ...) and medians reported,
because the machine is shared.
Our kernels are single-threaded (memory-bound); torch gets 2 threads. Each minunet time includes
the NaN/inf input check every layer does (free in the kernels, one pass in the losses).
"""

import argparse
import time

import numpy as np

try:  # before minunet: minunet sets OMP_WAIT_POLICY=PASSIVE, torch keeps its own default
    import torch
except ImportError:
    torch = None

import minunet.kernels.layers as mu  # the fast, kernel-backed layers (same constructors)

SHAPES = [(8, 16, 128, 128), (8, 32, 64, 64), (8, 64, 32, 32)]


# ---------------------------------------------------------------- plain NumPy versions
def numpy_bn(x, gamma, beta, g, eps=1e-5):
    c = (slice(None), None, None)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    istd = 1 / np.sqrt(var + eps)
    xhat = (x - mean[c]) * istd[c]
    y = xhat * gamma[c] + beta[c]
    M = x.size // x.shape[1]
    dgamma, dbeta = (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3))
    dx = (gamma * istd)[c] * (g - (dbeta / M)[c] - xhat * (dgamma / M)[c])
    return y, dx, dgamma, dbeta


def numpy_relu(x, g):
    y = np.maximum(x, 0)
    return y, g * (y > 0)


def numpy_pool(x, g):
    N, C, H, W = x.shape
    win = x.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(
        N, C, H // 2, W // 2, 4)
    arg = win.argmax(axis=4)
    y = np.take_along_axis(win, arg[..., None], 4)[..., 0]
    dwin = np.zeros_like(win)
    np.put_along_axis(dwin, arg[..., None], g[..., None], 4)
    dx = dwin.reshape(N, C, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(x.shape)
    return y, dx


# ---------------------------------------------------------------- cases
def cases(shape, rng, torch):
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    gp = rng.standard_normal((N, C, H // 2, W // 2)).astype(np.float32)
    gc = rng.standard_normal((N, 2 * C, H, W)).astype(np.float32)
    ones, zeros = np.ones(C, np.float32), np.zeros(C, np.float32)
    bn, relu, pool, cat = mu.BatchNorm2d(C), mu.ReLU(), mu.MaxPool2d(2), mu.Concat()
    bn_relu, bn2, relu2 = mu.BatchNormReLU2d(C), mu.BatchNorm2d(C), mu.ReLU()
    ours = {
        "BatchNorm2d": lambda: (bn.forward(x), bn.backward(g)),
        "ReLU": lambda: (relu.forward(x), relu.backward(g)),
        "MaxPool2d": lambda: (pool.forward(x), pool.backward(gp)),
        "Concat": lambda: (cat.forward(x, x), cat.backward(gc)),
        "BN+ReLU fused": lambda: (bn_relu.forward(x), bn_relu.backward(g)),
    }
    plain = {
        "BatchNorm2d": lambda: numpy_bn(x, ones, zeros, g),
        "ReLU": lambda: numpy_relu(x, g),
        "MaxPool2d": lambda: numpy_pool(x, gp),
        "Concat": lambda: (np.concatenate([x, x], 1), gc[:, :C].copy(), gc[:, C:].copy()),
        "BN+ReLU fused": lambda: (relu2.forward(bn2.forward(x)), bn2.backward(relu2.backward(g))),
    }
    theirs = {}
    if torch is not None:
        F = torch.nn.functional
        tbn = torch.nn.BatchNorm2d(C)
        tx = torch.tensor(x, requires_grad=True)
        tg, tgp, tgc = torch.tensor(g), torch.tensor(gp), torch.tensor(gc)
        theirs = {
            "BatchNorm2d": lambda: tbn(tx).backward(tg),
            "ReLU": lambda: torch.relu(tx).backward(tg),
            "MaxPool2d": lambda: F.max_pool2d(tx, 2).backward(tgp),
            "Concat": lambda: torch.cat([tx, tx], 1).backward(tgc),
            "BN+ReLU fused": lambda: torch.relu(tbn(tx)).backward(tg),
        }
    return ours, plain, theirs


def loss_cases(rng, torch):
    N, Kc, H, W = 8, 3, 128, 128
    logits = rng.standard_normal((N, Kc, H, W)).astype(np.float32)
    target = rng.integers(0, Kc, (N, H, W))
    weight = rng.uniform(0.5, 2, (N, H, W)).astype(np.float32)
    ce, dice = mu.CrossEntropyLoss(), mu.DiceLoss()
    ours = {"CE (weighted)": lambda: (ce.forward(logits, target, weight), ce.backward()),
            "Dice": lambda: (dice.forward(logits, target), dice.backward())}
    theirs = {}
    if torch is not None:
        F = torch.nn.functional
        tl = torch.tensor(logits, requires_grad=True)
        tt, tw = torch.tensor(target), torch.tensor(weight)
        theirs = {"CE (weighted)": lambda: ((F.cross_entropy(tl, tt, reduction="none") * tw)
                                            .sum() / tw.sum()).backward()}
    return ours, {}, theirs


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args()
    if torch is not None:
        torch.set_num_threads(args.torch_threads)
    rng = np.random.default_rng(0)
    groups = [(f"{s[1]}ch {s[2]}x{s[3]}", cases(s, rng, torch)) for s in SHAPES]
    groups.append(("8x3x128x128", loss_cases(rng, torch)))
    print(f"float32, batch 8, median of {args.repeats} interleaved runs (ms); torch "
          f"{'absent' if torch is None else f'{torch.__version__}, {args.torch_threads} threads'}")
    print(f"{'layer':<14} {'shape':<12} {'minunet':>8} {'base':>8} {'torch':>8} "
          f"{'mu/base':>9} {'mu/torch':>9}")
    for label, (ours, plain, theirs) in groups:
        for name, fn in ours.items():
            sides = [fn, plain.get(name), theirs.get(name)]
            for side in sides:  # warm-up: JIT, allocator
                if side is not None:
                    side()
            times = [[], [], []]
            for r in range(args.repeats):
                for step in range(3):  # rotate the order: no side always runs on a cold cache
                    k = (r + step) % 3
                    if sides[k] is not None:
                        times[k].append(timed(sides[k]))
            med = [np.median(t) * 1e3 if t else np.nan for t in times]
            ratio = [np.median(np.array(times[0]) / np.array(t)) if t else np.nan
                     for t in times[1:]]
            print(f"{name:<14} {label:<12} {med[0]:8.2f} {med[1]:8.2f} {med[2]:8.2f} "
                  f"{ratio[0]:9.2f} {ratio[1]:9.2f}")


if __name__ == "__main__":
    main()
