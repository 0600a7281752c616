"""ReLU: kernels vs reference, gradient check away from the kink, the x == 0 convention, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet import layers as readable_layers
from minunet.kernels import layers as fast_layers
from minunet.kernels.activation import relu_backward, relu_forward
from minunet.kernels.reference import (
    relu_backward_reference,
    relu_forward_reference,
)

# every layer test runs on the readable layer (the math) and on the fast one (the kernels)
IMPLS = [pytest.param(readable_layers, id="readable"), pytest.param(fast_layers, id="fast")]


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 9, 6), (13,)])
def test_kernels_match_reference(shape, dtype, tol):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::5] = 0  # exact zeros: gradient 0 there in both
    out, probe = relu_forward(x)
    assert probe == 0
    assert out.dtype == dtype and rel(out, relu_forward_reference(x)) <= tol
    dout = rng.standard_normal(shape).astype(dtype)
    dx = relu_backward(dout, out)
    assert dx.dtype == dtype and rel(dx, relu_backward_reference(dout, out)) <= tol


@pytest.mark.parametrize("shape", [(1, 2, 3, 5), (3, 1, 4, 2)])
@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck_away_from_kink(L, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    x += np.sign(x) * 0.1  # |x| >= 0.1 >> finite-difference step
    mu.gradcheck(L.ReLU(), x, max_elements=None)


@pytest.mark.parametrize("L", IMPLS)
def test_gradient_at_exactly_zero_is_zero(L):
    relu = L.ReLU()
    x = np.array([[[[-1.0, 0.0, 2.0]]]])
    assert relu.forward(x).tolist() == [[[[0.0, 0.0, 2.0]]]]
    assert relu.backward(np.array([[[[3.0, 4.0, 5.0]]]])).tolist() == [[[[0.0, 0.0, 5.0]]]]


@pytest.mark.parametrize("L", IMPLS)
def test_matches_torch(L):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    relu = L.ReLU()
    out = relu.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    torch.relu(xt).backward(torch.tensor(dout))
    assert np.array_equal(out, torch.relu(xt).detach().numpy())
    assert np.array_equal(relu.backward(dout), xt.grad.numpy())


@pytest.mark.parametrize("L", IMPLS)
def test_bad_inputs(L):
    for dtype in (np.float32, np.float64):
        for bad, name in [(np.inf, "1 inf"), (-np.inf, "1 inf"), (np.nan, "1 NaN")]:
            x = np.ones(37, dtype)  # not a multiple of the vector width: the tail counts too
            for where in (0, 17, 36):
                x[:] = 1
                x[where] = bad
                with pytest.raises(FloatingPointError, match=rf"ReLU.*{name}"):
                    L.ReLU().forward(x)
    with pytest.raises(TypeError, match=r"ReLU.*numpy array"):
        L.ReLU().forward([1.0, 2.0])
    with pytest.raises(TypeError, match=r"ReLU.*float32 or float64"):
        L.ReLU().forward(np.array([1, 2]))
    with pytest.raises(RuntimeError, match="before forward"):
        L.ReLU().backward(np.zeros(3))
    relu = L.ReLU()
    relu.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ReLU.backward.*shape"):
        relu.backward(np.zeros((3, 2)))
