"""Concat: values, gradient check, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet import layers as readable_layers
from minunet.kernels import layers as fast_layers
from minunet.kernels.concat import concat_channels
from minunet.kernels.reference import (
    concat_channels_reference,
)

# every layer test runs on the readable layer (the math) and on the fast one (the kernels)
IMPLS = [pytest.param(readable_layers, id="readable"), pytest.param(fast_layers, id="fast")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape_a, shape_b", [((1, 1, 3, 5), (1, 2, 3, 5)),
                                              ((3, 4, 5, 2), (3, 1, 5, 2))])
def test_kernel_matches_reference(shape_a, shape_b, dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(shape_a).astype(dtype)
    b = rng.standard_normal(shape_b).astype(dtype)
    out, probe = concat_channels(a, b)
    assert probe == 0 and out.dtype == dtype
    assert np.array_equal(out, concat_channels_reference(a, b))  # a copy: exact in any dtype


@pytest.mark.parametrize("L", IMPLS)
def test_forward_joins_channels_and_backward_splits(L):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
    b = rng.standard_normal((2, 1, 5, 4)).astype(np.float32)
    cat = L.Concat()
    out = cat.forward(a, b)
    assert out.shape == (2, 4, 5, 4) and out.dtype == np.float32
    assert np.array_equal(out[:, :3], a) and np.array_equal(out[:, 3:], b)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    da, db = cat.backward(dout)
    assert np.array_equal(da, dout[:, :3]) and np.array_equal(db, dout[:, 3:])
    assert da.flags.c_contiguous and db.flags.c_contiguous
    assert not np.shares_memory(da, dout) and not np.shares_memory(db, dout)


@pytest.mark.parametrize("shape_a, shape_b", [((1, 2, 3, 5), (1, 3, 3, 5)),
                                              ((2, 1, 4, 3), (2, 2, 4, 3))])
@pytest.mark.parametrize("L", IMPLS)
def test_gradcheck(L, shape_a, shape_b):
    rng = np.random.default_rng(1)
    report = mu.gradcheck(L.Concat(), rng.standard_normal(shape_a),
                          rng.standard_normal(shape_b), max_elements=None)
    assert [t.name for t in report.tensors] == ["input 0", "input 1"]


@pytest.mark.parametrize("L", IMPLS)
def test_bad_inputs(L):
    cat = L.Concat()
    with pytest.raises(ValueError, match=r"Concat.*N, H and W.*\(1, 2, 4, 4\).*\(1, 2, 4, 5\)"):
        cat.forward(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 5)))
    with pytest.raises(ValueError, match=r"Concat.*N, H and W"):
        cat.forward(np.zeros((2, 2, 4, 4)), np.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"Concat.*second input.*4 dimensions"):
        cat.forward(np.zeros((1, 2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(TypeError, match=r"Concat.*dtypes"):
        cat.forward(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4), np.float32))
    with pytest.raises(FloatingPointError, match=r"Concat.*first input.*NaN"):
        cat.forward(np.full((1, 1, 2, 2), np.nan), np.zeros((1, 1, 2, 2)))
    b = np.zeros((2, 3, 2, 3), np.float32)
    b[1, 2, 1, 2] = -np.inf  # the very last value
    with pytest.raises(FloatingPointError, match=r"Concat.*second input.*1 inf"):
        cat.forward(np.zeros((2, 1, 2, 3), np.float32), b)
    with pytest.raises(RuntimeError, match="before forward"):
        L.Concat().backward(np.zeros((1, 2, 2, 2)))


@pytest.mark.parametrize("L", IMPLS)
def test_backward_returns_new_arrays_even_for_batch_1(L):
    """With N = 1, dout[:, :Ca] is already contiguous: a careless split returns a view."""
    rng = np.random.default_rng(3)
    cat = L.Concat()
    out = cat.forward(rng.standard_normal((1, 2, 3, 4)), rng.standard_normal((1, 3, 3, 4)))
    dout = rng.standard_normal(out.shape)
    da, db = cat.backward(dout)
    assert not np.shares_memory(da, dout) and not np.shares_memory(db, dout)
    da[...] = 7  # the caller may change them freely
    assert not np.any(dout == 7)
