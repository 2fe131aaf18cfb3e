"""The anatomy grader (plid/models/anatomy.py, plid/grade_anatomy.py): features of a hand-drawn disc, a model that
is plain data and predicts as scikit-learn does, the choice per grading by its written rule, and a model_dir that
grades with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plid.errors import UserInputError
from plid.labels import MISSING
from plid.measurements import measure_discs
from plid.models.anatomy import FEATURES, AnatomyGrader, anatomy_features
from tests.test_measurements import _spine


def test_features_of_a_hand_drawn_disc_with_known_intensities_and_heights():
    mask, image = _spine()  # disc 100, canal 200, vertebrae 60; a 10 px disc between 40 px bodies
    image = image.copy()
    image[64:66, 60:100] = 180  # a bright nucleus in the disc's middle
    (measured,) = measure_discs(mask, [[38, 58, 122, 72]], image)
    disc = image[mask == 2].astype(float)
    assert measured["signal_ratio"] == pytest.approx(disc.mean() / 200)
    assert measured["nucleus_ratio"] == pytest.approx(np.percentile(disc, 90) / 200)
    assert measured["signal_spread"] == pytest.approx(disc.std() / 200)
    assert measured["disc_to_vertebra"] == pytest.approx(disc.mean() / 60)
    x = dict(zip(FEATURES, anatomy_features(measured, level=3)))
    assert x["height_index"] == pytest.approx(0.25, abs=0.01) and x["level"] == 3
    assert x["anterior_over_mean_height"] == x["middle_over_mean_height"] == x["posterior_over_mean_height"] == 1
    assert x["protrusion_over_mean_height"] == pytest.approx(0, abs=0.05)
    assert x["signal_ratio"] == pytest.approx(measured["signal_ratio"])
    # a herniation reaches 4 px behind the walls: 0.4 disc heights
    (hernia,) = measure_discs(*_spine(herniation=4)[:1], [[38, 58, 122, 72]], _spine(herniation=4)[1])
    assert anatomy_features(hernia, 1)[FEATURES.index("protrusion_over_mean_height")] == pytest.approx(0.4, abs=0.05)
    # nothing measured: every feature missing but the level
    empty = anatomy_features(None, None)
    assert np.isnan(empty).all() and len(empty) == len(FEATURES)


def _discs(n: int = 240, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(FEATURES)))
    x[rng.random((n, len(FEATURES))) < 0.05] = np.nan  # some features missing
    bulging = (np.nan_to_num(x[:, 4]) + 0.5 * rng.normal(size=n) > 0).astype(int)
    pfirrmann = np.clip(np.round(2 - 1.5 * np.nan_to_num(x[:, 5]) + 0.5 * rng.normal(size=n)), 0, 4).astype(int)
    pfirrmann[:10] = MISSING
    return x, {"disc_bulging": bulging, "pfirrman_grade": pfirrmann}


def test_the_grader_is_plain_data_and_predicts_as_scikit_learn_does():
    from sklearn.linear_model import LogisticRegression

    x, targets = _discs()
    grader = AnatomyGrader.fit(x, targets)
    again = AnatomyGrader.from_json(json.loads(json.dumps(grader.to_json())))
    predicted = again.predict(x)
    assert predicted["disc_bulging"].shape == (len(x), 2) and predicted["pfirrman_grade"].shape == (len(x), 5)
    np.testing.assert_allclose(predicted["pfirrman_grade"].sum(1), 1)
    # the same as scikit-learn's own model on the same standardised, median-filled inputs
    filled = np.where(np.isfinite(x), x, np.nanmedian(x, axis=0))
    z = (filled - filled.mean(0)) / filled.std(0)
    keep = targets["pfirrman_grade"] != MISSING
    reference = LogisticRegression(class_weight="balanced", max_iter=2000).fit(z[keep], targets["pfirrman_grade"][keep])
    np.testing.assert_allclose(predicted["pfirrman_grade"][:, reference.classes_], reference.predict_proba(z), atol=1e-6)
    reference = LogisticRegression(class_weight="balanced", max_iter=2000).fit(z, targets["disc_bulging"])
    np.testing.assert_allclose(predicted["disc_bulging"], reference.predict_proba(z), atol=1e-6)
    # informative features are learnt
    from plid.metrics import auc

    assert auc(predicted["disc_bulging"][:, 1], targets["disc_bulging"]) > 0.85


@pytest.mark.parametrize("damage, match", [
    (lambda d: d["heads"]["disc_bulging"].update(coef=[[1.0, 2.0]]), "coef"),
    (lambda d: d.update(features=["height_index"]), "features"),
    (lambda d: d["heads"]["pfirrman_grade"].update(classes=[0, 1, 2, 3, 9]), "classes"),
    (lambda d: d["scales"].__setitem__(0, 0.0), "scales"),
    (lambda d: d["heads"]["disc_bulging"].update(intercept=[float("nan")]), "intercept"),
    (lambda d: d.pop("means"), "not an anatomy grader"),
])
def test_a_damaged_grader_is_refused_naming_the_file(damage, match):
    data = AnatomyGrader.fit(*_discs()).to_json()
    damage(data)
    with pytest.raises(UserInputError, match=match):
        AnatomyGrader.from_json(data, "model_dir/anatomy.json")


def test_a_grading_of_one_class_is_left_out_and_said(caplog):
    x, targets = _discs()
    with caplog.at_level("WARNING", logger="plid.models.anatomy"):
        grader = AnatomyGrader.fit(x, {**targets, "spondylolisthesis": np.zeros(len(x), int)})
    assert "spondylolisthesis has 1 class" in caplog.text
    assert set(grader.heads) == {"disc_bulging", "pfirrman_grade"} and set(grader.predict(x)) == set(grader.heads)


def test_each_grading_goes_to_the_source_of_highest_pooled_figure_a_tie_to_the_crop_network():
    from plid.ensemble.folds import GradingPolicy
    from plid.ensemble.predictions import Predictions
    from plid.grade_anatomy import choose_sources

    rng = np.random.default_rng(1)
    ids = np.array([f"img{k}:1" for k in range(100)])
    y = (np.arange(100) % 3 == 0).astype(int)
    good, noise = np.stack([1 - y * 0.8 - 0.1, y * 0.8 + 0.1], 1), rng.dirichlet([1, 1], 100)
    anatomy = {"disc_bulging": Predictions(ids, good, y), "up_endplate": Predictions(ids, noise, y),
               "disc_narrowing": Predictions(ids, good, y)}
    # the crop network saw discs in another order, and one disc the anatomy grader did not
    order = rng.permutation(100)
    extra = np.array(["other:2"])
    crop = {"disc_bulging": Predictions(np.concatenate([ids[order], extra]), np.concatenate([noise[order], [[0.5, 0.5]]]),
                                        np.concatenate([y[order], [1]])),
            "up_endplate": Predictions(ids[order], good[order], y[order]),
            "disc_narrowing": Predictions(ids[order], good[order], y[order])}
    chosen = choose_sources(anatomy, crop, GradingPolicy())
    assert chosen["disc_bulging"]["source"] == "anatomy" and chosen["disc_bulging"]["cases"] == 100
    assert chosen["up_endplate"]["source"] == "crop network"
    assert chosen["disc_narrowing"]["source"] == "crop network"  # equal AUCs (1.0 each and for the mean)
    figures = {source: entry["auc"] for source, entry in chosen["disc_bulging"]["candidates"].items()}
    assert figures["anatomy"] == 1.0 and figures["crop network"] < 0.7
    # the mean is scored on the averaged probabilities of the same discs
    from plid.metrics import auc

    assert figures["mean"] == pytest.approx(auc((good[:, 1] + noise[:, 1]) / 2, y))
    # the chosen source's own threshold and validation, by the policy
    assert chosen["disc_bulging"]["validation"]["validated"] and chosen["disc_bulging"]["validation"]["auc"] == 1.0
    assert chosen["disc_bulging"]["validation"]["called_positive"] == pytest.approx(y.mean())
    # without the crop network's predictions: the anatomy grader alone
    alone = choose_sources(anatomy, {}, GradingPolicy())
    assert {c["source"] for c in alone.values()} == {"anatomy"}


def test_discs_are_measured_on_the_pipelines_own_masks_and_predicted_out_of_fold(tmp_path, data_dir, compose):
    from plid.grade_anatomy import measure_labelled_discs, out_of_fold_anatomy
    from tests.test_end_to_end import _dataset_with_truth_cropper

    dataset, pipeline = _dataset_with_truth_cropper(data_dir, compose)
    images = dataset.images["image"].astype(str).tolist()
    discs = measure_labelled_discs(pipeline, dataset, images)
    labelled = dataset.discs[dataset.discs["ivd_label"].notna()]
    assert len(discs["ids"]) == len(labelled) and discs["x"].shape == (len(labelled), len(FEATURES))
    assert set(discs["ids"]) == {f"{i}:{int(v)}" for i, v in zip(labelled["image"], labelled["ivd_label"])}
    assert discs["no_lumbar_region"] == []
    patients = sorted(set(discs["patients"]))
    splits = {"test": [], "folds": [{"val": patients[k::3], "train": []} for k in range(3)]}
    pooled = out_of_fold_anatomy(discs, splits, [0, 1, 2], 1.0)
    # every labelled disc predicted once, by a grader that never saw its patient
    assert sorted(pooled["disc_bulging"].ids) == sorted(discs["ids"])
    assert pooled["pfirrman_grade"].probs.shape == (len(labelled), 5)


def test_a_model_dir_with_the_anatomy_grader_grades_where_it_was_chosen(tmp_path, compose):
    from pathlib import Path

    from plid.data.scans import Scan
    from plid.datamodules.synthetic import generate_case
    from plid.ensemble.folds import GradingPolicy, grading_validation
    from plid.ensemble.predictions import Predictions
    from plid.inference.model_dir import export_model_dir, load_model_dir
    from plid.inference.pipeline import Pipeline
    from plid.utils.io import write_json
    from tests.test_grading import _bag_run, _untrained_detectors
    from tests.test_pipeline import _fake_train_run, _truth_cropper

    targets = ["disc_bulging", "pfirrman_grade"]
    runs = [_bag_run(compose, tmp_path / f"fold{k}", k, targets, seed=10 + k) for k in (0, 1)]
    weights = _untrained_detectors(tmp_path)
    seg = _fake_train_run(compose, tmp_path / "seg")
    x, labels = _discs()
    grader = AnatomyGrader.fit(x, labels)
    predicted = grader.predict(x)
    validation = grading_validation(Predictions(np.arange(len(x)).astype(str), predicted["disc_bulging"],
                                                labels["disc_bulging"]), "disc_bulging", False, GradingPolicy())
    anatomy = tmp_path / "anatomy_run"
    write_json(anatomy / "anatomy.json", {"grader": grader.to_json(), "choice": {
        "disc_bulging": {"source": "anatomy", "validation": validation},
        "pfirrman_grade": {"source": "crop network", "validation": {"metric": "kappa", "validated": False}}}})
    out = export_model_dir(tmp_path / "model_dir", weights["lumbar"], weights["ivd"], seg, runs, trust_run=True,
                           anatomy_run=anatomy)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["anatomy"]["sources"] == {"disc_bulging": "anatomy", "pfirrman_grade": "crop network"}
    assert "anatomy.json" in manifest["sha256"]
    case = generate_case(np.random.default_rng(3), size=128)
    pipeline = Pipeline(load_model_dir(out), cropper=_truth_cropper(case), levels="count")
    report = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image")).report
    assert report["classifier"]["sources"]["disc_bulging"] == "anatomy"
    for disc in report["discs"]:
        made = disc["gradings"]["disc_bulging"]
        expected = grader.predict(anatomy_features(disc["measurements"], disc["level"])[None])["disc_bulging"][0, 1]
        assert made["source"] == "anatomy" and made["probability"] == pytest.approx(expected, abs=1e-4)
        assert made["threshold"] == validation["threshold"] and made["validated"] is validation["validated"]
        assert disc["gradings"]["pfirrman_grade"]["source"] == "crop network"
    # an anatomy.json choosing the crop network for a grading these classifiers do not grade is refused
    write_json(anatomy / "anatomy.json", {"grader": grader.to_json(), "choice": {
        "modic": {"source": "crop network", "validation": {}}}})
    with pytest.raises(UserInputError, match="modic"):
        export_model_dir(tmp_path / "other", weights["lumbar"], weights["ivd"], seg, runs, trust_run=True,
                         anatomy_run=anatomy)
