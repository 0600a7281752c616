"""Check a module's hand-written backward against central finite differences.

    report = mu.gradcheck(MyLayer(...), x)          # raises mu.GradcheckError if wrong
    print(report)                                  # one line per checked tensor

How it works:

1. Copy the module and the float inputs to float64 (float32 round-off would drown the test).
2. Draw a random upstream gradient G for each output, from a random stream of its own: child 0
   of `np.random.SeedSequence(seed)`. It is independent of any x you drew yourself, even with
   `np.random.default_rng(seed)` (the parent stream): with G == x, for instance, the true input
   gradient of batch norm is almost zero and the check would compare round-off with round-off.
   G is never all ones either (then batch norm's input gradient is exactly zero).
   The checked function is the scalar s(t) = sum(G * forward(inputs)).
3. Analytic: forward, then backward(copy of G). Input gradients are backward's return values,
   parameter gradients are read from `p.grad`.
4. Numeric, for each checked element t_i (central differences, on the OUTPUTS first):

       numeric_i = sum(G * (forward(t_i + eps) - forward(t_i - eps))) / (2 eps)

   Differencing the two outputs before multiplying by G and summing keeps the round-off at
   the size of the change, not of the whole sum (cs231n's `eval_numerical_gradient_array`).
5. Compare, per tensor, over the checked elements (all of them, or `max_elements` drawn at
   random from child 1 of the SeedSequence):

       scale   = max(rms(analytic), rms(numeric))         (rms over the checked elements)
       rel_i   = |analytic_i - numeric_i| / max(|analytic_i|, |numeric_i|, scale)
       element i is wrong when rel_i > tol;  the tensor passes when no element is wrong

   The floor `scale` measures a gradient element that is near zero against the tensor's
   typical gradient instead of against itself (finite differences carry an absolute error
   of about 1e-16 * |output| / eps, which would be huge relative to a tiny element).
   `tol` = 1e-6 (DEFAULT_TOL): every correct float64 layer of minunet stays below 1e-7 on
   shapes from 2x3x5x4 to 8x32x64x64 (the worst measured: 8e-8, batch norm's input gradient
   in train mode at 8x32x64x64, where a channel holds 32768 values; convolutions ~2e-9,
   the rest ~2e-10), and a wrong backward is off by far more (a missing mean term of batch
   norm: > 1e-3; a factor or a sign: ~1). See tests/test_gradcheck.py.

Before the values it checks what would make them meaningless, and stops there with a
diagnosis instead of a page of wrong gradients:
- forward twice on the same input must give the same output. A random layer (dropout,
  noise) draws new numbers at each call: finite differences would then compare two different
  functions. The report says so and how to check such a layer (a fixed mask, or eval mode);
- forward must not write into its inputs, nor create parameters (they belong in __init__).

Besides the values it checks the contract of a backward (module.py):
- backward must not write into dout (the checker passes a copy and compares it afterwards);
- parameter gradients must accumulate: with p.grad pre-filled with random values, a backward
  must ADD its gradient (p.grad += ...), not overwrite it (p.grad = ...);
- the float32 round trip (`check_float32=True`): training runs in float32, so one forward
  and backward of a float32 copy must return float32 outputs and gradients. A float64
  constant such as `np.sqrt(2 / np.pi)` (a NumPy scalar) turns a float32 array into float64
  under NumPy 2's rules: the float64 check cannot see that, the next layer can.

The report keeps the compared numbers: `report.tensors[k].analytic`, `.numeric` and `.indices`
(the flat indices checked, None in random mode); `report.show(n)` prints the n worst of each
tensor (`minunet gradcheck ... --show N`). Hints ("a constant factor", "the sign is flipped")
are given only where the evidence supports them: a fit over at least MIN_ELEMENTS_FOR_HINT
compared values (with two or three, almost any pair of vectors "fits" some factor).

`mode="random"` checks directional derivatives instead of single elements: for a random
unit direction V per tensor it compares <analytic, V> with
sum(G * (forward(t + eps V) - forward(t - eps V))) / (2 eps); same formula for rel_i.
Two forward passes per direction instead of two per element, so big modules stay cheap.

Integer inputs (targets of a loss) are passed through unchanged and never checked; float
inputs are checked when backward returns a gradient for them (a loss returns only dlogits).
Exceptions raised by the module itself are not caught: they reach you with their traceback.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .module import Module

DEFAULT_EPS = 1e-6  # float64 step: truncation ~eps**2, round-off ~1e-16/eps, both << tol
DEFAULT_TOL = 1e-6  # largest rel_i allowed; correct float64 layers stay below 1e-7 (docstring)
DEFAULT_MAX_ELEMENTS = 200  # elements checked per tensor (at random beyond that): 2 forwards each
MIN_ELEMENTS_FOR_HINT = 8  # a factor/sign fit over fewer compared values proves nothing
UPSTREAM, SAMPLING, INPUT = 0, 1, 2  # children of SeedSequence(seed): G, sampling, the CLI's x


def random_streams(seed: int) -> tuple[np.random.Generator, ...]:
    """Three independent generators, children of SeedSequence(seed): for the upstream gradient
    G, for picking elements and directions, and for a random input x (the command's). None of
    them equals `np.random.default_rng(seed)`, the stream a caller would draw x from."""
    return tuple(np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3))


def random_inputs(shape: tuple[int, ...], count: int = 1, seed: int = 0) -> list[np.ndarray]:
    """`count` standard-normal float64 inputs for a check, from their own stream (child 2)."""
    rng = random_streams(seed)[INPUT]
    return [rng.standard_normal(shape) for _ in range(count)]


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
    wrong: int             # how many of them have rel_i > tol
    rel_error: float       # max rel_i over the checked elements
    worst_index: tuple[int, ...] | None  # the element with the largest rel_i (None: random mode)
    worst_analytic: float
    worst_numeric: float
    hint: str              # a guess at the kind of bug, "" when none fits or the tensor passed
    ok: bool
    analytic: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # compared
    numeric: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)   # values
    indices: np.ndarray | None = field(default=None, repr=False)  # flat indices (None: random)
    rel: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)  # rel_i of each


@dataclass
class GradcheckReport:
    module: str
    tol: float
    mode: str
    eps: float = DEFAULT_EPS
    tensors: list[TensorCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # dout modified, no accumulation, ...

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tensors)

    def __str__(self) -> str:
        lines = [f"gradcheck {self.module} ({self.mode} mode, tol {self.tol:.0e}): "
                 f"{'OK' if self.ok else 'FAILED'}"]
        unit = "directions" if self.mode == "random" else "elements"
        for t in self.tensors:
            head = f"  {'ok  ' if t.ok else 'FAIL'} {t.name:<24} {t.shape!s:<18}"
            if t.ok:
                lines.append(f"{head} {t.checked:>6} {unit} checked, max rel.err "
                             f"{t.rel_error:.1e}")
                continue
            lines.append(f"{head} {t.wrong} of {t.checked} {unit} wrong, max rel.err "
                         f"{t.rel_error:.1e}")
            where = "in the worst direction" if t.worst_index is None else f"at {t.worst_index}"
            lines.append(f"       worst {where}: analytic {t.worst_analytic:+.6e}, "
                         f"numeric {t.worst_numeric:+.6e}")
            if t.hint:
                lines.append(f"       hint: {t.hint}")
        lines += [f"  FAIL {p}" for p in self.problems]
        return "\n".join(lines)

    def show(self, n: int = 5) -> str:
        """The n compared values with the largest rel_i of each tensor: where, analytic,
        numeric, their ratio and rel_i (worst first)."""
        lines = []
        for t in self.tensors:
            lines.append(f"{t.name} {t.shape}: the {min(n, t.checked)} worst of {t.checked} "
                         f"compared {'directions' if t.indices is None else 'elements'}")
            lines.append(f"  {'where':<18} {'analytic':>14} {'numeric':>14} {'ratio':>10} "
                         f"{'rel.err':>8}")
            for j in np.argsort(-t.rel, kind="stable")[:n]:
                where = (f"direction {j}" if t.indices is None else
                         str(tuple(int(i) for i in np.unravel_index(t.indices[j], t.shape))))
                ratio = t.analytic[j] / t.numeric[j] if t.numeric[j] != 0 else float("nan")
                lines.append(f"  {where:<18} {t.analytic[j]:+14.6e} {t.numeric[j]:+14.6e} "
                             f"{ratio:10.4g} {t.rel[j]:8.1e}")
        return "\n".join(lines)


def gradcheck(
    module: Module,
    *inputs: Any,
    eps: float = DEFAULT_EPS,
    tol: float = DEFAULT_TOL,
    mode: str = "full",
    max_elements: int | None = DEFAULT_MAX_ELEMENTS,
    n_directions: int = 3,
    seed: int = 0,
    raise_on_fail: bool = True,
    check_float32: bool = True,
) -> GradcheckReport:
    """Check `module.backward` for every float input and every parameter. See the module docstring.

    module:       any Module; it is copied, the original is left untouched
    inputs:       the forward arguments (arrays; integer arrays are passed through unchecked)
    eps, tol:     finite-difference step and the largest relative error rel_i allowed
    mode:         "full" (element by element) or "random" (random directional derivatives)
    max_elements: in full mode, at most this many randomly chosen elements per tensor
                  (None = all of them)
    seed:         seeds G and the sampling (SeedSequence(seed) children 0 and 1), not your x
    raise_on_fail: raise GradcheckError on failure; else return the report with `.ok == False`
    check_float32: also run one float32 forward and backward and check they keep float32
    """
    if mode not in ("full", "random"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'random', got {mode!r}")
    if not eps > 0 or not tol > 0:
        raise ValueError(f"gradcheck: eps and tol must be positive, got {eps} and {tol}")
    check_module(module)
    upstream_rng, sampling_rng, _ = random_streams(seed)
    model = copy.deepcopy(module).astype(np.float64)
    args = [np.array(x, dtype=np.float64) if _is_float(x) else x for x in inputs]
    report = GradcheckReport(type(module).__name__, tol, mode, eps)

    # Can finite differences say anything at all? (deterministic forward, inputs left alone,
    # parameters declared in __init__); if not, say why and stop.
    first = _check_forward(model, args, report)
    if report.problems:
        return _finish(report, raise_on_fail)
    # G, and the outputs of forward(inputs) as a function of the current inputs and parameters
    upstream = tuple(_random_like(o, upstream_rng) for o in first)

    def outputs() -> tuple[np.ndarray, ...]:
        return _outputs(model, args)

    # Analytic gradients: one forward, one backward from zeroed gradients, on a copy of G.
    model.zero_grad()
    model.forward(*args)
    dout = tuple(np.copy(g) for g in upstream)
    returned = model.backward(_unpack(dout))
    if returned is None and any(_is_float(x) for x in args):
        report.problems.append(
            "backward returned None: it must return the gradient of its input, a new array "
            "of the input's shape (a `return dx` missing at its end?); the input was not "
            "checked")
    grads_in = _as_tuple(returned)
    if any(not np.array_equal(d, g) for d, g in zip(dout, upstream, strict=True)):
        report.problems.append("backward wrote into its dout (it must compute a new array: "
                               "dx = dout * ..., not dout *= ...)")
    grads_param = {name: p.grad.copy() for name, p in model.named_parameters()}
    _check_accumulation(model, args, upstream, grads_param, sampling_rng, report)

    targets: list[tuple[str, np.ndarray, np.ndarray]] = []
    float_positions = [i for i, x in enumerate(args) if _is_float(x)]
    for k, i in enumerate(float_positions[: len(grads_in)]):
        if grads_in[k] is None:
            continue
        grad = np.asarray(grads_in[k])
        if grad.shape != args[i].shape:
            report.problems.append(f"the gradient for input {i} has shape {grad.shape}, "
                                   f"the input has {args[i].shape}")
            continue
        targets.append((f"input {i}", args[i], grad))
    params = dict(model.named_parameters())
    targets += [(name, params[name].data, grads_param[name]) for name in params]

    for name, tensor, analytic in targets:
        if mode == "full":
            a, n, where = _numeric_elements(tensor, analytic, outputs, upstream, eps,
                                            max_elements, sampling_rng)
        else:
            a, n, where = _numeric_directions(tensor, analytic, outputs, upstream, eps,
                                              n_directions, sampling_rng)
        report.tensors.append(_compare(name, tensor.shape, a, n, where, tol))

    if check_float32:
        _check_float32(module, inputs, report)
    return _finish(report, raise_on_fail)


def _finish(report: GradcheckReport, raise_on_fail: bool) -> GradcheckReport:
    if raise_on_fail and not report.ok:
        raise GradcheckError(str(report), report)
    return report


# ------------------------------------------------------------------ the steps
def check_module(module: Module) -> None:
    """Every module below `module` ran Module.__init__ (else: a clear error, not an
    AttributeError from deep inside)."""
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: expected a minunet Module, got {type(module).__name__}")
    for name, m in module.named_modules():
        if "_buffer_names" not in vars(m):
            where = f" (at '{name}')" if name else ""
            raise TypeError(
                f"gradcheck: {type(m).__name__}{where} never ran Module.__init__: add "
                f"`super().__init__()` as the first line of {type(m).__name__}.__init__")


def _check_forward(model: Module, args: list[Any], report: GradcheckReport,
                   ) -> tuple[np.ndarray, ...]:
    """Run forward twice on the same inputs; note in `report` what would make finite
    differences meaningless. Returns the first forward's outputs."""
    name = type(model).__name__
    declared = {n: id(p) for n, p in model.named_parameters()}
    before = [np.copy(x) if isinstance(x, np.ndarray) else x for x in args]
    first = _outputs(model, args)
    created = {n: id(p) for n, p in model.named_parameters()}
    for i, (x, kept) in enumerate(zip(args, before, strict=True)):
        if isinstance(x, np.ndarray) and not np.array_equal(x, kept, equal_nan=True):
            report.problems.append(
                f"forward wrote into its input {i} (x *= ..., x[...] = ...): compute a new "
                f"array instead (y = x * ...); the caller's x must stay as it was")
            args[i][...] = kept
    new = sorted(n for n in created if n not in declared)
    remade = sorted(n for n in declared if n in created and created[n] != declared[n])
    if new or remade:
        report.problems.append(
            f"forward created the parameter(s) {', '.join(new + remade)}: declare every "
            f"Parameter in {name}.__init__ (pass the sizes it needs, e.g. the number of "
            f"channels, as constructor arguments), so that the optimizer, state_dict() and "
            f"this checker see it before any data arrives")
    if report.problems:
        return first
    second = _outputs(model, args)
    differences = [float(np.max(np.abs(a - b), initial=0.0))
                   for a, b in zip(first, second, strict=True)
                   if a.shape == b.shape and not np.array_equal(a, b, equal_nan=True)]
    if differences or [a.shape for a in first] != [b.shape for b in second]:
        size = f" (they differ by up to {max(differences):.2e})" if differences else ""
        report.problems.append(
            f"forward is not deterministic: two calls on the same input gave different "
            f"outputs{size}. Finite differences would compare two different functions, so "
            f"every gradient would look wrong; nothing was compared. A random layer (dropout, "
            f"noise) is checked with its randomness fixed: draw the mask from a generator "
            f"that forward re-seeds the same way each call (e.g. a `seed` attribute and "
            f"`rng = np.random.default_rng(self.seed)` in forward), or keep one mask while "
            f"checking; and check it in eval mode too (mu.gradcheck(layer.eval(), x)), where "
            f"it must be deterministic. A layer whose state changes at each call (a counter, "
            f"a running value used in the output) fails the same way")
    return first


def _check_float32(module: Module, inputs: tuple, report: GradcheckReport) -> None:
    """One forward and backward of a float32 copy: outputs and gradients must stay float32."""
    model = copy.deepcopy(module).astype(np.float32)
    args = [np.asarray(x, dtype=np.float32) if _is_float(x) else x for x in inputs]
    name = type(module).__name__
    try:
        outs = _as_tuple(model.forward(*args))
        upstream = tuple(np.ones(np.shape(o), np.float32) * np.float32(0.5)
                         if isinstance(o, np.ndarray) and o.ndim else 1.0 for o in outs)
        grads = _as_tuple(model.backward(_unpack(upstream)))
    except Exception as err:  # reported as a problem, with the exception named
        report.problems.append(
            f"in float32 (how training runs), {name} raised {type(err).__name__}: {err}")
        return
    fix = ("training runs in float32, so the next layer would get float64 (twice the "
           "memory, slower, or a dtype error). A NumPy float64 scalar or array promotes "
           "float32 under NumPy 2's rules (np.sqrt(2 / np.pi), np.float64(...), "
           "np.array([...]), rng.random(shape)): make constants plain Python floats or cast them, "
           "c = x.dtype.type(...), or end with .astype(x.dtype, copy=False)")
    wrong = [f"output {k} is {o.dtype}" for k, o in enumerate(outs)
             if isinstance(o, np.ndarray) and o.dtype != np.float32]
    float_positions = [i for i, x in enumerate(args) if _is_float(x)]
    wrong += [f"the gradient of input {i} is {g.dtype}"
              for i, g in zip(float_positions, grads, strict=False)
              if isinstance(g, np.ndarray) and g.dtype != np.float32]
    wrong += [f"{n}.grad is {p.grad.dtype}" for n, p in model.named_parameters()
              if p.grad.dtype != np.float32]
    wrong += [f"{n}.data is {p.data.dtype}" for n, p in model.named_parameters()
              if p.data.dtype != np.float32]
    if wrong:
        report.problems.append(f"float32 in, but {', '.join(wrong)}: {fix}")


def _outputs(model: Module, args: list[Any]) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(o, dtype=np.float64) for o in _as_tuple(model.forward(*args)))


