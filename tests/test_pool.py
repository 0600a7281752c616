"""MaxPool2d: kernels vs their NumPy reference, gradient check, tie rule, floor size, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet import layers as readable_layers
from minunet.kernels import layers as fast_layers
from minunet.kernels.pool import maxpool2d_backward, maxpool2d_forward, maxpool2x2_values
from minunet.kernels.reference import (
    maxpool2d_backward_reference,
    maxpool2d_forward_reference,
)

# every layer test runs on the readable layer (the math) and on the fast one (the kernels)
IMPLS = [pytest.param(readable_layers, id="readable"), pytest.param(fast_layers, id="fast")]


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def distinct(shape, rng, gap=0.1):
    """Values at least `gap` apart: no ties, so finite differences never cross a switch."""
    return (rng.permutation(int(np.prod(shape))).reshape(shape) * gap).astype(np.float64)


CASES = [  # (N, C, H, W, K, S): odd sizes, H != W, batch 1, overlapping and gapped windows
    (1, 1, 4, 6, 2, 2), (2, 3, 7, 5, 2, 2), (1, 2, 9, 8, 3, 2), (2, 2, 6, 7, 2, 1),
    (1, 3, 9, 10, 3, 3), (2, 1, 8, 11, 2, 3),
]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("N, C, H, W, K, S", CASES)
def test_kernels_match_reference(N, C, H, W, K, S, dtype, tol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    out, argmax, probe = maxpool2d_forward(x, K, S)
    out_ref, argmax_ref = maxpool2d_forward_reference(x, K, S)
    assert probe == 0
    assert out.dtype == dtype and out.shape == out_ref.shape
    assert rel(out, out_ref) <= tol and np.array_equal(argmax, argmax_ref)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = maxpool2d_backward(dout, argmax, H, W, K, S)
    dx_ref = maxpool2d_backward_reference(dout, argmax_ref, H, W, K, S)
    assert dx.dtype == dtype and rel(dx, dx_ref) <= tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 4, 6), (2, 3, 7, 5), (1, 2, 9, 9), (2, 40, 128, 128),
                                   (1, 17, 130, 66)])
def test_inference_pool_is_the_forward_without_winners(shape, dtype, monkeypatch):
    """maxpool2x2_values == maxpool2d_forward(x, 2, 2)'s output to the bit (ties, -0.0 against
    0.0, odd sizes), on one thread and on the pool's (the last two shapes are over
    threads.SERIAL_BYTES in float32 or float64, with an odd number of planes per item), and its
    probe is NaN where the forward's is; the fast layer takes it when gradients are off."""
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal(shape), 1).astype(dtype)   # many ties
    x.reshape(-1)[::7] = -0.0
    x.reshape(-1)[::11] = 0.0
    out, _, probe = maxpool2d_forward(x, 2, 2)
    fast, fast_probe = maxpool2x2_values(x)
    assert fast.dtype == dtype and fast.shape == out.shape
    assert np.array_equal(fast.view(np.uint8), out.view(np.uint8))   # the same bits
    assert probe == fast_probe == 0
    x.reshape(-1)[-1] = np.nan   # the last pixel (a trailing row's or column's if H or W is odd)
    assert np.isnan(maxpool2x2_values(x)[1]) and np.isnan(maxpool2d_forward(x, 2, 2)[2])
    calls = []
    monkeypatch.setattr(fast_layers, "maxpool2x2_values",
                        lambda a: calls.append(a.shape) or maxpool2x2_values(a))
    pool = fast_layers.MaxPool2d(2).set_grad_enabled(False)
    with pytest.raises(FloatingPointError):
        pool(x)
    x.reshape(-1)[-1] = 0.5
    assert np.array_equal(pool(x), maxpool2d_forward(x, 2, 2)[0])
    assert calls == [shape, shape]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C, H, W, K, S", [*CASES, (2, 40, 128, 128, 2, 2)])
