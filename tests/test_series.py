"""Scans as hospitals store them: DICOM studies and series, the plane checked, the slice chosen, masks written.

The study is built here from real neighbouring slices of one ``t2_SPACE`` patient of ``../shared/data/spider2d``
(skipped where that folder is absent) and, everywhere, from a synthetic volume: a sagittal series stored
normally (plus one truncated slice at its left end), the same slices stored with columns running anterior and
instances numbered the other way across two sub-folders, an axial series, suffix-less shuffled file names, a
DICOMDIR, a structured report and a text file.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from plid.data.dicom import discover
from plid.data.samples import write_dicom_series, write_volume
from plid.data.scans import read_case
from plid.datamodules.synthetic import generate_case
from plid.inference.batch import predict_files, predict_inputs
from plid.inference.model_dir import LoadedModule
from plid.inference.pipeline import Pipeline
from plid.inference.slices import SliceOptions, candidates, match_discs
from plid.models.detection import RoiCropper
from tests.conftest import SPIDER2D, requires_spider2d
from tests.test_pipeline import _MeanIntensity, _models

PATIENT = "p042"


def _spider_slices() -> np.ndarray:
    rows = pd.read_csv(SPIDER2D / "images.csv")
    rows = rows[rows.series == "t2_SPACE"]
    patient = rows.patient.iloc[0]
    names = rows[rows.patient == patient].sort_values("slice").image
    return np.stack([cv2.imread(str(SPIDER2D / "images" / f"{n}.png"), cv2.IMREAD_GRAYSCALE) for n in names])


def _synthetic_slices() -> np.ndarray:
    """Nine slices of one phantom, brightest at index 6 (off the centre): the content, not the geometry, decides."""
    image = generate_case(np.random.default_rng(5), size=128).image.astype(float)
    return np.stack([np.clip(image * (1 - 0.06 * abs(k - 6)), 0, 255).astype(np.uint8) for k in range(9)])


@pytest.fixture(scope="module", params=[pytest.param("spider2d", marks=requires_spider2d), "synthetic"])
def slices(request) -> np.ndarray:
    return _spider_slices() if request.param == "spider2d" else _synthetic_slices()


def _names(rng: random.Random, count: int, folders: list[str]) -> list[str]:
    return [f"{folders[k % len(folders)]}/{rng.getrandbits(48):012x}" for k in range(count)]


def _non_images(folder: Path, study_uid: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    for name, sop_class, extra in (("DICOMDIR", "1.2.840.10008.1.3.10", {"FileSetID": "STUDY"}),
                                   ("SR0001", "1.2.840.10008.5.1.4.1.1.88.11", {"Modality": "SR"})):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        if name != "DICOMDIR":
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = study_uid, generate_uid(), PATIENT
        for key, value in extra.items():
            setattr(ds, key, value)
        ds.save_as(folder / name, enforce_file_format=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory, slices) -> Path:
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("study") / "STUDY1"
    rng = random.Random(0)
    uid = generate_uid()
    common = {"patient": PATIENT, "study_uid": uid, "spacing_mm": 0.6, "slice_mm": 3.3}
    # the normal series carries one more slice at its left end, truncated: read without it, it equals the other
    extended = np.concatenate([slices, slices[-1:]])
    normal = write_dicom_series(extended, folder, "sagittal", names=_names(rng, len(extended), ["SE3"]),
                                series_number=3, description="t2_tse_sag", **common)
    data = normal[-1].read_bytes()  # instances count to the left: the last is the extra slice
    normal[-1].write_bytes(data[: len(data) // 2])
    write_dicom_series(slices, folder, "sagittal_anterior", reverse=True,
                       names=_names(rng, len(slices), ["SE4/a", "SE4/b"]), series_number=4,
                       description="t2_tse_sag anterior", **common)
    write_dicom_series(slices[:4], folder, "axial", names=_names(rng, 4, ["SE5"]), series_number=5,
                       description="t2_tse_tra", **common)
    _non_images(folder, uid)
    (folder / "README.txt").write_text("exported by a PACS")
    return folder


def _cropper() -> RoiCropper:
    """Detectors with fixed boxes (fractions of the image) whose lumbar confidence follows the image's mean
    brightness: the anatomical choice is then a property of the pixels, the same however they are stored."""

    def lumbar(image):
        height, width = image.shape[:2]
        return np.array([[0.25 * width, 0.1 * height, 0.8 * width, 0.9 * height]]), \
            np.array([0.2 + 0.7 * float(image.mean()) / 255])

    def ivd(region):
        height, width = region.shape[:2]
        boxes = [[0.2 * width, (0.12 + 0.16 * k) * height, 0.7 * width, (0.2 + 0.16 * k) * height] for k in range(5)]
        return np.array(boxes), np.linspace(0.9, 0.5, 5)

    return RoiCropper(lumbar, ivd, 0.1)


@pytest.fixture
def pipeline(compose) -> Pipeline:
    return Pipeline(_models(compose, [LoadedModule("a", _MeanIntensity(3.0), 32, 0.1)], [1.0]), cropper=_cropper())


def _series_files(study: Path, number: int) -> list[Path]:
    """The readable files of series ``number``, in SimpleITK's own order, to compare geometry with."""
    import pydicom

    files = [p for p in study.rglob("*") if p.is_file() and p.name not in ("DICOMDIR", "README.txt", "SR0001")]
    mine = []
    for path in files:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if int(ds.SeriesNumber) == number:
            mine.append((float(np.dot(ds.ImagePositionPatient, np.cross(ds.ImageOrientationPatient[:3],
                                                                      ds.ImageOrientationPatient[3:]))), path))
    largest = max(p.stat().st_size for _, p in mine)
    return [p for _, p in sorted(mine) if p.stat().st_size > 0.9 * largest]  # the truncated one left out


