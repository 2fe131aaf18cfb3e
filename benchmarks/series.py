"""Seconds to read and analyse one 15-slice DICOM series, beside the models' own forward passes.

    python benchmarks/series.py                        # a model_dir of `make run` if any, else a tiny one built here
    python benchmarks/series.py --quick                # 2 repeats
    python benchmarks/series.py --model-dir /models/plid

The series: 15 sagittal slices written as suffix-less DICOM files in shuffled order (the 9 neighbouring slices
of the first ``t2_SPACE`` patient of ``../shared/data/spider2d``, padded by mirroring 3 at each end; synthetic
phantoms where that folder is absent). Two arms, interleaved, each through ``python -m plid.predict``'s own loop
(:func:`plid.inference.batch.predict_inputs`: discovery and grouping, plane and spacing checks, reading and
windowing, slice choice, models, overlay, mask NIfTI, report.json, report.html): ``slice=anatomical`` (one slice
analysed) and ``slices=5``. Forward hooks time each network where the pipeline calls it; ``overhead`` = total /
sum of forwards - 1. Without a trained model_dir the script builds an untrained one (YOLOv8n detectors at 256 px,
the smoke segmenter and classifier) and runs the detectors at conf 1e-5 so that every stage runs: the
seconds are then those of tiny networks, and the JSON says so. Writes benchmarks/results/series[_quick].json.
"""

from __future__ import annotations

import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SPIDER2D, compose, environment, parser, save, setup_torch  # noqa: E402
from pipeline import Recorder  # noqa: E402

from plid.data.dicom import discover  # noqa: E402
from plid.data.samples import write_dicom_series  # noqa: E402
from plid.data.scans import read_case  # noqa: E402
from plid.datamodules.synthetic import generate_case  # noqa: E402
from plid.inference.batch import predict_inputs  # noqa: E402
from plid.inference.model_dir import export_model_dir, load_model_dir  # noqa: E402
from plid.inference.pipeline import Pipeline  # noqa: E402
from plid.inference.slices import SliceOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLICES = 15


def series_slices() -> tuple[np.ndarray, str]:
    import pandas as pd

    if (SPIDER2D / "images.csv").is_file():
        rows = pd.read_csv(SPIDER2D / "images.csv")
        rows = rows[rows.series == "t2_SPACE"]
        patient = rows.patient.iloc[0]
        names = list(rows[rows.patient == patient].sort_values("slice").image)
        real = np.stack([cv2.imread(str(SPIDER2D / "images" / f"{n}.png"), cv2.IMREAD_GRAYSCALE) for n in names])
        pad = (SLICES - len(real)) // 2
        padded = np.concatenate([real[1:pad + 1][::-1], real, real[-pad - 1:-1][::-1]])
        return padded, f"spider2d {names[0]}..{names[-1]} ({len(real)} slices) mirrored by {pad} at each end"
    image = generate_case(np.random.default_rng(0), size=512).image.astype(float)
    volume = np.stack([np.clip(image * (1 - 0.04 * abs(k - 7)), 0, 255).astype(np.uint8) for k in range(SLICES)])
    return volume, "synthetic phantom, 512 px, 15 slices"


