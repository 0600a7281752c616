"""The learning path runs and says what the pages quote: examples/backprop_one_step.py,
docs/learn/worked_examples.py (each note's numbers), the pictures' script and
mu.viz.learning_signals, examples/compare_with_pytorch.py (PyTorch optional), the links."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minunet as mu

ROOT = Path(__file__).resolve().parents[1]
LEARN = ROOT / "docs" / "learn"


def run(script: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_backprop_one_step_walks_every_layer_and_the_skip_join():
    out = run(ROOT / "examples" / "backprop_one_step.py")
    forward = out.split("1. FORWARD")[1].split("2. LOSS")[0]
    assert len([line for line in forward.splitlines() if "->" in line]) == 22
    checks = re.findall(r"^   (\S+) +grad .* check: (ok|FAIL)", out, flags=re.M)
    assert len(checks) == 22
    assert all(ok == "ok" or name.startswith("pool.") for name, ok in checks)
    assert "THE SKIP JOINS at level 0" in out and "sum exact: True" in out
    for analytic, numeric in re.findall(r"analytic ([-+.0-9e]+)  numeric ([-+.0-9e]+)", out):
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-6)
    before, after = map(float, re.search(r"loss before ([.0-9]+) +after ([.0-9]+)", out).groups())
    assert after < before
    # the walkthrough quotes this run
    page = (LEARN / "README.md").read_text()
    for line in ("sum exact: True", f"loss before {before:.6f}   after {after:.6f}",
                 "pool.0        grad (1, 2, 8, 8)                   norm 2.188e-01   check: FAIL"):
        assert line in out and line in page, line


def test_worked_examples_agree_with_the_layers_and_the_notes():
    out = run(LEARN / "worked_examples.py")
    assert out.count("equal: True") == 1
    assert "<C x, u> = 270,  <x, C^T u> = 270" in out
    adjoint = re.search(r"<conv\(x\), u> = ([.0-9]+),  <x, conv_transpose\(u\)> = ([.0-9]+)",
                        out)
    assert adjoint.group(1) == adjoint.group(2)
    quoted = {
        "conv2d.md": ["[[37., 47.],", "[ 5.,  5., -4.],"],
        "maxpool.md": ["[ 0, 30,  0,  0]]"],
        "batchnorm.md": ["dx from BatchNorm2d.backward = [ 0.2482, -0.21  , -0.1336,  0.0955]",
                         "<dx, x_hat> = -1.63e-06"],
        "conv_transpose.md": ["[10., 20., 20., 40.]", "<conv(x), u> = 1.3071375559"],
        "softmax_cross_entropy.md": ["finite differences = [ 0.6652, -0.7553,  0.09  ]"],
    }
    compact = out.replace(" ", "")
    for page, lines in quoted.items():
        text = (LEARN / page).read_text().replace(" ", "")
        for line in lines:
            assert line.replace(" ", "").replace(".,", ",").replace(".]", "]") in \
                text.replace(".,", ",").replace(".]", "]"), (page, line)
            assert line.replace(" ", "").replace(".,", ",").replace(".]", "]") in \
                compact.replace(".,", ",").replace(".]", "]"), (page, line)


def test_every_link_of_the_learning_pages_exists():
    pages = [*LEARN.glob("*.md"), ROOT / "exercises" / "README.md"]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), (page.name, target)


def test_learning_signals_figure(tmp_path):
    maps = {"down.0": np.random.default_rng(0).standard_normal((1, 2, 8, 8)),
            "bottom": np.ones((4, 4))}
    norms = {"head": [1.0, 0.5, 0.2], "down.0.conv1": [0.1, 0.0, 0.05]}
    path = mu.viz.learning_signals(maps, norms, tmp_path / "signals.png", title="t")
    assert path.is_file() and path.stat().st_size > 1000
    many = {f"layer{i}": [1.0, 2.0] for i in range(20)}
    assert mu.viz.learning_signals(maps, many, tmp_path / "many.png").is_file()
    with pytest.raises(ValueError, match="at least one"):
        mu.viz.learning_signals({}, norms, tmp_path / "none.png")


def test_the_pictures_script_draws_the_overlap_figure(tmp_path):
    sys.path.insert(0, str(LEARN))
    try:
        import make_figures
    finally:
        sys.path.remove(str(LEARN))
    assert make_figures.conv_transpose_overlap(tmp_path).is_file()


def test_compare_with_pytorch_agrees_or_says_torch_is_missing():
    out = run(ROOT / "examples" / "compare_with_pytorch.py", "--depth", "1", "--base", "2")
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "PyTorch is not installed" in out
        return
    assert "all tensors agree" in out and "FAIL" not in out
    assert "down.0.conv1.weight after Adam" in out and "down.0.bn1.running_var" in out


@pytest.mark.parametrize("cls, extra, code", [
    ("Dropout", [], 1), ("SeededDropout", [], 0), ("GELU", [], 1), ("GELU32", ["--show", "2"], 0),
])
def test_checker_page_shows_what_the_command_prints(cls, extra, code, capsys, monkeypatch):
    from minunet.cli import main

    argv = ["gradcheck", f"examples/student_layers.py:{cls}", "--input-shape", "2,3,6,5", *extra]
    monkeypatch.chdir(ROOT)
    assert main(argv) == code
    out = capsys.readouterr().out
    page = (LEARN / "checker.md").read_text()
    assert f"$ minunet {' '.join(argv)}" in page
    page_lines = page.splitlines()
    for line in out.splitlines():  # each printed line is on the page, whole or cut with "..."
        assert any(p == line or (p.endswith(" ...") and line.startswith(p[:-4]))
                   for p in page_lines), line