def test_a_study_is_read_by_series_whatever_the_file_names(study, slices):
    found = discover(study)
    names = [c.name for c in found.cases]
    assert names == [f"{PATIENT}_s3_t2_tse_sag", f"{PATIENT}_s4_t2_tse_sag_anterior"]
    assert not found.errors  # the DICOMDIR, the report and the text file are passed over, not errors
    assert [(s.name, s.reason) for s in found.skipped] == [
        (f"{PATIENT}_s5_t2_tse_tra", "axial series, not analysed (the models read sagittal slices)")]
    assert len(found.cases[0].files) == len(slices) + 1 and len(found.cases[1].files) == len(slices)
    assert {p.parent.name for p in found.cases[1].files} == {"a", "b"}  # one series over two sub-folders
    normal, anterior = (read_case(c) for c in found.cases)
    # the truncated slice is named, and its series read without it
    assert len(found.cases[0].errors) == 1 and "cannot be read" in found.cases[0].errors[0]["error"]
    assert normal.volume.num_slices == anterior.volume.num_slices == len(slices)
    # the same upright picture, slice by slice, however the series was stored; windowed over the whole volume
    np.testing.assert_array_equal(normal.volume.scaled, anterior.volume.scaled)
    for k in (0, len(slices) // 2, len(slices) - 1):
        assert np.corrcoef(normal.volume.image(k).ravel().astype(float), slices[k].ravel().astype(float))[0, 1] > 0.99
    assert normal.volume.image(0).shape == slices[0].shape and normal.spacing_mm == pytest.approx(0.6)
    assert normal.info["modality"] == "MR" and normal.info["series_description"] == "t2_tse_sag"


def test_predict_on_a_study(study, slices, pipeline, tmp_path):
    results = []
    summary = predict_inputs(study, pipeline, tmp_path / "out", progress=False,
                             on_result=lambda scan, result: results.append((scan, result)))
    cases = {c["name"]: c for c in summary["cases"]}
    normal, anterior = cases[f"{PATIENT}_s3_t2_tse_sag"], cases[f"{PATIENT}_s4_t2_tse_sag_anterior"]
    # the same slice chosen in both, from the content: the brightest of the central candidates
    expected = max(candidates(len(slices)), key=lambda k: slices[k].astype(float).mean())
    assert normal["slice_index"] == anterior["slice_index"]
    if slices.shape[1] == 128:  # the synthetic volume: brightest at 6, off the geometric centre (4)
        assert normal["slice_index"] == expected == 6
    assert normal["slice_choice"]["method"] == "anatomical" and normal["slices_analysed"] == [normal["slice_index"]]
    assert [d["gradings"]["disc_herniation"]["probability"] for d in normal["discs"]] == \
        pytest.approx([d["gradings"]["disc_herniation"]["probability"] for d in anterior["discs"]], abs=1e-4)
    assert normal["series"]["number"] == 3 and normal["modality"] == "MR" and normal["plane"] == "sagittal"
    assert [s["reason"] for s in summary["skipped"]] == ["axial series, not analysed (the models read sagittal slices)"]
    assert len(summary["errors"]) == 1 and "cannot be read" in summary["errors"][0]["error"]
    assert len(results) == 2 and all(r.mask.shape == s.image.shape for s, r in results)
    # the mask over the scan: the input's geometry, the chosen slice labelled, the others 0
    for report, number in ((normal, 3), (anterior, 4)):
        files = _series_files(study, number)
        scan = sitk.ReadImage([str(f) for f in files])
        mask = sitk.ReadImage(str(tmp_path / "out" / report["mask"]))
        assert report["mask"].endswith(".nii.gz")
        assert mask.GetSize() == scan.GetSize()
        np.testing.assert_allclose(mask.GetSpacing(), scan.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(mask.GetOrigin(), scan.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetDirection(), scan.GetDirection(), atol=1e-6)
        labels = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "PIL"))
        assert set(np.unique(labels)) <= {0, 1, 2, 3}
        labelled = [k for k in range(labels.shape[0]) if labels[k].any()]
        assert labelled == [report["slice_index"]]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["skipped"][0]["series"] == f"{PATIENT}_s5_t2_tse_tra"
    _check_provenance(saved, study, tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "axial series, not analysed" in page and "LUMBAR SPINE" in page and "Summary" in page


def _check_provenance(saved, study, out):
    """report.json says which plid made it and which instances it read, holds no machine path, and gives boxes in
    patient coordinates; discs.csv has a row per disc."""
    import pydicom

    import plid

    assert saved["provenance"]["plid_version"] == plid.__version__ and saved["provenance"]["created"]
    strings = []

    def walk(value):
        if isinstance(value, dict):
            [walk(v) for v in value.values()]
        elif isinstance(value, list):
            [walk(v) for v in value]
        elif isinstance(value, str):
            strings.append(value)

    walk(saved)
    assert not [s for s in strings if s.startswith("/")], "report.json holds an absolute path"
    for report in saved["cases"]:
        files = _series_files(study, report["series"]["number"])
        headers = {f: pydicom.dcmread(str(f), stop_before_pixels=True) for f in files}
        assert report["input"]["series_uid"] == headers[files[0]].SeriesInstanceUID
        (uid,) = report["input"]["sop_instance_uids"]
        # that instance, read alone and reoriented, is the analysed slice of the reoriented series
        (instance,) = [f for f, ds in headers.items() if ds.SOPInstanceUID == uid]
        volume = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage([str(f) for f in files]), "PIL"))
        alone = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(instance)), "PIL"))
        np.testing.assert_array_equal(alone[0], volume[report["slice_index"]])
        # the box corners in mm lie on that slice's plane, inside the image
        stored = sitk.ReadImage(str(instance))
        for disc in report["discs"]:
            for corner in disc["box_mm"]:
                index = stored.TransformPhysicalPointToContinuousIndex(corner)
                assert abs(index[2]) < 0.01 and all(-0.51 <= index[i] <= stored.GetSize()[i] - 0.49 for i in (0, 1))
    import pandas as pd

    rows = pd.read_csv(out / "discs.csv")
    assert len(rows) == sum(len(c["discs"]) for c in saved["cases"])
    assert {"case", "level", "name", "x1", "L1_mm", "disc_herniation_probability"} <= set(rows.columns)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_several_slices_give_each_disc_an_aggregate_with_each_slice_beside_it(study, slices, pipeline, tmp_path, how):
    options = SliceOptions("center", 3, how)
    summary = predict_inputs(study / "SE4", pipeline, tmp_path / "out", progress=False, slices=options)
    (report,) = summary["cases"]
    centre = (len(slices) - 1) // 2
    assert report["slices_analysed"] == [centre - 1, centre, centre + 1] and report["slice_index"] == centre
    for disc in report["discs"]:
        values = [s["gradings"]["disc_herniation"]["probability"] for s in disc["slices"]]
        assert [s["slice_index"] for s in disc["slices"]] == report["slices_analysed"] and None not in values
        made = disc["gradings"]["disc_herniation"]
        assert made["probability"] == pytest.approx(np.mean(values) if how == "mean" else max(values), abs=1e-4)
        assert made["slices"] == 3 and made["aggregation"] == how
        assert disc["slices"][1]["box"] == disc["box"]  # the chosen slice's own answer stays beside the aggregate
        assert disc["slices_seen"] == 3 and disc["level_agreement"] is not None
    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "out" / report["mask"])), "PIL"))
    assert [k for k in range(labels.shape[0]) if labels[k].any()] == report["slices_analysed"]


