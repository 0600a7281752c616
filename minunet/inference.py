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

import json
import os
from pathlib import Path
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
            diameter: float | str | None = None, return_probs: bool = False,
            info: dict[str, Any] | None = None, **postprocess: Any,
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Instance labels (H, W) int32 (0 background) of one raw image of any size.

    model:        a checkpoint file, a run folder (best.npz, else last.npz), a pretrained
                  model's name, a loaded `Checkpoint` or a bare Module (default settings)
    image:        (H, W) gray or (H, W, 3|4) RGB(A), any integer or float dtype, or the path
                  of a TIFF / PNG / NPY file holding one
    tile, batch_size: as in `mu.predict` (they change speed and memory, not the result)
    progress:     a progress bar over tile batches for large images (on a terminal)
    diameter:     the objects' typical diameter in pixels, or "auto" to estimate it from the
                  image: the image is rescaled so that objects have the size the model was
                  trained on (checkpoint metadata "diameter"); None: the image as it is.
                  "auto" runs the model at the image's own scale and at half size, measures
                  the objects (`rescale.auto_scale`) and runs again only if they are off the
                  trained size
    info:         a dict to fill with what diameter="auto" found: "diameter_estimate" (px, or
                  None: too few objects) and "scale" (1: not resized)
    return_probs: also return the class probabilities (Kc, H, W)
    postprocess:  override a stored `to_instances` setting (e.g. min_size=10)
    """
    if isinstance(image, (str, os.PathLike)):
        from .io.images import read_image

        image = read_image(image)
    ckpt = as_checkpoint(model)
    normalization, settings = stored_settings(ckpt)
    scale = 1.0
    network = ckpt.model if isinstance(ckpt, Checkpoint) else ckpt
    trained = ckpt.metadata.get("diameter") if isinstance(ckpt, Checkpoint) else None
    if diameter == "auto" and trained is not None:  # first pass at the image's own scale
        from .predict import predict
        from .rescale import PROBE_SCALE, auto_scale

        labels, probs = segment_with(network, image, normalization, tile=tile,
                                     batch_size=batch_size, progress=progress,
                                     **{**settings, **postprocess})
        probe = predict(network, image, tile=tile, batch_size=batch_size,
                        normalization=normalization, scale=PROBE_SCALE)
        scale, estimate = auto_scale(probs, trained, probe)
        if info is not None:
            info.update(diameter_estimate=estimate, scale=scale)
        if scale == 1.0:
            return (labels, probs) if return_probs else labels
        diameter = trained / scale
    if diameter is not None:
        from .rescale import plan

        scale, settings = plan(image, {"postprocess": settings, "diameter": trained}, diameter)
    settings.update(postprocess)
    labels, probs = segment_with(network, image, normalization, tile=tile,
                                 batch_size=batch_size, progress=progress, scale=scale,
                                 **settings)
    return (labels, probs) if return_probs else labels


OVERLAY_DIR, PROBS_DIR = "overlays", "probs"  # predict's extras, beside the label TIFFs


def prediction_outputs(path: Path, out: Path, probs: bool = False,
                       overlays: bool = False) -> list[Path]:
    """The files `minunet predict` writes for the input `path`: labels first."""
    outputs = [out / f"{path.stem}.tif"]
    if probs:
        outputs.append(out / PROBS_DIR / f"{path.stem}.npy")
    if overlays:
        outputs.append(out / OVERLAY_DIR / f"{path.stem}.png")
    return outputs


def write_prediction(model: Checkpoint | Module, path: Path, out: Path, *,
                     image: np.ndarray | None = None, tile: int = 256, probs: bool = False,
                     overlays: bool = False, progress: bool = False,
                     diameter: float | str | None = None, info: dict[str, Any] | None = None
                     ) -> tuple[Path, int]:
    """Segment the image file `path` and write what `minunet predict` writes for it: a uint16
    ImageJ label TIFF with the input's pixel size, and on request the probabilities and an
    outline overlay, each atomically. Returns (label file, number of objects). The command and
    the cluster path (`minunet.scaleout`) both call this, so their outputs are the same.
    `image`: the file's pixels if the caller has read them already; `info`: filled as by
    `segment` (diameter="auto": the estimate, also stored in the label TIFF's ImageJ Info)."""
    from . import viz
    from .io import read_image, read_pixel_size, write_atomic, write_labels
    from .predict import normalize

    image = read_image(path) if image is None else image
    info = {} if info is None else info
    labels, p = segment(model, image, tile=tile, progress=progress, diameter=diameter,
                        return_probs=True, info=info)
    n = int(labels.max(initial=0))
    if n > np.iinfo(np.uint16).max:
        raise ValueError(f"{path}: {n} objects do not fit a uint16 label image; segment it "
                         "with minunet.scaleout.segment_large, which writes uint32")
    targets = prediction_outputs(path, out, probs, overlays)
    write_labels(targets[0], labels, read_pixel_size(path),
                 info=json.dumps(info) if info else None)
    if probs:
        targets[1].parent.mkdir(exist_ok=True)
        write_atomic(targets[1], lambda tmp: np.save(tmp, p))
    if overlays:
        norm, _ = stored_settings(model)
        gray = normalize(image, norm, who=str(path))
        targets[-1].parent.mkdir(exist_ok=True)
        write_atomic(targets[-1], lambda tmp: viz.overlay(
            gray, None, labels, tmp, title=f"{path.name}: {n} objects"))
    return targets[0], n
