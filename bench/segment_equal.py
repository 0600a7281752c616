"""Do the faster defaults of `minunet predict` give the same labels as the former ones?

    python bench/segment_equal.py [--images 4] [--size 512] [--presets broad,standard,...]

For generated images of every preset (or those named), the bundled `nuclei` model segments
each image twice, with its stored settings:
- as before issue 26: 256-px tiles in batches of 4 with the receptive radius as margin (56 px:
  368-px tiles, whose deeper levels took the BLAS route), the direct convolutions and
  BLAS up-steps and head (no inference-only kernels: `kernels.conv.USE_WINOGRAD` and
  `kernels.upsample.ENABLED` off for this side), and in the post-processing ndimage's labels
  for the seeds and the unseeded pieces, skimage's watershed and relabelling;
- as now: `mu.segment`'s defaults (1024-px tiles, one per pass, the widened margin), with
  Winograd convolutions, up-steps and head of kernels/winograd.py and upsample.py where they
  apply, the compiled seeds and watershed (kernels/watershed.py: the mask's pieces one at a
  time, tied seeds in raster order) and the one-lookup relabelling.
Printed per preset: images, objects, images whose labels differ at any pixel and how many
pixels differ in all, the largest
difference between the two probability maps, and object F1 at IoU 0.5 of both against the
generated truth.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import minunet as mu
    from minunet import postprocess
    from minunet.data.presets import PRESETS
    from minunet.inference import stored_settings
    from minunet.kernels import conv, upsample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="images per preset")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args()

    ckpt = mu.load("nuclei")
    norm, post = stored_settings(ckpt)
    fast = postprocess._seeds, postprocess._watershed, postprocess._finish

    def ndimage_seeds(p_interior: np.ndarray, seed_thresh: float, min_seed_size: int,
                      foreground: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        seeds = ndimage.label(p_interior > seed_thresh, structure=postprocess.FOUR_CONNECTED)[0]
        seeds = skimage_finish(seeds, min_seed_size)
        seeds[~foreground] = 0
        return seeds

    def skimage_watershed(elevation: np.ndarray, markers: np.ndarray, mask: np.ndarray,
                          keep_unseeded: bool, pieces: object = None) -> np.ndarray:
        from skimage.segmentation import watershed

        labels = watershed(elevation, markers=markers, mask=mask)
        return postprocess._add_unseeded(labels, mask) if keep_unseeded else labels

    def skimage_finish(labels: np.ndarray, min_size: int) -> np.ndarray:
        from skimage.segmentation import relabel_sequential

        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
        return relabel_sequential(labels)[0].astype(np.int32)

    print(f"{'preset':>18} {'images':>6} {'objects':>8} {'differ':>6} {'pixels':>6} "
          f"{'max |dp|':>9} "
          f"{'F1 before':>9} {'F1 now':>7}")
    for k, preset in enumerate(args.presets.split(",")):
        images, truth, _ = mu.data.generate(args.images, preset, size=(args.size, args.size),
                                            seed=100 + k)
        before, now, differ, pixels, objects, dp = [], [], 0, 0, 0, 0.0
        for image in images:
            raw = (image * 4000).astype(np.uint16)
            x = mu.normalize(raw, norm)
            switches = conv.USE_WINOGRAD, upsample.ENABLED
            conv.USE_WINOGRAD = upsample.ENABLED = False
            try:
                p_old = mu.predict(ckpt.model, x, tile=256, batch_size=4, margin=56,
                                   normalized=True)
            finally:
                conv.USE_WINOGRAD, upsample.ENABLED = switches
            postprocess._seeds, postprocess._watershed, postprocess._finish = (
                ndimage_seeds, skimage_watershed, skimage_finish)
            try:
                old = mu.to_instances(p_old, **post)
            finally:
                postprocess._seeds, postprocess._watershed, postprocess._finish = fast
            new, p_new = mu.segment(ckpt, raw, return_probs=True)
            dp = max(dp, float(np.abs(p_new - p_old).max()))
            differ += not np.array_equal(old, new)
            pixels += int((old != new).sum())
            objects += int(new.max())
            before.append(old)
            now.append(new)
        f1_before = mu.metrics.evaluate(list(truth), before).at(0.5).f1
        f1_now = mu.metrics.evaluate(list(truth), now).at(0.5).f1
        print(f"{preset:>18} {len(images):>6} {objects:>8} {differ:>6} {pixels:>6} {dp:>9.2e} "
              f"{f1_before:>9.4f} {f1_now:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
