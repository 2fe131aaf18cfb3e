"""The multi-task grading classifier: configs, masked losses, ordinal heads, metrics, a smoke run."""

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from conftest import requires_spider2d

from plid import CONF_DIR
from plid.labels import ALL_GRADINGS, MISSING, grading

GRADERS = sorted(p.stem for p in (CONF_DIR / "model").glob("grade_*.yaml"))


def test_every_paper_backbone_has_a_grading_config(compose):
    assert {g.replace("grade_", "cls_") for g in GRADERS} == {p.stem for p in (CONF_DIR / "model").glob("cls_*.yaml")}
    for name in GRADERS:
        cfg = compose(f"model={name}")
        assert cfg.data._target_.endswith("ClassificationDataModule")
        assert list(cfg.data.targets) == list(ALL_GRADINGS) == list(cfg.model.targets)
    cfg = compose("model=grade_resnet50", "data=spider2d_cls", "data.targets=[disc_bulging,pfirrman_grade]")
    assert list(cfg.model.net.targets) == ["disc_bulging", "pfirrman_grade"] and "spider2d" in cfg.data.root


def _module(compose, *overrides):
    cfg = compose("model=grade_resnet50", "model.net.name=test_resnet", *overrides)
    return hydra.utils.instantiate(cfg.model, _convert_="all")


@pytest.mark.parametrize("mode", ["feature_extraction", "fine_tune", "full"])
def test_modes_freeze_the_backbone_as_the_single_task_classifiers(compose, mode):
    module = _module(compose, f"model.mode={mode}", "model.fine_tune_modules=[layer4]")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    head = {n for n, _ in module.named_parameters() if n.startswith("net.head.")}
    assert head <= trainable
    assert {n.split(".")[3] for n in head if n.startswith("net.head.heads.")} == set(ALL_GRADINGS)
    backbone = trainable - head
    assert {"feature_extraction": not backbone, "fine_tune": backbone and all(".layer4." in n for n in backbone),
            "full": backbone and any(".layer1." in n for n in backbone)}[mode]


def test_a_missing_grading_does_not_enter_that_heads_loss(compose):
    module = _module(compose, "data.targets=[disc_herniation,pfirrman_grade]")
    torch.manual_seed(0)
    logits = {"disc_herniation": torch.randn(3, 2, requires_grad=True),
              "pfirrman_grade": torch.randn(3, 4, requires_grad=True)}
    # disc 0 has both gradings, disc 1 only Pfirrmann, disc 2 only herniation
    target = torch.tensor([[1, 2], [MISSING, 4], [0, MISSING]])
    loss = module.loss(logits, target)
    loss.backward()
    loss = loss.detach()
    # no gradient reaches the outputs of a head for a disc missing its grading; the disc still trains the other
    assert logits["disc_herniation"].grad[1].abs().sum() == 0 and logits["pfirrman_grade"].grad[2].abs().sum() == 0
    assert logits["disc_herniation"].grad[[0, 2]].abs().sum() > 0 and logits["pfirrman_grade"].grad[[0, 1]].abs().sum() > 0
    # the missing entries' logits are irrelevant: changing them changes nothing
    changed = {k: v.detach().clone() for k, v in logits.items()}
    changed["disc_herniation"][1] += 100
    changed["pfirrman_grade"][2] -= 100
    assert float(module.loss(changed, target)) == pytest.approx(float(loss))
    # by hand: each head's mean over its labelled discs
    from torch.nn import functional as F

    from plid.models.grading import coral_loss

    expected = F.cross_entropy(logits["disc_herniation"][[0, 2]], torch.tensor([1, 0])) + \
        coral_loss(logits["pfirrman_grade"][[0, 1]], torch.tensor([2, 4]))
    assert float(loss) == pytest.approx(float(expected.detach()))
    # a batch where no disc carries any grading still gives a (zero) loss that back-propagates
    empty = module.loss(logits, torch.full((3, 2), MISSING))
    empty.backward()
    assert float(empty) == 0


