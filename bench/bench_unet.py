"""The whole U-Net: one training step and one inference pass, minunet against PyTorch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_unet.py [--rounds 3]
        [--configs C1,C2,C3] [--modes train,infer] [--steps 3] [--best] [--load]

(`env -u` drops two settings of the project's build machines that halve OpenBLAS's speed; a
user's machine does not have them.)

Configurations (the issue's): C1 depth 3 / base 8 / batch 8 / 64^2, C2 depth 3 / base 16 /
batch 8 / 128^2, C3 depth 4 / base 32 / batch 4 / 256^2; 1 input channel, 3 classes, float32.

    train step  forward, cross-entropy loss, zero_grad, backward, Adam step
    inference   forward in eval mode with gradients disabled (PyTorch: torch.no_grad())

How it measures:
- Every (config, side, mode) runs in its own fresh subprocess, so its peak RSS
  (`getrusage(RUSAGE_SELF).ru_maxrss`) belongs to that work alone: import, model, one warm-up
  call, then `--steps` timed calls (median). The RSS right after the warm-up's start (library
  imported, model built, input made) is printed too, so "peak - base" is what the step needs.
- The two sides run alternately, A B A B, `--rounds` times; the table shows medians over rounds
  and the median of the per-round time ratios minunet / PyTorch (other processes on a shared
  machine slow both sides; the ratio of neighbours is the fair number).
- PyTorch: `torch.set_num_threads(2)`, float32, NCHW, nn.Conv2d(bias=False) / BatchNorm2d / ReLU /
  MaxPool2d / ConvTranspose2d / 1x1 Conv2d, torch.cat, F.cross_entropy, torch.optim.Adam.
- `--best` adds a third side, "torch-best": PyTorch with channels_last tensors and glibc malloc
  told to keep freed memory (TORCH_BEST_ENV below), its fastest usual CPU settings.
- `--load` measures every side twice per round: idle, and while a fixed competing load runs (a
  separate process whose two threads loop on single-threaded float32 matrix products, like
  another training job on the machine). Each side's slowdown, loaded / idle (medians), is shown.
- GFLOP/s counts the convolutions' multiply-adds (2 FLOP each): a training step as 3x the
  forward (forward, input gradient, weight gradient).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {  # name: (depth, base_channels, batch, size)
    "C1": (3, 8, 8, 64),
    "C2": (3, 16, 8, 128),
    "C3": (4, 32, 4, 256),
    "C3@512": (4, 32, 4, 512),  # C3 at 4x the pixels: does the time per pixel stay put?
}
IN_CHANNELS, NUM_CLASSES = 1, 3
THREADS = 2  # the machine's cores; PyTorch gets the same
# glibc malloc: serve large blocks from the heap (not fresh mmap pages) and keep freed memory
TORCH_BEST_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**32),
                  "MALLOC_TOP_PAD_": str(256 * 2**20)}
LOAD_SCRIPT = """
import threading
import numpy as np
a = np.random.default_rng(0).standard_normal((384, 384)).astype(np.float32)

def spin():
    c = np.empty_like(a)
    while True:
        np.matmul(a, a, out=c)

for _ in range(2):
    threading.Thread(target=spin, daemon=True).start()
threading.Event().wait()
"""


def forward_gflop(depth: int, base: int, batch: int, size: int) -> float:
    """Multiply-adds x 2 of every convolution in one forward pass."""
    c = [base * 2**i for i in range(depth + 1)]
    flops = 0
    cin = IN_CHANNELS
    for i in range(depth + 1):                      # encoder levels and the bottom
        hw = (size // 2**i) ** 2
        flops += 2 * batch * hw * 9 * (cin * c[i] + c[i] * c[i])
        cin = c[i]
    for i in range(depth):                          # decoder levels
        hw = (size // 2**i) ** 2
        flops += 2 * batch * (hw // 4) * 4 * c[i + 1] * c[i]            # 2x2 stride-2 up-step
        flops += 2 * batch * hw * 9 * (2 * c[i] * c[i] + c[i] * c[i])   # DoubleConv(2c -> c)
    flops += 2 * batch * size * size * c[0] * NUM_CLASSES               # 1x1 head
    return flops / 1e9


def rss_mib() -> float:
    """Resident set size now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# ------------------------------------------------------------------------------ workers
def minunet_worker(depth: int, base: int, batch: int, size: int, mode: str,
                   steps: int) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_info

    import minunet as mu

    rng = np.random.default_rng(0)
    model = mu.UNet(IN_CHANNELS, NUM_CLASSES, depth=depth, base_channels=base, rng=rng)
    x = rng.standard_normal((batch, IN_CHANNELS, size, size)).astype(np.float32)
    target = rng.integers(0, NUM_CLASSES, size=(batch, size, size))
    loss_fn = mu.CrossEntropyLoss()
    optimizer = mu.Adam(model.parameters(), lr=1e-3)
    base_rss = rss_mib()

    def train_step() -> None:
        logits = model.forward(x)
        loss_fn.forward(logits, target)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()

    def inference() -> None:
        model(x)  # with gradients disabled, as mu.predict runs it

    if mode == "infer":
        model.eval().set_grad_enabled(False)  # like torch.no_grad(): keep no activations
    fn = train_step if mode == "train" else inference
    times = _time(fn, steps)
    blas = [f"{i.get('internal_api')} {i.get('architecture')} {i.get('num_threads')} threads"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"times": times, "base_rss": base_rss, "peak_rss": peak_rss_mib(), "blas": blas}


