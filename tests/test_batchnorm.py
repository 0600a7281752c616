"""BatchNorm2d: kernels vs references, gradient check in train AND eval mode, running stats
(formula and PyTorch), precision of the float32 statistics, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet import layers as readable_layers
from minunet.kernels import layers as fast_layers
from minunet.kernels.batchnorm import (
    batchnorm_backward_input,
    batchnorm_backward_reduce,
    batchnorm_forward,
    batchnorm_stats,
)
from minunet.kernels.reference import (
    batchnorm_backward_input_reference,
    batchnorm_backward_reduce_reference,
    batchnorm_forward_reference,
    batchnorm_stats_reference,
)

# every layer test runs on the readable layer (the math) and on the fast one (the kernels)
IMPLS = [pytest.param(readable_layers, id="readable"), pytest.param(fast_layers, id="fast")]


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


SHAPES = [(1, 3, 5, 7), (2, 4, 3, 6), (3, 2, 1, 5)]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_reference(shape, dtype, tol):
    rng = np.random.default_rng(0)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    mean, var = batchnorm_stats(x)
    mean_ref, var_ref = batchnorm_stats_reference(x)
    assert rel(mean, mean_ref) <= tol and rel(var, var_ref) <= tol
    scale, shift, a, mg, k = (rng.standard_normal(C).astype(dtype) for _ in range(5))
    y, probe = batchnorm_forward(x, scale, shift)
    assert probe == 0
    assert y.dtype == dtype and rel(y, batchnorm_forward_reference(x, scale, shift)) <= tol
    s1, s2 = batchnorm_backward_reduce(dout, x, mean)
    r1, r2 = batchnorm_backward_reduce_reference(dout, x, mean)
    assert rel(s1, r1) <= tol and rel(s2, r2) <= tol
    m = mean.astype(dtype)
    dx = batchnorm_backward_input(dout, x, m, a, mg, k)
    assert dx.dtype == dtype
    assert rel(dx, batchnorm_backward_input_reference(dout, x, m, a, mg, k)) <= tol


def test_float32_statistics_at_unet_size_are_float64_exact():
    """131k values per channel, mean far from 0: the float64 accumulation keeps ~1e-9."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 2, 128, 128)) * 0.5 + 20).astype(np.float32)
    mean, var = batchnorm_stats(x)
    mean_ref, var_ref = batchnorm_stats_reference(x)
    assert rel(mean, mean_ref) < 1e-9 and rel(var, var_ref) < 1e-7


def make_bn(C, rng, training=True, L=readable_layers):
    bn = L.BatchNorm2d(C)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, C)  # not ones / zeros: every term matters
    bn.bias.data[:] = rng.standard_normal(C)
    bn.running_mean[:] = rng.standard_normal(C)
    bn.running_var[:] = rng.uniform(0.5, 2.0, C)
    return bn.train(training)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck(L, shape, training):
    rng = np.random.default_rng(2)
    bn = make_bn(shape[1], rng, training, L)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    report = mu.gradcheck(bn, x, max_elements=None)
    assert {t.name for t in report.tensors} == {"input 0", "weight", "bias"}


@pytest.mark.parametrize("L", IMPLS)
def test_running_stats_follow_pytorch_formula(L):
    rng = np.random.default_rng(3)
    bn = L.BatchNorm2d(3, momentum=0.25)
    x1 = rng.standard_normal((2, 3, 4, 5)).astype(np.float32) * 3 + 1
    x2 = rng.standard_normal((2, 3, 4, 5)).astype(np.float32) - 2
    rm, rv = np.zeros(3), np.ones(3)
    for x in (x1, x2):
        bn.forward(x)
        x64 = x.astype(np.float64)
        rm = 0.75 * rm + 0.25 * x64.mean(axis=(0, 2, 3))
        rv = 0.75 * rv + 0.25 * x64.var(axis=(0, 2, 3), ddof=1)  # unbiased
    assert rel(bn.running_mean, rm) < 1e-6 and rel(bn.running_var, rv) < 1e-6
    assert bn.running_mean.dtype == np.float32
    state = bn.state_dict()
    assert set(state) == {"weight", "bias", "running_mean", "running_var"}
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]


@pytest.mark.parametrize("L", IMPLS)
def test_eval_uses_running_stats_and_train_uses_batch_stats(L):
    rng = np.random.default_rng(4)
    bn = make_bn(2, rng, training=False, L=L)
    x = rng.standard_normal((2, 2, 3, 3))
    bn.astype(np.float64)
    y = bn.forward(x)
    c = (slice(None), None, None)
    expected = ((x - bn.running_mean[c]) / np.sqrt(bn.running_var[c] + bn.eps)
                * bn.weight.data[c] + bn.bias.data[c])
    assert rel(y, expected) < 1e-12
    bn.train()
    y = bn.forward(x)
    assert np.allclose(y.mean(axis=(0, 2, 3)), bn.bias.data, atol=1e-12)


