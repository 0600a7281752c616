"""Numba's on-disk cache works for the installed package: a second process compiles nothing."""

import os
import subprocess
import sys

SCRIPT = """
import numpy as np
from minunet.kernels.activation import relu_forward
x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(1, 2, 3, 4)
relu_forward(x)
print(len(relu_forward.stats.cache_hits), len(relu_forward.stats.cache_misses))
"""


def run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_second_process_loads_the_compiled_kernel_from_disk(tmp_path):
    hits, misses = run(tmp_path)
    assert hits == 0 and misses == 1                       # compiled and written
    assert any(name.endswith(".nbi") for _, _, files in os.walk(tmp_path) for name in files)
    hits, misses = run(tmp_path)
    assert hits == 1 and misses == 0                       # loaded, not compiled
