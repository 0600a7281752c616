"""Input checks shared by the layers: errors naming the layer, what it expected, what it got."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import numpy as np


def check_array(
    who: str,
    x: object,
    *,
    ndim: int | None = None,
    channels: int | None = None,
    dtype: np.dtype | None = None,
    finite: bool = True,
    name: str = "input",
) -> np.ndarray:
    """Validate one array argument of a layer and return it.

    who:      the layer or function, e.g. "Conv2d(16 -> 32)", used in every message
    ndim:     required number of dimensions (4 for NCHW)
    channels: required size of axis 1 (C in NCHW)
    dtype:    required dtype (the layer's parameters' dtype)
    finite:   refuse NaN and inf
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: {name} must be a numpy array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        layout = " (N, C, H, W)" if ndim == 4 else ""
        raise ValueError(
            f"{who}: {name} must have {ndim} dimensions{layout}, got shape {x.shape}"
        )
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{who} expected {channels} input channels, got {x.shape[1]} "
                         f"({name} shape {x.shape})")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{who}: {name} dtype {x.dtype} does not match the parameters' dtype {dtype}; "
            f"convert with x.astype(np.{np.dtype(dtype).name}) or module.astype(...)"
        )
    if finite and np.issubdtype(x.dtype, np.floating):
        check_finite(who, x, name=name)
    return x


def check_finite(who: str, x: np.ndarray, *, name: str = "input") -> None:
    """Raise if `x` holds NaN or inf.

    The fast path is one sum (NaN and inf propagate through it); only when the sum is not
    finite do we count, so that the message can say exactly what is wrong.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.sum(x, dtype=np.float64)
    if np.isfinite(total):
        return
    n_nan = int(np.isnan(x).sum())
    n_inf = int(np.isinf(x).sum())
    if n_nan or n_inf:
        raise FloatingPointError(
            f"{who}: {name} of shape {x.shape} contains {n_nan} NaN and {n_inf} inf values"
        )


# ------------------------------------------------------------------ settings a user supplies
# Normalisation and post-processing settings enter from a checkpoint's metadata or as
# arguments (`mu.segment(..., min_size=...)`, `mu.predict(..., normalization=...)`); a NaN
# threshold or a zero level does not fail later, it silently gives 0 objects on every image,
# so each value is checked where it enters and the message names the setting.
NORMALIZATION_METHODS = ("foreground", "percentile", "range", "none")
POSTPROCESS_MODES = ("auto", "three_class", "binary")
MAX_OBJECT_PIXELS = 10_000_000  # min_size / min_seed_size: a disc 3,500 px across, beyond any
                                # cell; larger values can only remove every object
MAX_LEVEL = 1e6                 # normalisation level: the network saw values around 0.6


def _number(who: str, name: str, value: object, lo: float, hi: float, *,
            whole: bool = False, open_low: bool = False) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))
    if ok:
        v = float(value)
        ok = bool(np.isfinite(v)) and (v > lo if open_low else v >= lo) and v <= hi and (
            not whole or v == int(v))
    if not ok:
        kind = "a whole number" if whole else "a finite number"
        bound = f"above {lo:g}" if open_low else f"from {lo:g}"
        raise ValueError(f"{who}: setting '{name}' is {value!r}; it must be {kind} {bound} "
                         f"to {hi:g}")
    return float(value)


def check_normalization(normalization: object, who: str = "normalize") -> dict | None:
    """A normalisation setting (see `predict.normalize`): a known method and, for it, a `low`
    percentile in [0, 100), a `high` one in (low, 100], a `level` above 0. None: the default."""
    if normalization is None:
        return None
    if not isinstance(normalization, dict):
        raise ValueError(f"{who}: the normalisation setting must be a dict like "
                         f"{{'method': 'foreground'}}, got {normalization!r}")
    method = normalization.get("method")
    if method not in NORMALIZATION_METHODS:
        raise ValueError(f"{who}: unknown method {method!r} (normalisation setting 'method'); "
                         f"use one of {', '.join(map(repr, NORMALIZATION_METHODS))}")
    low = normalization.get("low", 1.0)
    if method in ("foreground", "percentile"):
        low = _number(who, "normalization.low", low, 0.0, 100.0)
        if low >= 100:
            raise ValueError(f"{who}: setting 'normalization.low' is {low!r}; a percentile "
                             "below 100 is needed")
    if method == "percentile":
        _number(who, "normalization.high", normalization.get("high", 99.8), low, 100.0,
                open_low=True)
    if method == "foreground":
        _number(who, "normalization.level", normalization.get("level", 0.6), 0.0, MAX_LEVEL,
                open_low=True)
    return normalization


def check_postprocess(settings: object, who: str = "to_instances") -> dict:
    """Post-processing settings (`to_instances`'s keyword arguments): thresholds in [0, 1],
    sizes whole numbers from 0 to MAX_OBJECT_PIXELS, split_depth finite and >= 0, flags
    booleans, and no unknown names."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise ValueError(f"{who}: the post-processing settings must be a dict like "
                         f"{{'min_size': 30}}, got {settings!r}")
    known = ("mode", "fg_thresh", "seed_thresh", "min_seed_size", "min_size",
             "keep_unseeded", "split", "split_depth")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{who}: unknown post-processing setting(s) {unknown}; the settings "
                         f"are {', '.join(known)}")
    for name, value in settings.items():
        if name in ("fg_thresh", "seed_thresh"):
            _number(who, name, value, 0.0, 1.0)
        elif name in ("min_size", "min_seed_size"):
            _number(who, name, value, 0, MAX_OBJECT_PIXELS, whole=True)
        elif name == "split_depth":
            _number(who, name, value, 0.0, 1e6)
        elif name in ("keep_unseeded", "split") and not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{who}: setting '{name}' is {value!r}; it must be True or False")
        elif name == "mode" and value not in POSTPROCESS_MODES:
            raise ValueError(f"{who}: setting 'mode' is {value!r}; use one of "
                             f"{', '.join(POSTPROCESS_MODES)}")
    return settings


