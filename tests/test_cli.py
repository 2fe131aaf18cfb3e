"""The commands as people type them: fast --help with each command's own options, one line for a missing option,
nnU-Net's -i/-o, print_config obeyed, predict's run folder its out= (nothing written into the checkout)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plid.cli import translated
from plid.utils.hydra import PROJECT_ROOT
from plid.utils.options import ENTRY_POINTS, compose
from tests.conftest import run_module


def test_predict_help_lists_its_own_options_without_importing_torch():
    code = ("import sys; sys.argv = ['plid-predict', '--help']\nimport plid.cli\ntry:\n    plid.cli.predict()\n"
            "except SystemExit as done:\n    assert done.code == 0\nprint('torch imported:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "model_dir=???" in result.stdout and "slices=1" in result.stdout and "neighbouring slices" in result.stdout
    assert "trainer" not in result.stdout  # predict's options, not the training config's
    assert result.stdout.strip().endswith("torch imported: False")


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda e: e.module)
def test_python_m_help_answers_for_every_command(entry):
    result = run_module(entry.module, "--help", timeout=120)
    assert result.returncode == 0 and "options (key=value):" in result.stdout, result.stderr[-2000:]


def test_a_missing_model_dir_is_one_line_and_out_is_the_run_folder(tmp_path):
    logs = PROJECT_ROOT / "logs" / "predict" / "runs"
    before = set(logs.iterdir()) if logs.is_dir() else set()
    (tmp_path / "scans").mkdir()
    result = run_module("plid.predict", "-i", str(tmp_path / "scans"), "-o", str(tmp_path / "reports"), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == "error: model_dir is required: give model_dir=... (--help lists every option)"
    assert "Traceback" not in result.stderr and "Config:" not in result.stdout + result.stderr  # print_config: false
    assert (tmp_path / "reports" / ".hydra").is_dir()  # the run's folder is out=
    assert (set(logs.iterdir()) if logs.is_dir() else set()) == before  # nothing new in the checkout's logs/


def test_short_flags_become_overrides():
    assert translated("predict", ["-i", "scans", "-o", "reports", "slices=3"]) == ["input='scans'", "out='reports'",
                                                                                  "slices=3"]
    # quoted, so that a comma or a quote in a path is no Hydra syntax (a comma would start a sweep)
    assert translated("predict", ["-i", "a,b's"]) == ["input='a,b\\'s'"]
    assert translated("train", ["-m", "model=unet_resnet34"]) == ["-m", "model=unet_resnet34"]  # Hydra's multirun
    with pytest.raises(SystemExit, match="-o needs a value"):
        translated("predict", ["-o"])


@pytest.mark.parametrize("config", ["predict", "export", "study"])
def test_quiet_commands_do_not_print_their_config_unless_asked(config):
    assert compose(config).extras.print_config is False
    assert compose(config, ["extras.print_config=true"]).extras.print_config is True
