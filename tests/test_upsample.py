"""The up-step and head kernels (kernels/upsample.py) against the NumPy references: their
forwards and backwards (training takes them on the direct route's CPUs, inference wherever
they apply), and the layers choosing them.

Tolerance: float32 sums over at most a few dozen channels, in another order than the
float64 reference: 1e-6 of the output's scale (measured: 2-3e-7)."""

import numpy as np
import pytest

from minunet.kernels import conv, simd, threads, upsample
from minunet.kernels import layers as fast_layers
from minunet.kernels.reference import (
    conv2d_backward_input_reference,
    conv2d_backward_weight_reference,
    conv2d_forward_reference,
    conv_transpose2d_backward_input_reference,
    conv_transpose2d_backward_weight_reference,
    conv_transpose2d_forward_reference,
)

pytestmark = pytest.mark.skipif(not simd.AVAILABLE, reason="the kernels need the JIT")
TOLERANCE = 1e-6


def _error(y, exact):
    return np.abs(y.astype(np.float64) - exact).max() / np.abs(exact).max()


@pytest.mark.parametrize("n, cin, cout, h, w", [(1, 32, 16, 5, 48), (2, 7, 13, 3, 16)])
def test_up_step_is_the_transposed_convolution(n, cin, cout, h, w):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cin, cout, 2, 2)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    exact = conv_transpose2d_forward_reference(x.astype(np.float64), weight.astype(np.float64),
                                               bias.astype(np.float64), 2, 0)
    y = upsample.conv_transpose2x2_forward(x, weight, bias)
    assert y.shape == exact.shape and y.dtype == np.float32
    assert _error(y, exact) < TOLERANCE
    exact = conv_transpose2d_forward_reference(x.astype(np.float64), weight.astype(np.float64),
                                               None, 2, 0)
    assert _error(upsample.conv_transpose2x2_forward(x, weight, None), exact) < TOLERANCE


@pytest.mark.parametrize("n, cin, cout, h, w", [(1, 16, 3, 5, 48), (2, 9, 6, 70, 64)])
def test_head_is_the_1x1_convolution(n, cin, cout, h, w):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    exact = conv2d_forward_reference(x.astype(np.float64), weight.astype(np.float64),
                                     bias.astype(np.float64), 1, 0)
    y = upsample.conv1x1_forward(x, weight, bias)
    assert y.shape == exact.shape and y.dtype == np.float32
    assert _error(y, exact) < TOLERANCE


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_kernels_find_nan_and_inf(bad):
    x = np.ones((1, 4, 3, 16), np.float32)
    x[0, 3, 2, 15] = bad
    with pytest.raises(FloatingPointError, match="ConvTranspose2d"):
        upsample.conv_transpose2x2_forward(x, np.ones((4, 2, 2, 2), np.float32), None,
                                             who="ConvTranspose2d")
    with pytest.raises(FloatingPointError, match="Conv2d"):
        upsample.conv1x1_forward(x, np.ones((2, 4, 1, 1), np.float32), None, who="Conv2d")


