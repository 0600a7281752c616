"""Training data read from disk one sample at a time, for sets larger than memory.

    from minunet.io.lazy import FolderSet, ZarrSet
    train_set = FolderSet("cells/", indices=range(20, 200))   # images/ + labels/
    train_set = ZarrSet("cells.zarr")                         # a training store
    mu.train(model, train_set, val_data, epochs=20, crop=128, ...)

`mu.train` takes these where it takes `(x, targets, weights)` arrays: it asks the set for
`training_arrays()`, three array-like views whose item i is sample i's normalised image
(1, H, W) float32, three-class target (H, W) int64 and weight map (H, W) float32: exactly the
rows `workflow.training_arrays` would hold in memory. The training loop draws the same shuffled
order, crops and augmentations from the same seed, so a run on a set that fits gives the same
weights either way (tested).

Two sets:
    FolderSet   a folder of images/NAME.tif and labels/NAME.tif (what `minunet generate` and
                `data.save_dataset` write). Each access reads the two files and computes the
                target and the weight map (a few ms to tens of ms for 256 x 256): nothing to
                prepare, slower per step.
    ZarrSet     a Zarr group holding x, targets, weights and labels, one chunk per sample,
                written once by `write_zarr_set` (streaming: one image in memory at a time).
                Reading a sample is one chunk read per array. Needs zarr (the `scale` extra).

Memory: one sample (the last one read is kept, since the loop asks for its image, target and
weight one after another) besides the batch being built.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.targets import three_class, weight_map
from ..predict import DEFAULT_NORMALIZATION, normalize
from .images import IMAGE_SUFFIXES, read_image

STORE_FORMAT = "minunet-training-store"
STORE_VERSION = 1

Sample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, targets, weights, labels


class LazySet:
    """Base: `__len__`, `shape` (H, W) and `_read(i) -> (x (1,H,W), t, w, labels)`."""

    shape: tuple[int, int]

    def __init__(self) -> None:
        self._cached: tuple[int, Sample] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def _read(self, i: int) -> Sample:
        raise NotImplementedError

    def sample(self, i: int) -> Sample:
        """(x (1, H, W) float32, targets (H, W) int64, weights (H, W) float32, labels)."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"{type(self).__name__}: sample {i} of {len(self)}")
        i %= len(self)
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self._read(i))
        return self._cached[1]

    def training_arrays(self) -> tuple[SampleView, SampleView, SampleView]:
        """What `mu.train` uses in place of (x, targets, weights)."""
        H, W = self.shape
        return (SampleView(self, 0, (len(self), 1, H, W), np.float32),
                SampleView(self, 1, (len(self), H, W), np.int64),
                SampleView(self, 2, (len(self), H, W), np.float32))

    def read_labels(self, i: int) -> np.ndarray:
        """Sample i's instance labels (H, W) int32 (subclasses read only them)."""
        return self.sample(i)[3]

    def split(self, n_first: int) -> tuple[LazySet, LazySet]:
        """(the first n_first samples, the rest) as two sets of the same kind."""
        raise NotImplementedError


class SampleView:
    """One of a set's arrays, read on demand: item i, a slice or an index array of samples."""

    def __init__(self, owner: LazySet, part: int, shape: tuple[int, ...], dtype: type) -> None:
        self.owner, self.part, self.shape, self.dtype = owner, part, shape, np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):   # view[i, ...]: the sample first, then the rest
            return self[index[0]][index[1:]]
        if isinstance(index, (int, np.integer)):
            return self.owner.sample(int(index))[self.part].astype(self.dtype, copy=False)
        which = np.arange(len(self))[index]
        return np.stack([self[int(i)] for i in which]) if len(which) else \
            np.empty((0, *self.shape[1:]), self.dtype)


def _sample_from(image: np.ndarray, labels: np.ndarray, normalization: dict[str, Any]
                 ) -> Sample:
    """The row `workflow.training_arrays` makes of one image and its labels."""
    x = normalize(image, normalization)[None]                # (1, H, W) float32
    return x, three_class(labels), weight_map(labels), labels


