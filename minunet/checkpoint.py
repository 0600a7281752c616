"""Checkpoints: one `.npz` file, no pickle, written atomically.

    mu.save(model, "run/best.npz", optimizer, normalization={"method": "percentile"})
    ckpt = mu.load("run/best.npz")       # ckpt.model is rebuilt and ready; ckpt.metadata, ...

What the file holds (every entry a plain array, so `np.load(..., allow_pickle=False)` reads it):

    minunet_header      a JSON string: format name and version, minunet version, the model's class
                        and constructor arguments (`model.config()`), the model's dtype, the
                        optimizer's class, the training position, user metadata
    model/<name>        the model's state dict (`down.0.conv1.weight`, running statistics, ...)
    optimizer/<key>     the optimizer's state dict (moments, step count, lr, hyper-parameters)

Writing is atomic: the arrays go to a temporary file in the same folder, which is flushed and
fsync'ed and then renamed over the target (`os.replace`). A crash mid-write leaves the old file
intact (plus, at worst, a stray `.<name>.*.tmp` file), never a half-written checkpoint.

Loading checks everything and says what is wrong: a missing file, a truncated or corrupted one,
an `.npz` minunet did not write, another format version, weights that do not fit the model.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .io.files import write_atomic
from .module import Module

FORMAT_NAME = "minunet-checkpoint"
FORMAT_VERSION = 1  # bump when the layout above changes; load() refuses other versions
HEADER_KEY = "minunet_header"
MODEL_PREFIX = "model/"
OPTIMIZER_PREFIX = "optimizer/"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used (corrupted, not minunet's, other version or model)."""


@dataclass
class Checkpoint:
    """What `load` returns."""

    model: Module                           # rebuilt (or filled in), in eval mode
    metadata: dict[str, Any]                # user metadata given to save(**metadata)
    optimizer_state: dict[str, Any] | None  # for optimizer.load_state_dict(...), or None
    optimizer_class: str | None             # "Adam", "SGD", ... or None
    position: dict[str, Any] | None         # training position (epoch, best score, ...), or None
    format_version: int
    minunet_version: str
    path: Path
    config: dict[str, Any] | None = field(default=None)  # the model's constructor arguments


# ---------------------------------------------------------------------------------- save
def save(model: Module, path: str | os.PathLike, optimizer: Any = None, *,
         position: dict[str, Any] | None = None, **metadata: Any) -> Path:
    """Write `model` (and optionally an optimizer's state) to `path` atomically; return the path.

    model:     a Module; if it has `config()` (UNet does), `load` can rebuild it alone
    optimizer: anything with `state_dict()` (SGD, Adam), saved with its class name
    position:  JSON-able training position (epoch, best score, ...), used by `train(resume=True)`
    metadata:  JSON-able values stored as they are (e.g. `normalization={...}` for the predictor)

    The name is used exactly as given (no `.npz` is appended).
    """
    path = Path(path)
    from . import __version__  # at call time: minunet/__init__ imports this module

    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "minunet_version": __version__,
        "model_class": type(model).__name__,
        "model_config": model.config() if hasattr(model, "config") else None,
        "model_dtype": np.dtype(model.dtype).name,
        "optimizer_class": None if optimizer is None else type(optimizer).__name__,
        "position": position,
        "metadata": metadata,
    }
    try:
        header_json = json.dumps(header, allow_nan=True)
    except TypeError as exc:
        raise TypeError(f"save: metadata, position and model config must be JSON-serialisable "
                        f"(numbers, strings, lists, dicts): {exc}") from exc
    arrays = {HEADER_KEY: np.array(header_json)}
    arrays.update({MODEL_PREFIX + k: v for k, v in model.state_dict().items()})
    if optimizer is not None:
        arrays.update({OPTIMIZER_PREFIX + k: np.asarray(v)
                       for k, v in optimizer.state_dict().items()})
    _write_atomically(path, arrays)
    return path