def test_ordinal_head_gives_grades_in_range_and_monotone_cumulative_probabilities():
    from plid.metrics import grade_of_distribution
    from plid.models.grading import CoralHead, grade_distribution

    torch.manual_seed(0)
    head = CoralHead(8, 5)
    with torch.no_grad():
        head.gaps.copy_(torch.randn(3) * 3)  # whatever the learnt gaps, the biases stay ordered
        head.first_bias.fill_(2.0)
    h = torch.randn(200, 8) * 5
    logits = head(h)
    assert logits.shape == (200, 4)
    cumulative = torch.sigmoid(logits)
    assert (cumulative[:, 1:] <= cumulative[:, :-1] + 1e-7).all()
    distribution = grade_distribution(logits)
    assert distribution.shape == (200, 5) and (distribution >= 0).all()
    torch.testing.assert_close(distribution.sum(1), torch.ones(200))
    grades = grade_of_distribution(distribution.detach().numpy())
    assert grades.min() >= 0 and grades.max() <= 4
    # grades written as discs.csv does: Pfirrmann 1-5
    assert {grading("pfirrman_grade").grade(int(g)) for g in grades} <= {1, 2, 3, 4, 5}


def test_a_binary_grading_logs_the_metrics_modules_scores_under_its_names():
    from plid.metrics import binary_scores, youden_threshold
    from plid.models.grading import grading_scores

    probs = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.6, 0.8, 0.9])
    target = torch.tensor([0, 0, 0, 1, 0, 1, 1])
    threshold = youden_threshold(probs.numpy(), target.numpy())
    scores = grading_scores(binary_scores(probs, target, threshold))
    assert scores["sensitivity"] == 1 and scores["specificity"] == pytest.approx(3 / 4)
    assert scores["balanced_accuracy"] == pytest.approx(7 / 8) and scores["auc"] == pytest.approx(11 / 12)
    assert (scores["positives"], scores["negatives"]) == (3, 4)


def test_multi_task_datamodule_keeps_discs_missing_a_grading(compose, tmp_path):
    import pandas as pd

    cfg = compose("model=grade_resnet50", "debug=smoke", "data.targets=[disc_bulging,pfirrman_grade]")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    discs = datamodule.dataset.discs
    # blank one grading of some discs in a copy of the folder: they stay, with -1 for that grading
    root = tmp_path / "data"
    import shutil

    shutil.copytree(datamodule.dataset.root, root)
    edited = pd.read_csv(root / "discs.csv")
    edited.loc[::3, "disc_bulging"] = np.nan
    edited.to_csv(root / "discs.csv", index=False)
    cfg = compose("model=grade_resnet50", "debug=smoke", "data.targets=[disc_bulging,pfirrman_grade]",
                  f"data.root={root}", "data.synthetic=null")
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert len(datamodule.dataset.discs) == len(discs)
    datamodule.setup("fit")
    targets = np.concatenate([np.asarray(d.targets) for d in datamodule.datasets.values()])
    assert targets.shape[1] == 2 and (targets[:, 0] == MISSING).sum() == len(edited[::3])
    assert set(np.unique(targets[:, 1])) <= {0, 1, 2, 3, 4}
    item = datamodule.datasets["train"][0]
    assert item["target"].shape == (2,) and item["target"].dtype == torch.long


def test_grading_run_writes_scores_thresholds_and_predictions_per_grading(compose):
    from plid.ensemble.predictions import load_predictions
    from plid.training import train

    cfg = compose("model=grade_resnet50", "model.net.name=test_resnet", "debug=smoke")
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets"] == list(ALL_GRADINGS)
    binary = [g for g in ALL_GRADINGS if not grading(g).ordinal]
    assert set(summary["thresholds"]) == set(binary)
    assert all(0 <= t <= 1 for t in summary["thresholds"].values())
    for name in binary:
        assert {f"{name}/{k}" for k in ("auc", "pr_auc", "balanced_accuracy", "sensitivity", "specificity")} \
            <= set(summary["test"])
    for name in ("pfirrman_grade", "modic"):
        assert {f"{name}/{k}" for k in ("balanced_accuracy", "kappa", "within_one")} <= set(summary["test"])
    assert (out / "confusion_matrix_pfirrman_grade_test.png").is_file()
    assert metrics["test/score"] == metrics["test/score"] or np.isnan(metrics["test/score"])
    for split in ("val", "test"):
        files = summary["predictions"][split]
        assert set(files) == set(ALL_GRADINGS)
        pfirrmann = load_predictions(files["pfirrman_grade"])
        assert pfirrmann.probs.shape[1] == 5 and set(pfirrmann.targets) <= set(range(5))
        np.testing.assert_allclose(pfirrmann.probs.astype(float).sum(1), 1, atol=1e-2)
        assert load_predictions(files["disc_herniation"]).probs.shape[1] == 2
    # the ordinal gradings' cuts (K - 1 each), chosen on validation
    assert {g: len(c) for g, c in summary["cuts"].items()} == {"pfirrman_grade": 4, "modic": 3}
    # a checkpoint of a plid before cuts (no "cuts" in its state) loads with the head's rule, 0.5 on every question
    model = objects["model"]
    model.cuts.fill_(0.3)
    model.load_state_dict({k: v for k, v in model.state_dict().items() if k != "cuts"})
    assert (model.cuts == 0.5).all()


