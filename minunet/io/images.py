"""Reading images as microscopes write them (TIFF, OME-TIFF, ImageJ hyperstacks, PNG, NPY), their
pixel size, and writing label TIFFs.

    image = read_image_file("slide.ome.tif")         # an ImageFile: pixels sorted into
    image.data.shape                                 # (P, H, W, C) planes, rows, columns, channels
    planes, note = image.select(channel="DAPI")      # (P, H, W) raw planes of one channel

How axes are told apart (docs/images.md): an OME-TIFF's or ImageJ TIFF's own axes (T, Z planes;
C channels; S colour samples) when the file declares them; otherwise the rule for plain arrays in
`plain_axes`. `read_image` keeps the strict 2-D reader that training folders use.

`write_labels` writes int32 label TIFFs that napari opens as Labels and Fiji as a 32-bit image,
with the input's pixel size and z spacing in ImageJ's description (see docs/images.md for why
int32 and not ImageJ's own uint16).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .files import write_atomic

MAX_LABEL = np.iinfo(np.uint16).max     # the generator's data sets store uint16 labels
MAX_LABEL_ID = np.iinfo(np.int32).max   # predicted label TIFFs are int32
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
MAX_PLAIN_CHANNELS = 4   # a plain array's short axis of up to 4 is channels, a longer one planes
PLANE_AXES = "TZ"        # time points and z planes: each is segmented on its own
KNOWN_AXES = "TZCSYX"    # the axis letters of OME and ImageJ files this reader sorts

PixelSize = tuple[float, float, str]  # (y size, x size, unit), e.g. (0.25, 0.25, "um")


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D image as stored: (H, W) gray or (H, W, 3|4) RGB/RGBA, any integer or float
    dtype (8-/16-bit, float). No conversion or normalisation happens here. (Channels and stacks:
    `read_image_file`.)"""
    path = Path(path)
    return _check_image(path, _read_array(path)[0])


def _read_array(path: Path) -> tuple[np.ndarray, str | None]:
    """The pixels of `path` and the axes its metadata declares (None: no metadata)."""
    if not path.exists():
        raise FileNotFoundError(f"read_image: no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"read_image: {path} is a folder, not an image file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"read_image: {path} is not an image file this reader knows; "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}")
    axes = None
    try:
        if suffix in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                array = series.asarray()
                if tif.is_ome or tif.is_imagej or set(series.axes) <= set(KNOWN_AXES):
                    axes = series.axes
        elif suffix == ".png":
            from PIL import Image
            with Image.open(path) as im:
                array = np.asarray(im)
        else:
            array = np.load(path, allow_pickle=False)
    except Exception as err:        # every reader has its own errors; name the file in one
        raise ValueError(f"read_image: cannot read {path} as {suffix[1:].upper()}: "
                         f"{type(err).__name__}: {err}") from err
    return np.asarray(array), axes


def _check_image(path: Path, array: np.ndarray) -> np.ndarray:
    array = _check_dtype(path, array)
    is_gray = array.ndim == 2
    is_color = array.ndim == 3 and array.shape[2] in (3, 4)
    if not (is_gray or is_color) or min(array.shape[:2]) < 1:
        raise ValueError(f"read_image: {path} has shape {array.shape}; expected a 2-D gray "
                         "image (H, W) or an RGB/RGBA image (H, W, 3|4)")
    return array


def _check_dtype(path: Path | str, array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"read_image: {path} holds {array.dtype} values, not an image")
    return array


