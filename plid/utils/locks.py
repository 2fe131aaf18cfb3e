"""One run per folder: a lock file that names its holder, so that two runs never interleave their outputs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from plid.errors import UserInputError

log = logging.getLogger(__name__)
LOCK_FILE = ".plid.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.plid.lock`` while the block runs. A lock held by a live process (of this machine) refuses
    the run, naming the holder's PID and start time; a lock whose process is gone (killed, or of another
    machine's crashed run) is said and taken over. The lock is removed when the block ends, however it ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                other = {}
            pid = int(other.get("pid") or 0)
            if pid and other.get("host", holder["host"]) == holder["host"] and _alive(pid) and pid != os.getpid():
                raise UserInputError(f"{folder} is in use by another run (PID {pid}, started {other.get('started')}; "
                                     f"{lock}): wait for it to end, or choose another folder") from None
            log.warning("%s: a stale lock of PID %s (started %s), whose process is gone: taken over", lock,
                        pid or "?", other.get("started", "?"))
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        break
    else:
        raise UserInputError(f"{lock}: cannot take the lock (another run took it meanwhile?)")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            if json.loads(lock.read_text() or "{}").get("pid") == os.getpid():
                lock.unlink()
