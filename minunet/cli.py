"""The `minunet` command: generate, train, predict, evaluate, gradcheck.

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
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
RUN_FILES = ("config.json", "log.jsonl", "last.npz", "best.npz", "curves.png")
REPORT_FILES = ("report.png", "report.json", "report.md")
MAX_DEPTH, MAX_BASE = 8, 1024  # what a checkpoint may hold (minunet.checkpoint's bounds)

# `minunet train`'s defaults; the parser's defaults are None so that a value given with
# --resume can be told from one left out.
TRAIN_DEFAULTS: dict[str, Any] = {
    "preset": "standard", "n": 200, "size": (256, 256), "seed": 0, "val_fraction": 0.1,
    "epochs": 20, "batch_size": 8, "lr": 3e-3, "depth": 3, "base": 16, "crop": 128,
    "patience": None, "image_suffix": "_img", "mask_suffix": "_masks", "lazy": False,
}
RESUME_MAY_CHANGE = ("epochs", "patience", "data")


class InputError(Exception):
    """Bad input: reported as one line and exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    from .train import TrainingDiverged

    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.run(args)
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
    out = _writable_dir(out)
    data.generate_dataset(out, args.n, args.preset, size=args.size, seed=args.seed,
                          preview=args.preview)
    print(f"wrote {args.n} images and labels of preset '{args.preset}' to {out}")
    return EXIT_OK


# --------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    import minunet as mu

    from . import workflow

    if args.resume:
        run, config = _resume_config(args)
        before = json.loads((run / "config.json").read_text()).get("epochs")
    else:
        run, config = _new_run_config(args)
        before = None
    _check_train_settings(config)
    if _is_lazy(config):
        return _train_lazy(args, run, config, before)
    data = _training_data(config, run)
    images, labels, names = data["images"], data["labels"], data["names"]
    if args.resume and config.get("image_names") not in (None, names):
        raise InputError(f"--resume {run}: the training data in {config['data']} changed since "
                         f"the run started ({len(config['image_names'])} images then, "
                         f"{len(names)} now); start a new run with --out")
    val_idx = _validation_draw(len(images), config["val_fraction"], config["seed"])
    if args.resume and "val_images" not in config:  # a run of a minunet that held out the
        val_idx = list(range(len(val_idx)))         # first files: resume it the same way
    held_out = set(val_idx)
    train_idx = [i for i in range(len(images)) if i not in held_out]
    _check_sizes(config, [images[i] for i in train_idx], [names[i] for i in train_idx],
                 [images[i] for i in val_idx], [names[i] for i in val_idx])

    norm = config["normalization"]
    x, t, w = workflow.training_samples(images, labels, norm, names=names)
    mult = 2 ** config["depth"]
    val_labels = [_crop_to(labels[i], mult) for i in val_idx]
    val_data = _as_batch([_crop_to(x[i], mult) for i in val_idx],
                         [_crop_to(t[i], mult) for i in val_idx],
                         [_crop_to(w[i], mult) for i in val_idx])
    train_data = _as_batch([x[i] for i in train_idx], [t[i] for i in train_idx],
                           [w[i] for i in train_idx])
    post = workflow.postprocess_settings([labels[i] for i in train_idx])
    model = mu.UNet(1, 3, depth=config["depth"], base_channels=config["base"],
                    rng=np.random.default_rng(config["seed"]))

    if not args.resume:
        config["image_names"] = names
        config["val_images"] = [names[i] for i in val_idx]
    diameter = _training_diameter([labels[i] for i in train_idx])
    return _fit(args, run, config, before, model, train_data, val_data, val_labels, post,
                diameter)


def _training_diameter(labels: list[np.ndarray]) -> float | None:
    """The median object diameter of the training labels (stored for predict --diameter)."""
    from .rescale import object_diameter

    try:
        return object_diameter(labels)
    except ValueError:  # no objects at all: nothing to rescale to
        return None