def test_ordinal_cuts_are_chosen_on_validation_travel_in_the_checkpoint_and_grade_the_test_discs(compose):
    """The module's own rule, on hand-made outputs: Pfirrmann 1 is rare among these discs and the head's 0.5 never
    calls it; the cuts chosen on validation (Youden's J per question) do, and test is graded at them."""
    import hydra

    from plid.labels import MISSING
    from plid.metrics import grade_of_distribution, ordinal_cuts, ordinal_scores
    from plid.models.grading import grade_distribution

    cfg = compose("model=grade_resnet50", "model.net.name=test_resnet", "data.targets=[disc_bulging,pfirrman_grade]")
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    rng = np.random.default_rng(0)
    biases = torch.tensor([-2.5, 0.0, 1.0, 2.0])  # P(grade > 0) is above 0.5 for most discs
    def outputs(n):
        grade = torch.as_tensor(rng.choice(5, n, p=[0.1, 0.3, 0.3, 0.2, 0.1]))
        score = grade.double() + torch.as_tensor(rng.normal(0, 0.7, n))
        distribution = grade_distribution((score[:, None] - biases[None]).float())
        target = torch.stack([torch.as_tensor(rng.integers(0, 2, n)), grade], 1)
        target[:3, 1] = MISSING  # three discs without a Pfirrmann grade: left out of its cuts and scores
        return ({"disc_bulging": torch.rand(n), "pfirrman_grade": distribution}, target)
    val, test = outputs(200), outputs(120)
    module._outputs["val"] = [val]
    module.scores("val", choose_thresholds=True)
    labelled = val[1][:, 1] != MISSING
    expected = ordinal_cuts(val[0]["pfirrman_grade"][labelled].double().numpy(), val[1][labelled, 1].numpy())
    assert module.cuts_of(1) == pytest.approx(expected, abs=1e-6) and module.cuts_of(1) != [0.5] * 4
    assert module.summary()["cuts"] == {"pfirrman_grade": module.cuts_of(1)}
    assert "cuts" in module.state_dict()
    module._outputs["test"] = [test]
    scores, _ = module.scores("test", choose_thresholds=False)
    labelled = test[1][:, 1] != MISSING
    distribution, target = test[0]["pfirrman_grade"][labelled].double().numpy(), test[1][labelled, 1]
    at_cuts = ordinal_scores(grade_of_distribution(distribution, module.cuts_of(1)), target, 5)
    at_half = ordinal_scores(grade_of_distribution(distribution), target, 5)
    assert scores["pfirrman_grade"] == pytest.approx(at_cuts)
    assert at_cuts["balanced_accuracy"] != pytest.approx(at_half["balanced_accuracy"])


def _untrained_detectors(folder: Path) -> dict[str, Path]:
    """Untrained YOLOv8n weights for both stages (``lumbar``, ``ivd``), saved as ultralytics checkpoints."""
    from plid.models.detection import load_yolo

    weights = {}
    for stage in ("lumbar", "ivd"):
        yolo = load_yolo("yolov8n.yaml", folder / "ultralytics")
        yolo.ckpt = {"train_args": {"imgsz": 64}}
        weights[stage] = folder / f"{stage}.pt"
        yolo.save(weights[stage])
    return weights


