"""Parameter, Module and Sequential: the few rules every layer follows.

A layer is a `Module` with two methods a learner reads side by side:

    y = layer.forward(x)      # ends with self.save_for_backward(...): what backward needs
    dx = layer.backward(dy)   # starts with `x, = self.take_saved()`, returns dx as a NEW
                              # array (never a view of dy, never dy modified in place),
                              # and ADDS parameter gradients into p.grad (p.grad += ...)

The hand-off, as in PyTorch's `ctx.save_for_backward(...)` / `ctx.saved_tensors`:

    self.save_for_backward(x, x_hat)   # end of forward: any values (arrays, ints, flags)
    x, x_hat = self.take_saved()       # start of backward: the same values, as a tuple

`take_saved` hands them over and lets the module forget them (one backward per forward, and
the memory goes with backward's local variables). It is a method, not a property, so that a
debugger showing the module's attributes never consumes them. Its errors say what went wrong:
"forward stored nothing for backward" (forward ran but never called `save_for_backward`),
"backward was called before forward", or a forward run with gradients disabled.

Gradients accumulate: call `zero_grad()` (or the optimizer's) before each step. Nothing in
a layer ever updates a parameter: that is the optimizer's job, so every backward can be
gradient-checked on its own.

Hooks, to look inside without editing a layer: `module.register_forward_hook(fn)` calls
`fn(module, inputs, output)` after each forward, `register_backward_hook(fn)` calls
`fn(module, dout, dinput)` after each backward (dinput: what backward returned); both return a
handle whose `.remove()` takes the hook away. `minunet.trace.Trace` uses them to record every
layer's shapes and statistics. With no hook registered the only cost is one check per call.

Parameters are declared in `__init__` (never created lazily on the first forward).
Running statistics (batch norm's `running_mean` / `running_var`) are *buffers*: plain
arrays registered with `register_buffer`, saved in `state_dict()` but never trained.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


class Parameter:
    """A trainable array and the gradient accumulated into it.

    `data` and `grad` always have the same shape and dtype; `grad` starts at zero.
    """

    def __init__(self, data: np.ndarray) -> None:
        data = np.asarray(data)
        if not np.issubdtype(data.dtype, np.floating):
            raise TypeError(f"Parameter needs a floating-point array, got dtype {data.dtype}")
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer and network.

    Subclasses call `super().__init__()` first, then create their `Parameter`s, buffers and
    child modules as attributes. Children may also sit in lists (`self.down = [Block(...), ...]`);
    their names then read `down.0.conv1.weight`.
    """

    def __init__(self) -> None:
        self.training = True
        self.grad_enabled = True  # False: forward keeps nothing for backward (inference)
        self._buffer_names: list[str] = []
        self._saved: Any = None
        self._forward_state = "never"  # "never", "ran", "taken" or "no_grad": for the errors

    def __getattr__(self, name: str) -> Any:
        """Called only when `name` is not found: Module's own bookkeeping missing means the
        subclass's __init__ never called `super().__init__()`; say that, not AttributeError."""
        if name in _MODULE_STATE and "_buffer_names" not in vars(self):
            cls = type(self).__name__
            raise AttributeError(
                f"{cls} was not set up as a Module: {cls}.__init__ must call "
                f"`super().__init__()` first (it creates '{name}' and the rest of the "
                f"bookkeeping every layer needs)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Wrap each subclass's own `forward` so that every call first forgets the previous
        forward's saved values and records that a forward ran (the errors of `take_saved`
        use it). The wrapper is one line; a debugger steps through it into your forward."""
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__:
            cls.forward = _marking_forward(cls.__dict__["forward"])
        if "backward" in cls.__dict__:
            cls.backward = _hooked_backward(cls.__dict__["backward"])

    # ---------------------------------------------------------------- the pair
    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dout: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def __call__(self, *inputs: Any) -> Any:
        out = self.forward(*inputs)
        if not self.grad_enabled:
            self._saved = None  # inference: free what backward would have needed, at once
            self._forward_state = "no_grad"
        return out

    # ---------------------------------------------------------------- hooks
    def register_forward_hook(self, fn: Callable[[Module, tuple, Any], None]) -> HookHandle:
        """Call fn(module, inputs, output) after every forward of this module."""
        return _add_hook(self, "forward", fn)

    def register_backward_hook(self, fn: Callable[[Module, Any, Any], None]) -> HookHandle:
        """Call fn(module, dout, dinput) after every backward of this module."""
        return _add_hook(self, "backward", fn)

    # ---------------------------------------------------------------- the hand-off
    def save_for_backward(self, *values: Any) -> None:
        """Keep `values` (arrays, shapes, flags...) for the next backward. Call it once, at
        the end of forward; backward gets them back, in order, from `take_saved()`."""
        self._saved = values

    def take_saved(self) -> tuple:
        """Return what forward passed to `save_for_backward`, as a tuple, and forget it.

        Use it once, at the start of backward: `x, x_hat = self.take_saved()`.
        """
        saved = self._take_saved()
        if not isinstance(saved, tuple):  # a layer that set self._saved = x by hand
            saved = (saved,)
        return saved

    def _take_saved(self) -> Any:
        """What forward saved, as stored (older layers set `self._saved` directly)."""
        saved = self._saved
        if saved is None:
            name = type(self).__name__
            if self._forward_state == "ran":
                raise RuntimeError(
                    f"{name}: forward stored nothing for backward: end {name}.forward with "
                    f"self.save_for_backward(...) (what backward needs, e.g. the input x)")
            if self._forward_state == "no_grad":
                raise RuntimeError(
                    f"{name}.backward after a forward with gradients disabled "
                    f"(set_grad_enabled(False)): nothing was kept; enable gradients and run "
                    f"forward again")
            again = " (twice after one forward?)" if self._forward_state == "taken" else ""
            raise RuntimeError(
                f"{name}.backward was called before forward{again}: call forward first, it "
                f"saves what backward needs (one backward per forward)")
        self._saved = None
        self._forward_state = "taken"
        return saved

    # ------------------------------------------------------------ bookkeeping
    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Declare a non-trainable array that belongs in the state dict (e.g. running stats)."""
        setattr(self, name, np.ascontiguousarray(value))
        if name not in self._buffer_names:
            self._buffer_names.append(name)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{name}.{i}", item

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield (f"{prefix}.{name}" if prefix else name), value
        for name, child in self.named_children():
            yield from child.named_parameters(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for name in self._buffer_names:
            yield (f"{prefix}.{name}" if prefix else name), getattr(self, name)
        for name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}.{name}" if prefix else name)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and every module below it."""
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def set_grad_enabled(self, mode: bool = True) -> Module:
        """With mode False, calling a module (`module(x)`) keeps nothing for backward, on this
        module and every module below it: inference then holds only the live activations.
        `forward` called directly still saves (that is what the gradient checker relies on)."""
        for _, module in self.named_modules():
            module.grad_enabled = mode
        return self

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the first parameter (float32 for training, float64 for checks)."""
        for p in self.parameters():
            return p.dtype
        for _, b in self.named_buffers():
            return b.dtype
        return np.dtype(np.float32)

    def astype(self, dtype: Any) -> Module:
        """Convert every parameter (and its gradient) and every buffer to `dtype`, in place."""
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"astype needs a floating-point dtype, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = p.grad.astype(dtype)
        for _, module in self.named_modules():
            for name in module._buffer_names:
                setattr(module, name, getattr(module, name).astype(dtype))
            module._saved = None
        return self

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, under dotted names (`down.0.conv1.weight`)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: b.copy() for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into this module's parameters and buffers (keeping this module's dtype).

        With `strict`, missing and unexpected names are errors; shapes must always match.
        """
        params = dict(self.named_parameters())
        buffers = {name for name, _ in self.named_buffers()}
        expected = set(params) | buffers
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{' ...' if len(unexpected) > 5 else ''}"
            )
        modules = dict(self.named_modules())  # name -> module, for the buffers' owners
        for name, value in state.items():
            if name not in expected:
                continue
            value = np.asarray(value)
            if name in params:
                target = params[name].data
            else:
                owner_name, _, attr = name.rpartition(".")
                target = getattr(modules[owner_name], attr)
            if target.shape != value.shape:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: '{name}' has shape {value.shape} "
                    f"in the state dict but {target.shape} in the model"
                )
            target[...] = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_MODULE_STATE = ("training", "grad_enabled", "_buffer_names", "_saved", "_forward_state")


