"""The training loop: batches, validation, logs, checkpoints, early stopping, resume.

    history = mu.train(model, (images, targets, weights), (val_images, val_targets, None),
                       epochs=30, batch_size=8, out_dir="run", patience=5)

Inside, each step is the loop a learner writes by hand (see examples/train_unet_arrays.py):

    logits = model.forward(x); loss = loss_fn.forward(logits, t, w)
    optimizer.zero_grad(); model.backward(loss_fn.backward()); optimizer.step()

Data are plain arrays: `(images (N, C, H, W) float, targets (N, H, W) int, weights (N, H, W)
float or None)`, or lists of per-sample arrays (`[(C, H, W), ...]`, `[(H, W), ...]`) when the
images differ in size (a lab's own data); then `crop` cuts every sample to one size.
Each epoch, the samples are shuffled by a generator made from `(seed, epoch)`,
and the same generator drives cropping and augmentation; so a run resumed after epoch e does
exactly what the uninterrupted run did, and the same seed gives the same result.

What lands in `out_dir` (every file replaced atomically, see `minunet.checkpoint`):

    log.jsonl   one JSON object per finished epoch: epoch, train_loss, val_loss and every score,
                lr, seconds
    last.npz    model + optimizer + training position after the last finished epoch
    best.npz    the model of the best epoch so far (by `monitor`)

A run killed at any moment loses at most the epoch in progress: `train(..., resume=True)`
continues from `last.npz`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import load, save
from .io.files import remove_stale_temps, write_atomic
from .layers.batchnorm import BatchNorm2d
from .losses import CrossEntropyLoss
from .module import Module
from .optim import Adam

Data = tuple  # (images (N, C, H, W), targets (N, H, W) int, weights (N, H, W) | None)
Augment = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.random.Generator],
                   tuple[np.ndarray, np.ndarray, "np.ndarray | None"]]
ScoreFn = Callable[[Module, Data], dict[str, float]]

DEFAULT_LR = 1e-3  # Adam's usual starting rate; works for U-Nets with batch norm
LOG_NAME, LAST_NAME, BEST_NAME = "log.jsonl", "last.npz", "best.npz"


class TrainingDiverged(FloatingPointError):
    """The loss (or a weight) became NaN or inf; the last good checkpoint is kept."""


@dataclass
class History:
    """What `train` returns: the per-epoch records (as in log.jsonl) and how the run ended."""

    records: list[dict[str, Any]] = field(default_factory=list)
    monitor: str = "val_loss"
    best_epoch: int | None = None
    best_score: float | None = None
    stop_reason: str = ""

    def __getitem__(self, key: str) -> list[Any]:
        """One column: `history["val_loss"]` -> [epoch 1's, epoch 2's, ...]."""
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)


def train(
    model: Module,
    train_data: Data,
    val_data: Data | None = None,
    *,
    epochs: int,
    batch_size: int = 8,
    optimizer: Any = None,
    lr: float | None = None,
    schedule: Callable[[int], float] | None = None,
    loss: Any = None,
    augment: Augment | None = None,
    crop: int | tuple[int, int] | None = None,
    score_fn: ScoreFn | None = None,
    monitor: str = "val_loss",
    patience: int | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    samples_per_epoch: int | None = None,
    freeze_norm: bool = False,
) -> History:
    """Train `model` on arrays; return the `History`. See the module docstring.

    train_data: (images (N, C, H, W) float, targets (N, H, W) int, weights (N, H, W) or None)
    val_data:   the same for validation (or None: then `monitor` falls back to train_loss)
    epochs:     total number of epochs (a resumed run continues up to this number)
    batch_size: samples per step (the last batch of an epoch may be smaller)
    optimizer:  an optimizer over model.parameters() (default: Adam with `lr`)
    lr:         learning rate of the default Adam (default 1e-3); not with `optimizer`
    schedule:   optional `step -> lr` (e.g. CosineSchedule), applied before every step
    loss:       object with forward(logits, target, weight) -> float and backward() -> dlogits
                (default: CrossEntropyLoss, weighted by the weight maps when given)
    augment:    `augment(image (C,H,W), target (H,W), weight (H,W) or None, rng) -> same
                triple`, applied to every training sample (after cropping)
    crop:       train on random crops of this size (int or (h, w)) instead of whole images
    score_fn:   `score_fn(model, val_data) -> {name: value}` in eval mode (default:
                `evaluate`: val_loss and val_pixel_accuracy)
    monitor:    the record entry that decides the best epoch and early stopping; names
                ending in "loss" are better when lower, all others when higher
    patience:   stop after this many epochs without improvement (None: never stop early)
    seed:       seeds shuffling, cropping and augmentation (same seed -> same run)
    out_dir:    folder for log.jsonl, last.npz, best.npz (None: nothing written). A new run
                (resume=False) replaces what an earlier run left there.
    resume:     continue from out_dir/last.npz (model, optimizer, epoch, best score); starts
                from scratch when there is none yet
    metadata:   JSON-able dict stored in every checkpoint (e.g. the input normalisation)
    progress:   a progress bar per epoch on a terminal, one plain line per epoch otherwise
    samples_per_epoch: samples drawn per epoch (None: one pass over train_data). More than
                the set holds: successive shuffles of the whole set, so that a handful of
                images still gives an epoch of many (differently cropped) steps
    freeze_norm: batch norm layers stay in eval mode while the rest trains: they normalise
                with their running statistics, which do not move, and only gamma and beta
                learn. For fine-tuning on a few images: their batch statistics would
                otherwise replace statistics learned from many (see `runs.FINETUNE_DEFAULTS`)
    """
    who = "train"
    images, targets, weights = _check_data(who, "train_data", train_data)
    if val_data is not None:
        _check_data(who, "val_data", val_data)
    if samples_per_epoch is not None and samples_per_epoch < 1:
        raise ValueError(f"{who}: samples_per_epoch must be >= 1 or None, got "
                         f"{samples_per_epoch}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"{who}: epochs and batch_size must be >= 1, got {epochs}, {batch_size}")
    if optimizer is not None and lr is not None:
        raise ValueError(f"{who}: give either an optimizer or lr (for the default Adam), not "
                         f"both; set optimizer.lr yourself")
    optimizer = optimizer or Adam(model.parameters(), lr=DEFAULT_LR if lr is None else lr)
    loss_fn = loss or CrossEntropyLoss()
    score_fn = score_fn or (lambda m, data: evaluate(m, data, loss_fn, batch_size))
    if val_data is None and monitor == "val_loss":
        monitor = "train_loss"
    if resume and out_dir is None:
        raise ValueError(f"{who}: resume=True needs the out_dir of the run to continue")
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    metadata = dict(metadata or {})

    if out is not None:
        remove_stale_temps(out, (LAST_NAME, BEST_NAME, LOG_NAME))  # writes a kill cut short
    if crop is None and not isinstance(images, np.ndarray) and len(
            {x.shape[1:] for x in images}) > 1:
        raise ValueError(f"{who}: the training images differ in size; give crop=(h, w) to cut "
                         f"every sample to one size")
    history = History(monitor=monitor)
    state = {"epoch": 0, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0,
             "seed": seed, "monitor": monitor}
    if resume and (out / LAST_NAME).exists():
        state, history.records = _resume(out, model, optimizer, seed, monitor)
        _say(progress, f"resuming from {out / LAST_NAME}: {state['epoch']} epochs done")
    elif out is not None:
        _write_log(out, [])  # a new run starts a new log

    history.stop_reason = f"finished {epochs} epochs"
    for epoch in range(state["epoch"], epochs):
        if _patience_ran_out(state, patience):  # a resumed run that had stopped early
            history.stop_reason = _early_stop_reason(state, patience, monitor)
            break
        started = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])  # the whole epoch's randomness
        _train_mode(model, freeze_norm)
        train_loss = _train_one_epoch(model, optimizer, loss_fn, schedule, images, targets,
                                      weights, batch_size, crop, augment, rng, state,
                                      f"epoch {epoch + 1}/{epochs}", progress, out,
                                      samples_per_epoch)
        if not all(np.isfinite(np.sum(p.data)) for p in model.parameters()):
            raise TrainingDiverged(_diverged_message(
                f"a weight became NaN or inf during epoch {epoch + 1}", out, state, optimizer))

        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss}
        if val_data is not None:
            model.eval()
            record.update({k: float(v) for k, v in score_fn(model, val_data).items()})
            _train_mode(model, freeze_norm)
        record["lr"] = optimizer.lr
        record["seconds"] = round(time.perf_counter() - started, 3)
        bad = [k for k, v in record.items() if k.endswith("loss") and not math.isfinite(v)]
        if bad:
            raise TrainingDiverged(_diverged_message(
                f"{bad[0]} became {record[bad[0]]} at epoch {epoch + 1}", out, state, optimizer))
        if monitor not in record:
            raise KeyError(f"{who}: monitor={monitor!r} is not among the epoch's entries "
                           f"{sorted(record)}")
        score = record[monitor]
        improved = math.isfinite(score) and (state["best"] is None or (
            score < state["best"] if monitor.endswith("loss") else score > state["best"]))
        if improved:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        history.records.append(record)
        if out is not None:
            # Order matters for resume: log, then best, then last (which says the epoch is done).
            with _writing(out / LOG_NAME):
                _append_log(out, record)
            if improved:
                with _writing(out / BEST_NAME):
                    save(model, out / BEST_NAME, position=dict(state), **metadata)
            with _writing(out / LAST_NAME):
                save(model, out / LAST_NAME, optimizer, position=dict(state), **metadata)
        _say(progress, _epoch_line(record, epochs, improved))
        if _patience_ran_out(state, patience):
            history.stop_reason = _early_stop_reason(state, patience, monitor)
            break
    history.best_epoch, history.best_score = state["best_epoch"], state["best"]
    model.train()
    return history


def _train_mode(model: Module, freeze_norm: bool) -> None:
    """model.train(), with its batch norm layers left in eval mode when freeze_norm."""
    model.train()
    if freeze_norm:
        for _, module in model.named_modules():
            if isinstance(module, BatchNorm2d):
                module.training = False


def _train_one_epoch(model: Module, optimizer: Any, loss_fn: Any,
                     schedule: Callable[[int], float] | None, images: np.ndarray,
                     targets: np.ndarray, weights: np.ndarray | None, batch_size: int,
                     crop: int | tuple[int, int] | None, augment: Augment | None,
                     rng: np.random.Generator, state: dict[str, Any], title: str,
                     progress: bool, out: Path | None,
                     samples_per_epoch: int | None = None) -> float:
    """One epoch: one pass over the shuffled training set, or `samples_per_epoch` samples
    from successive shuffles; returns the mean training loss."""
    N = len(images)
    order = rng.permutation(N)
    if samples_per_epoch is not None:
        passes = [order] + [rng.permutation(N) for _ in range(-(-samples_per_epoch // N) - 1)]
        order = np.concatenate(passes)[:samples_per_epoch]
    n_batches = math.ceil(len(order) / batch_size)
    started = time.perf_counter()
    loss_sum, seen = 0.0, 0
    from tqdm import tqdm  # here, not at import: `minunet predict` never trains

    bar = tqdm(total=n_batches, desc=title, unit="batch", file=sys.stderr, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    with bar:
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, t, w = _make_batch(images, targets, weights, idx, crop, augment, rng, model.dtype)
            if schedule is not None:
                optimizer.lr = schedule(state["step"])
            logits = model.forward(x)                   # (B, Kc, H, W)
            value = loss_fn.forward(logits, t, w)
            if not math.isfinite(value):
                raise TrainingDiverged(_diverged_message(
                    f"the loss became {value} at {title.split('/')[0]}, batch {b + 1}", out,
                    state, optimizer))
            optimizer.zero_grad()
            model.backward(loss_fn.backward())
            optimizer.step()
            state["step"] += 1
            loss_sum += value * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}",
                            img_s=f"{seen / (time.perf_counter() - started):.1f}")
            bar.update()
    return loss_sum / seen


def _patience_ran_out(state: dict[str, Any], patience: int | None) -> bool:
    return patience is not None and state["bad_epochs"] >= patience


def _early_stop_reason(state: dict[str, Any], patience: int | None, monitor: str) -> str:
    return (f"early stop after epoch {state['epoch']}: no better {monitor} for {patience} "
            f"epochs (best: epoch {state['best_epoch']})")


# ------------------------------------------------------------------------------ validation
def evaluate(model: Module, data: Data, loss_fn: Any = None, batch_size: int = 8,
             prefix: str = "val_") -> dict[str, float]:
    """Loss and pixel accuracy of `model` on `data`, in batches, in the model's current mode.

    The loss is the mean over the whole set (weighted by the weight maps when given), not a
    mean of batch means, so it does not depend on `batch_size`.
    """
    images, targets, weights = _check_data("evaluate", "data", data)
    loss_fn = loss_fn or CrossEntropyLoss()
    loss_total = weight_total = 0.0
    correct = n_pixels = 0
    if len(getattr(images, "shape", ())) == 4:  # one size (an array, or a set on disk)
        batches = [slice(s, s + batch_size) for s in range(0, images.shape[0], batch_size)]
    else:  # per-sample arrays of different sizes: one sample per forward
        batches = [slice(i, i + 1) for i in range(len(images))]
    for sl in batches:
        x = np.stack(images[sl]).astype(model.dtype, copy=False)         # (B, C, H, W)
        t = np.stack(targets[sl])                                        # (B, H, W)
        w = None if weights is None else np.stack(weights[sl]).astype(model.dtype, copy=False)
        logits = model.forward(x)                                        # (B, Kc, H, W)
        mass = float(t.size if w is None else np.sum(w, dtype=np.float64))
        loss_total += loss_fn.forward(logits, t, w) * mass
        weight_total += mass
        correct += int(np.count_nonzero(logits.argmax(axis=1) == t))
        n_pixels += t.size
    return {f"{prefix}loss": loss_total / weight_total,
            f"{prefix}pixel_accuracy": correct / n_pixels}


# ------------------------------------------------------------------------------ batches
def _check_data(who: str, name: str, data: Data) -> tuple[np.ndarray, np.ndarray,
                                                          np.ndarray | None]:
    if hasattr(data, "training_arrays"):  # a data set read from disk (minunet.io.lazy)
        return data.training_arrays()
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        raise TypeError(f"{who}: {name} must be (images, targets) or (images, targets, "
                        f"weights), got {type(data).__name__}")
    images, targets, weights = (*data, None) if len(data) == 2 else data
    if isinstance(images, (list, tuple)):
        return _check_samples(who, name, list(images), targets, weights)
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        raise ValueError(f"{who}: {name} images must be an (N, C, H, W) array, got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    N, _, H, W = images.shape
    if not (isinstance(targets, np.ndarray) and np.issubdtype(targets.dtype, np.integer)
            and targets.shape == (N, H, W)):
        raise ValueError(f"{who}: {name} targets must be an integer array of shape "
                         f"{(N, H, W)}, got {getattr(targets, 'dtype', '?')} "
                         f"{getattr(targets, 'shape', type(targets).__name__)}")
    if weights is not None and (not isinstance(weights, np.ndarray)
                                or weights.shape != (N, H, W)):
        raise ValueError(f"{who}: {name} weights must be None or an array of shape "
                         f"{(N, H, W)}, got {getattr(weights, 'shape', type(weights).__name__)}")
    if N == 0:
        raise ValueError(f"{who}: {name} holds no samples")
    return images, targets, weights


def _check_samples(who: str, name: str, images: list, targets: Any, weights: Any,
                   ) -> tuple[list, list, list | None]:
    """Per-sample arrays (images of different sizes): [(C, H, W)], [(H, W)], [(H, W)] | None."""
    if len(images) == 0:
        raise ValueError(f"{who}: {name} holds no samples")
    targets = list(targets) if isinstance(targets, (list, tuple, np.ndarray)) else targets
    weights = None if weights is None else list(weights)
    if not isinstance(targets, list) or len(targets) != len(images) or (
            weights is not None and len(weights) != len(images)):
        raise ValueError(f"{who}: {name} needs as many targets (and weights) as images "
                         f"({len(images)})")
    channels = None
    for i, x in enumerate(images):
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"{who}: {name} image {i} must be a (C, H, W) array, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        channels = channels or x.shape[0]
        if x.shape[0] != channels:
            raise ValueError(f"{who}: {name} image {i} has {x.shape[0]} channels, image 0 "
                             f"has {channels}")
        t = targets[i]
        if not (isinstance(t, np.ndarray) and np.issubdtype(t.dtype, np.integer)
                and t.shape == x.shape[1:]):
            raise ValueError(f"{who}: {name} target {i} must be an integer array of shape "
                             f"{x.shape[1:]}, got {getattr(t, 'dtype', '?')} "
                             f"{getattr(t, 'shape', type(t).__name__)}")
        if weights is not None and getattr(weights[i], "shape", None) != x.shape[1:]:
            raise ValueError(f"{who}: {name} weight {i} must have shape {x.shape[1:]}")
    return images, targets, weights


def _make_batch(images: np.ndarray, targets: np.ndarray, weights: np.ndarray | None,
                idx: np.ndarray, crop: int | tuple[int, int] | None,
                augment: Augment | None, rng: np.random.Generator,
                dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gather samples `idx`, crop and augment each with `rng`; return x, t, w for one step."""
    xs, ts, ws = [], [], []
    for i in idx:
        H, W = images[i].shape[1:]
        ch, cw = (H, W) if crop is None else (crop, crop) if isinstance(crop, int) else crop
        if ch > H or cw > W:
            raise ValueError(f"train: crop {(ch, cw)} is larger than image {i} {(H, W)}; "
                             f"lower crop")
        top, left = int(rng.integers(H - ch + 1)), int(rng.integers(W - cw + 1))
        window = (slice(top, top + ch), slice(left, left + cw))
        x, t = images[i][(slice(None), *window)], targets[i][window]   # (C, h, w), (h, w)
        w = None if weights is None else weights[i][window]           # (h, w)
        if augment is not None:
            x, t, w = augment(x, t, w, rng)
        xs.append(x)
        ts.append(t)
        ws.append(w)
    x = np.stack(xs).astype(dtype, copy=False)                         # (B, C, h, w)
    w = None if weights is None else np.stack(ws).astype(dtype, copy=False)
    return x, np.stack(ts), w


