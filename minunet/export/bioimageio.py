"""A minunet U-Net as a bioimage.io model-zoo package (rdf.yaml, format 0.5), ONNX weights inside.

    mu.export_bioimageio("nuclei", "nuclei-bioimageio/")
    minunet export nuclei --format bioimageio --out nuclei-bioimageio/

The package is a folder (or, with a `.zip` name, that folder zipped) holding:

    rdf.yaml          the description: name, authors, licence, citations, tensors, weights
    model.onnx        the network (`minunet.export.onnx`), input "raw" -> output "probabilities"
    test_input.npy    a generated image (1, 1, H, W) float32, as a user's raw image would be
    test_output.npy   minunet's probabilities for it (1, 3, H, W), after the preprocessing below
    sample_*.tif      the same two as TIFFs, for people (the zoo's "sample tensors")
    cover.png         the test image beside its probabilities
    README.md         what the three classes are and how to turn them into one label per cell

Fiji (deepImageJ), ilastik, QuPath and napari run such packages; `bioimageio.core` tests them by
running test_input through the weights and comparing with test_output.

Preprocessing. The spec's steps are element-wise with per-image statistics: minunet's
"percentile" normalisation is exactly its `scale_range` (min/max percentiles over y and x). Its
default "foreground" normalisation (the median of the pixels above Otsu's threshold goes to 0.6)
has no spec equivalent; such a model is packaged with `scale_range` 1 / 99.8 percentiles, which
puts a typical cell near the same level (see docs/export.md for the difference it makes), and the
package's README says so. Post-processing (probabilities -> labels) is not element-wise, so, as
StarDist's and Cellpose's packages do, the package ends at the probabilities.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .onnx import OPSET, export_onnx, load_for_export

FORMAT_VERSION = "0.5.4"  # rdf format: read by bioimageio.spec >= 0.5.4 and deepImageJ 3
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
CLASSES = ["background", "interior", "boundary"]  # the three-class target's channels
PERCENTILES = (1.0, 99.8)  # scale_range used for models whose normalisation has no equivalent
EPS = 1e-6                 # scale_range's default eps, in (x - lo) / (hi - lo + eps)
TEST_SIZE = 256            # px: side of the generated test image
PROJECT_URL: str | None = None  # minunet's public address, cited when known (--project-url)
U_NET = {"text": "Ronneberger O., Fischer P., Brox T. U-Net: Convolutional Networks for "
                 "Biomedical Image Segmentation. MICCAI 2015.",
         "doi": "10.1007/978-3-319-24574-4_28"}


def export_bioimageio(model: Any, out: str | os.PathLike, *, name: str | None = None,
                      description: str | None = None,
                      authors: tuple[str, ...] = ("the minunet authors",),
                      test_image: np.ndarray | None = None,
                      project_url: str | None = PROJECT_URL) -> Path:
    """Write a bioimage.io package of `model` (a run folder, .npz, pretrained name, Checkpoint)
    into the new folder `out` (or the zip `out` if it ends in .zip); return its path.

    test_image: a raw (H, W) image for the test tensors (default: one generated like the model's
    training data, TEST_SIZE px); its sides must be multiples of 2**depth.
    Nothing is written at `out` until the package is complete; `out` must not exist.
    Needs the `export` extra (onnx; bioimageio.spec only to zip the folder).
    """
    from ..io.files import write_atomic

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"export: {out} already exists; minunet never overwrites: give a "
                              "new folder (or .zip) name")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"export: the folder {out.parent} of {out} does not exist")
    net, metadata = load_for_export(model)
    if net.in_channels != 1:
        raise ValueError(f"export: the package describes one gray input channel, as minunet "
                         f"predicts; this U-Net takes {net.in_channels}")
    truth = None
    if test_image is None:
        raw, truth = _test_image(metadata)
    else:
        raw = np.asarray(test_image)
    mult, (_, minimum) = 2**net.depth, _halo(net.depth)
    if raw.ndim != 2 or raw.shape[0] % mult or raw.shape[1] % mult or min(raw.shape) < minimum:
        raise ValueError(f"export: the test image must be 2-D with sides divisible by {mult} "
                         f"and at least {minimum} px (the package's smallest tile), got shape "
                         f"{raw.shape}")
    norm = metadata.get("normalization") or {"method": "foreground"}
    steps, x = _preprocessing(raw, norm)
    probs = _probabilities(net, x)                                   # (1, Kc, H, W)
    name = name or f"minunet U-Net ({_model_name(model)})"

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        export_onnx(net, tmp / "model.onnx")
        np.save(tmp / "test_input.npy", raw.astype(np.float32)[None, None], allow_pickle=False)
        np.save(tmp / "test_output.npy", probs, allow_pickle=False)
        tifffile.imwrite(tmp / "sample_input.tif", raw.astype(np.float32))   # for people:
        tifffile.imwrite(tmp / "sample_output.tif", probs[0],                # (H, W), (3, H, W)
                         photometric="minisblack")                            # 3 planes, not RGB
        _cover(x[0, 0], probs[0], tmp / "cover.png")
        (tmp / "README.md").write_text(_readme(name, net, norm, metadata,
                                               _validation(probs[0], truth, metadata)))
        rdf = _rdf(tmp, net, name, description, authors, steps, norm, project_url)
        (tmp / "rdf.yaml").write_text(to_yaml(rdf))
        if out.suffix.lower() == ".zip":
            from bioimageio.spec import save_bioimageio_package

            write_atomic(out, lambda z: save_bioimageio_package(tmp / "rdf.yaml",
                                                                output_path=z))
        elif out.exists():
            raise FileExistsError(f"export: {out} appeared while the package was written; "
                                  "nothing was replaced")
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _model_name(model: Any) -> str:
    """"nuclei" for the pretrained model, the run folder's name for its best.npz / last.npz."""
    path = getattr(model, "path", None) or model
    if not isinstance(path, (str, os.PathLike)):
        return "custom"
    path = Path(path)
    return path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem


