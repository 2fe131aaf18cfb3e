import numpy as np
import pandas as pd

from plid.datamodules.contract import load_dataset
from plid.datamodules.synthetic import SyntheticSpec, ensure_dataset, generate_case


def test_cases_are_seeded_and_follow_the_contract():
    a, b = generate_case(np.random.default_rng(7)), generate_case(np.random.default_rng(7))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    for seed in range(20):
        case = generate_case(np.random.default_rng(seed), size=192)
        assert case.image.dtype == np.uint8 and case.image.shape == (192, 192)
        assert set(np.unique(case.mask)) == {0, 1, 2, 3}
        assert 5 <= len(case.discs) <= 7
        assert [d["ivd_label"] for d in case.discs] == list(range(1, len(case.discs) + 1))
        x1, y1, x2, y2 = case.lumbar_box
        assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 192
        centres = []
        for disc in case.discs:
            dx1, dy1, dx2, dy2 = disc["box"]
            assert x1 <= dx1 < dx2 <= x2 and y1 <= dy1 < dy2 <= y2  # discs lie in the lumbar region
            assert (case.mask[dy1:dy2, dx1:dx2] == 2).any()
            centres.append((dy1 + dy2) / 2)
        assert centres == sorted(centres, reverse=True)  # disc 1 is the lowest


def test_herniated_discs_bulge_backwards_into_the_canal():
    """A herniated disc reaches further posteriorly (to the right) than a healthy one of the same image."""
    reach = {0: [], 1: []}
    for seed in range(60):
        case = generate_case(np.random.default_rng(seed), herniation_rate=0.4)
        healthy = [d["box"][2] for d in case.discs if not d["disc_bulging"]]
        if not healthy:
            continue
        for disc in case.discs:
            if disc["disc_herniation"]:
                reach[1].append(disc["box"][2] - np.median(healthy))
    assert len(reach[1]) > 10
    assert np.mean(reach[1]) > 2  # pixels beyond the posterior edge of healthy discs


def test_dataset_written_in_contract_layout_and_reused(tmp_path):
    spec = SyntheticSpec(num_patients=6, slices_per_patient=2, image_size=96, seed=1)
    root = ensure_dataset(tmp_path, spec)
    dataset = load_dataset(root)
    assert len(dataset.images) == 12 and dataset.patients() == [f"syn{i:04d}" for i in range(6)]
    row = dataset.images.iloc[0]
    assert dataset.read_image(row["image"]).shape == (96, 96)
    assert set(np.unique(dataset.read_mask(row["image"]))) <= {0, 1, 2, 3}
    discs = pd.read_csv(root / "discs.csv")
    assert {"ivd_label", "disc_herniation", "disc_bulging", "x1", "y2"} <= set(discs.columns)
    # slices of one patient share gradings
    per_patient = discs.groupby(["patient", "ivd_label"])["disc_herniation"].nunique()
    assert (per_patient == 1).all()
    stamp = (root / "images.csv").stat().st_mtime_ns
    assert ensure_dataset(tmp_path, spec) == root and (root / "images.csv").stat().st_mtime_ns == stamp
