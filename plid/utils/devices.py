"""Where inference runs: ``device=auto`` (CUDA when present, the CPU otherwise), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import re

import torch

from plid.errors import UserInputError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(name: str | None = "auto") -> torch.device:
    """The torch device ``name`` means here; a CUDA device that this machine lacks is one line naming it."""
    name = str(name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise UserInputError(f"device={name!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise UserInputError(f"device={name}: no CUDA device on this machine; use device=auto or device=cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserInputError(f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def ultralytics_device(device: torch.device) -> str:
    """The same device as ultralytics names it (``cpu`` or the CUDA index)."""
    return "cpu" if device.type == "cpu" else str(device.index or 0)