def _test_image(metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(image, true labels) generated like the model's training data (its recipe's preset)."""
    from ..data import PRESETS, generate

    preset = (metadata.get("recipe") or {}).get("preset", "standard")
    images, labels, _ = generate(1, preset if preset in PRESETS else "standard",
                                 size=(TEST_SIZE, TEST_SIZE), seed=2026)
    return np.asarray(images[0]), np.asarray(labels[0])


def _validation(probs: np.ndarray, truth: np.ndarray | None, metadata: dict[str, Any]) -> str:
    """The README's validation paragraph: the test image's object F1, when its truth is known."""
    from ..metrics import match
    from ..postprocess import to_instances

    text = ("`bioimageio test` reruns test_input.npy through the ONNX weights and compares "
            "the result with test_output.npy, minunet's own probabilities for it.")
    if truth is None or probs.shape[0] != 3:
        return text
    labels = to_instances(probs, **(metadata.get("postprocess") or {}))
    score = match(truth, labels)
    return (f"{text} The test image is generated, so its true cells are known: with this "
            f"package's preprocessing and minunet's post-processing, {score.tp} of its "
            f"{score.n_true} cells are found (IoU >= 0.5; {score.fp} false, object F1 "
            f"{score.f1:.3f}). minunet's bench/export_nuclei.py measures more images.")


def _preprocessing(raw: np.ndarray, norm: dict[str, Any]) -> tuple[list[dict], np.ndarray]:
    """(the rdf's preprocessing steps, the test image after them as (1, 1, H, W) float32)."""
    x = raw.astype(np.float32)
    steps: list[dict[str, Any]] = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    method = norm.get("method")
    if method in ("percentile", "foreground"):
        low, high = ((norm.get("low", 1.0), norm.get("high", 99.8)) if method == "percentile"
                     else PERCENTILES)
        steps.append({"id": "scale_range",
                      "kwargs": {"axes": ["y", "x"], "min_percentile": float(low),
                                 "max_percentile": float(high), "eps": EPS}})
        lo, hi = np.percentile(x, [low, high])  # bioimageio.core: xarray quantile, "linear"
        x = (x - lo) / (hi - lo + EPS)
    elif method == "range" and np.issubdtype(raw.dtype, np.integer):
        gain = 1.0 / float(np.iinfo(raw.dtype).max)
        steps.append({"id": "scale_linear", "kwargs": {"gain": gain, "offset": 0.0}})
        x = x * np.float32(gain)
    elif method not in ("range", "none"):
        raise ValueError(f"export: unknown normalisation {norm!r} in the checkpoint")
    return steps, x.astype(np.float32)[None, None]


def _probabilities(net: Any, x: np.ndarray) -> np.ndarray:
    """minunet's own forward pass and softmax on the whole image (no tiling): (1, Kc, H, W)."""
    from ..predict import softmax

    had_grad = net.grad_enabled
    net.eval()
    net.set_grad_enabled(False)
    try:
        return softmax(net(x.astype(net.dtype))).astype(np.float32)
    finally:
        net.set_grad_enabled(had_grad)


def _rdf(folder: Path, net: Any, name: str, description: str | None,
         authors: tuple[str, ...], steps: list[dict], norm: dict[str, Any],
         project_url: str | None) -> dict[str, Any]:
    mult = 2**net.depth
    halo, minimum = _halo(net.depth)

    def space(axis: str, size: Any, **more: Any) -> dict[str, Any]:
        return {"type": "space", "id": axis, "size": size, **more}

    def ref(axis: str) -> dict[str, str]:
        return {"tensor_id": INPUT_ID, "axis_id": axis}

    cite = [U_NET]
    if project_url:
        cite.append({"text": "minunet: a U-Net for cell instance segmentation, written from "
                             "scratch in NumPy and Numba", "url": project_url})
    exact = norm.get("method") != "foreground"
    return {
        "type": "model",
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description or (
            f"A U-Net ({net.depth} levels, {net.base_channels} channels at the top) trained "
            "with minunet: per-pixel probabilities of background, cell interior and cell "
            "boundary. One label per cell: see the README."),
        "authors": [{"name": a} for a in authors],
        "cite": cite,
        "license": "MIT",
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["minunet", "unet", "segmentation", "instance-segmentation", "nuclei",
                 "fluorescence-light-microscopy", "2d", "onnx"],
        "inputs": [{
            "id": INPUT_ID,
            "description": "one gray image (microscopy), any intensity range"
                           + ("" if exact else "; minunet itself normalises by the foreground "
                              "median, see the README"),
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": ["gray"]},
                     space("y", {"min": minimum, "step": mult}),
                     space("x", {"min": minimum, "step": mult})],
            "test_tensor": _file(folder, "test_input.npy"),
            "sample_tensor": _file(folder, "sample_input.tif"),
            "data": {"type": "float32"},
            "preprocessing": steps,
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": "softmax probabilities per pixel: " + ", ".join(CLASSES),
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": CLASSES[:net.num_classes]},
                     space("y", ref("y"), halo=halo),
                     space("x", ref("x"), halo=halo)],
            "test_tensor": _file(folder, "test_output.npy"),
            "sample_tensor": _file(folder, "sample_output.tif"),
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"onnx": {**_file(folder, "model.onnx"), "opset_version": OPSET}},
    }


