"""Small shared pieces of the command tests: a tiny trained run, file snapshots, a lab folder."""

import hashlib
from pathlib import Path

import numpy as np
import tifffile

from minunet.cli import main

TINY = ["--epochs", "1", "--batch-size", "2", "--depth", "2", "--base", "4", "--crop", "32"]


def make_run(root: Path, n: int = 6, size: int = 64) -> tuple[Path, Path]:
    """generate -> train (1 epoch, a depth-2 base-4 net): (data folder, run folder)."""
    data_dir, run = root / "data", root / "run"
    assert main(["generate", "--n", str(n), "--size", str(size), "--seed", "3",
                 "--out", str(data_dir)]) == 0
    assert main(["train", "--data", str(data_dir), "--out", str(run), *TINY,
                 "--val-fraction", "0.34"]) == 0
    return data_dir, run


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below `folder` (to prove nothing changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def blob_image(rng: np.random.Generator, shape: tuple[int, int], n: int = 4
               ) -> tuple[np.ndarray, np.ndarray]:
    """A gray uint16 image of `n` bright discs (radius 6: the bundled model's size filter,
    82 px, removes the 69-px discs of radius 5) and its labels."""
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    labels = np.zeros(shape, np.uint16)
    for k in range(1, n + 1):
        cy, cx = rng.integers(7, H - 7), rng.integers(7, W - 7)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = k
    image = (labels > 0) * 3000 + rng.normal(500, 50, shape)
    return image.astype(np.uint16), labels


def write_tif(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path
