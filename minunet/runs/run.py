"""A training run in a folder: start it, continue it, read what it made.

    run = mu.fit("cells", out="run", from_="nuclei")      # fine-tune the bundled model
    run = mu.fit("cells", out="run2")                      # or train from random weights
    run.best.model, run.history, run.config                # what it made
    run = run.resume(epochs=30)                            # continue it (also after a kill)

`minunet train` calls `fit` and `resume` and nothing else, so the command and Python make the
same run, file for file. What a run folder holds:

    config.json   every setting, the data's names and digests, the validation images, the
                  model it started from
    log.jsonl     one line per finished epoch          last.npz   model + optimizer + position
    best.npz      the kept model, with the post-processing tuned on validation and the
                  diameter of the training objects (what `predict` needs)
    curves.png    written last: a run without it has not finished

The rules for a user's files hold here as in the command: nothing is overwritten without
`overwrite=True`; every setting and every data file is checked before anything is written; a
run folder is locked while a process trains in it (`minunet.io.locks`); a run killed at any
moment continues with `resume` from its last finished epoch, and refuses data that changed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import load_json
from ..io.files import remove_stale_temps, write_atomic
from ..io.locks import LOCK_NAME, FolderLock
from . import data as rundata
from .settings import (
    HELD_OUT_BAND,
    MIN_FITTED_CROP,
    MIN_VALIDATION_OBJECTS,
    REPLAY_IMAGES,
    REPLAY_SEED,
    RunError,
    check,
    new_config,
    with_defaults,
)

RUN_FILES = ("config.json", "log.jsonl", "last.npz", "best.npz", "curves.png")
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class Run:
    """A run folder. `fit` and `resume` return one; `Run(folder)` opens an existing one."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.stop_reason = ""

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.folder / "config.json").read_text())

    @property
    def history(self) -> list[dict[str, Any]]:
        """The log: one record per finished epoch."""
        from ..train import _read_log

        return _read_log(self.folder)

    @property
    def best(self) -> Any:
        """The kept model's checkpoint (`mu.load(folder / "best.npz")`)."""
        from ..checkpoint import load

        return load(self.folder / "best.npz")

    @property
    def epochs_done(self) -> int:
        try:
            return position(self.folder)[0]
        except Exception:  # a damaged last.npz: resume will say so
            return 0

    def resume(self, *, epochs: int | None = None, patience: int | None = None,
               data: str | os.PathLike | None = None, progress: bool = True) -> Run:
        """Continue this run (see `resume`)."""
        return resume(self.folder, epochs=epochs, patience=patience, data=data,
                      progress=progress)

    def summary(self) -> str:
        """One line: how the run ended and where its model is."""
        records = self.history
        if not records:
            return f"no epoch finished; continue with: minunet train --resume {self.folder}"
        end, model = self.stop_reason or "done", self.folder / "best.npz"
        position = _read_position(self.folder / "best.npz")
        if position.get("kept") == "start":
            return (f"{end}; kept the model the run started from: on the held-out bands it "
                    f"scores object F1 {position['start_f1']:.3f}, the fine-tuned one "
                    f"{position['finetuned_f1']:.3f}; model: {model}")
        kept = position.get("monitor")
        if kept == "epoch" or "val_f1" not in records[-1]:
            why = ("no validation images" if "val_f1" not in records[-1] else
                   f"fewer than {MIN_VALIDATION_OBJECTS} validation objects")
            return (f"{end}; kept the last epoch, {records[-1]['epoch']} ({why}; train_loss "
                    f"{records[-1]['train_loss']:.3f}); model: {model}")
        best = max(records, key=lambda r: r["val_f1"])  # the first of equals, as train keeps
        return f"{end}; best epoch {best['epoch']} (val_f1 {best['val_f1']:.3f}); model: {model}"

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}, epochs_done={self.epochs_done})"


