"""The main example runs: quick mode in the default suite, the accuracy promise under -m slow."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "train_small.py"


def run_example(out: Path, *extra: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(out), *extra],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("curves.png", "error_map.png", "overlay.png", "best.npz", "log.jsonl",
                 "report/report.png", "report/report.json", "report/report.md"):
        assert (out / name).is_file(), name
    return result.stdout


def f1_of(stdout: str) -> float:
    match = re.search(r"object F1@0.5 on held-out standard images: ([0-9.]+)", stdout)
    assert match, stdout[-2000:]
    return float(match.group(1))


def test_train_small_quick_runs_end_to_end(tmp_path):
    stdout = run_example(tmp_path, "--quick")
    assert 0.0 <= f1_of(stdout) <= 1.0
    assert "shift-combined" in stdout  # the shift suite was evaluated


@pytest.mark.slow
def test_train_small_reaches_its_promise(tmp_path):
    """The README's promise: object F1@0.5 >= 0.90 on held-out `standard` images and >= 0.80
    on `shift-brightness` (a few very bright cells among dim ones)."""
    stdout = run_example(tmp_path)
    assert f1_of(stdout) >= 0.90
    match = re.search(r"bright-and-dim cells \(shift-brightness\): ([0-9.]+)", stdout)
    assert match and float(match.group(1)) >= 0.80, stdout[-2000:]