def _file(folder: Path, name: str) -> dict[str, str]:
    return {"source": name, "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}


def _cover(x: np.ndarray, probs: np.ndarray, path: Path) -> None:
    """The (normalised) test image beside its probabilities as colours: 2:1, as covers are."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = np.percentile(x, [1, 99.8])
    gray = np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1)
    colour = np.zeros((*x.shape, 3), np.float32)  # interior green, boundary magenta
    colour[..., 1] = probs[1]
    colour[..., 0] = colour[..., 2] = probs[2] if len(probs) > 2 else 0
    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    for ax, picture, title in ((axes[0], gray, "image"), (axes[1], colour,
                               "interior (green), boundary (magenta)")):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _readme(name: str, net: Any, norm: dict[str, Any], metadata: dict[str, Any],
            validation: str) -> str:
    settings = {"seed_thresh": 0.5, "min_size": 16, **(metadata.get("postprocess") or {})}
    mult = 2**net.depth
    halo, minimum = _halo(net.depth)
    if norm.get("method") == "foreground":
        normalisation = FOREGROUND_NOTE
    else:
        normalisation = f"The preprocessing is minunet's own normalisation ({json.dumps(norm)})."
    return README.format(name=name, depth=net.depth, base=net.base_channels,
                         params=f"{net.num_parameters():,}", opset=OPSET, input=INPUT_ID,
                         output=OUTPUT_ID, mult=mult, minimum=minimum, halo=halo,
                         normalisation=normalisation, settings=json.dumps(settings),
                         validation=validation,
                         seed_thresh=settings["seed_thresh"], min_size=settings["min_size"])


def _halo(depth: int) -> tuple[int, int]:
    """(halo, smallest tile): the receptive radius (`predict.receptive_radius`) rounded up to
    the 2**depth grid, and a tile side larger than two halos."""
    mult = 2**depth
    halo = -(-(7 * mult - 5) // mult) * mult
    return halo, 2 * halo + mult


FOREGROUND_NOTE = """\
minunet normalises each image by its 1st percentile and the median of its foreground (the
pixels above Otsu's threshold of the lightly smoothed image), which goes to 0.6. The
bioimage.io specification has no such step, so this package uses `scale_range` with the 1st and
99.8th percentiles instead: on typical images a cell lands at a similar level, but on images
with few or very uneven cells the results can differ from minunet's. For minunet's own result
run `minunet predict`."""

README = """\
# {name}

A U-Net trained with minunet (depth {depth}, {base} channels at the top level, {params}
parameters), exported as ONNX (opset {opset}).

## Input and output

- input `{input}`: one gray image, axes (batch, channel, y, x); y and x multiples of {mult},
  at least {minimum} px (tiled prediction crops a halo of {halo} px, the receptive field).
- output `{output}`: three channels of softmax probabilities that add up to 1 per pixel:
  0 **background**, 1 cell **interior**, 2 cell **boundary** (a thin ring along each cell's
  edge, also between touching cells).

## Normalisation

{normalisation}

## From probabilities to one label per cell

The package ends at the probabilities, as the model zoo's StarDist and Cellpose packages do.
minunet turns them into labels with a seeded watershed, with the settings stored with the
model ({settings}):

```python
import minunet as mu
labels = mu.to_instances(probs[0], **{settings})   # probs: (1, 3, H, W)
```

or with SciPy and scikit-image alone (close to it; minunet also keeps seedless blobs):

```python
from scipy import ndimage
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed
p = probs[0]                                              # (3, H, W)
seeds, _ = ndimage.label(p[1] > {seed_thresh})            # the cores of the cells
labels = watershed(1 - p[1], seeds, mask=p[0] < 0.5)      # grown through the foreground
labels = remove_small_objects(labels, {min_size})
```

In Fiji, after deepImageJ has run the model: threshold the interior channel for the seeds and
run MorphoLibJ's "Marker-controlled Watershed" on the inverted interior channel, with the
mask background < 0.5.

## Validation

{validation}

## Licence and citation

MIT. Please cite the U-Net paper (Ronneberger, Fischer & Brox, MICCAI 2015,
doi:10.1007/978-3-319-24574-4_28) and minunet.
"""


# ----------------------------------------------------------------------- a small YAML writer
def to_yaml(value: Any, indent: int = 0) -> str:
    """Dicts, lists, strings, numbers and booleans as block YAML (strings JSON-quoted, which
    YAML reads as they are); enough for an rdf.yaml without a YAML library."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{to_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return "\n".join(lines) + ("\n" if indent == 0 else "")
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                text = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {text.lstrip()}")
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    text = json.dumps(value)
    if isinstance(value, float) and "e" in text and "." not in text:  # YAML 1.1 floats need
        text = text.replace("e", ".0e")                                 # a dot: 1.0e-06
    return text
