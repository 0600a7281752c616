"""Every fast layer (minunet.kernels.layers) equals its readable layer (minunet.layers):
forward, input gradient(s), parameter gradients and running statistics, in float32 and
float64, on odd sizes (H != W), several strides and paddings, batch 1, train and eval."""

import numpy as np
import pytest

from minunet import layers as readable_layers
from minunet.kernels import layers as fast_layers

TOL = {np.float32: 1e-5, np.float64: 1e-12}  # whole-tensor relative error
DTYPES = [np.float32, np.float64]


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def assert_same_layer(make, input_shapes, dtype, training=True, steps=2, seed=0):
    """Build the layer both ways with the same weights, run forward + backward `steps` times
    (running statistics move), and compare every output, gradient and buffer."""
    rng = np.random.default_rng(seed)
    readable = make(readable_layers).astype(dtype).train(training)
    fast = make(fast_layers).astype(dtype).train(training)
    assert type(fast).__mro__[1] is type(readable)  # the fast class subclasses the readable one
    for p in readable.parameters():  # not ones / zeros: every term of the gradient matters
        p.data[...] = rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1, 1], p.shape)
    for name, b in readable.named_buffers():
        b[...] = rng.uniform(0.5, 1.5, b.shape) if "var" in name else rng.standard_normal(b.shape)
    fast.load_state_dict(readable.state_dict())
    tol = TOL[dtype]
    for _ in range(steps):
        inputs = [(rng.standard_normal(s) * 1.5 + 0.3).astype(dtype) for s in input_shapes]
        y_readable = readable.forward(*inputs)
        y_fast = fast.forward(*inputs)
        assert y_fast.shape == y_readable.shape and y_fast.dtype == y_readable.dtype == dtype
        assert rel(y_fast, y_readable) <= tol
        dy = rng.standard_normal(y_readable.shape).astype(dtype)
        dy_before = dy.copy()
        dx_readable = as_tuple(readable.backward(dy))
        dx_fast = as_tuple(fast.backward(dy))
        assert np.array_equal(dy, dy_before)  # neither wrote into dout
        for a, b, x in zip(dx_fast, dx_readable, inputs, strict=True):
            assert a.shape == b.shape == x.shape and a.dtype == b.dtype == dtype
            assert rel(a, b) <= tol
    for (name, p), (_, q) in zip(fast.named_parameters(), readable.named_parameters(),
                                 strict=True):
        assert p.grad.dtype == dtype and rel(p.grad, q.grad) <= tol, name
    for (name, b), (_, c) in zip(fast.named_buffers(), readable.named_buffers(), strict=True):
        assert rel(b, c) <= tol, name