# ------------------------------------------------------------------------------ folders
class FolderSet(LazySet):
    """images/NAME and labels/NAME pairs in a folder (see the module docstring).

    indices: which of the sorted pairs belong to this set (e.g. range(n_val, n) for training)
    normalization: as stored with the model (default: predict's default)
    """

    def __init__(self, folder: str | Path, *, indices: Iterable[int] | None = None,
                 normalization: dict[str, Any] | None = None) -> None:
        super().__init__()
        root = Path(folder)
        images = _image_files(root / "images")
        labels = _image_files(root / "labels")
        if [f.name for f in images] != [f.name for f in labels]:
            raise ValueError(f"FolderSet: {root / 'images'} and {root / 'labels'} hold different "
                             "file names; each image needs a label image of the same name")
        if not images:
            raise ValueError(f"FolderSet: no images in {root / 'images'}")
        keep = list(range(len(images))) if indices is None else [int(i) for i in indices]
        self.images = [images[i] for i in keep]
        self.label_files = [labels[i] for i in keep]
        self.normalization = dict(DEFAULT_NORMALIZATION if normalization is None
                                  else normalization)
        self.shape = _common_shape(self.images + self.label_files)

    def __len__(self) -> int:
        return len(self.images)

    def read_labels(self, i: int) -> np.ndarray:
        return read_image(self.label_files[i]).astype(np.int32)

    def split(self, n_first: int) -> tuple[FolderSet, FolderSet]:
        first, rest = (FolderSet.__new__(FolderSet) for _ in range(2))
        for part, sl in ((first, slice(None, n_first)), (rest, slice(n_first, None))):
            LazySet.__init__(part)
            part.images, part.label_files = self.images[sl], self.label_files[sl]
            part.normalization, part.shape = self.normalization, self.shape
        return first, rest

    def _read(self, i: int) -> Sample:
        # as data.load_dataset reads them: images as float32, labels as int32
        image = read_image(self.images[i]).astype(np.float32)
        labels = read_image(self.label_files[i]).astype(np.int32)
        if labels.shape != self.shape or image.shape[:2] != self.shape:
            raise ValueError(f"FolderSet: {self.images[i]} or its labels do not have the "
                             f"set's shape {self.shape}")
        return _sample_from(image, labels, self.normalization)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"FolderSet: no folder {folder}; a training folder holds "
                                "images/ and labels/ with files of the same names")
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def _common_shape(files: Sequence[Path]) -> tuple[int, int]:
    """(H, W) shared by all files, read from their headers (TIFF) or the files themselves."""
    import tifffile

    shapes = set()
    for f in files:
        if f.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(f) as tif:
                shapes.add(tuple(tif.pages[0].shape[:2]))
        else:
            shapes.add(read_image(f).shape[:2])
    if len(shapes) != 1:
        raise ValueError(f"FolderSet: the images and labels must share one size to be batched, "
                         f"found {sorted(shapes)}; crop or pad them first")
    return shapes.pop()


