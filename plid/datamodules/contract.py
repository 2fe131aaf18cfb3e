"""Reading a dataset that follows the spider2d data contract (see ``../shared/data/spider2d/README.md``).

Both the embedded synthetic generator and the SPIDER importer write this layout, so every task reads its
data through this one module:

    images/<image>.png      8-bit grayscale, upright, anterior on the left
    masks/<image>.png       where images.csv has has_mask=1; 0 background, 1 vertebra, 2 disc, 3 canal
    images.csv              image, patient, series, slice, height, width, has_mask, lumbar_x1..lumbar_y2
    discs.csv               image, patient, ivd_label, x1, y1, x2, y2, then per-disc gradings
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from plid.errors import UserInputError
from plid.labels import ALL_GRADINGS, CLASS_NAMES, grading

LUMBAR_BOX = ["lumbar_x1", "lumbar_y1", "lumbar_x2", "lumbar_y2"]
DISC_BOX = ["x1", "y1", "x2", "y2"]
IMAGE_COLUMNS = ["image", "patient", "series", "slice", "height", "width", "has_mask", *LUMBAR_BOX]
DISC_COLUMNS = ["image", "patient", "ivd_label", *DISC_BOX, *ALL_GRADINGS]
MAX_IVD_LABEL = 24  # ivd_label counts discs up from the lowest (1): a spine has 23 (C2/C3 to L5/S1), 24 with a sixth lumbar


# Where an image has disc boxes but no lumbar box (no mask: SPIDER's mid-sagittal T1/T2 renders), its lumbar box
# is derived from the disc boxes so that every series type trains the detectors with one definition: the box of the
# discs, grown by these multiples of the image's median disc width (anterior, posterior) and height (above, below).
# Measured on the 53 t2_SPACE slices of ../shared/data/spider2d whose labelled region the top of the field of view
# does not cut, as medians of (mask box - disc box) / disc size: the mask box starts at the discs' anterior edge,
# reaches one disc width behind them (canal and posterior elements), 1.7 disc heights above the top disc (the
# vertebra above it) and ends at the lowest disc (the sacrum is not labelled).
DERIVED_LUMBAR_MARGINS = {"anterior": 0.0, "posterior": 1.03, "above": 1.73, "below": 0.0}


class DataContractError(UserInputError):
    """The dataset on disk does not follow the data contract; the message names the file or row."""


@dataclass(frozen=True)
class SpineDataset:
    """The tables of one dataset folder; images and masks are read on demand."""

    root: Path
    images: pd.DataFrame
    discs: pd.DataFrame

    def image_path(self, image: str) -> Path:
        return self.root / "images" / f"{image}.png"

    def mask_path(self, image: str) -> Path:
        return self.root / "masks" / f"{image}.png"

    def read_image(self, image: str) -> np.ndarray:
        return read_png(self.image_path(image))

    def read_mask(self, image: str) -> np.ndarray:
        mask = read_png(self.mask_path(image))
        if mask.max(initial=0) >= len(CLASS_NAMES):
            raise DataContractError(
                f"{self.mask_path(image)}: mask values {np.unique(mask).tolist()} fall outside 0-3 "
                f"({', '.join(CLASS_NAMES)}); remap the labels to the contract"
            )
        return mask

    def patients(self) -> list[str]:
        return sorted(self.images["patient"].unique())


def read_png(path: Path) -> np.ndarray:
    """An 8-bit single-channel image, or a clear error naming the file."""
    if not path.is_file():
        raise DataContractError(f"{path}: file not found (named in the dataset's tables)")
    array = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if array is None:
        raise DataContractError(f"{path}: cannot be decoded as an image (corrupt or truncated?)")
    return array


def load_dataset(root: str | Path) -> SpineDataset:
    """Read ``images.csv`` and ``discs.csv`` of a dataset folder, with patient ids as strings."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataContractError(
            f"data root {root} does not exist. Point data.root=... at a folder laid out as "
            f"../shared/data/spider2d/README.md describes, or use the synthetic default (data=synthetic_seg)."
        )
    images_csv, discs_csv = root / "images.csv", root / "discs.csv"
    if not images_csv.is_file():
        raise DataContractError(f"{images_csv} not found: {root} is not a dataset in the spider2d layout")
    images = pd.read_csv(images_csv, dtype={"image": str, "patient": str, "series": str})
    missing = [c for c in ("image", "patient", "has_mask") if c not in images.columns]
    if missing:
        raise DataContractError(f"{images_csv}: missing columns {missing}")
    if discs_csv.is_file():
        discs = pd.read_csv(discs_csv, dtype={"image": str, "patient": str})
    else:
        discs = pd.DataFrame(columns=DISC_COLUMNS)
    return SpineDataset(root=root, images=images, discs=discs)


@dataclass(frozen=True)
class Problem:
    """One bad row: the table and the image it names, and what is wrong with it."""

    table: str
    image: str
    message: str

    def __str__(self) -> str:
        return f"{self.table} row for image {self.image!r}: {self.message}"


def _box_problem(box, height: float, width: float) -> str | None:
    if any(pd.isna(v) for v in box):
        return None
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        return f"box {tuple(box)} has zero or negative size"
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        return f"box {tuple(box)} lies outside the {int(width)}x{int(height)} image"
    return None