# ------------------------------------------------------------------------------ files
def _resume(out: Path, model: Module, optimizer: Any, seed: int,
            monitor: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ckpt = load(out / LAST_NAME, model)          # checks that the architecture matches
    state = ckpt.position
    if state is None or ckpt.optimizer_state is None:
        raise ValueError(f"train: {out / LAST_NAME} has no training position or optimizer "
                         f"state; it was not written by train()")
    if (state["seed"], state["monitor"]) != (seed, monitor):
        raise ValueError(f"train: the run in {out} used seed={state['seed']}, "
                         f"monitor={state['monitor']!r}; resume it with the same values (got "
                         f"seed={seed}, monitor={monitor!r})")
    if ckpt.optimizer_class != type(optimizer).__name__:
        raise ValueError(f"train: the run in {out} used {ckpt.optimizer_class}, this call "
                         f"gives {type(optimizer).__name__}")
    optimizer.load_state_dict(ckpt.optimizer_state)
    # Keep the log lines of the finished epochs only (a killed run may have written one more).
    records = [r for r in _read_log(out) if r["epoch"] <= state["epoch"]]
    _write_log(out, records)
    return state, records


def _read_log(out: Path) -> list[dict[str, Any]]:
    path = out / LOG_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is lost anyway
    return records


def _write_log(out: Path, records: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    write_atomic(out / LOG_NAME, lambda tmp: tmp.write_text(text))


def _append_log(out: Path, record: dict[str, Any]) -> None:
    with open(out / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError while writing `path` (a full disk, a lost mount) names the file."""
    try:
        yield
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, f"{err.strerror or err}", str(path)) from err


def _diverged_message(what: str, out: Path | None, state: dict[str, Any], optimizer: Any) -> str:
    kept = (f"the last good checkpoint is {out / LAST_NAME} (epoch {state['epoch']})"
            if out is not None and state["epoch"] > 0 else "no checkpoint was written yet")
    return (f"train stopped: {what}; {kept}. Try a lower learning rate (now {optimizer.lr:g}) "
            f"and check the data for NaN/inf.")


def _epoch_line(record: dict[str, Any], epochs: int, improved: bool) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}"]
    parts += [f"{k} {v:.4g}" for k, v in record.items()
              if k not in ("epoch", "seconds") and isinstance(v, float)]
    parts.append(f"{record['seconds']:.1f} s")
    return "  ".join(parts) + ("  (best)" if improved else "")


def _say(progress: bool, line: str) -> None:
    if progress:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)  # does not break a progress bar on screen