def _marking_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """`forward`, preceded by: forget the last forward's saved values, note that one ran;
    followed by the forward hooks, if any."""
    if getattr(forward, "_marks_forward", False):
        return forward

    @functools.wraps(forward)
    def marked_forward(self: Module, *inputs: Any) -> Any:
        self._saved, self._forward_state = None, "ran"
        if not _hooks_on:  # the usual case: nothing else to do
            return forward(self, *inputs)
        return _run_hooked(self, "forward", forward, inputs)

    marked_forward._marks_forward = True  # type: ignore[attr-defined]
    return marked_forward


def _hooked_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """`backward`, followed by the backward hooks, if any."""
    if getattr(backward, "_hooked", False):
        return backward

    @functools.wraps(backward)
    def hooked_backward(self: Module, *args: Any, **kwargs: Any) -> Any:  # a loss: dout=1.0
        if not _hooks_on:
            return backward(self, *args, **kwargs)
        return _run_hooked(self, "backward", backward, (*args, *kwargs.values()))

    hooked_backward._hooked = True  # type: ignore[attr-defined]
    return hooked_backward


# module -> {"forward": [fn, ...], "backward": [...]}; weak, so copies (deepcopy) and
# forgotten modules carry no hooks
_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RUNNING: set[tuple[int, str]] = set()  # (id(module), direction) inside a hooked call
_hooks_on = False  # whether any hook is registered: the one check a call pays without hooks


