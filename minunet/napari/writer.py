"""Save a Labels layer as the label TIFF minunet writes (uint16, ImageJ, atomic).

The layer's scale becomes the TIFF's pixel size when it is not 1 (with the unit the reader
found, else "um"), so reader and writer round-trip. napari's save dialog has asked before a
file is replaced; the write itself is atomic (`minunet.io.files.write_atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import PixelSize, write_labels

DEFAULT_UNIT = "um"


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari's single-layer writer hook for Labels layers; returns the path written."""
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError(f"minunet writes 2-D label images; this layer has shape {labels.shape}")
    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    write_labels(target, labels, pixel_size(meta.get("scale"), meta.get("metadata")))
    return [str(target)]


def pixel_size(scale: Any, metadata: dict[str, Any] | None) -> PixelSize | None:
    """(y, x, unit) of a layer's scale and metadata; None for scale 1 without a unit."""
    yx = tuple(float(s) for s in (scale if scale is not None else (1.0, 1.0)))[-2:]
    unit = (metadata or {}).get("unit")
    if not unit and yx == (1.0, 1.0):
        return None
    return yx[0], yx[1], str(unit or DEFAULT_UNIT)