# ------------------------------------------------------------------------------ zarr
class ZarrSet(LazySet):
    """A training store written by `write_zarr_set`; `indices` selects samples."""

    def __init__(self, path: str | Path, *, indices: Iterable[int] | None = None) -> None:
        super().__init__()
        import zarr

        self.path = Path(path)
        who = f"ZarrSet: {self.path}"
        if not self.path.is_dir():
            raise FileNotFoundError(f"{who} is not a folder; a training store is the Zarr "
                                    "folder write_zarr_set writes")
        try:
            group = zarr.open_group(str(self.path), mode="r")
        except Exception as err:  # no zarr.json / .zgroup, or a damaged one
            raise ValueError(f"{who} is not a Zarr group ({type(err).__name__}: {err}); write "
                             "a training store with write_zarr_set") from err
        attrs = dict(group.attrs)
        if attrs.get("format") != STORE_FORMAT or attrs.get("version") != STORE_VERSION:
            raise ValueError(f"ZarrSet: {self.path} is not a minunet training store (version "
                             f"{STORE_VERSION}); write one with write_zarr_set")
        self.arrays = _store_arrays(group, who)
        self.normalization = attrs.get("normalization")
        if self.normalization is not None and not isinstance(self.normalization, dict):
            raise ValueError(f"{who}: its 'normalization' attribute is "
                             f"{self.normalization!r}, not a dict of settings")
        n = self.arrays[0].shape[0]
        self.keep = np.arange(n) if indices is None else np.array([int(i) for i in indices],
                                                                  dtype=np.int64)
        if self.keep.size and not (0 <= self.keep.min() and self.keep.max() < n):
            raise IndexError(f"{who}: samples {self.keep.min()}..{self.keep.max()} asked for, "
                             f"the store holds {n}")
        self.shape = tuple(self.arrays[0].shape[2:])

    def __len__(self) -> int:
        return len(self.keep)

    def read_labels(self, i: int) -> np.ndarray:
        return np.asarray(self.arrays[3][int(self.keep[i])]).astype(np.int32)

    def split(self, n_first: int) -> tuple[ZarrSet, ZarrSet]:
        return (ZarrSet(self.path, indices=self.keep[:n_first]),
                ZarrSet(self.path, indices=self.keep[n_first:]))

    def _read(self, i: int) -> Sample:
        j = int(self.keep[i])
        x, t, w, lab = (a[j] for a in self.arrays)
        return (np.asarray(x, np.float32), np.asarray(t).astype(np.int64),
                np.asarray(w, np.float32), np.asarray(lab).astype(np.int32))


STORE_ARRAYS = ("x", "targets", "weights", "labels")


def _store_arrays(group: Any, who: str) -> list[Any]:
    """The store's four arrays, checked: all present, x (n, 1, H, W) and the others
    (n, H, W) of one n, H and W, real numbers."""
    present = {name for name, _ in group.arrays()}
    missing = [name for name in STORE_ARRAYS if name not in present]
    if missing:
        raise ValueError(f"{who}: the training store has no array {', '.join(missing)} (it "
                         f"holds {sorted(present) or 'none'}); it is incomplete or damaged: "
                         "write it again with write_zarr_set")
    arrays = [group[name] for name in STORE_ARRAYS]
    shapes = {name: tuple(int(s) for s in a.shape) for name, a in zip(STORE_ARRAYS, arrays,
                                                                       strict=True)}
    x = shapes["x"]
    want = {"x": x} if len(x) != 4 or x[1] != 1 else {
        "x": x, "targets": (x[0], *x[2:]), "weights": (x[0], *x[2:]), "labels": (x[0], *x[2:])}
    if len(x) != 4 or x[1] != 1 or any(shapes[k] != v for k, v in want.items()):
        raise ValueError(f"{who}: the arrays' shapes do not fit together ({shapes}); x must be "
                         "(n, 1, H, W) and targets, weights, labels (n, H, W), one n for all: "
                         "write the store again with write_zarr_set")
    for name, a in zip(STORE_ARRAYS, arrays, strict=True):
        if np.dtype(a.dtype).kind not in "biuf":
            raise ValueError(f"{who}: array '{name}' holds {a.dtype}, not numbers")
    return arrays


