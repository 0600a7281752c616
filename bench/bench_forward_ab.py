"""The bundled model's inference forward on one default tile, this checkout against another,
alternating: is a change to the network's kernels faster, under whatever load there is?

    git worktree add /tmp/old a89f606
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_forward_ab.py /tmp/old
    python bench/bench_forward_ab.py /tmp/old --tile 1152 --rounds 8 --forwards 3

Each round runs, in a fresh subprocess per side (old first, then this checkout, each with its
own checkout on PYTHONPATH, so its own `minunet` and compiled kernels), one warm-up forward
and then FORWARDS timed forwards of a random TILE x TILE image (1152: the default 1024-px core
with its margins), eval mode, gradients off, and keeps the fastest. Rounds alternate the
sides within seconds, so a load that comes and goes hits both alike; the median of the
rounds' ratios (this / old) is the answer, the minima are printed too. Also printed: the
largest difference between the two sides' logits (float32 summation orders may differ).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

WORKER = r"""
import json, sys, time
import numpy as np
import minunet as mu
tile, forwards, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = mu.load("nuclei").model
model.eval()
model.set_grad_enabled(False)
x = np.random.default_rng(0).standard_normal((1, 1, tile, tile)).astype(np.float32)
model(x)                                          # compiled kernels loaded, buffers made
times = []
for _ in range(forwards):
    t0 = time.perf_counter()
    y = model(x)
    times.append(time.perf_counter() - t0)
np.save(out, y)
print(json.dumps({"seconds": min(times), "file": mu.__file__}))
"""


def run(tree: Path, tile: int, forwards: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    result = subprocess.run([sys.executable, "-c", WORKER, str(tile), str(forwards), str(out)],
                            env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="the other checkout (e.g. a git worktree)")
    parser.add_argument("--tile", type=int, default=1152)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--forwards", type=int, default=3)
    args = parser.parse_args()
    here = Path(__file__).resolve().parent.parent
    trees = {"old": args.old.resolve(), "this": here}
    seconds: dict[str, list[float]] = {"old": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side, tree in trees.items():
                got = run(tree, args.tile, args.forwards, Path(tmp) / f"{side}.npy")
                if r == 0 and not got["file"].startswith(str(tree)):
                    raise SystemExit(f"{side}: imported {got['file']}, not from {tree}")
                seconds[side].append(got["seconds"])
            print(f"round {r + 1}: old {1e3 * seconds['old'][-1]:.0f} ms, this "
                  f"{1e3 * seconds['this'][-1]:.0f} ms", flush=True)
        diff = np.abs(np.load(Path(tmp) / "old.npy") - np.load(Path(tmp) / "this.npy")).max()
    ratios = [b / a for a, b in zip(seconds["old"], seconds["this"], strict=True)]
    print(f"tile {args.tile}: fastest old {1e3 * min(seconds['old']):.0f} ms, this "
          f"{1e3 * min(seconds['this']):.0f} ms; this / old median {np.median(ratios):.3f} "
          f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); largest logit difference {diff:.2e}")


if __name__ == "__main__":
    main()
