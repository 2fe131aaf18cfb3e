"""Interrupted runs resume, outputs are never half-written or overwritten, seeded runs repeat."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import PROJECT_ROOT, run_module

from plid.utils.io import write_json


def _args(tmp_path, out):
    return ["debug=smoke", f"hydra.run.dir={out}", f"paths.data_dir={tmp_path}/data", "trainer.max_epochs=4",
            "trainer.limit_train_batches=6", "trainer.num_sanity_val_steps=0"]


@pytest.mark.slow
def test_killed_training_resumes_from_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "plid.train", *_args(tmp_path, out)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way through the second epoch
    proc.wait()
    assert last.exists() and not (out / "summary.json").exists()
    before = pd.read_csv(out / "csv" / "metrics.csv")

    refused = run_module("plid.train", *_args(tmp_path, out))
    assert refused.returncode != 0 and "ckpt_path=last" in refused.stderr

    resumed = run_module("plid.train", *_args(tmp_path, out), "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 4
    metrics = pd.read_csv(out / "csv" / "metrics.csv")
    # the rows logged before the kill stay, first; the resumed epochs are appended after them
    pd.testing.assert_frame_equal(metrics[before.columns].iloc[: len(before)], before, check_dtype=False)
    assert len(metrics) > len(before)
    assert set(metrics.dropna(subset=["val/dice"])["epoch"].astype(int)) >= {0, 1, 2, 3}
    assert set(metrics.dropna(subset=["train/loss"])["epoch"].astype(int)) >= {1, 2, 3}


def test_crash_during_write_leaves_previous_file_intact(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"version": 1})

    with pytest.raises(TypeError):
        write_json(path, {"version": 2, "bad": object()})  # json fails after the file was opened
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary left behind


@pytest.mark.slow
def test_two_seeded_runs_give_identical_metrics(compose, tmp_path):
    from plid.training import train

    results = []
    for attempt in range(2):
        cfg = compose("debug=smoke", "seed=7", f"paths.output_dir={tmp_path}/run{attempt}")
        metrics, _ = train(cfg)
        results.append({k: v for k, v in metrics.items() if k.startswith(("test/", "val/"))})
    assert results[0] == results[1] and "test/dice" in results[0]


def test_checkpoints_load_weights_only(compose):
    import torch

    from plid.training import train

    cfg = compose("debug=smoke")
    train(cfg)
    checkpoint = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)
    assert "state_dict" in checkpoint


@pytest.mark.slow
def test_a_finished_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"finished": true}')
    result = run_module("plid.train", *_args(tmp_path, out))
    assert result.returncode != 0 and "already holds another run's outputs" in result.stderr
    assert json.loads((out / "summary.json").read_text()) == {"finished": True}
    assert not (out / "checkpoints").exists()


def test_predict_refuses_a_folder_with_reports_unless_told(tmp_path):
    from plid.utils.io import claim_output_dir

    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="overwrite=true"):
        claim_output_dir(tmp_path, "report.json", overwrite=False)
    assert claim_output_dir(tmp_path, "report.json", overwrite=True) == tmp_path


def test_a_folder_written_atomically_keeps_the_previous_one_on_a_crash(tmp_path):
    from plid.utils.io import atomic_dir

    out = tmp_path / "dataset"
    with atomic_dir(out, "images.csv") as tmp:
        (tmp / "images.csv").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(out, "images.csv") as tmp:
        (tmp / "images.csv").write_text("v2, half")
        raise RuntimeError("crash mid-write")
    assert (out / "images.csv").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]  # no temporary folder left behind
