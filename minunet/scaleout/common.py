"""What the chunked and the cluster paths share: the model (once per worker), one image's
segmentation, atomic outputs, and running tasks in-process or on a Dask cluster.

`segment_image` is the one place where a whole image becomes labels with a checkpoint's stored
normalisation and post-processing; every path of this package goes through it or through
`predict` + `to_instances` with the same settings.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..module import Module
from ..predict import DEFAULT_BATCH_SIZE, DEFAULT_TILE

# per thread, (path, size, mtime) -> (model, metadata): each worker (a process, or a thread of
# one) loads a checkpoint once and never shares it: a forward pass keeps state in the modules
_MODELS = threading.local()
LOADS: Counter[str] = Counter()  # checkpoint path -> times this process loaded it

ModelRef = Any  # a checkpoint path (str / Path), a Checkpoint, or (Module, metadata)


def load_model(ref: ModelRef) -> tuple[Module, dict[str, Any]]:
    """(model in eval mode, checkpoint metadata) from a path, a Checkpoint or (model, metadata).

    A path is loaded once per worker thread and kept: the tasks of a worker share it.
    """
    if isinstance(ref, tuple):
        return ref[0], dict(ref[1])
    if hasattr(ref, "model") and hasattr(ref, "metadata"):
        return ref.model, dict(ref.metadata)
    from ..checkpoint import load

    path = Path(ref)
    if path.is_dir():
        path = path / "best.npz"
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cache = _MODELS.__dict__.setdefault("cache", {})
    if key not in cache:
        LOADS[key[0]] += 1
        ckpt = load(path)
        ckpt.model.eval()
        cache[key] = ckpt
    return cache[key].model, dict(cache[key].metadata)


def load_checkpoint(path: str | os.PathLike) -> Any:
    """The whole `Checkpoint` of a path, loaded once per worker thread (see `load_model`)."""
    load_model(path)
    resolved = Path(path) / "best.npz" if Path(path).is_dir() else Path(path)
    stat = resolved.stat()
    return _MODELS.cache[(str(resolved.resolve()), stat.st_size, stat.st_mtime_ns)]


def settings(metadata: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(normalisation, post-processing settings) stored in a checkpoint's metadata."""
    return metadata.get("normalization"), dict(metadata.get("postprocess") or {})


def segment_image(model: Module, image: np.ndarray, metadata: dict[str, Any], *,
                  tile: int = DEFAULT_TILE, batch_size: int = DEFAULT_BATCH_SIZE,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One image that fits in memory -> (labels (H, W) int32, probabilities (Kc, H, W)),
    with the checkpoint's normalisation and post-processing: what `minunet predict` does."""
    from ..workflow import segment

    norm, post = settings(metadata)
    return segment(model, image, norm, tile=tile, batch_size=batch_size, **post)


# ---------------------------------------------------------------------- atomic outputs
def temporary_sibling(path: Path, suffix: str = "") -> Path:
    """A fresh hidden name in path's folder, for writing there and renaming at the end:
    `.NAME.PID-XXXXXXXX.tmpSUFFIX`, so that a later run can tell a killed writer's leftovers
    (its process is gone) from a running writer's (see `remove_stale_siblings`)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine (signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process, or not a pid at all
    return True


def remove_stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary files and stores (`temporary_sibling`) that a killed writer of
    `path` left beside it: those whose writing process no longer runs. A writer that is still
    running (another process, or this one) keeps its own."""
    removed = []
    for stale in path.parent.glob(f".{_glob_escape(path.name)}.*-*.tmp*"):
        pid_text = stale.name[len(path.name) + 2:].split("-", 1)[0]
        if not pid_text.isdigit() or pid_alive(int(pid_text)):
            continue
        remove(stale)
        removed.append(stale)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def is_zarr_store(path: Path) -> bool:
    """A Zarr array or group (v2 or v3) on disk: what an earlier run of this package wrote."""
    return path.is_dir() and any((path / f).is_file() for f in ("zarr.json", ".zarray",
                                                                   ".zgroup"))


def check_new_output(path: Path, who: str, overwrite: bool = False) -> None:
    """Refuse to touch an existing path (unless `overwrite`, and then only a file or a Zarr
    store, never a folder of other things), and check that its folder is writable."""
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{who}: {path} already exists; minunet never overwrites a "
                                  "file unless told to: remove it, give another name, or "
                                  "overwrite=True (--overwrite) to replace it")
        if path.is_dir() and not is_zarr_store(path):
            raise FileExistsError(f"{who}: {path} is a folder that is not a Zarr store; even "
                                  "with overwrite, minunet replaces only its own outputs: give "
                                  "another name")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{who}: the folder {parent} of {path} does not exist")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{who}: the folder {parent} is not writable")