def _fit(args: argparse.Namespace, run: Path, config: dict[str, Any], before: Any,
         model: Any, train_data: Any, val_data: Any, val_labels: Any,
         post: dict[str, Any], diameter: float | None) -> int:
    """Everything is checked: only now is anything written. Train, then draw the curves."""
    import minunet as mu

    from . import viz, workflow
    from .io.files import remove_stale_temps, write_atomic

    if not args.resume:
        _prepare_run_folder(run, args.overwrite)
    remove_stale_temps(run, RUN_FILES)
    _write_json(run / "config.json", config)
    if args.resume and before != config["epochs"]:
        _say(f"minunet train: {run} now trains up to {config['epochs']} epochs (was {before})")
    norm = config["normalization"]
    try:
        history = mu.train(
            model, train_data, val_data, epochs=config["epochs"],
            batch_size=config["batch_size"], lr=config["lr"], augment=workflow.make_augment(),
            crop=config["crop"], score_fn=workflow.object_score_fn(val_labels, postprocess=post),
            monitor="val_f1", patience=config["patience"], seed=config["seed"], out_dir=run,
            resume=bool(args.resume),
            metadata={"normalization": norm, "postprocess": post, "diameter": diameter},
            progress=True)
    except KeyboardInterrupt:
        _say(f"minunet train: interrupted; {_epochs_done(run)} epochs are saved in {run}; "
             f"continue with: minunet train --resume {run}")
        return EXIT_INTERRUPTED
    write_atomic(run / "curves.png", lambda tmp: viz.training_curves(run / "log.jsonl", tmp))
    print(f"{history.stop_reason or 'done'}; best epoch {history.best_epoch} "
          f"(val_f1 {history.best_score:.3f}); model: {run / 'best.npz'}")
    return EXIT_OK


def _is_lazy(config: dict[str, Any]) -> bool:
    return bool(config.get("lazy")) or str(config.get("data") or "").endswith(".zarr")


def _train_lazy(args: argparse.Namespace, run: Path, config: dict[str, Any],
                before: Any) -> int:
    """--lazy (or a .zarr store): training samples are read from disk as they are used."""
    import minunet as mu

    if not config.get("data"):
        raise InputError("--lazy reads a folder (images/ + labels/) or a .zarr training store "
                         "given with --data")
    source = _data_folder(config, run)
    try:
        from .io.lazy import sample_count, training_split

        n = sample_count(source)
        val_idx = _validation_draw(n, config["val_fraction"], config["seed"])
        train_data, val_data, val_labels, post = training_split(source, val_idx,
                                                                config["normalization"])
    except ImportError as err:
        raise InputError(f"--lazy needs the scale extra: pip install 'minunet[scale]' "
                         f"({err})") from err
    except (ValueError, OSError) as err:
        raise InputError(f"--data {source}: {err}") from err
    model = mu.UNet(1, 3, depth=config["depth"], base_channels=config["base"],
                    rng=np.random.default_rng(config["seed"]))
    diameter = _training_diameter([train_data.read_labels(i) for i in range(len(train_data))])
    return _fit(args, run, config, before, model, train_data, val_data, val_labels, post,
                diameter)


