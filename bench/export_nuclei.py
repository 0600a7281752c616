"""Export the bundled `nuclei` model for other tools, check the results, measure what changes.

    python bench/export_nuclei.py --out exported          # needs the export extra
    python bench/export_nuclei.py --out exported --n 3    # fewer comparison images

Writes exported/nuclei.onnx and exported/nuclei-bioimageio.zip (the same as `minunet export
nuclei --format onnx|bioimageio`), runs bioimageio.core's test of the package, and prints:

1. ONNX: the largest difference between onnxruntime's probabilities (the normalised image,
   mirror-padded by predict's margin, as docs/export.md shows) and `mu.predict`'s, over --n
   generated images of each preset.
2. The package's normalisation: bioimage.io tools normalise with `scale_range` (1st / 99.8th
   percentiles) where minunet uses its foreground median. Object F1 at IoU 0.5 against the
   generated truth, for minunet's route and the package's route (the same network and
   post-processing, only the normalisation differs), and how many objects the two agree on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import minunet as mu
from minunet.predict import receptive_radius, to_gray

PRESETS = ("broad", "standard", "shift-brightness")
SIZE = (256, 256)


def onnx_probs(session, x: np.ndarray, depth: int) -> np.ndarray:
    """onnxruntime on a normalised (H, W) image, mirror-padded as mu.predict pads it."""
    m = 2**depth
    margin = -(-receptive_radius(depth) // m) * m
    padded = np.pad(x, margin, mode="reflect")[None, None].astype(np.float32)
    return session.run(None, {"image": padded})[0][0, :, margin:-margin, margin:-margin]


def scale_range(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """bioimage.io's scale_range with its default eps, as bioimageio.core computes it."""
    x = to_gray(image)
    lo, hi = np.percentile(x, [low, high])
    return ((x - lo) / (hi - lo + 1e-6)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--n", type=int, default=8, help="generated images per preset")
    args = parser.parse_args()
    import onnxruntime

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path, package = args.out / "nuclei.onnx", args.out / "nuclei-bioimageio.zip"
    ckpt = mu.load("nuclei")
    started = time.perf_counter()
    mu.export_onnx(ckpt, onnx_path)
    mu.export_bioimageio(ckpt, package)
    print(f"wrote {onnx_path} and {package} ({time.perf_counter() - started:.1f} s)")
    try:
        from bioimageio.core import test_model

        print(f"bioimageio.core test of {package.name}: {test_model(package).status}")
    except ImportError:
        print("bioimageio.core not installed: package not tested")

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    norm, settings = ckpt.metadata["normalization"], ckpt.metadata["postprocess"]
    depth = ckpt.model.depth
    print(f"\n{'preset':<18} {'max |onnx - predict|':>21} {'F1 minunet':>11} "
          f"{'F1 package':>11} {'objects agreeing':>17}")
    for preset in PRESETS:
        images, truths, _ = mu.data.generate(args.n, preset, size=SIZE, seed=11)
        worst, ours, theirs, agree, total = 0.0, [], [], 0, 0
        for image, truth in zip(images, truths, strict=True):
            x = mu.normalize(image, norm)
            p_onnx = onnx_probs(session, x, depth)
            p_ours = mu.predict(ckpt.model, x, normalized=True)
            worst = max(worst, float(np.abs(p_onnx - p_ours).max()))
            labels_ours = mu.to_instances(p_ours, **settings)
            labels_pkg = mu.to_instances(onnx_probs(session, scale_range(image), depth),
                                         **settings)
            ours.append(mu.metrics.match(truth, labels_ours).f1)
            theirs.append(mu.metrics.match(truth, labels_pkg).f1)
            both = mu.metrics.match(labels_ours, labels_pkg)
            agree, total = agree + both.tp, total + max(both.n_true, both.n_pred)
        print(f"{preset:<18} {worst:>21.2e} {np.mean(ours):>11.3f} {np.mean(theirs):>11.3f} "
              f"{agree:>8} of {total:<7}")


if __name__ == "__main__":
    main()
