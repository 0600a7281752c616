"""One call from a trained model to instance labels, with the settings stored in the checkpoint.

    labels = mu.segment("run", image)              # a run folder, a .npz file or a model name
    ckpt = mu.load("run")                          # many images: load once ...
    labels = [mu.segment(ckpt, im) for im in images]   # ... and pass the checkpoint

A checkpoint written by `minunet train` carries the input normalisation and the
post-processing settings learned from its training labels (`min_size`, ...). `segment` applies
exactly those, as `minunet predict` does (the command calls this function), so the labels are
identical to the command's output. `mu.to_instances(mu.predict(model, image))` alone uses the
defaults instead.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, load
from .module import Module
from .workflow import segment as segment_with


def as_checkpoint(model: Checkpoint | Module | str | os.PathLike) -> Checkpoint | Module:
    """A Checkpoint or Module as it is; a path, run folder or pretrained name loaded."""
    if isinstance(model, (Checkpoint, Module)):
        return model
    return load(model)


def stored_settings(model: Checkpoint | Module) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(normalisation, post-processing settings) a checkpoint carries; defaults for a Module."""
    if isinstance(model, Checkpoint):
        return model.metadata.get("normalization"), dict(model.metadata.get("postprocess", {}))
    return None, {}


def segment(model: Checkpoint | Module | str | os.PathLike,
            image: np.ndarray | str | os.PathLike, *,
            tile: int = 256, batch_size: int = 4, progress: bool = False,
            return_probs: bool = False, **postprocess: Any,
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Instance labels (H, W) int32 (0 background) of one raw image of any size.

    model:        a checkpoint file, a run folder (best.npz, else last.npz), a pretrained
                  model's name, a loaded `Checkpoint` or a bare Module (default settings)
    image:        (H, W) gray or (H, W, 3|4) RGB(A), any integer or float dtype, or the path
                  of a TIFF / PNG / NPY file holding one
    tile, batch_size: as in `mu.predict` (they change speed and memory, not the result)
    progress:     a progress bar over tile batches for large images (on a terminal)
    return_probs: also return the class probabilities (Kc, H, W)
    postprocess:  override a stored `to_instances` setting (e.g. min_size=10)
    """
    if isinstance(image, (str, os.PathLike)):
        from .data.io import read_image

        image = read_image(image)
    ckpt = as_checkpoint(model)
    normalization, settings = stored_settings(ckpt)
    settings.update(postprocess)
    network = ckpt.model if isinstance(ckpt, Checkpoint) else ckpt
    labels, probs = segment_with(network, image, normalization, tile=tile,
                                 batch_size=batch_size, progress=progress, **settings)
    return (labels, probs) if return_probs else labels
