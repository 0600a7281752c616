"""The `minunet` command: generate, train, predict, evaluate, gradcheck, export.

Thin on purpose: each subcommand parses its arguments, checks them all before it writes
anything, and calls the library. Its rules for a user's files:

- nothing given is overwritten: not an input, not an existing run (`--resume` continues one,
  `--overwrite` replaces it), not an earlier output (`--overwrite` replaces those);
- every file is written atomically (a temporary file beside it, renamed when complete) with
  the user's umask; temporary files of a killed run are removed by the next one;
- in a batch, a bad file is named with its problem and the others still run; the exit code
  and a last summary line say how many failed.

Exit codes: 0 success; 1 the work ran but failed (a gradient check failed, training diverged,
out of memory); 2 bad usage or bad input (a missing or unreadable file, a wrong checkpoint, an
output that would replace something; in a batch: at least one file failed); 130 interrupted
(Ctrl-C), with a line saying how to continue.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._startup import end_start_up, exit_now, resume_gc
from .runs import settings as _run_settings

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a command killed by a closed pipe
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
REPORT_FILES = ("report.png", "report.json", "report.md")

# `minunet train`'s defaults (minunet.runs.settings); the parser's defaults are None so that a
# value given with --resume can be told from one left out.
TRAIN_DEFAULTS: dict[str, Any] = _run_settings.DEFAULTS


class InputError(Exception):
    """Bad input: reported as one line and exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """The `minunet` command: its exit code. As the console script (argv None, this process
    the command), the process ends here, without Python's teardown (_startup.exit_now)."""
    try:
        code = _main(argv)
    finally:
        resume_gc()  # paused during the start-up (_startup); on again whatever happened
    if argv is None:
        exit_now(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    end_start_up()  # Ctrl-C raises KeyboardInterrupt again, caught below
    try:
        from .train import TrainingDiverged

        parser = _parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        print("minunet: interrupted while starting; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    if args.command != "predict":  # predict resumes it once its model is set up (cmd_predict)
        resume_gc()
    try:
        return _run_releasing_locks(args)
    except BrokenPipeError:  # `minunet ... | head` closed the pipe: stop quietly, as cat does
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"minunet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDiverged as err:
        print(f"minunet {args.command}: {err}", file=sys.stderr)
        return EXIT_FAILED
    except MemoryError as err:
        print(f"minunet {args.command}: error: out of memory ({err or 'MemoryError'}); use "
              "smaller images, --tile or --batch-size", file=sys.stderr)
        return EXIT_FAILED
    except (InputError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError,
            TypeError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"minunet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's last flush does not complain again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test's capture)
        pass
    finally:
        os.close(devnull)


def _run_releasing_locks(args: argparse.Namespace) -> int:
    from .io import locks

    try:
        return args.run(args)
    finally:
        locks.release_held()


def _say(line: str) -> None:
    print(line, file=sys.stderr)


# ------------------------------------------------------------------ generate
def cmd_generate(args: argparse.Namespace) -> int:
    from . import data

    if args.n < 1:
        raise InputError(f"--n must be >= 1, got {args.n}")
    out = Path(args.out)
    if out.exists() and not args.overwrite and (
            (out / "manifest.json").exists() or (out / "images").exists()
            or (out / "labels").exists()):
        raise InputError(f"--out {out} already holds a data set; give a new folder, or "
                         "--overwrite to replace its files")
    if args.preset not in data.PRESETS:
        raise InputError(f"--preset {args.preset!r} is not one of {', '.join(data.PRESETS)}")
    created = not out.exists()
    out = _writable_dir(out)
    try:
        data.generate_dataset(out, args.n, args.preset, size=args.size, seed=args.seed,
                              preview=args.preview)
    except Exception:
        if created:  # a failure leaves no empty --out behind
            _remove_empty_folders(out)
        raise
    print(f"wrote {args.n} images and labels of preset '{args.preset}' to {out}")
    return EXIT_OK


# --------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """Arguments -> `minunet.runs.fit` (a new run) or `minunet.runs.resume`; the run's rules
    live there, so Python makes the same run."""
    from . import runs

    given = {k: v for k in TRAIN_DEFAULTS if (v := getattr(args, k, None)) is not None}
    folder = args.resume or args.out
    try:
        if args.resume:
            if args.out is not None and Path(args.out).resolve() != Path(args.resume).resolve():
                raise InputError(f"--resume {args.resume} continues that run in place; leave "
                                 "out --out")
            if args.overwrite:
                raise InputError("--resume continues a run, --overwrite replaces one: give one "
                                 "of them")
            fixed = [k for k in given if k not in runs.RESUME_MAY_CHANGE]
            fixed += ["from"] if args.from_ is not None else []
            if fixed:
                flags = ", ".join("--" + k.replace("_", "-") for k in fixed)
                raise InputError(f"--resume {args.resume} keeps the run's own settings "
                                 f"(config.json); {flags} cannot change them (only --epochs, "
                                 f"--patience and --data can). Start a new run with --out to "
                                 f"train otherwise")
            run = runs.resume(args.resume, epochs=args.epochs, patience=args.patience,
                              data=args.data)
        else:
            run = runs.fit(args.data, args.out, from_=args.from_, overwrite=args.overwrite,
                           **given)
    except KeyboardInterrupt:
        done = runs.Run(folder).epochs_done if folder else 0
        _say(f"minunet train: interrupted; {done} epochs are saved in {folder}; continue "
             f"with: minunet train --resume {folder}")
        return EXIT_INTERRUPTED
    print(run.summary())
    return EXIT_OK


# ------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import (
        OVERLAY_DIR,
        PROBS_DIR,
        prediction_outputs,
        segment,
        write_prediction,
    )
    from .io import locks
    from .io.files import remove_stale_temps

    if args.tile < 1:
        raise InputError(f"--tile must be >= 1, got {args.tile}")
    model_spec, inputs = (args.model, args.items) if args.model else (args.items[0],
                                                                     args.items[1:])
    if not inputs:
        raise InputError("give the images (files or folders) after the model")
    if args.rois and (args.chunked or args.workers is not None or args.scheduler):
        raise InputError("--rois is not available with --chunked, --workers or --scheduler "
                         "yet: predict without them, or turn the label images into ROIs with "
                         "mu.write_rois(labels, 'NAME_rois.zip')")
    options = _predict_options(args)
    if args.chunked:  # images larger than memory, block by block (the scale extra)
        if args.diameter is not None:
            raise InputError("--diameter is not available with --chunked yet: rescale the "
                             "image first, or predict without --diameter")
        from .scaleout.large import predict_command

        resume_gc()
        return predict_command(args, _resolve_model(model_spec), inputs)
    files = _collect_images(inputs, skip_masks=True)
    out = Path(args.out)
    outputs = {path: prediction_outputs(path, out, args.probs, args.overlays, args.rois)
               for path in files}
    _check_outputs(inputs, files, outputs, out, args.overwrite)
    ckpt = _load_model(model_spec)
    local = args.workers is None and not args.scheduler
    ahead = _read_ahead(files[0], args.axes) if local else {}   # {first file: image or error}
    mapping = _map_ahead(ckpt, ahead.get(files[0]), args.tile)
    try:
        _dry_run(ckpt, segment, ahead.get(files[0]))  # also sets Numba up, loads the kernels
    finally:
        if mapping is not None:
            mapping.release()
    resume_gc()  # the start-up is over (_startup: the collector was paused for it)
    if args.diameter is not None and "diameter" not in ckpt.metadata:
        raise InputError(f"--diameter: {ckpt.path} does not record the object diameter it was "
                         "trained on; predict without --diameter, or retrain the model")
    if args.workers is not None or args.scheduler:  # a Dask cluster: imported on this path only
        from .scaleout.collection import predict_command

        return predict_command(args, ckpt.path, files)

    out = _writable_dir(out)
    locks.hold(out, "minunet predict")  # released when the command ends (main)
    _check_outputs(inputs, files, outputs, out, args.overwrite)  # again, now that out is ours
    for sub, wanted in ((OVERLAY_DIR, args.overlays), (PROBS_DIR, args.probs)):
        if wanted:
            (out / sub).mkdir(exist_ok=True)
    for targets in outputs.values():
        for target in targets:
            remove_stale_temps(target.parent, [target.name])
    failures: list[str] = []
    done = 0
    bar, write = _image_bar(files)
    try:
        for path in bar:
            found: dict = {}  # --diameter auto: the estimate, printed below
            try:
                image = ahead.pop(path) if path in ahead else _read_any(path, args.axes)
                if isinstance(image, Exception):   # the first file, read ahead, failed
                    raise image
                labels_path, n = write_prediction(ckpt, path, out, image=image,
                                                  tile=args.tile, probs=args.probs,
                                                  overlays=args.overlays, progress=True,
                                                  diameter=args.diameter, **options,
                                                  rois=args.rois, info=found,
                                                  say=lambda line: write(
                                                      f"minunet predict: note: {line}",
                                                      file=sys.stderr))
            except READ_ERRORS as err:
                message = str(err) if str(path) in str(err) else f"{path}: {err}"
                failures.append(message)
                write(f"minunet predict: error: {message}", file=sys.stderr)
                continue
            done += 1
            write(f"{path} -> {labels_path} ({n} objects{_estimate_note(found)})",
                  file=sys.stdout)
    except KeyboardInterrupt:
        if hasattr(bar, "close"):
            bar.close()
        again = "with --overwrite " if done else ""
        _say(f"minunet predict: interrupted after {done} of {len(files)} images (those are "
             f"complete in {out}); run the same command {again}to start again")
        return EXIT_INTERRUPTED
    return _batch_summary("predict", len(files), failures)


READ_ERRORS = (InputError, ValueError, TypeError, OSError, MemoryError)  # one file's failure


def _read_ahead(path: Path, axes: str | None) -> dict[Path, Any]:
    """{path: its image, or the error reading it}: the first file, read while the command
    sets itself up, so that the memory its prediction needs can be mapped meanwhile
    (`_map_ahead`); the loop over the files reports an error as it would have."""
    try:
        return {path: _read_any(path, axes)}
    except READ_ERRORS as err:
        return {path: err}


def _map_ahead(ckpt: Any, image: Any, tile: int) -> Any:
    """A `kernels.memory.Prefault` of about the memory that predicting `image` (an ImageFile)
    with the checkpoint's model takes, mapped on another core while this one sets Numba up;
    None where there is nothing to map (no image, a model of unknown size)."""
    from .kernels.memory import Prefault
    from .predict import memory_estimate

    if not hasattr(image, "data"):
        return None
    nbytes = memory_estimate(ckpt.model, image.data.shape[1:3], tile)
    return Prefault(nbytes) if nbytes else None


def _image_bar(files: list[Path]) -> tuple[Any, Callable[..., None]]:
    """(the files to loop over, a print for lines between them): a tqdm bar over the files
    and its `write` (lines above the bar) for two or more files on a terminal; otherwise the
    files and `print`, without importing tqdm (30 ms of a one-image command's start)."""
    if sys.stderr.isatty() and len(files) >= 2:
        from tqdm import tqdm

        return tqdm(files, desc="predict", unit="image", file=sys.stderr), tqdm.write
    return files, print


def _predict_options(args: argparse.Namespace) -> dict[str, Any]:
    """predict's channel, plane, stack and post-processing flags, checked, as keyword
    arguments of `inference.write_prediction` (those left out: the model's settings)."""
    checks = [("prob-thresh", args.prob_thresh, lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.5"),
              ("seed-thresh", args.seed_thresh, lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.7"),
              ("min-size", args.min_size, lambda v: v >= 0, "0 or more pixels"),
              ("stitch", args.stitch, lambda v: 0 < v <= 1, "an IoU in (0, 1], e.g. 0.5"),
              ("plane", args.plane, lambda v: v >= 0, "0 or more (planes count from 0)")]
    for flag, value, ok, what in checks:
        if value is not None and not ok(value):
            raise InputError(f"--{flag} must be {what}, got {value}")
    if args.axes is not None and (not set(args.axes.upper()) <= set("TZCSYX")
                                  or not {"Y", "X"} <= set(args.axes.upper())):
        raise InputError(f"--axes {args.axes}: give one letter per axis of the stored array "
                         "from T, Z (planes), C (channels), S (RGB samples), Y, X; e.g. ZYX")
    post = {key: value for key, value in (("fg_thresh", args.prob_thresh),
                                          ("seed_thresh", args.seed_thresh),
                                          ("min_size", args.min_size)) if value is not None}
    channel = args.channel
    if channel is not None and channel.lstrip("-").isdigit():
        channel = int(channel)
        if channel < 0:
            raise InputError(f"--channel must be 0 or more (channels count from 0), got "
                             f"{channel}")
    options = {"channel": channel, "plane": args.plane, "stitch": args.stitch,
               "exclude_edges": args.exclude_edges, "postprocess": post}
    chosen = [flag for flag, value in (("--channel", channel), ("--plane", args.plane),
                                       ("--stitch", args.stitch), ("--axes", args.axes))
              if value is not None] + (["--exclude-edges"] if args.exclude_edges else []) \
        + [f"--{k.replace('fg_', 'prob_').replace('_', '-')}" for k in post]
    if (args.chunked or args.workers is not None or args.scheduler) and chosen:
        raise InputError(f"{', '.join(chosen)}: not available with --chunked, --workers or "
                         "--scheduler yet; predict without them, or without those")
    return options


def _estimate_note(found: dict) -> str:
    """', diameter ~D px (resized xS)' for a --diameter auto estimate; '' without one."""
    if "diameter_estimate" not in found:
        return ""
    d, scale = found["diameter_estimate"], found["scale"]
    if isinstance(d, list):  # a stack: one estimate per plane
        known = [v for v in d if v is not None]
        resized = sum(s != 1.0 for s in scale)
        size = (f"diameter ~{float(np.median(known)):.1f} px (median of {len(known)} planes)"
                if known else "too few objects to estimate the diameter")
        return f", {size}, {resized} of {len(d)} planes resized"
    size = "too few objects to estimate the diameter" if d is None else f"diameter ~{d:.1f} px"
    return f", {size}, " + ("not resized" if scale == 1.0 else f"resized x{scale:.2f}")


def _check_outputs(inputs: Sequence[str], files: list[Path], outputs: dict[Path, list[Path]],
                   out: Path, overwrite: bool) -> None:
    """`inference.check_outputs`, before anything is written: the command's wording."""
    from .inference import check_outputs

    try:
        check_outputs(files, outputs, out, overwrite, folders=[Path(i) for i in inputs],
                      flag="--out", how_to_overwrite="--overwrite")
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from err


def _batch_summary(command: str, n: int, failures: list[str]) -> int:
    if not failures:
        return EXIT_OK
    _say(f"minunet {command}: {len(failures)} of {n} files failed:")
    for message in failures:
        _say(f"  {message}")
    return EXIT_BAD_INPUT


def _dry_run(ckpt: Any, segment: Any, like: Any = None) -> None:
    """Segment a small blank image once, so that a model or stored settings that cannot work
    are reported once, with the checkpoint's name, instead of once per image. `like`: the
    first image (an ImageFile), whose type of numbers the blank takes, so that the kernels
    this loads are those its images use (8-/16-bit integers are normalised by counting)."""
    from .io.images import image_from_array
    from .predict import size_multiple

    dtype = getattr(getattr(like, "data", None), "dtype", None)
    if dtype is None or not (np.issubdtype(dtype, np.integer)
                             or np.issubdtype(dtype, np.floating)):
        dtype = np.float32
    try:
        side = size_multiple(ckpt.model)
        channels = ckpt.metadata.get("channels") or [0]   # a model of several input channels
        blank = np.zeros((side, side, max(channels) + 1), dtype)
        segment(ckpt, image_from_array(blank, "YXC"))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError(f"{ckpt.path}: this model or its stored settings cannot segment "
                         f"images: {type(err).__name__}: {err}") from err


def _channel_list(text: str) -> list[int]:
    try:
        channels = [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give 0-based channel numbers separated by commas, like 2,0; not {text!r}") from None
    if min(channels) < 0 or len(set(channels)) != len(channels):
        raise argparse.ArgumentTypeError(f"channels must be distinct and 0 or more, got {text}")
    return channels


def _diameter(text: str) -> float | str:
    if text == "auto" or text.strip() in ("0", "0.0"):  # 0: estimate, as Cellpose's --diameter 0
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give a number of pixels or 'auto', not {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"the diameter must be a positive number, got {text}")
    return value


def _load_model(spec: str) -> Any:
    import minunet as mu

    return mu.load(spec)


def _resolve_model(spec: str) -> Path:
    """The checkpoint file a model argument names (a file, a run folder or a pretrained name)."""
    from .checkpoint import resolve

    return resolve(spec)


# ------------------------------------------------------------------ evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import metrics, viz, workflow
    from .io import folders
    from .predict import to_gray

    pred_files = _keyed(_collect_images([args.pred], skip_masks=True), args.image_suffix)
    true_files, layout_images = _truth_files(Path(args.truth), args)
    missing = sorted(set(true_files) - set(pred_files))
    extra = sorted(set(pred_files) - set(true_files))
    if missing or extra:
        raise InputError(f"files do not pair up by name: no prediction for {missing[:5]}, no "
                         f"ground truth for {extra[:5]}")
    image_files = layout_images
    if args.images:
        image_files = _keyed(_collect_images([args.images], skip_masks=True), args.image_suffix)
    out = Path(args.out)
    used = [Path(p) for p in (args.pred, args.truth, args.images) if p]
    if any(p.resolve() == out.resolve() for p in used):
        raise InputError(f"--out {out} is one of the input folders; give a report folder of "
                         "its own")
    for p in used:  # e.g. --out DATA/images with --truth DATA: the report among the images
        if p.is_dir() and p.resolve() in out.resolve().parents:
            raise InputError(f"--out {out} lies inside the input folder {p}; the report would "
                             "mix with your files: give a report folder outside it")
    if out.exists() and not args.overwrite and any((out / f).exists() for f in REPORT_FILES):
        raise InputError(f"--out {out} already holds a report; give another folder, or "
                         "--overwrite to replace it")

    names, truth, preds, images, failures = [], [], [], [], []
    for key in sorted(true_files):
        try:
            t = folders.read_labels(true_files[key])
            p = folders.read_labels(pred_files[key])
            if t.shape != p.shape:
                raise InputError(f"'{key}' is {t.shape[0]}x{t.shape[1]} in {true_files[key]} "
                                 f"but {p.shape[0]}x{p.shape[1]} in {pred_files[key]}")
        except (InputError, ValueError, OSError) as err:
            failures.append(str(err))
            _say(f"minunet evaluate: error: {err}")
            continue
        image = None
        if image_files is not None and key not in image_files:
            _say(f"minunet evaluate: warning: no image named '{key}' among the images; the "
                 "report shows labels instead")
        if image_files and key in image_files:
            try:
                image = to_gray(_read(image_files[key]), who=str(image_files[key]))
                if image.shape != t.shape:
                    raise InputError(f"{image_files[key]} is {image.shape[0]}x"
                                     f"{image.shape[1]}, its labels {t.shape[0]}x{t.shape[1]}")
            except (InputError, ValueError, TypeError, OSError) as err:
                _say(f"minunet evaluate: warning: {err}; the report shows labels instead")
                image = None
        names.append(key)
        truth.append(t)
        preds.append(p)
        images.append(image)
    if not names:
        return _batch_summary("evaluate", len(true_files), failures)
    if any(im is None for im in images):
        images = None
    result = metrics.evaluate(truth, preds, names=names)
    out = _writable_dir(out)
    from .io import locks

    locks.hold(out, "minunet evaluate")  # released when the command ends (main)
    if not args.overwrite and any((out / f).exists() for f in REPORT_FILES):  # since checked
        raise InputError(f"--out {out} already holds a report (written meanwhile by another "
                         "run); give another folder, or --overwrite to replace it")
    _write_report(out, truth, preds, images, result, names, args.title, viz)
    summary = workflow.summarize(result)
    print(_summary_line(summary))
    print("report: " + ", ".join(str(out / f) for f in REPORT_FILES))
    if failures:
        _say(f"minunet evaluate: the report covers {len(names)} of {len(true_files)} images")
    return _batch_summary("evaluate", len(true_files), failures)


def _summary_line(summary: dict[str, float]) -> str:
    """evaluate's headline: scores pooled over all objects and pixels, then the DSB AP (a mean
    over images), then the object counts as integers."""
    pooled = " ".join(f"{k}={v:.4f}" for k, v in summary.items()
                      if k not in ("dsb_ap", "n_true", "n_pred"))
    return (f"pooled: {pooled} | mean per image: dsb_ap={summary['dsb_ap']:.4f} | "
            f"objects: n_true={int(summary['n_true'])} n_pred={int(summary['n_pred'])}")


def _keyed(files: list[Path], suffix: str) -> dict[str, Path]:
    """name (the stem, less `suffix` and a trailing .ome, as predict names its labels) ->
    file; two files of one name are refused."""
    from .inference import output_stem

    keyed: dict[str, Path] = {}
    for f in files:
        stem = output_stem(f)
        key = stem[:-len(suffix)] if suffix and stem.endswith(suffix) else stem
        if key in keyed:
            raise InputError(f"{keyed[key]} and {f} have one name; keep one of them")
        keyed[key] = f
    return keyed


def _truth_files(truth: Path, args: argparse.Namespace
                 ) -> tuple[dict[str, Path], dict[str, Path] | None]:
    """--truth: a folder of label images, or a training folder (images + masks, any layout
    `minunet train --data` takes; then its images serve the report's overlay)."""
    from .io import folders

    files = folders.image_files(truth) if truth.is_dir() else []
    has_masks = any(f.stem.endswith(args.mask_suffix) for f in files)
    has_images = any(not folders.is_output_or_mask(f, args.mask_suffix) for f in files)
    if truth.is_dir() and ((truth / "images").is_dir() or (has_masks and has_images)):
        try:
            pairs = folders.find_pairs(truth, image_suffix=args.image_suffix,
                                       mask_suffix=args.mask_suffix)
        except folders.DataError as err:
            raise InputError(f"--truth {truth}: {err}") from err
        masks = _keyed([m for _, m in pairs], args.mask_suffix)
        images = {k: i for k, (i, _) in zip(_keyed([i for i, _ in pairs], args.image_suffix),
                                            pairs, strict=True)}
        return masks, images
    return _keyed(_collect_images([str(truth)]), args.mask_suffix), None


def _write_report(out: Path, truth: list, preds: list, images: list | None, result: Any,
                  names: list[str], title: str, viz: Any) -> None:
    """Write the report into a hidden folder inside `out`, then move each file in place."""
    from .io.files import current_umask, fsync_folder

    for stale in out.glob(".report-*"):  # left by a killed evaluate
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        viz.write_report(tmp, truth, preds, images, result=result, names=names, title=title)
        for name in REPORT_FILES:
            os.chmod(tmp / name, 0o666 & ~current_umask())
            os.replace(tmp / name, out / name)
        fsync_folder(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------- gradcheck
GRADCHECK_MAX_VALUES = 2**27  # values per input (1 GiB of float64): far beyond any useful check


def cmd_gradcheck(args: argparse.Namespace) -> int:
    """Check MODULE:CLASS's backward on a random input. Exit 0 if it passes, 1 if it fails or
    the layer itself raises (its traceback is printed), 2 for bad arguments or a file that
    cannot be imported."""
    import inspect
    import traceback

    import minunet as mu
    from minunet.gradcheck import check_module, random_inputs

    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise InputError(f"--input-shape must be positive integers separated by commas, like "
                         f"2,3,8,8; got {args.input_shape!r}")
    try:
        extra = json.loads(args.args) if args.args else []
    except json.JSONDecodeError as err:
        raise InputError(f"--args is not valid JSON ({err}): give a list like '[3]' or an "
                         f"object like '{{\"num_features\": 3}}'") from None
    if not isinstance(extra, (list, dict)):
        raise InputError(f"--args must be a JSON list or object, got {args.args!r}")
    positional, keywords = (extra, {}) if isinstance(extra, list) else ([], extra)
    cls = _import_class(args.target)
    if not (isinstance(cls, type) and issubclass(cls, mu.Module)):
        raise InputError(f"gradcheck: {args.target} is not a minunet Module subclass")
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to check against: let the call tell
        signature = None
    if signature is not None:
        try:
            signature.bind(*positional, **keywords)
        except TypeError as err:
            raise InputError(f"gradcheck: {cls.__name__}{signature} does not take --args "
                             f"{args.args}: {err}") from None
    if args.max_elements < 0:
        raise InputError(f"--max-elements must be >= 0 (0: every element), got "
                         f"{args.max_elements}")
    if args.show < 0:
        raise InputError(f"--show must be >= 0, got {args.show}")
    # one input per positional argument of forward (Concat takes two), all of the same shape,
    # from their own random stream, independent of the upstream gradient's
    memory_advice = (f"too large for memory: an input of shape {shape}; give a smaller "
                     f"--input-shape (a gradient check needs only a few pixels, e.g. 2,3,6,5), "
                     f"--mode random, or fewer --max-elements")
    if math.prod(shape) > GRADCHECK_MAX_VALUES:
        raise InputError(f"{memory_advice} ({math.prod(shape):,} values per input; a check "
                         f"takes at most {GRADCHECK_MAX_VALUES:,})")
    try:
        xs = random_inputs(shape, _count_inputs(cls.forward), args.seed)
    except MemoryError:
        raise InputError(memory_advice) from None
    try:  # from here on, exceptions come from the layer's own code: show where
        module = cls(*positional, **keywords)
        try:
            check_module(module)  # super().__init__() was called
        except TypeError as err:
            print(f"minunet gradcheck: {err}", file=sys.stderr)
            return EXIT_FAILED
        _try_input_shape(module, xs, shape, args.input_shape)
        report = mu.gradcheck(module, *xs, mode=args.mode,
                              max_elements=args.max_elements or None, seed=args.seed,
                              raise_on_fail=False)
    except InputError:
        raise
    except MemoryError:
        print(f"minunet gradcheck: {cls.__name__}: {memory_advice}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        traceback.print_exc()
        print(f"minunet gradcheck: {cls.__name__} raised the exception above (in its own code, "
              f"on an input of shape {shape}); nothing was checked. If the layer does not "
              f"take that shape, change --input-shape", file=sys.stderr)
        return EXIT_FAILED
    print(report)
    if args.show:
        print(report.show(args.show))
    return EXIT_OK if report.ok else EXIT_FAILED


def _try_input_shape(module: Any, xs: list, shape: tuple[int, ...], given: str) -> None:
    """One forward of a copy on the drawn input: when minunet's input checks (`check_array`)
    refuse it, the shape given is wrong, not the layer: bad input (exit 2). Any other
    exception is the layer's own and reaches the caller."""
    import copy
    import traceback

    trial = copy.deepcopy(module)
    try:
        trial.forward(*[x.astype(trial.dtype) for x in xs])
    except (ValueError, TypeError) as err:
        frames = traceback.extract_tb(err.__traceback__)
        if frames and Path(frames[-1].filename).name == "checks.py" and \
                Path(frames[-1].filename).parent.name == "minunet":
            raise InputError(f"--input-shape {given} does not fit {type(module).__name__}: "
                             f"{err}. Give the shape the layer takes (its channels must "
                             f"match --args)") from None
        raise


def _count_inputs(forward: Any) -> int:
    """How many arrays forward(self, ...) takes: its positional parameters without a default
    (1 when they cannot be counted, e.g. forward(self, *inputs))."""
    import inspect

    try:
        parameters = list(inspect.signature(forward).parameters.values())[1:]  # skip self
    except (TypeError, ValueError):
        return 1
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                  and p.default is p.empty]
    return max(len(positional), 1)


def _import_class(target: str) -> Any:
    """MODULE:CLASS -> the class. A missing or unimportable file is bad input (exit 2); an
    exception while importing it is printed with its traceback first."""
    import traceback

    module_name, sep, class_name = target.rpartition(":")
    if not sep or not module_name or not class_name:
        raise InputError(f"gradcheck: expected MODULE:CLASS (e.g. my_layers.py:Swish or "
                         f"mypkg.layers:Swish), got {target!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"gradcheck: no file {path}")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses and pickling look it up there
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except ModuleNotFoundError as err:
        raise InputError(f"gradcheck: cannot import {module_name}: {err}") from None
    except Exception as err:
        traceback.print_exc()
        raise InputError(f"gradcheck: cannot import {module_name}: {type(err).__name__}: "
                         f"{err} (traceback above)") from None
    if not hasattr(module, class_name):
        raise InputError(f"gradcheck: {module_name} has no {class_name}")
    return getattr(module, class_name)


# -------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """`minunet export MODEL --format onnx|bioimageio --out PATH` (the export extra)."""
    missing = [m for m in ("onnx", *(("bioimageio.spec",) if args.format == "bioimageio"
                                     else ())) if importlib.util.find_spec(m.split(".")[0])
               is None]
    if missing:
        raise InputError(f"export needs {', '.join(missing)}: pip install 'minunet[export]'")
    out = Path(args.out)
    if out.exists():
        raise InputError(f"--out {out} already exists; minunet never overwrites: give a new "
                         "name")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: the folder {out.parent} does not exist")
    ckpt = _load_model(args.model)
    if args.format == "onnx":
        from .export.onnx import OPSET, export_onnx

        export_onnx(ckpt, out)
        print(f"{ckpt.path} -> {out} (ONNX opset {OPSET}; input 'image' (N, 1, H, W) "
              "normalised, output 'probabilities')")
    else:
        from .export.bioimageio import export_bioimageio

        export_bioimageio(ckpt, out, name=args.name, authors=tuple(args.author or
                          ("the minunet authors",)), project_url=args.project_url)
        rdf = out if out.suffix.lower() == ".zip" else out / "rdf.yaml"
        print(f"{ckpt.path} -> {out} (bioimage.io model package; check it with "
              f"`bioimageio test {rdf}`)")
    return EXIT_OK


# ------------------------------------------------------------------- helpers
def _collect_images(inputs: Sequence[str], *, skip_masks: bool = False) -> list[Path]:
    """Files and folders -> image files (sorted), refusing missing paths and empty folders.

    In folders, hidden files are skipped, and with `skip_masks` also Cellpose masks and
    outputs (NAME_masks.tif, NAME_seg.npy, ...) and minunet's overlays/probabilities.
    """
    from .io import folders

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = folders.image_files(p)
            if skip_masks:
                skipped = [f for f in found if folders.is_output_or_mask(f)]
                found = [f for f in found if not folders.is_output_or_mask(f)]
                if skipped:
                    _say(f"minunet: skipping {len(skipped)} files in {p} that look like masks "
                         f"or outputs, not images (e.g. {skipped[0].name})")
            if not found:
                hint = ""
                if (p / "images").is_dir():
                    hint = f"; its images are in {p / 'images'}: give that folder"
                raise InputError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                                 + hint)
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p} does not exist")
    unique: dict[Path, Path] = {}
    for f in files:  # a file given twice (or by two routes) is processed once
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def _read(path: Path) -> np.ndarray:
    from . import data

    try:
        return data.read_image(path)
    except (InputError, FileNotFoundError):
        raise
    except Exception as err:  # any reader failure: name the file
        message = str(err) if str(path) in str(err) else f"{path} cannot be read: {err}"
        raise InputError(message) from err


def _read_any(path: Path, axes: str | None = None) -> Any:
    """An image file of any layout (`io.images.read_image_file`), errors naming the file."""
    from .io.images import read_image_file

    try:
        return read_image_file(path, axes)
    except (InputError, FileNotFoundError):
        raise
    except Exception as err:  # any reader failure: name the file
        message = str(err) if str(path) in str(err) else f"{path} cannot be read: {err}"
        raise InputError(message) from err


def _writable_dir(path: str | Path) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise InputError(f"output folder {out} is not writable: {err.strerror or err}") from err
    return out


def _remove_empty_folders(folder: Path) -> None:
    """Remove `folder` and the folders in it, deepest first, as far as they hold no files."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        sizes = [int(p) for p in parts if p]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")
    return sizes[0], sizes[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minunet", description="A from-scratch U-Net for cell instance segmentation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="write a synthetic data set (TIFFs + manifest)")
    g.add_argument("--preset", default="standard", help="see minunet.data.PRESETS")
    g.add_argument("--n", type=int, default=100, help="number of images")
    g.add_argument("--size", type=_size, default=(256, 256), help="N or HxW (default 256)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--preview", action="store_true", help="also write preview.png")
    g.add_argument("--overwrite", action="store_true", help="replace a data set in --out")
    g.set_defaults(run=cmd_generate)

    d, f = TRAIN_DEFAULTS, _run_settings.FINETUNE_DEFAULTS
    t = sub.add_parser("train", help="train a U-Net, or fine-tune a model; writes a run folder")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--data", help="training images and masks: images/ + labels/ or masks/, "
                     "or a Cellpose folder of NAME_img + NAME_masks files")
    src.add_argument("--preset", help=f"generate training data of a preset ({d['preset']})")
    t.add_argument("--image-suffix", help=f"Cellpose image names end so ({d['image_suffix']})")
    t.add_argument("--mask-suffix", help=f"mask names end so ({d['mask_suffix']})")
    t.add_argument("--n", type=int, help=f"images to generate with --preset ({d['n']})")
    t.add_argument("--size", type=_size, help="size of generated images (256)")
    t.add_argument("--seed", type=int, help=f"seeds everything ({d['seed']})")
    t.add_argument("--from", dest="from_", metavar="MODEL",
                   help="start from this model (a pretrained name such as nuclei, a run folder "
                        "or a checkpoint): its architecture and normalisation are kept")
    t.add_argument("--val-fraction", type=float,
                   help=f"share of images drawn (seeded) for validation ({d['val_fraction']}; "
                        f"with fewer than {_run_settings.MIN_VALIDATION_IMAGES} images none "
                        f"unless given; 0: none)")
    t.add_argument("--epochs", type=int, help=f"total epochs ({d['epochs']}, with --from "
                   f"{f['epochs']}); with --resume: train up to this many")
    t.add_argument("--samples-per-epoch", type=int,
                   help="random crops per epoch, at least one per image "
                        f"({d['samples_per_epoch']})")
    t.add_argument("--batch-size", type=int, help=f"({d['batch_size']})")
    t.add_argument("--lr", type=float, help=f"peak learning rate of the cosine schedule "
                   f"({d['lr']}, with --from {f['lr']})")
    t.add_argument("--warmup", type=int, help=f"steps of linear warm-up ({d['warmup']}, with "
                   f"--from {f['warmup']})")
    t.add_argument("--freeze-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="batch norm keeps the statistics it has, only its scale and shift "
                        "learn (off; with --from on: a few images' statistics would replace "
                        "those learned from many)")
    t.add_argument("--replay", type=float,
                   help="with --from: share of the crops drawn from images generated by the "
                        "recipe the model was trained on, so that it keeps what it knew "
                        f"({f['replay']} when the model stores its recipe, as nuclei does; "
                        "0: only your images)")
    t.add_argument("--depth", type=int, help=f"poolings ({d['depth']})")
    t.add_argument("--base", type=int, help=f"channels of the first level ({d['base']})")
    t.add_argument("--crop", type=int,
                   help=f"train on random crops of this side ({d['crop']}, or the smallest "
                        f"training image's side when that is smaller)")
    t.add_argument("--patience", type=int, help="stop after this many epochs without a better "
                   "val_f1 (never)")
    t.add_argument("--lazy", action="store_true", default=None,
                   help="read --data image by image as it trains (sets larger than memory, "
                        "any layout; a .zarr training store, which needs the scale extra, is "
                        "always read so)")
    t.add_argument("--out", help="a new run folder (config, checkpoints, log, curves)")
    t.add_argument("--resume", metavar="RUN", help="continue a run (from its last.npz)")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.add_argument("--channels", type=_channel_list, metavar="N,M",
                   help="train a model of several input channels on these image channels, in "
                        "this order (e.g. 2,0: nucleus, then membrane; 0-based); stored in the "
                        "checkpoint, and predict reads the same channels (default: one channel)")
    t.set_defaults(run=cmd_train)

    p = sub.add_parser("predict", help="label images of any size with a trained model")
    p.add_argument("items", nargs="+", metavar="[MODEL] IMAGES",
                   help="a checkpoint (.npz), a run folder (best.npz) or a pretrained model's "
                   "name, then TIFF/PNG/NPY files or folders")
    p.add_argument("--model", help="the model (then every positional argument is an image)")
    p.add_argument("--out", required=True, help="output folder (int32 label TIFFs, NAME.tif)")
    from .predict import DEFAULT_TILE

    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help=f"side of the tiles the network sees at a time (default {DEFAULT_TILE}, "
                        "one tile at a time; an image smaller than that is one tile); smaller "
                        "tiles use less memory and more time, and give the same labels")
    p.add_argument("--overlays", action="store_true",
                   help="also write outline overlays (overlays/NAME.png)")
    p.add_argument("--probs", action="store_true",
                   help="also write probabilities (probs/NAME.npy)")
    p.add_argument("--rois", action="store_true",
                   help="also write each image's objects as ImageJ ROIs (NAME_rois.zip, for "
                        "Fiji's ROI Manager and QuPath)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    p.add_argument("--diameter", type=_diameter, metavar="D|auto",
                   help="the objects' typical diameter in pixels, or 'auto' (or 0, as in "
                        "Cellpose) to estimate it: "
                        "images are rescaled to the object size the model was trained on")
    p.add_argument("--workers", type=int, metavar="N",
                   help="predict on a local Dask cluster of N processes (needs the scale extra)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="predict on an existing dask.distributed scheduler (tcp://host:8786)")
    p.add_argument("--chunked", action="store_true",
                   help="images larger than memory (TIFF, Zarr, OME-Zarr): block by block, "
                        "writing NAME.ome.zarr (OME-Zarr: the image and its uint32 labels "
                        "under labels/cells; needs the scale extra)")
    p.add_argument("--block", type=int, default=2048,
                   help="block side with --chunked (default 2048)")
    p.add_argument("--channel", metavar="N|NAME",
                   help="the nuclear channel of multi-channel or RGB images: 0-based number, or "
                        "its name where the file names channels (OME); default: the only "
                        "channel, RGB's luminance, else channel 0 with a note")
    p.add_argument("--plane", type=int, metavar="Z",
                   help="segment only this plane (0-based) of a z-stack or time series; "
                        "default: every plane, into a label stack")
    p.add_argument("--stitch", type=float, metavar="IOU",
                   help="give an object one id through a stack: join objects of consecutive "
                        "planes that overlap by at least this IoU (e.g. 0.5; Cellpose's "
                        "stitch_threshold); default: ids unique per plane")
    p.add_argument("--axes", metavar="LETTERS",
                   help="the stored array's axes (e.g. ZYX, CYX, ZCYX, YXS) when the file does "
                        "not say or says wrong; default: OME/ImageJ metadata, else the rule in "
                        "docs/images.md")
    p.add_argument("--prob-thresh", type=float, metavar="P",
                   help="probability a pixel needs to be foreground (default: the model's, 0.5)")
    p.add_argument("--seed-thresh", type=float, metavar="P",
                   help="interior probability of the seeds that start objects (default: the "
                        "model's)")
    p.add_argument("--min-size", type=int, metavar="PX",
                   help="remove objects of fewer pixels (default: the model's)")
    p.add_argument("--exclude-edges", action="store_true",
                   help="remove objects that touch the image's edge")
    p.set_defaults(run=cmd_predict)

    e = sub.add_parser("evaluate", help="score predicted label images against ground truth")
    e.add_argument("--pred", required=True, help="folder of predicted label images")
    e.add_argument("--truth", required=True, help="folder of true label images (same names), "
                   "or a training folder (images + masks)")
    e.add_argument("--images", help="folder of the raw images (for the report's overlay)")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--title", default="minunet evaluation")
    e.add_argument("--image-suffix", default=TRAIN_DEFAULTS["image_suffix"])
    e.add_argument("--mask-suffix", default=TRAIN_DEFAULTS["mask_suffix"])
    e.add_argument("--overwrite", action="store_true", help="replace a report in --out")
    e.set_defaults(run=cmd_evaluate)

    c = sub.add_parser("gradcheck", help="check a layer's backward against finite differences")
    c.add_argument("target", metavar="MODULE:CLASS", help="e.g. my_layers.py:Swish")
    c.add_argument("--input-shape", required=True, help="N,C,H,W of the random input")
    c.add_argument("--args", help="constructor arguments as a JSON list or object")
    c.add_argument("--mode", choices=("full", "random"), default="full",
                   help="full: element by element; random: random directional derivatives")
    c.add_argument("--max-elements", type=int, default=200,
                   help="elements checked per tensor in full mode, drawn at random beyond that "
                        "(0: every element)")
    c.add_argument("--seed", type=int, default=0,
                   help="seeds the input, the upstream gradient and the sampling (independent "
                        "streams of one SeedSequence)")
    c.add_argument("--show", type=int, default=0, metavar="N",
                   help="also print the N worst compared values of each tensor: analytic, "
                        "numeric, their ratio")
    c.set_defaults(run=cmd_gradcheck)

    x = sub.add_parser("export", help="write a model as ONNX or as a bioimage.io package "
                                      "(needs the export extra)")
    x.add_argument("model", help="a checkpoint (.npz), a run folder or a pretrained model's name")
    x.add_argument("--format", required=True, choices=("onnx", "bioimageio"))
    x.add_argument("--out", required=True,
                   help="onnx: a new .onnx file; bioimageio: a new folder, or a .zip")
    x.add_argument("--name", help="bioimageio: the model's name")
    x.add_argument("--author", action="append", help="bioimageio: an author (repeatable)")
    x.add_argument("--project-url", help="bioimageio: minunet's address, cited in the package")
    x.set_defaults(run=cmd_export)
    return parser


if __name__ == "__main__":
    sys.exit(main())
