"""The register-tiled float32 products (kernels/gemm.py, simd.py) and the convolution's direct
route through them (fill_band, then the products): against float64 products and the NumPy reference,
at every remainder (channels not a multiple of the tiles, pixels not a multiple of 48, bands
of every height), and the NaN/inf probe on that route."""

import subprocess
import sys

import numpy as np
import pytest

from minunet.kernels import conv as kernels
from minunet.kernels import gemm, reference
from minunet.kernels import layers as fast_layers


def windows(band: np.ndarray, K: int, rows: int, Wo: int) -> np.ndarray:
    """col (C*K*K, rows*Wo): col[(c*K + kh)*K + kw, r*Wo + j] = band[c, r + kh, j + kw]."""
    C = band.shape[0]
    col = np.empty((C, K, K, rows, Wo), band.dtype)
    for kh in range(K):
        for kw in range(K):
            col[:, kh, kw] = band[:, kh:kh + rows, kw:kw + Wo]
    return col.reshape(C * K * K, rows * Wo)


def random_band(rng, C: int, K: int, rows: int, Wo: int) -> np.ndarray:
    # a few spare columns on the right, as conv.band_shape gives for P < K - 1
    return rng.standard_normal((C, rows + K - 1, Wo + K - 1 + 3)).astype(np.float32)


@pytest.mark.parametrize("cout", [1, 3, 8, 13, 16, 24])
@pytest.mark.parametrize("C, K, rows, Wo", [(1, 3, 1, 16), (3, 3, 2, 16), (2, 3, 3, 32),
                                            (16, 3, 2, 48), (4, 3, 5, 16), (5, 3, 1, 80)])
def test_direct_product_matches_float64(cout, C, K, rows, Wo):
    """Pixel counts of 1 to 5 vectors (tiles of 3, and the partial last tile), channels around
    the tile of 8; y is a window of a bigger array, whose rest must stay untouched."""
    rng = np.random.default_rng(cout * 1000 + C * 100 + K * 10 + rows)
    band = random_band(rng, C, K, rows, Wo)
    w = rng.standard_normal((cout, C * K * K)).astype(np.float32)
    pixels = rows * Wo
    canvas = np.full((cout + 2, pixels + 20), 7.0, np.float32)
    y = canvas[1:-1, 5:5 + pixels]
    spare = np.empty((gemm.TILE, gemm.BLOCK), np.float32)
    no_bias = np.zeros(0, np.float32)
    gemm.direct_product(band, gemm.pack_weights(w.T), y, K, Wo, spare, no_bias, False)
    expected = w.astype(np.float64) @ windows(band, K, rows, Wo).astype(np.float64)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5 * np.sqrt(C * K * K))
    outside = canvas.copy()
    outside[1:-1, 5:5 + pixels] = 7.0
    assert (outside == 7.0).all()

    # the epilogue: + bias per output channel, then the ReLU
    bias = rng.standard_normal(cout).astype(np.float32)
    gemm.direct_product(band, gemm.pack_weights(w.T), y, K, Wo, spare, bias, True)
    np.testing.assert_allclose(y, np.maximum(expected + bias[:, None], 0), rtol=0,
                               atol=1e-5 * np.sqrt(C * K * K))
    assert (y >= 0).all() and (canvas[1:-1, :5] == 7.0).all()


@pytest.mark.parametrize("cout", [1, 2, 3, 4, 16, 17])
@pytest.mark.parametrize("C, rows, Wo", [(1, 1, 16), (3, 2, 32), (8, 5, 48), (2, 3, 16),
                                         (4, 7, 32)])
def test_direct_weight_product_matches_float64(cout, C, rows, Wo):
    """Channels around the tile of 2 (an odd last tile is computed but kept once), rows
    around the step of 3 (the rows left over go one at a time)."""
    rng = np.random.default_rng(cout + C * 7 + rows * 31 + Wo)
    band = random_band(rng, C, 3, rows, Wo)
    g = rng.standard_normal((cout, rows * Wo)).astype(np.float32)
    dw = np.ones((cout, C * 9), np.float32)  # the kernel adds to what is there
    gemm.direct_weight_product(band[None], g[None], dw, Wo, 0, cout, C)
    expected = 1 + g.astype(np.float64) @ windows(band, 3, rows, Wo).T.astype(np.float64)
    np.testing.assert_allclose(dw, expected, rtol=0, atol=1e-5 * np.sqrt(rows * Wo))


