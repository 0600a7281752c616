"""The commands behind the bundled model and the accuracy table run end to end (quick mode).

    python -m pytest -m slow tests/test_bench_scripts.py      # about a minute and a half
"""

import subprocess
import sys
from pathlib import Path

import pytest

import minunet as mu

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCH / script), *args],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_train_pretrained_quick_writes_a_self_describing_model(tmp_path):
    out = tmp_path / "nuclei.npz"
    run("train_pretrained.py", "--quick", "--out", str(out), "--run-dir", str(tmp_path / "run"))
    meta = mu.load(out).metadata
    assert {"normalization", "postprocess", "diameter", "recipe"} <= set(meta)


@pytest.mark.slow
def test_accuracy_quick_writes_the_table(tmp_path):
    stdout = run("accuracy.py", "--quick", "--only", "reference", "--out", str(tmp_path))
    table = (tmp_path / "table.md").read_text()
    assert "reference-shifted, diameter auto" in table and "ceiling" in table
    assert "reference-shifted" in stdout


def test_finetune_quick_writes_the_table(tmp_path):
    """bench/finetune.py --quick: the bundled model, from scratch and fine-tuned, end to end
    through mu.fit (seconds; the default suite runs it)."""
    stdout = run("finetune.py", "--quick", "--out", str(tmp_path))
    table = (tmp_path / "table.md").read_text()
    assert "| lab | 1 |" in table and "| lab | 2 |" in table and "fine-tuned" in table
    assert "bundled nuclei F1" in stdout


def test_train_layers_groups_every_layer():
    """bench/bench_train_layers.py on C1 (seconds): every group of layers is timed."""
    stdout = run("bench_train_layers.py", "--config", "C1", "--steps", "1", "--top", "3")
    for group in ("conv F", "conv B", "bn F", "bn B", "up-step B", "pool F", "head B", "loss"):
        assert group in stdout


def test_stress_quick_prints_its_cases():
    """bench/stress.py --quick: plain and auto object F1 per case (seconds)."""
    stdout = run("stress.py", "--quick")
    assert "| broad | " in stdout and "| bright spread | " in stdout


def test_bench_start_segment_names_every_stage():
    stdout = run("bench_start.py", "--segment", "--repeats", "1")
    for stage in ("numpy", "numba", "minunet", "model", "numba set-up", "kernels", "segment"):
        assert f"{stage} " in stdout, stdout


def test_ab_steps_times_two_trees_and_prints_the_ratio():
    root = str(BENCH.parent)
    stdout = run("ab_steps.py", root, root, "--configs", "C1", "--rounds", "1", "--steps", "1")
    assert "round 1 A: C1 fastest" in stdout and "C1 idle: A" in stdout, stdout


def test_ab_steps_segment_times_both_versions_on_one_image():
    """ab_steps.py --segment: mu.segment of both versions on one generated image, their labels
    compared (one version against itself: identical)."""
    root = str(BENCH.parent)
    stdout = run("ab_steps.py", root, root, "--segment", "256", "--rounds", "1", "--steps", "1")
    assert "round 1 B: segment 256^2 fastest" in stdout, stdout
    assert "segment 256^2 idle: A" in stdout and "B / A" in stdout, stdout
    assert "labels of A and B: identical" in stdout, stdout


def test_ab_steps_command_times_both_versions_start_to_exit():
    """ab_steps.py --command: the whole `minunet predict` of both versions, alternated, their
    label files compared (one version against itself: identical)."""
    root = str(BENCH.parent)
    stdout = run("ab_steps.py", root, root, "--command", "128", "--rounds", "1")
    assert "round 1 A: " in stdout and "round 1 B: " in stdout, stdout
    assert "label files of A and B: identical" in stdout, stdout
    assert "B / A" in stdout and "(median)" in stdout, stdout


def test_winograd_phases_strips_compare_the_whole_image_with_strips_in_cache():
    stdout = run("bench_winograd_phases.py", "--strips", "--repeats", "1", "--rounds", "1")
    assert "whole      256      128       64" in stdout, stdout
    assert "  16   16 " in stdout and "  32   16 " in stdout, stdout


def test_winograd_phases_times_every_step():
    """bench/bench_winograd_phases.py: each of the three steps, alone and chained, for the
    bundled model's shapes (seconds)."""
    stdout = run("bench_winograd_phases.py", "--repeats", "1", "--rounds", "1")
    assert "input  products    output       all" in stdout, stdout
    assert "  16   16  1152 " in stdout and " 128  128   144 " in stdout, stdout