def write_zarr_set(path: str | Path, images: Iterable[np.ndarray],
                   labels: Iterable[np.ndarray], *, normalization: dict[str, Any] | None = None,
                   n: int | None = None) -> Path:
    """Write a training store: x, targets, weights, labels, one chunk per sample.

    images, labels: iterables of (H, W) arrays (e.g. generators reading files one by one), all
    of one size; n: their number if they have no len(). Streams: one sample in memory at a time.
    The store is written under a temporary name and renamed when complete.
    """
    import zarr

    from ..scaleout.common import (
        check_new_output,
        publish,
        remove,
        remove_stale_siblings,
        temporary_sibling,
    )

    path = Path(path)
    check_new_output(path, "write_zarr_set")
    remove_stale_siblings(path)  # stores a killed (kill -9) write left behind
    norm = dict(DEFAULT_NORMALIZATION if normalization is None else normalization)
    n = len(images) if n is None else n  # type: ignore[arg-type]
    tmp = temporary_sibling(path, ".zarr")
    try:
        group = zarr.open_group(str(tmp), mode="w-")
        arrays = None
        count = 0
        for image, lab in zip(images, labels, strict=True):
            x, t, w, lab = _sample_from(np.asarray(image), np.asarray(lab), norm)
            H, W = lab.shape
            if arrays is None:
                arrays = [group.create_array(name, shape=(n, *shape), dtype=dtype,
                                             chunks=(1, *shape))
                          for name, shape, dtype in (("x", (1, H, W), "float32"),
                                                     ("targets", (H, W), "uint8"),
                                                     ("weights", (H, W), "float32"),
                                                     ("labels", (H, W), "uint32"))]
            if count >= n:
                raise ValueError(f"write_zarr_set: more than n={n} samples given")
            if lab.shape != arrays[3].shape[1:]:
                raise ValueError(f"write_zarr_set: sample {count} has shape {lab.shape}, the "
                                 f"first had {arrays[3].shape[1:]}; all must share one size")
            for array, value in zip(arrays, (x, t, w, lab), strict=True):
                array[count] = value
            count += 1
        if count != n or arrays is None:
            raise ValueError(f"write_zarr_set: expected {n} samples, got {count}")
        group.attrs.update({"format": STORE_FORMAT, "version": STORE_VERSION,
                            "normalization": json.loads(json.dumps(norm))})
        publish(tmp, path)
    except OSError as err:  # a full disk: name the store; nothing of it is kept
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(err.errno, f"write_zarr_set: writing {path} failed ({err.strerror or err});"
                      " nothing of it was kept; free some disk space or write it elsewhere"
                      ) from err
    finally:
        remove(tmp)
    return path


# ------------------------------------------------------------------------------ the command
def training_split(source: str | Path, val_indices: Sequence[int],
                   normalization: dict[str, Any] | None) -> tuple[LazySet, tuple, np.ndarray,
                                                                  dict[str, int]]:
    """For `minunet train --lazy`: (training set read from disk, validation arrays in memory
    (x, targets, weights), validation labels, post-processing settings learned from the
    training labels). `val_indices` are the validation samples (the command's seeded draw);
    every other sample trains."""
    from ..workflow import postprocess_settings

    path = Path(source)
    if path.suffix == ".zarr":
        store = ZarrSet(path)
        stored = store.normalization
        if normalization is not None and stored != normalization:
            raise ValueError(f"train: {path} was written with normalisation {stored}, the run "
                             f"asks for {normalization}; write the store again with it")
        n = len(store)

        def subset(indices: list[int]) -> LazySet:
            return ZarrSet(path, indices=indices)
    else:
        n = len(FolderSet(path, normalization=normalization))

        def subset(indices: list[int]) -> LazySet:
            return FolderSet(path, indices=indices, normalization=normalization)
    held_out = set(int(i) for i in val_indices)
    val_set = subset(sorted(held_out))
    train_set = subset([i for i in range(n) if i not in held_out])
    x, t, w = val_set.training_arrays()
    val_data = (x[:], t[:], w[:])
    val_labels = np.stack([val_set.read_labels(i) for i in range(len(val_set))])
    post = postprocess_settings([train_set.read_labels(i) for i in range(len(train_set))])
    return train_set, val_data, val_labels, post


def sample_count(source: str | Path) -> int:
    """How many samples a training folder or store holds (without reading them)."""
    path = Path(source)
    return len(ZarrSet(path)) if path.suffix == ".zarr" else len(FolderSet(path))
