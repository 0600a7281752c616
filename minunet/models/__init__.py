"""Pretrained models shipped inside the package, found by name (`mu.load("nuclei")`).

Each model is one checkpoint file (`NAME.npz`, the format of `minunet.checkpoint`: no pickle)
beside this file, with its normalisation, post-processing settings and training object size
in its metadata.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> one line saying what the model is for and how it was trained
PRETRAINED: dict[str, str] = {}


def pretrained_path(name: str) -> Path | None:
    """The checkpoint file of the pretrained model `name`, or None if there is no such model."""
    if name not in PRETRAINED:
        return None
    path = HERE / f"{name}.npz"
    return path if path.is_file() else None
