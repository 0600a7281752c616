"""The example a learner starts from must keep running, stay short, and keep catching its bug."""

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "write_your_own_layer.py"


def test_example_runs_and_reports_the_wrong_layer(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "gradcheck PReLU (full mode, tol 1e-06): OK" in printed
    assert "gradcheck WrongPReLU (full mode, tol 1e-06): FAILED" in printed
    assert "FAIL slope" in printed and "FAIL input 0" not in printed


def test_the_layer_and_its_check_take_under_15_lines():
    """From `class PReLU` to the end of its backward, plus the one-line check in main()."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index("class PReLU(mu.Module):")
    end = lines.index("class WrongPReLU(PReLU):")
    layer = [line for line in lines[start:end] if line.strip()]
    check = [line for line in lines if "mu.gradcheck(PReLU(3), x)" in line]
    assert len(check) == 1 and len(layer) + len(check) < 15, (len(layer), len(check))
