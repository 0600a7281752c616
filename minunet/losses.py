"""Losses over per-pixel class logits: CrossEntropyLoss and DiceLoss.

Both take the same arguments and return a Python float:

    loss = L.forward(logits, target, weight=None)
        logits  (N, Kc, H, W) float   one unnormalised score per class and pixel
        target  (N, H, W)     int     the true class of each pixel, 0 <= target < Kc
        weight  (N, H, W)     float   optional per-pixel weight map (>= 0, not all zero)
    dlogits = L.backward(dout=1.0)   # (N, Kc, H, W), a new array: dout * d loss / d logits

Both start from the softmax p = exp(logits) / sum_k exp(logits), computed stably: the per-pixel
maximum is subtracted first (log-sum-exp), so large logits never overflow.
"""

from __future__ import annotations

import numpy as np

from .checks import check_array
from .module import Module

DICE_SMOOTH = 1.0  # added to numerator and denominator: one pixel's worth (see DiceLoss)


def _check_loss_inputs(who: str, logits: np.ndarray, target: np.ndarray,
                       weight: np.ndarray | None) -> np.ndarray | None:
    """Validate the three arguments; return the weight map in the logits' dtype (or None)."""
    check_array(who, logits, ndim=4, name="logits")
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"{who}: logits must be float32 or float64, got {logits.dtype}")
    N, Kc, H, W = logits.shape
    if not isinstance(target, np.ndarray) or not np.issubdtype(target.dtype, np.integer):
        kind = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(f"{who}: target must be an integer array of class indices, got {kind}")
    if target.shape != (N, H, W):
        raise ValueError(f"{who}: target must have shape (N, H, W) = {(N, H, W)} to match "
                         f"logits {logits.shape}, got {target.shape}")
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= Kc:
        raise ValueError(f"{who}: target holds class indices in [{lo}, {hi}], but the logits "
                         f"have Kc = {Kc} classes (valid: 0 .. {Kc - 1})")
    if weight is None:
        return None
    check_array(who, weight, name="weight map")
    if weight.shape != (N, H, W):
        raise ValueError(f"{who}: weight map must have shape (N, H, W) = {(N, H, W)}, "
                         f"got {weight.shape}")
    if weight.min() < 0 or weight.sum() <= 0:
        raise ValueError(f"{who}: weight map must be >= 0 and not all zero "
                         f"(min {weight.min()}, sum {weight.sum()})")
    return weight.astype(logits.dtype, copy=False)


def _softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over classes (axis 1) and log-softmax, both (N, Kc, H, W), computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)          # (N, Kc, H, W), max is 0
    log_sum = np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, 1, H, W), in [0, log Kc]
    log_p = z - log_sum                                     # (N, Kc, H, W)
    return np.exp(log_p), log_p


def _one_hot(target: np.ndarray, Kc: int, dtype: np.dtype) -> np.ndarray:
    """(N, H, W) class indices -> (N, Kc, H, W) with a 1 at each pixel's class."""
    classes = np.arange(Kc).reshape(1, Kc, 1, 1)
    return (target[:, None] == classes).astype(dtype)


