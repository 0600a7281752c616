"""Training data as labs keep it: find image / mask pairs in a folder, read and check them.

Layouts found (no manifest needed; `.tif`, `.tiff`, `.png`, `.npy`, any mix, any sizes):

    cells/images/a01.tif  +  cells/labels/a01.tif    `minunet generate`'s layout
    cells/images/a01.tif  +  cells/masks/a01.png     StarDist's (also masks/a01_masks.tif)
    cells/a01_img.tif     +  cells/a01_masks.tif     Cellpose's flat folder (suffixes settable)
    cells/a01.tif         +  cells/a01_masks.tif     Cellpose's default names

A mask (label image) is a 2-D image of whole, non-negative numbers: 0 background, k > 0 the
k-th object. Images may be gray or RGB(A) (converted to gray as `predict` does) and of
different sizes; each mask must have its image's height and width.

    pairs = find_pairs("cells")                    # [(image path, mask path), ...] by name
    images, labels = read_pairs(pairs)             # lists of arrays, every file checked
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .images import IMAGE_SUFFIXES, read_image

IMAGE_SUFFIX = "_img"      # Cellpose's image names: a01_img.tif (optional)
MASK_SUFFIX = "_masks"     # Cellpose's mask names: a01_masks.tif
MASK_FOLDERS = ("labels", "masks")
# Files beside the images that are neither images nor masks (Cellpose's outputs, minunet's).
IGNORED_SUFFIXES = ("_seg", "_flows", "_outlines", "_cp_output", "_overlay", "_probs")

LAYOUTS = (
    "images/ with labels/ or masks/ beside it (same names, or masks named NAME_masks), or one "
    "folder of NAME_img.tif + NAME_masks.tif pairs (Cellpose; --image-suffix, --mask-suffix)")


class DataError(ValueError):
    """A training folder that cannot be used; the message names the files and what to do."""


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name (hidden files skipped)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.suffix.lower() in IMAGE_SUFFIXES)


def is_output_or_mask(path: Path, mask_suffix: str = MASK_SUFFIX) -> bool:
    """True for Cellpose masks/outputs and minunet's overlays/probabilities beside images."""
    return path.stem.endswith((mask_suffix, *IGNORED_SUFFIXES))


def find_pairs(root: str | Path, *, image_suffix: str = IMAGE_SUFFIX,
               mask_suffix: str = MASK_SUFFIX) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs of a training folder in any layout above, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"training data {root} is not a folder; expected {LAYOUTS}")
    if root.name in (*MASK_FOLDERS, "images") and (root.parent / "images").is_dir():
        root = root.parent  # given images/ (or masks/) itself: use the folder holding both
    if (root / "images").is_dir():
        masks = [root / m for m in MASK_FOLDERS if (root / m).is_dir()]
        if not masks:
            raise DataError(f"{root / 'images'} has no labels/ or masks/ folder beside it; put "
                            f"the label images there under the images' names")
        with_files = [m for m in masks if image_files(m)]
        if len(with_files) > 1:
            raise DataError(f"{root} has both labels/ and masks/; keep one of them")
        mask_dir = (with_files or masks)[0]
        return _pair(image_files(root / "images"), image_files(mask_dir), root / "images",
                     mask_dir, image_suffix, mask_suffix)
    files = image_files(root)
    masks = [f for f in files if f.stem.endswith(mask_suffix)]
    if not masks:
        raise DataError(f"{root} holds no training pairs: expected {LAYOUTS}; found "
                        f"{len(files)} image files and no file named *{mask_suffix}.*")
    images = [f for f in files if not is_output_or_mask(f, mask_suffix)]
    if any(f.stem.endswith(image_suffix) for f in images) and image_suffix:
        images = [f for f in images if f.stem.endswith(image_suffix)]
    return _pair(images, masks, root, root, image_suffix, mask_suffix)


def _key(path: Path, suffix: str) -> str:
    stem = path.stem
    return stem[:-len(suffix)] if suffix and stem.endswith(suffix) else stem


def _by_key(files: Sequence[Path], suffix: str, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in files:
        key = _key(f, suffix)
        if key in found:
            raise DataError(f"{found[key]} and {f} are both the {what} '{key}'; keep one")
        found[key] = f
    return found


def _pair(images: Sequence[Path], masks: Sequence[Path], image_dir: Path, mask_dir: Path,
          image_suffix: str, mask_suffix: str) -> list[tuple[Path, Path]]:
    by_image = _by_key(images, image_suffix, "image")
    by_mask = _by_key(masks, mask_suffix, "mask")
    if not by_image:
        raise DataError(f"no images in {image_dir} (looked for {', '.join(IMAGE_SUFFIXES)})")
    lonely = sorted(set(by_image) - set(by_mask))
    orphans = sorted(set(by_mask) - set(by_image))
    if lonely or orphans:
        parts = []
        if lonely:
            parts.append(f"{len(lonely)} images have no mask in {mask_dir} "
                         f"({', '.join(by_image[k].name for k in lonely[:3])}, ...)")
        if orphans:
            parts.append(f"{len(orphans)} masks have no image in {image_dir} "
                         f"({', '.join(by_mask[k].name for k in orphans[:3])}, ...)")
        raise DataError("; ".join(parts) + f". Masks are named as their images (or "
                        f"NAME{mask_suffix}); rename the files or set --mask-suffix / "
                        f"--image-suffix")
    return [(by_image[k], by_mask[k]) for k in sorted(by_image)]


def read_labels(path: Path) -> np.ndarray:
    """A mask file -> (H, W) int32 instance labels; whole, non-negative numbers only."""
    labels = read_image(path)
    if labels.ndim != 2:
        raise DataError(f"{path}: a mask must be a 2-D label image, got shape {labels.shape} "
                        "(an RGB picture of the masks will not do; save the label image)")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise DataError(f"{path}: a mask must hold whole numbers (object ids), got "
                            f"fractions or NaN in a {labels.dtype} image")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: a mask holds negative ids (min {labels.min()}); ids are 0 "
                        "(background) or positive")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise DataError(f"{path}: ids above {np.iinfo(np.int32).max}")
    return labels.astype(np.int32)


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask, checked; errors name the file. Labels (H, W) int32.
    `read_pairs` and the lazy training sets both read through this."""
    image = read_image(image_path)
    labels = read_labels(mask_path)
    if image.shape[:2] != labels.shape:
        raise DataError(f"{image_path} is {image.shape[0]}x{image.shape[1]} but its mask "
                        f"{mask_path} is {labels.shape[0]}x{labels.shape[1]}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise DataError(f"{image_path}: holds NaN or inf values; fix or remove it")
    return image, labels


def read_pairs(pairs: Sequence[tuple[Path, Path]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read every pair; all problems are collected and reported together, by file name."""
    images, labels, problems = [], [], []
    for image_path, mask_path in pairs:
        try:
            image, mask = read_pair(image_path, mask_path)
        except (ValueError, OSError) as err:
            problems.append(str(err))
            continue
        images.append(image)
        labels.append(mask)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise DataError(f"{len(problems)} of {len(pairs)} training pairs cannot be used{more}:\n  "
                        + "\n  ".join(problems[:10]))
    return images, labels