@pytest.mark.parametrize("L", IMPLS)
def test_matches_torch_train_then_eval(L):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    bn = make_bn(4, rng, L=L).astype(np.float64)
    tbn = torch.nn.BatchNorm2d(4).double()
    with torch.no_grad():
        tbn.weight[:] = torch.tensor(bn.weight.data)
        tbn.bias[:] = torch.tensor(bn.bias.data)
        tbn.running_mean[:] = torch.tensor(bn.running_mean)
        tbn.running_var[:] = torch.tensor(bn.running_var)
    for step in range(2):
        x = rng.standard_normal((3, 4, 5, 6)) * (step + 1) + step
        dout = rng.standard_normal(x.shape)
        bn.zero_grad()
        y = bn.forward(x)
        dx = bn.backward(dout)
        xt = torch.tensor(x, requires_grad=True)
        tbn.zero_grad()
        yt = tbn(xt)
        yt.backward(torch.tensor(dout))
        assert rel(y, yt.detach().numpy()) < 1e-12
        assert rel(dx, xt.grad.numpy()) < 1e-10
        assert rel(bn.weight.grad, tbn.weight.grad.numpy()) < 1e-12
        assert rel(bn.bias.grad, tbn.bias.grad.numpy()) < 1e-12
        assert rel(bn.running_mean, tbn.running_mean.numpy()) < 1e-12
        assert rel(bn.running_var, tbn.running_var.numpy()) < 1e-12
    bn.eval()
    tbn.eval()
    x = rng.standard_normal((1, 4, 3, 2))
    dout = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    tbn(xt).backward(torch.tensor(dout))
    assert rel(bn.forward(x), tbn(xt).detach().numpy()) < 1e-12
    assert rel(bn.backward(dout), xt.grad.numpy()) < 1e-12


@pytest.mark.parametrize("L", IMPLS)
def test_backward_uses_the_mode_of_its_forward(L):
    rng = np.random.default_rng(6)
    bn = make_bn(2, rng, L=L).astype(np.float64)
    x, dout = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 2, 3, 3))
    bn.forward(x)
    dx_train = bn.backward(dout)
    bn.forward(x)
    bn.eval()
    assert np.array_equal(bn.backward(dout), dx_train)


@pytest.mark.parametrize("L", IMPLS)
def test_bad_inputs(L):
    bn = L.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\).*4 dimensions"):
        bn.forward(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\) expected 3 input channels, got 2"):
        bn.forward(np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(TypeError, match=r"BatchNorm2d\(3\).*float64.*float32"):
        bn.forward(np.zeros((1, 3, 4, 4), np.float64))
    x = np.ones((1, 3, 4, 4), np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(FloatingPointError, match=r"BatchNorm2d\(3\).*1 NaN"):
        bn.forward(x)  # train mode: found through the statistics
    for training in (True, False):
        for bad, name in [(np.inf, "1 inf"), (-np.inf, "1 inf"), (np.nan, "1 NaN")]:
            for where in [(0, 0, 0, 0), (0, 1, 2, 3), (0, 2, 3, 3)]:
                x = np.ones((1, 3, 4, 4), np.float32)
                x[where] = bad
                with pytest.raises(FloatingPointError, match=rf"BatchNorm2d\(3\).*{name}"):
                    bn.train(training).forward(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        L.BatchNorm2d(3).forward(np.zeros((1, 3, 1, 1), np.float32))
    with pytest.raises(RuntimeError, match=r"BatchNorm2d.backward was called before forward"):
        L.BatchNorm2d(3).backward(np.zeros((1, 3, 4, 4), np.float32))


def test_dx_is_orthogonal_to_x_hat_only_for_eps_0():
    """The docstring's term (3): <dx, x̂> = istd * <dx̂, x̂> * eps / (var + eps), per channel."""
    from minunet import layers as readable

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)) * 0.01  # var ~ 1e-4 ~ eps
    g = np.random.default_rng(1).standard_normal(x.shape)
    for eps in (0.0, 1e-4):
        bn = readable.BatchNorm2d(3, eps=eps).astype(np.float64)
        bn.forward(x)
        x_hat, istd, _ = bn._saved
        dx = bn.backward(g)
        inner = (dx * x_hat).sum(axis=(0, 2, 3))
        var = x.var(axis=(0, 2, 3))
        expected = istd * (g * x_hat).sum(axis=(0, 2, 3)) * eps / (var + eps)
        assert np.allclose(inner, expected, rtol=1e-6, atol=1e-9)
        assert (eps == 0) == bool(np.allclose(inner, 0, atol=1e-6))
