"""Conv2d: kernels vs the NumPy reference, gradient checks, PyTorch agreement, bad inputs."""

import numpy as np
import pytest

import minunet as mu
from minunet import layers as readable_layers
from minunet.kernels import conv as kernels
from minunet.kernels import layers as fast_layers
from minunet.kernels import reference

# every layer test runs on the readable layer (the math) and on the fast one (the kernels)
IMPLS = [pytest.param(readable_layers, id="readable"), pytest.param(fast_layers, id="fast")]

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # kernel vs reference, whole-tensor relative error

# (N, Cin, Cout, H, W, K, S, P): odd sizes with H != W, batch 1, K = 1 and 3, strides, paddings
CASES = [
    (2, 3, 4, 7, 5, 3, 1, 1),
    (1, 2, 3, 9, 6, 3, 2, 0),
    (2, 3, 2, 5, 8, 1, 1, 0),
    (1, 4, 3, 8, 7, 3, 2, 2),
    (2, 1, 5, 6, 9, 3, 1, 0),
    (1, 2, 2, 7, 6, 2, 3, 1),
    (1, 3, 2, 5, 4, 1, 1, 1),  # stride 1 with P > K-1: the input gradient's general route
]


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_kernels_match_reference(case, dtype):
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
    w = rng.standard_normal((Cout, Cin, K, K)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)

    y = kernels.conv2d_forward(x, w, b, S, P)
    y_ref = reference.conv2d_forward_reference(x, w, b, S, P)
    assert y.shape == y_ref.shape and y.dtype == dtype
    assert rel_error(y, y_ref) < TOL[dtype]

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = kernels.conv2d_backward_input(dy, w, S, P, H, W)
    dx_ref = reference.conv2d_backward_input_reference(dy, w, S, P, H, W)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert rel_error(dx, dx_ref) < TOL[dtype]

    dw = kernels.conv2d_backward_weight(x, dy, K, S, P)
    dw_ref = reference.conv2d_backward_weight_reference(x, dy, K, S, P)
    assert dw.shape == w.shape and dw.dtype == dtype
    assert rel_error(dw, dw_ref) < TOL[dtype]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck(L, case):
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(7)
    layer = L.Conv2d(Cin, Cout, K, stride=S, padding=P, rng=rng)
    layer.bias.data[:] = rng.standard_normal(Cout)  # a zero bias would hide nothing, but vary it
    x = rng.standard_normal((N, Cin, H, W))
    report = mu.gradcheck(layer, x)
    assert {t.name for t in report.tensors} == {"input 0", "weight", "bias"}
    assert all(t.rel_error < 1e-7 for t in report.tensors)


@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck_without_bias(L):
    rng = np.random.default_rng(3)
    layer = L.Conv2d(2, 3, 3, padding=1, bias=False, rng=rng)
    assert layer.bias is None
    report = mu.gradcheck(layer, rng.standard_normal((1, 2, 5, 4)))
    assert {t.name for t in report.tensors} == {"input 0", "weight"}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("L", IMPLS)
def test_matches_torch(L, case):
    torch = pytest.importorskip("torch")
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(11)
    layer = L.Conv2d(Cin, Cout, K, stride=S, padding=P, rng=rng).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(Cout)
    x = rng.standard_normal((N, Cin, H, W))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.weight.data, requires_grad=True)
    bt = torch.tensor(layer.bias.data, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=S, padding=P)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("L", IMPLS)
def test_init_is_he_normal_float32_and_reproducible(L):
    layer = L.Conv2d(16, 32, 3, padding=1, rng=np.random.default_rng(0))
    assert layer.weight.shape == (32, 16, 3, 3) and layer.bias.shape == (32,)
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    assert np.all(layer.bias.data == 0)
    expected_std = np.sqrt(2 / (16 * 3 * 3))
    assert abs(layer.weight.data.std() / expected_std - 1) < 0.05  # 4608 draws: ~1% spread
    again = L.Conv2d(16, 32, 3, padding=1, rng=np.random.default_rng(0))
    assert np.array_equal(layer.weight.data, again.weight.data)
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]