def fit(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None, *,
        from_: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
        **settings: Any) -> Run:
    """Train a new run in the folder `out` and return it.

    data:      a training folder (images/ + labels/ or masks/, or Cellpose's NAME_img +
               NAME_masks files) or a .zarr training store; None: generate `preset` images
    from_:     start from this model: a pretrained name ("nuclei"), a run folder or a
               checkpoint file. Its architecture and normalisation are kept, and the
               fine-tuning defaults apply (settings.FINETUNE_DEFAULTS)
    overwrite: replace a run already in `out` (otherwise refused)
    settings:  any of settings.DEFAULTS (epochs, lr, crop, samples_per_epoch, seed, ...)
    """
    if out is None:
        raise RunError("give --out RUN (a new run folder) or --resume RUN")
    run = Path(out)
    _check_new_folder(run, overwrite)
    config = new_config(settings, data=None if data is None else str(data),
                        finetune=from_ is not None)
    config["data"] = None
    if data is not None:
        rundata.check_given(data)
        config["data"] = os.path.abspath(data)
        # also relative to the run, so that moving the run and its data together still works
        config["data_relative_to_run"] = os.path.relpath(config["data"], os.path.abspath(run))
    start = _starting_model(from_, config, settings) if from_ is not None else None
    if start is None and config["replay"]:
        raise RunError("--replay trains on images of the recipe of the model a run starts "
                       "from: give --from MODEL, or leave --replay out")
    if start is None:
        from ..predict import DEFAULT_NORMALIZATION

        config["normalization"] = DEFAULT_NORMALIZATION
    check(config)
    prepared = _prepare(config, run, resuming=False,          # reads and checks every file
                        chosen=settings.get("val_fraction") is not None,
                        fit_crop=settings.get("crop") is None)
    if prepared.crop_note:
        _say(progress, prepared.crop_note)
    config["image_names"] = prepared.names
    config["val_images"] = ([] if prepared.band else
                            [prepared.names[i] for i in prepared.val_idx])
    if prepared.band:
        config["val_band"] = prepared.band
    if prepared.digests is not None:
        config["data_digests"] = prepared.digests
    config["monitor"] = _monitor(prepared)
    created = not run.exists()
    _make_folder(run)
    lock = FolderLock(run, "minunet train").acquire()
    try:
        _check_new_folder(run, overwrite)  # again, now that no one else can write here
        if overwrite:  # the old run's files would be mistaken for this one's
            for name in RUN_FILES:
                (run / name).unlink(missing_ok=True)
        return _train(run, config, prepared, start, resume=False, progress=progress)
    except Exception:
        _forget_failed_start(run)
        raise
    finally:
        lock.release()
        if created:
            _remove_if_empty(run)


def resume(run: str | os.PathLike, *, epochs: int | None = None, patience: int | None = None,
           data: str | os.PathLike | None = None, progress: bool = True) -> Run:
    """Continue the run in folder `run` from its last finished epoch, with its own settings.

    epochs: the new total (more than done); patience: a new patience; data: where the run's
    training data is now (it must hold the same files: their digests are compared). A run
    killed after its last epoch but before it finished (no curves.png) is finished."""
    run = Path(run)
    if not (run / "config.json").is_file():
        raise RunError(f"--resume {run}: no config.json there; is it a minunet run folder?")
    with FolderLock(run, "minunet train --resume"):
        config = _read_config(run)
        done, stopped = position(run)
        if patience is not None:
            config["patience"] = patience
        finished = (run / "curves.png").exists()
        if epochs is not None:
            if epochs <= done:
                raise RunError(f"--resume {run}: the run has already trained {done} epochs and "
                               f"--epochs is the total; give --epochs more than {done}")
            before, config["epochs"] = config["epochs"], epochs
            if before != epochs:
                _say(progress, f"minunet train: {run} now trains up to {epochs} epochs (was "
                               f"{before})")
        elif done >= config["epochs"] and finished:
            raise RunError(f"--resume {run}: the run has finished its {done} epochs; to train "
                           f"further give --epochs N with N > {done}")
        early = (stopped is not None and config["patience"] is not None
                 and stopped >= config["patience"])
        if early and patience is None and finished:
            raise RunError(f"--resume {run}: the run stopped early ({stopped} epochs without "
                           f"improvement, --patience {config['patience']}); to go on, give a "
                           f"larger --patience")
        if data is not None:
            rundata.check_given(data)
            config["data"] = os.path.abspath(data)
            config["data_relative_to_run"] = os.path.relpath(config["data"],
                                                             os.path.abspath(run))
        check(config)
        prepared = _prepare(config, run, resuming=True)
        start = _load_start(config) if config.get("from") and done == 0 else None
        return _train(run, config, prepared, start, resume=True, progress=progress)


