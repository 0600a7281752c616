"""A run's settings: the defaults, their checks, and what a resumed run may change.

Settings are the keys of `DEFAULTS`; a run's config.json holds them all (less the generator's
when the run trains on a folder, less the folder's when it trains on generated images), plus
what the run found out once and keeps: its data's names and digests, its validation images,
where it started from.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH, MAX_BASE = 8, 1024  # what a checkpoint may hold (minunet.checkpoint's bounds)

# Training from random weights. An epoch is `samples_per_epoch` random crops (at least one
# pass over the training images): with 11 images and one pass per epoch an epoch would be a
# single step of 8 crops. The learning rate follows a cosine from `lr` to 0 over the run,
# after `warmup` steps of linear warm-up (bench/train_pretrained.py's recipe).
DEFAULTS: dict[str, Any] = {
    "preset": "standard", "n": 200, "size": (256, 256), "seed": 0, "val_fraction": 0.1,
    "epochs": 40, "batch_size": 8, "lr": 3e-3, "depth": 3, "base": 16, "crop": 128,
    "patience": None, "image_suffix": "_img", "mask_suffix": "_masks", "lazy": False,
    "samples_per_epoch": 64, "warmup": 20,
    "channels": None,   # train --channels 2,0: a model of several input channels
    "freeze_norm": False,   # batch norm keeps its running statistics (train's freeze_norm)
}
# Starting from a trained model (`from_`): fewer, gentler steps (bench/finetune.py measured
# them); the architecture and normalisation come from the model.
# lr 1e-3: at 3e-3, 2 images of shift-texture took the bundled model from 0.985 to 0.957; at
# 1e-3 it keeps 0.983, and lab gains as much (bench/finetune.py, docs/training.md)
# freeze_norm: 2 `broad` images with the rate set to 1e-9 (no weight moves) took the model
# from 0.928 to 0.884 through its batch norm statistics alone, which 96 steps of crops of two
# images replace; kept frozen, that run keeps 0.928, and `lab` fine-tuned on 2 / 4 images
# scores 0.957 / 0.962 instead of 0.943 / 0.914 (bench/finetune.py, docs/training.md)
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 12, "lr": 1e-3, "warmup": 5, "freeze_norm": True}
GENERATOR_KEYS = ("preset", "n", "size")           # meaningless for a run on a folder
FOLDER_KEYS = ("image_suffix", "mask_suffix", "lazy")
RESUME_MAY_CHANGE = ("epochs", "patience", "data")
MIN_VALIDATION_IMAGES = 5   # fewer images: none held out (every image trains; see docs)
# ... except when fine-tuning: then a band of this share of each image (along its longer
# side) is held out. The seed threshold is tuned on the bands, and the run keeps the model it
# started from when that scores better there than the fine-tuned one (`run._finish`)
HELD_OUT_BAND = 0.25
# Validation picks the best epoch only when it holds this many objects: with ~10 (one image of
# large nuclei) one object decides between epochs, and bench/finetune.py's first run with 8
# `lab` images kept epoch 5 of 12 (F1 1.0 on 10 nuclei) and scored 0.858 against 0.931 with 4.
MIN_VALIDATION_OBJECTS = 100


class RunError(ValueError):
    """A run that cannot start or continue; the message names the file or setting and what to
    do (the command prints it and exits with 2)."""


def flag(key: str) -> str:
    """A setting's command-line flag (the API's keyword is the key itself)."""
    return "--" + key.replace("_", "-")


def check(config: dict[str, Any]) -> None:
    """Refuse settings that cannot train, before anything is written."""
    def whole(key: str, low: int, high: float = float("inf")) -> bool:
        value = config[key]
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    checks = [
        ("epochs", whole("epochs", 1), "a whole number >= 1"),
        ("batch_size", whole("batch_size", 1), "a whole number >= 1"),
        ("lr", isinstance(config["lr"], (int, float)) and 0 < config["lr"] < 10,
         "between 0 and 10 (e.g. 3e-3)"),
        ("depth", whole("depth", 1, MAX_DEPTH), f"from 1 to {MAX_DEPTH}"),
        ("base", whole("base", 1, MAX_BASE), f"from 1 to {MAX_BASE}"),
        ("crop", whole("crop", 1), "a whole number >= 1"),
        ("val_fraction", isinstance(config["val_fraction"], (int, float))
         and 0 <= config["val_fraction"] < 1, "from 0 (none) to below 1 (e.g. 0.1)"),
        ("patience", config["patience"] is None or whole("patience", 1), "at least 1"),
        ("seed", whole("seed", 0, 2**63 - 1), "a whole number >= 0"),
        ("samples_per_epoch", config.get("samples_per_epoch") is None
         or whole("samples_per_epoch", 1), "a whole number >= 1"),
        ("warmup", whole("warmup", 0), "a whole number of steps >= 0"),
        ("freeze_norm", isinstance(config.get("freeze_norm", False), bool), "true or false"),
    ]
    if not config.get("data"):
        checks.append(("n", whole("n", 2), "at least 2"))
    if config.get("channels") and (not config.get("data") or config.get("lazy")
                                   or str(config.get("data")).endswith(".zarr")):
        raise RunError("--channels trains on your own multi-channel images: give --data FOLDER, "
                       "without --lazy")
    for key, ok, what in checks:
        if not ok:
            raise RunError(f"{flag(key)} must be {what}, got {config[key]!r}")
    mult = 2 ** config["depth"]
    if config["crop"] % mult:
        lower = max(mult, config["crop"] // mult * mult)
        raise RunError(f"--crop {config['crop']} is not a multiple of 2**depth = {mult} (the "
                       f"U-Net's pooling grid); use --crop {lower} or {lower + mult}")


def new_config(settings: dict[str, Any], *, data: str | None, finetune: bool) -> dict[str, Any]:
    """The full settings of a new run: those given, else the (fine-tuning) defaults."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise RunError(f"unknown setting(s) {', '.join(unknown)}; the settings are "
                       f"{', '.join(DEFAULTS)}")
    defaults = {**DEFAULTS, **(FINETUNE_DEFAULTS if finetune else {})}
    config = {k: (settings[k] if settings.get(k) is not None else default)
              for k, default in defaults.items()}
    config["size"] = list(config["size"])
    for key in (GENERATOR_KEYS if data else FOLDER_KEYS):
        given = settings.get(key)
        if given is not None and given is not False and given != defaults[key]:
            if key == "lazy":
                raise RunError("--lazy reads a folder (any layout --data takes) or a .zarr "
                               "training store given with --data")
            where = "generated data (--preset)" if data is not None else "a --data folder"
            raise RunError(f"{flag(key)} applies to {where} only")
        config.pop(key)
    config["schedule"] = "cosine"
    return config


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config, completed for runs written by an earlier minunet: those trained with a
    constant rate, one pass over the images per epoch."""
    old = {"samples_per_epoch": None, "warmup": 0, "schedule": "constant", "monitor": "val_f1"}
    for key, default in {**DEFAULTS, **old}.items():
        if key in GENERATOR_KEYS and config.get("data"):
            continue
        config.setdefault(key, default)
    return config
