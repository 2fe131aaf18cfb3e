"""File writing that never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and rename it over ``path`` only when the block succeeds.

    A crash inside the block leaves any previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a short prefix: a file name near the 255-byte limit must still leave room for the temporary one
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600: a group could not read models or reports
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_replaceable(path: str | os.PathLike, marker: str, option: str = "overwrite=true") -> None:
    """Refuse to replace ``path`` unless it is missing, empty, or a folder plid wrote (holding ``marker``: a
    model_dir's ``manifest.json``, an import's ``spider_import.json``): ``overwrite=true`` never deletes a
    user's own folder. The message names what was found there."""
    from plid.errors import UserInputError

    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise UserInputError(f"{path} is a file, not a folder; refused (choose another folder)")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if entries and marker not in entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise UserInputError(f"{path} holds files plid did not write there (no {marker}; found {shown}); "
                             f"{option} replaces only a folder plid wrote: choose another folder")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Fill a temporary folder beside ``path`` and rename it to ``path`` only when the block succeeds: a folder
    appears whole or not at all. A folder already at ``path`` is replaced only if plid wrote it (it holds
    ``marker``, see :func:`check_replaceable`), by renaming it aside first, the new one in, then deleting the
    old one: an interrupt at any point leaves one whole copy (the old one, or the new one)."""
    path = Path(path)
    check_replaceable(path, marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name[:40]}.", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path, marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, path: Path, marker: str) -> None:
    """Put the folder ``new`` at ``path`` (a sibling), moving a previous folder there aside before and deleting it
    after; ``new`` gets the usual folder mode (``mkdtemp`` makes it 0700)."""
    check_replaceable(path, marker)
    os.chmod(new, 0o777 & ~current_umask())
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name[:40]}.old.", dir=path.parent))
        try:
            os.replace(path, old / path.name)
            os.replace(new, path)
        except BaseException:
            if (old / path.name).exists() and not path.exists():
                os.replace(old / path.name, path)  # the old one back: never neither
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def current_umask() -> int:
    """The process's umask, read once at import (reading it means setting it, which other threads must not see)."""
    return _UMASK


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def publish_outputs(stage: Path, out: Path, entries: tuple[str, ...]) -> None:
    """Move ``entries`` (the last one the run's record, e.g. ``report.json``) from ``stage`` into ``out``,
    replacing those of an earlier run: the old record goes aside first, so that a crash during the moves never
    leaves a record beside outputs of another run, then the old entries; the new ones come in, the record last."""
    trash = Path(tempfile.mkdtemp(prefix=".replaced-", dir=out))
    moved_in: list[str] = []
    try:
        for name in (entries[-1], *entries[:-1]):
            if (out / name).exists():
                os.replace(out / name, trash / name)
        for name in entries:
            if (stage / name).exists():
                os.replace(stage / name, out / name)
                moved_in.append(name)
    except BaseException:
        # the previous outputs back, whole: the new ones go back to the stage (deleted with it)
        for name in moved_in:
            os.replace(out / name, stage / name)
        for name in entries:
            if (trash / name).exists():
                os.replace(trash / name, out / name)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by ``None`` (at any depth), numpy scalars and arrays as
    plain values: what strict JSON can hold. An undefined score (an AUC without positives, a Dice of a class
    absent from prediction and reference) is then ``null`` in the file, which every JSON reader accepts, where
    Python's default ``NaN`` token is rejected by strict readers (JavaScript's ``JSON.parse``, jq, most others)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON, atomically: NaN and infinities become ``null``
    (:func:`json_safe`), so an undefined score reads back as ``None``."""
    with atomic_write(path) as handle:
        json.dump(json_safe(obj), handle, indent=2, sort_keys=False, allow_nan=False)
        handle.write("\n")
    return Path(path)


def claim_output_dir(path: str | os.PathLike, marker: str, overwrite: bool | None = None) -> Path:
    """``path`` as a run's output folder, refusing one that already holds another run's ``marker`` file
    (``summary.json``, ``report.json``): a run never overwrites another run's outputs unless asked to.
    ``overwrite=None`` means the entry point has no such option."""
    from plid.errors import UserInputError

    path = Path(path)
    if (path / marker).exists() and not overwrite:
        hint = ", or pass overwrite=true to replace them" if overwrite is not None else ""
        raise UserInputError(f"{path} already holds another run's outputs ({marker}); choose another folder "
                             f"(hydra.run.dir=... or out=...){hint}")
    return path