@pytest.mark.parametrize("cout, o_start, o_stop, c_block", [(5, 0, 5, 2), (6, 2, 5, 1),
                                                             (4, 1, 4, 3), (17, 0, 17, 7)])
def test_direct_weight_product_over_images_channel_blocks_and_an_output_range(
        cout, o_start, o_stop, c_block):
    """B bands swept as one (the small-image route), input channels in blocks, and only
    the output channels [o_start, o_stop) added to (the rest of dw untouched)."""
    rng = np.random.default_rng(cout + 3 * o_start + 11 * c_block)
    C, rows, Wo, B = 5, 4, 32, 3
    bands = np.stack([random_band(rng, C, 3, rows, Wo) for _ in range(B)])
    g = rng.standard_normal((B, cout, rows * Wo)).astype(np.float32)
    dw = np.ones((cout, C * 9), np.float32)
    gemm.direct_weight_product(bands, g, dw, Wo, o_start, o_stop, c_block)
    expected = np.ones((cout, C * 9))
    for b in range(B):
        expected[o_start:o_stop] += (g[b, o_start:o_stop].astype(np.float64)
                                     @ windows(bands[b], 3, rows, Wo).T.astype(np.float64))
    np.testing.assert_allclose(dw, expected, rtol=0, atol=1e-5 * np.sqrt(B * rows * Wo))


@pytest.fixture(params=["tall bands", "one row per band"])
def direct_route(monkeypatch, request):
    """The direct route on any CPU (without AVX-512 it is only slower), with bands of every
    size down to one output row."""
    monkeypatch.setattr(kernels, "USE_DIRECT", True)
    if request.param == "one row per band":
        monkeypatch.setattr(kernels, "COL_BYTES", 1)
        monkeypatch.setattr(kernels, "WEIGHT_BAND_BYTES", 1)
        monkeypatch.setattr(kernels, "SMALL_BLOCK_BYTES", 1)  # one input channel per block


# (N, Cin, Cout, H, W, K, P, weight gradient direct?): output widths multiples of 16 (the
# direct route), Cout around the tiles of 8 and 3; the weight gradient is direct for every
# 3x3 kernel: the first three cases are small images (conv.SMALL_IMAGE_PIXELS: all images
# swept at once), the last three are cut into bands
DIRECT_CASES = [
    (2, 3, 5, 7, 32, 3, 1, True),
    (1, 16, 16, 9, 16, 3, 1, True),
    (2, 4, 33, 5, 48, 3, 1, True),
    (1, 3, 5, 33, 32, 3, 1, True),
    (2, 1, 8, 32, 64, 3, 1, True),
    (1, 2, 3, 36, 30, 3, 2, True),   # P = 2: 38 x 32 output pixels
]


@pytest.mark.parametrize("case", DIRECT_CASES)
def test_direct_convolution_matches_reference(direct_route, case):
    N, Cin, Cout, H, W, K, P, direct_weight = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, Cin, H, W)).astype(np.float32)
    w = rng.standard_normal((Cout, Cin, K, K)).astype(np.float32)
    b = rng.standard_normal(Cout).astype(np.float32)
    Ho, Wo = kernels.conv_output_size(H, K, 1, P), kernels.conv_output_size(W, K, 1, P)
    assert kernels._direct(np.float32, K, 1, P, Wo)
    assert kernels._direct_weight(np.float32, K, 1, P, Ho, Wo) == direct_weight

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
    monkeypatch.setattr(kernels, "USE_DIRECT", True)
    assert kernels._direct(np.float32, 3, 1, 1, 64)
    assert not kernels._direct(np.float64, 3, 1, 1, 64)   # gradient checks: BLAS, float64
    assert not kernels._direct(np.float32, 3, 1, 1, 8)    # rows not a multiple of 16 wide
    assert not kernels._direct(np.float32, 2, 2, 0, 64)   # stride 2
    assert not kernels._direct(np.float32, 1, 1, 0, 64)   # 1x1: the columns are x itself
    assert not kernels._direct(np.float32, 5, 1, 2, 64)   # 3x3 only (one compiled copy)
    with pytest.raises(ValueError, match="3x3"):
        gemm.direct_product(np.zeros((1, 5, 32), np.float32), gemm.pack_weights(
            np.zeros((25, 8), np.float32)), np.zeros((8, 16), np.float32), 5, 16,
            np.zeros((8, 48), np.float32), np.zeros(0, np.float32), False)
    assert kernels._direct_weight(np.float32, 3, 1, 1, 32, 64)
    assert not kernels._direct_weight(np.float32, 5, 1, 2, 32, 64)   # 3x3 only
    assert kernels._direct_weight(np.float32, 3, 1, 1, 16, 16)   # small images too
    monkeypatch.setattr(kernels, "USE_DIRECT", False)
    assert not kernels._direct(np.float32, 3, 1, 1, 64)