def tiny_model_dir(folder: Path) -> Path:
    """An untrained model_dir: YOLOv8n detectors (256 px), the smoke segmenter and classifier (see the docstring)."""
    import hydra
    from omegaconf import OmegaConf

    from plid.models.detection import load_yolo

    weights = {}
    for stage in ("lumbar", "ivd"):
        yolo = load_yolo("yolov8n.yaml", folder / "ultralytics")
        yolo.ckpt = {"train_args": {"imgsz": 256}}
        weights[stage] = folder / f"{stage}.pt"
        yolo.save(weights[stage])
    runs = []
    for model in ("unet_resnet34", "cls_resnet50"):
        run = folder / model
        cfg = compose("debug=smoke", f"model={model}", output_dir=str(run))
        module = hydra.utils.instantiate(cfg.model, _convert_="all")
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        (run / "checkpoints").mkdir(exist_ok=True)
        torch.save({"state_dict": module.state_dict(), "epoch": 0}, run / "checkpoints" / "epoch_000.ckpt")
        (run / "summary.json").write_text(json.dumps({"best_checkpoint": str(run / "checkpoints" / "epoch_000.ckpt"),
                                                      "choices": {"model": model}}))
        runs.append(run)
    return export_model_dir(folder / "model_dir", weights["lumbar"], weights["ivd"], runs[0], [runs[1]])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args()
    setup_torch(args.threads)
    repeats = args.repeats or (2 if args.quick else 4)
    logging.getLogger("plid").setLevel(logging.ERROR)
    env = environment()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        found_dirs = sorted(ROOT.glob("logs/study/runs/*/model_dir/manifest.json"))
        model_dir = args.model_dir or (found_dirs[-1].parent if found_dirs else None)
        trained = model_dir is not None
        model_dir = model_dir or tiny_model_dir(tmp / "tiny")
        models = load_model_dir(model_dir)
        pipeline = Pipeline(models, conf=None if trained else 1e-5)
        networks = {"detector_lumbar": models.lumbar.model, "detector_ivd": models.ivd.model,
                    "segmenter": models.segmenter.net, **{f"classifier_{c.name}": c.net for c in models.classifiers}}
        recorder = Recorder(networks)

        volume, source = series_slices()
        rng = random.Random(0)
        names = [f"{rng.getrandbits(48):012x}" for _ in range(SLICES)]
        series = tmp / "study" / "SE3"
        write_dicom_series(volume, series, names=names, spacing_mm=0.6, slice_mm=3.3, description="t2_tse_sag")

        def discovery_and_read() -> float:
            start = time.perf_counter()
            read_case(discover(series).cases[0])
            return time.perf_counter() - start

        arms = {"slice=anatomical": SliceOptions("anatomical", 1), "slices=5": SliceOptions("anatomical", 5)}
        samples = {name: [] for name in arms}
        predict_inputs(series, pipeline, tmp / "warmup", progress=False)  # ultralytics builds its predictors
        read_samples = [discovery_and_read() for _ in range(repeats)]
        for r in range(repeats):
            for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                recorder.reset()
                timings: dict[str, float] = {}
                start = time.perf_counter()
                summary = predict_inputs(series, pipeline, tmp / f"out{r}_{name}", progress=False, timings=timings,
                                         slices=arms[name])
                total = time.perf_counter() - start
                forwards = dict(recorder.in_place)
                recorder.recording = False
                samples[name].append({"total": total, "timings": timings, "forwards": forwards,
                                      "calls": {k: len(v) for k, v in recorder.inputs.items()},
                                      "report": summary["cases"][0]})
    results = {
        "series": {"slices": SLICES, "source": source, "files": "suffix-less DICOM, shuffled names, 16-bit"},
        "model_dir": str(model_dir) if trained else ("untrained tiny model_dir built by this script (YOLOv8n at "
                                                     "256 px, smoke U-Net and ResNet-50); detector conf 1e-5"),
        "trained_models": trained, "repeats": repeats,
        "discover_and_read_s": {"median": statistics.median(read_samples), "min": min(read_samples)},
    }
    print(f"discovery + header checks + reading + windowing of {SLICES} slices: "
          f"{statistics.median(read_samples):.3f} s (median of {repeats})")
    for name, runs in samples.items():
        best = min(runs, key=lambda run: run["total"])
        forward_sum = sum(best["forwards"].values())
        entry = {
            "total_s_median": statistics.median(run["total"] for run in runs),
            "total_s_best": best["total"],
            "parts_s_best": {**{k: round(v, 4) for k, v in best["timings"].items()},
                             "writing_and_rest": round(best["total"] - sum(best["timings"].values()), 4)},
            "forward_s_best": {k: round(v, 4) for k, v in best["forwards"].items()},
            "forward_sum_s_best": forward_sum,
            "forward_calls": best["calls"],
            "overhead_ratio": best["total"] / forward_sum - 1 if forward_sum else None,
            "slice_index": best["report"]["slice_index"], "slices_analysed": best["report"]["slices_analysed"],
            "discs": len(best["report"]["discs"]), "status": best["report"]["status"],
        }
        results[name] = entry
        print(f"{name:<18} total {entry['total_s_best']:.3f} s (median {entry['total_s_median']:.3f}); forwards "
              f"{forward_sum:.3f} s; parts {entry['parts_s_best']}; {entry['discs']} discs, slice "
              f"{entry['slice_index']} {entry['slices_analysed']}")
    save("series", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
