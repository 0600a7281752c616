"""Check a student's layer against finite differences AND against minunet's own layer.

    python -m exercises.check exercises/relu.py                 # every layer class in the file
    python -m exercises.check exercises/conv2d.py:Conv2d --show 3
    python -m exercises.check minunet.layers:Conv2d             # the solution passes

The class is matched to its reference by name (ReLU, MaxPool2d, Conv2d, BatchNorm2d,
ConvTranspose2d, CrossEntropyLoss, UNet: the solutions are minunet/layers/, minunet/losses.py
and minunet/unet.py). For each of a few cases (strides, paddings, train and eval mode...):

1. forward, with the reference's weights copied in: same shape, same values?
2. backward, from the same random upstream gradient G: the same input gradient(s) and the
   same parameter gradients as the reference?
3. mu.gradcheck: does backward agree with finite differences of YOUR forward?

Then it says what is wrong and where to look: a TODO not written yet, which tensor differs,
and, when some cases pass and others fail, what the failing ones have in common (a stride,
train mode, ...). Exit 0 when every case passes, 1 when one fails, 2 for a file that cannot be
read. In float64 throughout (as any gradient check).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import minunet as mu
from minunet import layers
from minunet.unet import UNet

RTOL, ATOL = 1e-9, 1e-12  # float64: the same math in another order agrees to ~1e-14


@dataclass
class Case:
    name: str                       # what is special about it, shown in the verdict
    args: tuple = ()                # constructor arguments
    kwargs: dict = field(default_factory=dict)
    shape: tuple = (2, 3, 6, 5)     # of the random input(s)
    inputs: int = 1                 # how many array inputs forward takes
    mode: str = "train"             # "train" or "eval"
    lesson: str = ""                # where to look when this case fails and others pass


CASES: dict[str, list[Case]] = {
    "ReLU": [Case("any values", shape=(2, 3, 5, 4))],
    "MaxPool2d": [
        Case("2x2, stride 2 (the U-Net's)", (2,), shape=(2, 3, 6, 4)),
        Case("3x3, stride 2: windows overlap", (3, 2), shape=(2, 2, 7, 5),
             lesson="overlapping windows: one pixel can win two windows, so its gradient must "
                    "ADD both (dx[...] += ...), not keep the last"),
        Case("3x3, stride 3, a size that leaves a remainder", (3,), shape=(1, 2, 7, 8),
             lesson="rows and columns that fit no window get gradient 0; Ho = (H - K) // S + 1"),
    ],
    "Conv2d": [
        Case("3x3, padding 1 (the U-Net's)", (3, 4, 3), {"padding": 1}),
        Case("1x1", (3, 2, 1)),
        Case("3x3, stride 2", (3, 4, 3), {"stride": 2}, shape=(2, 3, 7, 6),
             lesson="the stride: forward reads x_pad[i*S + kh, j*S + kw]; backward must scatter "
                    "into exactly those pixels (slices with step S)"),
        Case("3x3, stride 2, padding 1, H != W", (3, 2, 3), {"stride": 2, "padding": 1},
             shape=(1, 3, 8, 5),
             lesson="stride with padding: dx is dx_pad without its P border rows and columns"),
    ],
    "BatchNorm2d": [
        Case("eval mode (running statistics)", (3,), mode="eval",
             lesson="eval mode: mu and var are constants, dx = istd * gamma * dy"),
        Case("train mode (batch statistics)", (3,),
             lesson="train mode: every x moves the mean and the variance: dx has three terms "
                    "(direct, through mu, through var); docs/learn/batchnorm.md"),
        Case("train mode, 1 channel, 2 images", (1,), shape=(2, 1, 3, 4)),
    ],
    "ConvTranspose2d": [
        Case("2x2, stride 2 (the U-Net's up-step)", (3, 2, 2, 2)),
        Case("3x3, stride 2, padding 1: stamps overlap", (3, 2, 3, 2), {"padding": 1},
             shape=(2, 3, 4, 5),
             lesson="overlapping stamps add up in forward; in backward each input pixel "
                    "collects from every output pixel its stamp touched, and the padding "
                    "crops the output (pad dy back before slicing)"),
        Case("3x3, stride 1", (2, 3, 3, 1), shape=(1, 2, 4, 4)),
    ],
    "CrossEntropyLoss": [
        Case("no weight map", shape=(2, 3, 4, 5)),
        Case("a weight map", shape=(2, 3, 4, 5), kwargs={"weighted": True},
             lesson="with a weight map the mean is sum(w * l) / sum(w): dlogits = w * (p - "
                    "onehot) / sum(w)"),
    ],
    "UNet": [
        Case("depth 2, base 2 channels", (1, 3), {"depth": 2, "base_channels": 2},
             shape=(2, 1, 8, 8)),
    ],
}
REFERENCES: dict[str, Callable[..., mu.Module]] = {
    "ReLU": layers.ReLU, "MaxPool2d": layers.MaxPool2d, "Conv2d": layers.Conv2d,
    "BatchNorm2d": layers.BatchNorm2d, "ConvTranspose2d": layers.ConvTranspose2d,
    "CrossEntropyLoss": mu.CrossEntropyLoss, "UNet": UNet,
}


class ConstructorMismatch(TypeError):
    """The student's class cannot stand in for the reference (arguments, parameter names)."""