def test_minunet_gemm_blas_turns_the_direct_route_off():
    code = "import minunet.kernels.conv as c; print(c.USE_DIRECT)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"MINUNET_GEMM": "blas", "PATH": ""}, check=True)
    assert run.stdout.strip() == "False"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_direct_convolution_finds_a_non_finite_value_anywhere(direct_route, bad):
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


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_direct_items_are_each_run_once_whatever_the_threads(monkeypatch, n_threads):
    """The direct route's threads take (image, band) items from one atomic counter inside
    compiled code: with one-row bands and 1 to 3 threads, every output row is written once,
    right, and the NaN probe of every item is seen."""
    from minunet.kernels import threads

    monkeypatch.setattr(kernels, "USE_DIRECT", True)
    monkeypatch.setattr(kernels, "COL_BYTES", 1)
    before = threads.get_num_threads()
    threads.set_num_threads(n_threads)
    try:
        rng = np.random.default_rng(n_threads)
        x = rng.standard_normal((3, 4, 11, 32)).astype(np.float32)
        w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
        y = kernels.conv2d_forward(x, w, None, 1, 1)
        y_ref = reference.conv2d_forward_reference(x, w, None, 1, 1)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-4)
        x[2, 3, 10, 31] = np.nan                      # the last item's last value
        with pytest.raises(FloatingPointError, match="1 NaN"):
            kernels.conv2d_forward(x, w, None, 1, 1, who="Conv2d")
    finally:
        threads.set_num_threads(before)


