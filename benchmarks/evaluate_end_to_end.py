"""Seconds per image of the end-to-end evaluation beside ``plid.predict`` on the same images, in one run.

    python benchmarks/evaluate_end_to_end.py                                   # newest model_dir of `make run`
    python benchmarks/evaluate_end_to_end.py --model-dir M --data-root ../shared/data/spider2d --split test
    python benchmarks/evaluate_end_to_end.py --quick

Arm ``predict``: the pipeline over the split's images as ``python -m plid.predict`` runs it (read each file, the
models, overlays, report.json, report.html). Arm ``evaluate``: ``python -m plid.evaluate model_dir=...``'s work on
the same images (the same prediction, plus scoring each mask, matching, the patient-level bootstrap of every
figure, the figures, failures.html, evaluation.json/.md). The arms alternate (A B, B A, ...) after a warm-up.
Scoring overhead = evaluate / predict - 1, ratio of medians (target: at most 0.10). Writes
``benchmarks/results/evaluate_end_to_end[_quick].json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, interleave, parser, ratio, save, setup_torch, summary  # noqa: E402
from pipeline import newest_model_dir  # noqa: E402  (benchmarks/pipeline.py: the newest make-run model_dir)

from plid.evaluation.end_to_end import evaluate_model_dir, labelled_folder, split_images  # noqa: E402
from plid.inference.batch import predict_files  # noqa: E402
from plid.inference.model_dir import load_model_dir  # noqa: E402
from plid.inference.pipeline import Pipeline  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=None)
    p.add_argument("--data-root", type=Path, default=None, help="default: the model_dir's training folder")
    p.add_argument("--split", default="test")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="rounds per arm (default 4, --quick 2)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (plid.evaluate's default)")
    args = p.parse_args()
    setup_torch(args.threads)
    model_dir = (args.model_dir or newest_model_dir()).resolve()
    models = load_model_dir(model_dir)
    dataset, patients = labelled_folder(models.root, models.manifest, args.data_root)
    images = split_images(dataset, patients, args.split)[: args.max_images or (10 if args.quick else None)]
    files = [dataset.image_path(i) for i in images]
    pipeline = Pipeline(models)
    bootstrap = {"samples": args.bootstrap, "seed": 0, "confidence": 0.95}
    tmp = Path(tempfile.mkdtemp(prefix="plid-bench-evaluate-"))
    runs = {"predict": 0, "evaluate": 0}

    def arm(name):
        def run() -> list[float]:
            runs[name] += 1
            out = tmp / f"{name}{runs[name]}"
            start = time.perf_counter()
            if name == "predict":
                predict_files(files, pipeline, out, progress=False)
            else:
                evaluate_model_dir(pipeline, dataset, images, out, args.split, bootstrap, progress=False)
            return [(time.perf_counter() - start) / len(images)]
        return run

    env = environment()
    repeats = args.repeats or (2 if args.quick else 4)
    samples = interleave({"predict": arm("predict"), "evaluate": arm("evaluate")}, repeats)
    overhead = ratio(samples, "evaluate", "predict") - 1
    results = {
        "model_dir": str(model_dir), "data_root": str(dataset.root), "split": args.split, "images": len(images),
        "bootstrap_samples": args.bootstrap, "repeats": repeats,
        "seconds_per_image": {name: summary(values) for name, values in samples.items()},
        "scoring_overhead_ratio": overhead, "target_overhead": 0.10, "target_met": overhead <= 0.10,
    }
    for name, values in samples.items():
        print(f"{name:<10} {results['seconds_per_image'][name]['median_s']:.4f} s/image (median of {len(values)})")
    print(f"scoring adds {overhead:.1%} to the pipeline (target <= 10 %), {len(images)} images of split {args.split}")
    save("evaluate_end_to_end", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
