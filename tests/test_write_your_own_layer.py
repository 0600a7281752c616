"""The example a learner starts from must keep running and keep catching its deliberate bug."""

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "write_your_own_layer.py"


def test_example_runs_and_reports_the_wrong_layer(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "gradcheck LeakyReLU (full mode, tol 1e-07): OK" in printed
    assert "gradcheck WrongLeakyReLU (full mode, tol 1e-07): FAILED" in printed
    assert "FAIL slope" in printed and "FAIL input 0" not in printed