def position(run: Path) -> tuple[int, int | None]:
    """(epochs finished, epochs without improvement) from last.npz; (0, None) if none yet."""
    from ..checkpoint import load

    if not (run / "last.npz").is_file():
        return 0, None
    state = load(run / "last.npz").position or {}
    return int(state.get("epoch", 0)), state.get("bad_epochs")


# ------------------------------------------------------------------------- the training
@dataclass
class Prepared:
    """What a run trains on, all checked: samples, validation, what is learned from labels."""

    names: list[str]
    val_idx: list[int]
    train_data: Any
    val_data: Any
    val_labels: list[np.ndarray]
    tune_x: Any                       # images the seed threshold is tuned on (x[i, 0])
    tune_labels: list[np.ndarray]
    post: dict[str, Any]
    diameter: float | None
    digests: dict[str, str] | None
    band: float | None = None         # validation on held-out bands (`_held_out_bands`)
    n_user: int | None = None         # the user's training samples, when replay adds others
    crop_note: str | None = None      # the default crop shrank to the images (`_fit_crop`)


def _train(run: Path, config: dict[str, Any], prepared: Prepared, start: Any, *,
           resume: bool, progress: bool) -> Run:
    """Everything is checked: only now is anything written. Train, tune, draw the curves."""
    import minunet as mu

    from .. import workflow
    from ..unet import UNet

    result = Run(run)
    try:
        remove_stale_temps(run, RUN_FILES)
        _write_json(run / "config.json", config)
        if resume and position(run)[0] >= config["epochs"]:
            _finish(run, config, prepared, progress)   # killed after the last epoch: finish
            result.stop_reason = f"finished {config['epochs']} epochs"
            return result
        model = start.model if start is not None else UNet(
            len(config.get("channels") or [0]), 3, depth=config["depth"],
            base_channels=config["base"],
            rng=np.random.default_rng(config["seed"]))
        n_train = prepared.n_user or len(prepared.train_data[0] if isinstance(
            prepared.train_data, tuple) else prepared.train_data)
        samples = config["samples_per_epoch"]
        samples = None if samples is None else max(samples, n_train)  # at least one pass
        if config.get("replay"):
            if samples is not None:  # the user's crops, and replay's
                samples = math.ceil(samples / (1 - config["replay"]))
            _say(progress, f"replay: {config['replay']:.0%} of the crops come from images "
                           f"generated by the recipe of {config['from']['model']} (preset "
                           f"{config['replay_recipe']['preset']}); --replay 0: none")
        steps = config["epochs"] * math.ceil((samples or n_train) / config["batch_size"])
        schedule = None
        if config.get("schedule") == "cosine":
            schedule = mu.CosineSchedule(config["lr"], total_steps=steps,
                                         warmup_steps=min(config["warmup"], steps - 1))
        has_val = bool(prepared.val_idx)
        score_fn = (workflow.object_score_fn(prepared.val_labels, postprocess=prepared.post)
                    if has_val else None)
        metadata = {"normalization": config["normalization"], "postprocess": prepared.post,
                    "diameter": prepared.diameter, "channels": config.get("channels")}
        history = mu.train(
            model, prepared.train_data, prepared.val_data if has_val else None,
            epochs=config["epochs"], batch_size=config["batch_size"], lr=config["lr"],
            schedule=schedule, augment=workflow.make_augment(), crop=config["crop"],
            score_fn=score_fn, monitor=config["monitor"],
            patience=config["patience"], seed=config["seed"], out_dir=run, resume=resume,
            metadata=metadata, progress=progress, samples_per_epoch=samples,
            freeze_norm=config.get("freeze_norm", False))
        _finish(run, config, prepared, progress)
    except OSError as err:
        if err.errno in WRITE_ERRORS or (
                err.filename and Path(err.filename).parent.resolve() == run.resolve()):
            raise _write_error(err, run) from err
        raise
    result.stop_reason = history.stop_reason
    return result


def _monitor(prepared: Prepared) -> str:
    """What picks the kept epoch: validation object F1 when the validation images hold enough
    objects to tell epochs apart; else the last epoch, where the cosine schedule has come to
    rest ("epoch" only grows)."""
    return "val_f1" if _n_objects(prepared.val_labels) >= MIN_VALIDATION_OBJECTS else "epoch"


