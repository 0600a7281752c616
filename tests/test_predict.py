"""Overlap-tile prediction: seamless, any size, bounded, with normalisation stored and reused."""

import subprocess
import sys

import numpy as np
import pytest

import minunet as mu
from minunet.predict import normalize, receptive_radius, to_gray


def small_unet(depth=2, seed=0):
    model = mu.UNet(in_channels=1, num_classes=3, depth=depth, base_channels=4,
                    rng=np.random.default_rng(seed))
    # give batch norm non-trivial running statistics, as after training
    rng = np.random.default_rng(seed + 1)
    for _, module in model.named_modules():
        if isinstance(module, mu.BatchNorm2d):
            module.running_mean[:] = rng.normal(0, 0.1, module.running_mean.shape)
            module.running_var[:] = rng.uniform(0.5, 1.5, module.running_var.shape)
    return model.eval()


def test_receptive_radius_covers_what_the_network_sees():
    """Perturb one input pixel: outputs change only within the stated radius."""
    depth = 2
    model = small_unet(depth)
    size = 64
    x = np.random.default_rng(2).random((1, 1, size, size), dtype=np.float32)
    base = model.forward(x)
    x2 = x.copy()
    x2[0, 0, 32, 32] += 5.0
    changed = np.abs(model.forward(x2) - base).max(axis=(0, 1)) > 0
    rows, cols = np.nonzero(changed)
    reach = max(np.abs(rows - 32).max(), np.abs(cols - 32).max())
    assert 0 < reach <= receptive_radius(depth)


@pytest.mark.parametrize("shape", [(100, 77), (37, 130), (9, 5)])
def test_tiled_equals_untiled(shape):
    model = small_unet(depth=2)
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    whole = mu.predict(model, image, tile=512)
    tiled = mu.predict(model, image, tile=8, batch_size=3)
    assert whole.shape == tiled.shape == (3, *shape)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-5)
    np.testing.assert_allclose(whole.sum(axis=0), 1.0, atol=1e-5)


def test_too_small_margin_shows_seams():
    """The test above can fail: without enough context, tiles disagree with the whole."""
    model = small_unet(depth=2)
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    whole = mu.predict(model, image, tile=512)
    tiled = mu.predict(model, image, tile=8, margin=4)
    assert np.abs(tiled - whole).max() > 1e-3


def test_predict_restores_training_mode():
    model = small_unet().train()
    mu.predict(model, np.zeros((8, 8), np.float32) + 0.5)
    assert model.training


def test_normalize_inputs():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    u16 = u8.astype(np.uint16) * 257
    a, b = normalize(u8), normalize(u16)
    assert a.dtype == np.float32 and a.shape == (20, 30)
    np.testing.assert_allclose(a, b, atol=1e-5)  # percentiles make 8- and 16-bit agree
    rgb = np.stack([u8, u8, u8], axis=-1)
    np.testing.assert_allclose(normalize(rgb), a, atol=1e-5)  # gray RGB == gray
    assert to_gray(np.dstack([u8, u8, u8, u8])).shape == (20, 30)
    r = normalize(u16, {"method": "range"})
    np.testing.assert_allclose(r, u16 / 65535.0, rtol=1e-6)


def test_bad_images_are_named():
    with pytest.raises(ValueError, match="NaN"):
        normalize(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="empty"):
        normalize(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="2-D"):
        normalize(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="unknown method"):
        normalize(np.zeros((4, 4)), {"method": "zscore!"})


def test_progress_over_tile_batches_only_on_a_terminal(capsys, monkeypatch):
    model = small_unet()
    image = np.random.default_rng(4).random((40, 50)).astype(np.float32)
    quiet = mu.predict(model, image, tile=8, batch_size=2, progress=True)
    assert "tiles" not in capsys.readouterr().err            # stderr is not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    shown = mu.predict(model, image, tile=8, batch_size=2, progress=True)
    assert "tiles of 40x50" in capsys.readouterr().err
    np.testing.assert_array_equal(shown, quiet)


