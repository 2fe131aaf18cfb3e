"""Disc classification: backbones, freezing, class weights, crops, the real-data DataModule, end to end."""

import json

import hydra
import numpy as np
import pytest
import torch
from conftest import SPIDER2D, requires_spider2d, run_module

from plid import CONF_DIR
from plid.errors import UserInputError

CLASSIFIERS = sorted(p.stem for p in (CONF_DIR / "model").glob("cls_*.yaml"))


def test_the_papers_six_backbones_have_a_config():
    expected = {"cls_vgg16", "cls_vgg19", "cls_resnet50", "cls_inception_v3", "cls_xception", "cls_densenet121"}
    assert set(CLASSIFIERS) == expected


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_config_composes_and_trains_one_step_on_a_small_crop(compose, name):
    cfg = compose(f"model={name}")
    assert cfg.data._target_.endswith("ClassificationDataModule")  # the model picks the classification data
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    x, y = torch.randn(2, 1, 64, 64), torch.tensor([0, 1])
    module.train()
    logits = module(x)
    assert logits.shape == (2, 2)
    module.loss(logits, y).backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    # every trainable parameter is used (no dead ImageNet top left over) and gets a finite gradient
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [n for n, g in grads.items()
                                                                                   if g is None]
    assert next(module.net.backbone.parameters()).grad.abs().sum() > 0
    probs = module.predict_step({"image": x, "target": y, "id": ["a:1", "a:2"]}, 0)["probs"]
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))


def _trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_freezing_leaves_exactly_the_intended_parameters_trainable(compose, name):
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d

    frozen_bn = (FrozenBatchNorm2d, FrozenBatchNormAct2d)
    def build(mode):
        return hydra.utils.instantiate(compose(f"model={name}", f"model.mode={mode}").model, _convert_="all")

    full = build("full")
    everything = {n for n, _ in full.named_parameters()}
    head = {n for n in everything if n.startswith("net.head.")}
    assert _trainable(full) == everything and head

    extractor = build("feature_extraction")
    assert _trainable(extractor) == head
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.net.backbone.modules())
    has_bn = any(isinstance(m, frozen_bn) for m in extractor.net.backbone.modules())
    assert has_bn == (not name.startswith("cls_vgg"))  # frozen batch norm keeps its running statistics

    tuner = build("fine_tune")
    blocks = tuple(f"net.backbone.{m}." for m in tuner.hparams.fine_tune_modules)
    top = {n for n in everything if n.startswith(blocks)}
    assert top and _trainable(tuner) == head | top
    assert len(top) < len(everything - head) / 2  # the top of the backbone, not most of it
    # batch norm trains inside the fine-tuned blocks only
    for module_name, module in tuner.net.backbone.named_modules():
        if isinstance(module, (torch.nn.BatchNorm2d, *frozen_bn)):
            inside = f"net.backbone.{module_name}.".startswith(blocks)
            assert isinstance(module, torch.nn.BatchNorm2d) == inside, module_name


def test_learning_rate_follows_the_mode_unless_given(compose):
    for mode, lr in (("feature_extraction", 1e-3), ("fine_tune", 1e-4)):
        module = hydra.utils.instantiate(compose("model=cls_resnet50", f"model.mode={mode}").model, _convert_="all")
        assert module.configure_optimizers()["optimizer"].param_groups[0]["lr"] == lr
    module = hydra.utils.instantiate(compose("model=cls_resnet50", "model.optimizer.lr=0.02").model, _convert_="all")
    assert module.configure_optimizers()["optimizer"].param_groups[0]["lr"] == 0.02


def test_unknown_fine_tune_block_and_backbone_are_clear_errors(compose):
    from plid.models.nets import build_classifier

    cfg = compose("model=cls_resnet50", "model.mode=fine_tune", "model.fine_tune_modules=[layer5]")
    with pytest.raises(Exception) as error:
        hydra.utils.instantiate(cfg.model, _convert_="all")
    assert "layer5" in str(error.value) and "layer4" in str(error.value)
    with pytest.raises(UserInputError, match="unknown timm model"):
        build_classifier("resnet51")


