"""ConvTranspose2d: kernels vs NumPy reference, gradient checks, PyTorch agreement, bad input."""

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

# (N, Cin, Cout, H, W, K, S, P): the U-Net's K2S2, K3S2, K=1, batch 1, H != W, paddings
CASES = [
    (2, 3, 4, 5, 4, 2, 2, 0),
    (1, 2, 3, 4, 6, 3, 2, 0),
    (2, 3, 2, 5, 3, 3, 2, 1),
    (1, 4, 3, 3, 5, 1, 1, 0),
    (2, 2, 3, 4, 3, 3, 1, 1),
    (1, 3, 2, 3, 4, 4, 3, 1),
]


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_kernels_match_reference(case, dtype):
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
    w = rng.standard_normal((Cin, Cout, K, K)).astype(dtype)
    b = rng.standard_normal(Cout).astype(dtype)

    y = kernels.conv_transpose2d_forward(x, w, b, S, P)
    y_ref = reference.conv_transpose2d_forward_reference(x, w, b, S, P)
    assert y.shape == y_ref.shape == (N, Cout, (H - 1) * S - 2 * P + K, (W - 1) * S - 2 * P + K)
    assert y.dtype == dtype
    assert rel_error(y, y_ref) < TOL[dtype]

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = kernels.conv_transpose2d_backward_input(dy, w, S, P)
    dx_ref = reference.conv_transpose2d_backward_input_reference(dy, w, S, P)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert rel_error(dx, dx_ref) < TOL[dtype]

    dw = kernels.conv_transpose2d_backward_weight(x, dy, K, S, P)
    dw_ref = reference.conv_transpose2d_backward_weight_reference(x, dy, K, S, P)
    assert dw.shape == w.shape and dw.dtype == dtype
    assert rel_error(dw, dw_ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_fused_backward_matches_reference_and_the_separate_kernels(case, dtype, bias):
    """conv_transpose2d_backward: dx, dw, db from one im2col of dy (the fast layer's)."""
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(sum(case) + 1)
    x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
    w = rng.standard_normal((Cin, Cout, K, K)).astype(dtype)
    dy = rng.standard_normal((N, Cout, (H - 1) * S - 2 * P + K,
                              (W - 1) * S - 2 * P + K)).astype(dtype)
    dx, dw, db = kernels.conv_transpose2d_backward(x, dy, w, S, P, bias=bias)
    assert dx.dtype == dw.dtype == dtype
    assert rel_error(dx, reference.conv_transpose2d_backward_input_reference(dy, w, S, P)) \
        < TOL[dtype]
    assert rel_error(dw, reference.conv_transpose2d_backward_weight_reference(x, dy, K, S, P)) \
        < TOL[dtype]
    # the same products in the same order as the separate kernels: the same bits
    np.testing.assert_array_equal(dx, kernels.conv_transpose2d_backward_input(dy, w, S, P))
    np.testing.assert_array_equal(dw, kernels.conv_transpose2d_backward_weight(x, dy, K, S, P))
    if bias:
        assert db.shape == (Cout,) and db.dtype == dtype
        assert rel_error(db, dy.astype(np.float64).sum(axis=(0, 2, 3))) < TOL[dtype]
    else:
        assert db is None


def test_fused_backward_on_the_unets_shapes():
    """Many bands and groups of pieces, both threads: the U-Net's 2x2 up-step, float32."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 32, 32, 32)).astype(np.float32)
    w = rng.standard_normal((32, 16, 2, 2)).astype(np.float32)
    dy = rng.standard_normal((8, 16, 64, 64)).astype(np.float32)
    dx, dw, db = kernels.conv_transpose2d_backward(x, dy, w, 2, 0, bias=True)
    assert rel_error(dx, reference.conv_transpose2d_backward_input_reference(dy, w, 2, 0)) < 1e-5
    assert rel_error(dw, reference.conv_transpose2d_backward_weight_reference(x, dy, 2, 2, 0)) \
        < 1e-5
    assert rel_error(db, dy.astype(np.float64).sum(axis=(0, 2, 3))) < 1e-5


@pytest.mark.parametrize("where", [(0, 0, 0, 0), (1, 2, 5, 3)])
def test_fused_backward_names_nan_in_dout(where):
    x = np.ones((2, 3, 4, 4), np.float32)
    w = np.ones((3, 4, 2, 2), np.float32)
    dy = np.ones((2, 4, 8, 8), np.float32)
    dy[where] = np.nan
    with pytest.raises(FloatingPointError, match="dout"):
        kernels.conv_transpose2d_backward(x, dy, w, 2, 0, bias=True, who="ConvTranspose2d")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck(L, case):
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(5)
    layer = L.ConvTranspose2d(Cin, Cout, K, S, padding=P, rng=rng)
    layer.bias.data[:] = rng.standard_normal(Cout)
    x = rng.standard_normal((N, Cin, H, W))
    report = mu.gradcheck(layer, x)
    assert {t.name for t in report.tensors} == {"input 0", "weight", "bias"}
    assert all(t.rel_error < 1e-7 for t in report.tensors)


@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck_without_bias(L):
    rng = np.random.default_rng(3)
    layer = L.ConvTranspose2d(2, 3, 2, 2, bias=False, rng=rng)
    assert layer.bias is None
    report = mu.gradcheck(layer, rng.standard_normal((1, 2, 3, 4)))
    assert {t.name for t in report.tensors} == {"input 0", "weight"}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("L", IMPLS)
def test_matches_torch(L, case):
    torch = pytest.importorskip("torch")
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(11)
    layer = L.ConvTranspose2d(Cin, Cout, K, S, padding=P, rng=rng).astype(np.float64)
    layer.bias.data[:] = rng.standard_normal(Cout)
    x = rng.standard_normal((N, Cin, H, W))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.weight.data, requires_grad=True)
    bt = torch.tensor(layer.bias.data, requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, wt, bt, stride=S, padding=P)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, wt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, bt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("L", IMPLS)
def test_init_shapes_dtype_and_up_step_size(L):
    layer = L.ConvTranspose2d(32, 16, 2, 2, rng=np.random.default_rng(0))
    assert layer.weight.shape == (32, 16, 2, 2) and layer.bias.shape == (16,)
    assert layer.weight.dtype == np.float32
    expected_std = np.sqrt(2 / (32 * 2 * 2))
    assert abs(layer.weight.data.std() / expected_std - 1) < 0.1  # 2048 draws: ~1.6% spread
    y = layer(np.zeros((2, 32, 5, 7), np.float32))
    assert y.shape == (2, 16, 10, 14) and y.dtype == np.float32


# ------------------------------------------------------------------ bad input
@pytest.fixture(params=IMPLS)
def layer(request):
    return request.param.ConvTranspose2d(16, 8, 2, 2, rng=np.random.default_rng(0))


def test_wrong_ndim(layer):
    with pytest.raises(ValueError, match=r"ConvTranspose2d.*4 dimensions"):
        layer(np.zeros((16, 5, 5), np.float32))


def test_wrong_channels(layer):
    with pytest.raises(ValueError, match="ConvTranspose2d expected 16 input channels, got 8"):
        layer(np.zeros((1, 8, 5, 5), np.float32))


def test_dtype_mismatch(layer):
    with pytest.raises(TypeError, match=r"ConvTranspose2d.*float64.*float32"):
        layer(np.zeros((1, 16, 5, 5), np.float64))


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_input(layer, bad):
    x = np.zeros((1, 16, 5, 5), np.float32)
    x[0, 1, 4, 0] = bad
    with pytest.raises(FloatingPointError, match="ConvTranspose2d"):
        layer(x)


def test_backward_before_forward(layer):
    with pytest.raises(RuntimeError, match="ConvTranspose2d.backward was called before forward"):
        layer.backward(np.zeros((1, 8, 10, 10), np.float32))


@pytest.mark.parametrize("L", IMPLS)
def test_empty_output(L):
    with pytest.raises(ValueError, match="empty output"):
        L.ConvTranspose2d(1, 1, 2, 2, padding=2)(np.zeros((1, 1, 1, 1), np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_fast_layer_finds_a_non_finite_value_anywhere(bad):
    layer = fast_layers.ConvTranspose2d(2, 3, 2, stride=2, rng=np.random.default_rng(0))
    for position in np.ndindex(1, 2, 3, 4):
        x = np.ones((1, 2, 3, 4), np.float32)
        x[position] = bad
        with pytest.raises(FloatingPointError, match=r"ConvTranspose2d: input .* contains"):
            layer(x)
    y = layer(np.ones((1, 2, 3, 4), np.float32))
    for position in np.ndindex(y.shape):
        layer(np.ones((1, 2, 3, 4), np.float32))
        dy = np.ones_like(y)
        dy[position] = bad
        with pytest.raises(FloatingPointError, match=r"ConvTranspose2d.backward: dout .* contains"):
            layer.backward(dy)
        assert np.isfinite(layer.weight.grad).all()


def test_init_output_variance_is_2_over_stride_squared_as_documented():
    """The init comment's claim: std = sqrt(2 / (Cin*K*K)) gives a 2x2 stride-2 up-step an
    output variance of 2/S**2 = 0.5 on a standard-normal input (a Conv2d's is 2). The numbers
    must not change: the bundled model and trained results depend on them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 64, 16, 16)).astype(np.float32)
    up = mu.ConvTranspose2d(64, 32, 2, stride=2, rng=np.random.default_rng(1))
    assert up.weight.data.std() == pytest.approx(np.sqrt(2 / (64 * 4)), rel=0.02)
    assert up.forward(x).var() == pytest.approx(0.5, rel=0.1)
    conv = mu.Conv2d(64, 32, 3, rng=np.random.default_rng(1))  # no padding: every pixel full
    assert conv.forward(x).var() == pytest.approx(2.0, rel=0.1)
