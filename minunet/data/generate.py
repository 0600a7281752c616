"""`generate`: n images and exact instance labels from a preset, plus every parameter used.

Image i is drawn with its own generator, seeded by (seed, i), so it is the same whether you ask
for 5 images or 500, and the returned parameters are enough to regenerate the set exactly
(`regenerate(params)`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .presets import PRESETS, preset_params
from .reference import reference_image
from .synth import synth_image

GENERATOR_NAME = "minunet.data.generate"


def generate(n: int, preset: str = "standard", size: tuple[int, int] = (256, 256),
             seed: int = 0, **overrides: object
             ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw n images (n, H, W) float32 in [0, 1] and labels (n, H, W) int32 (0 = background,
    1..k = one id per cell), plus the parameters used (preset, size, seed, n, every knob).

    overrides: any knob of the preset (see `knobs(preset)`), e.g. generate(8, noise=...)."""
    H, W = _check_size(size)
    if not isinstance(n, int | np.integer) or n < 0:
        raise ValueError(f"generate: n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"generate: seed must be a non-negative integer, got {seed!r}")
    params = preset_params(preset)
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise ValueError(f"generate: unknown knob(s) {', '.join(unknown)} for preset {preset!r}; "
                         f"valid knobs: {', '.join(sorted(params))}")
    for key, value in overrides.items():
        params[key] = _like(key, params[key], value)
    draw = reference_image if preset.startswith("reference") else synth_image
    images = np.empty((n, H, W), np.float32)
    labels = np.empty((n, H, W), np.int32)
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        images[i], labels[i] = draw(rng, params, (H, W))
    from .. import __version__
    info = {"generator": GENERATOR_NAME, "preset": preset, "size": [H, W], "seed": int(seed),
            "n": int(n), "params": params,
            "overrides": {k: params[k] for k in overrides}, "minunet_version": __version__}
    return images, labels, info


def regenerate(info: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw again the data set described by `generate`'s parameters (or a manifest)."""
    missing = [k for k in ("preset", "size", "seed", "n", "params") if k not in info]
    if missing:
        raise ValueError(f"regenerate: the manifest lacks {', '.join(missing)}")
    return generate(int(info["n"]), info["preset"], tuple(info["size"]), int(info["seed"]),
                    **info["params"])


def generate_dataset(out_dir: str | Path, n: int, preset: str = "standard",
                     size: tuple[int, int] = (256, 256), seed: int = 0, preview: bool = True,
                     **overrides: object) -> Path:
    """Generate and write a data set folder (images/, labels/, manifest.json and, if asked,
    preview.png with label contours): what `minunet generate` does. Returns the folder."""
    from .dataset import save_dataset
    from .preview import preview_images

    images, labels, info = generate(n, preset, size, seed, **overrides)
    out = Path(out_dir)
    save_dataset(out, images, labels, info)
    if preview and n > 0:
        preview_images(out / "preview.png", images, labels, title=f"{preset}, seed {seed}")
    return out


def knobs(preset: str = "standard") -> dict:
    """The knobs of a preset and their values."""
    return preset_params(preset)


def _like(key: str, default: object, value: object) -> object:
    """Check an override against the type of the default it replaces."""
    if isinstance(default, list):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ValueError(f"generate: knob {key} must be a list of {len(default)} numbers "
                             f"like {default}, got {value!r}")
        return [type(d)(v) for d, v in zip(default, value, strict=True)]
    if not isinstance(value, int | float | np.integer | np.floating) or isinstance(value, bool):
        raise ValueError(f"generate: knob {key} must be a number like {default}, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"generate: knob {key} must be a finite non-negative number, "
                         f"got {value!r}")
    return type(default)(value)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        H, W = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"generate: size must be (height, width), got {size!r}") from None
    if H < 8 or W < 8:
        raise ValueError(f"generate: size must be at least 8 x 8 px, got {size!r}")
    return H, W


__all__ = ["PRESETS", "generate", "generate_dataset", "knobs", "regenerate"]
