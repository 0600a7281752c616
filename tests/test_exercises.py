"""The exercises: every skeleton fails the checker (TODOs left), every solution (minunet's own
layer) passes, each "find the bug" file fails with the diagnosis that points at its bug, and
the sanity steps hold for minunet's layers and catch a broken one."""

from pathlib import Path

import numpy as np
import pytest

import minunet as mu
from exercises import check, sanity
from minunet import layers
from minunet.unet import UNet

ROOT = Path(__file__).resolve().parents[1]
SKELETONS = ["relu.py", "maxpool.py", "conv2d.py", "batchnorm.py", "conv_transpose.py",
             "loss.py"]
SOLUTIONS = [layers.ReLU, layers.MaxPool2d, layers.Conv2d, layers.BatchNorm2d,
             layers.ConvTranspose2d, mu.CrossEntropyLoss]


def run(target, capsys):
    code = check.main([str(target)])
    return code, capsys.readouterr().out


@pytest.mark.parametrize("name", SKELETONS)
def test_every_skeleton_fails_with_its_todo_named(name, capsys):
    code, out = run(ROOT / "exercises" / name, capsys)
    assert code == 1
    assert "TODO" in out and "not finished" in out


@pytest.mark.parametrize("solution", SOLUTIONS, ids=lambda c: c.__name__)
def test_every_solution_passes(solution, capsys):
    assert check.check_class(solution)
    assert "cases pass" in capsys.readouterr().out


def test_the_readable_unet_passes(capsys):
    assert check.check_class(UNet)


def test_the_solution_passes_from_the_command(capsys):
    code, out = run("minunet.layers:Conv2d", capsys)
    assert code == 0 and "all 4 cases pass" in out


def test_batchnorm_bug_is_located_in_train_mode(capsys):
    code, out = run(ROOT / "exercises/find_the_bug/batchnorm_bug.py", capsys)
    assert code == 1
    assert "ok   eval mode" in out and "FAIL train mode" in out
    assert "right in eval mode" in out and "dx has three terms" in out


def test_conv_bug_is_located_at_the_stride(capsys):
    code, out = run(ROOT / "exercises/find_the_bug/conv_bug.py", capsys)
    assert code == 1
    assert "ok   3x3, padding 1" in out and "ok   1x1" in out and "FAIL 3x3, stride 2" in out
    assert "the stride:" in out
    assert "the input gradient differs" in out and "weight.grad" not in out  # dw is right


def test_unet_bug_is_located_where_the_skip_joins(capsys):
    code, out = run(ROOT / "exercises/find_the_bug/unet_bug.py", capsys)
    assert code == 1
    assert "differ from the reference in: down.1, down.0, input" in out
    assert "right in: head, up, upconv, bottom" in out
    assert "just before down.1.backward" in out


def test_a_wrong_forward_is_named(tmp_path, capsys):
    path = tmp_path / "leaky.py"
    path.write_text("import numpy as np\nfrom minunet import layers\n\n"
                    "class ReLU(layers.ReLU):\n"
                    "    def forward(self, x):\n"
                    "        self.save_for_backward(x)\n"
                    "        return np.where(x > 0, x, 0.01 * x)\n")
    code, out = run(path, capsys)
    assert code == 1 and "forward differs from minunet's ReLU" in out


def test_a_layer_built_differently_is_told_how(tmp_path, capsys):
    path = tmp_path / "mine.py"
    path.write_text("import numpy as np\nimport minunet as mu\n\n"
                    "class Conv2d(mu.Module):\n"
                    "    def __init__(self, cin, cout, k):\n"
                    "        super().__init__()\n"
                    "        self.w = mu.Parameter(np.zeros((cout, cin, k, k), np.float32))\n")
    code, out = run(path, capsys)
    assert code == 1 and "cannot be built like minunet's Conv2d" in out
    path.write_text(path.read_text().replace("cin, cout, k)", "cin, cout, k, stride=1, "
                                             "padding=0, bias=True, rng=None)"))
    code, out = run(path, capsys)
    assert code == 1 and "has the parameters ['w'], minunet's Conv2d ['bias', 'weight']" in out


def test_bad_targets_exit_2(tmp_path, capsys):
    assert check.main([str(tmp_path / "missing.py")]) == 2
    path = tmp_path / "other.py"
    path.write_text("import minunet as mu\n\nclass Swish(mu.Module):\n    pass\n")
    assert check.main([str(path)]) == 2
    assert "no reference of that name" in capsys.readouterr().err


# ------------------------------------------------------------------ sanity steps
def test_initial_loss_is_log_3_with_a_small_head():
    small, as_built = sanity.initial_loss()
    assert abs(small - np.log(3)) < 0.01 and as_built > small


class DeadReLU(layers.ReLU):
    """A ReLU whose backward passes nothing: gradient checks of the others still pass."""

    def backward(self, dout):
        self.take_saved()
        return np.zeros_like(dout)


def test_overfitting_one_batch_works_and_catches_a_dead_gradient():
    good = sanity.overfit(steps=20)
    dead = sanity.overfit(act=DeadReLU, steps=20)
    assert good[-1] < 0.5 * good[0]
    assert dead[-1] > 2 * good[-1] and dead[-1] > 0.5  # only the head learns
