"""One call from a trained model to instance labels, with the settings stored in the checkpoint.

    labels = mu.segment("run", image)              # a run folder, a .npz file or a model name
    ckpt = mu.load("run")                          # many images: load once ...
    labels = [mu.segment(ckpt, im) for im in images]   # ... and pass the checkpoint
    labels = mu.segment(ckpt, "slide.ome.tif", channel="DAPI")   # a channel, by index or name
    labels = mu.segment(ckpt, "stack.tif", stitch=0.5)  # a z-stack: (Z, H, W), one id per object

A checkpoint written by `minunet train` carries the input normalisation and the
post-processing settings learned from its training labels (`min_size`, ...). `segment` applies
exactly those, as `minunet predict` does (the command calls this function), so the labels are
identical to the command's output. `mu.to_instances(mu.predict(model, image))` alone uses the
defaults instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, load
from .io.images import ImageFile
from .kernels import ranks
from .module import Module
from .postprocess import FG_THRESH, MIN_SIZE, SEED_THRESH, to_instances
from .predict import DEFAULT_BATCH_SIZE, DEFAULT_TILE, normalize
from .workflow import segment as segment_with


def as_checkpoint(model: Checkpoint | Module | str | os.PathLike) -> Checkpoint | Module:
    """A Checkpoint or Module as it is; a path, run folder or pretrained name loaded."""
    if isinstance(model, (Checkpoint, Module)):
        return model
    return load(model)


def stored_settings(model: Checkpoint | Module) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(normalisation, post-processing settings) a checkpoint carries; defaults for a Module."""
    if isinstance(model, Checkpoint):
        return model.metadata.get("normalization"), dict(model.metadata.get("postprocess", {}))
    return None, {}