def check_diameter(value: object, who: str) -> float | None:
    """A stored training diameter: None, or a finite number of pixels above 0."""
    if value is None:
        return None
    return _number(who, "diameter", value, 0.0, 1e6, open_low=True)


# ------------------------------------------------------------------ JSON a file supplies
MAX_JSON_DEPTH = 32  # minunet's own JSON nests 3 deep; Python's parser recurses per level
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]")


def json_depth(text: str) -> int:
    """How deep the arrays and objects of a JSON text nest (strings skipped), in one pass."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0)


def load_json(text: str, who: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, refusing texts nested deeper than max_depth (a crafted file would make the
    parser raise RecursionError) with a message naming `who`."""
    depth = json_depth(text)
    if depth > max_depth:
        raise ValueError(f"{who}: the JSON nests {depth} levels deep (at most {max_depth} "
                         "allowed): damaged or crafted file")
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{who}: the JSON nests too deeply: damaged or crafted file") from None


# ------------------------------------------------------------------ pixel values
MAX_PIXEL_MAGNITUDE = float(np.finfo(np.float64).max) / 2**20  # ~1.7e302: normalising sums
                                 # and subtracts pixels; beyond this float64 overflows to inf


def check_pixel_range(who: str, gray: np.ndarray) -> None:
    """Refuse pixels too large in magnitude to normalise: a difference of two of them (or a
    smoothing sum) would overflow to inf and every statistic after it would be NaN."""
    if gray.size == 0 or not np.issubdtype(gray.dtype, np.floating):
        return
    lo, hi = float(gray.min()), float(gray.max())
    if max(abs(lo), abs(hi)) > MAX_PIXEL_MAGNITUDE:
        raise ValueError(f"{who}: pixel values span [{lo:.4g}, {hi:.4g}], beyond "
                         f"±{MAX_PIXEL_MAGNITUDE:.3g}, which float64 arithmetic cannot "
                         "normalise without overflowing; rescale the image (e.g. divide it by "
                         "a large power of ten) or clip it")
