"""Check a module's hand-written backward against central finite differences.

    report = mu.gradcheck(MyLayer(...), x)          # raises mu.GradcheckError if wrong
    print(report)                                  # one line per checked tensor

How it works, in four steps:

1. Copy the module and the float inputs to float64 (float32 round-off would drown the test).
2. Draw a random upstream gradient G for the output (never all ones: with ones, a batch-norm
   input gradient is exactly zero and any backward that returns zeros would pass) and define
   the scalar s = sum(G * forward(inputs)).
3. Analytic: forward, then backward(G). The input gradients are backward's return values, the
   parameter gradients are read from `p.grad`.
4. Numeric: for each checked element t, ds/dt ~= (s(t + eps) - s(t - eps)) / (2 eps).

A tensor passes when ||analytic - numeric|| / max(||analytic||, ||numeric||) < tol, the
relative error of the whole tensor. It also checks that backward left `dout` untouched and
that parameter gradients accumulate (a second backward adds the same amount again).

`mode="random"` checks directional derivatives instead of single elements: for a random
direction V per tensor it compares <grad, V> with (s(t + eps V) - s(t - eps V)) / (2 eps).
Two forward passes per direction instead of two per element, so big modules stay cheap.

Integer inputs (targets of a loss) are passed through unchanged and never checked; float
inputs are checked when backward returns a gradient for them (a loss returns only dlogits).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .module import Module

DEFAULT_EPS = 1e-6  # float64 step: truncation ~eps**2, round-off ~1e-16/eps, both << 1e-7
DEFAULT_TOL = 1e-7  # whole-tensor relative error a correct float64 backward stays well below


class GradcheckError(AssertionError):
    """A backward disagrees with finite differences (the report is attached as `.report`)."""

    def __init__(self, message: str, report: GradcheckReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class TensorCheck:
    name: str              # "input 0", "weight", "down.0.conv1.bias", ...
    shape: tuple[int, ...]
    checked: int           # elements (or directions, in random mode) compared
    rel_error: float       # ||a - n|| / max(||a||, ||n||) over the checked elements
    worst_index: tuple[int, ...] | None
    worst_analytic: float
    worst_numeric: float
    ok: bool


@dataclass
class GradcheckReport:
    module: str
    tol: float
    mode: str
    tensors: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # dout modified, no accumulation, ...

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tensors)

    def __str__(self) -> str:
        lines = [f"gradcheck {self.module} ({self.mode} mode, tol {self.tol:.0e}): "
                 f"{'OK' if self.ok else 'FAILED'}"]
        for t in self.tensors:
            worst = "" if t.worst_index is None else (
                f"  worst {t.worst_index}: analytic {t.worst_analytic:+.6e} "
                f"numeric {t.worst_numeric:+.6e}")
            lines.append(f"  {'ok  ' if t.ok else 'FAIL'} {t.name:<28} {t.shape!s:<18} "
                         f"checked {t.checked:>6}  rel.err {t.rel_error:.2e}{worst}")
        lines += [f"  FAIL {p}" for p in self.problems]
        return "\n".join(lines)


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _relative_error(a: np.ndarray, n: np.ndarray) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(n))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - n) / scale)


def gradcheck(
    module: Module,
    *inputs: Any,
    eps: float = DEFAULT_EPS,
    tol: float = DEFAULT_TOL,
    mode: str = "full",
    max_elements: int | None = 2000,
    n_directions: int = 3,
    seed: int = 0,
    raise_on_fail: bool = True,
) -> GradcheckReport:
    """Check `module.backward` for every float input and every parameter. See the module docstring.

    module:       any Module; it is copied, the original is left untouched
    inputs:       the forward arguments (arrays; integer arrays are passed through unchecked)
    mode:         "full" (element by element) or "random" (random directional derivatives)
    max_elements: in full mode, at most this many randomly chosen elements per tensor
                  (None = all of them)
    raise_on_fail: raise GradcheckError on failure; else return the report with `.ok == False`
    """
    if mode not in ("full", "random"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'random', got {mode!r}")
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(module).astype(np.float64)
    args = [np.array(x, dtype=np.float64) if _is_float(x) else x for x in inputs]
    report = GradcheckReport(type(module).__name__, tol, mode)

    # The scalar s = sum(G * out) and its analytic gradients.
    out = _as_tuple(model.forward(*args))
    upstream = tuple(_random_like(o, rng) for o in out)
    upstream_copy = tuple(np.copy(g) for g in upstream)

    def objective() -> float:
        outs = _as_tuple(model.forward(*args))
        return float(sum(np.sum(g * np.asarray(o)) for g, o in zip(upstream, outs, strict=True)))

    model.zero_grad()
    model.forward(*args)
    grads_in = _as_tuple(model.backward(_unpack(upstream)))
    for g, g0 in zip(upstream, upstream_copy, strict=True):
        if not np.array_equal(g, g0):
            report.problems.append("backward modified its dout in place (it must not)")
    grads_param = {name: p.grad.copy() for name, p in model.named_parameters()}

    # Parameter gradients must accumulate: a second backward adds the same again.
    if grads_param:
        model.forward(*args)
        model.backward(_unpack(upstream))
        for name, p in model.named_parameters():
            if not np.allclose(p.grad, 2 * grads_param[name], rtol=1e-10, atol=1e-12):
                report.problems.append(f"{name}.grad is not accumulated (use p.grad += ...)")
                break

    targets: list[tuple[str, np.ndarray, np.ndarray]] = []
    float_positions = [i for i, x in enumerate(args) if _is_float(x)]
    for k, i in enumerate(float_positions[: len(grads_in)]):
        if grads_in[k] is None:
            continue
        grad = np.asarray(grads_in[k])
        if grad.shape != args[i].shape:
            report.problems.append(f"gradient for input {i} has shape {grad.shape}, "
                                   f"input has {args[i].shape}")
            continue
        targets.append((f"input {i}", args[i], grad))
    params = dict(model.named_parameters())
    targets += [(name, params[name].data, grads_param[name]) for name in params]

    for name, tensor, analytic in targets:
        if mode == "full":
            check = _check_elements(name, tensor, analytic, objective, eps, tol, max_elements, rng)
        else:
            check = _check_directions(name, tensor, analytic, objective, eps, tol, n_directions,
                                      rng)
        report.tensors.append(check)

    if raise_on_fail and not report.ok:
        raise GradcheckError(str(report), report)
    return report


def _is_float(x: Any) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _random_like(o: Any, rng: np.random.Generator) -> Any:
    o = np.asarray(o)
    return rng.standard_normal(o.shape) if o.ndim else float(rng.standard_normal())


def _unpack(upstream: tuple) -> Any:
    return upstream[0] if len(upstream) == 1 else upstream


def _check_elements(name: str, tensor: np.ndarray, analytic: np.ndarray,
                    objective: Callable[[], float], eps: float, tol: float,
                    max_elements: int | None, rng: np.random.Generator) -> TensorCheck:
    flat = tensor.reshape(-1)  # a view: perturbing flat perturbs the tensor the module reads
    if max_elements is None or flat.size <= max_elements:
        picked = np.arange(flat.size)
    else:
        picked = np.sort(rng.choice(flat.size, size=max_elements, replace=False))
    numeric = np.empty(picked.size)
    for j, idx in enumerate(picked):
        original = flat[idx]
        flat[idx] = original + eps
        plus = objective()
        flat[idx] = original - eps
        minus = objective()
        flat[idx] = original
        numeric[j] = (plus - minus) / (2 * eps)
    chosen = analytic.reshape(-1)[picked]
    err = _relative_error(chosen, numeric)
    worst = int(np.argmax(np.abs(chosen - numeric))) if picked.size else 0
    return TensorCheck(name, tensor.shape, int(picked.size), err,
                       tuple(int(i) for i in np.unravel_index(picked[worst], tensor.shape))
                       if picked.size else None,
                       float(chosen[worst]) if picked.size else 0.0,
                       float(numeric[worst]) if picked.size else 0.0, err < tol)


def _check_directions(name: str, tensor: np.ndarray, analytic: np.ndarray,
                      objective: Callable[[], float], eps: float, tol: float,
                      n_directions: int, rng: np.random.Generator) -> TensorCheck:
    original = tensor.copy()
    a_vals, n_vals = np.empty(n_directions), np.empty(n_directions)
    for j in range(n_directions):
        direction = rng.standard_normal(tensor.shape)
        direction /= np.linalg.norm(direction)
        tensor[...] = original + eps * direction
        plus = objective()
        tensor[...] = original - eps * direction
        minus = objective()
        tensor[...] = original
        n_vals[j] = (plus - minus) / (2 * eps)
        a_vals[j] = float(np.sum(analytic * direction))
    err = _relative_error(a_vals, n_vals)
    return TensorCheck(name, tensor.shape, n_directions, err, None, 0.0, 0.0, err < tol)

