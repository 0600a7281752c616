"""Extend and observe without surgery: UNet(norm=, act=) factories, forward/backward hooks,
mu.trace's per-layer records, and MINUNET_READABLE=1 running the readable Adam update."""

import copy

import numpy as np
import pytest

import minunet as mu
from minunet import module as module_py
from minunet.unet import UNet


class ChannelScale(mu.Module):
    """A student's normalisation stand-in: y = g[c] * x + b[c] (any per-channel affine map)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = mu.Parameter(np.linspace(0.5, 1.5, channels).astype(np.float32))
        self.bias = mu.Parameter(np.zeros(channels, np.float32))

    def forward(self, x):
        self.save_for_backward(x)
        return self.weight.data[:, None, None] * x + self.bias.data[:, None, None]

    def backward(self, dout):
        (x,) = self.take_saved()
        self.weight.grad += (dout * x).sum(axis=(0, 2, 3))
        self.bias.grad += dout.sum(axis=(0, 2, 3))
        return self.weight.data[:, None, None] * dout


class Tanh(mu.Module):
    def forward(self, x):
        y = np.tanh(x)
        self.save_for_backward(y)
        return y

    def backward(self, dout):
        (y,) = self.take_saved()
        return dout * (1 - y * y)


# ------------------------------------------------------------------ norm= and act=
@pytest.mark.parametrize("readable", [True, False])
def test_norm_and_act_factories_build_and_gradcheck(readable):
    model = UNet(1, 3, depth=2, base_channels=2, rng=0, readable=readable,
                 norm=ChannelScale, act=Tanh)
    for block in (*model.down, model.bottom, *model.up):
        assert type(block.bn1) is ChannelScale and type(block.relu2) is Tanh
    names = [name for name, _ in model.named_parameters()]
    assert names[:3] == ["down.0.conv1.weight", "down.0.bn1.weight", "down.0.bn1.bias"]
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    assert mu.gradcheck(model, x, mode="random").ok


def test_norm_and_act_give_the_same_numbers_readable_and_fast():
    kw = dict(depth=2, base_channels=4, rng=3, norm=ChannelScale, act=Tanh)
    readable = UNet(1, 3, readable=True, **kw).astype(np.float64)
    fast = UNet(1, 3, readable=False, **kw).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 16))
    np.testing.assert_allclose(fast.forward(x), readable.forward(x), rtol=1e-10, atol=1e-12)


def test_default_fast_network_still_fuses_and_readable_does_not():
    from minunet.kernels import layers as fast_layers
    from minunet.kernels import unet as fast_unet

    fast = UNet(depth=1, base_channels=2, rng=0, readable=False)
    assert type(fast) is fast_unet.UNet and isinstance(fast, UNet) and not fast.readable
    assert type(fast.down[0].bn1) is fast_layers.BatchNormReLU2d and fast.down[0].relu1 is None
    readable = UNet(depth=1, base_channels=2, rng=0, readable=True)
    assert type(readable) is UNet and type(readable.down[0].relu1) is mu.ReLU
    assert type(copy.deepcopy(readable)) is UNet  # copies keep their class
    assert type(copy.deepcopy(fast)) is fast_unet.UNet


def test_the_readable_unet_file_has_no_fast_path():
    import inspect

    from minunet import unet

    source = inspect.getsource(unet)
    for word in ("fast_layers", "map_batch(", "after_conv(", "_folded(", "BatchNormReLU2d("):
        assert word not in source, word


# ------------------------------------------------------------------ hooks
def test_hooks_fire_once_per_call_and_can_be_removed():
    calls = []
    layer = ChannelScale(3)
    h1 = layer.register_forward_hook(lambda m, inputs, out: calls.append(("f", out.shape)))
    h2 = layer.register_backward_hook(lambda m, dout, dx: calls.append(("b", dx.shape)))
    x = np.ones((1, 3, 2, 2), np.float32)
    layer.backward(layer(x))
    assert calls == [("f", x.shape), ("b", x.shape)]
    h1.remove()
    h2.remove()
    layer.backward(layer(x))
    assert len(calls) == 2 and not module_py._HOOKS and not module_py._hooks_on


def test_a_subclass_calling_super_fires_its_hook_once():
    class Louder(ChannelScale):
        def forward(self, x):
            return 2 * super().forward(x)

        def backward(self, dout):
            return super().backward(2 * dout)

    calls = []
    layer = Louder(3)
    layer.register_forward_hook(lambda *a: calls.append("f"))
    layer.register_backward_hook(lambda *a: calls.append("b"))
    layer.backward(layer(np.ones((1, 3, 2, 2), np.float32)))
    assert calls == ["f", "b"]


def test_copies_carry_no_hooks():
    calls = []
    layer = ChannelScale(3)
    layer.register_forward_hook(lambda *a: calls.append(1))
    copy.deepcopy(layer).forward(np.ones((1, 3, 2, 2), np.float32))
    assert calls == []


# ------------------------------------------------------------------ trace
@pytest.mark.parametrize("readable", [True, False])
def test_trace_records_every_layer_in_order(readable):
    model = UNet(1, 3, depth=2, base_channels=2, rng=0, readable=readable)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with mu.trace(model, keep=True) as t:
        logits = model(x)
        model.backward(np.ones_like(logits))
    assert not module_py._HOOKS  # all removed
    forward = [r.name for r in t.forward_records()]
    assert forward[0] == "down.0.conv1" and forward[-1] == "head"
    assert forward.index("pool.0") < forward.index("bottom.conv1") < forward.index("upconv.1")
    assert t.forward_records()[-1].shapes == [(2, 3, 8, 8)]
    backward = t.backward_records()
    assert backward[0].name == "head" and backward[-1].name == "down.0.conv1"
    head = backward[0]
    np.testing.assert_allclose(head.norm, np.linalg.norm(head.arrays[0]), rtol=1e-6)
    norms = t.grad_norms()
    assert set(norms) >= {"head", "pool.0", "down.0.conv1"}
    assert "d.c1" not in t.table() and "down.0.conv1" in t.table()
    if readable:
        (concat,) = [r for r in backward if r.name == "concat.0"]
        assert concat.shapes == [(2, 2, 8, 8), (2, 2, 8, 8)]  # dskip, dup


# ------------------------------------------------------------------ readable Adam
def test_minunet_readable_runs_the_readable_adam(monkeypatch):
    from minunet import optim

    def refuse(*args):
        raise AssertionError("the fused kernel ran")

    rng = np.random.default_rng(0)
    results = {}
    for readable in ("1", "0"):
        monkeypatch.setenv("MINUNET_READABLE", readable)
        p = mu.Parameter(rng.standard_normal((4, 5)).astype(np.float32))
        p.data[...] = np.arange(20, dtype=np.float32).reshape(4, 5) / 7
        opt = mu.Adam([p], lr=0.1, weight_decay=0.01)
        assert opt.readable == (readable == "1")
        with monkeypatch.context() as m:
            if readable == "1":
                m.setattr(optim, "adam_update", refuse)
            for step in range(3):
                p.grad[...] = np.sin(np.arange(20, dtype=np.float32) + step).reshape(4, 5)
                opt.step()
        results[readable] = p.data.copy()
    np.testing.assert_allclose(results["1"], results["0"], rtol=1e-6, atol=1e-7)
    assert mu.Adam([mu.Parameter(np.zeros(2, np.float32))], readable=False).readable is False
