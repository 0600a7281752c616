"""The data-set folder format that `minunet generate` writes.

A data set on disk:
    images/0000.tif   float32 (H, W), values in [0, 1]
    labels/0000.tif   uint16 (H, W) instance ids, 0 = background (opens in napari and Fiji)
    manifest.json     preset, size, seed, n, every parameter, minunet version: enough for
                      `generate.regenerate(manifest)` to draw the same arrays again

(A lab's own folders, without a manifest, are read by `minunet.io.folders`.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

from ..io.files import write_atomic
from ..io.images import MAX_LABEL, read_image

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
    _remove_killed_writes(out)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{i:0{digits}d}.tif"
        for folder, array in (("images", image.astype(np.float32)),
                              ("labels", label.astype(np.uint16))):
            write_atomic(out / folder / name, lambda tmp, a=array: tifffile.imwrite(
                tmp, a, photometric="minisblack"))
    _remove_older(out, {f"{i:0{digits}d}.tif" for i in range(len(images))})
    from .. import __version__
    record = {"format": FORMAT_VERSION, "minunet_version": __version__, **_jsonable(manifest),
              "n": len(images), "size": list(images.shape[1:])}
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(text))


def _remove_killed_writes(out: Path) -> None:
    """Remove the temporary files a killed (kill -9) generate left: `.NNNN.tif.XXXX.tmp.tif`
    in images/ and labels/, `.manifest.json.XXXX.tmp.json`. One listing per folder, then
    `remove_stale_temps` for the names that have one."""
    from ..io.files import remove_stale_temps

    for folder in (out / "images", out / "labels", out):
        names = {f.name[1:].split(".tmp", 1)[0].rsplit(".", 1)[0]
                 for f in folder.glob(".*.tmp*")}
        wanted = [n for n in names if n == MANIFEST or (n.endswith(".tif")
                                                      and n[:-4].isdigit())]
        if wanted:
            remove_stale_temps(folder, wanted)


def _remove_older(out: Path, names: set[str]) -> None:
    """Remove images and labels of an earlier, larger data set in `out` (files named as this
    writer names them, NNNN.tif), so that the folder holds exactly the new set."""
    for folder in ("images", "labels"):
        for f in (out / folder).glob("*.tif"):
            if f.name not in names and f.stem.isdigit():
                f.unlink()


def load_dataset(directory: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a folder written by `save_dataset`: images (N, H, W) float32, labels (N, H, W)
    int32, manifest dict."""
    root = Path(directory)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"load_dataset: {root} has no {MANIFEST}; is it a data set "
                                "written by save_dataset / `minunet generate`? (A lab's own "
                                "folder: minunet.io.folders.find_pairs and read_pairs.)")
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
