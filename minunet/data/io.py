"""Reading images (TIFF, PNG, NPY) and the data-set folder format.

A data set on disk:
    images/0000.tif   float32 (H, W), values in [0, 1]
    labels/0000.tif   uint16 (H, W) instance ids, 0 = background (opens in napari and Fiji)
    manifest.json     preset, size, seed, n, every parameter, minunet version: enough for
                      `generate.regenerate(manifest)` to draw the same arrays again
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAX_LABEL = np.iinfo(np.uint16).max     # labels are stored as uint16
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D image as stored: (H, W) gray or (H, W, 3|4) RGB/RGBA, any integer or float
    dtype (8-/16-bit, float). No conversion or normalisation happens here."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"read_image: no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"read_image: {path} is a folder, not an image file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"read_image: {path} is not an image file this reader knows; "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        if suffix in (".tif", ".tiff"):
            array = tifffile.imread(path)
        elif suffix == ".png":
            from PIL import Image
            with Image.open(path) as im:
                array = np.asarray(im)
        else:
            array = np.load(path, allow_pickle=False)
    except Exception as err:        # every reader has its own errors; name the file in one
        raise ValueError(f"read_image: cannot read {path} as {suffix[1:].upper()}: "
                         f"{type(err).__name__}: {err}") from err
    return _check_image(path, np.asarray(array))


def _check_image(path: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"read_image: {path} holds {array.dtype} values, not an image")
    is_gray = array.ndim == 2
    is_color = array.ndim == 3 and array.shape[2] in (3, 4)
    if not (is_gray or is_color) or min(array.shape[:2]) < 1:
        raise ValueError(f"read_image: {path} has shape {array.shape}; expected a 2-D gray "
                         "image (H, W) or an RGB/RGBA image (H, W, 3|4)")
    return array


def save_dataset(out_dir: str | Path, images: np.ndarray, labels: np.ndarray, manifest: dict
                 ) -> None:
    """Write images/NNNN.tif (float32), labels/NNNN.tif (uint16) and manifest.json."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"save_dataset: need images and labels of one shape (N, H, W), got "
                         f"{images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"save_dataset: labels must be integer ids, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"save_dataset: label ids must lie in 0..{MAX_LABEL} for uint16 TIFF, "
                         f"got {labels.min()}..{labels.max()}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    digits = max(4, len(str(len(images) - 1)))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{i:0{digits}d}.tif"
        tifffile.imwrite(out / "images" / name, image.astype(np.float32), photometric="minisblack")
        tifffile.imwrite(out / "labels" / name, label.astype(np.uint16), photometric="minisblack")
    from .. import __version__
    record = {"format": FORMAT_VERSION, "minunet_version": __version__, **_jsonable(manifest),
              "n": len(images), "size": list(images.shape[1:])}
    (out / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def load_dataset(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a folder written by `save_dataset`: images (N, H, W) float32, labels (N, H, W)
    int32, manifest dict."""
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"load_dataset: {root} has no {MANIFEST}; is it a data set "
                                "written by save_dataset / `minunet generate`?")
    manifest = json.loads(manifest_path.read_text())
    image_files = sorted((root / "images").glob("*.tif"))
    label_files = sorted((root / "labels").glob("*.tif"))
    if [f.name for f in image_files] != [f.name for f in label_files]:
        raise ValueError(f"load_dataset: {root}/images and {root}/labels hold different files")
    if "n" in manifest and len(image_files) != manifest["n"]:
        raise ValueError(f"load_dataset: manifest says {manifest['n']} images, found "
                         f"{len(image_files)} in {root / 'images'}")
    if not image_files:
        raise ValueError(f"load_dataset: no images in {root / 'images'}")
    images = np.stack([read_image(f) for f in image_files]).astype(np.float32)
    labels = np.stack([read_image(f) for f in label_files]).astype(np.int32)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"load_dataset: images {images.shape} and labels {labels.shape} must "
                         "be gray and of one shape")
    return images, labels, manifest


def _jsonable(value: object) -> object:
    """Numpy scalars and arrays, tuples and paths turned into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
