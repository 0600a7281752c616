"""A run's training data: where it is, what it holds, whether it is still the same.

    source = data_folder(config, run)           # the folder (or .zarr store) of a run
    pairs = find(source, config, run)           # (image, mask) files, every layout
    images, labels, digests = read(pairs, source)          # in memory, every file checked
    shapes, digests = scan(pairs, source)                  # --lazy: checked one at a time

A digest is the SHA-256 of a file's bytes, computed once when the run starts and stored in
config.json (`data_digests`: name -> image digest + mask digest); a resumed run compares them
and refuses data that changed under the same names.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import folders
from .settings import MIN_VALIDATION_IMAGES, RunError

CHUNK = 1 << 20  # bytes hashed at a time


def check_given(data: str | os.PathLike) -> None:
    """A --data the user gave this time must exist: say so in their words, not as a run whose
    data moved (data_folder's message, for a run resumed without --data)."""
    if not Path(data).exists():
        raise RunError(f"--data {data}: no such folder or .zarr store; give the training "
                       f"folder: {folders.LAYOUTS}")


def data_folder(config: dict[str, Any], run: Path) -> Path:
    """The training data of a run: its absolute path, else the same place relative to the run
    (a run moved with its data); never relative to the current folder."""
    data = Path(config["data"])
    if data.exists() and not data.is_dir():
        raise RunError(f"--data {data} is a file; give the folder that holds the images and "
                       f"masks ({folders.LAYOUTS})")
    if data.is_absolute():
        if data.is_dir():
            return data
        relative = config.get("data_relative_to_run")
        if relative and (run / relative).is_dir():
            return (run / relative).resolve()
        raise RunError(f"the run's training data {data} is gone (nor is it at {run}/"
                       f"{relative}); give --data FOLDER to say where it is now")
    if run.exists() and (run / "config.json").exists():  # an old run: a path of unknown origin
        raise RunError(f"{run / 'config.json'} names its data as '{data}', relative to a "
                       f"folder it did not record; give --data FOLDER to say which")
    return data


def find(root: Path, config: dict[str, Any], run: Path) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of a training folder; the run may not live among them."""
    try:
        pairs = folders.find_pairs(root, image_suffix=config["image_suffix"],
                                   mask_suffix=config["mask_suffix"])
    except folders.DataError as err:
        raise RunError(f"--data {root}: {err}") from err
    if run.resolve() in {f.parent.resolve() for pair in pairs for f in pair}:
        raise RunError(f"--out {run} is a folder of the training data; the run's files would "
                       "mix with the images: give the run a folder of its own")
    return pairs


def names_of(pairs: Sequence[tuple[Path, Path]], root: Path) -> list[str]:
    return [str(image.relative_to(root)) for image, _ in pairs]


def read(pairs: Sequence[tuple[Path, Path]], root: Path
         ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, str]]:
    """Every pair in memory, checked (all problems reported together), with its digests."""
    try:
        images, labels = folders.read_pairs(pairs)
    except folders.DataError as err:
        raise RunError(f"--data {root}: {err}") from err
    return images, labels, digests(pairs, root)


def scan(pairs: Sequence[tuple[Path, Path]], root: Path
         ) -> tuple[list[tuple[int, int]], dict[str, str]]:
    """--lazy: read and check every pair once, one at a time (as `read` checks them):
    (each image's (H, W), digests). Problems are collected and reported together."""
    from ..io.folders import read_pair

    shapes, problems = [], []
    for image_path, mask_path in pairs:
        try:
            image, _ = read_pair(image_path, mask_path)
            shapes.append(image.shape[:2])
        except (ValueError, OSError) as err:
            problems.append(str(err))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise RunError(f"--data {root}: {len(problems)} of {len(pairs)} training pairs cannot "
                       f"be used{more}:\n  " + "\n  ".join(problems[:10]))
    return shapes, digests(pairs, root)


def digests(pairs: Sequence[tuple[Path, Path]], root: Path) -> dict[str, str]:
    """name -> 'IMAGE_SHA256 MASK_SHA256' of each pair's files."""
    return {name: f"{file_digest(image)} {file_digest(mask)}"
            for name, (image, mask) in zip(names_of(pairs, root), pairs, strict=True)}


def store_digests(store: Path) -> dict[str, str]:
    """A .zarr training store: relative path -> SHA-256 of every file in it."""
    return {str(f.relative_to(store)): file_digest(f)
            for f in sorted(store.rglob("*")) if f.is_file()}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check_unchanged(config: dict[str, Any], found: dict[str, str], root: Path,
                    run: Path) -> None:
    """A resumed run must see the data it started with (names and contents)."""
    stored = config.get("data_digests")
    if stored is None:  # a run of an earlier minunet: only the names were kept
        names = config.get("image_names")
        if names is not None and sorted(names) != sorted(found):
            raise RunError(f"--resume {run}: the training data in {root} changed since the run "
                           f"started ({len(names)} images then, {len(found)} now); start a "
                           "new run with --out")
        return
    gone = sorted(set(stored) - set(found))
    new = sorted(set(found) - set(stored))
    changed = sorted(k for k in set(stored) & set(found) if stored[k] != found[k])
    if gone or new or changed:
        parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                 for v, what in ((changed, "changed"), (gone, "gone"), (new, "new")) if v]
        raise RunError(f"--resume {run}: the training data in {root} is not what the run "
                       f"started with: {'; '.join(parts)}. Resume with the original files, or "
                       f"start a new run with --out")


def validation_draw(n: int, fraction: float, seed: int, *, chosen: bool) -> list[int]:
    """A seeded random draw of round(n * fraction) images (at least 1), in index order.

    With fewer than MIN_VALIDATION_IMAGES images and no fraction chosen by the user, none
    are held out (every image is needed to train); `fraction` 0 also holds out none."""
    if fraction == 0 or (n < MIN_VALIDATION_IMAGES and not chosen):
        return []
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise RunError(f"{n} images are too few to hold out {n_val} for validation; add "
                       "images, lower --val-fraction, or give --val-fraction 0 to hold out "
                       "none")
    rng = np.random.default_rng([seed, n])
    return sorted(int(i) for i in rng.permutation(n)[:n_val])


def check_sizes(crop: int, depth: int, train: Sequence[tuple[tuple[int, int], str]],
                val: Sequence[tuple[tuple[int, int], str]]) -> None:
    """Refuse training images smaller than the crop and validation images smaller than the
    pooling grid, naming them; (shape, name) pairs."""
    mult = 2 ** depth
    small = [(min(shape), name) for shape, name in train if min(shape) < crop]
    if small:
        side, name = min(small)
        fit = side // mult * mult
        hint = f"lower --crop to {fit} or less" if fit >= mult else "remove it"
        raise RunError(f"{len(small)} training images are smaller than --crop {crop} (the "
                       f"smallest, {name}, has a side of {side}); {hint}")
    tiny = [name for shape, name in val if min(shape) < mult]
    if tiny:
        raise RunError(f"validation images smaller than 2**depth = {mult} pixels: "
                       f"{', '.join(tiny[:3])}; remove them or lower --depth")


def read_channels(pairs: Sequence[tuple[Path, Path]], root: Path, channels: list[int]
                  ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, str]]:
    """train --channels: each image's chosen channels, channels last (H, W, C), its mask and
    the digests; problems collected and reported together, by file name."""
    from ..io.images import read_image_file

    images, labels, problems = [], [], []
    for image_path, mask_path in pairs:
        try:
            image = read_image_file(image_path)
            if image.n_planes != 1:
                raise ValueError(f"{image_path} is a stack of {image.n_planes} planes; train on "
                                 "2-D images (one plane per file)")
            picked = np.stack([image.select(c)[0][0] for c in channels], axis=-1)  # (H, W, C)
            mask = folders.read_labels(mask_path)
            if picked.shape[:2] != mask.shape:
                raise ValueError(f"{image_path} is {picked.shape[0]}x{picked.shape[1]} but its "
                                 f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]}")
        except (ValueError, OSError) as err:
            problems.append(str(err))
            continue
        images.append(picked)
        labels.append(mask)
    if problems:
        raise RunError(f"--data {root}: {len(problems)} of {len(pairs)} training pairs cannot "
                       "be used with --channels:\n  " + "\n  ".join(problems[:10]))
    return images, labels, digests(pairs, root)


def channel_samples(images: list, labels: list, norm: dict[str, Any], names: list[str]
                    ) -> tuple[list, list, list]:
    """`workflow.training_samples` for images (H, W, C): x (C, H, W), each channel normalised
    on its own, as `inference.segment` does for a model of several input channels."""
    from ..data import three_class, weight_map
    from ..predict import normalize_channels

    x = [normalize_channels(im, norm, who=name) for im, name in zip(images, names, strict=True)]
    t = [three_class(lab[None])[0] for lab in labels]
    w = [weight_map(lab[None])[0] for lab in labels]
    return x, t, w