def _n_objects(labels: list[np.ndarray]) -> int:
    """How many objects a list of label images holds."""
    return sum(len(np.unique(lab[lab > 0])) for lab in labels)


def _finish(run: Path, config: dict[str, Any], prepared: Prepared, progress: bool) -> None:
    """Tune the seed threshold of best.npz on the validation images (on the training images
    when none are held out); a fine-tuning run validated on held-out bands keeps the model it
    started from if that scores better there (`_better_start`). Then draw curves.png: the
    run is complete."""
    from .. import viz, workflow
    from ..checkpoint import load, save

    ckpt = load(run / "best.npz")
    thresholds = _seed_thresholds(config, prepared)
    post, f1 = workflow.best_postprocess(ckpt.model, prepared.tune_x, prepared.tune_labels,
                                         prepared.post, seed_thresholds=thresholds)
    on = ("held-out bands" if prepared.band else "validation images" if prepared.val_idx
          else "training images (none held out)")
    kept = (f"; the seed threshold is the starting model's (under {MIN_VALIDATION_OBJECTS} "
            f"objects to tune it on)" if len(thresholds) == 1 else "")
    _say(progress, f"post-processing tuned on the {on}: {post}{kept}")
    model, position = ckpt.model, ckpt.position
    start = _better_start(config, prepared, f1, thresholds) if prepared.band else None
    if start is not None:
        model, post, start_f1 = start
        position = {**(position or {}), "kept": "start", "start_f1": start_f1,
                    "finetuned_f1": f1}
        _say(progress, f"kept the model the run started from: on the held-out bands it scores "
                       f"object F1 {start_f1:.3f}, the fine-tuned one {f1:.3f}")
    save(model, run / "best.npz", position=position, **{**ckpt.metadata, "postprocess": post})
    write_atomic(run / "curves.png", lambda tmp: viz.training_curves(run / "log.jsonl", tmp))


def _seed_thresholds(config: dict[str, Any], prepared: Prepared) -> tuple[float, ...]:
    """The seed thresholds `_finish` chooses from: all of workflow.SEED_THRESHOLDS, but only
    the starting model's own when a fine-tuning run's tuning images hold fewer than
    MIN_VALIDATION_OBJECTS objects. With a dozen nuclei in the bands of 2 `broad` images the
    tuning picked 0.9 by chance, where the bundled model's validation chose 0.7, and the
    fine-tuned model lost on new images for it (bench/finetune.py; docs/training.md)."""
    from .. import workflow

    own = (config.get("from") or {}).get("seed_thresh")
    if own is not None and _n_objects(prepared.tune_labels) < MIN_VALIDATION_OBJECTS:
        return (own,)
    return tuple(workflow.SEED_THRESHOLDS)


def _better_start(config: dict[str, Any], prepared: Prepared, finetuned_f1: float,
                  thresholds: tuple[float, ...]) -> tuple[Any, dict[str, Any], float] | None:
    """(model, its tuned post-processing, its object F1) of the model the run started from,
    when it scores better than `finetuned_f1` on the held-out bands; else None.

    A tie keeps the fine-tuned model, which the user asked for: a band holds few objects (3-5
    large `lab` nuclei per band of a 256-px image), and the start ties there at F1 1.0 while
    it scores 0.79 on new images against the fine-tuned 0.92 (bench/finetune.py, 1 `lab`
    image, tried both ways)."""
    from .. import workflow

    try:
        start = _load_start(config)
    except RunError:   # the starting model is gone: nothing to compare with
        return None
    post, f1 = workflow.best_postprocess(start.model, prepared.tune_x, prepared.tune_labels,
                                         prepared.post, seed_thresholds=thresholds)
    return (start.model, post, f1) if f1 > finetuned_f1 else None


def _write_error(err: OSError, run: Path) -> RunError:
    done = Run(run).epochs_done
    where = err.filename or f"a file in {run}"
    then = (f"{done} epochs are saved in {run}; free space (or fix the folder), then continue "
            f"with: minunet train --resume {run}" if done else
            "free space (or fix the folder), then run the same command again")
    return RunError(f"cannot write {where} ({err.strerror or err}); {then}")