# (N, Cin, Cout, H, W, K, S, P)
CONV_CASES = [
    (2, 3, 4, 7, 5, 3, 1, 1),
    (1, 2, 3, 9, 6, 3, 2, 0),
    (2, 3, 2, 5, 8, 1, 1, 0),
    (1, 4, 3, 8, 7, 3, 2, 2),
    (1, 2, 2, 7, 6, 2, 3, 1),
    (1, 3, 2, 5, 4, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d(case, dtype, bias):
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(0)  # the weights are overwritten by assert_same_layer anyway
    assert_same_layer(lambda L: L.Conv2d(Cin, Cout, K, stride=S, padding=P, bias=bias, rng=rng),
                      [(N, Cin, H, W)], dtype)


def test_conv2d_training_by_winograd():
    """A float32 3x3 convolution with >= 16 input channels on a large enough image (conv.py's
    _winograd_pays): forward and input gradient by Winograd F(4x4, 3x3)
    (conv.TRAIN_WINOGRAD), still the readable layer's results within float32's tolerance;
    in two parts too (the U-Net's skip)."""
    from minunet.kernels import conv
    if not conv.TRAIN_WINOGRAD:
        pytest.skip("no AVX-512, no JIT, or MINUNET_WINOGRAD set")
    rng = np.random.default_rng(0)
    assert conv._winograd_pays(np.zeros((1, 16, 64, 64), np.float32), 3, 1, 1, 12)
    assert_same_layer(lambda L: L.Conv2d(16, 12, 3, padding=1, bias=True, rng=rng),
                      [(1, 16, 64, 64)], np.float32)
    readable = readable_layers.Conv2d(24, 16, 3, padding=1, rng=np.random.default_rng(1))
    fast = fast_layers.Conv2d(24, 16, 3, padding=1, rng=np.random.default_rng(1))
    a = rng.standard_normal((2, 8, 64, 64)).astype(np.float32)
    b = rng.standard_normal((2, 16, 64, 64)).astype(np.float32)
    assert conv._winograd_pays((a, b), 3, 1, 1, 16)
    y = fast.forward(a, b)
    assert rel(y, readable.forward(np.concatenate([a, b], axis=1))) <= TOL[np.float32]
    dy = rng.standard_normal(y.shape).astype(np.float32)
    da, db = fast.backward(dy)
    dx = readable.backward(dy)
    assert rel(da, dx[:, :8]) <= TOL[np.float32] and rel(db, dx[:, 8:]) <= TOL[np.float32]
    assert rel(fast.weight.grad, readable.weight.grad) <= TOL[np.float32]


# (N, Cin, Cout, H, W, K, S, P)
CONV_TRANSPOSE_CASES = [
    (2, 3, 4, 5, 4, 2, 2, 0),
    (1, 2, 3, 4, 6, 3, 2, 0),
    (2, 3, 2, 5, 3, 3, 2, 1),
    (1, 4, 3, 3, 5, 1, 1, 0),
    (1, 3, 2, 3, 4, 4, 3, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_conv_transpose2d(case, dtype):
    N, Cin, Cout, H, W, K, S, P = case
    rng = np.random.default_rng(0)
    assert_same_layer(lambda L: L.ConvTranspose2d(Cin, Cout, K, S, padding=P, rng=rng),
                      [(N, Cin, H, W)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 3, 6), (3, 2, 1, 5)])
def test_batchnorm2d(shape, training, dtype):
    assert_same_layer(lambda L: L.BatchNorm2d(shape[1]), [shape], dtype, training)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, H, W, K, S", [
    (1, 1, 4, 6, 2, 2), (2, 3, 7, 5, 2, 2), (1, 2, 9, 8, 3, 2), (2, 2, 6, 7, 2, 1),
    (2, 1, 8, 11, 2, 3)])
def test_maxpool2d(N, C, H, W, K, S, dtype):
    assert_same_layer(lambda L: L.MaxPool2d(K, S), [(N, C, H, W)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 9, 6)])
def test_relu(shape, dtype):
    assert_same_layer(lambda L: L.ReLU(), [shape], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape_a, shape_b", [((1, 1, 3, 5), (1, 2, 3, 5)),
                                              ((3, 4, 5, 2), (3, 1, 5, 2))])
def test_concat(shape_a, shape_b, dtype):
    assert_same_layer(lambda L: L.Concat(), [shape_a, shape_b], dtype)


def test_every_readable_layer_has_a_fast_one():
    for name in readable_layers.__all__:
        fast = getattr(fast_layers, name)
        assert issubclass(fast, getattr(readable_layers, name)) and fast.__name__ == name


# (N, Cin, Cout, H, W, K, P, conv bias): widths that take the direct route (rows of 16k
# pixels, float32) and ones that do not
FOLD_CASES = [(2, 3, 8, 6, 16, 3, 1, False), (1, 4, 11, 5, 32, 3, 1, True),
              (2, 2, 5, 7, 9, 3, 1, False), (1, 3, 4, 6, 6, 1, 0, True)]


