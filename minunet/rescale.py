"""Object scale: measure how big the objects are, and bring an image to the size a model knows.

A U-Net sees a fixed neighbourhood, so it segments objects of about the size it was trained on.
For objects of another size, the image is resized by

    scale = training diameter / object diameter        (< 1 shrinks large objects)

before the network, and the probabilities are resized back to the image's own grid (`predict`
does both when given `scale`). The training diameter is `object_diameter(labels)` of the training
labels, stored in the checkpoint's metadata under "diameter". The object diameter is given by
the user, or estimated from the image by `estimate_diameter`:

Scale-space blob detection (Lindeberg). The scale-normalised Laplacian of Gaussian
-s^2 LoG_s * image, for a bright disc of radius r, peaks at its centre at s = r / sqrt(2).
Its local maxima over (scale, row, column) are blobs, each with a scale; the estimate is
DIAMETER_PER_SIGMA times the median scale of the strong ones (at least PEAK_FRACTION of the
strongest). Peaks on the smallest or largest scale tried are dropped: a lone bright pixel
(salt) peaks on the smallest, a slow background trend on the largest.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SIGMAS = 1.5 * 1.18 ** np.arange(20)   # px: scales tried, 1.5 .. 34 (diameters ~4 .. 100 px)
DIAMETER_PER_SIGMA = 2.0 * np.sqrt(2.0) # a disc of radius r peaks at s = r / sqrt(2)
PEAK_FRACTION = 0.25                    # blobs at least this fraction of the strongest count
MIN_SCALE, MAX_SCALE = 0.25, 4.0        # resizing beyond this is refused: the diameter is wrong


def object_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter 2 sqrt(area / pi) of the objects of labels (..., H, W) int."""
    labels = np.asarray(labels)
    areas = np.concatenate([np.bincount(lab.ravel())[1:]
                            for lab in labels.reshape(-1, *labels.shape[-2:])])
    areas = areas[areas > 0]
    if areas.size == 0:
        raise ValueError("object_diameter: the labels hold no objects")
    return float(2.0 * np.sqrt(np.median(areas) / np.pi))
