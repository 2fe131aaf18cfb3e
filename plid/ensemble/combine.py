"""Applying chosen weights: equation 1 of the paper on new probabilities, with the weights a search wrote."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plid.errors import UserInputError


def weighted_average(probs: Sequence[np.ndarray | torch.Tensor], weights: Sequence[float]):
    """``sum_i w_i probs_i / sum_i w_i`` (class probabilities stay probabilities); arrays or tensors, any shape."""
    if len(probs) != len(weights):
        raise UserInputError(f"{len(probs)} probability arrays but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise UserInputError(f"weights {list(weights)} sum to {total}; at least one must be positive")
    return sum(float(w) * p for w, p in zip(weights, probs) if w) / total


def load_ensemble(path: str | Path) -> dict[str, Any]:
    """An ``ensemble_weights.json`` written by ``python -m plid.ensemble``: ``weights`` maps model name to weight,
    ``runs`` and ``checkpoints`` map model name to the run dir and its best checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / "ensemble_weights.json"
    if not path.is_file():
        raise UserInputError(f"{path} not found: run `python -m plid.ensemble` first, or give its output dir")
    return json.loads(path.read_text())
