"""The gradient checker: it passes every correct layer (small and large, whatever x the caller
drew), fails the classic wrong backwards with a report that says what is wrong, and the
`minunet gradcheck` command separates the layer's own errors (exit 1) from bad usage (exit 2)."""

import numpy as np
import pytest

import minunet as mu
from minunet import layers as readable_layers
from minunet.cli import main
from minunet.gradcheck import random_input, random_streams
from minunet.kernels import layers as fast_layers

IMPLS = [pytest.param(readable_layers, id="readable"), pytest.param(fast_layers, id="fast")]


class Swish(mu.Module):
    """y = x * sigmoid(x): smooth everywhere, the issue's example of a correct layer."""

    def forward(self, x):
        s = 1 / (1 + np.exp(-x))
        self.save_for_backward(x, s)
        return x * s

    def backward(self, dout):
        x, s = self.take_saved()
        return dout * (s + x * s * (1 - s))


# ------------------------------------------------------------------ correct layers pass
def test_upstream_gradient_is_independent_of_the_callers_seed():
    """x = default_rng(0) and G from the checker's seed 0 must not be the same numbers."""
    x = np.random.default_rng(0).standard_normal(50)
    g = random_streams(0)[0].standard_normal(50)  # child 0: the upstream gradient
    assert abs(np.corrcoef(x, g)[0, 1]) < 0.5
    assert abs(np.corrcoef(x, random_input((50,), 0))[0, 1]) < 0.5
    assert abs(np.corrcoef(g, random_input((50,), 0))[0, 1]) < 0.5


@pytest.mark.parametrize("L", IMPLS)
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 5, 4)])
def test_batchnorm_passes_with_x_from_seed_0(L, shape):
    """The issue's trap: x drawn from default_rng(0), the checker's default seed 0."""
    x = np.random.default_rng(0).standard_normal(shape)
    report = mu.gradcheck(L.BatchNorm2d(shape[1]), x)
    assert report.ok, str(report)
    assert all(t.rel_error < 1e-7 for t in report.tensors)


def every_layer(L, C):
    rng = np.random.default_rng(1)
    return {
        "ReLU": (L.ReLU(), 1),
        "BatchNorm2d train": (L.BatchNorm2d(C), 1),
        "BatchNorm2d eval": (L.BatchNorm2d(C).eval(), 1),
        "Conv2d 3x3": (L.Conv2d(C, 4, 3, padding=1, rng=rng), 1),
        "Conv2d 3x3 stride 2": (L.Conv2d(C, 4, 3, stride=2, rng=rng), 1),
        "ConvTranspose2d 2x2": (L.ConvTranspose2d(C, 4, 2, 2, rng=rng), 1),
        "MaxPool2d": (L.MaxPool2d(2), 1),
        "Concat": (L.Concat(), 2),
    }


@pytest.mark.parametrize("L", IMPLS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 4, 6, 9)])
def test_every_layer_passes_on_small_shapes_whatever_x(L, shape):
    for seed in (0, 1):  # x from the same seed as the checker's, and from another one
        for name, (layer, n_inputs) in every_layer(L, shape[1]).items():
            x = [np.random.default_rng(seed).standard_normal(shape) for _ in range(n_inputs)]
            report = mu.gradcheck(layer, *x, max_elements=None, raise_on_fail=False)
            assert report.ok, f"{name}\n{report}"


def test_large_shapes_pass():
    """8x32x64x64 (1M values; 30 elements sampled per tensor): round-off must not grow with
    the size of the output (it did when the checker subtracted two sums over all of it)."""
    shape = (8, 32, 64, 64)
    x = np.random.default_rng(0).standard_normal(shape)
    for layer in (Swish(), fast_layers.BatchNorm2d(32)):
        report = mu.gradcheck(layer, x, max_elements=30, raise_on_fail=False)
        assert report.ok, str(report)
        assert all(t.rel_error < 1e-7 for t in report.tensors), str(report)


@pytest.mark.slow
@pytest.mark.parametrize("L", IMPLS)
def test_every_layer_passes_at_8x32x64x64(L):
    """The whole sweep at the large shape: python -m pytest -m slow tests/test_gradcheck.py"""
    shape = (8, 32, 64, 64)
    for name, (layer, n_inputs) in every_layer(L, shape[1]).items():
        x = [np.random.default_rng(0).standard_normal(shape) for _ in range(n_inputs)]
        report = mu.gradcheck(layer, *x, max_elements=30, raise_on_fail=False)
        assert report.ok, f"{name}\n{report}"


# ------------------------------------------------------------------ wrong layers fail
class Square(mu.Module):
    """y = x**2, dy/dx = 2x; `bug` picks a classic mistake."""

    def __init__(self, bug: str = "") -> None:
        super().__init__()
        self.bug = bug

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, dout):
        (x,) = self.take_saved()
        if self.bug == "factor":
            return dout * x          # forgot the 2 of d(x^2)/dx
        if self.bug == "sign":
            return -2 * dout * x
        if self.bug == "inplace":
            dout *= 2 * x            # writes into dout (the value returned is right)
            return dout
        if self.bug == "zero":
            return np.where(x > 0, 2 * dout * x, 0)  # a branch that returns 0
        return 2 * dout * x