def test_default_tiles_are_large_and_agree_with_other_tilings():
    """The default (1024-px cores, one tile per pass), 256-px cores in batches of 4, and the
    old default tiling (the receptive radius as margin, 368-px wide tiles whose deeper levels
    take the BLAS route) agree within float32 round-off and give the same labels.

    Not to the bit: inference's Winograd convolutions (kernels/winograd.py) round each
    pixel's sum depending on its whole 6x6 input patch, so on values up to 4 px (at each
    level) beyond the 3x3 window, further than the margins reach; and a level whose rows are
    not a multiple of 4 (here the 400-row tile's bottom level) takes the direct kernel.
    The probabilities moved by at most 3.6e-6 when this was written."""
    from minunet.predict import DEFAULT_BATCH_SIZE, DEFAULT_TILE

    assert (DEFAULT_TILE, DEFAULT_BATCH_SIZE) == (1024, 1)
    ckpt = mu.load("nuclei")
    images, _, _ = mu.data.generate(1, "broad", size=(400, 1100), seed=5)
    x = normalize((images[0] * 4000).astype(np.uint16), ckpt.metadata["normalization"])
    default = mu.predict(ckpt.model, x, normalized=True)
    small = mu.predict(ckpt.model, x, tile=256, batch_size=4, normalized=True)
    old = mu.predict(ckpt.model, x, tile=256, batch_size=4, margin=56, normalized=True)
    post = ckpt.metadata["postprocess"]
    labels = mu.to_instances(default, **post)
    for other in (small, old):
        np.testing.assert_allclose(default, other, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(labels, mu.to_instances(other, **post))


class ShapeSpy:
    """A model that records the shapes of the batches `predict` gives it."""

    def __init__(self, model):
        self.model, self.shapes = model, []
        self.depth, self.dtype = model.depth, model.dtype

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x):
        self.shapes.append(x.shape)
        return self.model(x)

    def forward_window(self, x, window):   # predict's call (the tile's core kept)
        self.shapes.append(x.shape)
        return self.model.forward_window(x, window)


@pytest.mark.parametrize("shape, tile", [((100, 77), 8), ((300, 700), 256), ((90, 90), 1024)])
def test_automatic_margin_makes_tile_widths_fast(shape, tile):
    """Every tile is a multiple of FAST_WIDTH * 2**depth px wide (the direct kernels' rows at
    every level) and of FAST_HEIGHT * 2**depth px tall (Winograd's 4 x 4 tiles at every
    level), its margin still covers the receptive radius, and the result is seamless."""
    from minunet.predict import FAST_HEIGHT, FAST_WIDTH, fast_tile_width

    depth = 2
    spy = ShapeSpy(small_unet(depth))
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    tiled = mu.predict(spy, image, tile=tile, batch_size=2)
    assert spy.shapes and all(w % (FAST_WIDTH * 2**depth) == 0 for *_, w in spy.shapes)
    assert all(h % (FAST_HEIGHT * 2**depth) == 0 for *_, h, _ in spy.shapes)
    whole = mu.predict(small_unet(depth), image, tile=4096)   # one tile
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=2e-5)
    assert fast_tile_width(1024, 56, 8) == (1024, 64)      # 1152 px = 9 * 128
    assert fast_tile_width(520, 56, 8) == (528, 56)        # the core takes what is left
    core, margin = fast_tile_width(8, 24, 4)
    assert core >= 8 and margin >= 24 and (core + 2 * margin) % 64 == 0


def test_every_entry_point_uses_the_default_tiling():
    """mu.segment, the command, the workflow and the cluster paths share predict's default."""
    import inspect

    from minunet import inference, workflow
    from minunet.cli import _parser
    from minunet.predict import DEFAULT_BATCH_SIZE, DEFAULT_TILE
    from minunet.scaleout import collection, common, large

    for fn in (mu.predict, inference.segment, inference.segment_image,
               inference.write_prediction, workflow.segment, common.segment_image,
               large.segment_large, collection.predict_files):
        params = inspect.signature(fn).parameters
        assert params["tile"].default == DEFAULT_TILE, fn.__qualname__
        if "batch_size" in params:
            assert params["batch_size"].default == DEFAULT_BATCH_SIZE, fn.__qualname__
    args = _parser().parse_args(["predict", "m.npz", "x.tif", "--out", "o"])
    assert args.tile == DEFAULT_TILE


