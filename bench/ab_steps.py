"""Two versions of minunet side by side: the training step of each (or `mu.segment` with the
bundled model), alternated in fresh processes, idle or under a competing load.

    git worktree add /tmp/before <commit>
    python bench/ab_steps.py /tmp/before . [--configs C2,C3] [--rounds 4] [--steps 8] [--load]
    python bench/ab_steps.py /tmp/before . --segment 2048 [--rounds 4] [--steps 3] [--load]
    python bench/ab_steps.py /tmp/before . --command 2048 [--rounds 8] [--load]

Each round runs one subprocess per version (A then B), with that version's folder first on
`sys.path`; a subprocess builds each configuration's U-Net, takes two warm-up steps, then
times `--steps` steps and reports the fastest and the median. With `--segment SIZE`, the
step is `mu.segment("nuclei", image)` (the command's defaults: normalisation, the network in
1024-px tiles, post-processing; no file I/O) on one generated `broad` image of SIZE x SIZE
(bench_segment.make_images, written once and read by both versions), and the last round's
labels of A and B are compared. With `--command SIZE`, the step is the whole command a user
waits for, `python -m minunet.cli predict --model nuclei IMAGE --out DIR` into a fresh
folder, in a fresh process from start to exit (one per round and version; one untimed run of
each first, which also fills that version's Numba cache, after its bytecode is compiled as an
installation has it: bench_segment.compile_bytecode), and the last round's label files of A
and B are compared. The last lines give, per configuration, the fastest step of each
version over all rounds and B ÷ A (with --command also the medians). With `--load`, a
process of two threads of matrix products runs throughout (as `bench_unet.py --load`). Run
it with the machine's OpenBLAS overrides unset: `env -u OPENBLAS_CORETYPE -u
OPENBLAS_L2_SIZE`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_unet import CONFIGS, LOAD_SCRIPT

WORKER = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import minunet as mu
assert mu.__file__.startswith({root!r}), mu.__file__
result = {{}}
for name, (depth, base, batch, size) in {configs!r}.items():
    rng = np.random.default_rng(0)
    model = mu.UNet(1, 3, depth=depth, base_channels=base, rng=rng)
    x = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
    target = rng.integers(0, 3, size=(batch, size, size))
    loss_fn, optimizer = mu.CrossEntropyLoss(), mu.Adam(model.parameters(), lr=1e-3)

    def step():
        loss_fn.forward(model.forward(x), target)
        optimizer.zero_grad()
        model.backward(loss_fn.backward())
        optimizer.step()

    step(); step()
    times = []
    for _ in range({steps}):
        start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
    result[name] = (min(times), float(np.median(times)))
print(json.dumps(result))
"""


SEGMENT_WORKER = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import tifffile
import minunet as mu
assert mu.__file__.startswith({root!r}), mu.__file__
model = mu.load("nuclei")
image = tifffile.imread({image!r})
labels = mu.segment(model, image); mu.segment(model, image)
np.save({labels_out!r}, labels)
times = []
for _ in range({steps}):
    start = time.perf_counter(); mu.segment(model, image); times.append(time.perf_counter() - start)
