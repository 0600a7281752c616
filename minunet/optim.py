"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, outside the layers.

A layer's backward only *adds* into `p.grad`; the optimizer reads `p.grad` and changes `p.data`.
The explicit training loop a learner writes:

    logits = model.forward(x)
    loss = loss_fn.forward(logits, target)
    optimizer.zero_grad()
    model.backward(loss_fn.backward())
    optimizer.step()

Adam's update runs as one fused Numba kernel (`kernels/optim.py`), or, with
MINUNET_READABLE=1 (as for the network) or `Adam(..., readable=True)`, as the readable NumPy
of `Adam._update` below: the same arithmetic in the same order (tests/test_optim.py compares
them).

The update formulas are PyTorch's (`torch.optim.SGD`, `torch.optim.Adam`, `torch.optim.AdamW`),
so the same hyper-parameters mean the same thing. Every update runs in place, in the parameters'
dtype (float32 for training): no temporary float64 copies of the weights.

`state_dict()` returns plain numbers and arrays under flat string keys, so it fits in an `.npz`
(see `minunet.checkpoint`); `load_state_dict()` accepts them back, 0-d arrays included.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .kernels.optim import adam_update
from .module import Parameter
from .unet import use_readable

StateDict = dict[str, Any]  # str -> float | int | np.ndarray


