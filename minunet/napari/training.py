"""Save an image and its (corrected) labels into a training folder, as `minunet train` reads it.

    save_for_training("my_cells", "img01", image, labels)
    # -> my_cells/images/img01.tif + my_cells/masks/img01.tif (StarDist's layout)

The pair then trains with `minunet train --data my_cells ...` (see `minunet.io.folders`).
Nothing is overwritten: a name already used in the folder gets a number (img01-2, img01-3, ...)
and the result says so. Each file is written atomically (`minunet.io.files.write_atomic`); the
image first, so a failure never leaves a mask without its image. Plain NumPy and TIFF: napari
is not needed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ..io.files import write_atomic
from ..io.folders import MASK_FOLDERS, MASK_SUFFIX, image_files
from ..io.images import MAX_LABEL, PixelSize, write_labels

IMAGES, MASKS = "images", "masks"   # StarDist's folder names (generate's labels/ is used if there)
MAX_TRIES = 10_000                  # img01-2 ... img01-10000, then give up and say so
IMAGEJ_TYPES = (np.uint8, np.uint16, np.float32)   # what an ImageJ TIFF (with a unit) can hold


@dataclass(frozen=True)
class Saved:
    """Where a pair went; `name` differs from the name asked for when that one was taken."""
    image: Path
    mask: Path
    name: str
    asked: str

    @property
    def renamed(self) -> bool:
        return self.name != self.asked

    def message(self) -> str:
        note = f" ({self.asked} was taken)" if self.renamed else ""
        return f"saved {self.image.name} to {self.image.parent} and {self.mask.parent}{note}"


def safe_name(name: str) -> str:
    """A file name stem from a layer name: letters, digits, '-', '_' and '.' kept."""
    stem = re.sub(r"[^\w.-]+", "_", name.strip()).strip("._")
    return stem or "image"


def save_for_training(folder: str | Path, name: str, image: np.ndarray, labels: np.ndarray,
                      pixel_size: PixelSize | None = None) -> Saved:
    """Write `image` (H, W) or (H, W, 3|4) and `labels` (H, W) as FOLDER/images/NAME.tif and
    FOLDER/masks/NAME.tif (FOLDER/labels/ instead when the folder already uses it), both with
    `pixel_size` (y, x, unit) when given (the image only if ImageJ can hold its dtype).
    Checks everything before writing; never overwrites (see the module doc)."""
    folder = Path(folder)
    image, labels = np.asarray(image), np.asarray(labels)
    _check(image, labels, name)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save for training: {folder} is a file; choose a folder")
    mask_dir = folder / _mask_folder(folder)
    image_dir = folder / IMAGES
    asked = safe_name(name)
    stem = _free_name(asked, image_dir, mask_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    image_path = image_dir / f"{stem}.tif"
    write_atomic(image_path, lambda tmp: tifffile.imwrite(tmp, image,
                                                          **_calibration(image, pixel_size)))
    try:
        mask_path = write_labels(mask_dir / f"{stem}.tif", labels, pixel_size)
    except BaseException:
        image_path.unlink(missing_ok=True)   # ours, written a moment ago: no lonely image
        raise
    return Saved(image_path, mask_path, stem, asked)


def _calibration(image: np.ndarray, pixel_size: PixelSize | None) -> dict:
    """tifffile arguments that store the pixel size in an ImageJ TIFF, where one can hold it."""
    if pixel_size is None or image.dtype not in IMAGEJ_TYPES or (
            image.ndim == 3 and image.dtype != np.uint8):
        return {}
    dy, dx, unit = pixel_size
    return {"imagej": True, "resolution": (1.0 / dx, 1.0 / dy), "metadata": {"unit": unit},
            **({"photometric": "rgb"} if image.ndim == 3 else {})}


def _check(image: np.ndarray, labels: np.ndarray, name: str) -> None:
    who = f"save for training ({name})"
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"{who}: the image has shape {image.shape}; minunet trains on 2-D gray "
                         "(H, W) or RGB(A) (H, W, 3|4) images")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"{who}: the labels are {labels.shape} but the image is "
                         f"{image.shape[:2]}; choose the labels layer of this image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{who}: labels must be whole numbers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL):
        raise ValueError(f"{who}: label ids {labels.min()}..{labels.max()} are outside "
                         f"0..{MAX_LABEL}")
    if not labels.any():
        raise ValueError(f"{who}: the labels layer is empty; paint or segment the cells first")


def _mask_folder(folder: Path) -> str:
    """masks/, unless the folder keeps its masks in labels/ already (find_pairs wants one)."""
    used = [m for m in MASK_FOLDERS if (folder / m).is_dir() and image_files(folder / m)]
    return used[0] if used else MASKS


def _free_name(stem: str, image_dir: Path, mask_dir: Path) -> str:
    taken = set()
    for d in (image_dir, mask_dir):
        if d.is_dir():
            for f in d.iterdir():
                s = f.stem
                taken.add(s[:-len(MASK_SUFFIX)] if s.endswith(MASK_SUFFIX) else s)
    for i in range(1, MAX_TRIES + 1):
        candidate = stem if i == 1 else f"{stem}-{i}"
        if candidate not in taken:
            return candidate
    raise FileExistsError(f"save for training: {image_dir} already holds {stem} and "
                          f"{MAX_TRIES - 1} numbered copies; choose another name or folder")
