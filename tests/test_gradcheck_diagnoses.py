"""The checker diagnoses the bugs students make, each on a student-style layer: a random
forward, a float32 layer that returns float64, a missing super().__init__(), parameters made in
forward, a forward writing into its input; hints only where the evidence holds; the compared
numbers kept in the report (`--show N` in the command); clear command errors."""

import numpy as np
import pytest

import minunet as mu
from minunet.cli import main

X = np.random.default_rng(0).standard_normal((2, 3, 5, 4))


# ------------------------------------------------------------------ student layers
class Dropout(mu.Module):
    """A correct inverted dropout: a new mask at every forward (train mode)."""

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        self.p, self.seed = p, seed
        self.rng = np.random.default_rng(1)

    def forward(self, x):
        if not self.training:
            self.save_for_backward(None)
            return x * 1.0
        rng = self.rng if self.seed is None else np.random.default_rng(self.seed)
        mask = ((rng.random(x.shape) >= self.p) / (1 - self.p)).astype(x.dtype)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, dout):
        (mask,) = self.take_saved()
        return dout * 1.0 if mask is None else dout * mask


class GELU(mu.Module):
    """tanh GELU. With `promote`, the constant is a NumPy float64 scalar: under NumPy 2 it
    turns float32 inputs into float64 (the float64 check cannot see it)."""

    def __init__(self, promote: bool = False) -> None:
        super().__init__()
        self.c = np.sqrt(2 / np.pi) if promote else float(np.sqrt(2 / np.pi))

    def forward(self, x):
        u = self.c * (x + 0.044715 * x**3)
        t = np.tanh(u)
        self.save_for_backward(x, t)
        return 0.5 * x * (1 + t)

    def backward(self, dout):
        x, t = self.take_saved()
        du = self.c * (1 + 3 * 0.044715 * x**2)
        return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t**2) * du)


class NoSuper(mu.Module):
    def __init__(self, channels: int = 3) -> None:  # forgot super().__init__()
        self.weight = mu.Parameter(np.ones(channels, np.float32))

    def forward(self, x):
        self.save_for_backward(x)
        return self.weight.data[:, None, None] * x

    def backward(self, dout):
        (x,) = self.take_saved()
        self.weight.grad += (dout * x).sum(axis=(0, 2, 3))
        return self.weight.data[:, None, None] * dout


class LazyScale(mu.Module):
    """Creates its weight on the first forward, when it first sees the channels."""

    def forward(self, x):
        if not hasattr(self, "weight"):
            self.weight = mu.Parameter(np.ones(x.shape[1], x.dtype))
        self.save_for_backward(x)
        return self.weight.data[:, None, None] * x

    def backward(self, dout):
        (x,) = self.take_saved()
        self.weight.grad += (dout * x).sum(axis=(0, 2, 3))
        return self.weight.data[:, None, None] * dout


class ReluInPlace(mu.Module):
    def forward(self, x):
        self.save_for_backward(x > 0)
        x[x < 0] = 0  # writes into the caller's x
        return x

    def backward(self, dout):
        (on,) = self.take_saved()
        return dout * on


