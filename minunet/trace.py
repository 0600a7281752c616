"""Look inside a network as it runs: every layer's shapes and statistics, forward and backward.

    with mu.trace(model) as t:            # hooks on every layer, removed at the end
        logits = model(x)
        model.backward(loss.backward())
    print(t.table())                      # one line per layer call, in the order they ran
    t.grad_norms()                        # {"head": 0.41, "up.0.relu2": ..., ...} (backward)

Each record holds the layer's dotted name (`down.0.conv1`), the direction, the shapes of what
it returned (forward: its output; backward: its input gradient, two for Concat), and the mean,
standard deviation, largest |value| and norm of those values. `keep=True` also keeps a copy
of the arrays themselves (for pictures: `mu.viz.plot_learning_signals`).

Built on `Module.register_forward_hook` / `register_backward_hook` (module.py); by default
only the leaves are traced (the layers, not the blocks that contain them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .module import HookHandle, Module


@dataclass
class Record:
    name: str                      # dotted name in the model, "" for the model itself
    layer: str                     # repr of the layer, e.g. "Conv2d(1 -> 4, kernel_size=3, ...)"
    direction: str                 # "forward" or "backward"
    shapes: list[tuple[int, ...]]  # of the output (forward) or the input gradient(s) (backward)
    mean: float
    std: float
    max_abs: float
    norm: float                    # sqrt(sum of squares) over all of them
    arrays: list[np.ndarray] = field(default_factory=list, repr=False)  # keep=True: copies


class Trace:
    """Records per-layer statistics while active (a context manager). See the module docstring."""

    def __init__(self, model: Module, leaves_only: bool = True, keep: bool = False) -> None:
        self.model, self.leaves_only, self.keep = model, leaves_only, keep
        self.records: list[Record] = []
        self._handles: list[HookHandle] = []

    def __enter__(self) -> Trace:
        for name, module in self.model.named_modules():
            if self.leaves_only and any(True for _ in module.named_children()):
                continue
            self._handles.append(module.register_forward_hook(self._recorder(name, "forward")))
            self._handles.append(module.register_backward_hook(self._recorder(name,
                                                                              "backward")))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, name: str, direction: str) -> Any:
        def record(module: Module, _inputs: Any, result: Any) -> None:
            arrays = [np.asarray(a) for a in _flat(result)]
            values = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
            values = values.astype(np.float64, copy=False)
            self.records.append(Record(
                name, repr(module), direction, [a.shape for a in arrays],
                float(values.mean()) if values.size else 0.0,
                float(values.std()) if values.size else 0.0,
                float(np.abs(values).max()) if values.size else 0.0,
                float(np.sqrt(np.sum(values * values))),
                [a.copy() for a in arrays] if self.keep else []))
        return record

    # ------------------------------------------------------------ reading it
    def forward_records(self) -> list[Record]:
        return [r for r in self.records if r.direction == "forward"]

    def backward_records(self) -> list[Record]:
        return [r for r in self.records if r.direction == "backward"]

    def grad_norms(self) -> dict[str, float]:
        """Layer name -> norm of the input gradient its (last) backward returned."""
        return {r.name: r.norm for r in self.backward_records()}

    def table(self) -> str:
        lines = [f"{'layer':<16} {'dir':<8} {'shape':<22} {'mean':>10} {'std':>10} "
                 f"{'max|v|':>10} {'norm':>10}"]
        for r in self.records:
            shape = " + ".join(str(s) for s in r.shapes)
            lines.append(f"{r.name or '(model)':<16} {r.direction:<8} {shape:<22} "
                         f"{r.mean:>10.3e} {r.std:>10.3e} {r.max_abs:>10.3e} {r.norm:>10.3e}")
        return "\n".join(lines)


def trace(model: Module, leaves_only: bool = True, keep: bool = False) -> Trace:
    """`with mu.trace(model) as t:` records every layer's shapes and statistics."""
    return Trace(model, leaves_only, keep)


def _flat(result: Any) -> list[Any]:
    """The arrays in a forward's or backward's result (a tuple for Concat's backward)."""
    if isinstance(result, (tuple, list)):
        return [a for item in result for a in _flat(item)]
    if result is None or np.isscalar(result):  # a loss's forward returns a float
        return []
    return [result]