def _read_position(path: Path) -> dict[str, Any]:
    from ..checkpoint import load

    try:
        return load(path).position or {}
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------- the data
def _prepare(config: dict[str, Any], run: Path, *, resuming: bool,
             chosen: bool = False, fit_crop: bool = False) -> Prepared:
    """Read (or scan, --lazy) the data, draw the validation images, check sizes, learn the
    post-processing and diameter from the training labels. Nothing is written.

    fit_crop: the crop was not given, so a default crop larger than the smallest training
    image shrinks to fit it (`_fit_crop`) instead of refusing the data."""
    from .. import workflow

    if config.get("data") and _is_lazy(config):
        return _prepare_lazy(config, run, resuming, chosen, fit_crop)
    if config.get("data"):
        root = rundata.data_folder(config, run)
        pairs = rundata.find(root, config, run)
        names = rundata.names_of(pairs, root)
        if config.get("channels"):     # images (H, W, C) of the chosen channels
            images, labels, digests = rundata.read_channels(pairs, root, config["channels"])
        else:
            images, labels, digests = rundata.read(pairs, root)
        if resuming:
            rundata.check_unchanged(config, digests, root, run)
    else:
        images, labels, names, digests = _generated(config)
    val_idx = _validation(config, names, resuming, chosen)
    held_out = set(val_idx)
    train_idx = [i for i in range(len(names)) if i not in held_out]
    shapes = [im.shape[:2] for im in images]
    note = _fit_crop(config, [shapes[i] for i in train_idx]) if fit_crop else None
    rundata.check_sizes(config["crop"], config["depth"],
                        [(shapes[i], names[i]) for i in train_idx],
                        [(shapes[i], names[i]) for i in val_idx])
    if config.get("channels"):  # each channel normalised on its own
        x, t, w = rundata.channel_samples(images, labels, config["normalization"], names)
    else:
        x, t, w = workflow.training_samples(images, labels, config["normalization"],
                                            names=names)
    band = (config.get("val_band") if resuming else
            HELD_OUT_BAND if config.get("from") and not val_idx and not chosen else None)
    if band:
        prepared = _held_out_bands(config, names, band, x, t, w, labels, digests)
    else:
        train_data = _as_batch([x[i] for i in train_idx], [t[i] for i in train_idx],
                               [w[i] for i in train_idx])
        prepared = _with_validation(config, names, val_idx, train_idx, train_data,
                                    lambda i: (x[i], t[i], w[i]), lambda i: labels[i], digests)
    if config.get("replay"):
        prepared.n_user = len(prepared.train_data[0])
        prepared.train_data = _with_replay(config, prepared.train_data)
    prepared.crop_note = note
    return prepared


def _fit_crop(config: dict[str, Any], shapes: list[tuple[int, int]]) -> str | None:
    """Shrink the default crop to the smallest training image (on the pooling grid), so that
    a few small annotated crops (say 100 x 100) train as they are; returns the note to print,
    or None when the crop fits. Below MIN_FITTED_CROP the data are left to `check_sizes`,
    which refuses them by name. A crop given by the user is never changed."""
    mult = 2 ** config["depth"]
    side = min((min(shape) for shape in shapes), default=config["crop"])
    fitted = side // mult * mult
    if side >= config["crop"] or fitted < MIN_FITTED_CROP:
        return None
    note = (f"crop {fitted}: the smallest training image has a side of {side} px, less than "
            f"the default crop {config['crop']}; --crop N sets it")
    config["crop"] = fitted
    return note


