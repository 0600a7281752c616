"""Save a Labels layer as the label TIFF minunet writes (uint16, ImageJ, atomic).

The layer's scale becomes the TIFF's pixel size when it is not 1 (with the unit the reader
found, else "um"), so reader and writer round-trip. napari's save dialog has asked before a
file is replaced; the write itself is atomic (`minunet.io.files.write_atomic`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import write_labels

DEFAULT_UNIT = "um"


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari's single-layer writer hook for Labels layers; returns the path written."""
    labels = np.asarray(data)
    if labels.ndim != 2:
        raise ValueError(f"minunet writes 2-D label images; this layer has shape {labels.shape}")
    target = Path(path)
    if target.suffix.lower() not in (".tif", ".tiff"):
        target = target.with_suffix(".tif")
    scale = tuple(float(s) for s in meta.get("scale", (1.0, 1.0)))[-2:]
    unit = (meta.get("metadata") or {}).get("unit")
    pixel_size = None
    if unit or scale != (1.0, 1.0):
        pixel_size = (scale[0], scale[1], str(unit or DEFAULT_UNIT))
    write_labels(target, labels, pixel_size)
    return [str(target)]