def _write_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"save: folder {path.parent} does not exist (create it first)")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, write)  # temp file beside it, fsync, the user's umask, rename


# ---------------------------------------------------------------------------------- load
# Bounds checked before anything is built or unpacked, so that a damaged or crafted file is
# refused in milliseconds instead of allocating gigabytes.
MAX_HEADER_BYTES = 1 << 20         # the JSON header is a few kB
MAX_DEPTH = 8                      # 2**8 = 256-pixel pooling grid; deeper sees nothing more
MAX_BASE_CHANNELS = 1024           # 64 is already a large U-Net
MAX_IO_CHANNELS = 256              # input channels and classes
MAX_PARAMETERS = 250_000_000       # 1 GB of float32 weights: far beyond any U-Net here
MAX_COMPRESSION = 100              # save() writes uncompressed; real weights never shrink 100x
MAX_ENTRIES = 4096                 # a depth-8 U-Net has ~250 arrays; Adam triples that
MAX_OPTIMIZER_FACTOR = 4           # optimizer state: Adam's two moments (+ a copy) per weight
MODEL_DTYPES = ("float16", "float32", "float64")
HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "minunet_version": (str,),
    "model_class": (str,), "model_config": (dict, type(None)), "model_dtype": (str,),
    "optimizer_class": (str, type(None)), "position": (dict, type(None)), "metadata": (dict,),
}


def resolve(spec: str | os.PathLike) -> Path:
    """A checkpoint file, a run folder (its best.npz, else last.npz) or a pretrained model's
    name (`minunet.models`) -> the checkpoint file. Raises FileNotFoundError saying what exists.
    """
    path = Path(spec)
    if path.is_dir():
        for name in ("best.npz", "last.npz"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"load: run folder {path} holds no best.npz or last.npz (has "
                                f"its training finished an epoch?)")
    if path.exists():
        return path
    from .models import PRETRAINED, pretrained_path

    named = pretrained_path(str(spec))
    if named is not None:
        return named
    known = f"; pretrained models: {', '.join(sorted(PRETRAINED))}" if PRETRAINED else ""
    raise FileNotFoundError(f"load: checkpoint {path} does not exist (give a .npz file, a run "
                            f"folder or a pretrained model's name{known})")


