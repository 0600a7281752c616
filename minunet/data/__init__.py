"""Synthetic cell data: generators and presets, training targets, augmentation, disk format.

    images, labels, params = generate(100, "standard", size=(256, 256), seed=0)
    classes = three_class(labels)            # 0 background, 1 interior, 2 boundary
    weights = weight_map(labels)             # U-Net paper weight map
    image, label, weight = augment(images[0], labels[0], rng, weight=weights[0])
    save_dataset("cells", images, labels, params)     # or generate_dataset("cells", 100)
    images, labels, params = load_dataset("cells")

Presets (`PRESETS` describes each): standard, shift-* (one factor each), shift-combined,
reference and reference-shifted (the public notebook's recipe). `knobs(preset)` lists every
parameter a preset takes; any can be overridden in `generate(..., knob=value)`.
"""

from ..io.images import read_image
from .augment import augment
from .dataset import load_dataset, save_dataset
from .generate import generate, generate_dataset, knobs, regenerate
from .presets import PRESETS
from .preview import preview_grid, preview_images
from .targets import three_class, weight_map

__all__ = [
    "PRESETS",
    "augment",
    "generate",
    "generate_dataset",
    "knobs",
    "load_dataset",
    "preview_grid",
    "preview_images",
    "read_image",
    "regenerate",
    "save_dataset",
    "three_class",
    "weight_map",
]
