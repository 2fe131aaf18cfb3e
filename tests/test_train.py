"""The training entry point, end to end, as a user runs it."""

import json

import pytest
from conftest import run_module


def _common(tmp_path):
    return [f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs"]


@pytest.mark.slow
def test_smoke_run_writes_summary_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = run_module("plid.train", "debug=smoke", f"hydra.run.dir={out}", *_common(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["choices"]["model"] == "unet_resnet34" and summary["epochs"] == 1
    for name in ("background", "vertebra", "disc", "canal"):
        assert 0 <= summary["test"][f"dice_{name}"] <= 1
        assert 0 <= summary["test"][f"iou_{name}"] <= 1
    assert {"dice", "miou", "miou_fg"} <= set(summary["test"])
    assert summary["best_checkpoint"].startswith(str(out / "checkpoints"))
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()


def test_missing_data_root_is_a_clear_error_not_a_trace(tmp_path):
    result = run_module("plid.train", "debug=smoke", "data=spider2d_seg", f"data.root={tmp_path}/nowhere",
                        f"hydra.run.dir={tmp_path}/run", *_common(tmp_path))
    assert result.returncode != 0
    assert "nowhere does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_image_size_the_architecture_cannot_take_is_caught_before_training(tmp_path):
    result = run_module("plid.train", "debug=smoke", "model=fpn_resnet34", "data.image_size=72",
                        f"hydra.run.dir={tmp_path}/run", *_common(tmp_path))
    assert result.returncode != 0
    assert "multiple of 32" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_multirun_writes_one_dir_per_model(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_module("plid.train", "-m", "debug=smoke", "model=unet_resnet34,linknet_resnet34",
                        f"hydra.sweep.dir={sweep}", *_common(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0_unet_resnet34", "1_linknet_resnet34"]
    models = [json.loads(p.read_text())["choices"]["model"] for p in summaries]
    assert models == ["unet_resnet34", "linknet_resnet34"]


def test_saved_predictions_load_back_with_ids_and_targets(compose):
    import numpy as np

    from plid.ensemble.predictions import load_predictions
    from plid.training import train

    cfg = compose("debug=smoke", "trainer.limit_val_batches=1.0", "trainer.limit_test_batches=1.0")
    _, objects = train(cfg)
    dm = objects["datamodule"]
    for split in ("val", "test"):
        saved = load_predictions(f"{cfg.paths.output_dir}/predictions/{split}.npz")
        dataset = dm.datasets[split]
        assert sorted(saved.ids) == sorted(dataset.ids) and list(saved.ids) == sorted(saved.ids)
        assert saved.probs.shape == (len(dataset), 4, 64, 64)
        np.testing.assert_allclose(saved.probs.astype(np.float32).sum(1), 1.0, atol=1e-2)
        for case_id, target in zip(saved.ids, saved.targets):
            assert np.array_equal(target, dataset.masks[dataset.ids.index(case_id)])


def test_summary_reports_the_best_checkpoint_on_validation(compose):
    import torch

    from plid.training import train

    cfg = compose("debug=smoke", "trainer.max_epochs=3", "trainer.limit_val_batches=1.0")
    metrics, objects = train(cfg)
    best = torch.load(objects["trainer"].checkpoint_callback.best_model_path, weights_only=True)
    checkpoint_score = best["callbacks"][next(k for k in best["callbacks"] if "ModelCheckpoint" in k)]["best_model_score"]
    assert metrics["val/dice"] == pytest.approx(float(checkpoint_score), abs=1e-5)


def test_a_fixed_schedule_tests_the_last_epoch_whatever_validation_says(compose):
    from pathlib import Path

    from plid.training import train

    cfg = compose("debug=smoke", "callbacks=fixed_schedule", "trainer.max_epochs=3")
    assert cfg.callbacks.get("early_stopping") is None and cfg.callbacks.model_checkpoint.monitor is None
    _, objects = train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["epochs"] == 3 and Path(summary["best_checkpoint"]).name == "epoch_002.ckpt"
    assert sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("epoch_*")) == ["epoch_002.ckpt"]


# one launch of the command line in make test; the other names, each another launch of ~10 s, in make test-slow
@pytest.mark.parametrize("override,expected,a_valid_name", [
    ("model=unet_resnet99", "Available options in 'model'", "unet_resnet34"),          # unknown model config
    pytest.param("model.net.encoder_name=resnet35", "unknown encoder 'resnet35'", "'resnet34'",  # unknown smp encoder
                 marks=pytest.mark.slow),
    pytest.param("model.net.arch=unett", "unknown segmentation architecture", "'unet'",          # unknown architecture
                 marks=pytest.mark.slow),
    pytest.param("model=cls_resnet50 model.net.name=resnet5000", "unknown timm model", "densenet121",  # unknown backbone
                 marks=pytest.mark.slow),
])
def test_unknown_names_are_errors_listing_the_valid_ones(tmp_path, override, expected, a_valid_name):
    result = run_module("plid.train", "debug=smoke", *override.split(), f"hydra.run.dir={tmp_path}/run",
                        *_common(tmp_path))
    assert result.returncode != 0 and expected in result.stderr and a_valid_name in result.stderr


def test_a_finished_run_is_refused_for_resuming_and_the_message_says_it_finished(tmp_path):
    from plid.errors import UserInputError
    from plid.training import resolve_checkpoint

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "summary.json").write_text("{}")
    for ckpt_path in ("last", None):  # resuming it, or training into it again
        with pytest.raises(UserInputError, match="holds a finished run") as error:
            resolve_checkpoint(ckpt_path, run)
        assert "interrupted" not in str(error.value)
    (run / "summary.json").unlink()  # an interrupted run (no summary yet) is still resumed
    assert resolve_checkpoint("last", run) == str(run / "checkpoints" / "last.ckpt")


def test_reports_are_strict_json_with_null_for_undefined_scores(tmp_path):
    import numpy as np

    from plid.utils.io import write_json

    path = write_json(tmp_path / "summary.json", {"test": {"auc": float("nan"), "f1": np.float32(0.5)},
                                                  "curve": [1.0, float("inf"), np.nan], "ok": np.bool_(True)})

    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"test": {"auc": None, "f1": 0.5},
                                                                  "curve": [1.0, None, None], "ok": True}


def _one_class_val_splits(compose, tmp_path):
    """A splits file of the synthetic disc data whose val patients have no herniated disc."""
    import hydra

    cfg = compose("debug=smoke", "model=cls_resnet50", "data.image_size=32")
    discs = hydra.utils.instantiate(cfg.data, _convert_="all").dataset.discs
    herniated = discs.groupby("patient")["disc_herniation"].max()
    negative = sorted(herniated[herniated == 0].index)[:4]
    path = tmp_path / "one_class_val.json"
    path.write_text(json.dumps({"test": [], "folds": [{"train": sorted(set(herniated.index) - set(negative)),
                                                       "val": negative}]}))
    return path


def test_a_validation_split_with_one_class_is_refused_before_training(compose, tmp_path):
    from plid.errors import UserInputError
    from plid.training import train

    splits = _one_class_val_splits(compose, tmp_path)
    cfg = compose("debug=smoke", "model=cls_resnet50", "data.image_size=32", f"data.splits_file={splits}")
    with pytest.raises(UserInputError, match=r"val split of fold 0 holds one class only: \d+ negative and 0 positive"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_summary_reports_dice_pooled_and_per_case_as_the_saved_predictions_give_them(compose):
    from pathlib import Path

    import numpy as np
    import torch

    from plid.ensemble.predictions import load_predictions
    from plid.labels import CLASS_NAMES
    from plid.metrics import case_segmentation_scores, confusions_per_case, predicted_classes
    from plid.training import train

    cfg = compose("debug=smoke", "trainer.limit_test_batches=1.0")
    train(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    saved = load_predictions(f"{cfg.paths.output_dir}/predictions/test.npz")
    probs = torch.from_numpy(saved.probs)
    confusions = confusions_per_case(predicted_classes(probs), torch.from_numpy(saved.targets), probs.shape[1])
    expected = case_segmentation_scores(confusions, CLASS_NAMES)
    for name in ("dice_pooled", "dice_per_case", "dice_per_case_disc", "dice_pooled_canal"):
        assert summary["test"][name] == pytest.approx(expected[name], abs=1e-6), name
    assert summary["test"]["dice"] == summary["test"]["dice_pooled"]  # the monitored key keeps its meaning
    assert "val/dice_per_case" in summary["val"] and np.isfinite(summary["test"]["dice_per_case"])
