"""Optimizers and schedules: hand-derived one-step formulas, PyTorch trajectories, state dicts."""

import itertools
import math

import numpy as np
import pytest

from minunet.module import Parameter
from minunet.optim import SGD, Adam, CosineSchedule, StepSchedule


def make_params(rng, dtype=np.float64):
    shapes = [(3, 4), (5,), (2, 1, 3, 3)]
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in shapes]


def set_grads(params, rng):
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape)


# ------------------------------------------------------------------ one step, by hand
def test_sgd_one_step_plain_and_weight_decay():
    rng = np.random.default_rng(0)
    params = make_params(rng)
    set_grads(params, rng)
    before = [p.data.copy() for p in params]
    grads = [p.grad.copy() for p in params]
    SGD(params, lr=0.1, weight_decay=0.01).step()
    for p, w, g in zip(params, before, grads, strict=True):
        np.testing.assert_allclose(p.data, w - 0.1 * (g + 0.01 * w), rtol=1e-14)
        np.testing.assert_array_equal(p.grad, g)  # the optimizer never touches the gradient


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_two_steps(nesterov):
    rng = np.random.default_rng(1)
    params = make_params(rng)
    opt = SGD(params, lr=0.05, momentum=0.9, nesterov=nesterov)
    w = [p.data.copy() for p in params]
    bufs = [None] * len(params)
    for _ in range(2):
        set_grads(params, rng)
        for i, p in enumerate(params):
            g = p.grad
            bufs[i] = g.copy() if bufs[i] is None else 0.9 * bufs[i] + g
            step = g + 0.9 * bufs[i] if nesterov else bufs[i]
            w[i] = w[i] - 0.05 * step
        opt.step()
    for p, expected in zip(params, w, strict=True):
        np.testing.assert_allclose(p.data, expected, rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_first_steps_by_hand(decoupled):
    rng = np.random.default_rng(2)
    params = make_params(rng)
    lr, b1, b2, eps, wd = 1e-2, 0.8, 0.95, 1e-8, 0.1
    opt = Adam(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, decoupled=decoupled)
    w = [p.data.copy() for p in params]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t in (1, 2, 3):
        set_grads(params, rng)
        for i, p in enumerate(params):
            g = p.grad.copy()
            if decoupled:
                w[i] = w[i] * (1 - lr * wd)
            else:
                g = g + wd * w[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            w[i] = w[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
        opt.step()
        for p, expected in zip(params, w, strict=True):
            # textbook form vs PyTorch's rearranged form: equal up to round-off and eps placement
            np.testing.assert_allclose(p.data, expected, rtol=1e-9, atol=1e-12)


def test_adam_first_step_moves_each_weight_by_lr():
    # With bias correction, Adam's first step is lr * g / (|g| + eps'): |step| ~= lr everywhere.
    rng = np.random.default_rng(3)
    params = make_params(rng)
    set_grads(params, rng)
    before = [p.data.copy() for p in params]
    Adam(params, lr=1e-3).step()
    for p, w in zip(params, before, strict=True):
        np.testing.assert_allclose(np.abs(p.data - w), 1e-3, rtol=1e-4)
        assert np.all(np.sign(w - p.data) == np.sign(p.grad))


def test_float32_stays_float32():
    rng = np.random.default_rng(4)
    params = make_params(rng, np.float32)
    set_grads(params, rng)
    for opt in (SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
                Adam(params, weight_decay=1e-4), Adam(params, weight_decay=1e-4, decoupled=True)):
        opt.step()
        opt.step()
        assert all(p.data.dtype == np.float32 for p in params)
        assert all(a.dtype == np.float32 for arrays in opt.state.values() for a in arrays)


def test_zero_grad():
    rng = np.random.default_rng(5)
    params = make_params(rng)
    set_grads(params, rng)
    SGD(params, lr=1.0).zero_grad()
    assert all(not p.grad.any() for p in params)


def test_bad_arguments():
    p = [Parameter(np.zeros(3))]
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        Adam(p, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="Parameters"):
        SGD([np.zeros(3)], lr=0.1)


# ------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
                                  lambda ps: Adam(ps, lr=1e-2, weight_decay=0.1, decoupled=True)])
def test_state_dict_round_trip_continues_identically(make):
    rng = np.random.default_rng(6)
    params_a = make_params(rng)
    params_b = [Parameter(p.data.copy()) for p in params_a]
    opt_a = make(params_a)
    for _ in range(3):
        set_grads(params_a, rng)
        opt_a.step()
    state = opt_a.state_dict()
    # what an .npz gives back: every number becomes a 0-d array
    state = {k: np.asarray(v) for k, v in state.items()}
    for pa, pb in zip(params_a, params_b, strict=True):
        pb.data[...] = pa.data
    opt_b = make(params_b)
    opt_b.lr = 123.0  # overwritten by the loaded state
    opt_b.load_state_dict(state)
    assert opt_b.lr == opt_a.lr and opt_b.steps == opt_a.steps
    for _ in range(2):
        g = [rng.standard_normal(p.shape) for p in params_a]
        for pa, pb, gi in zip(params_a, params_b, g, strict=True):
            pa.grad[...] = gi
            pb.grad[...] = gi
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(params_a, params_b, strict=True):
        np.testing.assert_array_equal(pa.data, pb.data)


def test_state_dict_is_a_copy():
    rng = np.random.default_rng(7)
    params = make_params(rng)
    set_grads(params, rng)
    opt = Adam(params)
    opt.step()
    state = opt.state_dict()
    saved = state["exp_avg.0"].copy()
    opt.step()
    np.testing.assert_array_equal(state["exp_avg.0"], saved)


def test_load_state_dict_rejects_other_optimizer_and_other_model():
    rng = np.random.default_rng(8)
    params = make_params(rng)
    set_grads(params, rng)
    sgd = SGD(params, lr=0.1, momentum=0.9)
    sgd.step()
    adam = Adam(params)
    with pytest.raises(KeyError, match="another optimizer"):
        adam.load_state_dict(sgd.state_dict())
    adam.step()
    fewer = Adam(params[:2])
    with pytest.raises(KeyError, match="unexpected"):
        fewer.load_state_dict(adam.state_dict())
    more = Adam([*params, Parameter(np.zeros(2))])
    with pytest.raises(KeyError, match="another model"):
        more.load_state_dict(adam.state_dict())
    reshaped = Adam([Parameter(np.zeros((4, 3))), params[1], params[2]])
    with pytest.raises(ValueError, match="shape"):
        reshaped.load_state_dict(adam.state_dict())
    assert reshaped.steps == 0  # nothing changed on failure


# ------------------------------------------------------------------ schedules
def test_cosine_schedule():
    s = CosineSchedule(base_lr=0.1, total_steps=110, warmup_steps=10, min_lr=0.001)
    assert s(0) == pytest.approx(0.01)
    assert s(9) == pytest.approx(0.1)
    assert s(10) == pytest.approx(0.1)
    assert s(60) == pytest.approx(0.001 + 0.099 * 0.5)
    assert s(110) == pytest.approx(0.001)
    assert s(500) == pytest.approx(0.001)
    lrs = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineSchedule(0.1, total_steps=10, warmup_steps=10)


def test_step_schedule():
    s = StepSchedule(base_lr=1.0, step_size=3, gamma=0.5)
    assert [s(i) for i in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_cosine_schedule_matches_torch():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.01)
    ours = CosineSchedule(base_lr=0.1, total_steps=20, min_lr=0.01)
    for step in range(20):
        assert ours(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert math.isclose(ours(20), 0.01)


# ------------------------------------------------------------------ PyTorch as the oracle
TORCH_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adamw", dict(lr=1e-2, weight_decay=0.1)),
]


@pytest.mark.parametrize(("kind", "kwargs"), TORCH_CASES)
def test_trajectory_matches_torch(kind, kwargs):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    params = make_params(rng)
    tparams = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in params]
    if kind == "sgd":
        ours, theirs = SGD(params, **kwargs), torch.optim.SGD(tparams, **kwargs)
    elif kind == "adam":
        ours, theirs = Adam(params, **kwargs), torch.optim.Adam(tparams, **kwargs)
    else:
        ours = Adam(params, decoupled=True, **kwargs)
        theirs = torch.optim.AdamW(tparams, **kwargs)
    for _ in range(10):
        for p, tp in zip(params, tparams, strict=True):
            g = rng.standard_normal(p.shape)
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
    for p, tp in zip(params, tparams, strict=True):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decay", [(0.0, False), (0.05, False), (0.05, True)])
