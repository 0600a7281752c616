"""Winograd F(4x4, 3x3) (kernels/winograd.py), inference's 3x3 convolutions, against the
plain convolution: the NumPy reference of the algorithm, and the compiled kernel through
conv.conv2d_inference, in float64 and float32, on odd sizes (H != W), batch 1 and 2, one
input or the two parts of a concatenation, with bias and ReLU.

Tolerances. float64: 1e-12 of the output's scale (the algorithm is exact in exact
arithmetic; what is left is rounding, ~1e-15). float32: the transforms multiply values by
up to 5 (B^T), 8 (A^T) and divide by 6 and 24 (G), and each transformed value is a sum of up
to 36 terms, so the rounding error is some 10-30x the direct sum's: measured up to 3e-6 of
the output's largest value on these random inputs (direct: 4e-7); the bound is 2e-5.
"""

import numpy as np
import pytest

from minunet.kernels import conv, winograd
from minunet.kernels.reference import conv2d_forward_reference

F32_TOLERANCE = 2e-5
F64_TOLERANCE = 1e-12


def _case(dtype, n, cin, cout, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cin, h, w)).astype(dtype)
    weight = rng.standard_normal((cout, cin, 3, 3)).astype(dtype)
    bias = rng.standard_normal(cout).astype(dtype)
    exact = conv2d_forward_reference(x.astype(np.float64), weight.astype(np.float64),
                                     bias.astype(np.float64), 1, 1)
    return x, weight, bias, exact


def _error(y, exact):
    return np.abs(y.astype(np.float64) - exact).max() / np.abs(exact).max()


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, F64_TOLERANCE),
                                              (np.float32, F32_TOLERANCE)])
@pytest.mark.parametrize("n, h, w", [(1, 8, 20), (2, 12, 4)])
def test_reference_is_the_convolution(dtype, tolerance, n, h, w):
    x, weight, bias, exact = _case(dtype, n, 5, 7, h, w)
    y = winograd.winograd_conv3x3_reference(x, weight, bias)
    assert y.dtype == dtype and y.shape == exact.shape
    assert _error(y, exact) < tolerance


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, F64_TOLERANCE),
                                              (np.float32, F32_TOLERANCE)])
