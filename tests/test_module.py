"""Module bookkeeping and the gradient checker itself (which must fail on a wrong backward)."""

import numpy as np
import pytest

import minunet as mu


class Scale(mu.Module):
    """y = x * w + b per channel: a layer a learner might write (and the checker's test subject)."""

    def __init__(self, channels: int, wrong: str = "") -> None:
        super().__init__()
        rng = np.random.default_rng(1)
        self.weight = mu.Parameter(rng.standard_normal(channels).astype(np.float32))
        self.bias = mu.Parameter(np.zeros(channels, np.float32))
        self.register_buffer("calls", np.zeros(1, np.float32))
        self.wrong = wrong

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.weight.data[None, :, None, None] + self.bias.data[None, :, None, None]

    def backward(self, dout):
        (x,) = self.take_saved()
        dw = (dout * x).sum(axis=(0, 2, 3))
        if self.wrong == "weight":
            dw = dw * 1.001                      # a subtly wrong gradient
        if self.wrong == "overwrite":
            self.weight.grad[...] = dw           # forgets to accumulate
        else:
            self.weight.grad += dw
        self.bias.grad += dout.sum(axis=(0, 2, 3))
        if self.wrong == "inplace":
            dout *= self.weight.data[None, :, None, None]
            return dout
        return dout * self.weight.data[None, :, None, None]


class Pair(mu.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = [Scale(3), Scale(3)]
        self.head = Scale(3)


def test_named_parameters_walk_lists_and_children():
    names = [n for n, _ in Pair().named_parameters()]
    assert names == ["blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias",
                     "head.weight", "head.bias"]
    state = Pair().state_dict()
    assert "blocks.1.calls" in state and "head.calls" in state


def test_train_eval_reach_every_module():
    m = Pair().eval()
    assert not any(mod.training for _, mod in m.named_modules())
    m.train()
    assert all(mod.training for _, mod in m.named_modules())


def test_state_dict_round_trip_and_errors():
    a, b = Pair(), Pair()
    a.blocks[1].weight.data[:] = 7
    a.head.calls[:] = 3
    b.load_state_dict(a.state_dict())
    assert np.array_equal(b.blocks[1].weight.data, a.blocks[1].weight.data)
    assert b.head.calls[0] == 3
    state = a.state_dict()
    state["head.weight"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"head.weight.*shape"):
        b.load_state_dict(state)
    del state["head.weight"]
    with pytest.raises(KeyError, match="missing"):
        b.load_state_dict(state)


def test_astype_converts_params_grads_buffers():
    m = Pair().astype(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in m.parameters())
    assert m.head.calls.dtype == np.float64 and m.dtype == np.float64


def test_backward_before_forward_is_a_clear_error():
    with pytest.raises(RuntimeError, match="Scale.backward was called before forward"):
        Scale(2).backward(np.zeros((1, 2, 3, 3), np.float32))


def test_sequential_chains_forward_and_backward():
    seq = mu.Sequential(Scale(3), Scale(3))
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    report = mu.gradcheck(seq, x)
    assert report.ok and len(report.tensors) == 5


def test_gradcheck_passes_a_correct_layer():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    report = mu.gradcheck(Scale(3), x)
    assert report.ok
    assert [t.name for t in report.tensors] == ["input 0", "weight", "bias"]
    assert all(t.rel_error < 1e-8 for t in report.tensors)
    assert "OK" in str(report)


@pytest.mark.parametrize("wrong", ["weight", "overwrite", "inplace"])
def test_gradcheck_fails_a_wrong_backward(wrong):
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    with pytest.raises(mu.GradcheckError):
        mu.gradcheck(Scale(3, wrong=wrong), x)
    report = mu.gradcheck(Scale(3, wrong=wrong), x, raise_on_fail=False)
    assert not report.ok


def test_gradcheck_random_mode_catches_a_wrong_weight_gradient():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    assert mu.gradcheck(Scale(3), x, mode="random").ok
    report = mu.gradcheck(Scale(3, wrong="weight"), x, mode="random", raise_on_fail=False)
    assert not report.ok
    assert [t.ok for t in report.tensors] == [True, False, True]


def test_gradcheck_leaves_the_original_module_alone():
    layer = Scale(3)
    before = layer.weight.data.copy()
    mu.gradcheck(layer, np.ones((1, 3, 2, 2)))
    assert layer.weight.data.dtype == np.float32 and np.array_equal(layer.weight.data, before)


def test_grad_disabled_keeps_nothing_for_backward():
    seq = mu.Sequential(Scale(3), Scale(3))
    x = np.ones((1, 3, 2, 2))
    seq.set_grad_enabled(False)
    y = seq(x)
    assert all(layer._saved is None for layer in seq.layers)
    with pytest.raises(RuntimeError, match="gradients disabled"):
        seq.backward(np.ones_like(y))
    seq.set_grad_enabled(True)
    seq(x)
    assert all(layer._saved is not None for layer in seq.layers)


class Legacy(mu.Module):
    """The older private hand-off (self._saved = x; self._take_saved()) still works."""

    def forward(self, x):
        self._saved = x
        return 3 * x

    def backward(self, dout):
        x = self._take_saved()
        assert x.shape == dout.shape
        return 3 * dout


def test_the_private_hand_off_still_works():
    layer = Legacy()
    x = np.ones((1, 2, 2, 2))
    layer.forward(x)
    assert np.array_equal(layer.take_saved()[0], x)  # take_saved wraps it in a tuple
    assert mu.gradcheck(Legacy(), np.random.default_rng(0).standard_normal((1, 2, 3, 2))).ok


class Doubler(mu.Module):
    """y = 2x, written with the public hand-off; `forgets` leaves out save_for_backward."""

    def __init__(self, forgets: bool = False) -> None:
        super().__init__()
        self.forgets = forgets

    def forward(self, x):
        if not self.forgets:
            self.save_for_backward(x.shape)
        return 2 * x

    def backward(self, dout):
        (shape,) = self.take_saved()
        assert dout.shape == shape
        return 2 * dout


def test_save_for_backward_hands_values_over_once():
    layer = Doubler()
    x = np.ones((2, 3))
    layer.forward(x)
    assert np.array_equal(layer.backward(np.ones((2, 3))), 2 * np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="Doubler.backward was called before forward"):
        layer.backward(np.ones((2, 3)))  # one backward per forward
    layer.forward(x)
    layer.forward(x)  # a second forward replaces what the first saved
    layer.backward(np.ones((2, 3)))


def test_forward_that_saved_nothing_says_so():
    layer = Doubler(forgets=True)
    with pytest.raises(RuntimeError, match="Doubler.backward was called before forward"):
        layer.backward(np.ones(3))
    layer.forward(np.ones(3))
    with pytest.raises(RuntimeError, match="forward stored nothing for backward") as err:
        layer.backward(np.ones(3))
    assert "before forward" not in str(err.value)
    assert "save_for_backward" in str(err.value)


def test_forward_clears_what_the_previous_forward_saved():
    layer = Doubler()
    layer.forward(np.ones(3))
    layer.forgets = True
    layer.forward(np.ones(3))  # saves nothing: backward must not get the stale shape
    with pytest.raises(RuntimeError, match="forward stored nothing"):
        layer.backward(np.ones(3))
