"""Where an output came from: plid's version and commit, a file's sha256, the time."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import plid

CHECKOUT = Path(plid.__file__).resolve().parents[1]


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read in blocks (a model's weights, a volume)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str | None:
    """The file's sha256, None where it cannot be read (an output's provenance never fails for it)."""
    try:
        return sha256_of(path)
    except OSError:
        return None


@functools.cache
def plid_commit() -> str | None:
    """The commit of the checkout plid runs from, with ``-dirty`` where tracked files changed; None outside one."""
    if not (CHECKOUT / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(model_dir: str | Path | None = None) -> dict[str, str | None]:
    """The ``provenance`` of an output JSON (:class:`plid.reports.Provenance`)."""
    manifest = Path(model_dir) / "manifest.json" if model_dir is not None else None
    return {"plid_version": plid.__version__, "commit": plid_commit(),
            "model_dir_sha256": file_sha256(manifest) if manifest is not None else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
