"""Orders that read the way people number things."""

from __future__ import annotations

import os
import re


def natural_key(path: str | os.PathLike) -> list:
    """Sort key that puts multirun job 2 before job 10: the digit runs of the path compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]
