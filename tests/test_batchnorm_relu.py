"""BatchNormReLU2d (batch norm + ReLU fused, a fast layer outside the public API): kernels vs
references, equal to the two readable layers in sequence (train and eval, values, gradients,
running stats), gradient check away from the kink."""

import numpy as np
import pytest

import minunet as mu
from minunet.kernels.batchnorm import (
    batchnorm_relu_backward_input,
    batchnorm_relu_backward_reduce,
    batchnorm_relu_forward,
    batchnorm_relu_train_backward,
    batchnorm_relu_train_forward,
    batchnorm_stats,
    train_coefficients,
)
from minunet.kernels.layers import BatchNormReLU2d
from minunet.kernels.reference import (
    batchnorm_relu_backward_input_reference,
    batchnorm_relu_backward_reduce_reference,
    batchnorm_relu_forward_reference,
)


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


SHAPES = [(1, 3, 5, 7), (2, 4, 3, 6), (3, 2, 1, 5)]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_reference(shape, dtype, tol):
    rng = np.random.default_rng(0)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    scale, shift, a, mg, k = (rng.standard_normal(C).astype(dtype) for _ in range(5))
    y, probe = batchnorm_relu_forward(x, scale, shift)
    assert probe == 0 and y.dtype == dtype
    assert rel(y, batchnorm_relu_forward_reference(x, scale, shift)) <= tol
    assert 0 < (y > 0).mean() < 1  # the mask matters in this test
    mean = batchnorm_stats(x)[0]
    s1, s2 = batchnorm_relu_backward_reduce(dout, y, x, mean)
    r1, r2 = batchnorm_relu_backward_reduce_reference(dout, y, x, mean)
    assert rel(s1, r1) <= tol and rel(s2, r2) <= tol
    m = mean.astype(dtype)
    dx = batchnorm_relu_backward_input(dout, y, x, m, a, mg, k)
    assert dx.dtype == dtype
    assert rel(dx, batchnorm_relu_backward_input_reference(dout, y, x, m, a, mg, k)) <= tol


@pytest.mark.parametrize("dtype, tol", [(np.float32, 0.0), (np.float64, 1e-14)])
@pytest.mark.parametrize("shape", [*SHAPES, (8, 16, 96, 96)])  # the last: 2 threads
def test_train_kernels_equal_the_two_pass_kernels(shape, dtype, tol):
    """Channel by channel, the same values as statistics + forward and reduce + input (the
    same bits in float32, so training is unchanged by the fusion)."""
    rng = np.random.default_rng(5)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.uniform(-0.3, 0.3, C).astype(dtype)
    eps = 1e-5
    y, mean, var = batchnorm_relu_train_forward(x, gamma, beta, eps)
    mean2, var2 = batchnorm_stats(x)
    assert np.array_equal(mean, mean2) and np.array_equal(var, var2)
    istd = 1.0 / np.sqrt(var2 + eps)
    scale = gamma * istd
    y2, _ = batchnorm_relu_forward(x, scale.astype(dtype), (beta - mean2 * scale).astype(dtype))
    assert y.dtype == dtype and rel(y, y2) <= tol
    assert 0 < (y > 0).mean() < 1  # the mask matters in this test
    dx, sum_g, sum_gxc = batchnorm_relu_train_backward(
        dout, x, mean, istd, gamma, *train_coefficients(gamma, beta, mean, var, eps, dtype))
    s1, s2 = batchnorm_relu_backward_reduce(dout, y, x, mean2)
    assert np.array_equal(sum_g, s1) and np.array_equal(sum_gxc, s2)
    M = x.size // C
    dx2 = batchnorm_relu_backward_input(dout, y, x, mean2.astype(dtype),
                                        (gamma * istd).astype(dtype), (s1 / M).astype(dtype),
                                        (istd * (s2 * istd) / M).astype(dtype))
    assert dx.dtype == dtype and rel(dx, dx2) <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_train_backward_recomputes_the_mask_of_the_forward_to_the_bit(dtype):
    """The train-mode backward reads no y: its ReLU mask x * scale + shift > 0 must be the
    forward's y > 0 exactly, also for inputs at the threshold, where one rounding more or
    less flips it. x is put on and around -shift / scale (t = 0 and its neighbours); the
    sums, which every flipped pixel would change, must equal those of the y-reading kernel to
    the bit."""
    rng = np.random.default_rng(11)
    shape = (3, 4, 16, 32)
    C = shape[1]
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.uniform(-0.3, 0.3, C).astype(dtype)
    base = rng.standard_normal(shape).astype(dtype)
    mean, var = batchnorm_stats(base)
    scale, shift = train_coefficients(gamma, beta, mean, var, 1e-5, dtype)
    threshold = (-shift / scale).astype(dtype)[None, :, None, None]
    x = base.copy()
    x[:, :, :8] = threshold  # half of each channel on the threshold, nudged by 0-2 ulps
    x[:, :, :8] = np.nextafter(x[:, :, :8], rng.choice([-np.inf, np.inf], x[:, :, :8].shape))
    x[:, :, :4] = threshold
    y, mean, var = batchnorm_relu_train_forward(x, gamma, beta, 1e-5)
    scale, shift = train_coefficients(gamma, beta, mean, var, 1e-5, dtype)
    assert 0 < (y[:, :, :8] > 0).mean() < 1  # the threshold pixels fall on both sides
    dout = rng.standard_normal(shape).astype(dtype)
    istd = 1.0 / np.sqrt(var + 1e-5)
    dx, sum_g, sum_gxc = batchnorm_relu_train_backward(dout, x, mean, istd, gamma, scale,
                                                       shift)
    s1, s2 = batchnorm_relu_backward_reduce(dout, y, x, mean)
    np.testing.assert_array_equal(sum_g, s1)
    np.testing.assert_array_equal(sum_gxc, s2)
    M = x.size // C
    dx2 = batchnorm_relu_backward_input(dout, y, x, mean.astype(dtype),
                                        (gamma * istd).astype(dtype), (s1 / M).astype(dtype),
                                        (istd * (s2 * istd) / M).astype(dtype))
    np.testing.assert_allclose(dx, dx2, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=0)  # (the coefficients rounded a little differently)


