"""device=auto|cpu|cuda[:N]: CUDA where there is one, the CPU otherwise, the same reports on both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plid.errors import UserInputError
from plid.inference.model_dir import LoadedModule
from plid.inference.pipeline import Pipeline
from plid.utils.devices import resolve_device, ultralytics_device
from tests.test_pipeline import _MeanIntensity, _models, _truth_cropper, case  # noqa: F401 - case is a fixture


def test_auto_falls_back_to_the_cpu_and_a_missing_cuda_device_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    assert ultralytics_device(resolve_device("cpu")) == "cpu"
    with pytest.raises(UserInputError, match="device=cuda:1: no CUDA device on this machine"):
        resolve_device("cuda:1")
    with pytest.raises(UserInputError, match=r"device='tpu' is not one of auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


def test_the_cuda_device_index_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda", 0)
    assert ultralytics_device(torch.device("cuda", 0)) == "0"
    with pytest.raises(UserInputError, match="has 1 CUDA device"):
        resolve_device("cuda:3")


def _reports(compose, case, *devices):  # noqa: F811
    """One model_dir's report of one image on each device (the same random segmenter for all)."""
    from plid.data.scans import Scan

    models = _models(compose, [LoadedModule("a", _MeanIntensity(1.0), 32, 0.1)], [1.0])
    scan = Scan("case", Path("case.png"), case.image, 0.5, "image")
    return [Pipeline(models, cropper=_truth_cropper(case), levels="count", device=device)(scan) for device in devices]


def test_device_auto_gives_the_cpu_report_here(compose, case):  # noqa: F811
    auto, cpu = _reports(compose, case, "auto", "cpu")
    assert auto.report == cpu.report and (auto.mask == cpu.mask).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_gives_the_cpu_figures_within_floating_point_tolerance(compose, case):  # noqa: F811
    gpu, cpu = _reports(compose, case, "cuda", "cpu")
    assert (gpu.mask != cpu.mask).mean() < 0.001
    for a, b in zip(gpu.report["discs"], cpu.report["discs"]):
        assert a["box"] == b["box"] and a["level"] == b["level"]
        for name, decision in a["gradings"].items():
            assert decision["probability"] == pytest.approx(b["gradings"][name]["probability"], abs=1e-3)