def load(path: str | os.PathLike, model: Module | type[Module] | None = None) -> Checkpoint:
    """Read a checkpoint written by `save`; return a `Checkpoint` with the model ready to use.

    path:  a checkpoint file, a run folder (best.npz, else last.npz) or a pretrained model's name
    model: None  -> rebuild the saved class (a minunet class, e.g. UNet) from its saved config
           class -> rebuild this class from the saved config (for your own Module subclasses)
           instance -> load the weights into this model (its class and config must match)
    The model comes back in eval mode, in the dtype it was saved in.

    Everything is checked before the model is built or the weights are unpacked: the header's
    entries and types, the declared model size, every array's shape and dtype (read from the
    array headers inside the archive); then the weights must be finite real numbers.
    """
    path = resolve(path)
    who = f"load({path})"
    _check_regular_file(path, who)
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, who)
            header = _read_header(archive, members, who)
            cls_name, config = header["model_class"], header["model_config"]
            if isinstance(model, Module):
                if type(model).__name__ != cls_name:
                    raise CheckpointError(f"{who}: the checkpoint holds a {cls_name}, the model "
                                          f"given is a {type(model).__name__}")
                if config is not None and hasattr(model, "config") and model.config() != config:
                    raise CheckpointError(
                        f"{who}: the checkpoint holds a {cls_name}({_args(config)}), the model "
                        f"given is a {cls_name}({_args(model.config())})")
            else:
                cls = _find_class(cls_name, who) if model is None else model
                if config is None:
                    raise CheckpointError(f"{who}: the saved {cls_name} has no config() to "
                                          f"rebuild it from; build the model yourself and pass "
                                          f"it: load(path, model)")
                _check_model_size(cls, config, who)
                try:
                    model = cls(**config)
                except (TypeError, ValueError) as exc:
                    raise CheckpointError(f"{who}: 'model_config' {config} does not build a "
                                          f"{cls_name}: {exc}") from exc
            _check_declared_arrays(model, members, who, cls_name, config)
            arrays = {key: _read_member(archive, info, who) for key, (info, _, _) in
                      members.items() if key != HEADER_KEY}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{who}: the file is truncated or corrupted, or not an .npz "
                              f"({type(exc).__name__}: {exc}); use another checkpoint (e.g. "
                              f"last.npz instead of best.npz)") from exc
    for key, value in arrays.items():
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise CheckpointError(f"{who}: '{key}' holds {int((~np.isfinite(value)).sum())} NaN "
                                  f"or inf values: the run diverged before this was saved; use "
                                  f"an earlier checkpoint")
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in arrays.items()
                   if k.startswith(MODEL_PREFIX)}
    optimizer_state = None
    if header["optimizer_class"] is not None:
        optimizer_state = {k[len(OPTIMIZER_PREFIX):]: _unwrap(v) for k, v in arrays.items()
                           if k.startswith(OPTIMIZER_PREFIX)}
    dtype = np.dtype(header["model_dtype"])
    if model.dtype != dtype:
        model.astype(dtype)
    try:
        model.load_state_dict(model_state)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{who}: the saved weights do not fit {cls_name}"
                              f"({_args(config or {})}): another architecture? {exc}") from exc
    model.eval()
    return Checkpoint(
        model=model,
        metadata=header["metadata"],
        optimizer_state=optimizer_state,
        optimizer_class=header["optimizer_class"],
        position=header["position"],
        format_version=header["format_version"],
        minunet_version=header["minunet_version"],
        path=path,
        config=config,
    )


Member = tuple[zipfile.ZipInfo, tuple[int, ...], np.dtype]


