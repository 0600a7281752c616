"""Synthetic cell data: generators, presets, training targets, augmentation, disk format."""

from .generate import generate, knobs, regenerate
from .presets import PRESETS

__all__ = ["PRESETS", "generate", "knobs", "regenerate"]
