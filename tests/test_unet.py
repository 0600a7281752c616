"""The U-Net: whole-network gradient checks (skip routing), shapes, names, summary, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet.unet import UNet

# Parameter counts of the reference U-Net (PyTorch, same architecture), from PERF-NOTES.
REFERENCE_COUNTS = {(3, 8): 121_051, (3, 16): 482_483, (4, 32): 7_762_531}


def test_gradcheck_depth2_train_mode():
    model = UNet(1, 3, depth=2, base_channels=2, rng=0)
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    report = mu.gradcheck(model, x, mode="random")
    assert report.ok and len(report.tensors) == 1 + len(model.parameters())


def test_gradcheck_depth2_full_on_input_and_first_weights():
    # element by element on a few elements of every tensor: a second, independent view
    model = UNet(1, 3, depth=2, base_channels=2, rng=2)
    x = np.random.default_rng(3).standard_normal((2, 1, 8, 8))
    assert mu.gradcheck(model, x, mode="full", max_elements=8).ok


def test_gradcheck_depth3_train_mode():
    model = UNet(2, 3, depth=3, base_channels=2, rng=4)
    x = np.random.default_rng(5).standard_normal((2, 2, 8, 16))
    assert mu.gradcheck(model, x, mode="random").ok


def test_gradcheck_eval_mode():
    model = UNet(1, 2, depth=2, base_channels=2, rng=6)
    x = np.random.default_rng(7).standard_normal((1, 1, 8, 12))
    model.forward(x.astype(np.float32))  # move the running statistics away from (0, 1)
    assert mu.gradcheck(model.eval(), x, mode="random").ok


class ForgetsTheSkip(UNet):
    """A U-Net whose backward drops the skip connections' gradient: gradcheck must see it."""

    def backward(self, dlogits):
        d = self.head.backward(dlogits)
        for i in range(self.depth):
            d = self.up[i].backward(d)
            _, d = self.concat[i].backward(d)
            d = self.upconv[i].backward(d)
        d = self.bottom.backward(d)
        for i in reversed(range(self.depth)):
            d = self.down[i].backward(self.pool[i].backward(d))
        return d


def test_gradcheck_catches_a_lost_skip_gradient():
    model = ForgetsTheSkip(1, 3, depth=2, base_channels=2, rng=0)
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