class HookHandle:
    """What register_*_hook returns: `.remove()` takes the hook away."""

    def __init__(self, module: Module, direction: str, fn: Callable[..., None]) -> None:
        self._module, self._direction, self._fn = weakref.ref(module), direction, fn

    def remove(self) -> None:
        module = self._module()
        hooks = _HOOKS.get(module, {}) if module is not None else {}
        fns = hooks.get(self._direction, [])
        if self._fn in fns:
            fns.remove(self._fn)
        if module is not None and not any(hooks.values()):
            _HOOKS.pop(module, None)
        global _hooks_on
        _hooks_on = bool(_HOOKS)


def _add_hook(module: Module, direction: str, fn: Callable[..., None]) -> HookHandle:
    if not callable(fn):
        raise TypeError(f"register_{direction}_hook needs a function, got {type(fn).__name__}")
    global _hooks_on
    _HOOKS.setdefault(module, {}).setdefault(direction, []).append(fn)
    _hooks_on = True
    return HookHandle(module, direction, fn)


def _run_hooked(module: Module, direction: str, method: Callable[..., Any],
                args: tuple) -> Any:
    """method(module, *args), then the module's hooks for that direction, once: a subclass
    whose forward calls super().forward(...) fires them for the outer call only."""
    key = (id(module), direction)
    fns = _HOOKS.get(module, {}).get(direction)
    if not fns or key in _RUNNING:
        return method(module, *args)
    _RUNNING.add(key)
    try:
        result = method(module, *args)
    finally:
        _RUNNING.discard(key)
    for fn in list(fns):
        if direction == "forward":
            fn(module, args, result)
        else:
            fn(module, args[0] if args else None, result)
    return result


class Sequential(Module):
    """Modules applied one after another; backward runs them in reverse."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        self.layers = list(modules)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        # forward was x -> layer_0 -> layer_1 -> ... so the chain rule walks it backwards
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"