# ------------------------------------------------------------------ two parts, no concatenation
# (N, Ca, Cb, Cout, H, W): the U-Net's halves (Ca = Cb, multiples of 8) and uneven ones
PARTS_CASES = [(2, 8, 8, 8, 32, 32), (1, 5, 11, 6, 33, 48), (2, 3, 1, 9, 7, 16)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # direct route, BLAS route
@pytest.mark.parametrize("case", PARTS_CASES)
def test_two_parts_equal_their_concatenation_to_the_bit(direct_route, case, dtype):
    """conv(a, b) is conv(concat(a, b)) without building it; backward splits dx the same."""
    N, Ca, Cb, Cout, H, W = case
    rng = np.random.default_rng(sum(case))
    a = rng.standard_normal((N, Ca, H, W)).astype(dtype)
    b = rng.standard_normal((N, Cb, H, W)).astype(dtype)
    joined = np.concatenate([a, b], axis=1)
    w = rng.standard_normal((Cout, Ca + Cb, 3, 3)).astype(dtype)
    y = kernels.conv2d_forward((a, b), w, None, 1, 1, who="Conv2d")
    np.testing.assert_array_equal(y, kernels.conv2d_forward(joined, w, None, 1, 1))
    dy = rng.standard_normal(y.shape).astype(dtype)
    np.testing.assert_array_equal(kernels.conv2d_backward_weight((a, b), dy, 3, 1, 1),
                                  kernels.conv2d_backward_weight(joined, dy, 3, 1, 1))
    da, db = kernels.conv2d_backward_input(dy, w, 1, 1, H, W, split=Ca)
    dx = kernels.conv2d_backward_input(dy, w, 1, 1, H, W)
    assert da.flags.c_contiguous and db.flags.c_contiguous
    np.testing.assert_array_equal(da, dx[:, :Ca])
    np.testing.assert_array_equal(db, dx[:, Ca:])


@pytest.mark.parametrize("part", [0, 1])
def test_two_parts_name_the_part_with_nan(direct_route, part):
    parts = [np.ones((1, 4, 16, 16), np.float32), np.ones((1, 4, 16, 16), np.float32)]
    parts[part][0, 3, 15, 15] = np.nan
    w = np.ones((8, 8, 3, 3), np.float32)
    with pytest.raises(FloatingPointError, match=f"input part {part}"):
        kernels.conv2d_forward(tuple(parts), w, None, 1, 1, who="Conv2d")


def test_fast_conv2d_layer_takes_two_parts():
    """The fast Conv2d(a, b): the layer on the concatenation, its dx in two parts."""
    from minunet.kernels import layers as fast_layers
    rng = np.random.default_rng(2)
    one = fast_layers.Conv2d(12, 8, 3, padding=1, bias=False, rng=rng)
    two = fast_layers.Conv2d(12, 8, 3, padding=1, bias=False, rng=rng)
    two.load_state_dict(one.state_dict())
    a = rng.standard_normal((2, 4, 32, 32)).astype(np.float32)
    b = rng.standard_normal((2, 8, 32, 32)).astype(np.float32)
    y = two(a, b)
    np.testing.assert_array_equal(y, one(np.concatenate([a, b], axis=1)))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    da, db = two.backward(dy)
    dx = one.backward(dy)
    np.testing.assert_array_equal(np.concatenate([da, db], axis=1), dx)
    np.testing.assert_array_equal(two.weight.grad, one.weight.grad)
    with pytest.raises(ValueError, match=r"4 \+ 4 channels, the layer takes 12"):
        two(a, a)
    with pytest.raises(ValueError, match="agree in N, H and W"):
        two(a, b[:, :, :16])
    with pytest.raises(TypeError, match="one input or two parts"):
        two(a, a, a)


@pytest.mark.parametrize("cout, cin", [(1, 3), (13, 5), (8, 16), (24, 7)])
def test_weight_packing_and_flip_are_the_numpy_copies(cout, cin):
    """pack_weights and conv._flipped (compiled passes) give the arrays of their NumPy
    definitions: tiles of 8 output channels side by side, zeros past the last; the weight
    transposed and rotated by 180 degrees (float32 and the gradient checks' float64; 3x3 and
    a non-contiguous 5x5)."""
    rng = np.random.default_rng(cout * 10 + cin)
    w = rng.standard_normal((cout, cin, 3, 3))
    w_t = w.reshape(cout, -1).astype(np.float32).T                  # (Cin*9, Cout)
    tiles = -(-cout // 8)
    padded = np.zeros((cin * 9, tiles * 8), np.float32)
    padded[:, :cout] = w_t
    np.testing.assert_array_equal(gemm.pack_weights(w_t),
                                  padded.reshape(cin * 9, tiles, 8).transpose(1, 0, 2))
    other_sizes = rng.standard_normal((cin, cout, 5, 5)).transpose(1, 0, 2, 3)  # a 5x5 view
    for weight in (w.astype(np.float32), w, other_sizes):
        flipped = kernels._flipped(weight)
        assert flipped.dtype == weight.dtype and flipped.flags.c_contiguous
        np.testing.assert_array_equal(flipped, weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


@pytest.mark.parametrize("N, C, H, W, cout, bias, relu", [
    (1, 1, 37, 64, 16, True, True), (2, 3, 20, 48, 10, False, False),
    (1, 2, 5, 16, 16, True, False), (1, 4, 7, 32, 3, False, True), (3, 1, 1, 16, 9, True, True)])
def test_few_channel_inference_convolution_is_the_direct_route_to_the_bit(
        direct_route, N, C, H, W, cout, bias, relu):
    """conv._few_channels (inference's route for a 3x3 convolution of a few input channels,
    the U-Net's first) gives the direct route's sums bit for bit (the same taps, order and
    fused multiply-adds, the bias and ReLU as its epilogue), and conv2d_inference takes it."""
    rng = np.random.default_rng(N * 100 + C * 10 + H)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((cout, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    expected = kernels._forward(x, w, 1, 1, b, who="layer", relu=relu)
    np.testing.assert_array_equal(kernels._few_channels(x, w, b, relu, "layer"), expected)
    assert kernels._few_channels_apply(x, w, 1, 1)
    np.testing.assert_array_equal(kernels.conv2d_inference(x, w, b, 1, 1, relu=relu), expected)
    assert not kernels._few_channels_apply(x[..., :W - 1], w, 1, 1)  # rows not whole vectors


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_few_channel_convolution_finds_a_non_finite_value_anywhere(direct_route, bad):
    w = np.ones((4, 2, 3, 3), np.float32)
    for position in np.ndindex(1, 2, 5, 16):
        x = np.ones((1, 2, 5, 16), np.float32)
        x[position] = bad
        with pytest.raises(FloatingPointError, match=r"layer: input .* contains"):
            kernels._few_channels(x, w, None, True, "layer")