def _new_run_config(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    from .predict import DEFAULT_NORMALIZATION

    if args.out is None:
        raise InputError("give --out RUN (a new run folder) or --resume RUN")
    run = Path(args.out)
    if run.exists() and not run.is_dir():
        raise InputError(f"--out {run} is a file; give a folder for the run")
    if run.is_dir() and any(run.iterdir()) and not args.overwrite:
        if any((run / f).exists() for f in RUN_FILES):
            raise InputError(f"--out {run} is an existing run; continue it with --resume {run}, "
                             f"or replace it with --overwrite")
        raise InputError(f"--out {run} is a folder that is not empty; give a new folder, or "
                         "--overwrite to write the run into it")
    config = {k: (v if (v := getattr(args, k, None)) is not None else default)
              for k, default in TRAIN_DEFAULTS.items()}
    config["size"] = list(config["size"])
    config["data"] = None
    if args.data is not None:
        data = os.path.abspath(args.data)
        config["data"] = data
        # also relative to the run, so that moving the run and its data together still works
        config["data_relative_to_run"] = os.path.relpath(data, os.path.abspath(run))
    config["normalization"] = DEFAULT_NORMALIZATION
    return run, config


def _resume_config(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    run = Path(args.resume)
    config_path = run / "config.json"
    if not config_path.is_file():
        raise InputError(f"--resume {run}: no config.json there; is it a minunet run folder?")
    if args.out is not None and Path(args.out).resolve() != run.resolve():
        raise InputError(f"--resume {run} continues that run in place; leave out --out")
    if args.overwrite:
        raise InputError("--resume continues a run, --overwrite replaces one: give one of them")
    given = [k for k in TRAIN_DEFAULTS if k not in RESUME_MAY_CHANGE
             and getattr(args, k, None) is not None]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise InputError(f"--resume {run} keeps the run's own settings (config.json); {flags} "
                         f"cannot change them (only --epochs, --patience and --data can). Start "
                         f"a new run with --out to train otherwise")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{config_path} is not valid JSON ({err}); the run cannot be "
                         "resumed") from err
    if not isinstance(config, dict):
        raise InputError(f"{config_path} does not hold a run's settings")
    for key, default in TRAIN_DEFAULTS.items():
        config.setdefault(key, default)
    done, stopped = _run_position(run)
    if args.patience is not None:
        config["patience"] = args.patience
    if args.epochs is not None:
        if args.epochs <= done:
            raise InputError(f"--resume {run}: the run has already trained {done} epochs and "
                             f"--epochs is the total; give --epochs more than {done}")
        config["epochs"] = args.epochs
    elif done >= config["epochs"]:
        raise InputError(f"--resume {run}: the run has finished its {done} epochs; to train "
                         f"further give --epochs N with N > {done}")
    if stopped is not None and args.patience is None and (
            config["patience"] is not None and stopped >= config["patience"]):
        raise InputError(f"--resume {run}: the run stopped early ({stopped} epochs without "
                         f"improvement, --patience {config['patience']}); to go on, give a "
                         f"larger --patience")
    if args.data is not None:
        config["data"] = os.path.abspath(args.data)
        config["data_relative_to_run"] = os.path.relpath(config["data"], os.path.abspath(run))
    return run, config


def _run_position(run: Path) -> tuple[int, int | None]:
    """(epochs finished, epochs without improvement) from last.npz; (0, None) if none yet."""
    from .checkpoint import load

    if not (run / "last.npz").is_file():
        return 0, None
    position = load(run / "last.npz").position or {}
    return int(position.get("epoch", 0)), position.get("bad_epochs")


def _epochs_done(run: Path) -> int:
    try:
        return _run_position(run)[0]
    except Exception:  # a damaged last.npz: resume will say so
        return 0


def _check_train_settings(config: dict[str, Any]) -> None:
    checks = [
        ("epochs", config["epochs"] >= 1, "at least 1"),
        ("batch-size", config["batch_size"] >= 1, "at least 1"),
        ("lr", 0 < config["lr"] < 10, "between 0 and 10 (e.g. 3e-3)"),
        ("depth", 1 <= config["depth"] <= MAX_DEPTH, f"from 1 to {MAX_DEPTH}"),
        ("base", 1 <= config["base"] <= MAX_BASE, f"from 1 to {MAX_BASE}"),
        ("crop", config["crop"] >= 1, "at least 1"),
        ("val-fraction", 0 < config["val_fraction"] < 1, "between 0 and 1 (e.g. 0.1)"),
        ("patience", config["patience"] is None or config["patience"] >= 1, "at least 1"),
        ("n", config["n"] >= 2, "at least 2"),
    ]
    for flag, ok, what in checks:
        if not ok:
            key = flag.replace("-", "_")
            raise InputError(f"--{flag} must be {what}, got {config[key]}")
    mult = 2 ** config["depth"]
    if config["crop"] % mult:
        lower = max(mult, config["crop"] // mult * mult)
        raise InputError(f"--crop {config['crop']} is not a multiple of 2**depth = {mult} (the "
                         f"U-Net's pooling grid); use --crop {lower} or {lower + mult}")


def _training_data(config: dict[str, Any], run: Path) -> dict[str, Any]:
    from . import data
    from .io import folders

    if not config.get("data"):
        from .data import presets

        if config["preset"] not in presets.PRESETS:
            raise InputError(f"--preset {config['preset']!r} is not one of "
                             f"{', '.join(presets.PRESETS)}")
        images, labels, _ = data.generate(config["n"], config["preset"],
                                          size=tuple(config["size"]), seed=config["seed"])
        return {"images": list(images), "labels": [lab.astype(np.int32) for lab in labels],
                "names": [f"{config['preset']}-{i}" for i in range(len(images))]}
    root = _data_folder(config, run)
    try:
        pairs = folders.find_pairs(root, image_suffix=config["image_suffix"],
                                   mask_suffix=config["mask_suffix"])
        images, labels = folders.read_pairs(pairs)
    except folders.DataError as err:
        raise InputError(f"--data {root}: {err}") from err
    if run.resolve() in {f.parent.resolve() for pair in pairs for f in pair}:
        raise InputError(f"--out {run} is a folder of the training data; the run's files would "
                         "mix with the images: give the run a folder of its own")
    names = [str(image.relative_to(root)) for image, _ in pairs]
    return {"images": images, "labels": labels, "names": names}


def _data_folder(config: dict[str, Any], run: Path) -> Path:
    """The training data of a run: its absolute path, else the same place relative to the run
    (a run moved with its data); never relative to the current folder."""
    from .io.folders import LAYOUTS

    data = Path(config["data"])
    if data.exists() and not data.is_dir():
        raise InputError(f"--data {data} is a file; give the folder that holds the images and "
                         f"masks ({LAYOUTS})")
    if data.is_absolute():
        if data.is_dir():
            return data
        relative = config.get("data_relative_to_run")
        if relative and (run / relative).is_dir():
            return (run / relative).resolve()
        raise InputError(f"the run's training data {data} is gone (nor is it at {run}/"
                         f"{relative}); give --data FOLDER to say where it is now")
    if run.exists() and (run / "config.json").exists():  # an old run: a path of unknown origin
        raise InputError(f"{run / 'config.json'} names its data as '{data}', relative to a "
                         f"folder it did not record; give --data FOLDER to say which")
    return data


def _validation_draw(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded random draw of round(n * fraction) images (at least 1), in index order."""
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise InputError(f"{n} images are too few to hold out {n_val} for validation; add "
                         "images or lower --val-fraction")
    rng = np.random.default_rng([seed, n])
    return sorted(int(i) for i in rng.permutation(n)[:n_val])


def _check_sizes(config: dict[str, Any], train_images: list, train_names: list,
                 val_images: list, val_names: list) -> None:
    crop, mult = config["crop"], 2 ** config["depth"]
    small = [(min(im.shape[:2]), name) for im, name in zip(train_images, train_names,
                                                           strict=True) if min(im.shape[:2]) < crop]
    if small:
        side, name = min(small)
        fit = side // mult * mult
        hint = f"lower --crop to {fit} or less" if fit >= mult else "remove it"
        raise InputError(f"{len(small)} training images are smaller than --crop {crop} (the "
                         f"smallest, {name}, has a side of {side}); {hint}")
    tiny = [name for im, name in zip(val_images, val_names, strict=True)
            if min(im.shape[:2]) < mult]
    if tiny:
        raise InputError(f"validation images smaller than 2**depth = {mult} pixels: "
                         f"{', '.join(tiny[:3])}; remove them or lower --depth")


def _crop_to(a: np.ndarray, mult: int) -> np.ndarray:
    """Cut the last two axes down to multiples of `mult` (the U-Net's pooling grid)."""
    H, W = a.shape[-2:]
    return a[..., :H // mult * mult, :W // mult * mult]


def _as_batch(x: list, t: list, w: list) -> tuple:
    """Per-sample lists -> stacked arrays when all samples have one size (faster), else lists."""
    if len({a.shape for a in x}) == 1:
        return np.stack(x), np.stack(t), np.stack(w)
    return x, t, w


def _prepare_run_folder(run: Path, overwrite: bool) -> None:
    _writable_dir(run)
    if overwrite:  # the old run's files would be mistaken for this one's
        for name in RUN_FILES:
            (run / name).unlink(missing_ok=True)


# ------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .inference import (
        OVERLAY_DIR,
        PROBS_DIR,
        prediction_outputs,
        segment,
        write_prediction,
    )
    from .io.files import remove_stale_temps

    if args.tile < 1:
        raise InputError(f"--tile must be >= 1, got {args.tile}")
    model_spec, inputs = (args.model, args.items) if args.model else (args.items[0],
                                                                     args.items[1:])
    if not inputs:
        raise InputError("give the images (files or folders) after the model")
    if args.chunked:  # images larger than memory, block by block (the scale extra)
        if args.diameter is not None:
            raise InputError("--diameter is not available with --chunked yet: rescale the "
                             "image first, or predict without --diameter")
        from .scaleout.large import predict_command

        return predict_command(args, _resolve_model(model_spec), inputs)
    files = _collect_images(inputs, skip_masks=True)
    out = Path(args.out)
    outputs = {path: prediction_outputs(path, out, args.probs, args.overlays)
               for path in files}
    _check_outputs(inputs, files, outputs, out, args.overwrite)
    ckpt = _load_model(model_spec)
    _dry_run(ckpt, segment)
    if args.diameter is not None and "diameter" not in ckpt.metadata:
        raise InputError(f"--diameter: {ckpt.path} does not record the object diameter it was "
                         "trained on; predict without --diameter, or retrain the model")
    if args.workers is not None or args.scheduler:  # a Dask cluster: imported on this path only
        from .scaleout.collection import predict_command

        return predict_command(args, ckpt.path, files)

    out = _writable_dir(out)
    for sub, wanted in ((OVERLAY_DIR, args.overlays), (PROBS_DIR, args.probs)):
        if wanted:
            (out / sub).mkdir(exist_ok=True)
    for targets in outputs.values():
        for target in targets:
            remove_stale_temps(target.parent, [target.name])
    failures: list[str] = []
    done = 0
    bar = tqdm(files, desc="predict", unit="image", file=sys.stderr,
               disable=not sys.stderr.isatty() or len(files) < 2)
    try:
        for path in bar:
            found: dict = {}  # --diameter auto: the estimate, printed below
            try:
                labels_path, n = write_prediction(ckpt, path, out, image=_read(path),
                                                  tile=args.tile, probs=args.probs,
                                                  overlays=args.overlays, progress=True,
                                                  diameter=args.diameter, info=found)
            except (InputError, ValueError, TypeError, OSError, MemoryError) as err:
                message = str(err) if str(path) in str(err) else f"{path}: {err}"
                failures.append(message)
                tqdm.write(f"minunet predict: error: {message}", file=sys.stderr)
                continue
            done += 1
            tqdm.write(f"{path} -> {labels_path} ({n} objects{_estimate_note(found)})",
                       file=sys.stdout)
    except KeyboardInterrupt:
        bar.close()
        again = "with --overwrite " if done else ""
        _say(f"minunet predict: interrupted after {done} of {len(files)} images (those are "
             f"complete in {out}); run the same command {again}to start again")
        return EXIT_INTERRUPTED
    return _batch_summary("predict", len(files), failures)


def _estimate_note(found: dict) -> str:
    """', diameter ~D px (resized xS)' for a --diameter auto estimate; '' without one."""
    if "diameter_estimate" not in found:
        return ""
    d, scale = found["diameter_estimate"], found["scale"]
    size = "too few objects to estimate the diameter" if d is None else f"diameter ~{d:.1f} px"
    return f", {size}, " + ("not resized" if scale == 1.0 else f"resized x{scale:.2f}")


def _check_outputs(inputs: Sequence[str], files: list[Path], outputs: dict[Path, list[Path]],
                   out: Path, overwrite: bool) -> None:
    """Refuse, before writing anything, outputs that would replace an input, each other, or
    (without --overwrite) an earlier output."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    out_real = out.resolve()
    for item in inputs:
        if Path(item).is_dir() and Path(item).resolve() == out_real:
            raise InputError(f"--out {out} is an input folder; the labels would mix with the "
                             "images (and could replace them): give another folder")
    real_inputs = {p.resolve(): p for p in files}
    by_target: dict[Path, Path] = {}
    for path, targets in outputs.items():
        for target in targets:
            real = target.resolve()
            if real in real_inputs:
                raise InputError(f"{target} would replace the input {real_inputs[real]}; give "
                                 "another --out")
            if real in by_target:
                raise InputError(f"{by_target[real]} and {path} would both be written to "
                                 f"{target}: rename one of them or predict them separately")
            by_target[real] = path
    if not overwrite:
        existing = [t for t in by_target if t.exists()]
        if existing:
            raise InputError(f"{len(existing)} outputs already exist in {out} (e.g. "
                             f"{existing[0]}); give another --out, or --overwrite to replace "
                             "them")


def _batch_summary(command: str, n: int, failures: list[str]) -> int:
    if not failures:
        return EXIT_OK
    _say(f"minunet {command}: {len(failures)} of {n} files failed:")
    for message in failures:
        _say(f"  {message}")
    return EXIT_BAD_INPUT


def _dry_run(ckpt: Any, segment: Any) -> None:
    """Segment a small blank image once, so that a model or stored settings that cannot work
    are reported once, with the checkpoint's name, instead of once per image."""
    from .predict import size_multiple

    try:
        side = size_multiple(ckpt.model)
        segment(ckpt, np.zeros((side, side), np.float32))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise InputError(f"{ckpt.path}: this model or its stored settings cannot segment gray "
                         f"images: {type(err).__name__}: {err}") from err


def _diameter(text: str) -> float | str:
    if text == "auto":
        return text
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
    _write_report(out, truth, preds, images, result, names, args.title, viz)
    summary = workflow.summarize(result)
    print(" ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    print("report: " + ", ".join(str(out / f) for f in REPORT_FILES))
    if failures:
        _say(f"minunet evaluate: the report covers {len(names)} of {len(true_files)} images")
    return _batch_summary("evaluate", len(true_files), failures)


def _keyed(files: list[Path], suffix: str) -> dict[str, Path]:
    """name (the stem, less `suffix`) -> file; two files of one name are refused."""
    keyed: dict[str, Path] = {}
    for f in files:
        key = f.stem[:-len(suffix)] if suffix and f.stem.endswith(suffix) else f.stem
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
def cmd_gradcheck(args: argparse.Namespace) -> int:
    """Check MODULE:CLASS's backward on a random input. Exit 0 if it passes, 1 if it fails or
    the layer itself raises (its traceback is printed), 2 for bad arguments or a file that
    cannot be imported."""
    import inspect
    import traceback

    import minunet as mu
    from minunet.gradcheck import random_inputs

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
    # one input per positional argument of forward (Concat takes two), all of the same shape,
    # from their own random stream, independent of the upstream gradient's
    xs = random_inputs(shape, _count_inputs(cls.forward), args.seed)
    try:  # from here on, exceptions come from the layer's own code: show where
        module = cls(*positional, **keywords)
        report = mu.gradcheck(module, *xs, mode=args.mode,
                              max_elements=args.max_elements or None, seed=args.seed,
                              raise_on_fail=False)
    except Exception:
        traceback.print_exc()
        print(f"minunet gradcheck: {cls.__name__} raised the exception above (in its own code, "
              f"on an input of shape {shape}); nothing was checked", file=sys.stderr)
        return EXIT_FAILED
    print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


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


def _writable_dir(path: str | Path) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise InputError(f"output folder {out} is not writable: {err.strerror or err}") from err
    return out


def _write_json(path: Path, obj: Any) -> None:
    from .io.files import write_atomic

    text = json.dumps(obj, indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))


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

    d = TRAIN_DEFAULTS
    t = sub.add_parser("train", help="train a U-Net; writes a run folder")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--data", help="training images and masks: images/ + labels/ or masks/, "
                     "or a Cellpose folder of NAME_img + NAME_masks files")
    src.add_argument("--preset", help=f"generate training data of a preset ({d['preset']})")
    t.add_argument("--image-suffix", help=f"Cellpose image names end so ({d['image_suffix']})")
    t.add_argument("--mask-suffix", help=f"mask names end so ({d['mask_suffix']})")
    t.add_argument("--n", type=int, help=f"images to generate with --preset ({d['n']})")
    t.add_argument("--size", type=_size, help="size of generated images (256)")
    t.add_argument("--seed", type=int, help=f"seeds everything ({d['seed']})")
    t.add_argument("--val-fraction", type=float,
                   help=f"share of images drawn (seeded) for validation ({d['val_fraction']})")
    t.add_argument("--epochs", type=int, help=f"total epochs ({d['epochs']}); with --resume: "
                   "train up to this many")
    t.add_argument("--batch-size", type=int, help=f"({d['batch_size']})")
    t.add_argument("--lr", type=float, help=f"learning rate ({d['lr']})")
    t.add_argument("--depth", type=int, help=f"poolings ({d['depth']})")
    t.add_argument("--base", type=int, help=f"channels of the first level ({d['base']})")
    t.add_argument("--crop", type=int,
                   help=f"train on random crops of this side ({d['crop']})")
    t.add_argument("--patience", type=int, help="stop after this many epochs without a better "
                   "val_f1 (never)")
    t.add_argument("--lazy", action="store_true", default=None,
                   help="read --data image by image as it trains (sets larger than memory; "
                        "a .zarr training store is always read so; needs the scale extra)")
    t.add_argument("--out", help="a new run folder (config, checkpoints, log, curves)")
    t.add_argument("--resume", metavar="RUN", help="continue a run (from its last.npz)")
    t.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    t.set_defaults(run=cmd_train)

    p = sub.add_parser("predict", help="label images of any size with a trained model")
    p.add_argument("items", nargs="+", metavar="[MODEL] IMAGES",
                   help="a checkpoint (.npz), a run folder (best.npz) or a pretrained model's "
                   "name, then TIFF/PNG/NPY files or folders")
    p.add_argument("--model", help="the model (then every positional argument is an image)")
    p.add_argument("--out", required=True, help="output folder (uint16 label TIFFs)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlays", action="store_true",
                   help="also write outline overlays (overlays/NAME.png)")
    p.add_argument("--probs", action="store_true",
                   help="also write probabilities (probs/NAME.npy)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    p.add_argument("--diameter", type=_diameter, metavar="D|auto",
                   help="the objects' typical diameter in pixels, or 'auto' to estimate it: "
                        "images are rescaled to the object size the model was trained on")
    p.add_argument("--workers", type=int, metavar="N",
                   help="predict on a local Dask cluster of N processes (needs the scale extra)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="predict on an existing dask.distributed scheduler (tcp://host:8786)")
    p.add_argument("--chunked", action="store_true",
                   help="images larger than memory (TIFF, Zarr, OME-Zarr): block by block, "
                        "writing NAME.zarr uint32 labels (needs the scale extra)")
    p.add_argument("--block", type=int, default=2048, help="block side with --chunked")
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
    c.set_defaults(run=cmd_gradcheck)
    return parser


if __name__ == "__main__":
    sys.exit(main())
