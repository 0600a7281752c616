"""Writing a user's files safely.

`write_atomic(path, write)` writes through a hidden temporary file in the same folder
(`.NAME.XXXX.tmp.SUFFIX`), fsyncs it, gives it the permissions a plain `open()` would (0o666
minus the umask) and renames it over `path`; an exception or Ctrl-C removes the temporary file,
and `remove_stale_temps` clears those a `kill -9` left behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (read by setting and restoring it; there is no other POSIX way)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_prefix(path: Path) -> str:
    """Temporary files for `path` are named `.NAME.XXXX.tmp...` beside it."""
    return f".{path.name}."


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `path`, then rename it over `path`.

    Either the old file (or none) or the complete new one is there, whatever happens; the new
    file gets 0o666 minus the umask, as `open()` would give it (mkstemp alone makes it 0600).
    The temporary name keeps the suffix, so writers that choose a format by suffix still work.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp" + path.suffix,
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened this way on Windows."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files a killed write of any of `names` left in `folder`."""
    removed = []
    for name in names:
        for stale in Path(folder).glob(f".{_glob_escape(name)}.*.tmp*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
