"""Nothing lost, nothing silently wrong: bit depth, overwrites, one bad input in a batch, whole output folders,
locked run folders, labels checked before they are scored, a damaged model_dir refused by the key at fault."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from plid.data.dicom import collect, discover
from plid.data.sagittal import scale_to_uint8
from plid.data.scans import MAX_IMAGE_SIDE, ScanReadError, read_case, read_scan
from plid.datamodules.contract import find_problems, load_dataset
from plid.datamodules.synthetic import SyntheticSpec, write_dataset
from plid.errors import UserInputError
from plid.inference.batch import predict_files
from plid.inference.model_dir import check_ensemble_values, check_manifest_values
from plid.inference.pipeline import ImageResult
from plid.inference.render import write_html
from plid.utils.io import atomic_dir, atomic_write
from plid.utils.locks import LOCK_FILE, run_lock
from tests.conftest import SPIDER2D, requires_spider2d, run_module


def _real_or_synthetic_slice(tmp_path: Path) -> np.ndarray:
    if (SPIDER2D / "images.csv").is_file():
        name = pd.read_csv(SPIDER2D / "images.csv")["image"].iloc[0]
        return cv2.imread(str(SPIDER2D / "images" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    root = write_dataset(tmp_path / "syn", SyntheticSpec(num_patients=1, image_size=128))
    return cv2.imread(str(next((root / "images").glob("*.png"))), cv2.IMREAD_GRAYSCALE)


# --- images at their bit depth ------------------------------------------------------------------------------------

def test_a_16_bit_png_reads_as_the_slice_it_holds_not_its_top_bits(tmp_path):
    image = _real_or_synthetic_slice(tmp_path)
    twelve_bit = image.astype(np.uint16) * 16 + (np.arange(image.size).reshape(image.shape) % 16).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), twelve_bit)
    assert cv2.imread(str(tmp_path / "deep.png"), cv2.IMREAD_GRAYSCALE).max() < 16  # what the default read gave
    scan = read_scan(tmp_path / "deep.png")
    assert scan.image.dtype == np.uint8 and scan.image.shape == image.shape
    expected = scale_to_uint8(twelve_bit)  # windowed as volumes are
    np.testing.assert_array_equal(scan.image, expected)
    # the same anatomy as the 8-bit slice, up to the window
    assert np.corrcoef(scan.image.ravel().astype(float), scale_to_uint8(image).ravel().astype(float))[0, 1] > 0.99
    case = read_case(collect([tmp_path / "deep.png"]).cases[0])
    assert any("uint16 image: windowed" in w for w in case.source.warnings)


def test_an_image_with_few_grey_levels_is_warned_about_and_a_huge_one_downscaled(tmp_path):
    flat = (np.arange(64 * 64).reshape(64, 64) % 10 * 25).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "flat.png"), flat)
    case = read_case(collect([tmp_path / "flat.png"]).cases[0])
    assert any("only 10 grey levels" in w for w in case.source.warnings)
    wide = np.random.default_rng(0).integers(0, 256, (100, MAX_IMAGE_SIDE + 952), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    case = read_case(collect([tmp_path / "wide.png"]).cases[0])
    assert max(case.image.shape) == MAX_IMAGE_SIDE and any("downscaled" in w for w in case.source.warnings)


def test_a_symlinked_series_folder_is_followed_and_a_loop_walked_once(tmp_path):
    real = tmp_path / "archive" / "series1"
    real.mkdir(parents=True)
    cv2.imwrite(str(real / "slice.png"), np.zeros((32, 32), np.uint8))
    study = tmp_path / "study"
    study.mkdir()
    (study / "series1").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(study, target_is_directory=True)
    found = discover(study)
    assert [c.path.name for c in found.cases] == ["slice.png"]


# --- overwrite replaces only plid's folders, and never loses both copies ------------------------------------------

def test_overwrite_refuses_a_folder_plid_did_not_write_and_its_files_survive(tmp_path):
    users = tmp_path / "mine"
    (users / "sub").mkdir(parents=True)
    (users / "thesis.docx").write_text("years of work")
    with pytest.raises(UserInputError, match=r"no manifest.json; found sub/, thesis.docx"):
        with atomic_dir(users, "manifest.json") as tmp:
            (tmp / "manifest.json").write_text("{}")
    assert (users / "thesis.docx").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left behind


def test_a_folder_plid_wrote_is_replaced_whole_and_an_interrupt_leaves_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "model_dir"
    with atomic_dir(out, "manifest.json") as tmp:
        (tmp / "manifest.json").write_text("old")
        (tmp / "stale.pt").write_text("old")
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700
    with atomic_dir(out, "manifest.json") as tmp:
        (tmp / "manifest.json").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] and (out / "manifest.json").read_text() == "new"
    real_replace = os.replace

    def interrupted(src, dst):  # the renaming of the new folder in is interrupted
        if Path(dst) == out and ".old." not in str(src):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, "manifest.json") as tmp:
            (tmp / "manifest.json").write_text("newer")
    assert (out / "manifest.json").read_text() == "new"  # the previous copy, whole


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_written_atomically_get_the_usual_mode(tmp_path):
    with atomic_write(tmp_path / "report.json") as handle:
        handle.write("{}")
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o666 & ~_umask()


# --- one bad input does not stop a batch; outputs are written whole ---------------------------------------------

class _NoRegionPipeline:
    """What predict_cases needs of a pipeline: a report per image (no lumbar region), failing on a named image."""

    def __init__(self, fail_on: str | None = None, error: type[BaseException] = RuntimeError):
        self.models = type("Models", (), {"root": Path("models")})()
        self.levels = "anchor"
        self.fail_on, self.error = fail_on, error

    def __call__(self, scan):
        if scan.name == self.fail_on:
            raise self.error(f"cannot analyse {scan.name}")
        height, width = scan.image.shape
        return ImageResult({"name": scan.name, "file": str(scan.path), "format": scan.format, "height": height,
                            "width": width, "spacing_mm": None, "slice_index": None, "status": "no_lumbar_region",
                            "message": "none found", "lumbar": None, "discs": [], "segmentation": None})


def _images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        assert cv2.imwrite(str(folder / f"{name}.png"), np.full((48, 48), 100, np.uint8))
    return [folder / f"{name}.png" for name in names]


def test_a_case_that_fails_is_its_own_error_and_the_batch_goes_on(tmp_path):
    long_name = "x" * 244  # a legal file name, too long for a temporary name made from it
    files = _images(tmp_path / "in", ["first", long_name, "broken", "last"])
    summary = predict_files(files, _NoRegionPipeline(fail_on="broken"), tmp_path / "out", progress=False)
    assert [c["name"] for c in summary["cases"]] == ["first", long_name, "last"]
    assert [e["file"] for e in summary["errors"]] == ["../in/broken.png"]  # relative to the report's folder
    assert "analysis failed (RuntimeError: cannot analyse broken)" in summary["errors"][0]["error"]
    assert (tmp_path / "out" / "overlays" / f"{long_name}.png").is_file()
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["errors"] == summary["errors"]


def test_a_run_stopped_midway_leaves_the_previous_outputs_whole_and_a_rerun_no_stale_overlay(tmp_path):
    out = tmp_path / "out"
    predict_files(_images(tmp_path / "one", ["a", "b"]), _NoRegionPipeline(), out, progress=False)
    before = (out / "report.json").read_text()
    with pytest.raises(KeyboardInterrupt):
        predict_files(_images(tmp_path / "two", ["c", "d"]), _NoRegionPipeline("d", KeyboardInterrupt), out,
                      progress=False)
    assert (out / "report.json").read_text() == before
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial folder left
    predict_files(_images(tmp_path / "three", ["e"]), _NoRegionPipeline(), out, progress=False)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["e.png"]  # a and b were another run's
    assert [c["overlay"] for c in json.loads((out / "report.json").read_text())["cases"]] == ["overlays/e.png"]


def test_report_links_are_url_encoded(tmp_path):
    report = {"name": "a#b?c", "file": "a#b?c.png", "status": "no_lumbar_region", "message": "", "discs": [],
              "overlay": str(tmp_path / "overlays" / "a#b?c.png"), "mask": None}
    write_html(tmp_path / "stage" / "report.html", [report], [], "t", "anchor", links_from=tmp_path)
    page = (tmp_path / "stage" / "report.html").read_text()
    assert "src='overlays/a%23b%3Fc.png'" in page


def test_predict_refuses_out_inside_input_and_fails_when_nothing_was_analysed(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    import plid.predict
    from plid.predict import check_output_place, predict

    with pytest.raises(UserInputError, match="lies inside input"):
        check_output_place(tmp_path / "scans" / "reports", tmp_path / "scans")
    (tmp_path / "reports" / "overlays").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"holds \['overlays'\] but no report.json"):
        check_output_place(tmp_path / "reports", tmp_path / "scans")
    scans = tmp_path / "corrupt"
    scans.mkdir()
    (scans / "a.png").write_bytes(b"not a png")
    monkeypatch.setattr(plid.predict, "load_model_dir", lambda path: None)
    monkeypatch.setattr(plid.predict, "Pipeline", lambda models, **kwargs: _NoRegionPipeline())
    cfg = OmegaConf.create({"input": str(scans), "out": str(tmp_path / "r"), "model_dir": "m", "max_named_levels": 9,
                            "paths": {"output_dir": str(tmp_path / "run")}})
    with pytest.raises(UserInputError, match=r"nothing was analysed \(1 files unreadable"):
        predict(cfg)
    assert json.loads((tmp_path / "r" / "report.json").read_text())["errors"]  # the report still says why
    _images(scans, ["good"])
    assert len(predict(OmegaConf.merge(cfg, {"overwrite": True}))["cases"]) == 1


# --- one run per folder -----------------------------------------------------------------------------------------

def test_a_held_run_folder_is_refused_naming_its_holder_and_a_stale_lock_taken_over(tmp_path, caplog):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                      "started": "2026-12-08 01:02:03"}))
        with pytest.raises(UserInputError, match=rf"in use by another run \(PID {holder.pid}, started 2026-12-08"):
            with run_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level("WARNING"), run_lock(tmp_path) as lock:  # its process is gone now
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"stale lock of PID {holder.pid}" in caplog.text and not (tmp_path / LOCK_FILE).exists()


def test_a_second_training_into_a_locked_folder_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename, "started": "x"}))
        result = run_module("plid.train", f"hydra.run.dir={run}", "trainer.max_epochs=1")
        assert result.returncode != 0 and f"PID {holder.pid}" in result.stderr
        assert not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()


# --- labels checked before they are scored ----------------------------------------------------------------------

@pytest.fixture
def labelled(tmp_path) -> Path:
    return write_dataset(tmp_path / "data", SyntheticSpec(num_patients=3, image_size=96))


def test_clean_labels_pass(labelled):
    assert find_problems(load_dataset(labelled)) == []


@pytest.mark.parametrize("change, message", [
    ("duplicate_image", "listed 2 times"),
    ("duplicate_disc", "listed twice"),
    ("level_42", "ivd_label 42 is not a level"),
    ("level_0", "ivd_label 0 is not a level"),
    ("pfirrmann_9", "pfirrman_grade=9"),
])
def test_bad_label_rows_are_refused_by_evaluate_naming_the_row(labelled, change, message):
    from plid.evaluation.end_to_end import check_labelled

    images, discs = pd.read_csv(labelled / "images.csv"), pd.read_csv(labelled / "discs.csv")
    if change == "duplicate_image":
        images = pd.concat([images, images.iloc[:1]])
    elif change == "duplicate_disc":
        discs = pd.concat([discs, discs.iloc[:1]])
    elif change.startswith("level_"):
        discs.loc[0, "ivd_label"] = int(change.split("_")[1])
    else:
        discs.loc[0, "pfirrman_grade"] = 9
    images.to_csv(labelled / "images.csv", index=False)
    discs.to_csv(labelled / "discs.csv", index=False)
    image = discs.iloc[0]["image"] if change != "duplicate_image" else images.iloc[0]["image"]
    with pytest.raises(UserInputError, match=rf"row for image '{image}': .*{message}"):
        check_labelled(load_dataset(labelled))


# --- a damaged model_dir ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ensemble, message", [
    ({"weights": {"a": math.nan, "b": 1.0}}, "weights.a = nan"),
    ({"weights": {"a": -0.5, "b": 1.0}}, "weights.a = -0.5"),
    ({"weights": {"a": 0.0, "b": 0.0}}, "every weight is 0"),
    ({"weights": {"a": 1.0}, "threshold": 7.0}, "threshold = 7.0"),
])
def test_bad_ensemble_values_are_refused_by_key(ensemble, message):
    with pytest.raises(UserInputError, match=rf"ensemble_weights.json: {message}"):
        check_ensemble_values(ensemble, Path("ensemble_weights.json"))


@pytest.mark.parametrize("key, value", [
    (("classifiers", "cls", "threshold"), 7.0),
    (("bag", "thresholds", "disc_bulging"), math.nan),
    (("detection", "conf"), -1),
    (("classifiers", "cls", "image_size"), 0),
])
def test_bad_manifest_values_are_refused_by_key(key, value):
    manifest = {"detection": {"conf": 0.25, "iou": 0.3, "margin": 0.1}, "segmenter": {"image_size": 64},
                "classifiers": {"cls": {"image_size": 64, "threshold": 0.4}}, "bag": {"thresholds": {"disc_bulging": 0.3}}}
    check_manifest_values(manifest, Path("manifest.json"))
    node = manifest
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value
    with pytest.raises(UserInputError, match=rf"manifest.json: {'.'.join(key)} = "):
        check_manifest_values(manifest, Path("manifest.json"))


@requires_spider2d
def test_the_real_data_passes_the_data_check():
    assert find_problems(load_dataset(SPIDER2D)) == []


def test_an_interrupt_while_the_outputs_move_in_puts_the_previous_ones_back(tmp_path, monkeypatch):
    from plid.utils.io import publish_outputs

    out, stage = tmp_path / "out", tmp_path / "out" / ".partial"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "old.png").write_text("old")
    (out / "report.json").write_text("old report")
    (stage / "overlays").mkdir(parents=True)
    (stage / "overlays" / "new.png").write_text("new")
    (stage / "report.json").write_text("new report")
    real_replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append((src, dst))
        if Path(src) == stage / "report.json":  # the last move in
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish_outputs(stage, out, ("overlays", "report.json"))
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out / "report.json").read_text() == "old report"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["old.png"]


def test_a_lock_appears_whole_and_a_nested_run_keeps_it(tmp_path):
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with run_lock(tmp_path):  # the same process: already held here
            pass
        assert lock.exists()  # the inner block did not remove the outer one's lock
    assert not lock.exists() and not [p for p in tmp_path.iterdir()]  # no draft left either


def test_a_lock_of_another_machine_is_refused_naming_it(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node-7", "started": "x"}))
    with pytest.raises(UserInputError, match="in use by a run on node-7"):
        with run_lock(tmp_path):
            pass


@pytest.mark.parametrize("name, data_line", [
    ("volume.mhd", "ElementDataFile = ../elsewhere/secret.raw\n"),
    ("listed.mhd", "ElementDataFile = LIST\n../elsewhere/secret.raw\n"),
    ("external.mha", "ElementDataFile = ../elsewhere/secret.raw\n"),
])
def test_a_metaimage_header_reads_data_only_from_beside_it(tmp_path, name, data_line):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.raw").write_bytes(bytes(range(256)) * 16)
    header = tmp_path / "scan" / name
    header.parent.mkdir()
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 16 16 16\nElementType = MET_UCHAR\n" + data_line)
    with pytest.raises(ScanReadError, match="not a file beside the header"):
        read_case(collect([header]).cases[0])


def test_a_link_to_the_inputs_own_parent_is_not_walked(tmp_path):
    study = tmp_path / "patients" / "p1"
    study.mkdir(parents=True)
    cv2.imwrite(str(study / "mine.png"), np.zeros((32, 32), np.uint8))
    (tmp_path / "patients" / "p2").mkdir()
    cv2.imwrite(str(tmp_path / "patients" / "p2" / "theirs.png"), np.zeros((32, 32), np.uint8))
    (study / "up").symlink_to(tmp_path / "patients", target_is_directory=True)
    assert [c.path.name for c in discover(study).cases] == ["mine.png"]
