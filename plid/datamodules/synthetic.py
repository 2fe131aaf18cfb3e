"""The embedded default data: seeded synthetic sagittal T2 lumbar phantoms in the spider2d layout.

Each case is a curved (lordotic) column of 5-7 vertebrae above an unlabelled sacrum, one disc below each
vertebra (disc 1 = L5/S1, counting upwards, as SPIDER's ``ivd_label``), the spinal canal behind the column
(anterior is on the left) and posterior elements behind the canal. Herniated discs bulge backwards into
the canal; narrowed discs are thinner and darker. Intensities mimic T2 (bright CSF and healthy discs),
with a per-image gain, bias field, blur and noise.

The generator writes a folder that follows the data contract exactly (images, masks, images.csv,
discs.csv), so every task reads synthetic and real data through the same code.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from plid.boxes import mask_box
from plid.datamodules.contract import DISC_COLUMNS, IMAGE_COLUMNS
from plid.labels import ALL_GRADINGS
from plid.utils.io import atomic_dir

BACKGROUND, VERTEBRA, DISC, CANAL = 0, 1, 2, 3


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; the same spec and seed always give the same files."""

    num_patients: int = 40
    slices_per_patient: int = 1
    image_size: int = 256
    herniation_rate: float = 0.2
    seed: int = 0

    def digest(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


@dataclass
class Case:
    image: np.ndarray  # (H, W) uint8
    mask: np.ndarray  # (H, W) uint8, values 0-3
    lumbar_box: tuple[int, int, int, int]
    discs: list[dict]  # ivd_label, box, gradings; ivd_label 1 is the lowest disc


class _Column:
    """The spine's centre line: s is the arc parameter from the top of the sacrum (s=0) upwards."""

    def __init__(self, x_base: float, y_base: float, length: float, lordosis: float, tilt: float):
        self.x_base, self.y_base, self.length = x_base, y_base, length
        self.lordosis, self.tilt = lordosis, tilt

    def point(self, s: float) -> np.ndarray:
        # lordosis < 0 bows the column anteriorly (to the left) around its middle
        x = self.x_base + self.lordosis * np.sin(np.pi * np.clip(s / self.length, -0.3, 1.3)) + self.tilt * s
        return np.array([x, self.y_base - s])

    def normal(self, s: float) -> np.ndarray:
        """Unit vector pointing posteriorly (to the right), perpendicular to the column."""
        eps = 1e-3 * self.length
        tangent = self.point(s + eps) - self.point(s - eps)
        tangent /= np.linalg.norm(tangent)
        return np.array([-tangent[1], tangent[0]])

    def band(self, s0: float, s1: float, offset0: float, offset1: float, steps: int = 2) -> np.ndarray:
        """Polygon between arc positions s0..s1 and normal offsets offset0..offset1."""
        ss = np.linspace(s0, s1, steps)
        near = [self.point(s) + self.normal(s) * offset0 for s in ss]
        far = [self.point(s) + self.normal(s) * offset1 for s in ss[::-1]]
        return np.round(np.array(near + far)).astype(np.int32)


def generate_case(rng: np.random.Generator, size: int = 256, herniation_rate: float = 0.2) -> Case:
    """One synthetic mid-sagittal T2 image with its 4-class mask, lumbar box and labelled disc boxes."""
    num_vertebrae = int(rng.integers(5, 8))
    length = size * rng.uniform(0.62, 0.78)
    unit = length / (num_vertebrae * 1.32)
    vertebra_h = unit
    disc_h = unit * 0.32
    depth = min(unit * rng.uniform(1.15, 1.45), size * 0.2)  # antero-posterior size of a vertebral body
    gap = depth * rng.uniform(0.06, 0.12)  # posterior longitudinal ligament / epidural space
    canal_w = depth * rng.uniform(0.28, 0.38)
    column = _Column(
        x_base=size * rng.uniform(0.38, 0.5),
        y_base=size * rng.uniform(0.86, 0.92),
        length=length,
        lordosis=-size * rng.uniform(0.03, 0.08),
        tilt=rng.uniform(-0.12, 0.05),
    )

    mask = np.zeros((size, size), np.uint8)
    disc_ids = np.zeros((size, size), np.uint8)
    sacrum = np.zeros((size, size), np.uint8)
    cv2.fillPoly(sacrum, [column.band(-size * 0.25, 0, -depth * 0.55, depth * 0.5, steps=6)], 1)

    discs = []
    s = 0.0
    for level in range(1, num_vertebrae + 1):
        herniated = rng.random() < herniation_rate * (1.6 if level <= 2 else 0.7)
        narrowed = rng.random() < (0.5 if herniated else 0.15)
        height = disc_h * (rng.uniform(0.5, 0.7) if narrowed else rng.uniform(0.9, 1.1))
        bulging = herniated or rng.random() < 0.3
        polygon = column.band(s, s + height, -depth * 0.47, depth * 0.47)
        cv2.fillPoly(disc_ids, [polygon], level)
        if herniated or bulging:
            # herniation: disc material pushed posteriorly through the annulus into the canal
            reach = gap + canal_w * (rng.uniform(0.45, 0.75) if herniated else rng.uniform(0.0, 0.15))
            centre = column.point(s + height / 2) + column.normal(s + height / 2) * depth * 0.47
            normal = column.normal(s + height / 2)
            angle = np.degrees(np.arctan2(normal[1], normal[0]))
            axes = (max(1, int(round(reach))), max(1, int(round(height * (0.75 if herniated else 0.6)))))
            cv2.ellipse(disc_ids, (int(round(centre[0])), int(round(centre[1]))), axes, angle, -90, 90, level, -1)
        pfirrmann = int(rng.integers(3, 6)) if (herniated or narrowed) else int(rng.integers(1, 4))
        discs.append(dict(ivd_label=level, disc_herniation=int(herniated), disc_bulging=int(bulging),
                          disc_narrowing=int(narrowed), pfirrman_grade=pfirrmann))
        s += height
        cv2.fillPoly(mask, [column.band(s, s + vertebra_h, -depth / 2, depth / 2)], VERTEBRA)
        # posterior elements (pedicle, lamina, spinous process) behind the canal
        back = depth / 2 + gap + canal_w + gap
        cv2.fillPoly(mask, [column.band(s + vertebra_h * 0.15, s + vertebra_h * 0.75, back, back + depth * 0.45)],
                     VERTEBRA)
        s += vertebra_h

    canal = np.zeros_like(mask)
    cv2.fillPoly(canal, [column.band(-disc_h, s, depth / 2 + gap, depth / 2 + gap + canal_w, steps=24)], 1)
    mask[canal > 0] = CANAL
    mask[disc_ids > 0] = DISC  # herniations overwrite the canal they compress

    for disc in discs:
        disc["box"] = mask_box(disc_ids == disc["ivd_label"])
    lumbar_box = mask_box(mask > 0)
    image = _render_t2(rng, mask, sacrum, disc_ids, discs)
    return Case(image=image, mask=mask, lumbar_box=lumbar_box, discs=discs)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    field = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return field / (field.std() + 1e-6)


def _render_t2(rng, mask, sacrum, disc_ids, discs) -> np.ndarray:
    size = mask.shape[0]
    image = 0.22 + 0.05 * _smooth_noise(rng, mask.shape, size / 20)  # paraspinal and abdominal tissue
    image[sacrum > 0] = 0.42
    image[mask == VERTEBRA] = 0.45 + rng.uniform(-0.08, 0.08)
    image[mask == CANAL] = 0.88
    for disc in discs:
        # healthy nucleus is bright on T2; degeneration (higher Pfirrmann grade) darkens it
        image[disc_ids == disc["ivd_label"]] = 0.85 - 0.1 * (disc["pfirrman_grade"] - 1)
    image += 0.04 * _smooth_noise(rng, mask.shape, 2.0)  # trabecular / tissue texture
    yy, xx = np.mgrid[0:size, 0:size] / size
    bias = 1 + rng.uniform(-0.25, 0.25) * (yy - 0.5) + rng.uniform(-0.25, 0.25) * (xx - 0.5)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.6, 1.2)) * bias
    image = image * rng.uniform(0.75, 1.15) + rng.normal(0, rng.uniform(0.02, 0.05), mask.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def write_dataset(out: str | Path, spec: SyntheticSpec) -> Path:
    """Generate ``spec`` into ``out`` in the spider2d layout, atomically (a folder appears whole or not at all)."""
    out = Path(out)
    rng = np.random.default_rng(spec.seed)
    with atomic_dir(out, "synthetic.json") as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        image_rows, disc_rows = [], []
        for p in range(spec.num_patients):
            patient = f"syn{p:04d}"
            patient_seed = int(rng.integers(2**31))
            for k in range(spec.slices_per_patient):
                # slices of one patient share geometry and gradings, like neighbouring sagittal slices
                case = generate_case(np.random.default_rng(patient_seed), spec.image_size, spec.herniation_rate)
                if k:
                    jitter = np.random.default_rng([patient_seed, k]).normal(0, 6, case.image.shape)
                    case.image = np.clip(case.image + jitter, 0, 255).astype(np.uint8)
                name = f"{patient}_t2" if spec.slices_per_patient == 1 else f"{patient}_t2_s{k:03d}"
                cv2.imwrite(str(tmp / "images" / f"{name}.png"), case.image)
                cv2.imwrite(str(tmp / "masks" / f"{name}.png"), case.mask)
                h, w = case.mask.shape
                image_rows.append([name, patient, "t2", k if spec.slices_per_patient > 1 else None, h, w, 1,
                                   *case.lumbar_box])
                for disc in case.discs:
                    gradings = {c: disc.get(c, 0) for c in ALL_GRADINGS}
                    disc_rows.append([name, patient, disc["ivd_label"], *disc["box"], *gradings.values()])
        pd.DataFrame(image_rows, columns=IMAGE_COLUMNS).to_csv(tmp / "images.csv", index=False)
        pd.DataFrame(disc_rows, columns=DISC_COLUMNS).to_csv(tmp / "discs.csv", index=False)
        (tmp / "synthetic.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def ensure_dataset(cache_dir: str | Path, spec: SyntheticSpec) -> Path:
    """The folder holding ``spec``'s dataset under ``cache_dir``, generated on first use and reused after."""
    out = Path(cache_dir) / f"synthetic-{spec.digest()}"
    if not (out / "synthetic.json").is_file():
        write_dataset(out, spec)
    return out
