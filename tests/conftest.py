"""Shared fixtures: offline environment, composed configs, the real data folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# fail fast instead of hanging on any stray network call
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("YOLO_OFFLINE", "1")

from plid import CONF_DIR
from plid.utils.hydra import PROJECT_ROOT  # noqa: E402  (registers the config resolvers)

SPIDER2D = PROJECT_ROOT.parent / "shared" / "data" / "spider2d"
requires_spider2d = pytest.mark.skipif(
    not (SPIDER2D / "images.csv").is_file(),
    reason=f"real data not found at {SPIDER2D} (the shared folder beside the checkout)",
)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One generated-data folder for the whole session, so the synthetic set is made once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose(tmp_path, data_dir):
    """Compose ``plid/conf/train.yaml`` with overrides, outputs in ``tmp_path``, as Hydra would for a run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(*overrides: str, config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, return_hydra_config=True, overrides=[
                f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}/logs", f"paths.output_dir={tmp_path}/run",
                *overrides,
            ])
            HydraConfig().set_config(cfg)
            with open_dict(cfg):
                del cfg.hydra
            return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt (or name lookup) raises and is recorded, so a test can assert there was none."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError(f"network blocked in tests: {args!r}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def run_module(module: str, *args: str, cwd: Path = PROJECT_ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` as a user would, capturing its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def resign_manifest(folder: Path) -> None:
    """A model_dir's manifest checksums made to match files a test changed (as a hostile sender would, too)."""
    import hashlib
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"] = {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
                          for f in sorted(folder.rglob("*")) if f.is_file() and f.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
