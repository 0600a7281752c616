"""`pip install -e .` must not be shadowed by the clone's own folder: Python started in the
clone's parent folder (where `minunet/` is the clone) must import the package, not the folder as
an empty namespace package (`module 'minunet' has no attribute 'load'`)."""

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def editable_wheel(tmp_path: Path) -> Path:
    """The editable wheel of the declared build backend (PEP 660), built as pip would."""
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    pytest.importorskip(backend["build-backend"].split(".")[0])
    pytest.importorskip("editables")            # hatchling's helper for editable wheels
    code = (f"import {backend['build-backend']} as b; "
            f"print(b.build_editable({str(tmp_path)!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return tmp_path / done.stdout.strip().splitlines()[-1]


def test_editable_install_is_a_path_entry_that_beats_the_clone_folder(tmp_path):
    wheel = editable_wheel(tmp_path / "wheel")
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(wheel) as z:
        pth = [n for n in z.namelist() if n.endswith(".pth")]
        assert pth and not [n for n in z.namelist() if n.endswith(".py")], z.namelist()
        for name in pth:
            (site / Path(name).name).write_bytes(z.read(name))
    parent = tmp_path / "parent"
    (parent / "minunet" / "minunet").mkdir(parents=True)   # a clone named minunet, as cwd sees it
    code = (f"import site; site.addsitedir({str(site)!r}); import minunet; "
            "print(minunet.load.__module__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "minunet.checkpoint"


def test_the_wheel_carries_the_bundled_model():
    pytest.importorskip("hatchling")
    from hatchling.builders.wheel import WheelBuilder

    files = {f.distribution_path for f in WheelBuilder(str(ROOT)).recurse_included_files()}
    assert os.path.join("minunet", "models", "nuclei.npz") in files
    assert not [f for f in files if "__pycache__" in f or not f.startswith("minunet")]


def test_python_dash_m_minunet_is_the_command(tmp_path):
    """`python -m minunet` runs the same command as the `minunet` script (its exit codes too)."""
    done = subprocess.run([sys.executable, "-m", "minunet", "predict", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--model" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "minunet", "predict", "--model", "nuclei",
                           str(tmp_path / "none.tif"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "none.tif" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
