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
    FolderSet   a training folder in any layout `minunet train --data` takes (images/ with
                labels/ or masks/, Cellpose's flat folders). Each access reads the two files
                (the mask checked as `folders.read_labels` checks it) and computes the
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
from .folders import IMAGE_SUFFIX, MASK_SUFFIX, find_pairs, read_labels, read_pair
from .images import read_image

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
        H, W = self.shape or (None, None)  # None: the samples differ in size
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
    """Image / mask pairs of a training folder in any layout `minunet.io.folders` finds
    (images/ + labels/ or masks/, Cellpose's flat folders; see the module docstring).

    indices: which of the sorted pairs belong to this set (e.g. range(n_val, n) for training)
    normalization: as stored with the model (default: predict's default)
    image_suffix, mask_suffix: Cellpose's file names (as `folders.find_pairs`)
    Every mask is checked as it is read (whole, non-negative ids), every image for NaN; an
    error names the file. `shape` is None when the images differ in size (then train with a
    crop, and validate on arrays).
    """

    def __init__(self, folder: str | Path, *, indices: Iterable[int] | None = None,
                 normalization: dict[str, Any] | None = None,
                 image_suffix: str = IMAGE_SUFFIX, mask_suffix: str = MASK_SUFFIX) -> None:
        super().__init__()
        pairs = find_pairs(folder, image_suffix=image_suffix, mask_suffix=mask_suffix)
        keep = list(range(len(pairs))) if indices is None else [int(i) for i in indices]
        self.images = [pairs[i][0] for i in keep]
        self.label_files = [pairs[i][1] for i in keep]
        self.normalization = dict(DEFAULT_NORMALIZATION if normalization is None
                                  else normalization)
        self.shape = _common_shape(self.images + self.label_files)

    def __len__(self) -> int:
        return len(self.images)

    def read_labels(self, i: int) -> np.ndarray:
        return read_labels(self.label_files[i])

    def split(self, n_first: int) -> tuple[FolderSet, FolderSet]:
        first, rest = (FolderSet.__new__(FolderSet) for _ in range(2))
        for part, sl in ((first, slice(None, n_first)), (rest, slice(n_first, None))):
            LazySet.__init__(part)
            part.images, part.label_files = self.images[sl], self.label_files[sl]
            part.normalization, part.shape = self.normalization, self.shape
        return first, rest

    def _read(self, i: int) -> Sample:
        image, labels = read_pair(self.images[i], self.label_files[i])
        return _sample_from(image.astype(np.float32), labels, self.normalization)


def _common_shape(files: Sequence[Path]) -> tuple[int, int] | None:
    """(H, W) shared by all files, read from their headers (TIFF) or the files themselves;
    None when they differ."""
    import tifffile

    shapes = set()
    for f in files:
        if f.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(f) as tif:
                shapes.add(tuple(tif.pages[0].shape[:2]))
        else:
            shapes.add(read_image(f).shape[:2])
    return shapes.pop() if len(shapes) == 1 else None


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
def open_set(source: str | Path, normalization: dict[str, Any] | None, *,
             image_suffix: str = IMAGE_SUFFIX, mask_suffix: str = MASK_SUFFIX) -> LazySet:
    """For `minunet train --lazy`: the whole training folder (any layout) or `.zarr` store
    (whose stored normalisation must be the run's)."""
    path = Path(source)
    if path.suffix == ".zarr":
        store = ZarrSet(path)
        if normalization is not None and store.normalization != normalization:
            raise ValueError(f"train: {path} was written with normalisation "
                             f"{store.normalization}, the run asks for {normalization}; write "
                             f"the store again with it")
        return store
    return FolderSet(path, normalization=normalization, image_suffix=image_suffix,
                     mask_suffix=mask_suffix)


def subset(whole: LazySet, indices: Sequence[int]) -> LazySet:
    """The samples `indices` of a set opened by `open_set`, as a set of the same kind."""
    if isinstance(whole, ZarrSet):
        return ZarrSet(whole.path, indices=[int(whole.keep[i]) for i in indices])
    part = FolderSet.__new__(FolderSet)
    LazySet.__init__(part)
    part.images = [whole.images[i] for i in indices]
    part.label_files = [whole.label_files[i] for i in indices]
    part.normalization, part.shape = whole.normalization, whole.shape
    return part
