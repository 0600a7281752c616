"""Pretrained models shipped inside the package, found by name (`mu.load("nuclei")`).

Each model is one checkpoint file (`NAME.npz`, the format of `minunet.checkpoint`: no pickle)
beside this file, with its normalisation, post-processing settings and training object size
in its metadata.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> one line saying what the model is for and how it was trained
PRETRAINED: dict[str, str] = {
    "nuclei": ("fluorescent nuclei (bright objects on a dark background, ~10-40 px across): "
               "U-Net depth 3, base 16, trained on the `broad` generator by "
               "bench/train_pretrained.py"),
}


def pretrained_path(name: str) -> Path | None:
    """The checkpoint file of the pretrained model `name`, or None if there is no such model."""
    if name not in PRETRAINED:
        return None
    path = HERE / f"{name}.npz"
    return path if path.is_file() else None