def _prepare_lazy(config: dict[str, Any], run: Path, resuming: bool,
                  chosen: bool, fit_crop: bool = False) -> Prepared:
    """--lazy (or a .zarr store): every file is read and checked once here, one at a time;
    training reads each sample from disk as it is used."""
    from ..io import lazy

    root = rundata.data_folder(config, run)
    try:
        if root.suffix == ".zarr":
            whole = lazy.open_set(root, config["normalization"])
            names = [f"sample {i}" for i in range(len(whole))]
            shapes = [whole.shape] * len(whole)
            digests = rundata.store_digests(root)
        else:
            pairs = rundata.find(root, config, run)
            names = rundata.names_of(pairs, root)
            shapes, digests = rundata.scan(pairs, root)
            whole = lazy.open_set(root, config["normalization"],
                                  image_suffix=config["image_suffix"],
                                  mask_suffix=config["mask_suffix"])
    except ImportError as err:
        raise RunError(f"--lazy needs the scale extra: pip install 'minunet[scale]' "
                       f"({err})") from err
    except RunError:
        raise
    except (ValueError, OSError) as err:
        raise RunError(f"--data {root}: {err}") from err
    if resuming:
        rundata.check_unchanged(config, digests, root, run)
    val_idx = _validation(config, names, resuming, chosen)
    held_out = set(val_idx)
    train_idx = [i for i in range(len(names)) if i not in held_out]
    note = _fit_crop(config, [shapes[i] for i in train_idx]) if fit_crop else None
    rundata.check_sizes(config["crop"], config["depth"],
                        [(shapes[i], names[i]) for i in train_idx],
                        [(shapes[i], names[i]) for i in val_idx])
    prepared = _with_validation(config, names, val_idx, train_idx,
                                lazy.subset(whole, train_idx), lambda i: whole.sample(i)[:3],
                                whole.read_labels, digests)
    prepared.crop_note = note
    return prepared


def _with_validation(config: dict[str, Any], names: list[str], val_idx: list[int],
                     train_idx: list[int], train_data: Any, sample: Any, labels_of: Any,
                     digests: dict[str, str] | None) -> Prepared:
    """The validation arrays (cut to the pooling grid), the images the seed threshold is
    tuned on, and what the training labels teach (min_size, diameter)."""
    from .. import workflow

    mult = 2 ** config["depth"]
    val = [tuple(_crop_to(a, mult) for a in sample(i)) for i in val_idx]
    val_labels = [_crop_to(labels_of(i), mult) for i in val_idx]
    train_labels = [labels_of(i) for i in train_idx]
    val_data = _as_batch(*(list(part) for part in zip(*val, strict=True))) if val else None
    if val_idx:
        tune_x, tune_labels = _Images([v[0] for v in val]), val_labels
    else:
        tune_x = _Images([_crop_to(sample(i)[0], mult) for i in train_idx])
        tune_labels = [_crop_to(lab, mult) for lab in train_labels]
    post = workflow.postprocess_settings(train_labels)
    start_min_size = (config.get("from") or {}).get("min_size")
    if start_min_size is not None:      # fine-tuning: the start's filter, within your cells
        post["min_size"] = workflow.finetune_min_size(train_labels, start_min_size)
    return Prepared(names=names, val_idx=val_idx, train_data=train_data, val_data=val_data,
                    val_labels=val_labels, tune_x=tune_x, tune_labels=tune_labels,
                    post=post, diameter=_diameter(train_labels, config), digests=digests)


def _held_out_bands(config: dict[str, Any], names: list[str], band: float, x: list,
                    t: list, w: list, labels: list, digests: dict[str, str] | None
                    ) -> Prepared:
    """Fine-tuning on fewer than MIN_VALIDATION_IMAGES images: validation on a band of each
    image instead of whole images. The last `band` share of an image's longer side (on the
    pooling grid) is held out, the rest trains; an image whose rest would be narrower than
    the crop trains whole. No band at all: no validation (as without bands)."""
    mult = 2 ** config["depth"]
    pieces, train_idx, val_idx = [], [], []
    for i in range(len(names)):
        H, W = labels[i].shape
        side = max(H, W)
        width = max(mult, round(side * band / mult) * mult)
        if side - width < config["crop"]:
            train_idx.append(len(pieces))
            pieces.append((x[i], t[i], w[i], labels[i]))
            continue
        cut = side - width
        keep = (slice(None), slice(None, cut)) if W >= H else (slice(None, cut), slice(None))
        held = (slice(None), slice(cut, None)) if W >= H else (slice(cut, None), slice(None))
        train_idx.append(len(pieces))
        pieces.append((x[i][(..., *keep)], t[i][keep], w[i][keep], labels[i][keep]))
        val_idx.append(len(pieces))
        pieces.append((x[i][(..., *held)], t[i][held], w[i][held], labels[i][held]))
    train_data = _as_batch([pieces[j][0] for j in train_idx], [pieces[j][1] for j in train_idx],
                           [pieces[j][2] for j in train_idx])
    prepared = _with_validation(config, [f"piece {j}" for j in range(len(pieces))], val_idx,
                                train_idx, train_data, lambda j: pieces[j][:3],
                                lambda j: pieces[j][3], digests)
    prepared.names = names
    prepared.band = band if val_idx else None
    return prepared