class CrossEntropyLoss(Module):
    """Per-pixel cross-entropy, averaged over pixels (weighted average with a weight map).

        l[n, h, w] = -log p[n, target[n, h, w], h, w] = logsumexp_k logits[n, k] - logits[n, t]
        no weight map:  loss = sum(l) / (N*H*W)                         (PyTorch's mean)
        weight map w:   loss = sum(w * l) / sum(w)                       (a weighted MEAN)

    The weighted form equals, in PyTorch,
    `(F.cross_entropy(logits, target, reduction='none') * w).sum() / w.sum()`;
    it is NOT PyTorch's `weight=` argument, which weighs classes, not pixels. Dividing by
    sum(w) keeps the loss's scale independent of how large the weights are.

    Backward: d l / d logits[k] = p[k] - onehot[k], so
        dlogits = dout * (p - onehot) * c,   c = 1/(N*H*W)  or  w / sum(w)   per pixel
    Saved for backward: p (N, Kc, H, W), the one-hot target and c (N, 1, H, W).
    """

    def forward(self, logits: np.ndarray, target: np.ndarray,
                weight: np.ndarray | None = None) -> float:
        who = "CrossEntropyLoss"
        weight = _check_loss_inputs(who, logits, target, weight)
        N, Kc, H, W = logits.shape
        p, log_p = _softmax(logits)                               # (N, Kc, H, W) each
        onehot = _one_hot(target, Kc, logits.dtype)               # (N, Kc, H, W)
        pixel_loss = -(log_p * onehot).sum(axis=1)                # (N, H, W)
        if weight is None:
            coeff = np.full((N, 1, H, W), 1.0 / (N * H * W), dtype=logits.dtype)
        else:
            coeff = (weight / weight.sum())[:, None]              # (N, 1, H, W), sums to 1
        loss = float((pixel_loss * coeff[:, 0]).sum())
        self.save_for_backward(p, onehot, coeff)
        return loss

    def backward(self, dout: float = 1.0) -> np.ndarray:
        p, onehot, coeff = self.take_saved()
        # forward was loss = sum_pixels c * (logsumexp(logits) - logits[target])
        return (p - onehot) * (coeff * np.asarray(dout, dtype=p.dtype))  # (N, Kc, H, W)


class DiceLoss(Module):
    """Soft Dice loss over classes, on softmax probabilities.

    With p the softmax (N, Kc, H, W), t the one-hot target and w the weight map (1 without
    one), sums over the whole batch and image (N, H, W), for each class k:

        I_k = sum(w * p_k * t_k)    P_k = sum(w * p_k)    T_k = sum(w * t_k)
        dice_k = (2 I_k + s) / (P_k + T_k + s)            s = DICE_SMOOTH = 1
        loss = 1 - mean_k dice_k           (every class counts the same, background included)

    The smoothing s makes a class that is absent from both target and prediction score 1
    instead of 0/0, and keeps the gradient finite; with s = 1 (one pixel's worth) it barely
    moves the score of a class covering many pixels. A perfect prediction gives loss 0.
    PyTorch has no built-in Dice loss; the tests compare with this formula written in torch.

    Backward: with D_k = P_k + T_k + s,
        d loss / d p_k = -(w / Kc) * (2 t_k / D_k - (2 I_k + s) / D_k**2)
        then through the softmax: dlogits = p * (dp - sum_k p_k dp_k)
    Saved for backward: p, t, w (or None), I, P + T + s (Kc,).
    """

    def forward(self, logits: np.ndarray, target: np.ndarray,
                weight: np.ndarray | None = None) -> float:
        who = "DiceLoss"
        weight = _check_loss_inputs(who, logits, target, weight)
        Kc = logits.shape[1]
        p, _ = _softmax(logits)                       # (N, Kc, H, W)
        t = _one_hot(target, Kc, logits.dtype)        # (N, Kc, H, W)
        w = 1 if weight is None else weight[:, None]  # (N, 1, H, W) or the scalar 1
        axes = (0, 2, 3)
        inter = (w * p * t).sum(axis=axes)                                   # (Kc,)
        denom = (w * p).sum(axis=axes) + (w * t).sum(axis=axes) + DICE_SMOOTH  # (Kc,)
        dice = (2 * inter + DICE_SMOOTH) / denom                             # (Kc,)
        self.save_for_backward(p, t, weight, inter, denom)
        return float(1.0 - dice.mean())

    def backward(self, dout: float = 1.0) -> np.ndarray:
        p, t, weight, inter, denom = self.take_saved()
        Kc = p.shape[1]
        shape = (1, Kc, 1, 1)
        inter, denom = inter.reshape(shape), denom.reshape(shape)
        w = 1 if weight is None else weight[:, None]  # (N, 1, H, W) or 1
        # forward was loss = 1 - mean_k (2 I_k + s) / D_k, with I_k and D_k sums over pixels
        dp = -(w / Kc) * (2 * t / denom - (2 * inter + DICE_SMOOTH) / denom**2)  # (N,Kc,H,W)
        dp = dp * np.asarray(dout, dtype=p.dtype)
        # softmax backward: dlogits_j = p_j * (dp_j - sum_k p_k dp_k)
        return p * (dp - (p * dp).sum(axis=1, keepdims=True))  # (N, Kc, H, W)