class Scale(mu.Module):
    """y = w[c] * x per channel; `assign` writes w.grad = ... instead of adding to it."""

    def __init__(self, channels: int, assign: bool = False) -> None:
        super().__init__()
        self.weight = mu.Parameter(np.linspace(0.5, 1.5, channels).astype(np.float32))
        self.assign = assign

    def forward(self, x):
        self.save_for_backward(x)
        return self.weight.data[:, None, None] * x

    def backward(self, dout):
        (x,) = self.take_saved()
        dw = (dout * x).sum(axis=(0, 2, 3))
        if self.assign:
            self.weight.grad = dw
        else:
            self.weight.grad += dw
        return self.weight.data[:, None, None] * dout


class BatchNormWithoutMeanTerm(readable_layers.BatchNorm2d):
    """Batch norm whose backward forgets that x moves the mean (term (2))."""

    def backward(self, dy):
        x_hat, istd, _ = self.take_saved()
        self.bias.grad += dy.sum(axis=(0, 2, 3))
        self.weight.grad += (dy * x_hat).sum(axis=(0, 2, 3))
        dx_hat = self.weight.data[:, None, None] * dy
        term3 = x_hat * (dx_hat * x_hat).mean(axis=(0, 2, 3))[:, None, None]
        return istd[:, None, None] * (dx_hat - term3)


class ConvIgnoringStride(readable_layers.Conv2d):
    """Conv2d whose backward scatters the gradient as if the stride were 1."""

    def backward(self, dy):
        (x_pad,) = self.take_saved()
        K, P = self.kernel_size, self.padding
        Ho, Wo = dy.shape[2:]
        w = self.weight.data
        dx_pad = np.zeros_like(x_pad)
        for kh in range(K):
            for kw in range(K):
                x_tap = x_pad[:, :, kh : kh + Ho, kw : kw + Wo]  # BUG: stride 1
                self.weight.grad[:, :, kh, kw] += np.einsum("nohw,nchw->oc", dy, x_tap)
                dx_pad[:, :, kh : kh + Ho, kw : kw + Wo] += np.einsum(
                    "oc,nohw->nchw", w[:, :, kh, kw], dy)
        self.bias.grad += dy.sum(axis=(0, 2, 3))
        H, W = x_pad.shape[2] - 2 * P, x_pad.shape[3] - 2 * P
        return dx_pad[:, :, P : P + H, P : P + W]


def failing(layer, *x):
    report = mu.gradcheck(layer, *x, raise_on_fail=False)
    assert not report.ok
    with pytest.raises(mu.GradcheckError):
        mu.gradcheck(layer, *x)
    return report, str(report)


X = np.random.default_rng(0).standard_normal((2, 3, 5, 4))


def test_the_correct_square_passes():
    assert mu.gradcheck(Square(), X).ok
    assert mu.gradcheck(Scale(3), X).ok


def test_missing_factor_is_named_as_a_constant_factor():
    report, text = failing(Square("factor"), X)
    (t,) = report.tensors
    assert t.wrong == t.checked == X.size
    assert "120 of 120 elements wrong" in text
    assert "analytic ~= 0.5 x numeric" in text and "constant factor" in text
    assert f"worst at {t.worst_index}: analytic" in text and "numeric" in text
    assert np.isclose(t.worst_analytic, 0.5 * t.worst_numeric, rtol=1e-6)


def test_flipped_sign_is_named():
    _, text = failing(Square("sign"), X)
    assert "sign is flipped" in text


def test_zero_where_it_should_not_be_is_named():
    _, text = failing(Square("zero"), X)
    assert "analytic is exactly 0" in text and "gradient path is missing" in text


def test_writing_into_dout_is_caught():
    report, text = failing(Square("inplace"), X)
    assert report.tensors[0].ok  # the values were right: only the contract is broken
    assert "wrote into its dout" in text


def test_assigning_instead_of_accumulating_is_caught():
    """p.grad is pre-filled with random values: `=` loses them, `+=` keeps them."""
    report, text = failing(Scale(3, assign=True), X)
    assert all(t.ok for t in report.tensors)
    assert "weight.grad is overwritten, not accumulated" in text and "+=" in text


def test_batchnorm_without_its_mean_term_fails():
    for shape in [(2, 3, 5, 4), (4, 2, 8, 8)]:
        x = np.random.default_rng(0).standard_normal(shape)
        report, text = failing(BatchNormWithoutMeanTerm(shape[1]), x)
        assert [t.name for t in report.tensors if not t.ok] == ["input 0"]
        assert "FAIL input 0" in text


