"""Large images read window by window: tiled TIFF, Zarr (OME-Zarr included) and .npy.

    image = open_large(path)          # nothing is read yet
    image.shape, image.dtype          # (H, W) or (H, W, 3|4)
    window = image.read(r0, r1, c0, c1)   # only the tiles / chunks that cover it are decoded

A TIFF is read through tifffile's Zarr view of its tiles (`imread(aszarr=True)`); an
uncompressed one is memory-mapped. An OME-Zarr group is read at its full resolution (the first
dataset of its first multiscale); leading axes of length one (t, c, z) are dropped. A source is
described by plain values (`path`, `key`), so a worker of a cluster can open it by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class LargeImage:
    """A 2-D image on disk, read by windows. `array` is anything sliceable (zarr, memmap)."""

    path: Path
    array: Any
    shape: tuple[int, ...]
    dtype: np.dtype
    lead: int  # leading length-1 axes dropped from the stored array

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Pixels [r0, r1) x [c0, c1) as stored: (h, w) or (h, w, C)."""
        index = (0,) * self.lead + (slice(r0, r1), slice(c0, c1))
        try:
            return np.asarray(self.array[index])
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # zlib.error, a codec's error, a missing chunk file, ...
            raise ValueError(f"{self.path}: rows {r0}:{r1}, columns {c0}:{c1} cannot be read "
                             f"({type(err).__name__}: {err}); the file is damaged or "
                             "incomplete: write it again") from err


def open_large(path: str | Path, key: str | None = None) -> LargeImage:
    """Open a tiled TIFF, a Zarr array or group (OME-Zarr), or an .npy file for window reads.

    key: the array inside a Zarr group (default: OME-Zarr's full-resolution dataset, or the
    group's only array).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if not (p.is_dir() or p.is_file()):  # stat only: opening a FIFO would block for ever
        raise ValueError(f"{p} is not a regular file (a FIFO, a device or a socket); give the "
                         "image file itself")
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        try:
            array = _open_tiff(p)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:
            raise ValueError(f"{p} cannot be read as a TIFF ({type(err).__name__}: {err})"
                             ) from err
    elif suffix == ".npy":
        array = np.load(p, mmap_mode="r", allow_pickle=False)
    elif p.is_dir():
        if not any((p / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup")):
            raise ValueError(f"{p} is a folder, not a Zarr store (no zarr.json, .zarray or "
                             ".zgroup in it); for a folder of images, predict without "
                             "--chunked (or give each large image itself)")
        array = _open_zarr(p, key)
    else:
        raise ValueError(f"{p}: not a large-image format minunet reads; use a TIFF, a Zarr "
                         "folder (OME-Zarr included) or an .npy file")
    shape = tuple(int(s) for s in array.shape)
    lead = 0
    while len(shape) - lead > 2 and shape[lead] == 1 and not _is_color(shape[lead:]):
        lead += 1
    image_shape = shape[lead:]
    if not (len(image_shape) == 2 or _is_color(image_shape)):
        raise ValueError(f"{p}: array of shape {shape} is not one 2-D image (H, W) or RGB(A) "
                         "(H, W, 3|4); for several channels or planes, pick one with `key` or "
                         "save it as its own array")
    dtype = np.dtype(array.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
            or dtype.kind == "b"):
        raise ValueError(f"{p}: holds {dtype} values, not an image")
    return LargeImage(p, array, image_shape, dtype, lead)


def _is_color(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 and shape[2] in (3, 4)


def _open_tiff(p: Path) -> Any:
    import tifffile

    with tifffile.TiffFile(p) as tif:
        memmappable = tif.pages[0].is_memmappable
    if memmappable:  # uncompressed and contiguous: the OS pages it in as needed
        return tifffile.memmap(p, mode="r")
    import zarr

    return zarr.open(tifffile.imread(p, aszarr=True), mode="r")


def _open_zarr(p: Path, key: str | None) -> Any:
    import zarr

    try:
        node = zarr.open(p, mode="r")
    except Exception as err:  # a damaged zarr.json / .zgroup
        raise ValueError(f"{p}: the Zarr store cannot be opened ({type(err).__name__}: {err})"
                         ) from err
    if isinstance(node, zarr.Array):
        return node
    arrays = sorted(name for name, _ in node.arrays())
    if key is not None:
        return _member(node, p, key, arrays, "key")
    attrs = dict(node.attrs)
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}
    multiscales = attrs.get("multiscales") or ome.get("multiscales")
    if multiscales:  # OME-NGFF 0.4 (.zattrs) or 0.5 (attributes under "ome")
        try:
            path = str(multiscales[0]["datasets"][0]["path"])
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{p}: its OME-Zarr 'multiscales' metadata names no dataset "
                             f"path ({type(err).__name__}: {err})") from err
        return _member(node, p, path, arrays, "its OME-Zarr metadata")
    if len(arrays) == 1:
        return node[arrays[0]]
    raise ValueError(f"{p}: a Zarr group with arrays {sorted(arrays)} and no OME multiscales; "
                     "say which one with key=...")


def _member(node: Any, p: Path, name: str, arrays: list[str], who: str) -> Any:
    """The array `name` of a Zarr group, or an error naming the store and what it holds."""
    try:
        return node[name]
    except Exception as err:
        raise ValueError(f"{p}: {who} names the array '{name}', which the store does not hold "
                         f"(it holds {arrays or 'no arrays'}); the store is incomplete or "
                         "names the wrong dataset") from err