@pytest.mark.parametrize("use_measurements", [False, True])
def test_multi_grading_model_dir_round_trips_and_its_report_lists_every_grading(tmp_path, compose, use_measurements):
    from omegaconf import OmegaConf

    from plid.data.scans import Scan
    from plid.datamodules.synthetic import generate_case
    from plid.errors import UserInputError
    from plid.inference.batch import predict_files
    from plid.inference.model_dir import export_model_dir, load_model_dir
    from plid.inference.pipeline import Pipeline
    from tests.test_pipeline import _fake_train_run, _truth_cropper

    case = generate_case(np.random.default_rng(3), size=128)
    weights = _untrained_detectors(tmp_path)
    seg = _fake_train_run(compose, tmp_path / "seg")
    # a multi-task run (tiny backbone) whose checkpoint carries thresholds chosen on validation
    run = tmp_path / "grade"
    cfg = compose("debug=smoke", "model=grade_resnet50", "model.net.name=test_resnet",
                  f"model.use_measurements={str(use_measurements).lower()}")
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    chosen = torch.linspace(0.2, 0.9, len(ALL_GRADINGS))
    module.thresholds.copy_(chosen)
    # and cuts: Pfirrmann's questions never answered yes (grade 1), Modic's always (grade 3)
    module.cuts[list(ALL_GRADINGS).index("pfirrman_grade"), :4] = 1.0
    module.cuts[list(ALL_GRADINGS).index("modic"), :3] = 0.0
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": module.state_dict()}, run / "checkpoints" / "epoch_000.ckpt")
    (run / "summary.json").write_text(json.dumps({"best_checkpoint": str(run / "checkpoints" / "epoch_000.ckpt"),
                                                  "choices": {"model": "grade_resnet50"}}))
    out = export_model_dir(tmp_path / "model_dir", weights["lumbar"], weights["ivd"], seg, [run], trust_run=True)
    entry = json.loads((out / "manifest.json").read_text())["classifiers"]["grade_resnet50"]
    binary = [g for g in ALL_GRADINGS if not grading(g).ordinal]
    assert entry["targets"] == list(ALL_GRADINGS) and "target" not in entry
    assert entry["thresholds"] == pytest.approx({g: float(chosen[list(ALL_GRADINGS).index(g)]) for g in binary})
    assert entry["cuts"] == {"modic": [0.0] * 3, "pfirrman_grade": [1.0] * 4}
    loaded = load_model_dir(out)
    assert loaded.classifiers[0].net.hparams.use_measurements is use_measurements
    state = torch.load(run / "checkpoints" / "epoch_000.ckpt", weights_only=True)["state_dict"]
    for key, value in loaded.classifiers[0].net.state_dict().items():
        torch.testing.assert_close(value, state[key])

    pipeline = Pipeline(loaded, cropper=_truth_cropper(case), levels="count")
    described = pipeline.classifier_description()
    assert described["targets"] == list(ALL_GRADINGS) and set(described["thresholds"]) == set(binary)
    assert described["cuts"] == entry["cuts"]
    report = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image")).report
    assert len(report["discs"]) == len(case.discs)
    for disc in report["discs"]:
        assert 0 <= disc["gradings"]["disc_herniation"]["probability"] <= 1  # the paper's key, kept
        for g in binary:
            made = disc["gradings"][g]
            assert 0 <= made["probability"] <= 1
            assert made["threshold"] == pytest.approx(float(chosen[list(ALL_GRADINGS).index(g)]))
            assert made["positive"] == (made["probability"] > made["threshold"])
        assert disc["gradings"]["pfirrman_grade"]["grade"] == 1 and disc["gradings"]["modic"]["grade"] == 3  # graded at the model's cuts
        assert len(disc["gradings"]["pfirrman_grade"]["distribution"]) == 5 and len(disc["gradings"]["modic"]["distribution"]) == 4
        assert sum(disc["gradings"]["pfirrman_grade"]["distribution"]) == pytest.approx(1, abs=1e-3)
        assert "measurements" in disc  # null where the (untrained) segmenter left no disc pixels in the box
        assert disc["measurements"] is None or disc["measurements"]["unit"] == "mm"
    # the page and report.json list them too
    image_path = tmp_path / "scans" / "a.png"
    image_path.parent.mkdir()
    import cv2

    cv2.imwrite(str(image_path), case.image)
    summary = predict_files([image_path], pipeline, tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["cases"][0]["discs"][0]["gradings"]["pfirrman_grade"] == \
        summary["cases"][0]["discs"][0]["gradings"]["pfirrman_grade"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<th>gradings</th>" in page and "Pf " in page and "Modic " in page and "bulg " in page
    # two multi-task runs that are no fold bag (no folds) are refused, with the reason
    other = tmp_path / "grade2"
    import shutil

    shutil.copytree(run, other)
    with pytest.raises(UserInputError, match="not supported"):
        export_model_dir(tmp_path / "two", weights["lumbar"], weights["ivd"], seg, [run, other], trust_run=True)


def _graded(grade: int) -> dict:
    """A Pfirrmann decision of ``grade``: all of the distribution on it."""
    from plid.reports import Decision

    return Decision.ordinal("pfirrman_grade", np.eye(5)[grade - 1]).model_dump()


def test_ordinal_gradings_are_scored_end_to_end_on_matched_discs():
    import pandas as pd

    from plid.evaluation.scoring import EndToEndScores, ImageTruth, score_image

    boxes = [[10, 10, 50, 20], [10, 30, 50, 40], [10, 50, 50, 60]]
    truth = ImageTruth("a", "p1", "t2", (0, 0, 100, 100),
                       pd.DataFrame({"x1": [b[0] for b in boxes], "y1": [b[1] for b in boxes],
                                     "x2": [b[2] for b in boxes], "y2": [b[3] for b in boxes],
                                     "ivd_label": [3, 2, 1], "pfirrman_grade": [2, 4, np.nan]}), False)
    # the report finds the three discs; the third has no reference grade, an extra box matches nothing
    report = {"status": "ok", "lumbar": {"box": [0, 0, 100, 100]},
              "discs": [{"box": b, "score": 0.9, "level": 3 - i, "gradings": {"pfirrman_grade": _graded(g)}}
                        for i, (b, g) in enumerate(zip(boxes, [2, 3, 5]))] +
                       [{"box": [60, 80, 90, 95], "score": 0.5, "level": None, "gradings": {"pfirrman_grade": _graded(1)}}]}
    score = score_image(report, truth, (), ["pfirrman_grade"])
    np.testing.assert_array_equal(score.ordinal["pfirrman_grade"], [[2, 2], [3, 4]])
    figures = EndToEndScores([score, score], {}, ["pfirrman_grade"])(np.array([0, 1]))
    assert figures["pfirrman_grade/accuracy"] == pytest.approx(0.5)
    assert figures["pfirrman_grade/within_one"] == pytest.approx(1.0)


def test_use_measurements_feeds_the_heads_the_discs_measurements(compose):
    from plid.measurements import FEATURES, measurement_features
    from plid.training import train

    assert measurement_features(None).tolist() == [0.0] * len(FEATURES)
    features = measurement_features({"anterior_height": 12, "middle_height": 10, "posterior_height": 8,
                                     "height_index": 0.25, "posterior_protrusion": 5, "signal_ratio": None})
    assert features.tolist() == pytest.approx([0.25, 1.2, 0.8, 0.5, 0.0, 1.0])
    cfg = compose("model=grade_resnet50", "model.net.name=test_resnet", "debug=smoke", "model.use_measurements=true",
                  "data.targets=[disc_bulging,pfirrman_grade]")
    assert cfg.data.measurements is True and cfg.model.net.measurements is True
    _, objects = train(cfg)
    datamodule, module = objects["datamodule"], objects["model"]
    item = datamodule.datasets["train"][0]
    assert item["features"].shape == (len(FEATURES),)
    measured = np.asarray(datamodule.datasets["train"].features)
    assert measured[:, -1].all()  # every synthetic image has a mask: every disc measured
    assert (measured[:, 0] > 0).mean() > 0.5  # most have a height index
    # the features change the output; none given means "not measured" (zeros)
    module.eval()
    x = item["image"][None]
    a = module(x, item["features"][None])["disc_bulging"]
    assert not torch.allclose(a, module(x, None)["disc_bulging"])
    torch.testing.assert_close(module(x, None)["disc_bulging"], module(x, torch.zeros(1, len(FEATURES)))["disc_bulging"])


def test_the_ensemble_refuses_a_multi_task_run_with_the_reason(tmp_path):
    from plid.ensemble.run import resolve_runs
    from plid.errors import UserInputError

    for name in ("a", "b"):
        (tmp_path / name / "predictions" / "disc_bulging").mkdir(parents=True)
        (tmp_path / name / "predictions" / "disc_bulging" / "val.npz").write_bytes(b"")
    with pytest.raises(UserInputError, match="multi-task"):
        resolve_runs([str(tmp_path / "a"), str(tmp_path / "b")])


@pytest.mark.slow
@requires_spider2d
def test_spider2d_discs_carry_every_grading_with_measurements_where_a_mask_is(compose):
    cfg = compose("model=grade_resnet50", "data=spider2d_cls", "data.image_size=32", "data.augment=false",
                  "model.use_measurements=true")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert sum(len(ds) for ds in dm.datasets.values()) == 2346
    targets = np.concatenate([np.asarray(ds.targets) for ds in dm.datasets.values()])
    assert (targets >= 0).all()  # every graded SPIDER disc carries all eight
    pfirrmann = targets[:, list(ALL_GRADINGS).index("pfirrman_grade")]
    assert set(np.unique(pfirrmann)) == {0, 1, 2, 3, 4}
    counts = dm.grading_class_counts()
    assert counts["disc_bulging"][1] > 0 and counts["disc_herniation"][1] > 0
    features = np.concatenate([np.asarray(ds.features) for ds in dm.datasets.values()])
    masked = set(dm.dataset.images.loc[dm.dataset.images["has_mask"] == 1, "image"])
    ids = [i for ds in dm.datasets.values() for i in ds.ids]
    measured = np.array([i.split(":")[0] in masked for i in ids])
    np.testing.assert_array_equal(features[:, -1] == 1, measured)


def test_several_slices_aggregate_every_grading_and_decide_again_from_the_aggregate():
    from plid.inference.slices import aggregate
    from plid.reports import Decision

    def report(p_hern, p_bulg, distribution):
        made = [Decision.binary("disc_herniation", p_hern, 0.5), Decision.binary("disc_bulging", p_bulg, 0.3),
                Decision.ordinal("pfirrman_grade", distribution)]
        return {"discs": [{"box": [10, 10, 50, 20], "gradings": {d.grading: d.model_dump() for d in made}}]}

    reports = {3: report(0.2, 0.6, [0.6, 0.4, 0, 0, 0]), 4: report(0.4, 0.2, [0.0, 0.2, 0.8, 0, 0]),
               5: report(0.9, 0.1, [0.0, 0.0, 0.2, 0.8, 0])}
    assert not reports[4]["discs"][0]["gradings"]["disc_herniation"]["positive"]  # the chosen slice alone: negative
    (disc,) = aggregate(reports, 4, "max")["discs"]
    herniation, bulging, pfirrmann = (disc["gradings"][g] for g in ("disc_herniation", "disc_bulging", "pfirrman_grade"))
    assert herniation["probability"] == pytest.approx(0.9) and bulging["probability"] == pytest.approx(0.6)
    assert herniation["positive"] and bulging["positive"] and herniation["slices"] == 3  # decided on the aggregate
    assert pfirrmann["distribution"] == pytest.approx([0.2, 0.2, 1 / 3, 0.8 / 3, 0], abs=1e-4)
    assert pfirrmann["aggregation"] == "mean"  # a maximum of distributions is no distribution
    # P(grade > 1) = 0.8, P(> 2) = 0.6, P(> 3) = 0.27: grade 3, as the rule gives on the mean distribution
    assert pfirrmann["grade"] == 3 == Decision.ordinal("pfirrman_grade", pfirrmann["distribution"]).grade
    assert [s["gradings"]["disc_bulging"]["probability"] for s in disc["slices"]] == [0.6, 0.2, 0.1]
    assert disc["slices"][1]["gradings"]["pfirrman_grade"]["grade"] == 3  # the chosen slice's own answer, kept


def test_evaluating_a_multi_task_model_dir_scores_binary_at_their_thresholds_and_ordinal_gradings(
        tmp_path, data_dir, compose):
    from plid.evaluation.end_to_end import evaluate_model_dir
    from plid.inference.model_dir import LoadedModule
    from tests.test_end_to_end import _dataset_with_truth_cropper

    dataset, pipeline = _dataset_with_truth_cropper(data_dir, compose)
    targets = ["disc_bulging", "pfirrman_grade"]
    module = _module(compose, f"data.targets=[{','.join(targets)}]").eval()
    pipeline.models.classifiers = [LoadedModule("grade", module, 32, 0.1, targets=targets,
                                                  thresholds={"disc_bulging": 0.37})]
    pipeline.models.weights = [1.0]
    bootstrap = {"samples": 20, "seed": 0, "confidence": 0.95}
    result = evaluate_model_dir(pipeline, dataset, dataset.images["image"].tolist(), tmp_path, "all", bootstrap,
                                progress=False)
    assert result["thresholds"] == {"disc_bulging": 0.37} and result["ordinal_gradings"] == ["pfirrman_grade"]
    figures, counts = result["groups"]["all"]["figures"], result["groups"]["all"]["counts"]
    assert counts["pfirrman_grade/discs"] == len(dataset.discs) == counts["disc_bulging/discs"]
    for key in ("pfirrman_grade/balanced_accuracy", "pfirrman_grade/within_one", "disc_bulging/auc"):
        assert 0 <= figures[key]["value"] <= 1, key
    page = (tmp_path / "evaluation.md").read_text()
    assert "## pfirrman_grade" in page and "quadratic kappa" in page and "threshold 0.37" in page
    # per disc: the synthetic images are series of one, so each disc is one distinct disc, graded as per slice
    per_disc = result["per_disc"]["groups"]["all"]
    assert per_disc["counts"]["series"] == len(dataset.images) and per_disc["counts"]["pfirrman_grade/discs"] == \
        len(dataset.discs) == per_disc["counts"]["disc_bulging/discs"]
    assert per_disc["figures"]["disc_bulging/auc"]["value"] == pytest.approx(figures["disc_bulging/auc"]["value"])
    assert "## Per disc" in page and "### pfirrman_grade per disc" in page


def _bag_run(compose, folder: Path, fold: int, targets: list[str], seed: int) -> Path:
    """A multi-task run of ``fold`` as plid.train leaves it (untrained weights of ``seed``), with saved validation
    predictions of its own patients and test predictions of the shared test patients: informative for binary
    gradings (the reference's class weighs more), random (Dirichlet) for ordinal ones."""
    from plid.ensemble.predictions import Predictions, save_predictions
    from tests.test_pipeline import _fake_train_run

    torch.manual_seed(seed)
    run = _fake_train_run(compose, folder, "grade_resnet50", "model.net.name=test_resnet",
                          f"data.targets=[{','.join(targets)}]", fold=fold, targets=targets)
    rng = np.random.default_rng(seed)
    for name in targets:
        classes = grading(name).num_classes
        for split, patients in (("val", [f"p{fold}{k}" for k in range(6)]), ("test", ["t0", "t1", "t2"])):
            ids = np.array([f"{p}_t2:{level}" for p in patients for level in (1, 2, 3)])
            labels = np.arange(len(ids)) % classes  # the same references for every run
            probs = rng.dirichlet(np.ones(classes), len(ids))
            if classes == 2:
                probs = 0.5 * probs + 0.5 * np.eye(2)[labels]
            save_predictions(run / "predictions" / name / f"{split}.npz", Predictions(ids, probs, labels))
    return run


def test_a_fold_bag_of_multi_task_runs_exports_and_predicts_their_mean_at_pooled_thresholds(tmp_path, compose):
    from plid.data.scans import Scan
    from plid.datamodules.synthetic import generate_case
    from plid.ensemble.folds import fold_bag
    from plid.ensemble.predictions import load_predictions
    from plid.errors import UserInputError
    from plid.inference.model_dir import export_model_dir, load_model_dir
    from plid.inference.pipeline import Pipeline
    from plid.metrics import grade_of_distribution, ordinal_cuts, prevalence_threshold
    from plid.models.grading import grade_distribution
    from tests.test_pipeline import _fake_train_run, _truth_cropper

    targets = ["disc_bulging", "pfirrman_grade"]
    runs = [_bag_run(compose, tmp_path / f"fold{k}", k, targets, seed=10 + k) for k in (1, 0)]
    weights = _untrained_detectors(tmp_path)
    seg = _fake_train_run(compose, tmp_path / "seg")
    out = export_model_dir(tmp_path / "model_dir", weights["lumbar"], weights["ivd"], seg, runs, trust_run=True)
    bag = json.loads((out / "manifest.json").read_text())["bag"]
    assert bag["folds"] == [0, 1] and bag["selection"] == "pooled out-of-fold"
    # the bulging threshold is chosen on both folds' validation predictions together, not either fold's (by the
    # default operating point: as many positive calls as positives)
    pooled = [load_predictions(r / "predictions" / "disc_bulging" / "val.npz") for r in runs]
    cut = prevalence_threshold(np.concatenate([p.probs[:, 1] for p in pooled]),
                               np.concatenate([p.targets for p in pooled]))
    assert bag["thresholds"] == {"disc_bulging": pytest.approx(cut, abs=1e-6)}
    # and the Pfirrmann cuts on both folds' Pfirrmann predictions together
    pooled = [load_predictions(r / "predictions" / "pfirrman_grade" / "val.npz") for r in runs]
    cuts = ordinal_cuts(np.concatenate([p.probs for p in pooled]), np.concatenate([p.targets for p in pooled]))
    assert bag["cuts"] == {"pfirrman_grade": cuts} and bag["pooled_val"]["pfirrman_grade"]["cuts"] == cuts
    assert bag["pooled_val"]["disc_bulging"]["cases"] == 36 and bag["pooled_val"]["pfirrman_grade"]["cases"] == 36
    assert bag["pooled_val"]["disc_bulging"]["positives"] == 18
    # validated where the pooled figure reaches the floor: bulging's informative predictions (ROC AUC 1), not
    # Pfirrmann's random ones (kappa near 0), which reports state as not validated
    bulging, pfirrmann = bag["pooled_val"]["disc_bulging"], bag["pooled_val"]["pfirrman_grade"]
    assert bulging["auc"] == 1.0 and bulging["validated"] and bulging["floor"] == 0.7
    assert bulging["sensitivity"] == 1.0 and bulging["specificity"] == 1.0 and bulging["called_positive"] == 0.5
    assert pfirrmann["kappa"] < 0.4 and not pfirrmann["validated"] and pfirrmann["metric"] == "kappa"
    assert bag["policy"]["operating_point"] == "prevalence"

    case = generate_case(np.random.default_rng(3), size=128)
    loaded = load_model_dir(out)
    assert len(loaded.classifiers) == 2 and loaded.weights == [1.0, 1.0]
    pipeline = Pipeline(loaded, cropper=_truth_cropper(case), levels="count")
    described = pipeline.classifier_description()
    assert described["thresholds"] == {"disc_bulging": pytest.approx(cut, abs=1e-6)}
    assert described["cuts"] == {"pfirrman_grade": cuts}
    assert "fold bag" in described["combination"]
    assert described["validation"]["pfirrman_grade"]["validated"] is False
    report = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image")).report
    boxes = [d["box"] for d in report["discs"]]
    with torch.inference_mode():
        outputs = [c.net(Pipeline._crops(c, case.image, boxes)) for c in loaded.classifiers]
    bulging = torch.stack([o["disc_bulging"].softmax(1)[:, 1] for o in outputs]).mean(0)
    distribution = torch.stack([grade_distribution(o["pfirrman_grade"]) for o in outputs]).mean(0).numpy()
    # the two untrained runs disagree, so the mean is neither run's answer
    assert not torch.allclose(outputs[0]["disc_bulging"], outputs[1]["disc_bulging"])
    for i, disc in enumerate(report["discs"]):
        assert disc["gradings"]["disc_bulging"]["probability"] == pytest.approx(float(bulging[i]), abs=1e-4)
        assert disc["gradings"]["disc_bulging"]["positive"] == bool(bulging[i] > cut)
        assert disc["gradings"]["pfirrman_grade"]["distribution"] == pytest.approx(distribution[i].tolist(), abs=1e-4)
        assert disc["gradings"]["pfirrman_grade"]["grade"] == 1 + int(grade_of_distribution(distribution[i], cuts))
        assert disc["gradings"]["disc_bulging"]["validated"] is True
        assert disc["gradings"]["pfirrman_grade"]["validated"] is False
    # the page gives the grade unvalidated, and no finding of it
    from plid.inference.render import grading_summary

    assert "Pf " not in grading_summary(report["discs"][0], only_positive=True)
    assert "(not validated)" in grading_summary(report["discs"][0])
    # the grades follow the bag's cuts: none answered yes gives Pfirrmann 1, all answered yes Pfirrmann 5
    for extreme, grade in ((1.0, 1), (-1.0, 5)):
        loaded.bag["cuts"] = {"pfirrman_grade": [extreme] * 4}
        report = pipeline(Scan("case", Path("case.png"), case.image, 0.5, "image")).report
        assert {d["gradings"]["pfirrman_grade"]["grade"] for d in report["discs"]} == {grade}

    # one multi-task run alone: called and validated by the same policy, on its own validation split
    alone = export_model_dir(tmp_path / "alone", weights["lumbar"], weights["ivd"], seg, [runs[1]], trust_run=True)
    entry = json.loads((alone / "manifest.json").read_text())["classifiers"]["grade_resnet50"]
    own = load_predictions(runs[1] / "predictions" / "disc_bulging" / "val.npz")
    assert entry["thresholds"] == {"disc_bulging": pytest.approx(prevalence_threshold(own.probs[:, 1], own.targets),
                                                                abs=1e-6)}
    assert entry["validation"]["disc_bulging"]["cases"] == 18 and entry["validation"]["disc_bulging"]["validated"]
    assert entry["validation"]["pfirrman_grade"]["validated"] is False
    assert Pipeline(load_model_dir(alone), cropper=_truth_cropper(case), levels="count").validated("pfirrman_grade") \
        is False

    # runs that validated on the same discs are no fold bag; a bag takes no ensemble weights
    with pytest.raises(UserInputError, match="both validated on"):
        fold_bag([runs[0], _overlapping(runs[0], tmp_path / "overlap")])
    with pytest.raises(UserInputError, match="drop ensemble"):
        export_model_dir(tmp_path / "with_weights", weights["lumbar"], weights["ivd"], seg, runs,
                         ensemble=tmp_path / "ensemble_weights.json", trust_run=True)


def _overlapping(run: Path, folder: Path) -> Path:
    """A copy of ``run`` as another fold whose validation predictions are those of ``run``'s patients."""
    import shutil

    shutil.copytree(run, folder)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "fold": 5}))
    return folder