class SmallBias(mu.Module):
    """y = x + b[c] with a 3-element bias whose gradient is off by a factor."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.bias = mu.Parameter(np.zeros(3, np.float32))
        self.factor = factor

    def forward(self, x):
        self.save_for_backward()
        return x + self.bias.data[:, None, None]

    def backward(self, dout):
        self.take_saved()
        self.bias.grad += self.factor * dout.sum(axis=(0, 2, 3))
        return dout.copy()


# ------------------------------------------------------------------ random forward
def test_a_random_layer_is_named_non_deterministic_not_wrong():
    report = mu.gradcheck(Dropout(), X, raise_on_fail=False)
    assert not report.ok
    text = str(report)
    assert "not deterministic" in text and "eval mode" in text and "seed" in text
    assert "overwritten" not in text and "gradient path is missing" not in text
    assert report.tensors == []  # nothing compared: the numbers would mean nothing


def test_the_random_layer_passes_with_a_fixed_mask_and_in_eval_mode():
    assert mu.gradcheck(Dropout(seed=3), X).ok
    assert mu.gradcheck(Dropout().eval(), X).ok


# ------------------------------------------------------------------ float32 round trip
def test_a_float64_constant_promoting_float32_is_caught():
    assert mu.gradcheck(GELU(), X).ok
    report = mu.gradcheck(GELU(promote=True), X, raise_on_fail=False)
    assert all(t.ok for t in report.tensors)  # the float64 values are right
    assert not report.ok
    text = str(report)
    assert "float32 in, but output 0 is float64" in text
    assert "the gradient of input 0 is float64" in text and "x.dtype" in text


def test_a_parameter_gradient_turned_float64_is_caught():
    class Widening(SmallBias):
        def backward(self, dout):
            self.take_saved()
            self.bias.grad = self.bias.grad + dout.sum(axis=(0, 2, 3), dtype=np.float64)
            return dout.copy()

    text = str(mu.gradcheck(Widening(), X, raise_on_fail=False))
    assert "bias.grad is float64" in text


def test_the_float32_check_can_be_turned_off():
    assert mu.gradcheck(GELU(promote=True), X, check_float32=False).ok


# ------------------------------------------------------------------ module contract
def test_missing_super_init_is_a_clear_error():
    with pytest.raises(TypeError, match=r"super\(\).__init__\(\)"):
        mu.gradcheck(NoSuper(), X)
    layer = NoSuper()
    with pytest.raises(AttributeError, match=r"NoSuper.__init__ must call `super\(\).__init__"):
        layer(X)  # __call__ reads grad_enabled
    with pytest.raises(AttributeError, match="no attribute 'colour'"):
        layer.colour  # other missing names stay plain AttributeErrors  # noqa: B018


def test_missing_super_init_in_a_child_is_named_with_its_place():
    seq = mu.Sequential(mu.ReLU(), NoSuper())
    with pytest.raises(TypeError, match=r"NoSuper \(at 'layers.1'\)"):
        mu.gradcheck(seq, X)


def test_parameters_created_in_forward_are_named():
    report = mu.gradcheck(LazyScale(), X, raise_on_fail=False)
    assert not report.ok and report.tensors == []
    assert "forward created the parameter(s) weight" in str(report)
    assert "LazyScale.__init__" in str(report)


def test_forward_writing_into_its_input_is_named():
    x = X.copy()
    report = mu.gradcheck(ReluInPlace(), x, raise_on_fail=False)
    assert "forward wrote into its input 0" in str(report)
    assert np.array_equal(x, X)  # the caller's array is untouched (the checker copies)


def test_a_backward_returning_nothing_is_named():
    class Forgot(mu.Module):
        def forward(self, x):
            self.save_for_backward(x)
            return np.maximum(x, 0)

        def backward(self, dout):
            (x,) = self.take_saved()
            dx = dout * (x > 0)  # noqa: F841 - computed, never returned

    report = mu.gradcheck(Forgot(), X, raise_on_fail=False)
    assert not report.ok and "backward returned None" in str(report)


# ------------------------------------------------------------------ hints need evidence
def test_no_factor_hint_on_a_three_element_tensor():
    report = mu.gradcheck(SmallBias(factor=8.933), X, raise_on_fail=False)
    (bias,) = [t for t in report.tensors if t.name == "bias"]
    assert not bias.ok and bias.checked == 3
    assert bias.hint == "" and "constant factor" not in str(report)


def test_no_factor_hint_from_three_random_directions():
    from test_unet import ForgetsTheSkip

    model = ForgetsTheSkip(1, 3, depth=2, base_channels=2, rng=0, readable=True)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    report = mu.gradcheck(model, x, mode="random", raise_on_fail=False)
    assert not report.ok
    assert "constant factor" not in str(report) and "sign is flipped" not in str(report)


def test_the_factor_hint_stays_where_the_evidence_is():
    big = mu.gradcheck(SmallBias(factor=2.0), X, raise_on_fail=False)
    assert "constant factor" not in str(big)  # 3 elements: still no hint
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4))

    class Doubled(mu.Module):
        def forward(self, x):
            self.save_for_backward()
            return 3 * x

        def backward(self, dout):
            self.take_saved()
            return 6 * dout

    assert "analytic ~= 2 x numeric" in str(mu.gradcheck(Doubled(), x, raise_on_fail=False))


# ------------------------------------------------------------------ the numbers are kept
def test_the_report_keeps_analytic_and_numeric_values():
    report = mu.gradcheck(SmallBias(factor=2.0), X, raise_on_fail=False)
    bias = report.tensors[1]
    assert bias.analytic.shape == bias.numeric.shape == (3,)
    assert np.allclose(bias.analytic, 2 * bias.numeric)
    assert list(bias.indices) == [0, 1, 2]
    shown = report.show(2)
    assert "bias (3,): the 2 worst of 3 compared elements" in shown
    assert "analytic" in shown and "numeric" in shown and " 2 " in shown


# ------------------------------------------------------------------ the command
STUDENT_FILE = '''
import numpy as np
import minunet as mu


class Dropout(mu.Module):
    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng(0)

    def forward(self, x):
        mask = self.rng.random(x.shape) > 0.5
        self.save_for_backward(mask)
        return x * mask

    def backward(self, dout):
        (mask,) = self.take_saved()
        return dout * mask


class NoSuper(mu.Module):
    def __init__(self):
        self.k = 2.0

    def forward(self, x):
        self.save_for_backward(x)
        return self.k * x

    def backward(self, dout):
        self.take_saved()
        return self.k * dout


class Picky(mu.Module):
    def forward(self, x):
        if x.shape[1] != 4:
            raise ValueError("Picky wants 4 channels")
        self.save_for_backward()
        return x.copy()

    def backward(self, dout):
        self.take_saved()
        return dout.copy()
'''


@pytest.fixture
def student_file(tmp_path):
    path = tmp_path / "student.py"
    path.write_text(STUDENT_FILE)
    return path


def test_command_names_a_random_layer(student_file, capsys):
    assert main(["gradcheck", f"{student_file}:Dropout", "--input-shape", "2,3,4,4"]) == 1
    out = capsys.readouterr().out
    assert "not deterministic" in out and "overwritten" not in out


def test_command_names_a_missing_super_init(student_file, capsys):
    assert main(["gradcheck", f"{student_file}:NoSuper", "--input-shape", "2,3,4,4"]) == 1
    err = capsys.readouterr().err
    assert "super().__init__()" in err and "Traceback" not in err


def test_command_show_prints_the_compared_values(capsys):
    assert main(["gradcheck", "minunet:ReLU", "--input-shape", "2,3,4,4", "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "input 0 (2, 3, 4, 4): the 3 worst of 96 compared elements" in out
    assert len([line for line in out.splitlines() if line.startswith("  (")]) == 3


def test_command_blames_a_wrong_input_shape_not_the_layer(capsys):
    argv = ["gradcheck", "minunet:Conv2d", "--input-shape", "2,5,6,6", "--args", "[3, 4, 3]"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--input-shape 2,5,6,6 does not fit Conv2d" in err
    assert "expected 3 input channels, got 5" in err and "Traceback" not in err
    assert "raised the exception above" not in err


def test_command_own_layer_shape_error_points_at_input_shape(student_file, capsys):
    assert main(["gradcheck", f"{student_file}:Picky", "--input-shape", "2,3,4,4"]) == 1
    err = capsys.readouterr().err
    assert "Picky wants 4 channels" in err and "change --input-shape" in err
    assert main(["gradcheck", f"{student_file}:Picky", "--input-shape", "2,4,4,4"]) == 0


@pytest.mark.parametrize("shape", ["100000,100000,100000,100000", "4,64,1024,1024"])
def test_command_out_of_memory_names_its_own_options(capsys, shape):
    assert main(["gradcheck", "minunet:ReLU", "--input-shape", shape]) == 2
    err = capsys.readouterr().err
    assert "smaller --input-shape" in err and "--mode random" in err
    assert "--tile" not in err and "--batch-size" not in err


def test_command_out_of_memory_inside_the_layer_names_its_own_options(tmp_path, capsys):
    path = tmp_path / "hungry.py"
    path.write_text("import minunet as mu\n\nclass Hungry(mu.Module):\n"
                    "    def forward(self, x):\n        raise MemoryError()\n")
    assert main(["gradcheck", f"{path}:Hungry", "--input-shape", "2,3,4,4"]) == 1
    err = capsys.readouterr().err
    assert "smaller --input-shape" in err and "--tile" not in err
