"""Chunked predictions as OME-Zarr (OME-NGFF 0.4): the image with its labels, as viewers expect.

    segment_large("run", "slide.tif", "slide.ome.zarr")    # a name ending in .ome.zarr
    minunet predict run slide.tif --out results --chunked  # writes results/slide.ome.zarr

The layout is the NGFF one for an image and its label image:

    slide.ome.zarr/               the input image, copied: multiscales, axes (y, x) or (c, y, x)
      0/ 1/ 2/ ...                full resolution, then each level half the one before
      labels/                     attributes {"labels": ["cells"]}
        cells/                    multiscales + "image-label" (source: the image "../../")
          0/ 1/ 2/ ...            uint32 labels, downsampled by taking every other pixel

so that napari (napari-ome-zarr), QuPath, Fiji (MoBIE, BigDataViewer) and vizarr open the
folder as an image with a labels layer. The image is copied (its size again on disk) because
NGFF keeps labels inside the image's group, and minunet never writes into a user's input.

NGFF 0.4 on Zarr format 2 (dimension separator "/"), the version most readers take today.
Coordinates: the pixel size a TIFF input declares (ImageJ's or the resolution tags), in the
unit it names, times 2**k at level k; pixels (scale 1) for other inputs or unknown units. Every
level is written window by window (WINDOW px a side), so memory stays bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

NGFF_VERSION = "0.4"
LABELS_NAME = "cells"   # the label image's name under labels/
WINDOW = 2048           # px per side of the windows levels are copied and downsampled in
SUFFIX = ".ome.zarr"
V2_KEYS = {"name": "v2", "separator": "/"}  # NGFF 0.4 asks for nested chunk keys
# units as TIFFs spell them -> NGFF's (UDUNITS-2) names; others leave the axes in pixels
UNITS = {"um": "micrometer", "micron": "micrometer", "microns": "micrometer",
         "\u00b5m": "micrometer", "\\u00b5m": "micrometer", "\u03bcm": "micrometer",
         "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
         "mm": "millimeter", "millimeter": "millimeter", "cm": "centimeter",
         "centimeter": "centimeter", "inch": "inch"}


def is_ome(path: str | Path) -> bool:
    """Whether `path` asks for OME-Zarr output (its name ends in .ome.zarr)."""
    return Path(path).name.lower().endswith(SUFFIX)


def create_labels(root: Path, shape: tuple[int, int], chunk: int) -> Path:
    """Make `root` a new Zarr group holding an empty full-resolution label array (uint32,
    zeros) at labels/cells/0; return that array's path, which block tasks open and write."""
    import zarr

    group = zarr.open_group(str(root), mode="w-", zarr_format=2)
    group.create_array(f"labels/{LABELS_NAME}/0", shape=shape, dtype="uint32",
                       chunks=(chunk, chunk), fill_value=0, chunk_key_encoding=V2_KEYS)
    return root / "labels" / LABELS_NAME / "0"


def finish(root: Path, image: Any, chunk: int, name: str) -> None:
    """Complete the OME-Zarr at `root` once its full-resolution labels are final: copy the
    image (`sources.LargeImage`) in, add both pyramids and write the NGFF metadata."""
    import zarr

    group = zarr.open_group(str(root), mode="r+")
    H, W = image.height, image.width
    levels = pyramid_levels(H, W, chunk)
    color = len(image.shape) == 3
    dtype = np.uint8 if image.dtype == bool else image.dtype
    lead = (image.shape[2],) if color else ()
    full = group.create_array("0", shape=(*lead, H, W), dtype=dtype,
                              chunks=(*lead, chunk, chunk), fill_value=0,
                              chunk_key_encoding=V2_KEYS)
    for r0, r1, c0, c1 in windows(H, W):
        pixels = image.read(r0, r1, c0, c1).astype(dtype, copy=False)  # (h, w) or (h, w, C)
        full[..., r0:r1, c0:c1] = np.moveaxis(pixels, -1, 0) if color else pixels
    labels = group[f"labels/{LABELS_NAME}"]
    for target in (group, labels):
        for level in range(1, levels):
            downsample(target, level, chunk)
    size = pixel_size(image.path)
    unit = {"unit": size[2]} if size else {}
    axes = ([{"name": "c", "type": "channel"}] if color else []) + [
        {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    spacing = size[:2] if size else (1.0, 1.0)
    group.attrs.update(multiscales(name, axes, levels, spacing))
    labels.attrs.update({**multiscales(LABELS_NAME, axes[-2:], levels, spacing),
                         "image-label": {"version": NGFF_VERSION,
                                         "source": {"image": "../../"}}})
    group["labels"].attrs.update({"labels": [LABELS_NAME]})


def pixel_size(path: Path) -> tuple[float, float, str] | None:
    """(y, x, NGFF unit) of a TIFF that declares its pixel size in a known unit, else None."""
    from ..io.images import read_pixel_size

    size = read_pixel_size(path)
    if size is None:
        return None
    unit = UNITS.get(size[2].strip().lower())
    return (float(size[0]), float(size[1]), unit) if unit else None


def pyramid_levels(height: int, width: int, chunk: int) -> int:
    """Levels 0..n-1, each half the last, until the whole image fits one chunk."""
    levels, side = 1, max(height, width)
    while side > chunk:
        side = -(-side // 2)
        levels += 1
    return levels


def windows(height: int, width: int, side: int = WINDOW) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) windows of `side` px covering an image, row by row."""
    return [(r, min(r + side, height), c, min(c + side, width))
            for r in range(0, height, side) for c in range(0, width, side)]


def downsample(group: Any, level: int, chunk: int) -> None:
    """Array `level` of a multiscale group from `level - 1`, keeping every other pixel (for
    labels the only choice that invents no id; for the image good enough for an overview)."""
    source = group[str(level - 1)]
    *lead, h, w = source.shape
    H, W = -(-h // 2), -(-w // 2)
    target = group.create_array(str(level), shape=(*lead, H, W), dtype=source.dtype,
                                chunks=(*lead, chunk, chunk), fill_value=0,
                                chunk_key_encoding=V2_KEYS)
    for r0, r1, c0, c1 in windows(H, W):
        target[..., r0:r1, c0:c1] = source[..., 2 * r0:2 * r1:2, 2 * c0:2 * c1:2]


def multiscales(name: str, axes: list[dict[str, str]], levels: int,
                spacing: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
    """The NGFF 0.4 "multiscales" attribute of a pyramid of `levels` levels whose full
    resolution has pixels of `spacing` (y, x) in the axes' unit."""
    def scale(level: int) -> list[float]:
        return [1.0] * (len(axes) - 2) + [s * 2**level for s in spacing]

    return {"multiscales": [{
        "version": NGFF_VERSION, "name": name, "axes": axes,
        "datasets": [{"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": scale(k)}]} for k in range(levels)],
    }]}
