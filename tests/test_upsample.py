"""Inference's up-step and head kernels (kernels/upsample.py) against the NumPy references,
and the layers taking them only in eval mode with gradients off.

Tolerance: float32 sums over at most a few dozen channels, in another order than the
float64 reference: 1e-6 of the output's scale (measured: 2-3e-7)."""

import numpy as np
import pytest

from minunet.kernels import layers as fast_layers
from minunet.kernels import simd, upsample
from minunet.kernels.reference import (
    conv2d_forward_reference,
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
    y = upsample.conv_transpose2x2_inference(x, weight, bias)
    assert y.shape == exact.shape and y.dtype == np.float32
    assert _error(y, exact) < TOLERANCE
    exact = conv_transpose2d_forward_reference(x.astype(np.float64), weight.astype(np.float64),
                                               None, 2, 0)
    assert _error(upsample.conv_transpose2x2_inference(x, weight, None), exact) < TOLERANCE


@pytest.mark.parametrize("n, cin, cout, h, w", [(1, 16, 3, 5, 48), (2, 9, 6, 70, 64)])
def test_head_is_the_1x1_convolution(n, cin, cout, h, w):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    exact = conv2d_forward_reference(x.astype(np.float64), weight.astype(np.float64),
                                     bias.astype(np.float64), 1, 0)
    y = upsample.conv1x1_inference(x, weight, bias)
    assert y.shape == exact.shape and y.dtype == np.float32
    assert _error(y, exact) < TOLERANCE


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_kernels_find_nan_and_inf(bad):
    x = np.ones((1, 4, 3, 16), np.float32)
    x[0, 3, 2, 15] = bad
    with pytest.raises(FloatingPointError, match="ConvTranspose2d"):
        upsample.conv_transpose2x2_inference(x, np.ones((4, 2, 2, 2), np.float32), None,
                                             who="ConvTranspose2d")
    with pytest.raises(FloatingPointError, match="Conv2d"):
        upsample.conv1x1_inference(x, np.ones((2, 4, 1, 1), np.float32), None, who="Conv2d")


def test_layers_take_them_for_inference_only(monkeypatch):
    """Eval mode with gradients off: the kernels; training (or gradients on): the routes
    whose backward differentiates them, as before."""
    calls = []
    for name in ("conv_transpose2x2_inference", "conv1x1_inference"):
        real = getattr(upsample, name)
        monkeypatch.setattr(upsample, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    rng = np.random.default_rng(2)
    up = fast_layers.ConvTranspose2d(8, 4, 2, stride=2, rng=rng)
    head = fast_layers.Conv2d(4, 3, 1, rng=rng)
    x = rng.standard_normal((2, 8, 4, 16)).astype(np.float32)
    y_train = head(up(x))                                  # training mode, gradients on
    assert calls == []
    for layer in (up, head):
        layer.eval()
        layer.set_grad_enabled(False)
    y_eval = head(up(x))
    assert calls == ["conv_transpose2x2_inference", "conv1x1_inference"]
    np.testing.assert_allclose(y_eval, y_train, rtol=0, atol=1e-5)
    monkeypatch.setattr(upsample, "ENABLED", False)     # MINUNET_WINOGRAD=0: training's routes
    np.testing.assert_array_equal(head(up(x)), y_train)
    assert len(calls) == 2