@pytest.mark.parametrize("L", IMPLS)
def test_float32_forward_stays_float32(L):
    layer = L.Conv2d(3, 4, 3, padding=1, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 5)).astype(np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and y.shape == (2, 4, 6, 5)
    assert layer.backward(np.ones_like(y)).dtype == np.float32
    assert layer.weight.grad.dtype == np.float32


# ------------------------------------------------------------------ bad input
@pytest.fixture(params=IMPLS)
def layer(request):
    return request.param.Conv2d(16, 8, 3, padding=1, rng=np.random.default_rng(0))


def test_wrong_ndim(layer):
    with pytest.raises(ValueError, match=r"Conv2d.*4 dimensions"):
        layer(np.zeros((16, 5, 5), np.float32))


def test_wrong_channels(layer):
    with pytest.raises(ValueError, match="Conv2d expected 16 input channels, got 8"):
        layer(np.zeros((1, 8, 5, 5), np.float32))


def test_dtype_mismatch(layer):
    with pytest.raises(TypeError, match=r"Conv2d.*float64.*float32"):
        layer(np.zeros((1, 16, 5, 5), np.float64))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input(layer, bad):
    x = np.zeros((1, 16, 5, 5), np.float32)
    x[0, 3, 2, 1] = bad
    with pytest.raises(FloatingPointError, match="Conv2d"):
        layer(x)


def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="Conv2d.backward was called before forward"):
        layer.backward(np.zeros((1, 8, 5, 5), np.float32))


@pytest.mark.parametrize("L", IMPLS)
def test_input_smaller_than_kernel(L):
    with pytest.raises(ValueError, match="smaller than the kernel"):
        L.Conv2d(1, 1, 5)(np.zeros((1, 1, 3, 3), np.float32))


def test_wrong_dout_shape(layer):
    layer(np.zeros((1, 16, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"Conv2d.*dout"):
        layer.backward(np.zeros((1, 5, 5, 5), np.float32))


# geometries where every input row is read, where the last rows are not (H=10, K=3, S=2,
# P=0 reads rows 0..8), and a 1x1 convolution (no columns are built)
PROBE_CASES = [(2, 5, 6, 3, 1, 1), (2, 10, 7, 3, 2, 0), (3, 4, 5, 1, 1, 0), (1, 6, 6, 2, 2, 0)]


@pytest.mark.parametrize("C, H, W, K, S, P", PROBE_CASES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fast_conv_finds_a_non_finite_value_anywhere(C, H, W, K, S, P, bad):
    """The fast layer's NaN/inf check rides on the im2col copy: every position must count."""
    layer = fast_layers.Conv2d(C, 2, K, stride=S, padding=P, rng=np.random.default_rng(0))
    for position in np.ndindex(1, C, H, W):
        x = np.ones((1, C, H, W), np.float32)
        x[position] = bad
        with pytest.raises(FloatingPointError, match=r"Conv2d: input .* contains"):
            layer(x)


@pytest.mark.parametrize("C, H, W, K, S, P", PROBE_CASES)
def test_fast_conv_backward_finds_a_non_finite_dout_anywhere(C, H, W, K, S, P):
    layer = fast_layers.Conv2d(C, 2, K, stride=S, padding=P, rng=np.random.default_rng(0))
    y = layer(np.ones((1, C, H, W), np.float32))
    for position in np.ndindex(y.shape):
        layer(np.ones((1, C, H, W), np.float32))
        dy = np.ones_like(y)
        dy[position] = np.nan
        with pytest.raises(FloatingPointError, match=r"Conv2d.backward: dout .* contains"):
            layer.backward(dy)
        assert not np.isnan(layer.weight.grad).any()  # raised before touching the gradients
