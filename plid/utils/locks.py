"""One run per folder: a lock file that names its holder, so that two runs never interleave their outputs."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
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


def _holder(lock: Path) -> dict:
    try:
        holder = json.loads(lock.read_text() or "{}")
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid(holder: dict) -> int:
    try:
        return int(holder.get("pid") or 0)
    except (TypeError, ValueError):
        return 0


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder/.plid.lock`` while the block runs. The lock file appears whole (written aside, then hard-linked
    in: no second run can read it half-written). A lock held by a live process of this machine refuses the run,
    naming the holder's PID and start time; one of another machine is refused too, naming the machine (a shared
    folder: remove the lock if that run is gone); one whose process is gone is said and taken over. The lock is
    removed when the block ends, however it ends. A run that already holds the lock (a nested call) goes on."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    fd, draft = tempfile.mkstemp(prefix=".plid.lock.", dir=folder)
    with os.fdopen(fd, "w") as handle:
        json.dump(me, handle)
    os.chmod(draft, 0o644)
    owned = False
    try:
        for _ in range(3):
            try:
                os.link(draft, lock)  # fails if a lock is there: atomic, with its content
                owned = True
                break
            except FileExistsError:
                other = _holder(lock)
                pid = _pid(other)
                if other.get("host", me["host"]) != me["host"]:
                    raise UserInputError(f"{folder} is in use by a run on {other.get('host')} (PID {pid}, started "
                                         f"{other.get('started')}; {lock}): remove the lock if that run is gone, or "
                                         "choose another folder") from None
                if pid == me["pid"]:  # this process holds it already (a nested run)
                    break
                if pid and _alive(pid):
                    raise UserInputError(f"{folder} is in use by another run (PID {pid}, started "
                                         f"{other.get('started')}; {lock}): wait for it to end, or choose another "
                                         "folder") from None
                log.warning("%s: a stale lock of PID %s (started %s), whose process is gone: taken over", lock,
                            pid or "?", other.get("started", "?"))
                # set the stale lock aside by rename: of two runs taking it over, one rename wins
                aside = Path(f"{draft}.stale")
                with contextlib.suppress(FileNotFoundError):
                    os.rename(lock, aside)
                    if _pid(_holder(aside)) != pid:  # another run took it over meanwhile: its lock goes back
                        with contextlib.suppress(FileExistsError):
                            os.link(aside, lock)
                    aside.unlink()
        else:
            raise UserInputError(f"{lock}: cannot take the lock (other runs keep taking it)")
    finally:
        os.unlink(draft)
    try:
        yield lock
    finally:
        if owned and _pid(_holder(lock)) == me["pid"]:
            with contextlib.suppress(OSError):
                lock.unlink()
