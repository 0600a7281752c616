"""CrossEntropyLoss and DiceLoss: gradient checks, PyTorch's definitions, stability, errors."""

import numpy as np
import pytest

import minunet as mu
from minunet.losses import DICE_SMOOTH


def problem(rng, N=2, Kc=3, H=4, W=5, dtype=np.float64):
    logits = (rng.standard_normal((N, Kc, H, W)) * 2).astype(dtype)
    target = rng.integers(0, Kc, (N, H, W))
    weight = rng.uniform(0.2, 3.0, (N, H, W)).astype(dtype)
    return logits, target, weight


LOSSES = [mu.CrossEntropyLoss, mu.DiceLoss]
SHAPES = [(1, 2, 3, 5), (2, 3, 4, 2)]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("Loss", LOSSES)
def test_gradcheck(Loss, shape, weighted):
    N, Kc, H, W = shape
    logits, target, weight = problem(np.random.default_rng(0), N, Kc, H, W)
    args = (logits, target, weight) if weighted else (logits, target)
    report = mu.gradcheck(Loss(), *args, max_elements=None)
    assert [t.name for t in report.tensors] == ["input 0"]


def test_cross_entropy_matches_torch_mean_and_weighted_mean():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, target, weight = problem(np.random.default_rng(1), 2, 4, 5, 3)
    dout = 0.7
    for w in (None, weight):
        ce = mu.CrossEntropyLoss()
        loss = ce.forward(logits, target, w)
        dlogits = ce.backward(dout)
        lt = torch.tensor(logits, requires_grad=True)
        tt = torch.tensor(target)
        if w is None:
            ref = F.cross_entropy(lt, tt)
        else:
            wt = torch.tensor(w)
            ref = (F.cross_entropy(lt, tt, reduction="none") * wt).sum() / wt.sum()
        (ref * dout).backward()
        assert abs(loss - ref.item()) < 1e-12 * abs(ref.item())
        assert np.linalg.norm(dlogits - lt.grad.numpy()) < 1e-12 * np.linalg.norm(dlogits)


def test_cross_entropy_weighted_mean_formula():
    logits, target, weight = problem(np.random.default_rng(2))
    ce = mu.CrossEntropyLoss()
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    n, h, w = np.indices(target.shape)
    pixel = -np.log(p[n, target, h, w])  # (N, H, W)
    assert np.isclose(ce.forward(logits, target), pixel.mean(), rtol=1e-12)
    assert np.isclose(ce.forward(logits, target, weight),
                      (weight * pixel).sum() / weight.sum(), rtol=1e-12)
    # a constant weight map is the plain mean
    assert np.isclose(ce.forward(logits, target, np.full(target.shape, 5.0)), pixel.mean(),
                      rtol=1e-12)


def dice_torch(torch, logits, target, weight):
    """The DiceLoss docstring's formula, written in torch (autograd gives the oracle gradient)."""
    Kc = logits.shape[1]
    p = torch.softmax(logits, dim=1)
    t = torch.nn.functional.one_hot(target, Kc).permute(0, 3, 1, 2).to(p.dtype)
    w = 1.0 if weight is None else weight[:, None]
    inter = (w * p * t).sum(dim=(0, 2, 3))
    denom = (w * p).sum(dim=(0, 2, 3)) + (w * t).sum(dim=(0, 2, 3)) + DICE_SMOOTH
    return 1 - ((2 * inter + DICE_SMOOTH) / denom).mean()


def test_dice_matches_formula_in_torch():
    torch = pytest.importorskip("torch")
    logits, target, weight = problem(np.random.default_rng(3), 2, 3, 6, 5)
    for w in (None, weight):
        dice = mu.DiceLoss()
        loss = dice.forward(logits, target, w)
        dlogits = dice.backward(1.3)
        lt = torch.tensor(logits, requires_grad=True)
        ref = dice_torch(torch, lt, torch.tensor(target), None if w is None else torch.tensor(w))
        (ref * 1.3).backward()
        assert abs(loss - ref.item()) < 1e-12
        assert np.linalg.norm(dlogits - lt.grad.numpy()) < 1e-12 * np.linalg.norm(dlogits)


def test_perfect_prediction_scores_zero_dice_loss_and_tiny_cross_entropy():
    rng = np.random.default_rng(4)
    target = rng.integers(0, 3, (2, 6, 7))
    target[0, 0, 0] = 2  # make sure not every class is everywhere; absent classes still score 1
    logits = np.where(np.arange(3)[None, :, None, None] == target[:, None], 50.0, -50.0)
    for dtype in (np.float32, np.float64):
        assert mu.DiceLoss().forward(logits.astype(dtype), target) < 1e-6
        assert mu.CrossEntropyLoss().forward(logits.astype(dtype), target) < 1e-6
    wrong = -logits
    assert mu.DiceLoss().forward(wrong, target) > 0.5


def test_stable_for_huge_logits_and_float32():
    rng = np.random.default_rng(5)
    logits, target, _ = problem(rng, dtype=np.float32)
    big = logits * np.float32(1e4)  # exp would overflow without the max shift
    for Loss in LOSSES:
        loss = Loss()
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow is fine
            value = loss.forward(big, target)
            grad = loss.backward()
        assert np.isfinite(value) and np.all(np.isfinite(grad)) and grad.dtype == np.float32
    # float32 agrees with float64 to float32 precision
    for Loss in LOSSES:
        l32 = Loss().forward(logits, target)
        l64 = Loss().forward(logits.astype(np.float64), target)
        assert abs(l32 - l64) < 1e-5 * max(1.0, abs(l64))


@pytest.mark.parametrize("Loss", LOSSES)
def test_bad_inputs(Loss):
    name = Loss.__name__
    logits, target, weight = problem(np.random.default_rng(6))
    with pytest.raises(ValueError, match=rf"{name}.*class indices in \[0, 3\].*Kc = 3"):
        Loss().forward(logits, np.where(target == 1, 3, target))
    with pytest.raises(ValueError, match=rf"{name}.*class indices in \[-1"):
        Loss().forward(logits, target - 1)
    with pytest.raises(TypeError, match=rf"{name}.*integer array"):
        Loss().forward(logits, target.astype(np.float64))
    with pytest.raises(ValueError, match=rf"{name}.*target must have shape"):
        Loss().forward(logits, target[:, :-1])
    with pytest.raises(ValueError, match=rf"{name}.*logits must have 4 dimensions"):
        Loss().forward(logits[0], target)
    with pytest.raises(ValueError, match=rf"{name}.*weight map must have shape"):
        Loss().forward(logits, target, weight[0])
    with pytest.raises(ValueError, match=rf"{name}.*weight map must be >= 0"):
        Loss().forward(logits, target, -weight)
    bad = logits.copy()
    bad[0, 1, 2, 3] = np.nan
    with pytest.raises(FloatingPointError, match=rf"{name}.*logits.*1 NaN"):
        Loss().forward(bad, target)
    with pytest.raises(RuntimeError, match=rf"{name}.backward was called before forward"):
        Loss().backward()
