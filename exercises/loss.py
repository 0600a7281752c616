"""Exercise 6: the per-pixel cross-entropy loss (softmax + negative log-likelihood).

    p = softmax(logits) over the class axis 1 (subtract the per-pixel max first: stable)
    l[n, h, w] = -log p[n, target[n, h, w], h, w]
    loss = mean(l)                        or, with a weight map w:  sum(w * l) / sum(w)
Backward: d loss / d logits = (p - onehot(target)) / (N*H*W)
          (weighted: w * (p - onehot) / sum(w)), times dout.
logits (N, Kc, H, W) float, target (N, H, W) int, weight (N, H, W) or None.
forward returns a Python float; backward(dout=1.0) returns dlogits (N, Kc, H, W).

    python -m exercises.check exercises/loss.py

Solution: minunet/losses.py. Notes: docs/learn/softmax_cross_entropy.md.
"""

import numpy as np  # noqa: F401

import minunet as mu


class CrossEntropyLoss(mu.Module):
    def forward(self, logits, target, weight=None):
        # TODO: stable softmax, loss (plain or weighted mean); save p, the one-hot target and
        #       the weights (or their normalised form) for backward
        raise NotImplementedError("CrossEntropyLoss.forward")

    def backward(self, dout=1.0):
        # TODO: dout * (p - onehot) / (N*H*W), or the weighted form
        raise NotImplementedError("CrossEntropyLoss.backward")