@pytest.mark.parametrize("n, cin, cout, h, w", [
    (1, 16, 24, 12, 32),     # Cout not a multiple of 8 tiles; H != W
    (2, 20, 16, 8, 48),      # batch 2
    (1, 32, 8, 36, 144),     # several tile rows per item, tiles not a multiple of 48
])
def test_kernel_is_the_convolution(dtype, tolerance, n, cin, cout, h, w):
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT: conv2d_inference takes conv2d_forward")
    x, weight, bias, exact = _case(dtype, n, cin, cout, h, w)
    assert winograd.winograd_applies(np.dtype(dtype), 3, 1, 1, h, w, cin)
    y = conv.conv2d_inference(x, weight, bias, 1, 1, who="Conv2d")
    assert y.dtype == dtype and y.shape == exact.shape
    assert _error(y, exact) < tolerance
    # the two parts of a concatenation, and the ReLU on the way out
    a, b = np.ascontiguousarray(x[:, :cin // 2]), np.ascontiguousarray(x[:, cin // 2:])
    y2 = conv.conv2d_inference((a, b), weight, bias, 1, 1, who="Conv2d", relu=True)
    assert _error(y2, np.maximum(exact, 0)) < tolerance
    np.testing.assert_array_equal(y2, np.maximum(y, 0))   # the same sums, in the same order


def test_kernel_without_bias_and_the_same_bits_every_run():
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    x, weight, _, _ = _case(np.float32, 2, 16, 16, 16, 32, seed=3)
    exact = conv2d_forward_reference(x.astype(np.float64), weight.astype(np.float64), None, 1, 1)
    y = conv.conv2d_inference(x, weight, None, 1, 1)
    assert _error(y, exact) < F32_TOLERANCE
    np.testing.assert_array_equal(y, conv.conv2d_inference(x, weight, None, 1, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cin, h, w", [(16, 12, 448), (24, 8, 400)])
def test_blocks_of_a_row_give_the_same_bits(monkeypatch, dtype, cin, h, w):
    """Rows cut into blocks of tiles (winograd.band_cols, when a row's V and M exceed
    ITEM_BYTES) compute every tile as a whole row does: the same bits, the blocks' edges
    (the columns read from the neighbour block, the image's last columns) included. 448 px =
    112 tiles (blocks 48 + 48 + 16); 400 px = 100 tiles (48 + 48 + 4: a last block that is
    not whole vectors)."""
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    if not winograd.winograd_applies(np.dtype(dtype), 3, 1, 1, h, w, cin):
        pytest.skip("not a Winograd size for this dtype")
    x, weight, bias, exact = _case(dtype, 2, cin, 16, h, w, seed=5)
    a, b = np.ascontiguousarray(x[:, :cin // 2]), np.ascontiguousarray(x[:, cin // 2:])
    monkeypatch.setattr(winograd, "ITEM_BYTES", 1 << 40)   # whole rows
    assert winograd.band_cols(w // 4, cin, 16, x.itemsize) == w // 4
    whole = conv.conv2d_inference((a, b), weight, bias, 1, 1, who="Conv2d", relu=True)
    monkeypatch.setattr(winograd, "ITEM_BYTES", 1)   # blocks of 48 tiles
    assert winograd.band_cols(w // 4, cin, 16, x.itemsize) == 48
    blocks = conv.conv2d_inference((a, b), weight, bias, 1, 1, who="Conv2d", relu=True)
    np.testing.assert_array_equal(blocks, whole)
    assert _error(blocks, np.maximum(exact, 0)) < (F32_TOLERANCE if dtype == np.float32
                                                   else F64_TOLERANCE)
    x[1, 3, h - 1, 4 * 48] = np.nan   # the second block's first column, the last row
    with pytest.raises(FloatingPointError, match="Conv2d"):
        conv.conv2d_inference(x, weight, bias, 1, 1, who="Conv2d")


def test_blocks_are_whole_products_and_evened_out():
    """band_cols: the whole row when it fits ITEM_BYTES, else blocks of whole 48s (the
    products' block), as few as fit, evened out."""
    per_tile = 36 * (32 + 16) * 4
    assert winograd.band_cols(288, 32, 16, 4) == (288 if 288 * per_tile <= winograd.ITEM_BYTES
                                                   else winograd.band_cols(288, 32, 16, 4))
    for tiles in (36, 100, 144, 288, 1000):
        for cin in (16, 32, 64, 128):
            cols = winograd.band_cols(tiles, cin, 16, 4)
            assert cols == tiles or (cols % 48 == 0 and cols < tiles)
            if cols < tiles:
                blocks = -(-tiles // cols)
                assert cols * 36 * (cin + 16) * 4 <= max(48 * 36 * (cin + 16) * 4,
                                                         winograd.ITEM_BYTES)
                assert (blocks - 1) * cols < tiles


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_kernel_finds_nan_and_inf(bad):
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    for dtype in (np.float32, np.float64):
        x, weight, bias, _ = _case(dtype, 1, 16, 8, 8, 32)
        x[0, 5, 7, 31] = bad        # the last row and column: read by one tile row only
        with pytest.raises(FloatingPointError, match="Conv2d"):
            conv.conv2d_inference(x, weight, bias, 1, 1, who="Conv2d")
        a, b = np.ascontiguousarray(x[:, :4]), np.ascontiguousarray(x[:, 4:])
        with pytest.raises(FloatingPointError, match="Conv2d"):
            conv.conv2d_inference((a, b), weight, bias, 1, 1, who="Conv2d")


def test_what_takes_winograd():
    """3x3, stride 1, padding 1, H % 4 == 0, W % 16 == 0 (float32) or 4 (float64), and at
    least 16 input channels; the rest goes to conv2d_forward (the same result as before)."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    assert winograd.winograd_applies(f32, 3, 1, 1, 8, 32, 16)
    assert not winograd.winograd_applies(f32, 3, 1, 1, 8, 36, 16)   # float32: whole vectors
    assert winograd.winograd_applies(f64, 3, 1, 1, 8, 36, 16)
    assert not winograd.winograd_applies(f32, 3, 1, 1, 10, 32, 16)  # rows
    assert not winograd.winograd_applies(f32, 3, 1, 1, 8, 32, 8)    # too few channels
    assert not winograd.winograd_applies(f32, 3, 2, 1, 8, 32, 16)
    assert not winograd.winograd_applies(f32, 3, 1, 0, 8, 32, 16)
    assert not winograd.winograd_applies(f32, 1, 1, 0, 8, 32, 16)
    x, weight, bias, _ = _case(np.float32, 1, 8, 8, 8, 32)          # 8 channels: direct
    np.testing.assert_array_equal(conv.conv2d_inference(x, weight, bias, 1, 1),
                                  conv.conv2d_forward(x, weight, bias, 1, 1))


def test_packed_weights_are_remembered_by_content_not_by_array():
    """A forward pass does not transform unchanged weights again, and weights changed in
    place (training between two evaluations) are transformed anew."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    first = winograd.packed_weights(weight, np.float32)
    assert np.array_equal(first, winograd.transformed_weights(weight, np.float32))
    assert winograd.packed_weights(weight.copy(), np.float32) is first   # same contents
    weight[0, 0, 1, 1] += 1.0                                            # changed in place
    changed = winograd.packed_weights(weight, np.float32)
    assert changed is not first
    assert np.array_equal(changed, winograd.transformed_weights(weight, np.float32))
    assert winograd.packed_weights(weight, np.float64).dtype == np.float64
    zero, negative_zero = np.zeros((8, 16, 3, 3), np.float32), np.full((8, 16, 3, 3), -0.0,
                                                                       np.float32)
    assert winograd.packed_weights(zero, np.float32) is not winograd.packed_weights(
        negative_zero, np.float32)                                       # bit for bit
    x = rng.standard_normal((1, 16, 8, 12)).astype(np.float32)
    exact = conv2d_forward_reference(x.astype(np.float64), weight.astype(np.float64), None, 1, 1)
    assert _error(conv.conv2d_inference(x, weight, None, 1, 1), exact) < F32_TOLERANCE


# ------------------------------------------------------------------ training's routes
def test_transformed_weights_are_g_w_gt():
    """The compiled weight transform against the formula U[f, c, o] = (G w[o, c] G^T)[f],
    packed (36, ceil(Cout/8), Cin, 8) with zeros past Cout; Cout 13: a partial last tile."""
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((13, 5, 3, 3))
    U = np.einsum("ar,ocrs,bs->abco", winograd.G, weight, winograd.G).reshape(36, 5, 13)
    padded = np.zeros((36, 5, 16))
    padded[:, :, :13] = U
    expected = padded.reshape(36, 5, 2, 8).transpose(0, 2, 1, 3)
    for dtype in (np.float64, np.float32):
        packed = winograd.transformed_weights(weight.astype(dtype), dtype)
        assert packed.dtype == dtype and packed.shape == (36, 2, 5, 8)
        assert np.abs(packed - expected).max() <= (1e-14 if dtype == np.float64 else 1e-6)


@pytest.mark.parametrize("n, ca, cb, cout, h, w", [
    (1, 16, 0, 20, 64, 80),    # one input, Cout not a multiple of 8, 320 tiles
    (2, 24, 24, 48, 16, 48),   # two parts, 48 tiles: channels enough for a small image
])
def test_training_forward_and_input_gradient_by_winograd(n, ca, cb, cout, h, w):
    """conv2d_forward(winograd=True) and conv2d_backward_input(winograd=True) (training's
    float32 routes) equal the exact convolution and its input gradient, the gradient in its
    two parts (split) when the input was two; and they did take Winograd."""
    if not conv.TRAIN_WINOGRAD:
        pytest.skip("no AVX-512, no JIT, or MINUNET_WINOGRAD set")
    rng = np.random.default_rng(5)
    a = rng.standard_normal((n, ca, h, w)).astype(np.float32)
    b = rng.standard_normal((n, cb, h, w)).astype(np.float32)
    weight = rng.standard_normal((cout, ca + cb, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((n, cout, h, w)).astype(np.float32)
    joined = np.concatenate([a, b], axis=1)
    assert conv._winograd_pays(dy, 3, 1, 1, ca + cb) and conv._winograd_pays(joined, 3, 1, 1,
                                                                              cout)
    joined = joined.astype(np.float64)
    x = (a, b) if cb else a
    y = conv.conv2d_forward(x, weight, None, 1, 1, who="Conv2d", winograd=True)
    exact = conv2d_forward_reference(joined, weight.astype(np.float64), None, 1, 1)
    assert _error(y, exact) < F32_TOLERANCE
    assert not np.array_equal(y, conv.conv2d_forward(x, weight, None, 1, 1))  # not direct
    from minunet.kernels.reference import conv2d_backward_input_reference
    dx_exact = conv2d_backward_input_reference(dy.astype(np.float64), weight.astype(np.float64),
                                               1, 1, h, w)
    dx = conv.conv2d_backward_input(dy, weight, 1, 1, h, w, split=ca if cb else None,
                                    winograd=True)
    if cb:
        da, db = dx
        assert da.shape == a.shape and db.shape == b.shape
        assert _error(da, dx_exact[:, :ca]) < F32_TOLERANCE
        assert _error(db, dx_exact[:, ca:]) < F32_TOLERANCE
    else:
        assert dx.shape == a.shape and _error(dx, dx_exact) < F32_TOLERANCE
    bad = dy.copy()
    bad[-1, 3, h - 1, w - 1] = np.nan
    with pytest.raises(FloatingPointError, match="Conv2d.backward"):
        conv.conv2d_backward_input(bad, weight, 1, 1, h, w, who="Conv2d.backward",
                                   winograd=True)


def test_training_takes_winograd_only_where_it_pays():
    """Images of fewer than SMALL_TRAIN_TILES 4x4 tiles (16 x 16: the deepest levels), small
    images with few channel pairs (C1's 32 x 32 levels), float64 and too few input channels
    keep the direct sums: the same bits as winograd=False."""
    rng = np.random.default_rng(6)
    for dtype, cin, cout, h, w in [(np.float32, 64, 64, 16, 16), (np.float32, 32, 16, 32, 32),
                                   (np.float64, 16, 8, 64, 64), (np.float32, 8, 8, 64, 64)]:
        x = rng.standard_normal((1, cin, h, w)).astype(dtype)
        weight = rng.standard_normal((cout, cin, 3, 3)).astype(dtype)
        np.testing.assert_array_equal(conv.conv2d_forward(x, weight, None, 1, 1, winograd=True),
                                      conv.conv2d_forward(x, weight, None, 1, 1))


def test_band_rows_count_a_rows_last_narrower_block(monkeypatch):
    """A 288-px level of 64 channels: 72 tiles a row, cut into blocks of 48 + 24. One tile row
    an item pads the 24 to a whole 48 (a third of the products wasted); two rows fill both
    blocks. band_rows takes two when told the row's width, and the output is the same bits as
    with one row an item."""
    assert winograd.band_cols(72, 64, 64, 4) == 48
    assert winograd.band_rows(48, 64, 64, 4, 72) == 1            # the block alone: whole
    assert winograd.band_rows(48, 64, 64, 4, 72, 72) == 2        # with its 24-tile remainder
    assert winograd.band_rows(36, 128, 128, 4, 36, 36) == 4      # 144 px: 4 rows = 3 x 48
    assert winograd.band_rows(144, 16, 16, 4, 288, 288) == 1     # 144 + 144: whole already
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    x, weight, bias, _ = _case(np.float32, 1, 64, 64, 40, 288, seed=2)
    auto = conv.conv2d_inference(x, weight, bias, 1, 1, relu=True)
    monkeypatch.setattr(conv, "band_rows", lambda *args: 1)
    np.testing.assert_array_equal(auto, conv.conv2d_inference(x, weight, bias, 1, 1, relu=True))


@pytest.mark.parametrize("N, C, H, W, cout, kc", [(1, 16, 64, 64, 16, 3), (2, 16, 40, 48, 16, 2),
                                                 (1, 24, 8, 16, 13, 5), (1, 16, 12, 112, 8, 1)])
@pytest.mark.parametrize("item_bytes", [winograd.ITEM_BYTES, 1])
def test_convolution_and_head_in_one_pass_are_the_two_layers_to_the_bit(
        monkeypatch, N, C, H, W, cout, kc, item_bytes):
    """conv.conv2d_inference_head (winograd.run_items_head: the 3x3 convolution's values go
    into the 1x1 head's sums as they are made) against conv2d_inference then the head's own
    kernel (upsample.conv1x1_forward): the same logits bit for bit, in whole rows and in
    blocks of 48 tiles (ITEM_BYTES tiny), with and without the head's bias."""
    from minunet.kernels import upsample
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    monkeypatch.setattr(winograd, "ITEM_BYTES", item_bytes)
    rng = np.random.default_rng(H * W + kc)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((cout, C, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    hw = rng.standard_normal((kc, cout, 1, 1)).astype(np.float32)
    for hb in (rng.standard_normal(kc).astype(np.float32), None):
        assert conv.head_fuses(x, w, 1, 1, hw)
        expected = upsample.conv1x1_forward(conv.conv2d_inference(x, w, b, 1, 1, relu=True),
                                            hw, hb)
        np.testing.assert_array_equal(conv.conv2d_inference_head(x, w, b, True, hw, hb),
                                      expected)


def test_convolution_and_head_in_one_pass_name_what_is_not_finite():
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 16, 8, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    hw = rng.standard_normal((3, 16, 1, 1)).astype(np.float32)
    bad = x.copy()
    bad[0, 3, 5, 7] = np.nan
    with pytest.raises(FloatingPointError, match=r"Conv2d: input .* contains"):
        conv.conv2d_inference_head(bad, w, None, True, hw, None, "Conv2d", "the head")
    overflowing = np.zeros(16, np.float32)
    overflowing[4] = np.inf                      # finite input, an infinite value after it
    with pytest.raises(FloatingPointError, match=r"the head: input contains NaN or inf"):
        conv.conv2d_inference_head(x, w, overflowing, True, hw, None, "Conv2d", "the head")
    assert not conv.head_fuses(x, w, 1, 1, hw.astype(np.float64))
    assert not conv.head_fuses(x[..., :12], w, 1, 1, hw)            # rows not whole vectors


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("parts, window", [(1, (4, 16, 20, 48)), (2, (0, 0, 12, 32)),
                                           (1, (20, 48, 8, 32)), (2, (8, 32, 20, 48))])
def test_a_window_of_the_output_is_the_same_bits_and_reads_only_around_it(dtype, parts,
                                                                          window):
    """conv2d_inference(..., window=): the window's values are the whole output's to the bit
    (the same 4 x 4 tiles), in blocks of a row too; and only the window and 1 row, 16
    columns around it are read: a NaN further away is not met (the whole output raises)."""
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    rng = np.random.default_rng(sum(window))
    x = rng.standard_normal((2, 16, 28, 80)).astype(dtype)
    w = (rng.standard_normal((24, 16 * parts, 3, 3)) * 0.2).astype(dtype)
    b = rng.standard_normal(24).astype(dtype)
    inputs = (x,) if parts == 1 else (x, rng.standard_normal(x.shape).astype(dtype))
    top, left, h, wide = window
    whole = conv.conv2d_inference(inputs if parts == 2 else x, w, b, 1, 1, relu=True)
    part = conv.conv2d_inference(inputs if parts == 2 else x, w, b, 1, 1, relu=True,
                                 window=window)
    np.testing.assert_array_equal(part[..., top:top + h, left:left + wide],
                                  whole[..., top:top + h, left:left + wide])
    far = [(r, c) for r in range(28) for c in range(80)
           if not (top - 1 <= r <= top + h and left - 16 <= c < left + wide + 16)]
    r, c = far[len(far) // 2]
    inputs[-1][1, 3, r, c] = np.nan
    given = inputs if parts == 2 else x
    assert np.isfinite(conv.conv2d_inference(given, w, b, 1, 1, who="conv", relu=True,
                                             window=window)[..., top:top + h,
                                                            left:left + wide]).all()
    with pytest.raises(FloatingPointError):
        conv.conv2d_inference(given, w, b, 1, 1, who="conv", relu=True)


@pytest.mark.parametrize("window", [(1, 0, 8, 16), (0, 8, 8, 16), (0, 0, 6, 16),
                                    (0, 0, 8, 24), (-4, 0, 8, 16), (24, 0, 8, 16)])
def test_a_window_off_the_grid_or_the_output_is_refused(window):
    with pytest.raises(ValueError, match="window"):
        winograd.window_tiles(28, 80, window)


def test_the_head_in_one_pass_computes_only_its_window():
    """conv2d_inference_head(..., window=): the logits of the window to the bit, and a NaN
    out of its reach is not met."""
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 16, 40, 96)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    hw = rng.standard_normal((3, 16, 1, 1)).astype(np.float32)
    hb = rng.standard_normal(3).astype(np.float32)
    window = (8, 32, 24, 32)
    whole = conv.conv2d_inference_head(x, w, b, True, hw, hb)
    x[0, 5, 39, 0] = np.inf
    part = conv.conv2d_inference_head(x, w, b, True, hw, hb, who="conv", window=window)
    np.testing.assert_array_equal(part[..., 8:32, 32:64], whole[..., 8:32, 32:64])
    with pytest.raises(FloatingPointError):
        conv.conv2d_inference_head(x, w, b, True, hw, hb, who="conv")