def check_not_input(output: Path, inputs: Iterable[Path], who: str) -> None:
    """Refuse an output that is an input, or lies inside one (a Zarr folder), or holds one."""
    out = output.resolve()
    for source in inputs:
        real = Path(source).resolve()
        if out == real or real in out.parents or out in real.parents:
            raise ValueError(f"{who}: the output {output} would replace (or be written into) "
                             f"the input {source}; give the output another name")


def publish(tmp: Path, path: Path, overwrite: bool = False) -> None:
    """Rename a finished temporary file or folder to its final name. An existing `path` is
    refused, or with `overwrite` replaced: a file by one rename; a folder (a Zarr store) by
    moving it aside, renaming the new one in, then deleting the old one."""
    if path.exists() or path.is_symlink():
        if not overwrite:
            remove(tmp)
            raise FileExistsError(f"{path} appeared while it was being written; the result "
                                  "was not kept: remove it and run again")
        if path.is_dir() and not path.is_symlink():
            old = temporary_sibling(path, ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            remove(old)
            return
        if tmp.is_dir():
            path.unlink()
    os.replace(tmp, path)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- task runners
def run_tasks(fn: Callable[[Any], Any], items: Iterable[Any], client: Any = None
              ) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield (item, result, error) for every item as it finishes.

    client None: one after another in this process (nothing of Dask is imported); otherwise a
    dask.distributed Client, whose workers run the tasks (results in completion order).
    A failing task yields its exception and the others go on.
    """
    items = list(items)
    if client is None:
        for item in items:
            try:
                yield item, fn(item), None
            except Exception as err:  # reported by the caller, the rest go on
                yield item, None, err
        return
    from distributed import as_completed

    futures = client.map(_guarded, items, fn=fn, pure=False)
    which = {f.key: item for f, item in zip(futures, items, strict=True)}
    for future in as_completed(futures):
        item = which[future.key]
        try:
            ok, value = future.result()
        except Exception as err:  # the worker died, the task could not be sent, ...
            ok, value = False, f"{type(err).__name__}: {err}"
        yield (item, value, None) if ok else (item, None, TaskFailed(value))
        future.release()


class TaskFailed(Exception):
    """A task raised on a worker; the message is "ErrorType: what it said"."""


def _guarded(item: Any, fn: Callable[[Any], Any]) -> tuple[bool, Any]:
    """Run fn(item) on a worker; an error comes back as a value, not as a worker's traceback."""
    try:
        return True, fn(item)
    except Exception as err:
        return False, f"{type(err).__name__}: {err}"


def describe(error: BaseException) -> str:
    """One line for a failed task: "ErrorType: message"."""
    return str(error) if isinstance(error, TaskFailed) else f"{type(error).__name__}: {error}"


def make_client(workers: int | None = None, scheduler: str | None = None) -> tuple[Any, Any]:
    """(client, cluster): a LocalCluster of `workers` processes (one thread each), or a Client
    of the scheduler at `scheduler` (cluster None). Close both when done."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    if workers is None or workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0", host="127.0.0.1")
    return Client(cluster), cluster


def threads_per_worker(client: Any) -> int | None:
    """Numba threads per worker when every worker runs on this machine: its cores shared among
    them. None for workers elsewhere (they keep their own setting, e.g. NUMBA_NUM_THREADS)."""
    if client is None:
        return None
    import socket

    workers = client.scheduler_info().get("workers", {})
    hosts = {address.split("://")[-1].rsplit(":", 1)[0] for address in workers}
    here = {"127.0.0.1", "localhost", socket.gethostname()}
    try:
        here.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    if not workers or not hosts <= here:
        return None
    return max(1, (os.cpu_count() or 1) // len(workers))


def limit_threads(threads: int | None) -> None:
    """Give this worker's Numba kernels `threads` threads, so N workers share the cores."""
    if threads:
        import numba

        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