# ------------------------------------------------------------------ any layout
@dataclass
class ImageFile:
    """An image with its axes sorted: data (P, H, W, C), P planes (z or time, 1 for a 2-D
    image), C channels (1 gray; 3 or 4 colour samples when `rgb`; else fluorescence channels)."""

    data: np.ndarray
    plane_axes: str = ""                       # e.g. "Z", "T", "TZ"; "" for one plane
    plane_shape: tuple[int, ...] = ()          # sizes of plane_axes (their product is P)
    rgb: bool = False
    channel_names: tuple[str, ...] = ()        # as the file names them (OME), else ()
    pixel_size: PixelSize | None = None
    z_spacing: float | None = None             # distance between z planes, in pixel_size's unit
    axes: str = ""                             # the axes as read, e.g. "ZCYX"
    source: str = "image"                      # the file's name, for messages

    @property
    def n_planes(self) -> int:
        return self.data.shape[0]

    @property
    def n_channels(self) -> int:
        return self.data.shape[3]

    def channel_index(self, channel: int | str) -> int:
        """A channel's index from its 0-based number or its name."""
        names = ", ".join(f"{i} '{n}'" for i, n in enumerate(self.channel_names)) or \
            f"0..{self.n_channels - 1}"
        if isinstance(channel, str) and not channel.lstrip("-").isdigit():
            lowered = [n.lower() for n in self.channel_names]
            if channel.lower() not in lowered:
                raise ValueError(f"{self.source}: no channel named {channel!r}; its channels "
                                 f"are {names}")
            return lowered.index(channel.lower())
        index = int(channel)
        if not 0 <= index < self.n_channels:
            raise ValueError(f"{self.source}: channel {index} does not exist; it has "
                             f"{self.n_channels} channel(s) ({names}), numbered from 0")
        return index

    def select(self, channel: int | str | None = None, plane: int | None = None
               ) -> tuple[np.ndarray, str | None]:
        """The raw planes to segment and a note for the user (None when nothing was guessed):
        (P, H, W) of one channel, or (P, H, W, 3|4) colour for luminance when an RGB image
        has no channel chosen. `plane` keeps that one plane (P = 1)."""
        data = self.data
        if plane is not None:
            if not -self.n_planes <= plane < self.n_planes:
                raise ValueError(f"{self.source}: plane {plane} does not exist; it has "
                                 f"{self.n_planes} plane(s) ({self.plane_axes or 'one'}), "
                                 "numbered from 0")
            plane %= self.n_planes
            data = data[plane:plane + 1]
        if channel is not None:
            return data[..., self.channel_index(channel)], None
        if self.n_channels == 1:
            return data[..., 0], None
        if self.rgb:
            return data, (f"{self.source}: RGB image turned to gray (luminance); give "
                          "--channel N (channel= in Python) to use one colour, e.g. 2 for blue")
        names = f" ('{self.channel_names[0]}')" if self.channel_names else ""
        return data[..., 0], (f"{self.source}: {self.n_channels} channels; using channel "
                              f"0{names}; choose the nuclear one with --channel N "
                              "(channel= in Python)")


def plain_axes(shape: tuple[int, ...]) -> str:
    """The axes of an array without metadata (singleton axes already dropped):

        (H, W)                    YX     gray
        (H, W, 3|4)               YXS    RGB / RGBA (luminance unless a channel is chosen)
        (H, W, 2)                 YXC    channels last (a last axis of at most 4, shorter
                                         than both image sides)
        (C, H, W),  C <= 4        CYX    channels first
        (Z, H, W),  Z > 4         ZYX    a z-stack or time series
        (Z, H, W, C), C <= 4      ZYXC   (ZYXS for 3 or 4)
        (Z, C, H, W), C <= 4      ZCYX
    A 3-plane stack without metadata thus reads as 3 channels: save it as an ImageJ or OME
    TIFF (axes ZYX), or pick planes yourself in Python."""
    def last_short(n: int) -> bool:
        return shape[-1] <= MAX_PLAIN_CHANNELS and shape[-1] < min(shape[-3], shape[-2])

    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if last_short(3):
            return "YXS" if shape[-1] in (3, 4) else "YXC"
        return "CYX" if shape[0] <= MAX_PLAIN_CHANNELS else "ZYX"
    if len(shape) == 4:
        if last_short(4):
            return "ZYXS" if shape[-1] in (3, 4) else "ZYXC"
        if shape[1] <= MAX_PLAIN_CHANNELS:
            return "ZCYX"
    raise ValueError(f"an array of shape {shape} has no axes this reader can guess; save it "
                     "as an OME-TIFF or ImageJ TIFF that names its axes (e.g. ZCYX)")


