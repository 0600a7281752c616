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
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"save: folder {folder} does not exist (create it first)")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())  # mkstemp makes it private (0600)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened this way on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- load
def load(path: str | os.PathLike, model: Module | type[Module] | None = None) -> Checkpoint:
    """Read a checkpoint written by `save`; return a `Checkpoint` with the model ready to use.

    model: None  -> rebuild the saved class (a minunet class, e.g. UNet) from its saved config
           class -> rebuild this class from the saved config (for your own Module subclasses)
           instance -> load the weights into this model (its class and config must match)
    The model comes back in eval mode, in the dtype it was saved in.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load: checkpoint {path} does not exist")
    header, model_state, optimizer_state = _read(path)
    who = f"load({path})"

    cls_name, config = header["model_class"], header["model_config"]
    if isinstance(model, Module):
        if type(model).__name__ != cls_name:
            raise CheckpointError(f"{who}: the checkpoint holds a {cls_name}, the model given is "
                                  f"a {type(model).__name__}")
        if config is not None and hasattr(model, "config") and model.config() != config:
            raise CheckpointError(f"{who}: the checkpoint holds a {cls_name}({_args(config)}), "
                                  f"the model given is a {cls_name}({_args(model.config())})")
    else:
        cls = _find_class(cls_name, who) if model is None else model
        if config is None:
            raise CheckpointError(f"{who}: the saved {cls_name} has no config() to rebuild it "
                                  f"from; build the model yourself and pass it: load(path, model)")
        model = cls(**config)
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


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """Read every array now (inside the try), so that damage anywhere is reported here."""
    who = f"load({path})"
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{who}: not an .npz archive (a single .npy array?)")
        with npz:
            if HEADER_KEY not in npz.files:
                raise CheckpointError(f"{who}: this .npz was not written by minunet.save (no "
                                      f"'{HEADER_KEY}' entry; it holds {npz.files[:5]})")
            contents = {key: npz[key] for key in npz.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{who}: the file is truncated or corrupted, or not an .npz "
                              f"({type(exc).__name__}: {exc}); use another checkpoint (e.g. "
                              f"last.npz instead of best.npz)") from exc
    try:
        header = json.loads(str(contents.pop(HEADER_KEY)))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{who}: the header is not valid JSON: corrupted file") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{who}: the header does not say '{FORMAT_NAME}': not a minunet "
                              f"checkpoint")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{who}: checkpoint format version {version} (written by minunet "
                              f"{header.get('minunet_version')}); this minunet reads version "
                              f"{FORMAT_VERSION} only")
    model_state = {k[len(MODEL_PREFIX):]: v for k, v in contents.items()
                   if k.startswith(MODEL_PREFIX)}
    optimizer_state = None
    if header["optimizer_class"] is not None:
        optimizer_state = {k[len(OPTIMIZER_PREFIX):]: _unwrap(v) for k, v in contents.items()
                           if k.startswith(OPTIMIZER_PREFIX)}
    return header, model_state, optimizer_state


def _unwrap(value: np.ndarray) -> Any:
    """0-d arrays back to Python numbers (the optimizer's lr, step count, flags)."""
    return value.item() if value.ndim == 0 else value


def _find_class(name: str, who: str) -> type[Module]:
    import minunet

    cls = getattr(minunet, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise CheckpointError(f"{who}: the checkpoint holds a {name}, which is not a minunet "
                              f"model; pass its class: load(path, model={name})")
    return cls


def _args(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())