def _check_regular_file(path: Path, who: str) -> None:
    """Only a regular file is opened: a device (/dev/zero) would be read without end and a
    FIFO would block for ever. os.stat tells without opening it (a symlink is followed)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise CheckpointError(f"{who}: cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if
                stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if
                stat.S_ISSOCK(mode) else "not a regular file")
        raise CheckpointError(f"{who}: the checkpoint is {kind}, not a regular file; give the "
                              ".npz file itself")


def _members(archive: zipfile.ZipFile, who: str) -> dict[str, Member]:
    """key -> (zip entry, declared shape, declared dtype), from the .npy headers alone."""
    members: dict[str, Member] = {}
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:  # counted from the central directory, before any is read
        raise CheckpointError(f"{who}: the archive holds {len(entries)} entries (a minunet "
                              f"checkpoint holds at most {MAX_ENTRIES}): damaged or crafted "
                              "file")
    for info in entries:
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{who}: entry '{info.filename}' is not an array: not a "
                                  f"checkpoint written by minunet.save")
        key = info.filename[:-len(".npy")]
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(f)
        if dtype.hasobject:
            raise CheckpointError(f"{who}: '{key}' holds Python objects (pickle), which minunet "
                                  f"never writes nor reads; this is not a minunet checkpoint")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise CheckpointError(f"{who}: '{key}' declares {nbytes} bytes but stores "
                                  f"{info.file_size}: corrupted file")
        if nbytes > (1 << 24) and nbytes > MAX_COMPRESSION * max(info.compress_size, 1):
            raise CheckpointError(f"{who}: '{key}' unpacks {info.compress_size} bytes into "
                                  f"{nbytes}; minunet.save never compresses, so this file was "
                                  f"crafted or damaged: refused")
        members[key] = (info, tuple(shape), dtype)
    if not members:
        raise CheckpointError(f"{who}: the archive is empty: not a minunet checkpoint")
    return members


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, who: str) -> np.ndarray:
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _read_header(archive: zipfile.ZipFile, members: dict[str, Member], who: str,
                 ) -> dict[str, Any]:
    if HEADER_KEY not in members:
        raise CheckpointError(f"{who}: this .npz was not written by minunet.save (no "
                              f"'{HEADER_KEY}' entry; it holds {sorted(members)[:5]})")
    info, shape, dtype = members[HEADER_KEY]
    if shape != () or dtype.kind != "U" or info.file_size > MAX_HEADER_BYTES:
        raise CheckpointError(f"{who}: '{HEADER_KEY}' must be one JSON string of at most "
                              f"{MAX_HEADER_BYTES} bytes, got {dtype} of shape {shape}: not a "
                              f"minunet checkpoint")
    from .checks import load_json

    try:
        header = load_json(str(_read_member(archive, info, who)), f"{who}: the header")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{who}: the header is not valid JSON: corrupted file") from exc
    except ValueError as exc:  # nested too deeply
        raise CheckpointError(str(exc)) from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{who}: the header does not say '{FORMAT_NAME}': not a minunet "
                              f"checkpoint")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{who}: checkpoint format version {version} (written by minunet "
                              f"{header.get('minunet_version')}); this minunet reads version "
                              f"{FORMAT_VERSION} only")
    for key, types in HEADER_TYPES.items():
        if key not in header:
            raise CheckpointError(f"{who}: the header has no '{key}' entry: the file is damaged "
                                  f"or was not written by minunet.save")
        if not isinstance(header[key], types) or isinstance(header[key], bool):
            raise CheckpointError(f"{who}: the header's '{key}' is {header[key]!r}, expected "
                                  f"{' or '.join(t.__name__ for t in types)}: damaged file")
    if header["model_dtype"] not in MODEL_DTYPES:
        raise CheckpointError(f"{who}: the header's 'model_dtype' is {header['model_dtype']!r}; "
                              f"expected one of {', '.join(MODEL_DTYPES)}")
    _check_stored_settings(header["metadata"], who)
    return header


def _check_stored_settings(metadata: dict[str, Any], who: str) -> None:
    """The settings `segment` and `minunet predict` apply (normalisation, post-processing,
    training diameter) must be usable: a NaN threshold or a zero level would give 0 objects
    on every image without an error."""
    from .checks import check_diameter, check_normalization, check_postprocess

    try:
        check_normalization(metadata.get("normalization"), who)
        check_postprocess(metadata.get("postprocess"), who)
        check_diameter(metadata.get("diameter"), who)
    except ValueError as exc:
        raise CheckpointError(f"{exc} (stored in the checkpoint's metadata); the file is "
                              "damaged or was written with wrong settings: use another "
                              "checkpoint, or save the model again with valid ones") from exc


def _check_model_size(cls: type, config: dict[str, Any], who: str) -> None:
    """Refuse absurd sizes before the constructor allocates them (U-Net: exact count)."""
    from .unet import UNet

    if not issubclass(cls, UNet):
        return
    limits = {"in_channels": MAX_IO_CHANNELS, "num_classes": MAX_IO_CHANNELS,
              "depth": MAX_DEPTH, "base_channels": MAX_BASE_CHANNELS}
    for key, limit in limits.items():
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise CheckpointError(f"{who}: 'model_config.{key}' is {value!r}; a U-Net takes a "
                                  f"whole number from 1 to {limit}: damaged or crafted file")
    n = unet_parameter_count(**{k: config[k] for k in limits if k in config})
    if n > MAX_PARAMETERS:
        raise CheckpointError(f"{who}: 'model_config' {config} asks for a U-Net of {n:,} "
                              f"parameters (limit {MAX_PARAMETERS:,}): damaged or crafted file")


def unet_parameter_count(in_channels: int = 1, num_classes: int = 3, depth: int = 3,
                         base_channels: int = 16) -> int:
    """Trainable numbers of `UNet(in_channels, num_classes, depth, base_channels)`, by formula.

    A DoubleConv(a -> b) holds two 3x3 convs without bias (batch norm follows) and two batch
    norms (a scale and a shift per channel): 9ab + 9bb + 4b; a 2x2 transposed conv b -> a holds
    4ba + a; the 1x1 head c0 * Kc + Kc.
    """
    def double(a: int, b: int) -> int:
        return 9 * a * b + 9 * b * b + 4 * b

    c = [base_channels * 2**i for i in range(depth + 1)]
    total = sum(double(in_channels if i == 0 else c[i - 1], c[i]) for i in range(depth))
    total += double(c[depth - 1], c[depth])
    total += sum(4 * c[i + 1] * c[i] + c[i] + double(2 * c[i], c[i]) for i in range(depth))
    return total + c[0] * num_classes + num_classes


def _check_declared_arrays(model: Module, members: dict[str, Member], who: str,
                           cls_name: str, config: dict[str, Any] | None) -> None:
    """Every model/ array must be a real float of exactly the model's shape, read from the
    array headers, before a byte of weights is unpacked."""
    stray = sorted(k for k in members if k != HEADER_KEY
                   and not k.startswith((MODEL_PREFIX, OPTIMIZER_PREFIX)))
    if stray:
        raise CheckpointError(f"{who}: unexpected entries {stray[:5]}: not written by "
                              f"minunet.save")
    expected = {MODEL_PREFIX + k: v.shape for k, v in model.state_dict().items()}
    declared = {k: m for k, m in members.items() if k.startswith(MODEL_PREFIX)}
    what = f"{cls_name}({_args(config or {})})"
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{who}: the saved weights do not fit {what}: missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}; another architecture?")
    for key, (_, shape, dtype) in declared.items():
        if dtype.name not in MODEL_DTYPES:
            raise CheckpointError(f"{who}: '{key}' is {dtype}; weights must be real floats "
                                  f"({', '.join(MODEL_DTYPES)}): damaged or crafted file")
        if shape != tuple(expected[key]):
            raise CheckpointError(f"{who}: the saved weights do not fit {what}: '{key}' has "
                                  f"shape {shape}, the model needs {tuple(expected[key])}")
    weights_bytes = sum(math.prod(s) * 8 for s in expected.values())
    optimizer_bytes = 0
    for key, (_, shape, dtype) in members.items():
        if not key.startswith(OPTIMIZER_PREFIX):
            continue
        optimizer_bytes += math.prod(shape) * dtype.itemsize
        if optimizer_bytes > MAX_OPTIMIZER_FACTOR * weights_bytes + (1 << 20):
            raise CheckpointError(f"{who}: the optimizer state declares more than "
                                  f"{MAX_OPTIMIZER_FACTOR} times the model's size: damaged or "
                                  "crafted file")
        if dtype.kind not in "biuf":
            raise CheckpointError(f"{who}: '{key}' is {dtype}; optimizer state must be real "
                                  f"numbers: damaged or crafted file")
        if math.prod(shape) * dtype.itemsize > weights_bytes:
            raise CheckpointError(f"{who}: '{key}' of shape {shape} is larger than the whole "
                                  f"model: damaged or crafted file")


def _unwrap(value: np.ndarray) -> Any:
    """0-d arrays back to Python numbers (the optimizer's lr, step count, flags)."""
    return value.item() if value.ndim == 0 else value


def _find_class(name: str, who: str) -> type[Module]:
    import minunet

    cls = getattr(minunet, name, None)
    # Only models that describe themselves (config(), whose sizes are checked above) are
    # rebuilt by name; a crafted header cannot make load() build, say, a huge Conv2d.
    if not (isinstance(cls, type) and issubclass(cls, Module) and hasattr(cls, "config")):
        raise CheckpointError(f"{who}: the checkpoint holds a {name}, which is not a minunet "
                              f"model; pass its class: load(path, model={name})")
    return cls


def _args(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())