class _Images:
    """`x[i]` (Cin, H, W) over per-sample arrays of different sizes (as tune_postprocess
    indexes its (n, Cin, H, W) input)."""

    def __init__(self, xs: list[np.ndarray]) -> None:
        self.xs = xs

    def __len__(self) -> int:
        return len(self.xs)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.xs[i]


def _validation(config: dict[str, Any], names: list[str], resuming: bool,
                chosen: bool) -> list[int]:
    if resuming and "val_images" in config:  # the run's own draw, by name
        where = {name: i for i, name in enumerate(names)}
        return sorted(where[n] for n in config["val_images"] if n in where)
    val_idx = rundata.validation_draw(len(names), config["val_fraction"], config["seed"],
                                      chosen=chosen or resuming)
    if resuming:  # a run of a minunet that held out the first files: resume it the same way
        val_idx = list(range(len(val_idx)))
    return val_idx


def _with_replay(config: dict[str, Any], train_data: tuple) -> tuple[list, list, list]:
    """The user's training samples (x, t, w) and images generated by the starting model's
    recipe, listed so that a pass over the list draws the share `replay` of its samples from
    the generated ones: the user's samples are listed k times (the same arrays, not copies).

    The generated images are a draw of their own (the run's seed + REPLAY_SEED), the same on
    every resume; there are n replay / (1 - replay) of them for n user samples, within
    REPLAY_IMAGES."""
    from .. import data, workflow

    share, recipe = config["replay"], config["replay_recipe"]
    x, t, w = (list(part) for part in train_data)
    low, high = REPLAY_IMAGES
    n_replay = int(np.clip(round(len(x) * share / (1 - share)), low, high))
    repeats = max(1, round(n_replay * (1 - share) / (share * len(x))))
    side = max(config["crop"], *recipe["size"])
    images, labels, _ = data.generate(n_replay, recipe["preset"], size=(side, side),
                                      seed=config["seed"] + REPLAY_SEED, **recipe["knobs"])
    rx, rt, rw = workflow.training_samples(images, [lab.astype(np.int32) for lab in labels],
                                           config["normalization"],
                                           names=[f"replay image {i}" for i in range(n_replay)])
    return x * repeats + rx, t * repeats + rt, w * repeats + rw


def _generated(config: dict[str, Any]) -> tuple[list, list, list[str], None]:
    from .. import data
    from ..data import presets

    if config["preset"] not in presets.PRESETS:
        raise RunError(f"--preset {config['preset']!r} is not one of "
                       f"{', '.join(presets.PRESETS)}")
    images, labels, _ = data.generate(config["n"], config["preset"],
                                      size=tuple(config["size"]), seed=config["seed"])
    return (list(images), [lab.astype(np.int32) for lab in labels],
            [f"{config['preset']}-{i}" for i in range(len(images))], None)


def _diameter(labels: list[np.ndarray], config: dict[str, Any]) -> float | None:
    """The median object diameter of the training labels (for predict --diameter); the
    starting model's when the labels hold no objects."""
    from ..rescale import object_diameter

    try:
        return object_diameter(labels)
    except ValueError:
        return (config.get("from") or {}).get("diameter")


def _is_lazy(config: dict[str, Any]) -> bool:
    return bool(config.get("lazy")) or str(config.get("data") or "").endswith(".zarr")