def image_from_array(array: np.ndarray, axes: str | None = None, *, source: str = "image",
                     **info: Any) -> ImageFile:
    """Sort an array's axes into an ImageFile. axes: its axis letters (T, Z planes; C
    channels; S colour samples; Y, X), or None for the rule of `plain_axes`."""
    array = _check_dtype(source, np.asarray(array))
    if axes is not None:
        axes = axes.upper()
        if len(axes) != array.ndim or not set(axes) <= set(KNOWN_AXES) \
                or len(set(axes)) != len(axes):
            axes = None   # letters this reader cannot sort (Q, I, ...): guess as plain
    if axes is None:
        keep = [i for i, n in enumerate(array.shape) if n > 1]
        if len(keep) < 2:
            keep = list(range(array.ndim))[-2:]
        array = array.reshape([array.shape[i] for i in keep])
        try:
            axes = plain_axes(array.shape)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{source}: axes {axes} have no Y and X; not an image")
    if "C" in axes and "S" in axes:
        raise ValueError(f"{source}: both channels and colour samples ({axes}): not supported; "
                         "save one channel per file")
    color = "S" if "S" in axes else "C" if "C" in axes else ""
    planes = "".join(a for a in axes if a in PLANE_AXES)
    order = [axes.index(a) for a in planes + "YX" + color]
    data = array.transpose(order)
    plane_shape = tuple(data.shape[:len(planes)])
    H, W = data.shape[len(planes):len(planes) + 2]
    data = data.reshape(int(np.prod(plane_shape, dtype=int)), H, W, -1)   # (P, H, W, C)
    rgb = color == "S" and data.shape[3] in (3, 4)
    names = tuple(info.pop("channel_names", ()) or ())
    if len(names) != data.shape[3]:
        names = ()
    return ImageFile(data, planes, plane_shape, rgb, names, axes=axes, source=source, **info)


def read_image_file(path: str | Path, axes: str | None = None) -> ImageFile:
    """Read an image of any layout: 2-D, RGB(A), channels, z-stacks and time series, with its
    pixel size, z spacing and channel names (OME). axes: override the file's axes (letters of
    TZCSYX, one per axis of the stored array)."""
    path = Path(path)
    array, declared = _read_array(path)
    if axes is not None and (len(axes) != array.ndim or not set(axes.upper()) <= set(KNOWN_AXES)
                             or len(set(axes.upper())) != len(axes)):
        raise ValueError(f"{path}: --axes {axes} does not fit its stored array of shape "
                         f"{array.shape} (give one letter per axis from {KNOWN_AXES}, "
                         f"e.g. {'ZYX' if array.ndim == 3 else 'ZCYX'})")
    meta = read_metadata(path)
    return image_from_array(array, axes or declared, source=str(path), **meta)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """{"pixel_size", "z_spacing", "channel_names"} a TIFF declares (OME-XML first, then ImageJ's
    description and the TIFF resolution tags); empty for other files or unreadable metadata."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return {}
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                found = _ome_metadata(tif.ome_metadata)
                if found.get("pixel_size"):
                    return found
            else:
                found = {}
            size = _tag_pixel_size(tif)
            spacing = None
            if tif.is_imagej and tif.imagej_metadata and "spacing" in tif.imagej_metadata:
                spacing = float(tif.imagej_metadata["spacing"])
                if size is not None:
                    spacing *= _UNITS.get(_unit_key(tif.imagej_metadata.get("unit", "")),
                                          (1.0, ""))[0]
            return {**found, "pixel_size": size, "z_spacing": spacing}
    except Exception:  # a pixel size is a courtesy: never fail a prediction over it
        return {}


def read_pixel_size(path: str | Path) -> PixelSize | None:
    """The pixel size a TIFF declares (OME-XML, ImageJ's or the TIFF resolution tags), else
    None. Lengths in micrometres ("um") when the file's unit is one of m, cm, mm, um, nm, inch."""
    return read_metadata(path).get("pixel_size")


# unit as files write it -> (micrometres per unit, "um"); other units are kept as they are
_UNITS = {"m": (1e6, "um"), "cm": (1e4, "um"), "mm": (1e3, "um"), "um": (1.0, "um"),
          "nm": (1e-3, "um"), "inch": (25400.0, "um")}


def _unit_key(unit: str) -> str:
    unit = str(unit).strip()
    if unit in ("µm", "μm", "\\u00B5m", "micron", "microns", "micrometer", "micrometre"):
        return "um"
    return unit


def _in_um(dy: float, dx: float, unit: str) -> PixelSize | None:
    if not (dy > 0 and dx > 0) or not unit:
        return None
    factor, new_unit = _UNITS.get(_unit_key(unit), (1.0, unit))
    return dy * factor, dx * factor, new_unit


def _tag_pixel_size(tif: tifffile.TiffFile) -> PixelSize | None:
    tags = tif.pages[0].tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    xres, yres = (_ratio(tags[k].value) for k in ("XResolution", "YResolution"))
    unit = ""
    if tif.is_imagej and tif.imagej_metadata:
        unit = str(tif.imagej_metadata.get("unit", ""))
    if not unit:
        code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
        unit = {2: "inch", 3: "cm"}.get(code, "")
    if not (xres > 0 and yres > 0):
        return None
    return _in_um(1.0 / yres, 1.0 / xres, unit)


def _ome_metadata(xml: str) -> dict[str, Any]:
    """Pixel size, z spacing and channel names of the first image in OME-XML."""
    import xml.etree.ElementTree as ElementTree  # on use: 15 ms to import, OME files only

    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"),
                  None)
    if pixels is None:
        return {}
    names = tuple(c.get("Name", "") for c in pixels if c.tag.endswith("Channel"))
    found: dict[str, Any] = {"channel_names": names if all(names) else ()}

    def length(axis: str) -> tuple[float, str] | None:
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        return float(value), pixels.get(f"PhysicalSize{axis}Unit", "µm")  # OME's default unit

    x, y, z = length("X"), length("Y"), length("Z")
    if x and y:
        ys, xs = _in_um(y[0], y[0], y[1]), _in_um(x[0], x[0], x[1])
        if ys and xs and ys[2] == xs[2]:
            found["pixel_size"] = (ys[0], xs[0], xs[2])
    if z and found.get("pixel_size"):
        zs = _in_um(z[0], z[0], z[1])
        found["z_spacing"] = zs[0] if zs else None
    return found


