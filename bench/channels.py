"""RGB and multi-channel images: object F1 of the bundled `nuclei` model with and without a
chosen channel.

    python bench/channels.py          # about a minute

4 generated 256 x 256 `standard` images as nuclei in the blue channel of an 8-bit RGB image,
with larger cells (the `shift-large` preset, a stand-in for cytoplasm) in green; scored as
`mu.segment` sees them by default (luminance) and with channel=2 (object F1 at IoU 0.5, pooled).
"""

from __future__ import annotations

import warnings

import numpy as np

import minunet as mu


def main() -> None:
    ckpt = mu.load("nuclei")
    nuclei, labels, _ = mu.data.generate(4, "standard", seed=31)
    cytoplasm = mu.data.generate(4, "shift-large", seed=32)[0]
    rgb = [np.stack([np.zeros_like(n), c, n], axis=-1) for n, c in zip(nuclei, cytoplasm,
                                                                        strict=True)]
    rgb = [(np.clip(im, 0, 1) * 255).astype(np.uint8) for im in rgb]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the luminance note, once per image
        rows = {"RGB, no channel (luminance)": [mu.segment(ckpt, im) for im in rgb],
                "RGB, channel=2 (blue)": [mu.segment(ckpt, im, channel=2) for im in rgb]}
    print("| input | object F1 |")
    print("|---|---|")
    for name, preds in rows.items():
        print(f"| {name} | {mu.metrics.evaluate(list(labels), preds).at(0.5).f1:.3f} |")


if __name__ == "__main__":
    main()
