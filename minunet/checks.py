"""Input checks shared by the layers: errors naming the layer, what it expected, what it got."""

from __future__ import annotations

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