def torch_worker(depth: int, base: int, batch: int, size: int, mode: str, steps: int,
                 channels_last: bool = False) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class TorchUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = [base * 2**i for i in range(depth + 1)]
            self.down = nn.ModuleList(block(IN_CHANNELS if i == 0 else c[i - 1], c[i])
                                      for i in range(depth))
            self.pool = nn.MaxPool2d(2)
            self.bottom = block(c[depth - 1], c[depth])
            self.upconv = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], 2, stride=2)
                                        for i in range(depth))
            self.up = nn.ModuleList(block(2 * c[i], c[i]) for i in range(depth))
            self.head = nn.Conv2d(c[0], NUM_CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for i in reversed(range(depth)):
                x = self.up[i](torch.cat([skips[i], self.upconv[i](x)], dim=1))
            return self.head(x)

    model = TorchUNet()
    x = torch.randn(batch, IN_CHANNELS, size, size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, NUM_CLASSES, (batch, size, size))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    base_rss = rss_mib()

    def train_step() -> None:
        loss = nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def inference() -> None:
        with torch.no_grad():
            model(x)

    if mode == "infer":
        model.eval()
    times = _time(train_step if mode == "train" else inference, steps)
    return {"times": times, "base_rss": base_rss, "peak_rss": peak_rss_mib(),
            "params": sum(p.numel() for p in model.parameters())}


def _time(fn, steps: int) -> list[float]:
    fn()  # warm-up: JIT caches, allocator, Adam's state
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


# ------------------------------------------------------------------------------ driver
def run_worker(side: str, config: str, mode: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, config, mode, str(steps)]
    env = dict(os.environ, **TORCH_BEST_ENV) if side == "torch-best" else None
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{side} {config} {mode} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class CompetingLoad:
    """A separate process whose two threads keep two cores busy with NumPy products."""

    def __enter__(self) -> CompetingLoad:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], env=env)
        time.sleep(0.5)  # let it start spinning
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per measurement")
    parser.add_argument("--steps", type=int, default=3, help="timed calls per subprocess")
    parser.add_argument("--configs", default="C1,C2,C3")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--best", action="store_true",
                        help="also PyTorch with channels_last and a tuned malloc")
    parser.add_argument("--load", action="store_true",
                        help="also measure under a competing 2-thread load, print slowdowns")
    parser.add_argument("--no-torch", action="store_true", help="time minunet alone")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        side, config, mode, steps = args.worker
        if side == "minunet":
            result = minunet_worker(*CONFIGS[config], mode, int(steps))
        else:
            result = torch_worker(*CONFIGS[config], mode, int(steps),
                                  channels_last=side == "torch-best")
        print(json.dumps(result))
        return

    try:
        if args.no_torch:
            raise ImportError
        import torch  # noqa: F401
        sides = ["minunet", "torch"] + (["torch-best"] if args.best else [])
    except ImportError:
        sides = ["minunet"]
        print("(minunet only)")
    conditions = ["idle", "loaded"] if args.load else ["idle"]
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')!r} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')!r}; {args.rounds} rounds "
          f"A B, {args.steps} timed calls per subprocess; times are medians")
    rows = []
    blas_seen = None
    for config in args.configs.split(","):
        gflop = forward_gflop(*CONFIGS[config])
        for mode in args.modes.split(","):
            work = 3 * gflop if mode == "train" else gflop
            results = {(side, cond): [] for side in sides for cond in conditions}
            for _ in range(args.rounds):
                for cond in conditions:
                    if cond == "loaded":
                        with CompetingLoad():
                            for side in sides:  # A B A B ...
                                results[side, cond].append(
                                    run_worker(side, config, mode, args.steps))
                    else:
                        for side in sides:
                            results[side, cond].append(run_worker(side, config, mode, args.steps))
            blas_seen = blas_seen or results["minunet", "idle"][0]["blas"]
            for cond in conditions:
                pixels = CONFIGS[config][2] * CONFIGS[config][3] ** 2
                t_minunet = statistics.median(statistics.median(x["times"])
                                              for x in results["minunet", cond])
                line = (f"{config:<6} {mode:<6} {cond:<6} {gflop:>6.2f} GFLOP "
                        f"{t_minunet / pixels * 1e9:>6.1f} ns/pixel")
                for side in sides:
                    r = results[side, cond]
                    t = statistics.median(statistics.median(x["times"]) for x in r)
                    peak = statistics.median(x["peak_rss"] for x in r)
                    step_mem = statistics.median(x["peak_rss"] - x["base_rss"] for x in r)
                    line += (f" | {side} {_fmt_time(t):>9} {work / t:>6.1f} GFLOP/s "
                             f"peak {peak:>5.0f} MiB (step {step_mem:>5.0f})")
                for side in sides[1:]:
                    ratios = [statistics.median(a["times"]) / statistics.median(b["times"])
                              for a, b in zip(results["minunet", cond], results[side, cond],
                                              strict=True)]
                    mem = statistics.median(a["peak_rss"] / b["peak_rss"] for a, b in
                                            zip(results["minunet", cond], results[side, cond],
                                                strict=True))
                    line += (f" | minunet/{side} time {statistics.median(ratios):.2f}x "
                             f"mem {mem:.2f}x")
                rows.append(line)
                print(line, flush=True)
            if args.load:
                line = f"{config:<6} {mode:<6} slowdown loaded/idle:"
                for side in sides:
                    idle = statistics.median(statistics.median(x["times"])
                                             for x in results[side, "idle"])
                    loaded = statistics.median(statistics.median(x["times"])
                                               for x in results[side, "loaded"])
                    line += f"  {side} {loaded / idle:.2f}x"
                rows.append(line)
                print(line, flush=True)
    print("\n".join(["", *rows]))
    print(f"\nBLAS in the minunet workers: {blas_seen}")
    print("peak MiB: ru_maxrss of a subprocess doing only that (import + model + warm-up + "
          "timed calls); (step): peak minus the RSS before the first call")


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


if __name__ == "__main__":
    main()
