"""The training entry point, end to end, as a user runs it."""

import json

from conftest import run_module


def _common(tmp_path):
    return [f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs"]


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


def test_image_size_the_architecture_cannot_take_is_caught_before_training(tmp_path):
    result = run_module("plid.train", "debug=smoke", "model=fpn_resnet34", "data.image_size=72",
                        f"hydra.run.dir={tmp_path}/run", *_common(tmp_path))
    assert result.returncode != 0
    assert "multiple of 32" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_multirun_writes_one_dir_per_model(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_module("plid.train", "-m", "debug=smoke", "model=unet_resnet34,linknet_resnet34",
                        f"hydra.sweep.dir={sweep}", *_common(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(sweep.glob("*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0_unet_resnet34", "1_linknet_resnet34"]
    models = [json.loads(p.read_text())["choices"]["model"] for p in summaries]
    assert models == ["unet_resnet34", "linknet_resnet34"]