@dataclass
class Verdict:
    case: Case
    problems: list[str]
    report: mu.GradcheckReport | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------ one case
def check_case(cls: type, ref_name: str, case: Case, seed: int = 0) -> Verdict:
    """Run one case of `cls` against the reference and finite differences."""
    rng = np.random.default_rng(seed)
    try:
        ref, student = _build(cls, ref_name, case)
    except NotImplementedError as err:
        return Verdict(case, [f"TODO: {err or 'not written yet'}"])
    except ConstructorMismatch as err:
        return Verdict(case, [str(err)])
    inputs = _inputs(ref_name, case, rng)
    problems: list[str] = []
    try:
        y = student.forward(*inputs)
    except NotImplementedError as err:
        return Verdict(case, [f"TODO: forward is not written yet ({err or 'NotImplementedError'})"])
    y_ref = ref.forward(*inputs)
    if not _same(y, y_ref, "forward", problems, ref_name):
        pass  # the comparison said what is wrong; backward is still worth a look
    g = rng.standard_normal(np.shape(y_ref)) if np.ndim(y_ref) else 1.0
    try:
        dx = student.backward(np.copy(g) if np.ndim(g) else g)
    except NotImplementedError as err:
        return Verdict(case, [*problems, f"TODO: backward is not written yet "
                                         f"({err or 'NotImplementedError'})"])
    dx_ref = ref.backward(np.copy(g) if np.ndim(g) else g)
    dxs, dxs_ref = _as_tuple(dx), _as_tuple(dx_ref)
    if len(dxs) != len(dxs_ref):
        problems.append(f"backward returns {len(dxs)} array(s), expected {len(dxs_ref)}")
    for k, (a, b) in enumerate(zip(dxs, dxs_ref, strict=False)):
        who = "the input gradient" if len(dxs_ref) == 1 else f"the gradient of input {k}"
        _same(a, b, who, problems, ref_name)
    ref_params = dict(ref.named_parameters())
    for name, p in student.named_parameters():
        if name in ref_params:
            _same(p.grad, ref_params[name].grad, f"{name}.grad", problems, ref_name)
    if ref_name == "UNet":
        problems = _by_part(problems)
    report = mu.gradcheck(student, *inputs, raise_on_fail=False, max_elements=60,
                          mode="random" if ref_name == "UNet" else "full")
    if not report.ok:  # the failing rows only (the passing ones say nothing new)
        rows = [line for line in str(report).splitlines()[1:] if not line.startswith("  ok")]
        problems.append("finite differences of your forward disagree with your backward:\n"
                        + "\n".join("    " + line for line in rows))
    return Verdict(case, problems, report)