def segment(model: Checkpoint | Module | str | os.PathLike,
            image: np.ndarray | str | os.PathLike | ImageFile, *,
            channel: int | str | None = None, plane: int | None = None,
            stitch: float | None = None, exclude_edges: bool = False,
            tile: int = DEFAULT_TILE, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False,
            diameter: float | str | None = None, return_probs: bool = False,
            info: dict[str, Any] | None = None, **postprocess: Any,
            ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Instance labels (H, W) int32 (0 background) of one raw image of any size; a stack
    (P, H, W) for a z-stack or time series, each plane segmented on its own.

    model:        a checkpoint file, a run folder (best.npz, else last.npz), a pretrained
                  model's name, a loaded `Checkpoint` or a bare Module (default settings)
    image:        an array (axes by `io.images.plain_axes`: (H, W) gray, (H, W, 3|4) RGB(A),
                  (C, H, W) with C <= 4 channels, (Z, H, W) with Z > 4 planes, ...), an
                  `io.images.ImageFile`, or the path of a TIFF / OME-TIFF / PNG / NPY file
                  (its OME or ImageJ axes are used)
    channel:      the nuclear channel: 0-based index, or its name where the file has names
                  (OME). None: the only channel; RGB's luminance; else channel 0 (with a warning)
    plane:        segment only this plane (0-based) of a stack; the result is then (H, W)
    stitch:       join objects of consecutive planes whose overlap (IoU) is at least this
                  (Cellpose's stitch_threshold), so one object keeps one id through the stack;
                  None: ids are only unique (each plane's objects get their own ids)
    exclude_edges: remove objects that touch the image's edge (in each plane)
    tile, batch_size: as in `mu.predict` (they change speed and memory, not the result)
    progress:     a progress bar over tile batches for large images (on a terminal)
    diameter:     the objects' typical diameter in pixels, or "auto" to estimate it from the
                  image: the image is rescaled so that objects have the size the model was
                  trained on (checkpoint metadata "diameter"); None: the image as it is.
                  "auto" runs the model at the image's own scale and at half size, measures
                  the objects (`rescale.auto_scale`) and runs again only if they are off the
                  trained size (each plane of a stack on its own)
    info:         a dict to fill with what diameter="auto" found: "diameter_estimate" (px, or
                  None: too few objects) and "scale" (1: not resized); lists for a stack
    return_probs: also return the class probabilities (Kc, H, W), or (P, Kc, H, W)
    postprocess:  override a stored `to_instances` setting (e.g. min_size=10, seed_thresh=0.7,
                  fg_thresh=0.6: the probability a pixel needs to be foreground)
    """
    labels, probs, note, used = segment_image(
        model, image, channel=channel, plane=plane, stitch=stitch, exclude_edges=exclude_edges,
        tile=tile, batch_size=batch_size, progress=progress, diameter=diameter, **postprocess)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
    if info is not None and "diameter_estimate" in used:
        info.update(diameter_estimate=used["diameter_estimate"], scale=used["diameter_scale"])
    return (labels, probs) if return_probs else labels


def segment_image(model: Checkpoint | Module | str | os.PathLike,
                  image: np.ndarray | str | os.PathLike | ImageFile, *,
                  channel: int | str | None = None, plane: int | None = None,
                  stitch: float | None = None, exclude_edges: bool = False,
                  tile: int = DEFAULT_TILE, batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = False,
                  diameter: float | str | None = None, **postprocess: Any,
                  ) -> tuple[np.ndarray, np.ndarray, str | None, dict[str, Any]]:
    """`segment`, returning (labels, probabilities, a note for the user or None, the
    settings used: to_instances' thresholds and sizes, channel, plane, stitch, edges)."""
    from .io.images import image_from_array, read_image_file

    if isinstance(image, (str, os.PathLike)):
        image = read_image_file(image)
    elif not isinstance(image, ImageFile):
        image = image_from_array(image)
    if stitch is not None and not 0 < stitch <= 1:
        raise ValueError(f"segment: stitch must be an overlap (IoU) in (0, 1], got {stitch}")
    ckpt = as_checkpoint(model)
    normalization, stored = stored_settings(ckpt)
    network = ckpt.model if isinstance(ckpt, Checkpoint) else ckpt
    trained = ckpt.metadata.get("diameter") if isinstance(ckpt, Checkpoint) else None
    inputs = model_channels(ckpt, channel)
    if inputs is None:
        planes, note = image.select(channel, plane)      # (P, H, W) or (P, H, W, 3|4)
    else:  # a model of several input channels: each plane (P, Cin, H, W), one per input
        picked = [image.select(c, plane)[0] for c in inputs]
        planes, note = np.stack(picked, axis=1), None
    all_labels, all_probs = [], []
    settings = dict(stored)
    estimates, scales = [], []
    for raw in planes:
        scale, settings = 1.0, dict(stored)
        x, normalized = raw, False
        if inputs is not None:  # each channel normalised on its own, as in training
            x = np.stack([normalize(c, normalization, who=image.source) for c in raw])
            normalized = True
        wanted = diameter
        first_pass = None
        if diameter == "auto" and trained is not None:  # a first pass at the plane's own scale
            from .predict import predict
            from .rescale import PROBE_SCALE, auto_scale

            first_pass = segment_with(network, x, normalization, tile=tile,
                                      batch_size=batch_size, progress=progress,
                                      normalized=normalized, **{**settings, **postprocess})
            probe = predict(network, x, tile=tile, batch_size=batch_size,
                            normalization=normalization, normalized=normalized,
                            scale=PROBE_SCALE)
            found_scale, estimate = auto_scale(first_pass[1], trained, probe)
            estimates.append(estimate)
            scales.append(found_scale)
            wanted = None if found_scale == 1.0 else trained / found_scale
        if wanted is not None:
            from .rescale import plan

            first = raw if inputs is None else raw[0]
            scale, settings = plan(first, {"postprocess": stored, "diameter": trained}, wanted)
        if first_pass is not None:   # objects larger than trained: a larger size filter
            from .rescale import auto_settings

            settings = auto_settings(stored, estimates[-1], scale, trained)
        settings.update(postprocess)
        if first_pass is not None and wanted is None:   # the first pass was at the right size
            probs = first_pass[1]
            labels = to_instances(probs, **settings)
        else:
            labels, probs = segment_with(network, x, normalization, tile=tile,
                                         batch_size=batch_size, progress=progress, scale=scale,
                                         normalized=normalized, **settings)
        if exclude_edges:
            labels = remove_edge_objects(labels)
        all_labels.append(labels)
        all_probs.append(probs)
    used = {"fg_thresh": settings.get("fg_thresh", FG_THRESH),
            "seed_thresh": settings.get("seed_thresh", SEED_THRESH),
            "min_size": settings.get("min_size", MIN_SIZE), "exclude_edges": exclude_edges,
            "channel": channel, "plane": plane, "stitch": stitch, "diameter": diameter}
    if estimates:   # diameter="auto": what it measured (px, None: too few objects) and did
        one = len(estimates) == 1
        used["diameter_estimate"] = estimates[0] if one else estimates
        used["diameter_scale"] = scales[0] if one else scales
    if image.n_planes == 1 or plane is not None:
        return all_labels[0], all_probs[0], note, used
    stack = np.stack(all_labels)                                          # (P, H, W)
    stack = stitch_planes(stack, stitch) if stitch is not None else unique_ids(stack)
    return stack, np.stack(all_probs), note, used


def model_channels(model: Checkpoint | Module, channel: int | str | None
                   ) -> list[int | str] | None:
    """The image channels a model of several input channels reads, in its input order (its
    checkpoint's metadata "channels", e.g. [2, 0]: nucleus, then membrane); None for a model
    of one input channel (then `channel` picks it)."""
    network = model.model if isinstance(model, Checkpoint) else model
    n_in = int(getattr(network, "in_channels", 1))
    if n_in == 1:
        return None
    stored = model.metadata.get("channels") if isinstance(model, Checkpoint) else None
    if channel is not None:
        raise ValueError(f"this model reads {n_in} input channels"
                         + (f" (channels {stored})" if stored else "")
                         + "; channel= picks the one channel of a single-channel model")
    if not isinstance(stored, list) or len(stored) != n_in:
        raise ValueError(f"this model reads {n_in} input channels but its checkpoint does not "
                         "record which image channels (metadata 'channels', e.g. [2, 0])")
    return stored


def count_objects(labels: np.ndarray) -> int:
    """How many distinct non-zero ids an integer label image holds: len(np.unique(labels))
    less the background, by counting the ids instead of sorting the pixels (the bundled
    model's 4096^2 label image: 0.05 s instead of 0.2)."""
    if labels.size == 0:
        return 0
    counts, lowest = ranks.value_counts(labels)   # counts[v - lowest]: pixels of id v
    if lowest <= 0 < lowest + len(counts):
        counts[-lowest] = 0                        # the background is not an object
    return int(np.count_nonzero(counts))


def remove_edge_objects(labels: np.ndarray) -> np.ndarray:
    """Labels (H, W) without the objects that touch the image's edge, ids 1..n again."""
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    out = np.where(np.isin(labels, edge[edge > 0]), 0, labels)
    return _sequential(out)


def unique_ids(stack: np.ndarray) -> np.ndarray:
    """Per-plane labels (P, H, W), each 1..n_p -> one id per object over the whole stack."""
    out = stack.astype(np.int32, copy=True)
    offset = 0
    for p in range(len(out)):
        n = int(out[p].max(initial=0))
        out[p][out[p] > 0] += offset
        offset += n
    return out


def stitch_planes(stack: np.ndarray, threshold: float) -> np.ndarray:
    """Join objects across consecutive planes of (P, H, W) labels, as Cellpose's stitch3D: an
    object of plane p + 1 takes the id of the object of plane p it overlaps most, if their
    IoU is at least `threshold` (and that object was not taken by a better match); otherwise a
    new id. Returns int32 ids 1..n over the stack."""
    out = np.zeros(stack.shape, np.int32)
    out[0] = stack[0]
    next_id = int(stack[0].max(initial=0)) + 1
    for p in range(1, len(stack)):
        below, here = out[p - 1], stack[p]
        n_here = int(here.max(initial=0))
        if n_here == 0:
            continue
        iou = _iou_matrix(here, below)                  # (n_here + 1, n_below + 1)
        mapping = np.zeros(n_here + 1, np.int32)
        taken: set[int] = set()
        for i in np.argsort(-iou[1:].max(axis=1, initial=0)) + 1:  # best matches first
            j = int(np.argmax(iou[i])) if iou.shape[1] > 1 else 0
            if j > 0 and iou[i, j] >= threshold and j not in taken:
                mapping[i] = j
                taken.add(j)
            else:
                mapping[i], next_id = next_id, next_id + 1
        out[p] = mapping[here]
    return _sequential(out)


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every object of labels a with every object of labels b (row/column 0: none)."""
    na, nb = int(a.max(initial=0)) + 1, int(b.max(initial=0)) + 1
    overlap = np.bincount(a.ravel().astype(np.int64) * nb + b.ravel(),
                          minlength=na * nb).reshape(na, nb)
    area_a, area_b = overlap.sum(axis=1), overlap.sum(axis=0)
    union = area_a[:, None] + area_b[None, :] - overlap
    iou = overlap / np.maximum(union, 1)
    iou[0, :] = iou[:, 0] = 0
    return iou


def _sequential(labels: np.ndarray) -> np.ndarray:
    """Ids renumbered 1..n, keeping their order (int32)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lookup[labels]


OVERLAY_DIR, PROBS_DIR = "overlays", "probs"  # predict's extras, beside the label TIFFs
ROIS_SUFFIX = "_rois.zip"  # NAME_rois.zip: ImageJ ROIs (Fiji, QuPath), beside NAME.tif


def output_stem(path: Path) -> str:
    """The name a prediction's files take from the input: its stem without a trailing ".ome"
    (slide.ome.tif -> slide: the label file is not an OME-TIFF)."""
    stem = Path(path).stem
    return stem[:-4] if stem.lower().endswith(".ome") and len(stem) > 4 else stem


def prediction_outputs(path: Path, out: Path, probs: bool = False,
                       overlays: bool = False, rois: bool = False) -> list[Path]:
    """The files `minunet predict` writes for the input `path`: labels first, overlay last."""
    stem = output_stem(path)
    outputs = [out / f"{stem}.tif"]
    if probs:
        outputs.append(out / PROBS_DIR / f"{stem}.npy")
    if rois:
        outputs.append(out / f"{stem}{ROIS_SUFFIX}")
    if overlays:
        outputs.append(out / OVERLAY_DIR / f"{stem}.png")
    return outputs


def check_outputs(files: Sequence[Path], outputs: Mapping[Path, Sequence[Path]], out: Path,
                  overwrite: bool, *, folders: Sequence[Path] = (), who: str = "",
                  flag: str = "out_dir", how_to_overwrite: str = "overwrite=True") -> list[Path]:
    """The rules for what a batch of predictions writes, checked before anything is written
    (the command, `predict_files` and a cluster all use this one function). Refused:
    - `out` is a file (NotADirectoryError);
    - `out` is one of the input `folders`, or the folder of an input file: the labels would
      mix with the images (ValueError);
    - an output would replace an input, or two inputs would write the same file
      (ValueError; `outputs`: input -> the files it writes, `prediction_outputs`);
    - without `overwrite`, an output that exists (FileExistsError).
    Returns every output path (resolved). `who` prefixes the messages; `flag` names the
    output folder and `how_to_overwrite` the way to allow replacing in them."""
    say = f"{who}: " if who else ""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{say}{flag} {out} is a file; give a folder")
    out_real = out.resolve()
    for folder in folders:
        if folder.is_dir() and folder.resolve() == out_real:
            raise ValueError(f"{say}{flag} {out} is an input folder; the labels would mix with "
                             "the images (and could replace them): give another folder")
    inputs = {f.resolve(): f for f in files}
    for real, f in inputs.items():
        if real.parent == out_real:
            raise ValueError(f"{say}{flag} {out} is the folder of the input {f}; the labels "
                             "would mix with the images (and could replace them): give another "
                             "folder")
    by_target: dict[Path, Path] = {}
    for path, targets in outputs.items():
        for target in targets:
            real = target.resolve()
            if real in inputs:
                raise ValueError(f"{say}{target} would replace the input {inputs[real]}; give "
                                 f"another {flag}")
            if real in by_target:
                raise ValueError(f"{say}{by_target[real]} and {path} would both be written to "
                                 f"{target}: rename one of them or predict them separately")
            by_target[real] = path
    existing = [t for t in by_target if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"{say}{len(existing)} outputs already exist in {out} (e.g. "
                              f"{existing[0]}); give another {flag}, or {how_to_overwrite} to "
                              "replace them")
    return list(by_target)


def write_prediction(model: Checkpoint | Module, path: Path, out: Path, *,
                     image: np.ndarray | ImageFile | None = None, tile: int = DEFAULT_TILE,
                     probs: bool = False, overlays: bool = False, progress: bool = False,
                     diameter: float | str | None = None, channel: int | str | None = None,
                     plane: int | None = None, stitch: float | None = None,
                     exclude_edges: bool = False, postprocess: dict[str, Any] | None = None,
                     say: Callable[[str], None] | None = None, rois: bool = False,
                     info: dict[str, Any] | None = None,
                     ) -> tuple[Path, int]:
    """Segment the image file `path` and write what `minunet predict` writes for it: an int32
    label TIFF (a stack for a stack) with the input's pixel size and z spacing and the settings
    used (`io.images.write_labels`), and on request the probabilities, the objects as ImageJ
    ROIs (NAME_rois.zip, `minunet.rois`) and an outline overlay, each atomically. Returns
    (label file, number of objects). The command and the cluster path (`minunet.scaleout`)
    both call this, so their outputs are the same.
    `image`: the file's pixels if the caller has read them already; channel, plane, stitch,
    exclude_edges, postprocess (to_instances overrides): as in `segment`; say: where a note
    (a guessed channel, RGB made gray) goes (default: a warning); `info`: filled as by
    `segment` (diameter="auto": the estimate, also stored in the label file)."""
    from .io import write_atomic, write_labels
    from .io.images import image_from_array, read_image_file, read_metadata

    if image is None:
        image = read_image_file(path)
    elif not isinstance(image, ImageFile):
        image = image_from_array(image, source=str(path), **read_metadata(path))
    labels, p, note, used = segment_image(
        model, image, channel=channel, plane=plane, stitch=stitch, exclude_edges=exclude_edges,
        tile=tile, progress=progress, diameter=diameter, **(postprocess or {}))
    if note:
        (say or (lambda line: warnings.warn(line, UserWarning, stacklevel=2)))(note)
    n = int(labels.max(initial=0))  # segment_image numbers the objects 1..n (count_objects)
    targets = prediction_outputs(path, out, probs, overlays, rois)
    if info is not None and "diameter_estimate" in used:
        info.update(diameter_estimate=used["diameter_estimate"], scale=used["diameter_scale"])
    stored_info = {"model": Path(model.path).name if isinstance(model, Checkpoint) else "module",
                   "prob_thresh": used.pop("fg_thresh"), **used}
    stack_axis = "T" if image.plane_axes == "T" else "Z"
    writers = [lambda: write_labels(targets[0], labels, image.pixel_size,
                                    z_spacing=image.z_spacing, plane_axes=stack_axis,
                                    info=stored_info)]
    if probs:
        writers.append(lambda: write_atomic(targets[1], lambda tmp: np.save(tmp, p)))
    if rois:
        from .rois import write_rois

        writers.append(lambda: write_rois(labels, out / f"{output_stem(path)}{ROIS_SUFFIX}"))
    if overlays:
        from . import viz  # matplotlib and skimage: only for the overlay

        norm, _ = stored_settings(model)
        inputs = model_channels(model, channel)     # a multi-channel model: show its first
        raw, _ = image.select(inputs[0] if inputs else channel, plane)
        middle = len(raw) // 2                      # a stack is shown by its middle plane
        gray = normalize(raw[middle], norm, who=str(path))
        shown = labels if labels.ndim == 2 else labels[middle]
        where = "" if labels.ndim == 2 else f", plane {middle} of {len(raw)}"
        writers.append(lambda: write_atomic(targets[-1], lambda tmp: viz.overlay(
            gray, None, shown, tmp, title=f"{path.name}: {n} objects{where}")))
    _write_all(path, targets, writers)
    return targets[0], n


def _write_all(path: Path, targets: list[Path], writers: list[Any]) -> None:
    """Write one image's outputs; if one fails (disk full, Ctrl-C), remove those this call
    already wrote, so that a file reported failed leaves no output, and name the file."""
    import errno

    written: list[Path] = []
    current = targets[0]
    try:
        for target, write in zip(targets, writers, strict=True):
            current = target
            target.parent.mkdir(exist_ok=True)
            write()
            written.append(target)
    except BaseException as err:
        for done in written:
            done.unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        full = err.errno in (errno.ENOSPC, errno.EDQUOT) or (
            err.errno is None and "requested" in str(err))  # numpy's short write
        hint = ("the disk is full: free some space and run again" if full
                else "check that the folder is writable")
        message = (f"{path}: writing {current} failed ({err.strerror or err}); no output of "
                   f"this image was kept; {hint}")
        raise (OSError(err.errno, message) if err.errno else OSError(message)) from err