@pytest.mark.parametrize("shape", [(1, 5, 7), (2, 300, 130)])
def test_compiled_tile_gather_and_softmax_equal_numpy(shape):
    """kernels/tiles.py: the gather through mirrored indices copies NumPy's fancy indexing
    exactly; the softmax written into a view of the probability map equals predict.softmax
    to the last bit or one ulp (Numba's exp), sums to 1, and leaves the rest of the map
    alone; float32 and float64, a few rows (calling thread) and many (bands on the threads)."""
    from minunet.kernels import tiles
    from minunet.predict import _mirror_index, softmax

    rng = np.random.default_rng(shape[1])
    C, H, W = shape
    x = rng.standard_normal((C, H, W)).astype(np.float32)
    rows, cols = _mirror_index(H, 3, 6)[2:2 + H], _mirror_index(W, 4, 2)[1:W + 5]
    out = np.empty((C, rows.size, cols.size), np.float32)
    tiles.gather_tile(x, rows, cols, out)
    np.testing.assert_array_equal(out, x[:, rows[:, None], cols[None, :]])
    for dtype in (np.float32, np.float64):
        logits = (rng.standard_normal((3, H + 4, W + 6)) * 20).astype(dtype)
        core = logits[:, 2:2 + H, 3:3 + W]
        probs = np.full((3, H + 1, W + 2), -1.0, dtype)
        tiles.softmax_into(core, probs, 1, 2)
        expected = softmax(core[None])[0]
        np.testing.assert_allclose(probs[:, 1:, 2:], expected, rtol=3 * np.finfo(dtype).eps,
                                   atol=np.finfo(dtype).tiny)
        np.testing.assert_allclose(probs[:, 1:, 2:].sum(axis=0), 1.0,
                                   rtol=4 * np.finfo(dtype).eps)
        assert (probs[:, 0, :] == -1).all() and (probs[:, :, :2] == -1).all()


def test_vexp_is_exp_correctly_rounded_to_float32():
    """simd.vexp (the softmax's exp, 16 lanes): e**x in float64 rounded once to float32, on
    float32 values spread over the softmax's range [-110, 0] and past it, and the edges: 0
    and -0 give 1, NaN stays NaN, -inf and anything under EXP_FLOOR gives 0."""
    from numba import njit

    from minunet.kernels import simd
    if not simd.AVAILABLE:
        pytest.skip("the vector intrinsics need the JIT")

    @njit
    def vexp_rows(x, y):
        for i in range(x.shape[0]):
            for j in range(0, x.shape[1], 16):
                simd.vstore(y, i, j, simd.vexp(simd.vload(x, i, j)))

    rng = np.random.default_rng(0)
    spread = np.concatenate([-rng.uniform(0, 110, 1 << 18), -rng.uniform(0, 1e-3, 1 << 14),
                             -np.exp(-rng.uniform(0, 90, 1 << 14)), rng.uniform(0, 88, 1 << 12)])
    edges = np.array([0.0, -0.0, np.nan, -np.inf, -1e30, -200.0, simd.EXP_FLOOR, -103.97,
                      -103.9, -87.4, -1e-45, 1e-7, 1.0, 88.0, -0.5, -np.log(2.0)])
    x = np.concatenate([spread, edges]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-x.size % 16, np.float32)]).reshape(1, -1)
    y = np.empty_like(x)
    vexp_rows(x, y)
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_max_ulp(y, exact, maxulp=1)
    finite = ~np.isnan(exact)
    assert np.count_nonzero(y[finite] != exact[finite]) <= 1
    tail = y[0, spread.size:spread.size + edges.size]
    assert tail[0] == tail[1] == 1.0 and np.isnan(tail[2]) and (tail[3:7] == 0).all()


@pytest.mark.parametrize("width", [5, 16, 31, 130])
def test_vector_softmax_rows_equal_the_scalar_ones_within_rounding(width):
    """tiles._softmax_rows_f32 (16 lanes, vexp; rows whose width is not a multiple of 16 end
    in a padded tail) against tiles._softmax_rows (scalar, the C library's expf): the same
    probabilities to 2 ulp (one ulp from each exp, and the sum), summing to 1; rows outside
    [first, stop) untouched."""
    from minunet.kernels import simd, tiles
    if not simd.AVAILABLE:
        pytest.skip("the vector intrinsics need the JIT")
    rng = np.random.default_rng(width)
    tile = (rng.standard_normal((3, 40, width + 9)) * 25).astype(np.float32)
    tile[1, 3, :] = tile[0, 3, :]                          # ties for the largest logit
    core = tile[:, 4:36, 5:5 + width]                      # a tile's core: a strided view
    fast = np.full((3, 34, width + 3), -1.0, np.float32)
    plain = fast.copy()
    tiles._softmax_rows_f32(core, fast, 1, 2, 2, 30)   # into fast[:, 1:33, 2:2 + width]
    tiles._softmax_rows(core, plain, 1, 2, 2, 30)
    np.testing.assert_array_max_ulp(fast, plain, maxulp=2)
    np.testing.assert_allclose(fast[:, 3:31, 2:2 + width].sum(axis=0), 1.0, rtol=3e-7)
    assert (fast[:, :3] == -1).all() and (fast[:, 31:] == -1).all()
    assert (fast[:, :, :2] == -1).all() and (fast[:, :, 2 + width:] == -1).all()