def _build(cls: type, ref_name: str, case: Case) -> tuple[mu.Module, mu.Module]:
    """The reference and the student's layer, with the reference's weights in both."""
    kwargs = {k: v for k, v in case.kwargs.items() if k != "weighted"}
    takes_rng = "rng" in inspect.signature(REFERENCES[ref_name]).parameters
    extra = {"rng": np.random.default_rng(1)} if takes_rng else {}
    if ref_name == "UNet":
        extra["readable"] = True
    ref = REFERENCES[ref_name](*case.args, **kwargs, **extra)
    try:
        student = cls(*case.args, **kwargs, **extra)
    except TypeError as err:
        signature = inspect.signature(REFERENCES[ref_name])
        raise ConstructorMismatch(f"{cls.__name__}{inspect.signature(cls)} cannot be built "
                                  f"like minunet's {ref_name}{signature} ({err}): take the "
                                  f"same arguments") from None
    names, ref_names = ({n for n, _ in m.named_parameters()} for m in (student, ref))
    if names != ref_names:
        raise ConstructorMismatch(f"{cls.__name__} has the parameters {sorted(names)}, "
                                  f"minunet's {ref_name} {sorted(ref_names)}: declare the same "
                                  f"ones in __init__ (same names and shapes), so that the "
                                  f"reference's weights can be copied in")
    if case.mode == "eval":  # running statistics away from (0, 1), so that eval is eval
        for _, m in ref.named_modules():
            if hasattr(m, "running_var"):
                m.running_mean[...] = np.linspace(-0.5, 0.5, m.running_mean.size)
                m.running_var[...] = np.linspace(0.5, 2.0, m.running_var.size)
        ref.eval()
        student.eval()
    student.load_state_dict(ref.state_dict(), strict=False)
    return ref.astype(np.float64), student.astype(np.float64)


def _inputs(ref_name: str, case: Case, rng: np.random.Generator) -> list[Any]:
    xs: list[Any] = [rng.standard_normal(case.shape) for _ in range(case.inputs)]
    if ref_name == "CrossEntropyLoss":
        N, Kc, H, W = case.shape
        xs.append(rng.integers(0, Kc, (N, H, W)))
        if case.kwargs.get("weighted"):
            xs.append(rng.uniform(0.5, 3.0, (N, H, W)))
    return xs


def _same(a: Any, b: Any, what: str, problems: list[str], ref_name: str) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        problems.append(f"{what} has shape {a.shape}, minunet's {ref_name} gives {b.shape}")
        return False
    if np.allclose(a, b, rtol=RTOL, atol=ATOL):
        return True
    diff = np.abs(a - b)
    where = np.unravel_index(int(np.argmax(diff)), a.shape) if a.ndim else ()
    wrong = int(np.sum(~np.isclose(a, b, rtol=RTOL, atol=ATOL)))
    problems.append(f"{what} differs from minunet's {ref_name} at {wrong} of {a.size} values; "
                    f"worst at {tuple(int(i) for i in where)}: yours {a[where]:+.6e}, "
                    f"reference {b[where]:+.6e}"
                    + ("; yours is exactly 0 there" if a[where] == 0 else ""))
    return False


BACKWARD_ORDER = ("head", "up", "upconv", "bottom", "down", "input")  # UNet.backward's order


def _by_part(problems: list[str]) -> list[str]:
    """A U-Net's differing gradients, summed up by part in the order backward visits them."""
    wrong = {p.split(" ")[0].removesuffix(".grad") for p in problems if ".grad " in p}
    if any("input gradient" in p for p in problems):
        wrong.add("input")
    if not wrong:
        return problems
    others = [p for p in problems if ".grad " not in p and "input gradient" not in p]
    def visit_order(part: str) -> tuple[int, int]:  # decoder top-down, encoder bottom-up
        kind, _, level = part.partition(".")
        level_number = int(level) if level.isdigit() else 0
        return BACKWARD_ORDER.index(kind), -level_number if kind == "down" else level_number

    parts = sorted({".".join(w.split(".")[:2]) if w.split(".")[0] != "bottom" else "bottom"
                    for w in wrong}, key=visit_order)
    right = [n for n in BACKWARD_ORDER if not any(w.split(".")[0] == n for w in wrong)]
    return [
        *others,
        f"gradients differ from the reference in: {', '.join(parts)}; right in: "
        f"{', '.join(right) or 'nothing'}. Backward visits head, up.*, upconv.*, bottom, then "
        f"pool.* and down.* (deepest first): the first wrong part on that path is "
        f"{parts[0]}; look at what backward does to d just before {parts[0]}.backward"]


