"""python -m plid.study (what make run calls), at smoke sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_module


@pytest.mark.slow
def test_study_smoke_runs_every_step_and_ends_with_the_report(tmp_path, data_dir):
    out = tmp_path / "study"
    result = run_module("plid.study", "debug=smoke", "evaluate=[test]", f"hydra.run.dir={out}",
                        f"paths.data_dir={data_dir}", timeout=1500)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith("report.html") and Path(last.split(": ", 1)[1]).is_file()
    study = json.loads((out / "study.json").read_text())
    steps = [s["step"] for s in study["steps"]]
    assert steps[:2] == ["detect_lumbar", "detect_ivd"]
    assert steps[-4:] == ["train_segmenter", "export", "predict", "evaluate_test"]
    assert all(s["returncode"] == 0 for s in study["steps"])
    # the disc detector starts from the lumbar detector's weights
    lumbar_weights = json.loads((out / "detect_lumbar" / "summary.json").read_text())["weights"]
    assert f"detector.weights={lumbar_weights}" in study["steps"][1]["command"]
    report = json.loads((out / "predict" / "report.json").read_text())
    assert {c["format"] for c in report["cases"]} == {"image", "dicom", "volume"} and not report["errors"]
    assert (out / "model_dir" / "manifest.json").is_file()
    # the model_dir scored end to end on the test split, where study.json says
    assert Path(study["evaluations"]["test"]).is_file() and (out / "evaluate_test" / "evaluation.json").is_file()