def test_2d_inputs_write_their_mask_as_png(slices, pipeline, tmp_path):
    image = slices[len(slices) // 2]
    cv2.imwrite(str(tmp_path / "a.png"), image)
    seen = []
    summary = predict_files([tmp_path / "a.png"], pipeline, tmp_path / "out", progress=False,
                            on_result=lambda scan, result: seen.append(result.mask))
    (report,) = summary["cases"]
    assert report["name"] == "a" and report["mask"].endswith("masks/a.png")
    mask = cv2.imread(str(tmp_path / "out" / report["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(mask, seen[0])


def test_series_that_cannot_be_analysed_say_why(tmp_path, slices):
    rng = random.Random(1)
    gap = write_dicom_series(slices, tmp_path / "gap", names=_names(rng, len(slices), ["x"]), series_number=6)
    gap[len(slices) // 2].unlink()  # a missing slice in the middle
    write_dicom_series(slices[:3], tmp_path / "coronal", "coronal", series_number=7)
    write_dicom_series(slices[:5], tmp_path / "ct", modality="CT", series_number=8, patient="ct")
    mixed = write_dicom_series(slices[:4], tmp_path / "mixed", series_number=9, patient="mixed")
    import pydicom

    ds = pydicom.dcmread(str(mixed[1]))
    ds.ImageOrientationPatient = [0.0, 0.9, 0.1, 0.0, 0.0, -1.0]
    ds.save_as(mixed[1])
    axial = sitk.GetImageFromArray(np.repeat(slices[:1], 6, axis=0).astype(np.float32))
    axial.SetSpacing((0.5, 0.5, 4.0))  # thick slices along z, identity direction: an axial stack
    sitk.WriteImage(axial, str(tmp_path / "axial.nii.gz"))
    write_volume(slices[0], tmp_path / "sagittal.mha", stored_orientation="LPS")  # thick slices along x
    found = discover(tmp_path)
    reasons = {s.name: s.reason for s in found.skipped}
    assert reasons["sample_s6_T2_SAG"].startswith("slices disagree in spacing")
    assert reasons["sample_s7_T2_SAG"].startswith("coronal series")
    assert reasons["mixed_s9_T2_SAG"].startswith("slices disagree in orientation")
    ct = next(c for c in found.cases if c.name == "ct_s8_T2_SAG")
    assert "CT modality" in ct.warnings[0]
    from plid.data.scans import CaseSkipped

    volumes = {c.name: c for c in found.cases if c.kind == "volume"}
    with pytest.raises(CaseSkipped, match="axial volume"):
        read_case(volumes["axial"])
    assert read_case(volumes["sagittal"]).volume.num_slices == 5
    # one slice file of an axial series, given alone, is not taken for a sagittal image either
    (lone,) = write_dicom_series(slices[:1], tmp_path / "lone", "axial", names=["IM0001"])
    alone = discover(lone)
    assert not alone.cases and alone.skipped[0].reason.startswith("axial series")


def test_discs_are_matched_across_slices_by_overlap_then_distance():
    reference = [{"box": [10, 100, 50, 110]}, {"box": [10, 60, 50, 70]}, {"box": [10, 20, 50, 30]}]
    other = [{"box": [12, 58, 52, 69]}, {"box": [30, 100, 70, 111]}, {"box": [200, 20, 240, 30]}]
    # the first box overlaps the middle disc, the second the lowest one (IoU 0.31); the top disc has no box near
    assert match_discs(reference, other) == {1: 0, 0: 1}


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium not installed (apt-get install chromium)")
def test_report_page_renders_in_headless_chromium(study, pipeline, tmp_path):
    out = tmp_path / "out"
    predict_inputs(study, pipeline, out, progress=False, slices=SliceOptions(slices=3))
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--window-size=1280,2000",
                    f"--screenshot={shot}", (out / "report.html").as_uri()], capture_output=True, timeout=120,
                   check=False)
    image = cv2.imread(str(shot))
    assert image is not None, "no screenshot written"
    assert image.std() > 10 and len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # text, tables, overlays


def test_a_list_of_slice_files_of_one_series_is_one_case(tmp_path, slices, pipeline):
    """What predict_files (the end-to-end evaluation's entry) makes of one series' .dcm files given one by one."""
    files = write_dicom_series(slices[:5], tmp_path / "scans", names=[f"slice{k}.dcm" for k in range(5)],
                               series_number=2)
    random.Random(3).shuffle(files)
    summary = predict_files(files, pipeline, tmp_path / "out", progress=False, slices=SliceOptions("center"))
    (report,) = summary["cases"]
    assert report["name"] == "sample_s2_T2_SAG" and report["slice_index"] == 2 and report["series"]["files"] == 5


def test_monochrome1_is_shown_as_stored_for_display(tmp_path, slices):
    """MONOCHROME1 (low values white): read back with the same polarity as the picture written."""
    import pydicom

    files = write_dicom_series(slices[:3], tmp_path, slope=1.0, intercept=0.0)
    for path in files:
        ds = pydicom.dcmread(str(path))
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PixelData = (255 - ds.pixel_array).astype(np.uint16).tobytes()
        ds.save_as(path)
    case = read_case(discover(tmp_path).cases[0])
    assert np.corrcoef(case.volume.image(1).ravel().astype(float), slices[1].ravel().astype(float))[0, 1] > 0.99


class _Skewness(torch.nn.Module):
    """A stand-in classifier whose probability differs between discs: the skewness of the standardised crop."""

    def forward(self, x):
        z = (x**3).mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(z), z], 1)


def test_with_several_slices_a_disc_has_one_call_and_the_page_shows_that_call(study, compose, tmp_path):
    """The call of an aggregated disc is made once, from the aggregated probability at the classifier's threshold,
    and the page flags exactly the discs report.json calls positive (it used to recompute the call, and report.json
    kept the chosen slice's). The threshold is set between the discs' aggregated probabilities, so both calls occur.
    """
    pipeline = Pipeline(_models(compose, [LoadedModule("a", _Skewness(), 32, 0.1)], [1.0]), cropper=_cropper())
    options = SliceOptions("center", 3, "max")
    (first,) = predict_inputs(study / "SE4", pipeline, tmp_path / "first", progress=False, slices=options)["cases"]
    aggregated = sorted(d["gradings"]["disc_herniation"]["probability"] for d in first["discs"])
    classifier = pipeline.models.classifiers[0]
    classifier.threshold = (aggregated[0] + aggregated[-1]) / 2
    assert aggregated[0] < classifier.threshold < aggregated[-1]
    (report,) = predict_inputs(study / "SE4", pipeline, tmp_path / "out", progress=False, slices=options)["cases"]
    calls = [d["gradings"]["disc_herniation"]["positive"] for d in report["discs"]]
    for disc in report["discs"]:
        made = disc["gradings"]["disc_herniation"]
        assert made["threshold"] == classifier.threshold
        assert made["positive"] == (made["probability"] > classifier.threshold)
    assert True in calls and False in calls
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<tr class='flag'>") == sum(calls)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [d["gradings"]["disc_herniation"]["positive"] for d in saved["cases"][0]["discs"]] == calls
    import jsonschema

    from plid.reports import SCHEMA_FILE

    jsonschema.validate(saved, json.loads(SCHEMA_FILE.read_text()))  # the schema shipped with the package


def _slice_report(levels, names=None, uncertain=None) -> dict:
    """Three discs at fixed boxes, bottom-up, with the levels (and names) one slice's own report gave them."""
    boxes = [[10, 160, 50, 180], [10, 120, 50, 140], [10, 80, 50, 100]]
    names = names or [None] * len(levels)
    return {"discs": [{"box": b, "level": lv, "name": n, "gradings": {}} for b, lv, n in zip(boxes, levels, names)],
            "levels_uncertain": bool(uncertain), "levels_uncertain_reason": uncertain}


def test_a_series_whose_slices_disagree_on_the_levels_gets_one_level_per_disc_and_says_so():
    from plid.inference.slices import aggregate

    # the chosen slice (4) missed L5/S1 and numbered the discs from the one above; its neighbours did not
    reports = {3: _slice_report([2, 3, 4], ["L4/L5", "L3/L4", "L2/L3"]), 4: _slice_report([1, 2, 3]),
               5: _slice_report([2, 3, 4], ["L4/L5", "L3/L4", "L2/L3"])}
    report = aggregate(reports, 4, "mean")
    assert [d["level"] for d in report["discs"]] == [2, 3, 4]
    assert [d["name"] for d in report["discs"]] == ["L4/L5", "L3/L4", "L2/L3"]
    assert all(d["level_agreement"] == pytest.approx(2 / 3, abs=1e-4) and d["slices_seen"] == 3
               for d in report["discs"])
    assert [s["level"] for s in report["discs"][0]["slices"]] == [2, 1, 2]  # each slice's own answer, kept
    assert report["levels_uncertain"] and "disagree on the level of 3 disc(s)" in report["levels_uncertain_reason"]


def test_a_series_whose_slices_agree_keeps_its_levels_and_certainty():
    from plid.inference.slices import aggregate

    names = ["L5/S1", "L4/L5", "L3/L4"]
    report = aggregate({k: _slice_report([1, 2, 3], names) for k in (3, 4, 5)}, 4, "mean")
    assert [d["level"] for d in report["discs"]] == [1, 2, 3] and [d["name"] for d in report["discs"]] == names
    assert all(d["level_agreement"] == 1.0 for d in report["discs"]) and not report["levels_uncertain"]
    # a tie (one slice each way, the chosen slice among them) keeps the chosen slice's level
    tie = aggregate({4: _slice_report([1, 2, 3], names), 5: _slice_report([2, 3, 4])}, 4, "mean")
    assert [d["level"] for d in tie["discs"]] == [1, 2, 3] and tie["levels_uncertain"]
