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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary folder beside ``path`` and rename it to ``path`` only when the block succeeds (replacing
    any folder there): a folder appears whole or not at all, and a crash leaves the previous one intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