def test_local_weights_file_is_loaded_into_the_backbone(tmp_path):
    import timm

    from plid.models.nets import build_classifier

    source = timm.create_model("test_resnet")  # an ImageNet-shaped checkpoint: RGB input, 1000 classes
    path = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), path)
    net = build_classifier("test_resnet", weights_file=str(path))
    # timm sums the RGB filters of the first convolution for one input channel
    first = net.backbone.conv1[0].weight
    assert torch.allclose(first, source.conv1[0].weight.sum(1, keepdim=True))
    assert torch.equal(net.backbone.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    with pytest.raises(UserInputError, match="no such file"):
        build_classifier("test_resnet", weights_file=str(tmp_path / "missing.pth"))


def test_class_weights_match_a_hand_computed_case():
    from plid.datamodules.classification import class_weights_from_counts

    # the paper's split: 0.702 / 1.73 are n / (2 n_c) for 712 negative and 289 positive discs
    weights = class_weights_from_counts([712, 289])
    assert weights == pytest.approx([1001 / 1424, 1001 / 578])
    assert weights == pytest.approx([0.703, 1.732], abs=1e-3)
    with pytest.raises(UserInputError, match="per class"):
        class_weights_from_counts([10, 0])


def test_auto_class_weights_come_from_the_training_split(compose):
    from plid.training import train

    cfg = compose("model=cls_resnet50", "model.net.name=test_resnet", "debug=smoke", "test=false")
    _, objects = train(cfg)
    negatives, positives = objects["datamodule"].datasets["train"].class_counts()
    n = negatives + positives
    expected = [n / (2 * negatives), n / (2 * positives)]
    assert objects["model"].class_weight.tolist() == pytest.approx(expected)


def test_crops_are_the_disc_boxes_enlarged_by_10_percent_and_clipped():
    from plid.datamodules.classification import disc_region, load_disc_crop

    # each pixel holds its own coordinates, so a crop tells which region it came from
    height, width = 100, 200
    yy, xx = np.mgrid[0:height, 0:width]
    image = xx + yy * width
    # a 40 x 20 box grows by 10 %: 44 x 22 about the same centre (x 28-71, y 39-60)
    region = disc_region(image, (30, 40, 70, 60), roi_margin=0.1)
    assert region.shape == (22, 44)
    assert region[0, 0] == 28 + 39 * width and region[-1, -1] == 71 + 60 * width
    # at the corner the enlarged box (x -2..42, y 89.5..100.5) is clipped at the image edge
    region = disc_region(image, (0, 90, 40, 100), roi_margin=0.1)
    assert region.shape == (11, 42)
    assert region[0, 0] == 0 + 89 * width and region[-1, -1] == 41 + 99 * width
    assert load_disc_crop(image.astype(np.uint8), (0, 90, 40, 100), size=32, roi_margin=0.1).shape == (32, 32)


def test_square_disc_crops_show_the_bone_above_and_below_and_travel_with_the_classifier(tmp_path, compose):
    from plid.datamodules.classification import disc_region, load_disc_crop
    from plid.datamodules.contract import DISC_BOX
    from plid.datamodules.synthetic import generate_case
    from plid.datamodules.transforms import to_tensor
    from plid.inference.model_dir import export_model_dir, load_model_dir
    from plid.inference.pipeline import Pipeline
    from tests.test_grading import _untrained_detectors
    from tests.test_pipeline import _fake_train_run

    height, width = 100, 200
    yy, xx = np.mgrid[0:height, 0:width]
    image = xx + yy * width
    # the 40 x 20 box grows to 40 x 40 about its centre (y 30-70), then by 10 %: 44 x 44 (x 28-71, y 28-71)
    region = disc_region(image, (30, 40, 70, 60), roi_margin=0.1, disc_crop="square")
    assert region.shape == (44, 44)
    assert region[0, 0] == 28 + 28 * width and region[-1, -1] == 71 + 71 * width
    with pytest.raises(UserInputError, match="disc_crop='circle'"):
        disc_region(image, (30, 40, 70, 60), roi_margin=0.1, disc_crop="circle")

    # training crops them so (data.disc_crop)
    dm = hydra.utils.instantiate(compose("model=cls_resnet50", "data.image_size=48", "data.disc_crop=square").data,
                                 _convert_="all")
    dm.setup("fit")
    item = dm.datasets["val"][0]
    name, level = item["id"].split(":")
    disc = dm.dataset.discs.set_index(["image", "ivd_label"]).loc[(name, int(level))]
    expected = load_disc_crop(dm.dataset.read_image(name), disc[DISC_BOX].tolist(), 48, 0.1, "square")
    torch.testing.assert_close(item["image"], to_tensor(expected))

    # the crop a classifier was trained on is recorded in the model_dir and used by the pipeline
    weights = _untrained_detectors(tmp_path)
    seg = _fake_train_run(compose, tmp_path / "seg")
    runs = {crop: _fake_train_run(compose, tmp_path / crop, "cls_resnet50", "model.net.name=test_resnet",
                                  f"data.disc_crop={crop}", threshold=0.5) for crop in ("box", "square")}
    case = generate_case(np.random.default_rng(3), size=128)
    box = case.discs[0]["box"]
    inputs = {}
    for crop, run in runs.items():
        out = export_model_dir(tmp_path / f"model_dir_{crop}", weights["lumbar"], weights["ivd"], seg, [run], trust_run=True)
        assert json.loads((out / "manifest.json").read_text())["classifiers"]["cls_resnet50"]["disc_crop"] == crop
        classifier = load_model_dir(out).classifiers[0]
        assert classifier.disc_crop == crop
        inputs[crop] = Pipeline._crops(classifier, case.image, [box])[0]
        expected = to_tensor(load_disc_crop(case.image, box, classifier.image_size, classifier.roi_margin, crop))
        torch.testing.assert_close(inputs[crop], expected)
    assert not torch.allclose(inputs["box"], inputs["square"])


def test_synthetic_datamodule_yields_crops_with_ids_and_targets(compose):
    cfg = compose("model=cls_resnet50", "data.batch_size=4", "data.image_size=48")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 1, 48, 48) and batch["target"].dtype == torch.long
    discs = dm.dataset.discs
    for case_id, target in zip(batch["id"], batch["target"].tolist()):
        image, level = case_id.split(":")
        row = discs[(discs["image"] == image) & (discs["ivd_label"] == int(level))]
        assert row["disc_herniation"].item() == target
    assert sum(len(ds) for ds in dm.datasets.values()) == len(discs)


