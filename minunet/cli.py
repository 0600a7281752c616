"""The `minunet` command: generate, train, predict, evaluate, gradcheck.

Thin on purpose: each subcommand parses its arguments, checks its inputs up front, and calls the
library. Exit codes: 0 success, 1 the work ran but failed (a gradient check failed, training
diverged), 2 bad usage or bad input (a missing or unreadable file, a wrong checkpoint, ...).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


class InputError(Exception):
    """Bad input: reported as one line and exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.run(args)
    except (InputError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError,
            TypeError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"minunet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ------------------------------------------------------------------ generate
def cmd_generate(args: argparse.Namespace) -> int:
    from . import data

    out = _writable_dir(args.out)
    data.generate_dataset(out, args.n, args.preset, size=args.size, seed=args.seed,
                          preview=args.preview)
    print(f"wrote {args.n} images and labels of preset '{args.preset}' to {out}")
    return EXIT_OK


# --------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    import minunet as mu

    from . import viz, workflow
    from .predict import DEFAULT_NORMALIZATION

    if args.resume:
        run = Path(args.resume)
        config_path = run / "config.json"
        if not config_path.is_file():
            raise InputError(f"--resume {run}: no config.json there; is it a minunet run folder?")
        config = json.loads(config_path.read_text())
    else:
        if args.out is None:
            raise InputError("train: give --out RUN (a new run folder) or --resume RUN")
        run = _writable_dir(args.out)
        config = {k: getattr(args, k) for k in (
            "data", "preset", "n", "size", "seed", "val_fraction", "epochs", "batch_size",
            "lr", "depth", "base", "crop", "patience", "lazy")}
        config["normalization"] = DEFAULT_NORMALIZATION
        _write_json(run / "config.json", config)

    norm = config["normalization"]
    if config.get("lazy") or str(config.get("data") or "").endswith(".zarr"):
        from .data.lazy import training_split  # read from disk, one sample at a time

        if not config.get("data"):
            raise InputError("train: --lazy reads a folder or a .zarr store given with --data")
        train_data, val_data, val_labels, post = training_split(
            config["data"], config["val_fraction"], norm)
    else:
        images, labels = _training_images(config)
        n_val = max(1, round(len(images) * config["val_fraction"]))
        if n_val >= len(images):
            raise InputError(f"train: {len(images)} images are too few to hold out {n_val} for "
                             "validation; generate more or lower --val-fraction")
        x, t, w = workflow.training_arrays(images, labels, norm)
        train_data = (x[n_val:], t[n_val:], w[n_val:])
        val_data, val_labels = (x[:n_val], t[:n_val], w[:n_val]), labels[:n_val]
        post = workflow.postprocess_settings(labels[n_val:])
    model = mu.UNet(1, 3, depth=config["depth"], base_channels=config["base"],
                    rng=np.random.default_rng(config["seed"]))
    history = mu.train(
        model, train_data, val_data, epochs=config["epochs"], batch_size=config["batch_size"],
        lr=config["lr"], augment=workflow.make_augment(), crop=config["crop"],
        score_fn=workflow.object_score_fn(val_labels, postprocess=post), monitor="val_f1",
        patience=config["patience"], seed=config["seed"], out_dir=run, resume=bool(args.resume),
        metadata={"normalization": norm, "postprocess": post}, progress=True,
    )
    viz.training_curves(run / "log.jsonl", run / "curves.png")
    print(f"{history.stop_reason or 'done'}; best epoch {history.best_epoch} "
          f"(val_f1 {history.best_score:.3f}); model: {run / 'best.npz'}")
    return EXIT_OK


def _training_images(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from . import data

    if config.get("data"):
        images, labels, _ = data.load_dataset(config["data"])
        return np.asarray(images), np.asarray(labels)
    images, labels, _ = data.generate(config["n"], config["preset"], size=tuple(config["size"]),
                                      seed=config["seed"])
    return images, labels


# ------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    import tifffile

    import minunet as mu

    from . import viz, workflow

    if args.chunked:  # images larger than memory, block by block (the scale extra)
        from .scaleout.large import predict_command

        return predict_command(args)
    files = _collect_images(args.inputs)
    if args.workers is not None or args.scheduler:  # a Dask cluster: imported on this path only
        from .scaleout.collection import predict_command

        return predict_command(args, files)
    ckpt = _load_model(args.model)
    norm = ckpt.metadata.get("normalization")
    post = ckpt.metadata.get("postprocess", {})
    out = _writable_dir(args.out)
    for path in files:
        image = _read(path)
        labels, probs = workflow.segment(ckpt.model, image, norm, tile=args.tile, **post)
        if labels.max() > np.iinfo(np.uint16).max:
            raise InputError(f"{path}: {labels.max()} objects do not fit a uint16 label image")
        _atomic(out / f"{path.stem}.tif",
                lambda f, labels=labels: tifffile.imwrite(f, labels.astype(np.uint16)))
        if args.probs:
            _atomic(out / f"{path.stem}_probs.npy", lambda f, p=probs: np.save(f, p))
        if args.overlays:
            gray = mu.normalize(image, norm)
            viz.overlay(gray, labels, labels, out / f"{path.stem}_overlay.png",
                        title=f"{path.name}: {labels.max()} objects")
        print(f"{path} -> {out / (path.stem + '.tif')} ({labels.max()} objects)")
    return EXIT_OK


def _load_model(path: str) -> Any:
    import minunet as mu

    p = Path(path)
    if p.is_dir():
        p = p / "best.npz"
    if not p.is_file():
        raise InputError(f"model checkpoint {p} does not exist")
    return mu.load(p)


# ------------------------------------------------------------------ evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import metrics, viz, workflow

    pred_files = {p.stem: p for p in _collect_images([args.pred])}
    true_files = {p.stem: p for p in _collect_images([args.truth])}
    missing = sorted(set(true_files) - set(pred_files))
    extra = sorted(set(pred_files) - set(true_files))
    if missing or extra:
        raise InputError(f"evaluate: files do not pair up by name: no prediction for "
                         f"{missing[:5]}, no ground truth for {extra[:5]}")
    names = sorted(true_files)
    truth = [_read_labels(true_files[n]) for n in names]
    preds = [_read_labels(pred_files[n]) for n in names]
    for n, t, p in zip(names, truth, preds, strict=True):
        if t.shape != p.shape:
            raise InputError(f"evaluate: '{n}' has shape {t.shape} in --truth but {p.shape} "
                             "in --pred")
    images = None
    if args.images:
        image_files = {p.stem: p for p in _collect_images([args.images])}
        images = [_read(image_files[n]) if n in image_files else None for n in names]
        if any(im is None for im in images):
            images = None
    out = _writable_dir(args.out)
    result = metrics.evaluate(truth, preds, names=names)
    paths = viz.write_report(out, truth, preds, images, result=result, names=names,
                             title=args.title)
    summary = workflow.summarize(result)
    print(" ".join(f"{k}={v:.4f}" for k, v in summary.items()))
    print("report: " + ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


# ----------------------------------------------------------------- gradcheck
def cmd_gradcheck(args: argparse.Namespace) -> int:
    import minunet as mu

    cls = _import_class(args.target)
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        raise InputError(f"--input-shape must be integers separated by commas, like 2,3,8,8; "
                         f"got {args.input_shape!r}") from None
    extra = json.loads(args.args) if args.args else []
    module = cls(**extra) if isinstance(extra, dict) else cls(*extra)
    x = np.random.default_rng(args.seed).standard_normal(shape)
    report = mu.gradcheck(module, x, mode=args.mode, raise_on_fail=False)
    print(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def _import_class(target: str) -> type:
    module_name, sep, class_name = target.rpartition(":")
    if not sep or not module_name or not class_name:
        raise InputError(f"gradcheck: expected MODULE:CLASS (e.g. my_layers.py:Swish or "
                         f"mypkg.layers:Swish), got {target!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise InputError(f"gradcheck: no file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    if not hasattr(module, class_name):
        raise InputError(f"gradcheck: {module_name} has no {class_name}")
    return getattr(module, class_name)


# ------------------------------------------------------------------- helpers
def _collect_images(inputs: Sequence[str]) -> list[Path]:
    """Files and folders -> image files (sorted), refusing missing paths and empty folders."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p} does not exist")
    return files


def _read(path: Path) -> np.ndarray:
    from . import data

    try:
        return data.read_image(path)
    except (InputError, FileNotFoundError):
        raise
    except Exception as err:  # any reader failure: name the file
        raise InputError(f"{path} cannot be read as an image: {err}") from err


def _read_labels(path: Path) -> np.ndarray:
    labels = _read(path)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{path}: a label image must be a 2-D integer image, got shape "
                         f"{labels.shape} and dtype {labels.dtype}")
    return labels


def _writable_dir(path: str | Path) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise InputError(f"output folder {out} is not writable: {err.strerror or err}") from err
    return out


def _atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _atomic(path, lambda f: f.write(json.dumps(obj, indent=2).encode()))


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
    g.set_defaults(run=cmd_generate)

    t = sub.add_parser("train", help="train a U-Net; writes a run folder")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--data", help="a folder written by `minunet generate` (or alike)")
    src.add_argument("--preset", default="standard", help="generate training data of a preset")
    t.add_argument("--n", type=int, default=200, help="images to generate (with --preset)")
    t.add_argument("--size", type=_size, default=(256, 256))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--base", type=int, default=16, help="channels of the first level")
    t.add_argument("--crop", type=int, default=128, help="train on random crops of this side")
    t.add_argument("--patience", type=int, default=None)
    t.add_argument("--lazy", action="store_true",
                   help="read --data image by image as it trains (sets larger than memory; "
                        "a .zarr training store is always read so)")
    t.add_argument("--out", help="run folder (config, checkpoints, log, curves)")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    t.set_defaults(run=cmd_train)

    p = sub.add_parser("predict", help="label images of any size with a trained model")
    p.add_argument("model", help="a checkpoint (.npz) or a run folder (uses best.npz)")
    p.add_argument("inputs", nargs="+", help="TIFF/PNG/NPY files or folders")
    p.add_argument("--out", required=True, help="output folder (uint16 label TIFFs)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlays", action="store_true", help="also write outline overlays (PNG)")
    p.add_argument("--probs", action="store_true", help="also write probabilities (.npy)")
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
    e.add_argument("--truth", required=True, help="folder of true label images (same names)")
    e.add_argument("--images", help="folder of the raw images (for the report's overlay)")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--title", default="minunet evaluation")
    e.set_defaults(run=cmd_evaluate)

    c = sub.add_parser("gradcheck", help="check a layer's backward against finite differences")
    c.add_argument("target", metavar="MODULE:CLASS", help="e.g. my_layers.py:Swish")
    c.add_argument("--input-shape", required=True, help="N,C,H,W of the random input")
    c.add_argument("--args", help="constructor arguments as a JSON list or object")
    c.add_argument("--mode", choices=("full", "random"), default="full")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(run=cmd_gradcheck)
    return parser


if __name__ == "__main__":
    sys.exit(main())