def _crop_to(a: np.ndarray, mult: int) -> np.ndarray:
    """Cut the last two axes down to multiples of `mult` (the U-Net's pooling grid)."""
    H, W = a.shape[-2:]
    return a[..., :H // mult * mult, :W // mult * mult]


def _as_batch(x: list, t: list, w: list) -> tuple:
    """Per-sample lists -> stacked arrays when all samples have one size (faster), else lists."""
    if len({a.shape for a in x}) == 1:
        return np.stack(x), np.stack(t), np.stack(w)
    return x, t, w


# ------------------------------------------------------------------------- the model
def _starting_model(spec: str | os.PathLike, config: dict[str, Any],
                    settings: dict[str, Any]) -> Any:
    """Load the model to start from; the run takes its architecture and normalisation and
    records where it started (path and digest)."""
    from ..checkpoint import load, resolve
    from ..predict import DEFAULT_NORMALIZATION

    try:
        path = resolve(spec)
        start = load(path)
    except (OSError, ValueError) as err:
        raise RunError(f"--from {spec}: {err}") from err
    arch = start.model.config() if hasattr(start.model, "config") else {}
    wanted = len(config.get("channels") or [0])   # input channels the run trains on
    if (arch.get("in_channels", 1) != wanted or arch.get("num_classes", 3) != 3
            or "depth" not in arch):
        raise RunError(f"--from {spec}: {path} is not a {wanted}-channel, 3-class UNet "
                       f"({type(start.model).__name__} {arch}); start from another model")
    for key, arch_key in (("depth", "depth"), ("base", "base_channels")):
        if settings.get(key) is not None and settings[key] != arch[arch_key]:
            raise RunError(f"--{key} {settings[key]}: the run starts from {spec}, whose "
                           f"{arch_key} is {arch[arch_key]}; leave --{key} out")
        config[key] = arch[arch_key]
    config["normalization"] = start.metadata.get("normalization", DEFAULT_NORMALIZATION)
    if config["replay"]:
        recipe = start.metadata.get("recipe") or {}
        why = ("it stores no training recipe (only models trained on generated images by "
               "bench/train_pretrained.py, such as nuclei, do)"
               if not {"preset", "knobs", "size"} <= set(recipe) else
               "--lazy reads the data as it trains" if _is_lazy(config) else
               "--channels trains a model of several channels" if config.get("channels")
               else None)
        if why and settings.get("replay"):
            raise RunError(f"--replay {settings['replay']}: cannot replay the training images "
                           f"of {spec}: {why}; leave --replay out (or give 0)")
        if why:
            config["replay"] = 0.0
        else:
            config["replay_recipe"] = {k: recipe[k] for k in ("preset", "knobs", "size")}
    config["from"] = {"model": str(spec), "checkpoint": str(path.resolve()),
                      "sha256": rundata.file_digest(path),
                      "diameter": start.metadata.get("diameter"),
                      "seed_thresh": (start.metadata.get("postprocess") or {}).get("seed_thresh"),
                      "min_size": (start.metadata.get("postprocess") or {}).get("min_size")}
    return start


def _load_start(config: dict[str, Any]) -> Any:
    """A run resumed before its first epoch finished starts again from its model."""
    from ..checkpoint import load

    record = config["from"]
    path = Path(record["checkpoint"])
    if not path.is_file() or rundata.file_digest(path) != record["sha256"]:
        raise RunError(f"the run started from {path}, which is gone or changed, before its "
                       "first epoch finished; start a new run with --out")
    return load(path)


# ------------------------------------------------------------------------- the folder
def _check_new_folder(run: Path, overwrite: bool) -> None:
    if run.exists() and not run.is_dir():
        raise RunError(f"--out {run} is a file; give a folder for the run")
    entries = [p for p in run.iterdir() if p.name != LOCK_NAME] if run.is_dir() else []
    if entries and not overwrite:
        if any((run / f).exists() for f in RUN_FILES):
            raise RunError(f"--out {run} is an existing run; continue it with --resume {run}, "
                           f"or replace it with --overwrite")
        raise RunError(f"--out {run} is a folder that is not empty; give a new folder, or "
                       "--overwrite to write the run into it")


def _make_folder(run: Path) -> None:
    import tempfile

    try:
        run.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run, prefix=".write-test-"):
            pass
    except OSError as err:
        raise RunError(f"output folder {run} is not writable: {err.strerror or err}") from err


def _forget_failed_start(run: Path) -> None:
    """A new run that failed before its first epoch leaves nothing: not its config, not its
    log (so that the same command can be run again); `fit` removes the folder it made."""
    if not (run / "last.npz").exists():
        for name in ("config.json", "log.jsonl"):
            (run / name).unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only an empty folder: a run's files, or another's lock, stay
    except OSError:
        pass


def _read_config(run: Path) -> dict[str, Any]:
    path = run / "config.json"
    try:
        config = load_json(path.read_text(), str(path))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # bad or too deep JSON
        raise RunError(f"{path} is not valid JSON ({err}); the run cannot be resumed") from err
    if not isinstance(config, dict):
        raise RunError(f"{path} does not hold a run's settings")
    return with_defaults(config)


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr)