def test_train_forward_reveals_nan_in_its_statistics():
    x = np.ones((2, 3, 4, 4), np.float32)
    x[1, 2, 3, 3] = np.nan
    _, mean, var = batchnorm_relu_train_forward(x, np.ones(3, np.float32),
                                                np.zeros(3, np.float32), 1e-5)
    assert np.isfinite(mean[:2]).all() and np.isnan(mean[2]) and np.isnan(var[2])


def randomise(bn, rng):
    C = bn.num_features
    bn.weight.data[:] = rng.uniform(0.5, 1.5, C)
    bn.bias.data[:] = rng.uniform(-0.3, 0.3, C)
    bn.running_mean[:] = rng.standard_normal(C)
    bn.running_var[:] = rng.uniform(0.5, 2.0, C)
    return bn


@pytest.mark.parametrize("training", [True, False])
def test_equals_batchnorm_then_relu(training):
    rng = np.random.default_rng(1)
    fused = randomise(BatchNormReLU2d(3), rng).astype(np.float64).train(training)
    bn = mu.BatchNorm2d(3).astype(np.float64).train(training)
    bn.load_state_dict(fused.state_dict())
    relu = mu.ReLU()
    for _ in range(2):
        x = rng.standard_normal((2, 3, 4, 5)) * 2 + 1
        dout = rng.standard_normal(x.shape)
        y = fused.forward(x)
        assert rel(y, relu.forward(bn.forward(x))) < 1e-12
        assert rel(fused.backward(dout), bn.backward(relu.backward(dout))) < 1e-12
    for name, p in fused.named_parameters():
        assert rel(p.grad, dict(bn.named_parameters())[name].grad) < 1e-12
    for (name, b), (_, b2) in zip(fused.named_buffers(), bn.named_buffers(), strict=True):
        assert rel(b, b2) < 1e-14, name


def away_from_kink(shape, rng):
    """Each channel holds values and their negatives (mean exactly 0), all with |v| >= 1, so
    after normalisation |xhat| >= 1/std, far from where the ReLU switches (beta is small)."""
    N, C, H, W = shape
    half = rng.uniform(1.0, 2.0, (C, N * H * W // 2)) * rng.choice([-1, 1], (C, N * H * W // 2))
    values = np.concatenate([half, -half], axis=1)  # (C, N*H*W)
    values = rng.permuted(values, axis=1)
    return values.reshape(C, N, H, W).transpose(1, 0, 2, 3).copy()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 2, 5), (2, 2, 3, 2)])
def test_gradcheck(shape, training):
    rng = np.random.default_rng(2)
    bn = randomise(BatchNormReLU2d(shape[1]), rng).train(training)
    bn.bias.data[:] = rng.uniform(-0.05, 0.05, shape[1])
    if not training:  # running stats that keep xhat away from 0 too
        bn.running_mean[:] = 0
        bn.running_var[:] = 1
    x = away_from_kink(shape, rng)
    mu.gradcheck(bn, x, max_elements=None)


def test_bad_inputs_name_the_fused_layer():
    bn = BatchNormReLU2d(2)
    with pytest.raises(ValueError, match=r"BatchNormReLU2d\(2\) expected 2 input channels"):
        bn.forward(np.zeros((1, 3, 2, 2), np.float32))
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 1, 1, 1] = np.nan
    with pytest.raises(FloatingPointError, match=r"BatchNormReLU2d\(2\).*1 NaN"):
        bn.eval().forward(x)
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNormReLU2d(2).backward(np.zeros((1, 2, 2, 2), np.float32))
