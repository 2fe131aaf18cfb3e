"""A model_dir from a stranger runs no code: every way a hostile sender could make plid run theirs is refused before
any model is built, naming the file, and the payload (it would write a file) never runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from plid.errors import UserInputError
from plid.inference.model_dir import export_model_dir, load_model_dir
from tests.conftest import resign_manifest
from tests.test_pipeline import _fake_train_run, detector_runs  # noqa: F401 - detector_runs is a fixture

MARKER_NAME = "payload_ran"


def write_marker(path: str) -> None:
    """The payload: what a hostile model_dir would run. Never called by these tests' plid."""
    Path(path).write_text("ran")


class _Payload:
    """A pickle whose loading calls :func:`write_marker`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (write_marker, (self.path,))


@pytest.fixture
def model_dir(tmp_path, compose, detector_runs) -> Path:  # noqa: F811 - the fixture imported above
    """A model_dir (segmenter and classifier untrained) for each test to tamper with."""
    seg = _fake_train_run(compose, tmp_path / "seg", "unet_resnet34", "model.net.encoder_name=resnet18")
    cls = _fake_train_run(compose, tmp_path / "cls", "cls_resnet50", "model.net.name=test_resnet")
    return export_model_dir(tmp_path / "model_dir", detector_runs["lumbar"], detector_runs["ivd"], seg, [cls])


def _refused(folder: Path, tmp_path: Path, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        load_model_dir(folder)
    assert not (tmp_path / MARKER_NAME).exists(), "the payload ran"


def test_the_exported_model_dir_loads_with_its_networks_as_plain_data(model_dir):
    exported = model_dir
    spec = json.loads((exported / "segmenter" / "model.json").read_text())
    assert spec["kind"] == "segmenter" and spec["net"]["arch"] == "unet" and "_target_" not in json.dumps(spec)
    loaded = load_model_dir(exported)
    state = torch.load(exported / "segmenter" / "model.ckpt", weights_only=True)["state_dict"]
    for key, value in loaded.segmenter.net.state_dict().items():
        torch.testing.assert_close(value, state[key])
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["sha256"]) >= {"detector_lumbar.pt", "segmenter/model.json", "segmenter/model.ckpt"}


@pytest.mark.parametrize("where", ["model", "model.net", "model.loss", "model.optimizer"])
def test_a_config_naming_a_target_of_its_own_is_refused_and_nothing_of_it_runs(model_dir, tmp_path, where):
    """A model_dir of an older plid (no model.json) is read from its config.yaml as data: a _target_ plid does not
    write, at any depth, is refused."""
    (model_dir / "segmenter" / "model.json").unlink()
    config = OmegaConf.load(model_dir / "segmenter" / "config.yaml")
    node = OmegaConf.select(config, where)
    node["_target_"] = f"{__name__}.write_marker"
    node["path"] = str(tmp_path / MARKER_NAME)
    OmegaConf.save(config, model_dir / "segmenter" / "config.yaml")
    resign_manifest(model_dir)
    _refused(model_dir, tmp_path, rf"segmenter/config.yaml: key {where}\._target_")


def test_a_config_is_provenance_only_where_the_model_json_describes_the_network(model_dir, tmp_path):
    config = OmegaConf.load(model_dir / "segmenter" / "config.yaml")
    config.model._target_ = f"{__name__}.write_marker"
    config.model.path = str(tmp_path / MARKER_NAME)
    OmegaConf.save(config, model_dir / "segmenter" / "config.yaml")
    resign_manifest(model_dir)
    load_model_dir(model_dir)  # the network comes from model.json; the config is never instantiated
    assert not (tmp_path / MARKER_NAME).exists()


@pytest.mark.parametrize(("change", "match"), [
    (lambda spec: spec["net"].update(_target_="os.system"), r"model.json: .*key net"),
    (lambda spec: spec.update(kind="anything"), r"model.json: .*key kind"),
    (lambda spec: spec["net"].update(arch="../../payload"), r"model.json: .*key net"),
    (lambda spec: spec["net"].update(encoder_name="resnet18; import os"), r"model.json: .*key net"),
])
def test_a_model_json_with_an_unknown_kind_architecture_or_key_is_refused(model_dir, tmp_path, change, match):
    path = model_dir / "segmenter" / "model.json"
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))
    resign_manifest(model_dir)
    _refused(model_dir, tmp_path, match)


def test_a_detector_whose_architecture_names_another_module_is_refused(model_dir, tmp_path):
    path = model_dir / "detector_ivd.pt"
    blob = torch.load(path, weights_only=True)
    blob["yaml"]["head"][-1][2] = "builtins.exec"  # the Detect layer swapped for a callable of the sender's choice
    torch.save(blob, path)
    resign_manifest(model_dir)
    _refused(model_dir, tmp_path, r"detector_ivd.pt: its architecture differs from ultralytics' yolov8n.yaml")


def test_a_weights_file_that_is_a_pickle_is_refused_without_running_it(model_dir, tmp_path):
    path = model_dir / "classifiers" / "cls_resnet50" / "model.ckpt"
    torch.save({"state_dict": _Payload(tmp_path / MARKER_NAME)}, path)  # a torch file whose full unpickle runs it
    resign_manifest(model_dir)
    _refused(model_dir, tmp_path, r"cls_resnet50/model.ckpt: not a weights-only file")


def test_a_file_changed_after_the_export_is_refused_by_its_checksum(model_dir, tmp_path):
    path = model_dir / "segmenter" / "model.ckpt"
    state = torch.load(path, weights_only=True)
    first = next(iter(state["state_dict"]))
    state["state_dict"][first] = state["state_dict"][first] + 1  # still weights only, but not the exported ones
    torch.save(state, path)
    _refused(model_dir, tmp_path, r"segmenter/model.ckpt: its sha256 differs")
    (model_dir / "extra.pt").write_bytes(b"")
    resign_manifest(model_dir)
    (model_dir / "unlisted.ckpt").write_bytes(b"")
    _refused(model_dir, tmp_path, r"unlisted.ckpt: not listed")


def test_manifest_paths_outside_the_model_dir_and_bad_json_are_refused(model_dir, tmp_path):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["segmenter"]["dir"] = "../elsewhere"
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    _refused(model_dir, tmp_path, r"manifest.json: key segmenter.dir points outside the model_dir")
    (model_dir / "manifest.json").write_text("{not json")
    _refused(model_dir, tmp_path, r"manifest.json: not valid JSON")


def test_export_reads_a_detector_run_weights_only_and_unpickles_best_pt_only_when_trusted(detector_runs, tmp_path):  # noqa: F811
    from plid.inference.model_dir import export_detector
    from plid.models.detection import WEIGHTS_ONLY_FILE

    run = Path(shutil.copytree(detector_runs["lumbar"], tmp_path / "lumbar"))
    (run / WEIGHTS_ONLY_FILE).unlink()  # a run of an older plid: its ultralytics best.pt only
    with pytest.raises(UserInputError, match="trust_run=true"):
        export_detector(run, tmp_path / "out.pt")
    entry = export_detector(run, tmp_path / "out.pt", trust_run=True)
    assert entry["source"].endswith("best.pt")
    torch.load(tmp_path / "out.pt", weights_only=True)


def test_a_damaged_value_is_refused_by_its_key_even_with_matching_checksums(model_dir, tmp_path):
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["classifiers"]["cls_resnet50"]["threshold"] = 7.0
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    _refused(model_dir, tmp_path, r"manifest.json: classifiers.cls_resnet50.threshold = 7.0 is not a finite number")


def test_export_overwrite_replaces_a_model_dir_but_refuses_a_folder_of_the_users(model_dir, tmp_path, compose,
                                                                                detector_runs):  # noqa: F811
    seg = _fake_train_run(compose, tmp_path / "seg2", "unet_resnet34", "model.net.encoder_name=resnet18")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match=r"holds files plid did not write there \(no manifest.json; found notes.txt\)"):
        export_model_dir(mine, detector_runs["lumbar"], detector_runs["ivd"], seg, overwrite=True)
    assert (mine / "notes.txt").read_text() == "mine"
    (model_dir / "stale.txt").write_text("of the earlier export")
    out = export_model_dir(model_dir, detector_runs["lumbar"], detector_runs["ivd"], seg, overwrite=True)
    assert not (out / "stale.txt").exists() and load_model_dir(out).classifiers == []


def test_a_model_dir_zip_or_its_url_loads_and_a_tampered_zip_is_refused_by_the_file(model_dir, tmp_path, monkeypatch):
    import zipfile

    from plid.inference.packages import pack_model_dir

    monkeypatch.setenv("PLID_CACHE", str(tmp_path / "cache"))
    archive = pack_model_dir(model_dir, tmp_path / "shared.zip")
    loaded = load_model_dir(archive)
    assert loaded.root.is_relative_to(tmp_path / "cache") and [c.name for c in loaded.classifiers] == ["cls_resnet50"]
    assert load_model_dir(archive.resolve().as_uri()).root == loaded.root  # a file:// URL, downloaded once
    with pytest.raises(UserInputError, match="its sha256 is not the 00ff"):
        load_model_dir(archive.resolve().as_uri() + "#sha256=00ff")
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tampered, "w") as target:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "segmenter/model.json":
                data = data.replace(b'"unet"', b'"fpn"')
            target.writestr(member, data)
    with pytest.raises(UserInputError, match=r"segmenter/model.json: its sha256 differs"):
        load_model_dir(tampered)
    escaping = tmp_path / "escaping.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(escaping, "w") as target:
        for member in source.infolist():
            target.writestr(member, source.read(member))
        target.writestr("../outside.txt", "written where it should not be")
    with pytest.raises(UserInputError, match=r"member '../outside.txt' would be written outside"):
        load_model_dir(escaping)
    assert not list(tmp_path.rglob("outside.txt"))