def test_the_bundled_model_predicts_without_the_direct_routes_kernels(tmp_path):
    """Segmenting with the bundled model, even an image whose size fits no tile (70 x 90, and
    the command's blank 8 x 8 check), never compiles or loads the direct convolution's
    kernels (40-60 ms of Numba's cache at every start of `minunet predict`): the tiles are
    tall enough for Winograd at every level, and the first convolution (one input channel)
    takes conv._few_channels."""
    code = """
import numpy as np
import minunet as mu
from minunet.kernels import conv
model = mu.load("nuclei")
for shape in [(8, 8), (70, 90)]:
    mu.segment(model, np.random.default_rng(0).random(shape).astype(np.float32))
print("direct route loaded:", conv._direct_items_jit is not None)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    from minunet.kernels import conv
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT: the direct route and Winograd are off")
    assert "direct route loaded: False" in done.stdout, done.stdout + done.stderr[-3000:]


def test_prediction_imports_no_plotting_or_optimisation(tmp_path):
    """`minunet predict IMAGE --out OUT` (the command itself: parsing, reading, segmenting,
    writing the labels) imports neither matplotlib, scipy.optimize, scipy.ndimage,
    skimage.segmentation, the plots (minunet.viz) nor the generator's package (minunet.data):
    each costs a few tenths of a second at every start of the command; nor tqdm, without a
    progress bar to show (30 ms: its version lookup imports importlib.metadata); nor
    xml.etree (15 ms, for OME-XML only) or the training runs' module (minunet.runs.run, 13 ms
    with its imports)."""
    import subprocess
    import sys

    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint16))
    code = ("import sys, minunet.cli; "
            f"code = minunet.cli.main(['predict', {str(tmp_path / 'a.tif')!r}, '--model', "
            f"'nuclei', '--out', {str(tmp_path / 'out')!r}]); "
            "print(code, [m for m in ('matplotlib', 'scipy.optimize', 'scipy.ndimage', "
            "'skimage.segmentation', 'minunet.viz', 'minunet.data', 'tqdm', 'xml.etree', "
            "'minunet.runs.run') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert (tmp_path / "out" / "a.tif").is_file()


def test_prediction_shows_a_bar_on_a_terminal(tmp_path):
    """`minunet predict A B` with stderr on a terminal: the progress bar over the images
    (tqdm, imported only then), each image's line on stdout, both label files written."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    import tifffile

    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, np.zeros((64, 64), np.uint16))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    try:
        done = subprocess.run([sys.executable, "-m", "minunet", "predict",
                               str(tmp_path / "a.tif"), str(tmp_path / "b.tif"),
                               "--model", "nuclei", "--out", str(tmp_path / "out")],
                              stdout=subprocess.PIPE, stderr=slave, text=True, timeout=300)
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:         # EIO: the terminal's other end is closed and read out
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(master)
    assert done.returncode == 0, screen.decode(errors="replace")
    assert "a.tif ->" in done.stdout and "b.tif ->" in done.stdout, done.stdout
    assert b"predict:" in screen and b"2/2" in screen, screen   # the bar, on the terminal
    assert (tmp_path / "out" / "a.tif").is_file() and (tmp_path / "out" / "b.tif").is_file()


def test_the_softmax_kernel_has_one_type_whatever_the_tiles_place():
    """The softmax writes into the whole probability map at the core's offset, so its compiled
    kernel takes the same types for a core as wide as the image and for one of several tiles
    across: one kernel loaded from Numba's cache, not two (6-8 ms of every command's start)."""
    from minunet.kernels import simd, tiles
    if not simd.AVAILABLE:
        pytest.skip("the vector kernel needs the JIT")
    model = mu.UNet(1, 3, depth=2, base_channels=4, rng=0)
    rng = np.random.default_rng(0)
    mu.predict(model, rng.random((40, 40)).astype(np.float32), normalized=True)   # one tile
    mu.predict(model, rng.random((40, 200)).astype(np.float32), normalized=True, tile=64)
    layouts = {sig[1].layout for sig in tiles._softmax_rows_f32.signatures}
    assert layouts == {"C"}, tiles._softmax_rows_f32.signatures
