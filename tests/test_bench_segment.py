"""bench/bench_segment.py runs end to end in its smoke mode and times every stage."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bench_segment.py"


def test_bench_segment_quick_reports_every_stage():
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    header, row = result.stdout.strip().splitlines()[-2:]
    for stage in ("read", "normalise", "network", "post", "write", "s/Mpx", "peak MiB"):
        assert stage in header
    cells = row.split()
    assert cells[:3] == ["256x256", "128:4", "minunet"]
    seconds = [float(c) for c in cells[3:8]]
    assert all(s >= 0 for s in seconds) and seconds[2] > 0     # the network did run
    assert int(cells[-1]) > 0                                   # and found objects


def test_bench_segment_load_runs_under_a_load_it_stops():
    """--load: the measurements run while a competing process does, and that process is gone
    when the script ends."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--load"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "under a competing load" in result.stdout
    assert result.stdout.strip().splitlines()[-1].split()[:3] == ["256x256", "128:4", "minunet"]
    left = [p for p in Path("/proc").glob("[0-9]*/cmdline")
            if b"threading.Event().wait()" in _read(p)]
    assert not left, left                        # no load process is left


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:          # a process that ended while the folder was listed
        return b""