def test_fused_adam_kernel_matches_readable_update(dtype, decay):
    """Adam.step's fused kernel against Adam._update, the readable NumPy formulas."""
    weight_decay, decoupled = decay
    rng = np.random.default_rng(11)
    fused = make_params(rng, dtype)
    readable = [Parameter(p.data.copy()) for p in fused]
    opt_f = Adam(fused, lr=3e-3, betas=(0.8, 0.95), weight_decay=weight_decay,
                 decoupled=decoupled)
    opt_r = Adam(readable, lr=3e-3, betas=(0.8, 0.95), weight_decay=weight_decay,
                 decoupled=decoupled)
    for step in range(1, 4):
        for pf, pr in zip(fused, readable, strict=True):
            pf.grad[...] = rng.standard_normal(pf.shape)
            pr.grad[...] = pf.grad
        opt_f.step()
        # the same step, through the readable per-parameter update
        opt_r.steps += 1
        bias2_sqrt = math.sqrt(1 - opt_r.beta2**step)
        step_size = opt_r.lr / (1 - opt_r.beta1**step)
        for p, m, v in zip(readable, opt_r._buffers("exp_avg"), opt_r._buffers("exp_avg_sq"),
                           strict=True):
            opt_r._update(p, m, v, bias2_sqrt, step_size)
    for pf, pr in zip(fused, readable, strict=True):
        assert pf.data.dtype == dtype
        np.testing.assert_allclose(pf.data, pr.data, rtol=4 * np.finfo(dtype).eps, atol=0)
    for name in ("exp_avg", "exp_avg_sq"):
        for a, b in zip(opt_f.state[name], opt_r.state[name], strict=True):
            np.testing.assert_allclose(a, b, rtol=4 * np.finfo(dtype).eps, atol=0)
