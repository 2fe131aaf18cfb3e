import json

import numpy as np
import pytest

from plid.datamodules.splits import check_splits, fold_patients, load_splits, make_splits, resolve_splits


def _strata(n=90, seed=0):
    rng = np.random.default_rng(seed)
    return {f"p{i}": ("pos" if rng.random() < 0.1 else "neg") for i in range(n)}


@pytest.mark.parametrize("num_folds", [2, 5, 6])
def test_every_patient_in_exactly_one_place(num_folds):
    strata = _strata()
    splits = make_splits(strata, num_folds=num_folds, test_fraction=0.1, seed=3)
    vals = [set(f["val"]) for f in splits["folds"]]
    test = set(splits["test"])
    # the val folds and the test set partition the patients
    assert sum(len(v) for v in vals) + len(test) == len(strata)
    assert set().union(*vals, test) == set(strata)
    for k in range(num_folds):
        parts = fold_patients(splits, k)
        train, val = set(parts["train"]), set(parts["val"])
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(strata)
    check_splits(splits, set(strata))


def test_default_proportions_and_strata_spread():
    strata = _strata(200)
    splits = make_splits(strata, num_folds=6, test_fraction=0.1, seed=0)
    assert len(splits["test"]) == 20
    fold = fold_patients(splits, 0)
    assert abs(len(fold["val"]) - 30) <= 1 and abs(len(fold["train"]) - 150) <= 1
    positives = {p for p, s in strata.items() if s == "pos"}
    # each val fold gets its share of the rare stratum, within one patient
    counts = [len(positives & set(f["val"])) for f in splits["folds"]]
    assert max(counts) - min(counts) <= 1


def test_seeded_and_reproducible():
    strata = _strata()
    assert make_splits(strata, 5, 0.1, seed=1) == make_splits(strata, 5, 0.1, seed=1)
    assert make_splits(strata, 5, 0.1, seed=1) != make_splits(strata, 5, 0.1, seed=2)


def test_written_once_then_reused(tmp_path):
    strata = _strata()
    path = tmp_path / "splits.json"
    first = resolve_splits(path, strata, 5, 0.1, seed=1)
    again = resolve_splits(path, strata, 5, 0.1, seed=99)  # the file wins over new parameters
    assert first == again == json.loads(path.read_text())


def test_user_nnunet_splits_are_honoured(tmp_path):
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]))
    # d is in no split: refused by default (see below), left out when asked
    splits = resolve_splits(path, {p: "x" for p in "abcd"}, 5, 0.1, seed=0, unsplit="warn")
    assert fold_patients(splits, 1) == {"train": ["a", "c"], "val": ["b"], "test": []}
    assert load_splits(path)["folds"][0]["val"] == ["c"]


def test_bad_splits_are_rejected(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"test": ["a"], "folds": [{"train": ["a", "b"], "val": ["c"]}]}))
    with pytest.raises(ValueError, match="two splits"):
        resolve_splits(path, {p: "x" for p in "abc"}, 2, 0.1, 0)
    path.write_text(json.dumps({"test": [], "folds": [{"train": ["zz"], "val": ["c"]}]}))
    with pytest.raises(ValueError, match="not in the dataset"):
        resolve_splits(path, {p: "x" for p in "abc"}, 2, 0.1, 0)
    with pytest.raises(ValueError, match="out of range"):
        fold_patients(load_splits(path), 3)


def test_patients_added_after_the_splits_file_was_written_are_refused_by_name(tmp_path, caplog):
    path = tmp_path / "splits.json"
    strata = _strata(30)
    resolve_splits(path, strata, 3, 0.1, seed=0)
    grown = {**strata, "new1": "neg", "new2": "pos"}
    with pytest.raises(ValueError, match=r"2 patients of the dataset are in no split .*new1, new2\. Delete the file"):
        resolve_splits(path, grown, 3, 0.1, seed=0)
    with caplog.at_level("WARNING", logger="plid.datamodules.splits"):
        splits = resolve_splits(path, grown, 3, 0.1, seed=0, unsplit="warn")
    assert "new1, new2" in caplog.text and "left out" in caplog.text
    assert splits == json.loads(path.read_text())  # the file is kept as it is