def test_roi_none_labels_whole_images_positive_when_any_disc_is(compose):
    cfg = compose("model=cls_resnet50", "data.roi=none", "data.image_size=32")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    data = dm.datasets["train"]
    any_herniated = dm.dataset.discs.groupby("image")["disc_herniation"].max()
    assert len(set(data.ids)) == len(data) and ":" not in data.ids[0]
    assert [any_herniated[i] for i in data.ids] == data.targets.tolist()
    assert 0 < data.targets.sum() < len(data)


def test_target_must_be_a_binary_column_of_discs_csv(compose):
    for target in ("disc_herniaton", "pfirrman_grade"):
        dm = hydra.utils.instantiate(compose("model=cls_resnet50", f"data.target={target}").data, _convert_="all")
        with pytest.raises(UserInputError, match=rf"data.target='{target}'.*valid: \[.*'disc_bulging'"):
            dm.prepare_data()


@pytest.mark.slow
def test_smoke_run_writes_metrics_and_figures(tmp_path):
    out = tmp_path / "run"
    result = run_module("plid.train", "model=cls_resnet50", "debug=smoke", f"hydra.run.dir={out}",
                        f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "ClassificationModule" and summary["choices"]["data"] == "synthetic_cls"
    expected = {"accuracy", "balanced_accuracy", "specificity", "precision", "recall", "f1", "auc", "pr_auc",
                "tn", "fp", "fn", "tp"}
    assert expected <= set(summary["test"]) and expected <= {k.split("/")[1] for k in summary["val"]}
    assert summary["test"]["tn"] + summary["test"]["fp"] + summary["test"]["fn"] + summary["test"]["tp"] == 4
    checkpoint = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["mode"] == "full"
    for name in ("roc_curve_test.png", "confusion_matrix_test.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from plid.ensemble.predictions import load_predictions

    saved = load_predictions(out / "predictions" / "test.npz")
    assert saved.probs.shape == (summary["samples"]["test"], 2) and all(":" in i for i in saved.ids)


@requires_spider2d
@pytest.mark.parametrize("target", ["disc_herniation", "disc_bulging"])
def test_spider2d_datamodule_yields_positives_and_negatives_without_patient_leaks(compose, target):
    cfg = compose("model=cls_resnet50", "data=spider2d_cls", f"data.target={target}", "data.image_size=32",
                  "data.augment=false")
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup("fit")
    assert dm.dataset.root == SPIDER2D
    assert sum(len(ds) for ds in dm.datasets.values()) == dm.dataset.discs[target].notna().sum() == 2346
    patient_of = dm.dataset.images.set_index("image")["patient"]
    seen = {}
    for split, data in dm.datasets.items():
        negatives, positives = data.class_counts()
        assert positives > 0 and negatives > 0, split
        seen[split] = {patient_of[i.split(":")[0]] for i in data.ids}
        assert seen[split] <= set(dm.patient_splits()[split])
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """A tiny classifier trained for one epoch, scored on every val and test disc; its run folder."""
    import json

    from conftest import run_module

    tmp = tmp_path_factory.mktemp("cls_run")
    run = tmp / "run"
    result = run_module("plid.train", "debug=smoke", "model=cls_resnet50", "model.net.name=test_resnet",
                        "data.image_size=32", "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0",
                        f"hydra.run.dir={run}", f"paths.data_dir={tmp}/data", f"paths.log_dir={tmp}/logs")
    assert result.returncode == 0, result.stderr[-3000:]
    return run, json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_saved_probabilities_give_the_scores_of_the_summary(trained_classifier):
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    from plid.ensemble.predictions import load_predictions

    run, summary = trained_classifier
    test = load_predictions(run / "predictions" / "test.npz")
    probs, targets = torch.from_numpy(test.probs[:, 1].astype(np.float32)), torch.from_numpy(test.targets)
    assert float(binary_auroc(probs, targets)) == pytest.approx(summary["test"]["auc"], abs=1e-7)
    assert float(binary_average_precision(probs, targets)) == pytest.approx(summary["test"]["pr_auc"], abs=1e-7)
    assert test.probs.dtype == np.float32
    called = test.probs[:, 1] > summary.get("threshold", 0.5)
    assert [int((called & (test.targets == 1)).sum()), int((called & (test.targets == 0)).sum())] == \
        [summary["test"]["tp"], summary["test"]["fp"]]


@pytest.mark.slow
def test_the_decision_threshold_is_chosen_on_validation_and_applied_to_test(trained_classifier):
    from plid.ensemble.predictions import load_predictions
    from plid.metrics import binary_scores, youden_threshold

    run, summary = trained_classifier
    val = load_predictions(run / "predictions" / "val.npz")
    test = load_predictions(run / "predictions" / "test.npz")
    assert summary["threshold"] == youden_threshold(val.probs[:, 1], val.targets)
    assert summary["val"]["val/threshold"] == summary["test"]["threshold"] == summary["threshold"]
    expected = binary_scores(test.probs[:, 1], test.targets, summary["threshold"])
    for name in ("accuracy", "recall", "specificity", "balanced_accuracy"):
        assert summary["test"][name] == pytest.approx(expected[name], abs=1e-6)
