"""``python -m plid.crop``: a dataset folder of detected boxes with matched labels, that every DataModule reads."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import run_module

from plid.boxes import enlarge_box
from plid.crop import crop, match_boxes
from plid.datamodules.contract import DISC_BOX, LUMBAR_BOX, find_problems, load_dataset
from plid.errors import UserInputError, find_user_error


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture
def truth(compose):
    """The synthetic source dataset, as a DataModule on it reads it."""
    import hydra

    return hydra.utils.instantiate(compose().data, _convert_="all").dataset


@pytest.fixture
def fake_detectors(monkeypatch, tmp_path, truth):
    """Detectors that find each ground-truth box a little off, except on two images: on the first no lumbar region,
    on the second its lowest disc (ivd_label 1) missed and a spurious box at the top left of the lumbar crop.
    Returns ``(lumbar_run, ivd_run, margins)``: a bare .pt, a detect-run folder trained with a crop margin of 0.2,
    and the margins the cropper was built with."""
    from plid.models import detection

    first, second = truth.images["image"].iloc[:2]
    margins = []

    def fake_from_weights(cls, lumbar, ivd, margin, **kwargs):
        margins.append(margin)
        lumbar_by_image, discs_by_crop = {}, {}
        for row in truth.images.itertuples():
            image = truth.read_image(row.image)
            box = np.array([getattr(row, c) for c in LUMBAR_BOX], float) + [1, 1, -1, 1]
            lumbar_by_image[_digest(image)] = box[None] if row.image != first else np.zeros((0, 4))
            x1, y1, x2, y2 = enlarge_box(box, margin, *image.shape)
            discs = truth.discs[truth.discs["image"] == row.image].sort_values("ivd_label")
            if row.image == second:
                discs = discs.iloc[1:]
            found = discs[DISC_BOX].to_numpy(float)[::-1] - [x1, y1, x1, y1] + [0, 1, 0, 1]
            if row.image == second:
                found = np.vstack([found, [0, 0, 4, 4]])
            discs_by_crop[_digest(image[y1:y2, x1:x2])] = found
        return cls(lambda im: (lumbar_by_image[_digest(im)], np.ones(len(lumbar_by_image[_digest(im)]))),
                   lambda im: (discs_by_crop[_digest(im)], np.ones(len(discs_by_crop[_digest(im)]))), margin)

    monkeypatch.setattr(detection.RoiCropper, "from_weights", classmethod(fake_from_weights))
    lumbar = tmp_path / "lumbar.pt"
    lumbar.write_bytes(b"lumbar")
    ivd = tmp_path / "ivd_run"
    (ivd / "yolo" / "weights").mkdir(parents=True)
    (ivd / "yolo" / "weights" / "best.pt").write_bytes(b"ivd")
    (ivd / "summary.json").write_text(json.dumps({"roi_margin": 0.2}))
    return lumbar, ivd, margins


def test_matching_is_one_to_one_and_maximises_the_total_iou():
    truth = np.array([[0, 0, 10, 10], [10, 0, 20, 10]])
    # the first box overlaps truth 1 more than truth 0 (IoU 0.43 against 0.25), but truth 1 is the second box's
    # (0.67): matching in detection order would leave the second box without a disc; the assignment does not
    found = np.array([[6, 0, 16, 10], [12, 0, 22, 10], [50, 50, 60, 60]])
    assert match_boxes(found, truth, 0.2) == {0: 0, 1: 1}
    assert match_boxes(found, truth, 0.3) == {1: 1}  # the first box's disc lies below min_iou: no match
    assert match_boxes(found[:0], truth, 0.3) == {}


def test_crop_writes_a_dataset_of_detected_boxes_with_matched_labels(compose, tmp_path, truth, fake_detectors):
    import hydra

    lumbar, ivd, margins = fake_detectors
    out = crop(compose(f"lumbar_run={lumbar}", f"ivd_run={ivd}", f"out={tmp_path / 'crops'}", config_name="crop"))
    assert margins == [0.2]  # the crop margin the disc detector was trained with
    found = load_dataset(out)
    assert find_problems(found) == []
    first, second = truth.images["image"].iloc[:2]
    # the first image has no lumbar region: left out; the others keep the detected box, before any margin
    assert list(found.images["image"]) == list(truth.images["image"].iloc[1:])
    rest = truth.images.iloc[1:]
    np.testing.assert_array_equal(found.images[LUMBAR_BOX].to_numpy(), rest[LUMBAR_BOX].to_numpy() + [1, 1, -1, 1])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(f"{i}.png" for i in rest["image"])
    assert not any(p.is_symlink() for p in (out / "images").iterdir())
    # hand-checked: the second image's discs, its lowest one missed, one spurious box
    gt = truth.discs[truth.discs["image"] == second].sort_values("ivd_label")
    got = found.discs[found.discs["image"] == second]
    assert len(got) == len(gt)  # one missed, one spurious
    spurious = got[got["ivd_label"].isna()]
    assert len(spurious) == 1 and spurious[["disc_herniation", "pfirrman_grade"]].isna().all(axis=None)
    x1, y1, *_ = enlarge_box(rest[LUMBAR_BOX].to_numpy()[0] + [1, 1, -1, 1], 0.2, *truth.read_image(second).shape)
    assert spurious[DISC_BOX].to_numpy().tolist() == [[x1, y1, x1 + 4, y1 + 4]]
    matched = got[got["ivd_label"].notna()].sort_values("ivd_label")
    assert matched["ivd_label"].tolist() == gt["ivd_label"].iloc[1:].tolist()
    np.testing.assert_array_equal(matched[DISC_BOX].to_numpy(), gt[DISC_BOX].to_numpy()[1:] + [0, 1, 0, 1])
    for column in ("disc_herniation", "disc_bulging", "pfirrman_grade", "patient"):
        assert matched[column].tolist() == gt[column].iloc[1:].tolist()
    # every other disc matched, with its own labels
    others = found.discs[found.discs["image"] != second].merge(truth.discs, on=["image", "ivd_label"],
                                                               suffixes=("", "_gt"))
    assert len(others) == (~truth.discs["image"].isin([first, second])).sum()
    assert (others["disc_herniation"] == others["disc_herniation_gt"]).all()
    counts = json.loads((out / "counts.json").read_text())
    assert counts == {"images": len(truth.images), "no_lumbar_region": 1, "gt_discs_missed": 1,
                      "unmatched_detections": 1, "duplicate_detections": 0}
    provenance = json.loads((out / "crop.json").read_text())
    assert provenance["source"] == str(truth.root) and provenance["margin"] == 0.2
    assert provenance["detectors"]["ivd"] == {"weights": str(ivd / "yolo" / "weights" / "best.pt"),
                                             "sha1": hashlib.sha1(b"ivd").hexdigest()}

    # a DataModule reads it with roi=gt, on the source's splits less the patient left out
    source = hydra.utils.instantiate(compose().data, _convert_="all")
    dm = hydra.utils.instantiate(compose("data.image_size=64", "data.augment=false", f"data.root={out}",
                                         "data.synthetic=null").data, _convert_="all")
    gone = set(truth.images["patient"]) - set(found.images["patient"])
    assert len(gone) == 1
    assert dm.patient_splits() == {k: [p for p in v if p not in gone] for k, v in source.patient_splits().items()}
    dm.setup("fit")
    assert dm.datasets["train"].images.shape[1:] == (64, 64)
    classifier = hydra.utils.instantiate(compose("data=synthetic_cls", f"data.root={out}", "data.synthetic=null").data,
                                         _convert_="all")
    assert len(classifier.dataset.discs) == len(found.discs) - 1  # the spurious box has no label

    # a second run replaces its own earlier output
    (out / "images" / f"{second}.png").unlink()
    crop(compose(f"lumbar_run={lumbar}", f"ivd_run={ivd}", f"out={out}", config_name="crop"))
    assert (out / "images" / f"{second}.png").is_file()


def test_crop_refuses_a_folder_that_is_not_its_own_output(compose, tmp_path, truth, fake_detectors):
    lumbar, ivd, _ = fake_detectors
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserInputError, match=f"out={out} is not empty and is not an earlier `python -m plid.crop`"):
        crop(compose(f"lumbar_run={lumbar}", f"ivd_run={ivd}", f"out={out}", config_name="crop"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(UserInputError, match="the source dataset itself"):
        crop(compose(f"lumbar_run={lumbar}", f"ivd_run={ivd}", f"out={truth.root}", config_name="crop"))


def test_roi_detected_names_the_crop_step(compose):
    import hydra

    with pytest.raises(Exception) as raised:
        hydra.utils.instantiate(compose("data.roi=detected").data, _convert_="all")
    assert "python -m plid.crop lumbar_run=" in str(find_user_error(raised.value))


def test_crop_runs_yolo_weights_offline(compose, tmp_path, no_network):
    """On untrained YOLOv8n detectors (a run folder and a bare .pt), at a confidence low enough that they answer."""
    from tests.test_pipeline import _untrained_detectors

    weights = _untrained_detectors(tmp_path)
    run = tmp_path / "lumbar_run"
    (run / "yolo" / "weights").mkdir(parents=True)
    weights["lumbar"].rename(run / "yolo" / "weights" / "best.pt")
    out = crop(compose(f"lumbar_run={run}", f"ivd_run={weights['ivd']}", f"out={tmp_path / 'crops'}", "conf=0.00001",
                       config_name="crop"))
    assert no_network == []
    found = load_dataset(out)
    assert find_problems(found) == [] and len(found.images) > 0
    provenance = json.loads((out / "crop.json").read_text())
    assert provenance["detectors"]["lumbar"]["weights"] == str(run / "yolo" / "weights" / "best.pt")
    assert provenance["margin_source"] == "default"  # a bare .pt: no run to read the disc detector's margin from
    counts = json.loads((out / "counts.json").read_text())
    assert counts["images"] == counts["no_lumbar_region"] + len(found.images)


@pytest.mark.slow
def test_crop_command_ends_with_one_clear_line_on_a_folder_it_must_not_touch(tmp_path, data_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    (tmp_path / "ivd.pt").write_bytes(b"ivd")
    result = run_module("plid.crop", f"lumbar_run={tmp_path / 'ivd.pt'}", f"ivd_run={tmp_path / 'ivd.pt'}",
                        f"out={tmp_path / 'out'}", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}/run")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: out={tmp_path / 'out'} is not empty")
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
