"""plid as a tool people install: a built wheel runs every entry point from any folder, configs included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from plid.utils.hydra import PROJECT_ROOT


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_a_built_wheel_runs_its_console_scripts_and_a_smoke_study_outside_the_checkout(tmp_path, data_dir):
    before = _git_status()
    # built from a copy of the tracked files: setuptools writes build/ beside the sources
    source = tmp_path / "source"
    for name in subprocess.run(["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.split():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(dist), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("plid-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"plid/conf/predict.yaml", "plid/conf/model/unet_resnet34.yaml", "plid/schemas/report.schema.json"} <= set(names)
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the wheel's plid, not the checkout's (PYTHONPATH comes before the editable install)
    env = {**os.environ, "PYTHONPATH": str(site), "YOLO_OFFLINE": "1", "WANDB_MODE": "disabled"}

    def run(*command, timeout=600):
        return subprocess.run([sys.executable, *command], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=timeout)

    where = run("-c", "import plid; print(plid.__file__)")
    assert where.stdout.strip() == str(site / "plid" / "__init__.py")
    helped = run(str(site / "bin" / "plid-predict"), "--help")
    assert helped.returncode == 0 and "model_dir" in helped.stdout, helped.stderr[-2000:]
    study = run("-m", "plid.study", "debug=smoke", f"hydra.run.dir={tmp_path / 'study'}", f"paths.data_dir={data_dir}",
                timeout=1500)
    assert study.returncode == 0, study.stdout[-2000:] + study.stderr[-2000:]
    assert (tmp_path / "study" / "predict" / "report.json").is_file()
    assert _git_status() == before  # nothing written into the checkout
    assert not (elsewhere / "data").exists()  # the study's generated data stay under its run folder