def find_problems(dataset: SpineDataset) -> list[Problem]:
    """Table-level checks that need no decoding: files present, boxes of positive size inside their image,
    discs naming known images, no image or disc listed twice, levels and gradings within the contract's ranges. Decoding problems (corrupt files, mask values, sizes) surface when the
    DataModule decodes the rows it uses."""
    problems: list[Problem] = []
    sizes = {}
    for row in dataset.images.itertuples():
        if not dataset.image_path(row.image).is_file():
            problems.append(Problem("images.csv", row.image, f"image file {dataset.image_path(row.image)} not found"))
        if getattr(row, "has_mask", 0) == 1 and not dataset.mask_path(row.image).is_file():
            problems.append(Problem("images.csv", row.image,
                                    f"has_mask=1 but mask file {dataset.mask_path(row.image)} not found"))
        height, width = getattr(row, "height", float("nan")), getattr(row, "width", float("nan"))
        sizes[row.image] = (height, width)
        if all(c in dataset.images.columns for c in LUMBAR_BOX) and not pd.isna(height):
            message = _box_problem([getattr(row, c) for c in LUMBAR_BOX], height, width)
            if message:
                problems.append(Problem("images.csv", row.image, f"lumbar {message}"))
    for image, count in dataset.images["image"].value_counts().items():
        if count > 1:
            problems.append(Problem("images.csv", image, f"listed {count} times (an image is one row)"))
    problems += _disc_label_problems(dataset.discs)
    for row in dataset.discs.itertuples():
        if row.image not in sizes:
            problems.append(Problem("discs.csv", row.image, "names an image that images.csv does not list"))
            continue
        height, width = sizes[row.image]
        if not pd.isna(height):
            message = _box_problem([getattr(row, c) for c in DISC_BOX], height, width)
            if message:
                problems.append(Problem("discs.csv", row.image, f"disc {message}"))
    return problems


def _disc_label_problems(discs: pd.DataFrame) -> list[Problem]:
    """Disc rows repeated (one disc counted twice in training and scoring), levels that are not 1 (the lowest
    disc) and up, gradings outside their grades."""
    problems = []
    if discs.empty:
        return problems
    # one disc twice: the same box of an image, or the same level of an image
    for keys, what in ((["image", *DISC_BOX], "box"), (["image", "ivd_label"], "ivd_label")):
        if not set(keys) <= set(discs.columns):
            continue
        labelled = discs.dropna(subset=keys)
        for row in labelled[labelled.duplicated(subset=keys)].itertuples():
            value = getattr(row, keys[1]) if len(keys) == 2 else tuple(getattr(row, c) for c in DISC_BOX)
            problems.append(Problem("discs.csv", row.image, f"{what} {value} listed twice (one disc is one row)"))
    if "ivd_label" in discs.columns:
        for row in discs.dropna(subset=["ivd_label"]).itertuples():
            level = row.ivd_label
            if float(level) != int(level) or not 1 <= int(level) <= MAX_IVD_LABEL:
                problems.append(Problem("discs.csv", row.image, f"ivd_label {level} is not a level 1-{MAX_IVD_LABEL} "
                                                                "(1 is the lowest disc, counting up)"))
    for column in (c for c in ALL_GRADINGS if c in discs.columns):
        for image, value in zip(discs["image"], discs[column]):
            try:
                grading(column).index(value)
            except (TypeError, ValueError) as error:
                problems.append(Problem("discs.csv", image, str(error)))
    return problems


def drop_problems(dataset: SpineDataset, problems: list[Problem]) -> SpineDataset:
    """The dataset without the images named by ``problems`` (and their discs)."""
    bad = {p.image for p in problems}
    return SpineDataset(dataset.root, dataset.images[~dataset.images["image"].isin(bad)].reset_index(drop=True),
                        dataset.discs[~dataset.discs["image"].isin(bad)].reset_index(drop=True))


def derived_lumbar_box(disc_boxes, height: int, width: int) -> tuple[float, float, float, float]:
    """The lumbar box of an image without a mask, from its disc boxes (:data:`DERIVED_LUMBAR_MARGINS`), clipped."""
    boxes = np.asarray(disc_boxes, dtype=np.float64).reshape(-1, 4)
    disc_w, disc_h = np.median(boxes[:, 2] - boxes[:, 0]), np.median(boxes[:, 3] - boxes[:, 1])
    m = DERIVED_LUMBAR_MARGINS
    x1, y1 = boxes[:, 0].min() - m["anterior"] * disc_w, boxes[:, 1].min() - m["above"] * disc_h
    x2, y2 = boxes[:, 2].max() + m["posterior"] * disc_w, boxes[:, 3].max() + m["below"] * disc_h
    return (float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height)), float(np.clip(x2, 0, width)),
            float(np.clip(y2, 0, height)))


def with_lumbar_boxes(dataset: SpineDataset) -> SpineDataset:
    """The dataset with a lumbar box for every image that has one or has disc boxes: images.csv's where given (the
    box of the mask), else derived from the discs (:func:`derived_lumbar_box`); ``lumbar_box_source`` says which
    (``table``, ``discs``, or empty where there is neither)."""
    images = dataset.images.copy()
    for column in LUMBAR_BOX:
        if column not in images.columns:
            images[column] = np.nan
    given = images[LUMBAR_BOX].notna().all(axis=1)
    images["lumbar_box_source"] = np.where(given, "table", "")
    discs = dict(tuple(dataset.discs.groupby("image"))) if len(dataset.discs) else {}
    for k in np.flatnonzero(~given.to_numpy()):
        row = images.iloc[k]
        if row["image"] in discs and not pd.isna(row.get("height", np.nan)):
            box = derived_lumbar_box(discs[row["image"]][DISC_BOX].to_numpy(), row["height"], row["width"])
            images.loc[images.index[k], LUMBAR_BOX] = box
            images.loc[images.index[k], "lumbar_box_source"] = "discs"
    return SpineDataset(dataset.root, images, dataset.discs)