def test_backward_ignoring_the_stride_fails():
    x = np.random.default_rng(0).standard_normal((2, 2, 7, 6))
    layer = ConvIgnoringStride(2, 3, 3, stride=2, padding=1, rng=np.random.default_rng(1))
    report, _ = failing(layer, x)
    assert {t.name for t in report.tensors if not t.ok} == {"input 0", "weight"}
    # the same layer with stride 1 is correct: the stride is what the check caught
    same = ConvIgnoringStride(2, 3, 3, stride=1, padding=1, rng=np.random.default_rng(1))
    assert mu.gradcheck(same, x).ok


def test_passing_rows_stay_short():
    text = str(mu.gradcheck(Scale(3), X))
    lines = text.splitlines()
    assert lines[0] == "gradcheck Scale (full mode, tol 1e-06): OK"
    assert len(lines) == 3 and all("worst" not in line and "hint" not in line for line in lines)


def test_exceptions_from_the_layer_propagate():
    class Broken(mu.Module):
        def forward(self, x):
            raise KeyError("a typo in my layer")

    with pytest.raises(KeyError, match="a typo in my layer"):
        mu.gradcheck(Broken(), X)


def test_forward_that_saved_nothing_is_named():
    class Forgetful(Square):
        def forward(self, x):
            return x * x

    with pytest.raises(RuntimeError, match="forward stored nothing for backward"):
        mu.gradcheck(Forgetful(), X)


# ------------------------------------------------------------------ the command
LAYERS_FILE = '''
import numpy as np
import minunet as mu


class Square(mu.Module):
    def __init__(self, wrong=False):
        super().__init__()
        self.wrong = wrong

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, dout):
        (x,) = self.take_saved()
        return dout * (3 if self.wrong else 2) * x


class Typo(Square):
    def backward(self, dout):
        (x,) = self.take_saved()
        return dout * 2 * xx  # noqa: F821


class BadLookup(Square):
    def forward(self, x):
        return {"a": x}["b"]
'''


@pytest.fixture
def layers_file(tmp_path):
    path = tmp_path / "my_layers.py"
    path.write_text(LAYERS_FILE)
    return path


def test_command_passes_the_packages_batchnorm_with_the_default_seed(capsys):
    """The issue's first finding: this printed FAILED (G was drawn from the same seed as x)."""
    for target in ("minunet:BatchNorm2d", "minunet.kernels.layers:BatchNorm2d"):
        assert main(["gradcheck", target, "--input-shape", "2,3,8,8", "--args", "[3]"]) == 0
        out = capsys.readouterr().out
        assert "OK" in out and "FAIL" not in out


def test_command_pass_and_fail(layers_file, capsys):
    assert main(["gradcheck", f"{layers_file}:Square", "--input-shape", "2,3,4,5"]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["gradcheck", f"{layers_file}:Square", "--input-shape", "2,3,4,5",
                 "--args", '{"wrong": true}']) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "1.5 x numeric" in out


@pytest.mark.parametrize("cls, error", [("Typo", "NameError"), ("BadLookup", "KeyError")])
def test_command_shows_the_layers_own_exception_with_traceback(layers_file, capsys, cls, error):
    assert main(["gradcheck", f"{layers_file}:{cls}", "--input-shape", "2,3,4,5"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and error in err
    assert "my_layers.py" in err  # the learner's own file and line
    assert f"{cls} raised the exception above" in err


@pytest.mark.parametrize("argv, message", [
    (["no_colon", "--input-shape", "1,1,2,2"], "MODULE:CLASS"),
    (["{dir}/missing.py:Square", "--input-shape", "1,1,2,2"], "no file"),
    (["{file}:Nope", "--input-shape", "1,1,2,2"], "has no Nope"),
    (["{file}:Square", "--input-shape", "2,x"], "--input-shape"),
    (["{file}:Square", "--input-shape", "2,0,3"], "--input-shape"),
    (["{file}:Square", "--input-shape", "2,3", "--args", "[1,"], "not valid JSON"),
    (["{file}:Square", "--input-shape", "2,3", "--args", "[1, 2, 3]"], "does not take"),
    (["{file}:Square", "--input-shape", "2,3", "--args", '{"colour": 1}'], "does not take"),
    (["{file}:Square", "--input-shape", "2,3", "--max-elements", "-1"], "--max-elements"),
    (["minunet:UNet2", "--input-shape", "1,1,2,2"], "has no UNet2"),
    (["no_such_package_xyz:Layer", "--input-shape", "1,1,2,2"], "cannot import"),
])
def test_command_bad_arguments_exit_2(layers_file, capsys, argv, message):
    argv = [a.replace("{dir}", str(layers_file.parent)).replace("{file}", str(layers_file))
            for a in argv]
    assert main(["gradcheck", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_command_file_that_cannot_be_imported_exits_2(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text("import numpy as np\ndef oops(:\n")
    assert main(["gradcheck", f"{path}:Layer", "--input-shape", "1,1,2,2"]) == 2
    err = capsys.readouterr().err
    assert "cannot import" in err and "SyntaxError" in err