def test_backward_plus_is_the_sum_in_one_pass(N, C, H, W, K, S, dtype):
    """maxpool2d_backward(..., plus=p) == maxpool2d_backward(...) + p to the bit (each value
    is one addition), on one thread and on the pool's threads (the last case is over
    threads.SERIAL_BYTES); the fast layer checks plus's shape."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    _, argmax, _ = maxpool2d_forward(x, K, S)
    dout = rng.standard_normal(argmax.shape).astype(dtype)
    plus = rng.standard_normal((N, C, H, W)).astype(dtype)
    expected = maxpool2d_backward(dout, argmax, H, W, K, S) + plus
    np.testing.assert_array_equal(maxpool2d_backward(dout, argmax, H, W, K, S, plus=plus),
                                  expected)
    pool = fast_layers.MaxPool2d(K, S)
    pool(x)
    with pytest.raises(ValueError, match="plus must be"):
        pool.backward(dout, plus=plus[:, :, :-1])


@pytest.mark.parametrize("N, C, H, W, K, S", CASES)
def test_kernels_break_ties_like_argmax(N, C, H, W, K, S):
    """Values from {0, 1, 2}: most windows hold ties; the winner must be np.argmax's (first)."""
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, (N, C, H, W)).astype(np.float32)
    out, argmax, _ = maxpool2d_forward(x, K, S)
    out_ref, argmax_ref = maxpool2d_forward_reference(x, K, S)
    assert np.array_equal(out, out_ref) and np.array_equal(argmax, argmax_ref)


@pytest.mark.parametrize("N, C, H, W, K, S", CASES)
@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck(L, N, C, H, W, K, S):
    x = distinct((N, C, H, W), np.random.default_rng(1))
    report = mu.gradcheck(L.MaxPool2d(K, S), x, max_elements=None)
    assert report.tensors[0].rel_error < 1e-7


@pytest.mark.parametrize("L", IMPLS)
def test_tie_sends_gradient_to_first_maximum_in_row_major_order(L):
    x = np.zeros((1, 1, 2, 4))
    x[0, 0] = [[1.0, 5.0, 3.0, 3.0],
               [5.0, 5.0, 3.0, 2.0]]  # window 0: three 5s; window 1: three 3s
    pool = L.MaxPool2d(2)
    out = pool.forward(x)
    assert out.tolist() == [[[[5.0, 3.0]]]]
    dx = pool.backward(np.array([[[[10.0, 20.0]]]]))
    expected = np.zeros_like(x)
    expected[0, 0, 0, 1] = 10.0  # first 5 in (row 0 left to right, then row 1)
    expected[0, 0, 0, 2] = 20.0  # first 3
    assert np.array_equal(dx, expected)


@pytest.mark.parametrize("L", IMPLS)
def test_floor_output_size_and_default_stride(L):
    pool = L.MaxPool2d(2)
    assert pool.stride == 2
    x = np.random.default_rng(2).standard_normal((2, 3, 7, 9)).astype(np.float32)
    assert pool.forward(x).shape == (2, 3, 3, 4)
    assert pool.backward(np.ones((2, 3, 3, 4), np.float32))[:, :, 6, :].sum() == 0  # dropped row


@pytest.mark.parametrize("L", IMPLS)
def test_matches_torch(L):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8))
    for K, S in [(2, 2), (3, 2), (3, 1)]:
        pool = L.MaxPool2d(K, S)
        out = pool.forward(x)
        dout = rng.standard_normal(out.shape)
        xt = torch.tensor(x, requires_grad=True)
        yt = torch.nn.functional.max_pool2d(xt, K, S)
        yt.backward(torch.tensor(dout))
        assert np.allclose(out, yt.detach().numpy(), rtol=0, atol=0)
        assert np.allclose(pool.backward(dout), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("L", IMPLS)
def test_bad_inputs(L):
    pool = L.MaxPool2d(2)
    with pytest.raises(ValueError, match=r"MaxPool2d.*4 dimensions"):
        pool.forward(np.zeros((3, 4, 4)))
    for K, S in [(2, 2), (3, 2), (2, 3)]:  # the 2x2 loop and the general one
        for where in [(1, 2), (4, 0), (0, 4)]:  # inside a window, trailing row, trailing column
            for bad, name in [(np.nan, "1 NaN"), (-np.inf, "1 inf")]:
                x = np.zeros((1, 1, 5, 5))
                x[(0, 0, *where)] = bad
                with pytest.raises(FloatingPointError, match=rf"MaxPool2d.*{name}"):
                    L.MaxPool2d(K, S).forward(x)
    with pytest.raises(ValueError, match=r"smaller than the 2x2 window"):
        pool.forward(np.zeros((1, 1, 1, 4)))
    with pytest.raises(TypeError, match="float32 or float64"):
        pool.forward(np.zeros((1, 1, 4, 4), np.int32))
    with pytest.raises(RuntimeError, match="before forward"):
        L.MaxPool2d(2).backward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="kernel_size"):
        L.MaxPool2d(17)
