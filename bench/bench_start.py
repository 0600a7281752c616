"""Start-up time: the first training step with an empty Numba cache, and a warm start; with
--segment, where a warm `minunet predict`'s start-up goes.

    python bench/bench_start.py [--config C2] [--repeats 2]
    python bench/bench_start.py --segment [--repeats 3]

Each measurement is a fresh subprocess with its own NUMBA_CACHE_DIR:

- cold: an empty cache directory, so every kernel the step uses is compiled: time from the
  process's start (before `import numpy`) to the end of the first training step (forward,
  cross-entropy, backward, Adam) and of the first inference call after it;
- warm: the same directory again (now filled): `import minunet` plus building the model, and
  the first training step, which now only loads compiled kernels from disk.
- --segment: the bundled model on a 64 x 64 image, with the Numba cache the command uses
  (filled by an earlier run), each stage timed in a fresh process: importing numpy, numba and
  minunet; loading the model; Numba's first-use set-up (its target context imports its
  implementations of NumPy, and through its BLAS check scipy.linalg), which any first call of
  a cached kernel pays; the first `mu.segment` (loading its compiled kernels from disk); a
  second one (the work itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CONFIGS = {"C1": (3, 8, 8, 64), "C2": (3, 16, 8, 128), "C3": (4, 32, 4, 256)}

WORKER = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import minunet as mu
t_import = time.perf_counter()
depth, base, batch, size = {config}
model = mu.UNet(1, 3, depth=depth, base_channels=base, rng=0)
t_model = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, 1, size, size)).astype(np.float32)
target = rng.integers(0, 3, size=(batch, size, size))
loss_fn, optimizer = mu.CrossEntropyLoss(), mu.Adam(model.parameters(), lr=1e-3)
loss_fn.forward(model.forward(x), target)
optimizer.zero_grad()
model.backward(loss_fn.backward())
optimizer.step()
t_step = time.perf_counter()
model.eval().set_grad_enabled(False)
model(x)
t_infer = time.perf_counter()
started = time.perf_counter()
model.train().set_grad_enabled(True)
loss_fn.forward(model.forward(x), target)
optimizer.zero_grad()
model.backward(loss_fn.backward())
optimizer.step()
t_second = time.perf_counter() - started
print(json.dumps({{"import": t_import - t0, "model": t_model - t_import,
                   "first_step": t_step - t0, "first_infer": t_infer - t_step,
                   "second_step": t_second}}))
"""


SEGMENT_WORKER = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
t_numpy = time.perf_counter()
import numba
t_numba = time.perf_counter()
import minunet as mu
t_minunet = time.perf_counter()
model = mu.load("nuclei")
t_model = time.perf_counter()
from numba.core.registry import cpu_target
cpu_target.target_context.refresh()
t_numba_setup = time.perf_counter()
image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
mu.segment(model, image)
t_first = time.perf_counter()
mu.segment(model, image)
t_second = time.perf_counter()
print(json.dumps({"numpy": t_numpy - t0, "numba": t_numba - t_numpy,
                  "minunet": t_minunet - t_numba, "model": t_model - t_minunet,
                  "numba set-up": t_numba_setup - t_model,
                  "kernels (first segment)": t_first - t_numba_setup - (t_second - t_first),
                  "segment": t_second - t_first}))
"""


def segment_start_up() -> dict:
    done = subprocess.run([sys.executable, "-c", SEGMENT_WORKER], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    code = WORKER.format(config=CONFIGS[config])
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="C2", choices=sorted(CONFIGS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--segment", action="store_true",
                        help="where a warm `minunet predict`'s start-up goes, stage by stage")
    args = parser.parse_args()
    if args.segment:
        segment_start_up()            # fills the Numba cache if it is empty
        for _ in range(args.repeats):
            stages = segment_start_up()
            print("segment, warm: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages.items())
                  + f"; total {sum(stages.values()):.2f} s (Python's own start not included)")
        return
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="minunet-numba-cache-") as cache_dir:
            cold = run(args.config, cache_dir)
            warm = run(args.config, cache_dir)
        print(f"{args.config} cold cache: import {cold['import']:.2f} s, first training step "
              f"done {cold['first_step']:.2f} s after start (then first inference "
              f"{cold['first_infer']:.2f} s, a second step {cold['second_step']:.2f} s)")
        print(f"{args.config} warm cache: import minunet {warm['import']:.2f} s + build model "
              f"{warm['model']:.3f} s = {warm['import'] + warm['model']:.2f} s; first training "
              f"step done {warm['first_step']:.2f} s after start")


if __name__ == "__main__":
    main()
