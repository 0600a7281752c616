"""napari's sample data: one generated `broad` image (the pretrained model's kind of data) and
its true labels, drawn by `minunet.data.generate` (seeded: the same image every time)."""

from __future__ import annotations

from typing import Any

from ..data import generate

SAMPLE_SIZE = (256, 256)
SAMPLE_SEED = 0


def broad_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """[(image, ..., "image"), (true labels, ..., "labels")] for napari's File > Open Sample."""
    images, labels, _ = generate(1, "broad", size=SAMPLE_SIZE, seed=SAMPLE_SEED)
    return [(images[0], {"name": "broad"}, "image"),
            (labels[0], {"name": "broad true labels", "visible": False}, "labels")]