print(json.dumps({{{name!r}: (min(times), float(np.median(times)))}}))
"""


def run(root: Path, configs: dict, steps: int, image: Path | None = None) -> dict:
    code = (WORKER.format(root=str(root.resolve()), configs=configs, steps=steps)
            if image is None else
            SEGMENT_WORKER.format(root=str(root.resolve()), image=str(image), steps=steps,
                                  name=next(iter(configs)),
                                  labels_out=str(image.with_name("labels_last.npy"))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=root, env=dict(os.environ, PYTHONPATH=str(root.resolve())))
    if done.returncode:
        raise SystemExit(f"{root}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_command(root: Path, image: Path, out: Path) -> float:
    """Wall seconds of `minunet predict` of this version on image into the new folder out."""
    cmd = [sys.executable, "-m", "minunet.cli", "predict", "--model", "nuclei", str(image),
           "--out", str(out)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=root,
                          env=dict(os.environ, PYTHONPATH=str(root.resolve())))
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{root}: {done.stderr[-2000:]}")
    return seconds


def compare_commands(a: Path, b: Path, image: Path, rounds: int) -> None:
    """--command: the rounds of A and B, then the fastest and median of each, and B / A."""
    import tifffile
    from bench_segment import compile_bytecode

    work = image.parent
    for side, root in (("A", a), ("B", b)):
        compile_bytecode(root / "minunet")   # as installed: no source compiled at each start
        run_command(root, image, work / f"warm_{side}")
    times: dict[str, list[float]] = {"A": [], "B": []}
    for r in range(rounds):
        for side, root in (("A", a), ("B", b)):
            out = work / f"round{r}_{side}"
            times[side].append(run_command(root, image, out))
            print(f"round {r + 1} {side}: {times[side][-1]:.3f} s", flush=True)
    last = [tifffile.imread(work / f"round{rounds - 1}_{side}" / image.name) for side in "AB"]
    print(f"label files of A and B: "
          f"{'identical' if np.array_equal(*last) else 'DIFFERENT'}")
    (fa, ma), (fb, mb) = ((min(times[s]), float(np.median(times[s]))) for s in "AB")
    print(f"command {image.name}: A fastest {fa:.3f} s, median {ma:.3f} s; B fastest {fb:.3f} "
          f"s, median {mb:.3f} s; B / A {fb / fa:.2f}x (fastest), {mb / ma:.2f}x (median)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("a", type=Path, help="the first version's source folder (before)")
    parser.add_argument("b", type=Path, help="the second version's source folder (after)")
    parser.add_argument("--configs", default="C2,C3")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--load", action="store_true", help="under a competing 2-thread load")
    parser.add_argument("--segment", type=int, default=0, metavar="SIZE",
                        help="time mu.segment with the bundled model on a SIZE x SIZE image")
    parser.add_argument("--command", type=int, default=0, metavar="SIZE",
                        help="time the whole `minunet predict` command on a SIZE x SIZE image")
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    image = None
    if args.segment:
        from bench_segment import make_images

        folder = Path(tempfile.mkdtemp(prefix="ab_segment_"))
        image = make_images(folder, args.segment, 1, seed=0)[0]
        configs = {f"segment {args.segment}^2": None}
    for root in (args.a, args.b):
        if not (root / "minunet" / "__init__.py").is_file():
            raise SystemExit(f"{root}: not a minunet source folder (no minunet/__init__.py)")
    if args.command:
        from bench_segment import make_images

        folder = Path(tempfile.mkdtemp(prefix="ab_command_"))
        load = (subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT],
                                 env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
                if args.load else None)
        try:
            compare_commands(args.a, args.b, make_images(folder, args.command, 1, seed=0)[0],
                             args.rounds)
        finally:
            if load is not None:
                load.kill()
            shutil.rmtree(folder, ignore_errors=True)
        return
    load = (subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT],
                             env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
            if args.load else None)
    best: dict[str, dict[str, float]] = {"A": {}, "B": {}}
    try:
        for r in range(args.rounds):
            for side, root in (("A", args.a), ("B", args.b)):
                result = run(root, configs, args.steps, image)
                if image is not None:  # the labels of this side, kept for the comparison
                    (image.parent / "labels_last.npy").replace(
                        image.parent / f"labels_{side}.npy")
                print(f"round {r + 1} {side}: " + " | ".join(
                    f"{name} fastest {1e3 * t[0]:.1f} ms, median {1e3 * t[1]:.1f} ms"
                    for name, t in result.items()), flush=True)
                for name, (fastest, _) in result.items():
                    best[side][name] = min(best[side].get(name, fastest), fastest)
        if image is not None:
            a, b = (np.load(image.parent / f"labels_{side}.npy") for side in "AB")
            print(f"labels of A and B: {'identical' if np.array_equal(a, b) else 'DIFFERENT'}")
    finally:
        if load is not None:
            load.kill()
        if image is not None:
            shutil.rmtree(image.parent, ignore_errors=True)
    state = "under load" if args.load else "idle"
    for name in configs:
        a, b = best["A"][name], best["B"][name]
        print(f"{name} {state}: A {1e3 * a:.1f} ms, B {1e3 * b:.1f} ms, B / A {b / a:.2f}x")


if __name__ == "__main__":
    main()
