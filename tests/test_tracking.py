"""Experiment tracking, sweeps, the paper's experiments as configs, the SLURM launcher and the notebook."""

from __future__ import annotations

import json

import pytest
from conftest import run_module

from plid import CONF_DIR
from plid.utils.hydra import PROJECT_ROOT

CONF = CONF_DIR
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SEGMENTERS = sorted(p.stem for p in (CONF / "model").glob("*.yaml")
                    if not p.stem.startswith(("_", "cls_", "grade_")))


STUDIES = [e for e in EXPERIMENTS if e.startswith("spider2d_")]


def _root_config(experiment: str) -> str:
    """Detection experiments belong to plid.detect (plid/conf/detect.yaml), the real-data studies (spider2d_*) to
    plid.study (plid/conf/study.yaml), the others to plid.train."""
    if experiment in STUDIES:
        return "study"
    return "detect" if "_det" in experiment else "train"


def _sweep(value: str) -> list[str]:
    """The options of a sweep override value such as ``a,b, c``, as Hydra parses it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = OverridesParser.create().parse_override(f"x={value}")
    return [str(v) for v in override.sweep_iterator()]


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e not in STUDIES])
def test_every_experiment_composes(experiment, compose):
    cfg = compose(f"experiment={experiment}", config_name=_root_config(experiment))
    assert "paper" in cfg.tags
    smoke = compose(f"experiment={experiment}", "debug=smoke", config_name=_root_config(experiment))
    assert smoke.data.image_size == 64  # debug=smoke still wins over the experiment


def test_real_data_study_presets_compose_for_the_cpu_and_the_gpu(compose):
    cpu = compose("experiment=spider2d_cpu", config_name="study")
    assert cpu.data.root.endswith("data/spider2d") and list(cpu.evaluate) == ["val", "test"]
    assert cpu.get("device", "cpu") == "cpu"
    gpu = compose("experiment=spider2d_gpu", config_name="study")
    assert gpu.device == "gpu" and gpu.data.root == cpu.data.root and list(gpu.evaluate) == ["val", "test"]
    assert gpu.detector.epochs.lumbar == gpu.detector.epochs.ivd == 100 and gpu.detector.image_size == 416
    # levels named by a level-class disc detector's vote, chosen on val (README, Levels); 50 epochs on CPUs
    for preset in (cpu, gpu):
        assert (preset.detector.disc_classes, preset.levels) == ("level", "detector")
    assert cpu.detector.epochs.ivd == 50
    # both get past the study's own checks, which run before any step (two models with folds did not)
    from plid.study import check_config

    assert check_config(cpu) == (["grade_resnet50"], [0, 1, 2])
    num_folds = compose("data=spider2d_cls", config_name="train").data.num_folds
    assert check_config(gpu) == (["grade_resnet50"], list(range(num_folds)))  # every non-test patient pooled
    assert compose(config_name="study").evaluate == []  # make run: no evaluation unless asked


def test_paper_segmentation_sweeps_all_17_segmenters(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=["experiment=paper_seg"], return_hydra_config=True)
    models = _sweep(cfg.hydra.sweeper.params.model)
    assert len(models) == 17 and sorted(models) == SEGMENTERS


def test_paper_classification_sweeps_the_six_backbones_in_both_modes(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    backbones = sorted(p.stem for p in (CONF / "model").glob("cls_*.yaml"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for experiment, mode in [("paper_cls_fine_tune", "fine_tune"),
                                 ("paper_cls_feature_extraction", "feature_extraction")]:
            cfg = hydra_compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
            assert sorted(_sweep(cfg.hydra.sweeper.params.model)) == backbones and len(backbones) == 6
            assert cfg.model.mode == mode


def test_ablations_change_only_their_one_setting(compose):
    paper = compose("experiment=paper_seg")
    no_roi = compose("experiment=ablation_seg_no_roi")
    no_loss = compose("experiment=ablation_seg_no_custom_loss")
    assert (paper.data.roi, no_roi.data.roi) == ("gt", "none")
    assert paper.model.loss.focal_weight > 0 and no_loss.model.loss.focal_weight == 0
    assert no_roi.model == paper.model and no_loss.data == paper.data


def test_paper_detection_runs_both_stages():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="detect", overrides=["experiment=paper_det"], return_hydra_config=True)
    assert _sweep(cfg.hydra.sweeper.params.stage) == ["lumbar", "ivd"]
    assert cfg.detector.lr0 == 0.02 and cfg.data.batch_size == 8


@pytest.mark.parametrize("search", ["seg_optuna", "cls_optuna"])
def test_optuna_searches_compose(search, compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    model = ["model=cls_resnet50"] if search == "cls_optuna" else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[f"hparams_search={search}", *model],
                            return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    params = set(cfg.hydra.sweeper.params)
    assert {"model.optimizer.lr", "data.batch_size", "data.augmentation.p"} <= params
    assert cfg.optimized_metric == f"{cfg.model.monitor}_best"


@pytest.mark.slow
def test_a_two_trial_optuna_sweep_keeps_its_study_in_sqlite_and_a_second_run_continues_it(tmp_path, data_dir):
    """The README's storage=sqlite:///... works with the SQLAlchemy the sweeps extra installs (optuna<3 cannot create
    an sqlite study with SQLAlchemy 2)."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    for run in (1, 2):
        result = run_module("plid.train", "hparams_search=seg_optuna", "debug=smoke", "hydra.sweeper.n_trials=2",
                            "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweeper.storage={storage}",
                            f"hydra.sweep.dir={tmp_path / f'sweep{run}'}", f"paths.data_dir={data_dir}", timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        trials = optuna.load_study(study_name="plid_seg", storage=storage).trials
        assert [t.state.name for t in trials] == ["COMPLETE"] * (2 * run)
    assert (tmp_path / "sweep2" / "optimization_results.yaml").is_file()


def test_slurm_launcher_composes_and_follows_the_trainer():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="train", return_hydra_config=True, overrides=[
            "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg, resolve=False)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.tasks_per_node) == (2, 4, 4)


def test_wandb_logger_groups_by_task_and_tags_the_model(compose):
    cfg = compose("logger=many", "model=fpn_resnet34")
    assert {"csv", "tensorboard", "wandb"} <= set(cfg.logger)
    wandb = cfg.logger.wandb
    assert wandb.offline is True and wandb.group == "segmentation" and wandb.name == "fpn_resnet34"
    assert {"fpn_resnet34", "synthetic_seg", "dev"} <= set(wandb.tags)


def test_wandb_logger_of_a_detection_run_names_stage_and_detector(compose):
    cfg = compose("logger=wandb", "stage=ivd", config_name="detect")
    assert cfg.logger.wandb.group == "detect_ivd" and cfg.logger.wandb.name == "ivd_yolov8n"


@pytest.mark.slow
def test_multirun_of_two_models_logs_each_job_to_csv_tensorboard_and_offline_wandb(tmp_path, monkeypatch):
    """A segmenter and a classifier in one multirun: two run folders, each with its CSV, TensorBoard and W&B
    (offline) files and its media: overlays for the segmenter, ROC curve and confusion matrix for the classifier."""
    # W&B offline, its files under tmp_path, and a server address nothing listens on: a network call would fail
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    sweep = tmp_path / "sweep"
    models = ["unet_resnet34", "cls_resnet50"]
    result = run_module(
        "plid.train", "-m", "debug=smoke", "logger=many", f"model={','.join(models)}",
        "callbacks.segmentation_overlays={_target_:plid.callbacks.SegmentationOverlays,num_images:2}",
        f"hydra.sweep.dir={sweep}", f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "summary.json").is_file())
    assert [j.name for j in jobs] == [f"{i}_{m}" for i, m in enumerate(models)]
    run_ids = set()
    for job, model in zip(jobs, models):
        assert "test/" in (job / "csv" / "metrics.csv").read_text().splitlines()[0]
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs  # one W&B run per job
        assert list(runs[0].glob("run-*.wandb"))
        run_ids.add(runs[0].name.rsplit("-", 1)[1])
        media = {p.name.split("_")[0] for p in (runs[0] / "files" / "media" / "images").rglob("*.png")}
        if model.startswith("cls_"):
            assert {"roc", "confusion"} <= media, media
        else:
            assert "overlays" in media and (job / "overlays" / "test.png").is_file()
    assert len(run_ids) == 2


@pytest.mark.slow
def test_optuna_search_runs_two_trials_and_records_the_best_value(tmp_path):
    import yaml

    sweep = tmp_path / "optuna"
    result = run_module(
        "plid.train", "hparams_search=seg_optuna", "debug=smoke", "model.net.encoder_name=resnet18",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}",
        f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    assert result.returncode == 0, result.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = sorted(sweep.glob("*/summary.json"))
    assert len(trials) == 2
    values = [json.loads(p.read_text())["val"]["val/dice_best"] for p in trials]
    assert results["best_value"] == pytest.approx(max(values))
    assert {"model.optimizer.lr", "model.loss.focal_weight", "data.batch_size", "data.augmentation.p"} == set(
        results["best_params"])
    overrides = [yaml.safe_load((p.parent / ".hydra" / "overrides.yaml").read_text()) for p in trials]
    assert overrides[0] != overrides[1]  # the trials drew different hyperparameters


@pytest.mark.slow
def test_compare_backbones_notebook_runs_headless_on_a_multirun(tmp_path, monkeypatch):
    import nbformat
    import pandas as pd
    from nbclient import NotebookClient

    sweep = tmp_path / "sweep"
    result = run_module("plid.train", "-m", "debug=smoke", "model=unet_resnet34,fpn_resnet34",
                        "model.net.encoder_name=resnet18", f"hydra.sweep.dir={sweep}",
                        f"paths.data_dir={tmp_path}/data", f"paths.log_dir={tmp_path}/logs")
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.setenv("PLID_MULTIRUN", str(sweep))
    notebook = nbformat.read(PROJECT_ROOT / "notebooks" / "compare_backbones.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    table = pd.read_csv(sweep / "comparison.csv", index_col="model")
    assert sorted(table.index) == ["fpn_resnet34", "unet_resnet34"]
    assert table["test/dice"].between(0, 1).all()
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the bar charts and the learning curves