def _ratio(value: Any) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


# ------------------------------------------------------------------ label files
def write_labels(path: str | Path, labels: np.ndarray, pixel_size: PixelSize | None = None,
                 *, z_spacing: float | None = None, plane_axes: str = "Z",
                 info: dict[str, Any] | None = None) -> Path:
    """Write instance labels (H, W), or a stack (P, H, W), as an int32 TIFF (atomically) with
    ImageJ's description: pixel size (`pixel_size`, XResolution/YResolution in pixels per unit),
    unit, z spacing, planes as slices (`plane_axes` "Z") or frames ("T"), and `info` as extra
    `minunet_KEY=value` lines (the settings a prediction used).

    int32 because napari's builtin reader opens only 32- and 64-bit integer images as Labels;
    ImageJ's own TIFF writer has no 32-bit integer type, so Fiji opens the file as a 32-bit
    image (ids exact up to 2**24) with the calibration of the description."""
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(f"write_labels: {path}: expected labels (H, W) or (P, H, W), got "
                         f"shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > MAX_LABEL_ID):
        raise ValueError(f"write_labels: {path}: label ids {labels.min()}..{labels.max()} do "
                         f"not fit an int32 label image (0..{MAX_LABEL_ID})")
    axes = "YX" if labels.ndim == 2 else ("T" if plane_axes == "T" else "Z") + "YX"
    meta: dict[str, Any] = {}
    kwargs: dict[str, Any] = {"metadata": None, "photometric": "minisblack",
                              "resolutionunit": 1}  # 1: no unit here, it is in the description
    if pixel_size is not None:
        dy, dx, unit = pixel_size
        kwargs["resolution"] = (1.0 / dx, 1.0 / dy)
        meta["unit"] = unit
        if z_spacing and axes[0] == "Z":
            meta["spacing"] = z_spacing
    for key, value in (info or {}).items():
        meta[f"minunet_{key}"] = "none" if value is None else value
    kwargs["description"] = tifffile.imagej_description(labels.shape, axes, **meta)
    data = labels.astype(np.int32, copy=False)              # written as it is, not copied
    return write_atomic(Path(path), lambda tmp: tifffile.imwrite(tmp, data, **kwargs))