def _as_tuple(x: Any) -> tuple:
    return x if isinstance(x, tuple) else (x,)


# ------------------------------------------------------------------ a whole class
def check_class(cls: type, ref_name: str | None = None, show: int = 0,
                out: Callable[[str], None] = print) -> bool:
    """Every case of `cls`; prints the verdicts and a conclusion. True when all pass."""
    ref_name = ref_name or _reference_name(cls)
    out(f"checking {cls.__name__} against minunet's {ref_name} and finite differences")
    verdicts = [check_case(cls, ref_name, case) for case in CASES[ref_name]]
    for v in verdicts:
        out(f"  {'ok  ' if v.ok else 'FAIL'} {v.case.name}")
        for p in v.problems:
            out(f"       {p}")
        if show and v.report is not None and v.report.tensors:
            out("\n".join("       " + line for line in v.report.show(show).splitlines()))
    passed = [v for v in verdicts if v.ok]
    failed = [v for v in verdicts if not v.ok]
    if not failed:
        out(f"{cls.__name__}: all {len(verdicts)} cases pass")
        return True
    if any(p.startswith("TODO") for v in failed for p in v.problems):
        out(f"{cls.__name__}: not finished: write the TODOs, then run this again")
    elif passed:
        out(f"{cls.__name__}: right in {', '.join(v.case.name for v in passed)}; wrong in "
            f"{', '.join(v.case.name for v in failed)}. What the failing cases have and the "
            f"others do not is where to look:")
        for v in failed:
            if v.case.lesson:
                out(f"  - {v.case.lesson}")
    elif len(verdicts) == 1:
        out(f"{cls.__name__}: wrong (above: what differs and where)")
    else:
        out(f"{cls.__name__}: wrong in every case; compare with the formulas in "
            f"docs/learn/ (or the solution, minunet/layers/)")
    return False


def _reference_name(cls: type) -> str:
    for klass in cls.__mro__:
        if klass.__name__ in REFERENCES:
            return klass.__name__
    raise LookupError(f"{cls.__name__}: no reference of that name; name the class one of "
                      f"{', '.join(REFERENCES)}")


def load_classes(target: str) -> list[type]:
    """FILE.py or FILE.py:CLASS -> the layer classes defined in that file."""
    path_text, sep, class_name = target.rpartition(":")
    if sep and not path_text.endswith(".py"):  # an importable module: minunet.layers:Conv2d
        cls = getattr(importlib.import_module(path_text), class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, mu.Module)):
            raise LookupError(f"{target}: {path_text} has no layer class {class_name}")
        return [cls]
    if not sep:
        path_text, class_name = target, ""
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"no file {path}")
    spec = importlib.util.spec_from_file_location(f"student_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    found = [obj for name, obj in vars(module).items()
             if isinstance(obj, type) and issubclass(obj, mu.Module)
             and obj.__module__ == module.__name__ and (not class_name or name == class_name)]
    if not found:
        raise LookupError(f"{target}: no layer class {class_name or ''} defined in this file")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m exercises.check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="FILE.py (every layer class in it) or FILE.py:CLASS")
    parser.add_argument("--show", type=int, default=0, metavar="N",
                        help="also print the N worst analytic/numeric pairs of each tensor")
    args = parser.parse_args(argv)
    try:
        classes = load_classes(args.target)
    except (FileNotFoundError, LookupError) as err:
        print(f"exercises.check: {err}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"exercises.check: {args.target} cannot be imported (the error above)",
              file=sys.stderr)
        return 2
    ok = True
    for cls in classes:
        try:
            ok = check_class(cls, show=args.show) and ok
        except LookupError as err:
            print(f"exercises.check: {err}", file=sys.stderr)
            return 2
        except Exception:
            traceback.print_exc()
            print(f"exercises.check: {cls.__name__} raised the exception above (in its own "
                  f"code)", file=sys.stderr)
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