@pytest.mark.parametrize("case", FOLD_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_folded_into_the_convolution_equals_the_two_layers(case, dtype):
    """Inference: BatchNormReLU2d.after_conv(conv, x) == bn(conv(x)), with non-trivial
    running statistics, in float32 and float64, and it keeps nothing for backward."""
    N, Cin, Cout, H, W, K, P, bias = case
    rng = np.random.default_rng(sum(case[:-1]))
    conv = fast_layers.Conv2d(Cin, Cout, K, padding=P, bias=bias, rng=rng).astype(dtype)
    bn = fast_layers.BatchNormReLU2d(Cout).astype(dtype)
    bn.weight.data[...] = rng.uniform(-1.5, 1.5, Cout)
    bn.bias.data[...] = rng.standard_normal(Cout)
    bn.running_mean[...] = rng.standard_normal(Cout)
    bn.running_var[...] = rng.uniform(0.2, 3.0, Cout)
    for m in (conv, bn):
        m.eval().set_grad_enabled(False)
    x = rng.standard_normal((N, Cin, H, W)).astype(dtype)
    expected = bn(conv(x))
    folded = bn.after_conv(conv, x)
    assert folded.dtype == dtype and folded.shape == expected.shape
    assert (folded >= 0).all()
    assert rel(folded, expected) < TOL[dtype]
    with pytest.raises(RuntimeError, match="gradients disabled"):
        conv.backward(np.ones_like(folded))


def test_batch_norm_fold_is_for_inference_only_and_checks_its_inputs():
    conv = fast_layers.Conv2d(2, 4, 3, padding=1, rng=np.random.default_rng(0))
    bn = fast_layers.BatchNormReLU2d(4)
    x = np.ones((1, 2, 4, 16), np.float32)
    with pytest.raises(RuntimeError, match="inference only"):
        bn.after_conv(conv, x)                       # training mode
    bn.eval().set_grad_enabled(False)
    conv.eval().set_grad_enabled(False)
    bad = x.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(FloatingPointError, match=r"Conv2d: input .* contains"):
        bn.after_conv(conv, bad)
    bn.running_var[1] = np.nan
    with pytest.raises(FloatingPointError, match="running_var"):
        bn.after_conv(conv, x)


def test_unet_inference_folds_and_equals_the_readable_unet():
    """The fast U-Net in eval mode with gradients off takes the folded path; its logits equal
    the readable U-Net's (same weights, trained statistics)."""
    import minunet as mu

    rng = np.random.default_rng(0)
    fast = mu.UNet(1, 3, depth=2, base_channels=8, rng=0, readable=False)
    readable = mu.UNet(1, 3, depth=2, base_channels=8, rng=0, readable=True)
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    fast.train()(x)                                   # running statistics move
    readable.load_state_dict(fast.state_dict())
    calls = []
    original = fast_layers.BatchNormReLU2d.after_conv

    def counting(self, conv, *inputs, **options):
        calls.append(self)
        return original(self, conv, *inputs, **options)

    fast_layers.BatchNormReLU2d.after_conv = counting
    try:
        fast.eval().set_grad_enabled(False)
        readable.eval().set_grad_enabled(False)
        y_fast, y_readable = fast(x), readable(x)
    finally:
        fast_layers.BatchNormReLU2d.after_conv = original
    assert len(calls) == 2 * (2 * 2 + 1)              # two per DoubleConv, five DoubleConvs
    assert rel(y_fast, y_readable) < 1e-5
    fast.set_grad_enabled(True)                       # gradients on: the layers run apart
    assert not fast.down[0]._folded()


def test_fold_of_two_parts_equals_fold_of_their_concatenation():
    rng = np.random.default_rng(3)
    conv = fast_layers.Conv2d(16, 8, 3, padding=1, bias=False, rng=rng)
    bn = fast_layers.BatchNormReLU2d(8)
    bn.running_mean[:] = rng.standard_normal(8)
    bn.running_var[:] = rng.uniform(0.5, 2.0, 8)
    for module in (conv, bn):
        module.eval().set_grad_enabled(False)
    a, b = (rng.standard_normal((2, 8, 32, 32)).astype(np.float32) for _ in range(2))
    np.testing.assert_array_equal(bn.after_conv(conv, a, b),
                                  bn.after_conv(conv, np.concatenate([a, b], axis=1)))