def test_layers_choose_them(monkeypatch):
    """Both take their kernels in inference, and in training where the direct route runs
    (AVX-512); MINUNET_WINOGRAD=0 (ENABLED False) sends inference to the BLAS routes."""
    calls = []
    for name in ("conv_transpose2x2_forward", "conv1x1_forward"):
        real = getattr(upsample, name)
        monkeypatch.setattr(upsample, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    rng = np.random.default_rng(2)
    up = fast_layers.ConvTranspose2d(8, 4, 2, stride=2, rng=rng)
    head = fast_layers.Conv2d(4, 3, 1, rng=rng)
    x = rng.standard_normal((2, 8, 4, 16)).astype(np.float32)
    y_train = head(up(x))                                  # training mode, gradients on
    assert calls == (["conv_transpose2x2_forward", "conv1x1_forward"] if conv.USE_DIRECT
                     else [])
    calls.clear()
    for layer in (up, head):
        layer.eval()
        layer.set_grad_enabled(False)
    y_eval = head(up(x))
    assert calls == ["conv_transpose2x2_forward", "conv1x1_forward"]
    np.testing.assert_allclose(y_eval, y_train, rtol=0, atol=1e-5)
    monkeypatch.setattr(upsample, "ENABLED", False)     # MINUNET_WINOGRAD=0: training's routes
    np.testing.assert_allclose(head(up(x)), y_train, rtol=0, atol=1e-5)
    assert len(calls) == 2


def _up_gradients_exact(x, dy, weight):
    x64, dy64, w64 = (a.astype(np.float64) for a in (x, dy, weight))
    return (conv_transpose2d_backward_input_reference(dy64, w64, 2, 0),
            conv_transpose2d_backward_weight_reference(x64, dy64, 2, 2, 0),
            dy64.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("n, cin, cout, h, w", [(1, 32, 16, 5, 48), (2, 7, 13, 3, 16),
                                                 (3, 9, 6, 70, 64), (8, 64, 32, 32, 32)])
def test_up_step_backward_is_the_transposed_convolutions_gradients(n, cin, cout, h, w):
    """dx, dw, db from one read of dy, against the float64 references; odd channel counts
    (neither a multiple of the 4 x 4 dw tile nor of the 8 rows of the dx product), H != W,
    a batch of 1, images cut into several bands (70 rows)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cin, cout, 2, 2)).astype(np.float32)
    dy = rng.standard_normal((n, cout, 2 * h, 2 * w)).astype(np.float32)
    got = upsample.conv_transpose2x2_backward(x, dy, weight, bias=True)
    for value, exact in zip(got, _up_gradients_exact(x, dy, weight), strict=True):
        assert value.shape == exact.shape and value.dtype == np.float32
        assert _error(value, exact) < TOLERANCE
    assert upsample.conv_transpose2x2_backward(x, dy, weight, bias=False)[2] is None


def test_up_step_backward_gives_the_same_bits_on_any_threads():
    """dw and db are summed in groups fixed by the shapes: 1 or 2 threads, the same bits."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 16, 40, 32)).astype(np.float32)
    weight = rng.standard_normal((16, 8, 2, 2)).astype(np.float32)
    dy = rng.standard_normal((4, 8, 80, 64)).astype(np.float32)
    before = threads.get_num_threads()
    try:
        threads.set_num_threads(2)
        two = upsample.conv_transpose2x2_backward(x, dy, weight, bias=True)
        threads.set_num_threads(1)
        one = upsample.conv_transpose2x2_backward(x, dy, weight, bias=True)
    finally:
        threads.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_up_step_backward_finds_nan_and_inf(bad):
    dy = np.ones((1, 2, 6, 32), np.float32)
    dy[0, 1, 5, 31] = bad
    with pytest.raises(FloatingPointError, match="ConvTranspose2d.backward"):
        upsample.conv_transpose2x2_backward(np.ones((1, 4, 3, 16), np.float32), dy,
                                            np.ones((4, 2, 2, 2), np.float32), bias=True,
                                            who="ConvTranspose2d.backward")


@pytest.mark.skipif(not conv.USE_DIRECT, reason="training takes them with AVX-512 only")
def test_training_up_step_matches_the_blas_route(monkeypatch):
    """The layer's gradients by the kernels equal those of the BLAS route (float32 rounding);
    beyond UP_STEP_MAX_WEIGHTS the layer keeps the BLAS route."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 12, 6, 32)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 12, 64)).astype(np.float32)
    results = []
    for limit in (fast_layers.UP_STEP_MAX_WEIGHTS, 0):     # kernels, then BLAS
        monkeypatch.setattr(fast_layers, "UP_STEP_MAX_WEIGHTS", limit)
        layer = fast_layers.ConvTranspose2d(12, 5, 2, stride=2, rng=np.random.default_rng(6))
        y = layer(x)
        dx = layer.backward(dy)
        results.append((y, dx, layer.weight.grad.copy(), layer.bias.grad.copy()))
    for kernel, blas in zip(*results, strict=True):
        np.testing.assert_allclose(kernel, blas, rtol=0, atol=1e-5 * np.abs(blas).max())


@pytest.mark.parametrize("n, cin, cout, h, w", [(1, 16, 3, 5, 48), (2, 9, 6, 70, 64),
                                                 (3, 5, 1, 128, 128)])
def test_head_backward_is_the_1x1_convolutions_gradients(n, cin, cout, h, w):
    """dx, dw, db from one read of dy, against the float64 references; channel counts off
    the 4 x 4 dw tile, images of several runs of HEAD_PIXELS."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    dy = rng.standard_normal((n, cout, h, w)).astype(np.float32)
    x64, dy64, w64 = (a.astype(np.float64) for a in (x, dy, weight))
    exact = (conv2d_backward_input_reference(dy64, w64, 1, 0, h, w),
             conv2d_backward_weight_reference(x64, dy64, 1, 1, 0), dy64.sum(axis=(0, 2, 3)))
    got = upsample.conv1x1_backward(x, dy, weight, bias=True)
    for value, expected in zip(got, exact, strict=True):
        assert value.shape == expected.shape and value.dtype == np.float32
        assert _error(value, expected) < TOLERANCE
    assert upsample.conv1x1_backward(x, dy, weight, bias=False)[2] is None
    again = upsample.conv1x1_backward(x, dy, weight, bias=True)
    for a, b in zip(got, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_head_backward_finds_nan_and_inf(bad):
    dy = np.ones((1, 2, 3, 16), np.float32)
    dy[0, 1, 2, 15] = bad
    with pytest.raises(FloatingPointError, match="Conv2d.backward"):
        upsample.conv1x1_backward(np.ones((1, 4, 3, 16), np.float32), dy,
                                  np.ones((2, 4, 1, 1), np.float32), bias=True,
                                  who="Conv2d.backward")


@pytest.mark.skipif(not conv.USE_DIRECT, reason="training takes them with AVX-512 only")
def test_training_head_matches_the_blas_route(monkeypatch):
    """The layer's gradients by the head's kernels equal those of the BLAS route."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 12, 6, 32)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 6, 32)).astype(np.float32)
    results = []
    for fits in (upsample.fits, lambda x: False):          # kernels, then BLAS
        monkeypatch.setattr(upsample, "fits", fits)
        layer = fast_layers.Conv2d(12, 3, 1, rng=np.random.default_rng(9))
        y = layer(x)
        dx = layer.backward(dy)
        results.append((y, dx, layer.weight.grad.copy(), layer.bias.grad.copy()))
    for kernel, blas in zip(*results, strict=True):
        np.testing.assert_allclose(kernel, blas, rtol=0, atol=1e-5 * np.abs(blas).max())


def test_up_step_computes_only_its_window():
    """conv_transpose2x2_forward(..., window=): the output window's values to the bit, from
    the input pixels under it only (a NaN elsewhere is not met); windows off the 32-px
    column grid are refused."""
    if not upsample.ENABLED:
        pytest.skip("no AVX-512 or no JIT")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 24, 20, 64)).astype(np.float32)
    w = rng.standard_normal((24, 16, 2, 2)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    window = (6, 32, 20, 64)  # input rows 3..12, columns 16..47
    whole = upsample.conv_transpose2x2_forward(x, w, b)
    x[1, 2, 0, 0] = np.nan
    x[0, 7, 19, 63] = np.inf
    part = upsample.conv_transpose2x2_forward(x, w, b, who="up", window=window)
    np.testing.assert_array_equal(part[..., 6:26, 32:96], whole[..., 6:26, 32:96])
    with pytest.raises(FloatingPointError):
        upsample.conv_transpose2x2_forward(x, w, b, who="up")
    for bad in ((1, 32, 20, 64), (6, 16, 20, 64), (6, 32, 20, 48), (6, 96, 20, 64)):
        with pytest.raises(ValueError, match="window"):
            upsample.conv_transpose2x2_forward(x, w, b, window=bad)
