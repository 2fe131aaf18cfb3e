"""Patient-grouped, stratified, seeded splits: one held-out test set and k folds of train/val.

A splits file is made once per dataset and reused by every task, so a classifier and a segmenter trained
on the same dataset never see each other's test patients. The format (JSON) is

    {"seed": 0, "test_fraction": 0.1, "test": ["p7", ...],
     "folds": [{"train": ["p1", ...], "val": ["p2", ...]}, ...]}

nnU-Net's ``splits_final.json`` (a bare list of ``{"train", "val"}``) is accepted too; its test set is
then empty unless the file names one. With the defaults (10 % test, 6 folds) a fold is 75/15/10 %.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from plid.errors import UserInputError
from plid.utils.io import write_json

log = logging.getLogger(__name__)
UNSPLIT_MODES = ("raise", "warn")


def make_splits(strata: dict[str, str], num_folds: int, test_fraction: float, seed: int) -> dict:
    """Assign every patient to test or to exactly one validation fold.

    ``strata`` maps patient id to a stratum label; patients are shuffled within each stratum, the strata are
    laid end to end, and the test set is drawn systematically along that order (every 1/test_fraction-th
    patient), so each stratum (rare positives included) is spread over test and folds in proportion.
    """
    if num_folds < 2:
        raise UserInputError(f"num_folds must be at least 2, got {num_folds}")
    if not 0 <= test_fraction < 1:
        raise UserInputError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    ordered: list[str] = []
    for stratum in sorted(set(strata.values())):
        members = sorted(p for p, s in strata.items() if s == stratum)
        ordered += [members[i] for i in rng.permutation(len(members))]
    offset = rng.random()
    is_test = [int((i + 1) * test_fraction + offset) > int(i * test_fraction + offset) for i in range(len(ordered))]
    test = [p for p, t in zip(ordered, is_test) if t]
    rest = [p for p, t in zip(ordered, is_test) if not t]
    if len(rest) < num_folds:
        raise UserInputError(f"{len(rest)} patients outside the test set cannot fill {num_folds} folds")
    start = int(rng.integers(num_folds))
    val_sets = [sorted(rest[(k - start) % num_folds::num_folds]) for k in range(num_folds)]
    folds = [{"train": sorted(set(rest) - set(val)), "val": val} for val in val_sets]
    return {"seed": seed, "test_fraction": test_fraction, "test": sorted(test), "folds": folds}


def load_splits(path: str | Path) -> dict:
    """Read a splits file in this project's format or nnU-Net's, normalised to this project's."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"{path}: not a readable splits JSON file ({err})") from err
    if isinstance(data, list):
        data = {"test": [], "folds": data}
    if not isinstance(data, dict) or "folds" not in data:
        raise UserInputError(f"{path}: expected {{'test': [...], 'folds': [{{'train': [...], 'val': [...]}}]}}")
    data["test"] = [str(p) for p in data.get("test", [])]
    data["folds"] = [{k: [str(p) for p in fold[k]] for k in ("train", "val")} for fold in data["folds"]]
    return data


def resolve_splits(path: Path, strata: dict[str, str], num_folds: int, test_fraction: float, seed: int,
                   unsplit: str = "raise") -> dict:
    """The splits stored at ``path``, made and written there first if the file does not exist yet.

    ``unsplit``: what to do with patients of the dataset that a stored file puts in no split (patients added
    after it was written): ``raise`` (default) refuses, naming them; ``warn`` leaves them out with a warning.
    """
    if path.is_file():
        splits = load_splits(path)
    else:
        splits = make_splits(strata, num_folds, test_fraction, seed)
        write_json(path, splits)
    check_splits(splits, set(strata), source=path, unsplit=unsplit)
    return splits


def fold_patients(splits: dict, fold: int) -> dict[str, list[str]]:
    """``{"train", "val", "test"}`` patient lists of one fold."""
    folds = splits["folds"]
    if not 0 <= fold < len(folds):
        raise UserInputError(f"data.fold={fold} is out of range: the splits hold {len(folds)} folds (0-{len(folds) - 1})")
    return {"train": folds[fold]["train"], "val": folds[fold]["val"], "test": splits["test"]}


def check_splits(splits: dict, patients: set[str], source: Path | str = "splits", unsplit: str = "raise") -> None:
    """No patient in two parts of a fold, every split patient present in the dataset, and every patient of the
    dataset in some split (``unsplit``: see :func:`resolve_splits`)."""
    if unsplit not in UNSPLIT_MODES:
        raise UserInputError(f"data.unsplit_patients={unsplit!r} must be one of {UNSPLIT_MODES}")
    test = set(splits["test"])
    for k, fold in enumerate(splits["folds"]):
        train, val = set(fold["train"]), set(fold["val"])
        overlap = (train & val) | (train & test) | (val & test)
        if overlap:
            raise UserInputError(f"{source}: fold {k} puts patients {sorted(overlap)[:5]} in two splits")
        unknown = (train | val | test) - patients
        if unknown:
            raise UserInputError(
                f"{source}: fold {k} names patients not in the dataset: {sorted(unknown)[:5]}; "
                f"delete the file to make new splits, or fix it"
            )
    placed = test.union(*(set(fold["train"]) | set(fold["val"]) for fold in splits["folds"]))
    missing = sorted(patients - placed)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        message = (f"{source}: {len(missing)} patients of the dataset are in no split (added after the file was "
                   f"written?): {shown}")
        if unsplit == "raise":
            raise UserInputError(f"{message}. Delete the file to make new splits over every patient (new splits "
                                 f"change every fold and the test set: retrain and re-evaluate), or pass "
                                 f"data.unsplit_patients=warn to leave them out")
        log.warning("%s; they are left out of training, validation and test (data.unsplit_patients=warn)", message)
