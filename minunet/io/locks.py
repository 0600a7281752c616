"""A folder in use is locked: two runs of minunet never write into one folder at once.

    with FolderLock(run, "minunet train"):
        ...   # a second FolderLock(run, ...) here raises FolderLocked, naming this process

The lock is a small file, `.minunet.lock`, created with O_EXCL (only one process can create
it) and holding the holder's pid, host, command and start time as JSON. It is advisory: it
stops minunet, not other programs. A lock whose process is gone (killed, crashed, the machine
restarted) is stale: the next user removes it and takes the folder. A lock from another host
cannot be checked, so it is honoured; the message says how to remove it by hand.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".minunet.lock"


class FolderLocked(OSError):
    """The folder is in use by another process; the message names it."""


class FolderLock:
    """An advisory lock on `folder` (which must exist) for the duration of a `with` block."""

    def __init__(self, folder: str | os.PathLike, command: str) -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> FolderLock:
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "command": self.command, "started": time.time()})
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is not None and holder_alive(holder):
                    raise FolderLocked(_in_use_message(self.folder, self.path, holder)) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return self
        raise FolderLocked(f"{self.folder} is being locked by another process right now; try "
                           "again in a moment")

    def release(self) -> None:
        if self.held:
            holder = read_holder(self.path)
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


_HELD: list[FolderLock] = []


def hold(folder: str | os.PathLike, command: str) -> FolderLock:
    """Lock `folder` until `release_held()` (the command calls it when it ends) or the process
    exits: for code that cannot wrap its work in a `with` block."""
    lock = FolderLock(folder, command).acquire()
    if not _HELD:
        atexit.register(release_held)
    _HELD.append(lock)
    return lock


def release_held() -> None:
    while _HELD:
        _HELD.pop().release()


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock file's record, or None if it is unreadable (a lock cut short is stale)."""
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read(4096) or b"null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def holder_alive(holder: dict[str, Any]) -> bool:
    """True if the holder may still run: its process exists, or it is on another host."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder["pid"]
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _in_use_message(folder: Path, path: Path, holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started") or 0))
    return (f"{folder} is in use by process {holder['pid']} on {holder.get('host', '?')} "
            f"({holder.get('command', 'minunet')}, since {since}); wait for it to finish. If "
            f"that process no longer runs, delete {path} and try again")
