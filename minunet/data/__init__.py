"""Synthetic cell data: generators and presets, training targets, augmentation, disk format.

    images, labels, params = generate(100, "standard", size=(256, 256), seed=0)
    classes = three_class(labels)            # 0 background, 1 interior, 2 boundary
    weights = weight_map(labels)             # U-Net paper weight map
    image, label, weight = augment(images[0], labels[0], rng, weight=weights[0])
    save_dataset("cells", images, labels, params)
"""

from .augment import augment
from .generate import generate, knobs, regenerate
from .io import load_dataset, read_image, save_dataset
from .presets import PRESETS
from .preview import preview_grid
from .targets import three_class, weight_map

__all__ = [
    "PRESETS",
    "augment",
    "generate",
    "knobs",
    "load_dataset",
    "preview_grid",
    "read_image",
    "regenerate",
    "save_dataset",
    "three_class",
    "weight_map",
]
