"""Glue between Hydra configs and Lightning objects."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, ListConfig, OmegaConf

from plid.errors import find_user_error
from plid.utils.locks import run_lock

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def project_root() -> Path:
    """The checkout plid runs from (the folder holding pyproject.toml beside plid/), or the working folder."""
    return PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "plid").is_dir() \
        else Path.cwd()

if not OmegaConf.has_resolver("project_root"):
    # where paths.root_dir (data/, logs/, ../shared) lies: PLID_ROOT, else the checkout plid runs from, else (an
    # installed wheel) the folder the command runs in
    OmegaConf.register_new_resolver("project_root", lambda: os.environ.get("PLID_ROOT", str(project_root())))


def run_group(*, _root_: DictConfig) -> str:
    """A run's task, for grouping runs on a dashboard: ``segmentation``, ``classification`` (the model's
    LightningModule, named ``<Task>Module``), or the task name where there is no model (``detect_lumbar``)."""
    target = OmegaConf.select(_root_, "model._target_", default=None)
    if target is None:
        return str(_root_.task_name)
    return target.rsplit(".", 1)[-1].removesuffix("Module").lower()


def run_tags(*items: Any) -> list[str]:
    """``${run_tags:${tags},a,b}``: the tags list with the other values appended; empty values are left out."""
    tags: list[str] = []
    for item in items:
        for tag in item if isinstance(item, list | ListConfig) else [item]:
            if tag not in (None, "") and str(tag) not in tags:
                tags.append(str(tag))
    return tags


def run_name(*parts: Any) -> str:
    """``${run_name:a,b}``: the non-empty parts joined by ``_`` (``unet_resnet34``, ``lumbar_yolov8n``)."""
    return "_".join(str(p) for p in parts if p not in (None, ""))


def first_given(*values: Any) -> Any:
    """``${first_given:${out},...}``: the first value that is not null or empty (predict's run folder is its ``out``)."""
    return next((v for v in values if v not in (None, "")), None)


for _name, _resolver in {"run_group": run_group, "run_tags": run_tags, "run_name": run_name,
                         "first_given": first_given}.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def instantiate_callbacks(cfg: DictConfig | None) -> list[Callback]:
    """Callbacks for every entry that has a ``_target_`` (so ``callbacks.x=null`` drops one)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """Loggers for every entry that has a ``_target_`` (so ``logger=null`` gives none)."""
    return [hydra.utils.instantiate(c) for c in (cfg or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def config_choices() -> dict[str, str]:
    """The option picked in each config group (``model`` -> ``unet_resnet34``), where Hydra runs the job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items() if v is not None and not k.startswith("hydra")}


def config_to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point's ``task(cfg)`` holding its run folder's lock (``paths.output_dir``): print the config
    where ``extras.print_config`` asks, and end the process with one clear line (no trace) when the cause is bad
    user input (:class:`UserInputError`)."""
    if cfg.get("extras", {}).get("print_config"):
        log.info("Config:\n%s", OmegaConf.to_yaml(cfg))
    output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    try:
        # one run per folder: a second run into a held one is refused (plid.utils.locks)
        with run_lock(output_dir) if output_dir else contextlib.nullcontext():
            return task(cfg)
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None:
            raise
        log.error("%s", user_error)
        sys.exit(f"error: {user_error}")


def run_optimized_task(task: Callable[[DictConfig], tuple[dict[str, Any], Any]], cfg: DictConfig) -> float | None:
    """:func:`run_task` for a training entry point's ``task(cfg) -> (metrics, objects)``: the value of
    ``cfg.optimized_metric`` in its metrics as a float, for a sweeper to optimise (None where none is named)."""
    metrics, _ = run_task(task, cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        raise KeyError(f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}")
    return float(metrics[name])
