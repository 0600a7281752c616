"""Many images on a Dask cluster: each worker loads the model once and labels whole files.

    from minunet.scaleout import predict_files
    report = predict_files("run/best.npz", files, "labels/", workers=4)   # a local cluster
    report = predict_files("run/best.npz", files, "labels/", scheduler="tcp://head:8786")
    report.failed          # {file: "what went wrong"}; every other file was written

The command line does the same: `minunet predict run images/ --out labels --workers 4` (or
`--scheduler ADDRESS`). Each file is one task: `minunet.inference.write_prediction`, the
function the plain command calls, writes `out/NAME.tif` (int32 labels) and on request
`out/probs/NAME.npy` and `out/overlays/NAME.png`: the files the plain command writes. A file
that fails is reported with its error and the others go on. On a cluster of several machines the
checkpoint, the images and the output folder must be on a file system every worker sees.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inference import output_stem
from ..io.files import remove_stale_temps
from ..io.locks import FolderLock
from ..predict import DEFAULT_TILE
from .common import (
    describe,
    limit_threads,
    load_checkpoint,
    load_model,
    make_client,
    run_tasks,
    threads_per_worker,
)


@dataclass
class CollectionReport:
    """What `predict_files` did: objects per written file, the error of each failed one."""

    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class FileTask:
    """One file's work, as plain values (a worker loads the checkpoint itself, once)."""

    model: Any
    path: str
    out_dir: str
    tile: int
    probs: bool
    overlays: bool
    threads: int | None
    diameter: float | str | None = None


def predict_file(task: FileTask) -> int:
    """Label one file; returns its number of objects. Runs on a worker."""
    from ..inference import write_prediction

    limit_threads(task.threads)
    path = Path(task.path)
    if path.exists() and not path.is_file():  # stat only: opening a FIFO would block
        raise ValueError(f"{path} is not a regular file (a folder, a FIFO or a device)")
    ckpt = load_checkpoint(task.model)
    _, n = write_prediction(ckpt, path, Path(task.out_dir), tile=task.tile,
                            probs=task.probs, overlays=task.overlays,
                            diameter=task.diameter)
    return n


def predict_files(model: str | os.PathLike, files: list[str | os.PathLike],
                  out_dir: str | os.PathLike, *, workers: int | None = None,
                  scheduler: str | None = None, client: Any = None, tile: int = DEFAULT_TILE,
                  probs: bool = False, overlays: bool = False, progress: bool = True,
                  diameter: float | str | None = None, overwrite: bool = False
                  ) -> CollectionReport:
    """Label every file with the checkpoint `model` (a .npz or a run folder) on a Dask cluster.

    workers:   start a local cluster of this many worker processes (one thread each; the
               machine's cores are shared among them)
    scheduler: or use the dask.distributed scheduler at this address ("tcp://host:8786")
    client:    or an existing `distributed.Client`
    diameter:  the objects' diameter in pixels or "auto", as `mu.segment(..., diameter=)`
    overwrite: replace earlier outputs in out_dir; without it they are refused
    The rules of the command hold: out_dir may not be a folder of the images, no output may
    replace an input, and all of this is checked before anything is written.
    Progress ("[k/n] file -> output") goes to stderr; failures are collected, not raised.
    """
    started = time.perf_counter()
    ckpt = Path(model)
    if ckpt.is_dir():
        ckpt = ckpt / "best.npz"
    if not ckpt.is_file():
        raise FileNotFoundError(f"predict_files: model checkpoint {ckpt} does not exist")
    load_model(ckpt)  # a broken checkpoint fails here, once, not on every worker
    out = Path(out_dir)
    targets = check_outputs([Path(f) for f in files], out, probs, overlays, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise PermissionError(f"predict_files: the output folder {out} is not writable")
    # out_dir is ours while we write: a second run into it is refused, naming this one; the
    # outputs are checked again under the lock (a run that finished meanwhile wrote them)
    lock = FolderLock(out, "predict_files").acquire()
    own_client = own_cluster = None
    try:
        targets = check_outputs([Path(f) for f in files], out, probs, overlays, overwrite)
        _remove_killed_writes(targets)
        if client is None:
            client, own_cluster = make_client(workers, scheduler)
            own_client = client
    except BaseException:
        lock.release()
        raise
    report = CollectionReport()
    try:
        threads = threads_per_worker(client)
        tasks = [FileTask(str(ckpt.resolve()), str(Path(f).resolve()), str(out.resolve()), tile,
                          probs, overlays, threads, diameter) for f in files]
        given = {task.path: str(f) for task, f in zip(tasks, files, strict=True)}
        if probs or overlays:  # made here, once, not raced for by the workers
            for sub, wanted in (("probs", probs), ("overlays", overlays)):
                if wanted:
                    (out / sub).mkdir(exist_ok=True)
        for k, (task, n, error) in enumerate(run_tasks(predict_file, tasks, client), start=1):
            name = given[task.path]   # the path as the user gave it, not the worker's absolute one
            if error is None:
                report.done[name] = n
                line = f"[{k}/{len(tasks)}] {name} -> {out / (output_stem(name) + '.tif')} " \
                       f"({n} objects)"
            else:
                report.failed[name] = describe(error)
                line = f"[{k}/{len(tasks)}] FAILED {name}: {report.failed[name]}"
            if progress:
                print(line, file=sys.stderr, flush=True)
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
        lock.release()
    report.seconds = time.perf_counter() - started
    return report


def _remove_killed_writes(targets: list[Path]) -> None:
    """Remove the temporary files a killed run left beside these outputs: one listing per
    folder, then `remove_stale_temps` for the outputs that have one."""
    folders: dict[Path, list[Path]] = {}
    for target in targets:
        folders.setdefault(target.parent, []).append(target)
    for folder, outputs in folders.items():
        hidden = [f.name for f in folder.glob(".*.tmp*")] if folder.is_dir() else []
        names = [t.name for t in outputs if any(h.startswith(f".{t.name}.") for h in hidden)]
        if names:
            remove_stale_temps(folder, names)


def check_outputs(files: list[Path], out: Path, probs: bool, overlays: bool,
                  overwrite: bool) -> list[Path]:
    """Every file the batch would write, refused (before anything is written) by the rules
    of `inference.check_outputs`."""
    from ..inference import check_outputs as check
    from ..inference import prediction_outputs

    outputs = {f: prediction_outputs(f, out, probs, overlays) for f in files}
    return check(files, outputs, out, overwrite, who="predict_files",
                 how_to_overwrite="overwrite=True (--overwrite)")


def predict_command(args: Any, model: Path, files: list[Path]) -> int:
    """`minunet predict ... --workers N | --scheduler ADDRESS`: returns the exit code."""
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    out = Path(args.out)
    try:
        report = predict_files(model, files, out, workers=args.workers,
                               scheduler=args.scheduler, tile=args.tile, probs=args.probs,
                               overlays=args.overlays, diameter=args.diameter,
                               overwrite=bool(getattr(args, "overwrite", False)))
    except KeyboardInterrupt:
        print(f"minunet predict: interrupted; the images labelled so far are complete in "
              f"{out}; run the same command with --overwrite to start again", file=sys.stderr)
        return 130
    print(f"{len(report.done)} of {len(files)} files labelled in {report.seconds:.1f} s -> {out}")
    if report.failed:
        print(f"{len(report.failed)} files failed:", file=sys.stderr)
        for name, why in report.failed.items():
            print(f"  {name}: {why}", file=sys.stderr)
        return 2  # bad input, as the plain command's exit code for an unreadable file
    return 0
