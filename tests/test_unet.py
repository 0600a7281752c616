"""The U-Net: whole-network gradient checks (skip routing), shapes, names, summary, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet.unet import UNet

# Parameter counts of the reference U-Net (PyTorch, same architecture), from PERF-NOTES.
REFERENCE_COUNTS = {(3, 8): 121_051, (3, 16): 482_483, (4, 32): 7_762_531}


def rel(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def evaluating(model, rng):
    """The model in inference (eval mode, gradients off), its batch norms given running
    statistics drawn from rng, not the trivial ones."""
    for _, m in model.named_modules():
        if hasattr(m, "running_var"):
            m.running_mean[:] = rng.standard_normal(m.running_mean.shape)
            m.running_var[:] = rng.uniform(0.5, 2.0, m.running_var.shape)
    return model.eval().set_grad_enabled(False)


@pytest.mark.parametrize("readable", [True, False])
def test_gradcheck_depth2_train_mode(readable):
    model = UNet(1, 3, depth=2, base_channels=2, rng=0, readable=readable)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    report = mu.gradcheck(model, x, mode="random")
    assert report.ok and len(report.tensors) == 1 + len(model.parameters())


@pytest.mark.parametrize("readable", [True, False])
def test_gradcheck_depth2_full_on_input_and_first_weights(readable):
    # element by element on a few elements of every tensor: a second, independent view
    model = UNet(1, 3, depth=2, base_channels=2, rng=2, readable=readable)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8))
    assert mu.gradcheck(model, x, mode="full", max_elements=8).ok


@pytest.mark.parametrize("readable", [True, False])
def test_gradcheck_depth3_train_mode(readable):
    model = UNet(2, 3, depth=3, base_channels=2, rng=4, readable=readable)
    x = np.random.default_rng(5).standard_normal((2, 2, 8, 16))
    assert mu.gradcheck(model, x, mode="random").ok


@pytest.mark.parametrize("readable", [True, False])
def test_gradcheck_eval_mode(readable):
    model = UNet(1, 2, depth=2, base_channels=2, rng=6, readable=readable)
    x = np.random.default_rng(7).standard_normal((1, 1, 8, 12))
    model.forward(x.astype(np.float32))  # move the running statistics away from (0, 1)
    assert mu.gradcheck(model.eval(), x, mode="random").ok


class ForgetsTheSkip(UNet):
    """A U-Net whose backward drops the skip connections' gradient: gradcheck must see it."""

    def backward(self, dlogits):
        d = self.head.backward(dlogits)
        for i in range(self.depth):
            d = self.up[i].backward(d)
            _, d = self.concat[i].backward(d) if self.readable else d  # fast: two halves
            d = self.upconv[i].backward(d)
        d = self.bottom.backward(d)
        for i in reversed(range(self.depth)):
            d = self.down[i].backward(self.pool[i].backward(d))
        return d