def _check_accumulation(model: Module, args: list[Any], upstream: tuple,
                        grads_param: dict[str, np.ndarray], rng: np.random.Generator,
                        report: GradcheckReport) -> None:
    """With p.grad pre-filled with random values R, a backward must leave R + its gradient."""
    params = dict(model.named_parameters())
    if not params:
        return
    prefill = {name: rng.standard_normal(p.shape) for name, p in params.items()}
    for name, p in params.items():
        p.grad[...] = prefill[name]
    model.forward(*args)
    model.backward(_unpack(tuple(np.copy(g) for g in upstream)))
    for name, p in params.items():
        expected = prefill[name] + grads_param[name]
        if not np.allclose(p.grad, expected, rtol=1e-9, atol=1e-12):
            report.problems.append(
                f"{name}.grad is overwritten, not accumulated: backward must ADD into it "
                f"(p.grad += ...); zeroing is the optimizer's zero_grad()")
    model.zero_grad()


def _numeric_elements(tensor: np.ndarray, analytic: np.ndarray,
                      outputs: Callable[[], tuple[np.ndarray, ...]], upstream: tuple,
                      eps: float, max_elements: int | None, rng: np.random.Generator,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(analytic, numeric) at the checked elements, and their flat indices."""
    flat = tensor.reshape(-1)  # a view: perturbing flat perturbs the tensor the module reads
    if max_elements is None or flat.size <= max_elements:
        picked = np.arange(flat.size)
    else:
        picked = np.sort(rng.choice(flat.size, size=max_elements, replace=False))
    numeric = np.empty(picked.size)
    for j, idx in enumerate(picked):
        original = flat[idx]
        flat[idx] = original + eps
        plus = outputs()
        flat[idx] = original - eps
        minus = outputs()
        flat[idx] = original
        numeric[j] = _directional(upstream, plus, minus, eps)
    return analytic.reshape(-1)[picked], numeric, picked


def _numeric_directions(tensor: np.ndarray, analytic: np.ndarray,
                        outputs: Callable[[], tuple[np.ndarray, ...]], upstream: tuple,
                        eps: float, n_directions: int, rng: np.random.Generator,
                        ) -> tuple[np.ndarray, np.ndarray, None]:
    original = tensor.copy()
    a_vals, n_vals = np.empty(n_directions), np.empty(n_directions)
    for j in range(n_directions):
        direction = rng.standard_normal(tensor.shape)
        direction /= np.linalg.norm(direction)
        tensor[...] = original + eps * direction
        plus = outputs()
        tensor[...] = original - eps * direction
        minus = outputs()
        tensor[...] = original
        n_vals[j] = _directional(upstream, plus, minus, eps)
        a_vals[j] = float(np.sum(analytic * direction))
    return a_vals, n_vals, None


def _directional(upstream: tuple, plus: tuple, minus: tuple, eps: float) -> float:
    """sum(G * (out_plus - out_minus)) / (2 eps): the outputs are differenced first."""
    return float(sum(np.sum(g * (p - m)) for g, p, m in zip(upstream, plus, minus, strict=True))
                 / (2 * eps))


def _compare(name: str, shape: tuple[int, ...], a: np.ndarray, n: np.ndarray,
             where: np.ndarray | None, tol: float) -> TensorCheck:
    """rel_i = |a_i - n_i| / max(|a_i|, |n_i|, scale), scale = max(rms(a), rms(n))."""
    if a.size == 0:
        return TensorCheck(name, shape, 0, 0, 0.0, None, 0.0, 0.0, "", True, a, n, where,
                           np.zeros(0))
    scale = max(np.sqrt(np.mean(a**2)), np.sqrt(np.mean(n**2)))
    denominator = np.maximum(np.maximum(np.abs(a), np.abs(n)), scale)
    with np.errstate(invalid="ignore"):
        rel = np.where(denominator > 0, np.abs(a - n) / np.where(denominator > 0, denominator, 1),
                       0.0)
    wrong = rel > tol
    worst = int(np.argmax(rel))
    index = None if where is None else tuple(int(i) for i in np.unravel_index(where[worst], shape))
    ok = not wrong.any()
    return TensorCheck(name, shape, int(a.size), int(wrong.sum()), float(rel[worst]), index,
                       float(a[worst]), float(n[worst]), "" if ok else _hint(a, n, wrong, tol),
                       ok, a, n, where, rel)


def _hint(a: np.ndarray, n: np.ndarray, wrong: np.ndarray, tol: float) -> str:
    """A guess at the kind of bug, from the pattern of the disagreement; "" when the evidence
    is too thin (a factor or a sign needs MIN_ELEMENTS_FOR_HINT compared values)."""
    scale = max(np.sqrt(np.mean(n**2)), 1e-300)
    zeros = wrong & (a == 0) & (np.abs(n) > tol * scale)
    if zeros.sum() == wrong.sum():
        if zeros.sum() == a.size and a.size < MIN_ELEMENTS_FOR_HINT:
            return "analytic is exactly 0 at every checked value, numeric is not"
        return (f"analytic is exactly 0 at all {int(zeros.sum())} wrong elements, numeric is "
                f"not: a gradient path is missing (a term left out, or a branch that returns 0)")
    if np.count_nonzero(n) >= MIN_ELEMENTS_FOR_HINT:
        c = float(np.dot(a, n) / np.dot(n, n))  # least-squares fit a ~= c * n
        residual = np.linalg.norm(a - c * n) / max(np.linalg.norm(a), 1e-300)
        if residual < 1e-3 and abs(c + 1) < 1e-3:
            return "analytic = -numeric: the sign is flipped"
        if residual < 1e-3:
            return (f"analytic ~= {c:.4g} x numeric on every checked element: a constant factor "
                    f"is missing or extra (a 2 from a square, a 1/M from a mean, ...)")
    if zeros.any():
        return (f"analytic is exactly 0 at {int(zeros.sum())} of the {int(wrong.sum())} wrong "
                f"elements where numeric is not")
    return ""


# ------------------------------------------------------------------ small helpers
def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _is_float(x: Any) -> bool:
    return isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating)


def _random_like(o: np.ndarray, rng: np.random.Generator) -> Any:
    return rng.standard_normal(o.shape) if o.ndim else float(rng.standard_normal())


def _unpack(upstream: tuple) -> Any:
    return upstream[0] if len(upstream) == 1 else upstream
