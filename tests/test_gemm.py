"""The register-tiled float32 products (kernels/gemm.py, simd.py) and the convolution's blocked
route through them (conv_band, weight_band): against float64 products and the NumPy reference,
at every remainder (channels not a multiple of 8, pixels not a multiple of 48, several pieces
and bands), and the NaN/inf probe on that route."""

import subprocess
import sys

import numpy as np
import pytest

from minunet.kernels import conv as kernels
from minunet.kernels import gemm, reference
from minunet.kernels import layers as fast_layers


def blocked(col: np.ndarray) -> np.ndarray:
    """(Kd, P) columns -> (ceil(P / 48), Kd, 48) blocks, zero past P (im2col's blocked layout)."""
    kd, pixels = col.shape
    blocks = -(-pixels // gemm.BLOCK)
    padded = np.zeros((kd, blocks * gemm.BLOCK), col.dtype)
    padded[:, :pixels] = col
    return np.ascontiguousarray(padded.reshape(kd, blocks, gemm.BLOCK).transpose(1, 0, 2))


@pytest.mark.parametrize("cout", [1, 3, 8, 13, 16, 24])
@pytest.mark.parametrize("kd, pixels", [(9, 16), (27, 47), (144, 48), (36, 49), (72, 480)])
def test_blocked_product_matches_float64(cout, kd, pixels):
    rng = np.random.default_rng(cout * 1000 + kd + pixels)
    w = rng.standard_normal((cout, kd)).astype(np.float32)
    col = rng.standard_normal((kd, pixels)).astype(np.float32)
    # y is a window of a bigger array (like a band of one image's output): what lies around
    # it must stay untouched
    canvas = np.full((cout + 2, pixels + 20), 7.0, np.float32)
    y = canvas[1:-1, 5:5 + pixels]
    gemm.blocked_product(np.ascontiguousarray(w.T), blocked(col), y,
                         np.empty((gemm.TILE, gemm.BLOCK), np.float32))
    expected = w.astype(np.float64) @ col.astype(np.float64)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * np.sqrt(kd))
    outside = canvas.copy()
    outside[1:-1, 5:5 + pixels] = 7.0
    assert (outside == 7.0).all()


@pytest.mark.parametrize("cout", [16, 32])
@pytest.mark.parametrize("kd, pixels", [(24, 16), (27, 64), (144, 96), (50, 480)])
def test_blocked_weight_product_matches_float64(cout, kd, pixels):
    rng = np.random.default_rng(cout + kd * 7 + pixels)
    col = rng.standard_normal((kd, pixels)).astype(np.float32)
    g = rng.standard_normal((cout, pixels)).astype(np.float32)
    colb = blocked(col)
    g_t = np.zeros((colb.shape[0] * gemm.BLOCK, cout), np.float32)
    g_t[:pixels] = g.T
    dw_t = np.ones((kd, cout), np.float32)  # the kernel adds to what is there
    gemm.blocked_weight_product(colb, g_t, dw_t)
    expected = 1 + col.astype(np.float64) @ g.T.astype(np.float64)
    np.testing.assert_allclose(dw_t, expected, rtol=0, atol=1e-5 * np.sqrt(pixels))


@pytest.fixture
def blocked_route(monkeypatch):
    """The blocked route on any CPU (without AVX-512 it is only slower), with tiny bands and
    pieces so that every item has several pieces and every image several bands."""
    monkeypatch.setattr(kernels, "USE_BLOCKED", True)
    monkeypatch.setattr(kernels, "PIECE_BYTES", 1)       # one block of 48 pixels per piece
    monkeypatch.setattr(kernels, "COL_BYTES", 40_000)


# (N, Cin, Cout, H, W, K, P): output widths multiples of 16 (the blocked route), Cout around
# the tile of 8 and the weight gradient's limit of 32, Cin*K*K below and above its tile of 24
BLOCKED_CASES = [
    (2, 3, 5, 7, 32, 3, 1),
    (1, 16, 16, 9, 16, 3, 1),
    (2, 4, 33, 5, 48, 3, 1),
    (1, 2, 8, 6, 16, 3, 1),    # Cin*K*K = 18 < 24: BLAS for the weight gradient
    (1, 3, 4, 5, 18, 5, 1),    # K = 5, P = 1: Wo = 16
]


@pytest.mark.parametrize("case", BLOCKED_CASES)
def test_blocked_convolution_matches_reference(blocked_route, case):
    N, Cin, Cout, H, W, K, P = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, Cin, H, W)).astype(np.float32)
    w = rng.standard_normal((Cout, Cin, K, K)).astype(np.float32)
    b = rng.standard_normal(Cout).astype(np.float32)
    Wo = kernels.conv_output_size(W, K, 1, P)
    assert kernels._blocked(np.float32, K, 1, P, Wo)

    y = kernels.conv2d_forward(x, w, b, 1, P)
    y_ref = reference.conv2d_forward_reference(x, w, b, 1, P)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5 * np.sqrt(Cin * K * K))

    dy = rng.standard_normal(y.shape).astype(np.float32)
    dw = kernels.conv2d_backward_weight(x, dy, K, 1, P)
    dw_ref = reference.conv2d_backward_weight_reference(x, dy, K, 1, P)
    np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=1e-5 * np.sqrt(y[0, 0].size * N))
    dx = kernels.conv2d_backward_input(dy, w, 1, P, H, W)
    dx_ref = reference.conv2d_backward_input_reference(dy, w, 1, P, H, W)
    np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-5 * np.sqrt(Cout * K * K))


def test_the_route_is_chosen_by_dtype_stride_and_width(monkeypatch):
    monkeypatch.setattr(kernels, "USE_BLOCKED", True)
    assert kernels._blocked(np.float32, 3, 1, 1, 64)
    assert not kernels._blocked(np.float64, 3, 1, 1, 64)   # gradient checks: BLAS, float64
    assert not kernels._blocked(np.float32, 3, 1, 1, 8)    # rows not a multiple of 16 wide
    assert not kernels._blocked(np.float32, 2, 2, 0, 64)   # stride 2
    assert not kernels._blocked(np.float32, 1, 1, 0, 64)   # 1x1: the columns are x itself
    assert kernels._blocked_weight(np.float32, 3, 1, 1, 64, 16, 32)
    assert not kernels._blocked_weight(np.float32, 3, 1, 1, 64, 16, 64)
    assert not kernels._blocked_weight(np.float32, 3, 1, 1, 64, 2, 16)
    monkeypatch.setattr(kernels, "USE_BLOCKED", False)
    assert not kernels._blocked(np.float32, 3, 1, 1, 64)


def test_minunet_gemm_blas_turns_the_blocked_route_off():
    code = "import minunet.kernels.conv as c; print(c.USE_BLOCKED)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"MINUNET_GEMM": "blas", "PATH": ""}, check=True)
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_blocked_convolution_finds_a_non_finite_value_anywhere(blocked_route, bad):
    layer = fast_layers.Conv2d(2, 3, 3, padding=1, rng=np.random.default_rng(0))
    for position in np.ndindex(1, 2, 5, 16):
        x = np.ones((1, 2, 5, 16), np.float32)
        x[position] = bad
        with pytest.raises(FloatingPointError, match=r"Conv2d: input .* contains"):
            layer(x)
        y = layer(np.ones((1, 2, 5, 16), np.float32))
        dy = np.ones_like(y)
        dy[position[0], position[1] + 1] = bad
        with pytest.raises(FloatingPointError, match=r"Conv2d.backward: dout .* contains"):
            layer.backward(dy)