class Optimizer:
    """What every optimizer shares: the parameter list, `lr`, `zero_grad`, the step count.

    `lr` is a plain attribute: a schedule (or you) may change it between steps.
    """

    # Names of the per-parameter state arrays (e.g. Adam's "exp_avg") and of the scalar
    # hyper-parameters saved in the state dict; subclasses fill them in.
    buffer_names: tuple[str, ...] = ()
    hyper_names: tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{type(self).__name__}: expected Parameters (model.parameters()), "
                                f"got {type(p).__name__}")
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be >= 0, got {lr}")
        self.lr = float(lr)
        self.steps = 0  # number of step() calls so far
        # One state array per parameter and buffer name, created on the first step (as PyTorch).
        self.state: dict[str, list[np.ndarray]] = {}

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (gradients accumulate across backward calls)."""
        for p in self.params:
            p.zero_grad()

    def step(self) -> None:
        raise NotImplementedError

    def _buffers(self, name: str) -> list[np.ndarray]:
        if name not in self.state:
            self.state[name] = [np.zeros_like(p.data) for p in self.params]
        return self.state[name]

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> StateDict:
        """Flat dict: `lr`, `steps`, hyper-parameters, and `<buffer>.<i>` arrays (copies)."""
        state: StateDict = {"lr": self.lr, "steps": self.steps}
        state.update({name: getattr(self, name) for name in self.hyper_names})
        for name, arrays in self.state.items():
            state.update({f"{name}.{i}": a.copy() for i, a in enumerate(arrays)})
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what `state_dict()` returned (numbers may come back as 0-d arrays).

        Everything is checked before anything changes: keys of another optimizer, state for
        another number of parameters or other shapes are errors that say so.
        """
        who = f"{type(self).__name__}.load_state_dict"
        scalars = ("lr", "steps", *self.hyper_names)
        per_param = {f"{name}.{i}": (name, i) for name in self.buffer_names
                     for i in range(len(self.params))}
        unexpected = sorted(set(state) - set(scalars) - set(per_param))
        missing = [key for key in scalars if key not in state]
        if unexpected or missing:
            raise KeyError(f"{who}: unexpected keys {unexpected[:5]}, missing {missing}: the "
                           f"state was saved by another optimizer or for a model with more "
                           f"parameters")
        buffers: dict[str, list[np.ndarray]] = {}
        for name in self.buffer_names:
            keys = [f"{name}.{i}" for i in range(len(self.params))]
            present = [key in state for key in keys]
            if not any(present):
                continue
            if not all(present):
                raise KeyError(f"{who}: '{name}' is saved for {sum(present)} parameters, this "
                               f"optimizer has {len(self.params)}: the state belongs to another "
                               f"model")
            buffers[name] = []
            for key, p in zip(keys, self.params, strict=True):
                value = np.asarray(state[key])
                if value.shape != p.shape:
                    raise ValueError(f"{who}: '{key}' has shape {value.shape}, the parameter has "
                                     f"{p.shape}: the state belongs to another model")
                buffers[name].append(value.astype(p.dtype, copy=True))
        self.lr = float(state["lr"])
        self.steps = int(state["steps"])
        for name in self.hyper_names:
            value = np.asarray(state[name])
            setattr(self, name, bool(value) if value.dtype == bool else float(value))
        self.state = buffers


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    PyTorch's formulas (dampening 0), for each parameter p with gradient g:

        g = g + weight_decay * p
        b = g                       on the first step (momentum > 0)
        b = momentum * b + g        later
        g = g + momentum * b        with nesterov, else g = b
        p = p - lr * g
    """

    buffer_names = ("momentum_buffer",)
    hyper_names = ("momentum", "nesterov", "weight_decay")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: momentum and weight_decay must be >= 0, got {momentum}, "
                             f"{weight_decay}")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0 (as in PyTorch)")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)

    def step(self) -> None:
        first = "momentum_buffer" not in self.state
        bufs = self._buffers("momentum_buffer") if self.momentum else [None] * len(self.params)
        for p, buf in zip(self.params, bufs, strict=True):
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data          # a new array: p.grad stays untouched
            if buf is not None:
                if first:
                    buf[...] = g
                else:
                    buf *= self.momentum
                    buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            p.data -= self.lr * g
        self.steps += 1


class Adam(Optimizer):
    """Adam (Kingma & Ba), and AdamW with `decoupled=True`; PyTorch's formulas.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        g = g + weight_decay * p                  (Adam: L2 penalty folded into the gradient)
        p = p * (1 - lr * weight_decay)           (AdamW: decay applied to the weight itself)
        m = beta1 * m + (1 - beta1) * g           first moment
        v = beta2 * v + (1 - beta2) * g**2        second moment
        p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)
    """

    buffer_names = ("exp_avg", "exp_avg_sq")
    hyper_names = ("beta1", "beta2", "eps", "weight_decay", "decoupled")

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False,
                 readable: bool | None = None) -> None:
        super().__init__(params, lr)
        self.readable = use_readable(readable)  # None: MINUNET_READABLE=1 means readable
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"Adam: betas must lie in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"Adam: eps must be > 0 and weight_decay >= 0, got {eps}, "
                             f"{weight_decay}")
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.decoupled = bool(decoupled)

    def step(self) -> None:
        self.steps += 1
        t = self.steps
        bias1 = 1 - self.beta1**t
        bias2_sqrt = math.sqrt(1 - self.beta2**t)
        step_size = self.lr / bias1
        exp_avgs, exp_avg_sqs = self._buffers("exp_avg"), self._buffers("exp_avg_sq")
        for p, m, v in zip(self.params, exp_avgs, exp_avg_sqs, strict=True):
            if not self.readable and p.data.flags.c_contiguous and p.grad.flags.c_contiguous:
                # the formulas below, fused into one pass over memory (kernels/optim.py)
                dt = p.dtype.type  # scalars in the parameter's dtype: float32 stays float32
                coupled = self.weight_decay if not self.decoupled else 0.0
                decay = 1 - self.lr * self.weight_decay if self.decoupled else 1.0
                adam_update(p.data, p.grad, m, v, dt(self.beta1), dt(1 - self.beta1),
                            dt(self.beta2), dt(1 - self.beta2), dt(bias2_sqrt), dt(self.eps),
                            dt(step_size), dt(coupled), dt(decay))
            else:
                self._update(p, m, v, bias2_sqrt, step_size)

    def _update(self, p: Parameter, m: np.ndarray, v: np.ndarray, bias2_sqrt: float,
                step_size: float) -> None:
        """One parameter's update, as readable NumPy (the fused kernel's reference)."""
        g = p.grad
        if self.weight_decay and self.decoupled:
            p.data *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * p.data          # a new array: p.grad stays untouched
        # m = beta1 * m + (1 - beta1) * g, in place
        m *= self.beta1
        m += (1 - self.beta1) * g
        # v = beta2 * v + (1 - beta2) * g * g, in place
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        # denom = sqrt(v) / sqrt(1 - beta2**t) + eps, in one scratch array
        denom = np.sqrt(v)
        denom /= bias2_sqrt
        denom += self.eps
        # p = p - step_size * m / denom
        np.divide(m, denom, out=denom)
        denom *= step_size
        p.data -= denom


# ---------------------------------------------------------------- learning-rate schedules
class CosineSchedule:
    """Linear warm-up from 0 to `base_lr`, then a cosine decay to `min_lr` at `total_steps`.

        lr(s) = base_lr * (s + 1) / warmup_steps                         s < warmup_steps
        lr(s) = min_lr + (base_lr - min_lr) * (1 + cos(pi * q)) / 2      q = (s - warmup) /
                                                                            (total - warmup)
    `s` counts optimizer steps from 0; after `total_steps` the rate stays at `min_lr`.
    Use: `optimizer.lr = schedule(step)` before each `optimizer.step()`.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 min_lr: float = 0.0) -> None:
        if total_steps <= 0 or not 0 <= warmup_steps < total_steps:
            raise ValueError(f"CosineSchedule: need total_steps > 0 and 0 <= warmup_steps < "
                             f"total_steps, got total_steps={total_steps}, "
                             f"warmup_steps={warmup_steps}")
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        q = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * q)) / 2

    def __repr__(self) -> str:
        return (f"CosineSchedule(base_lr={self.base_lr}, total_steps={self.total_steps}, "
                f"warmup_steps={self.warmup_steps}, min_lr={self.min_lr})")


class StepSchedule:
    """Multiply the rate by `gamma` every `step_size` steps.

        lr(s) = base_lr * gamma ** (s // step_size)

    Like `torch.optim.lr_scheduler.StepLR`; `s` counts whatever you step it with (optimizer steps
    in `minunet.train`).
    """

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1) -> None:
        if step_size <= 0:
            raise ValueError(f"StepSchedule: step_size must be > 0, got {step_size}")
        self.base_lr, self.step_size, self.gamma = float(base_lr), int(step_size), float(gamma)

    def __call__(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)

    def __repr__(self) -> str:
        return (f"StepSchedule(base_lr={self.base_lr}, step_size={self.step_size}, "
                f"gamma={self.gamma})")