@pytest.mark.parametrize("readable", [True, False])
def test_gradcheck_catches_a_lost_skip_gradient(readable):
    model = ForgetsTheSkip(1, 3, depth=2, base_channels=2, rng=0, readable=readable)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    report = mu.gradcheck(model, x, mode="random", raise_on_fail=False)
    assert not report.ok
    failed = {t.name for t in report.tensors if not t.ok}
    assert "input 0" in failed and "down.0.conv1.weight" in failed
    assert "head.weight" not in failed and "up.0.conv1.weight" not in failed


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = UNet(2, 3, depth=2, base_channels=4, rng=0).astype(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 12))
    g = np.random.default_rng(2).standard_normal((2, 3, 8, 12))

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU())

    down = [block(2, 4), block(4, 8)]
    bottom = block(8, 16)
    upconv = [nn.ConvTranspose2d(8, 4, 2, stride=2), nn.ConvTranspose2d(16, 8, 2, stride=2)]
    up = [block(8, 4), block(16, 8)]
    head = nn.Conv2d(4, 3, 1)
    torch_blocks = {f"down.{i}": down[i] for i in range(2)} | {"bottom": bottom} | {
        f"up.{i}": up[i] for i in range(2)}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, seq in torch_blocks.items():
            for ours, theirs in (("conv1", 0), ("bn1", 1), ("conv2", 3), ("bn2", 4)):
                seq[theirs].weight.copy_(torch.tensor(params[f"{name}.{ours}.weight"].data))
                if ours.startswith("bn"):
                    seq[theirs].bias.copy_(torch.tensor(params[f"{name}.{ours}.bias"].data))
        for i in range(2):
            upconv[i].weight.copy_(torch.tensor(params[f"upconv.{i}.weight"].data))
            upconv[i].bias.copy_(torch.tensor(params[f"upconv.{i}.bias"].data))
        head.weight.copy_(torch.tensor(params["head.weight"].data))
        head.bias.copy_(torch.tensor(params["head.bias"].data))
    modules = [*down, bottom, *upconv, *up, head]
    for m in modules:
        m.double().train()

    tx = torch.tensor(x, requires_grad=True)
    h, skips = tx, []
    for i in range(2):
        h = down[i](h)
        skips.append(h)
        h = nn.functional.max_pool2d(h, 2)
    h = bottom(h)
    for i in reversed(range(2)):
        h = up[i](torch.cat([skips[i], upconv[i](h)], dim=1))
    tlogits = head(h)
    tlogits.backward(torch.tensor(g))

    logits = model.forward(x)
    dx = model.backward(g)
    np.testing.assert_allclose(logits, tlogits.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(params["down.0.conv1.weight"].grad,
                               down[0][0].weight.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.down[1].bn2.running_var, down[1][4].running_var.numpy(),
                               rtol=1e-12)


def test_fast_unet_equals_readable_unet():
    """The default (fast) network and the readable one: same weights, same numbers."""
    rng = np.random.default_rng(8)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        readable = UNet(2, 3, depth=2, base_channels=4, rng=9, readable=True).astype(dtype)
        fast = UNet(2, 3, depth=2, base_channels=4, rng=9, readable=False).astype(dtype)
        for (name, a), (_, b) in zip(readable.state_dict().items(), fast.state_dict().items(),
                                     strict=True):
            assert np.array_equal(a, b), name  # same initialisation from the same seed
        for training in (True, False):
            readable.train(training)
            fast.train(training)
            x = rng.standard_normal((2, 2, 8, 12)).astype(dtype)
            y_readable, y_fast = readable.forward(x), fast.forward(x)
            assert rel(y_fast, y_readable) < tol
            g = rng.standard_normal(y_readable.shape).astype(dtype)
            assert rel(fast.backward(g), readable.backward(g)) < tol
        for (name, p), (_, q) in zip(fast.named_parameters(), readable.named_parameters(),
                                     strict=True):
            assert rel(p.grad, q.grad) < tol, name
        for (name, a), (_, b) in zip(fast.named_buffers(), readable.named_buffers(), strict=True):
            assert rel(a, b) < tol, name


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_fast_inference_equals_readable_unet_on_winograd_sizes(monkeypatch, dtype, tol):
    """Inference (eval, gradients off) at sizes where the fast network's 3x3 convolutions
    with >= 16 input channels take Winograd (kernels/winograd.py) and its rows are cut into
    blocks of tiles (448 px: 112 tiles a row; ITEM_BYTES made tiny: blocks of 48): the
    readable network's numbers, and the same bits as whole rows."""
    from minunet.kernels import conv, winograd
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT: inference takes conv2d_forward")
    rng = np.random.default_rng(11)
    readable = UNet(1, 3, depth=2, base_channels=16, rng=3, readable=True).astype(dtype)
    fast = UNet(1, 3, depth=2, base_channels=16, rng=3, readable=False).astype(dtype)
    for model in (readable, fast):   # the same running statistics, not the trivial ones
        stats = np.random.default_rng(5)
        for _, m in model.named_modules():
            if hasattr(m, "running_var"):
                m.running_mean[:] = stats.standard_normal(m.running_mean.shape)
                m.running_var[:] = stats.uniform(0.5, 2.0, m.running_var.shape)
        model.eval().set_grad_enabled(False)
    x = rng.standard_normal((1, 1, 32, 448)).astype(dtype)
    monkeypatch.setattr(winograd, "ITEM_BYTES", 1 << 40)            # whole rows
    whole = fast(x)
    monkeypatch.setattr(winograd, "ITEM_BYTES", 1)                  # blocks of 48 tiles
    assert winograd.band_cols(448 // 4, 16, 16, x.itemsize) == 48
    blocks = fast(x)
    np.testing.assert_array_equal(blocks, whole)
    assert rel(blocks, readable(x)) < tol


def test_fast_inference_splits_the_batch_over_threads_with_the_same_bits(monkeypatch):
    """Eval mode, gradients off, enough work: one slice of the batch per thread, and exactly
    the logits of the unsplit forward (no image's result depends on the others)."""
    from minunet.kernels import threads
    rng = np.random.default_rng(0)
    model = evaluating(UNet(1, 3, depth=2, base_channels=16, rng=rng, readable=False), rng)
    x = rng.standard_normal((3, 1, 128, 128)).astype(np.float32)
    before = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        whole = model(x)
        threads.set_num_threads(2)
        sizes = []
        real = model._layers_forward
        monkeypatch.setattr(model, "_layers_forward", lambda part: sizes.append(len(part))
                            or real(part))
        monkeypatch.setattr(threads, "SPLIT_FLOPS", model.forward_flops(3, 128, 128) / 2)
        split = model(x)
    finally:
        threads.set_num_threads(before)
    assert sorted(sizes) == [1, 2]
    np.testing.assert_array_equal(split, whole)


def test_fast_unet_never_builds_the_concatenations(monkeypatch):
    """up.i's first convolution reads the skip and the up-step's output where they are, in
    training and in inference; its results are checked against the readable U-Net above."""
    from minunet.kernels import layers as fast_layers

    def refuse(self, a, b):
        raise AssertionError("Concat.forward ran")

    monkeypatch.setattr(fast_layers.Concat, "forward", refuse)
    model = UNet(1, 3, depth=2, base_channels=8, rng=0, readable=False)
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    logits = model(x)
    model.backward(np.ones_like(logits))
    model.eval().set_grad_enabled(False)
    model(x)


def test_readable_switch(monkeypatch):
    from minunet.kernels import layers as fast_layers
    from minunet.layers import conv as readable_conv

    monkeypatch.delenv("MINUNET_READABLE", raising=False)
    assert type(UNet(depth=1, base_channels=2, rng=0).head) is fast_layers.Conv2d
    assert not UNet(depth=1, base_channels=2, rng=0).readable
    monkeypatch.setenv("MINUNET_READABLE", "1")
    model = UNet(depth=1, base_channels=2, rng=0)
    assert model.readable and type(model.head) is readable_conv.Conv2d
    assert type(model.down[0].bn1).__module__ == "minunet.layers.batchnorm"
    assert type(UNet(depth=1, base_channels=2, rng=0, readable=False).head) is fast_layers.Conv2d
    # the same state dict either way: a checkpoint of one loads into the other
    UNet(depth=1, base_channels=2, readable=False).load_state_dict(model.state_dict())
    monkeypatch.setenv("MINUNET_READABLE", "maybe")
    with pytest.raises(ValueError, match="MINUNET_READABLE='maybe'"):
        UNet(depth=1, base_channels=2, rng=0)


# ------------------------------------------------------------------ structure
def test_shapes_names_and_dtype():
    model = UNet(2, 4, depth=3, base_channels=4, rng=0)
    x = np.random.default_rng(0).standard_normal((3, 2, 16, 24)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (3, 4, 16, 24) and logits.dtype == np.float32
    dx = model.backward(np.ones_like(logits))
    assert dx.shape == x.shape and dx.dtype == np.float32
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["down.0.conv1.weight", "down.0.bn1.weight", "down.0.bn1.bias"]
    assert "bottom.conv2.weight" in names and "upconv.2.weight" in names
    assert names[-2:] == ["head.weight", "head.bias"]
    assert "down.0.conv1.bias" not in names  # batch norm follows: a bias would be cancelled
    assert "up.1.bn2.running_var" in model.state_dict()


@pytest.mark.parametrize(("depth", "base"), sorted(REFERENCE_COUNTS))
def test_parameter_count_matches_the_reference(depth, base):
    assert UNet(1, 3, depth=depth, base_channels=base, rng=0).num_parameters() == \
        REFERENCE_COUNTS[depth, base]


def test_seeded_init_and_config():
    a, b = UNet(depth=2, base_channels=4, rng=7), UNet(depth=2, base_channels=4, rng=7)
    for (na, va), (nb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb
        np.testing.assert_array_equal(va, vb)
    assert UNet(**a.config()).num_parameters() == a.num_parameters()
    assert a.config() == {"in_channels": 1, "num_classes": 3, "depth": 2, "base_channels": 4}


def test_summary():
    model = UNet(1, 3, depth=3, base_channels=16, rng=0)
    text = model.summary((64, 96))
    lines = text.splitlines()
    assert "input (N, 1, 64, 96)" in lines[0]
    bottom = next(line for line in lines if line.startswith("bottom"))
    assert "(128, 8, 12)" in bottom and f"{model.bottom.num_parameters():,}" in bottom
    head = next(line for line in lines if line.startswith("head"))
    assert "(3, 64, 96)" in head
    assert lines[-1].split()[-1] == f"{model.num_parameters():,}"
    # one row per part: 2 per encoder level, 3 per decoder level, bottom, head
    assert sum(line.split()[0][:3] in ("dow", "poo", "bot", "upc", "con", "up.", "hea")
               for line in lines[2:-1]) == 5 * 3 + 2


def test_size_not_divisible_says_so_and_points_to_predict():
    model = UNet(depth=3, base_channels=2, rng=0)
    with pytest.raises(ValueError, match=r"height 20 is not divisible by 2\*\*depth=8.*predict"):
        model.forward(np.zeros((1, 1, 20, 16), np.float32))
    with pytest.raises(ValueError, match="width 12"):
        model.summary((16, 12))


def test_bad_input():
    model = UNet(in_channels=1, depth=1, base_channels=2, rng=0)
    with pytest.raises(ValueError, match="expected 1 input channels, got 3"):
        model.forward(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="4 dimensions"):
        model.forward(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        UNet(depth=0)


def test_fast_inference_frees_up_steps_inputs_before_their_second_convolution():
    """Memory at inference: up.i's first convolution's inputs, the skip and the up-step's
    output (full-size activations at level 0), are freed as soon as it is done, before the
    second convolution allocates its output (DoubleConv.forward_parts), and the logits are
    those of the readable network."""
    import weakref

    rng = np.random.default_rng(3)
    fast = UNet(1, 3, depth=2, base_channels=4, rng=1, readable=False)
    readable = UNet(1, 3, depth=2, base_channels=4, rng=1, readable=True)
    for model in (fast, readable):
        model.eval().set_grad_enabled(False)
    inputs_alive = []   # per up-step: whether conv1's inputs are alive as conv2 starts
    for up in fast.up:
        refs = []

        def conv1(conv, *parts, first=up.bn1.after_conv, refs=refs, window=None):
            refs[:] = [weakref.ref(p) for p in parts]
            return first(conv, *parts, window=window)

        def conv2(conv, x, second=up.bn2.after_conv, refs=refs, window=None):
            inputs_alive.append([r() is not None for r in refs])
            return second(conv, x, window=window)

        up.bn1.after_conv, up.bn2.after_conv = conv1, conv2   # this model's instances only
    x = rng.standard_normal((1, 1, 32, 32)).astype(np.float32)
    logits = fast(x)
    assert inputs_alive == [[False, False]] * fast.depth
    assert rel(logits, readable(x)) < 1e-5


def test_fast_inference_takes_the_heads_sums_from_the_last_convolution(monkeypatch):
    """Inference of a U-Net whose last convolution Winograd takes: up.0's second
    convolution and the 1x1 head run as one pass (BatchNormReLU2d.after_conv_head), the
    16-channel activation between them never stored, and the logits are those of the two
    layers one after the other (with a hook on, which sees every layer's output) to the bit."""
    from minunet.kernels import conv, upsample
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT: inference takes the direct sums")
    rng = np.random.default_rng(7)
    model = evaluating(UNet(1, 3, depth=2, base_channels=16, rng=2, readable=False), rng)
    x = rng.standard_normal((2, 1, 32, 48)).astype(np.float32)
    heads = []
    original = upsample.conv1x1_forward
    monkeypatch.setattr(upsample, "conv1x1_forward",
                        lambda *a, **k: heads.append(a[0].shape) or original(*a, **k))
    fused = model(x)
    assert heads == []                                   # the head never ran on its own
    seen = []
    handle = model.head.register_forward_hook(lambda m, inputs, out: seen.append(out.shape))
    try:
        separate = model(x)
    finally:
        handle.remove()
    assert heads and seen == [separate.shape]            # ... but it does with a hook on
    np.testing.assert_array_equal(fused, separate)


def _inside(outer, inner):
    """Whether window inner (top, left, height, width) lies inside window outer."""
    return (outer[0] <= inner[0] and outer[1] <= inner[1]
            and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def _reads(window, size):
    """What a Winograd convolution of that output window reads of its input: 1 row and 16
    columns (a vector) around it, within the image."""
    top, left, h, w = window
    t, lft = max(0, top - 1), max(0, left - 16)
    return t, lft, min(size[0], top + h + 1) - t, min(size[1], left + w + 16) - lft


@pytest.mark.parametrize("depth, height, width", [(3, 1152, 1152), (3, 384, 640),
                                                  (2, 64, 256), (4, 512, 768)])
def test_decoder_windows_cover_what_each_layer_reads(depth, height, width):
    """kernels.unet.decoder_windows: every window on its kernel's grid, and each layer's
    window covering what the layer after it reads (a 3x3 convolution: 1 row and 16 columns
    around its window; the up-step: the half of its window), for kept windows anywhere."""
    from minunet.kernels.unet import decoder_windows
    rng = np.random.default_rng(depth * height)
    for _ in range(20):
        top = int(rng.integers(0, height // 2)) // 8 * 8
        left = int(rng.integers(0, width // 2)) // 8 * 8
        keep = (top, left, int(rng.integers(8, height - top + 1)),
                int(rng.integers(8, width - left + 1)))
        plan = decoder_windows(depth, height, width, keep)
        need = keep
        for i, (first, second, up) in enumerate(plan):
            size = (height >> i, width >> i)
            assert all(v % 4 == 0 for v in (first[0], first[2], second[0], second[2]))
            assert all(v % 16 == 0 for v in (first[1], first[3], second[1], second[3]))
            assert up[0] % 2 == up[2] % 2 == up[1] % 32 == up[3] % 32 == 0
            assert _inside(second, need)
            assert _inside(first, _reads(second, size))
            assert _inside(up, _reads(first, size))
            assert _inside((0, 0, *size), up)
            need = tuple(v // 2 for v in up)


@pytest.mark.parametrize("depth, base, shape, keep", [
    (3, 16, (2, 1, 384, 512), (64, 64, 256, 384)),
    (2, 16, (1, 1, 192, 320), (40, 24, 112, 272)),
    (3, 16, (1, 1, 256, 128), (0, 0, 256, 128)),
])
def test_forward_window_is_the_forward_on_its_window_with_less_work(monkeypatch, depth, base,
                                                                    shape, keep):
    """UNet.forward_window (inference, the kept window of the logits): those logits to the
    bit, the decoder's layers given the windows of decoder_windows (the work they skip),
    and the whole forward where a layer's kernel cannot compute a window (base 8: level 0's
    second convolution has 8 input channels, below Winograd's 16)."""
    from minunet.kernels import conv, layers, unet
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    rng = np.random.default_rng(depth + base)
    model = evaluating(UNet(1, 3, depth=depth, base_channels=base, rng=1, readable=False), rng)
    x = rng.standard_normal(shape).astype(np.float32)
    whole = model(x)
    given = []
    real_conv, real_head = conv.conv2d_inference, conv.conv2d_inference_head
    monkeypatch.setattr(layers, "conv2d_inference", lambda *a, window=None, **k: (
        given.append(window), real_conv(*a, window=window, **k))[1])
    monkeypatch.setattr(conv, "conv2d_inference_head", lambda *a, window=None, **k: (
        given.append(window), real_head(*a, window=window, **k))[1])
    part = model.forward_window(x, keep)
    top, left, h, w = keep
    np.testing.assert_array_equal(part[..., top:top + h, left:left + w],
                                  whole[..., top:top + h, left:left + w])
    plan = unet.decoder_windows(depth, shape[2], shape[3], keep)
    # the encoder's and the bottom's convolutions whole, the decoder's on their windows (per
    # slice of the batch: the threads' calls interleave)
    expected = [None] * (2 * depth + 2) + [win for i in range(depth) for win in plan[i][:2]]
    copies = len(given) // len(expected)
    assert copies >= 1 and sorted(given, key=str) == sorted(expected * copies, key=str)
    if keep != (0, 0, *shape[2:]):
        assert any(win[2] * win[3] < (shape[2] >> i) * (shape[3] >> i)
                   for i in range(depth) for win in plan[i])
    small = evaluating(UNet(1, 3, depth=2, base_channels=8, rng=1, readable=False), rng)
    assert small.window_plan(128, 128, np.float32, (8, 8, 112, 112)) is None
    assert model.window_plan(shape[2], shape[3], np.float64, keep) is None


def test_predict_keeps_the_cores_of_forward_window_the_same_probabilities(monkeypatch):
    """mu.predict takes the fast U-Net's forward_window on each tile's core: the same
    probabilities, to the bit, as the whole forward of every tile."""
    from minunet.kernels import conv
    if not conv.USE_WINOGRAD:
        pytest.skip("no AVX-512 or no JIT")
    rng = np.random.default_rng(8)
    model = evaluating(UNet(1, 3, depth=2, base_channels=16, rng=2, readable=False), rng)
    image = rng.random((300, 420)).astype(np.float32)
    calls = []
    real = model.forward_window
    monkeypatch.setattr(model, "forward_window",
                        lambda x, window: calls.append(window) or real(x, window))
    kept = mu.predict(model, image, tile=128, normalized=True)
    assert calls and all(w[0] == w[1] > 0 for w in calls)
    monkeypatch.setattr(model, "forward_window", None)
    np.testing.assert_array_equal(kept, mu.predict(model, image, tile=128, normalized=True))
