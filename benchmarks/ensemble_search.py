"""Weight search of the ensemble against a plain Python loop over the same candidates and the same saved
probabilities; then the paper's 8-model, step-0.1 search as `python -m plid.ensemble` runs it (segmentation
coarse to fine, classification over the whole grid; quick: 7 classifiers).

    python benchmarks/ensemble_search.py            # 50 val images of 256 x 256, 8 models, 400 classified discs
    python benchmarks/ensemble_search.py --quick    # 12 images, fewer candidates compared (< 2 min)

The probabilities are those of simulated trained segmenters (the synthetic phantoms' masks, softened at the
boundaries, plus smooth errors of each model's own), saved and loaded with plid.ensemble.predictions as a
run's are. Prints a table and writes benchmarks/results/ensemble_search[_quick].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import result_path  # noqa: E402

from plid.datamodules.synthetic import generate_case  # noqa: E402
from plid.ensemble.predictions import Predictions, load_predictions, save_predictions  # noqa: E402
from plid.ensemble.scoring import ClassificationScorer, SegmentationScorer  # noqa: E402
from plid.ensemble.weights import count_unique, iter_unique, search_weights  # noqa: E402
from plid.metrics import segmentation_metric  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def simulated_segmenters(rng, images: int, size: int, models: int) -> tuple[list[np.ndarray], np.ndarray]:
    masks = np.stack([generate_case(rng, size=size).mask for _ in range(images)]).astype(np.int64)
    onehot = torch.from_numpy(np.eye(4, dtype=np.float32)[masks].transpose(0, 3, 1, 2))
    soft = torch.nn.functional.avg_pool2d(onehot, 5, stride=1, padding=2, count_include_pad=False)
    probs = []
    for _ in range(models):
        noise = torch.from_numpy(rng.normal(size=(images, 4, size // 16, size // 16)).astype(np.float32))
        noise = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear")
        probs.append((soft * rng.uniform(6, 9) + noise * rng.uniform(1.2, 2.0)).softmax(1).numpy())
    return probs, masks


def simulated_classifiers(rng, cases: int, models: int) -> tuple[list[np.ndarray], np.ndarray]:
    targets = rng.integers(0, 2, cases)
    onehot = np.eye(2)[targets]
    probs = []
    for _ in range(models):
        logits = onehot * rng.uniform(0.5, 2.0) + rng.normal(size=onehot.shape)
        probs.append(torch.from_numpy(logits).softmax(1).numpy())
    return probs, targets


def save_and_load(probs: list[np.ndarray], targets: np.ndarray, folder: Path) -> list[Predictions]:
    """Through the run format, so both sides score what a run saves (float32 probabilities)."""
    ids = np.array([f"case{k:05d}" for k in range(len(targets))])
    loaded = []
    for i, p in enumerate(probs):
        path = save_predictions(folder / f"model{i}" / "predictions" / "val.npz", Predictions(ids, p, targets))
        loaded.append(load_predictions(path))
    return loaded


def loop_segmentation(preds: list[Predictions], candidates: np.ndarray, metric: str) -> np.ndarray:
    """The straightforward way: equation 1 on the full maps, argmax, confusion matrix, metric; one by one."""
    targets = preds[0].targets
    scores = []
    for weights in candidates:
        ensemble = sum(w * p.probs.astype(np.float32) for w, p in zip(weights, preds)) / weights.sum()
        pred = ensemble.argmax(1)
        confusion = np.bincount((targets * 4 + pred).ravel(), minlength=16).reshape(4, 4)
        scores.append(float(segmentation_metric(torch.as_tensor(confusion), metric)))
    return np.array(scores)


def loop_classification(preds: list[Predictions], candidates: np.ndarray) -> np.ndarray:
    targets = preds[0].targets
    scores = []
    for weights in candidates:
        ensemble = sum(w * p.probs.astype(np.float32) for w, p in zip(weights, preds)) / weights.sum()
        scores.append(float((ensemble.argmax(1) == targets).mean()))
    return np.array(scores)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def compare(name: str, candidates: np.ndarray, loop_candidates: int, fast, loop, repeats: int = 3) -> dict:
    """Both ways on the same candidates: the fast one on all of them, the loop on the first ``loop_candidates``;
    each timed ``repeats`` times, alternating, keeping the fastest (the machine is shared: its load comes and goes)."""
    subset = candidates[:loop_candidates]
    fast_s = loop_s = float("inf")
    for _ in range(repeats):
        fast_scores, seconds = timed(lambda: fast(candidates))
        fast_s = min(fast_s, seconds)
        loop_scores, seconds = timed(lambda: loop(subset))
        loop_s = min(loop_s, seconds)
    fast_rate, loop_rate = len(candidates) / fast_s, len(subset) / loop_s
    return {"task": name, "candidates_fast": len(candidates), "candidates_loop": len(subset), "repeats": repeats,
            "fast_candidates_per_s": round(fast_rate, 1), "loop_candidates_per_s": round(loop_rate, 2),
            "speedup": round(fast_rate / loop_rate, 1),
            "max_abs_score_difference": float(np.abs(fast_scores[: len(subset)] - loop_scores).max())}


def machine() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__}


def commit() -> str:
    """HEAD, with ``+dirty`` when tracked files differ from it."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="less work, same figures (under two minutes)")
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default a scratch folder; --save: results/)")
    parser.add_argument("--save", action="store_true", help="write the tracked benchmarks/results/ file")
    args = parser.parse_args()
    images, size = (12, 256) if args.quick else (50, 256)
    loop_seg, loop_cls = (3, 200) if args.quick else (10, 1000)
    # candidates of the step-0.1 grid both ways score (the loop the first few of them)
    compared, compared_cls = (5_000, 200_000) if args.quick else (50_000, 2_000_000)
    # the defaults of plid/conf/ensemble.yaml
    max_candidates, sample_pixels = 500_000, 10_000
    rng = np.random.default_rng(args.seed)
    results: dict = {"machine": machine(), "commit": commit(), "command": " ".join([sys.executable, *sys.argv]),
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": args.models}

    with tempfile.TemporaryDirectory() as tmp:
        seg = save_and_load(*simulated_segmenters(rng, images, size, args.models), Path(tmp) / "seg")
        cls = save_and_load(*simulated_classifiers(rng, 400, args.models), Path(tmp) / "cls")

    # a spread of the paper's grid: every k-th unique direction of the 8-model, step-0.1 grid
    first = next(iter_unique(args.models, 10, chunk=4 * compared_cls))
    cls_candidates = first[np.linspace(0, len(first) - 1, compared_cls).astype(int)]
    candidates = first[np.linspace(0, len(first) - 1, compared).astype(int)]

    scorer, prepare_s = timed(lambda: SegmentationScorer([p.probs for p in seg], seg[0].targets, "miou",
                                                         sample_pixels=sample_pixels))
    results["segmentation_data"] = {"images": images, "size": size, "pixels": scorer.total_pixels,
                                    "disagreement_pixels": scorer.disagreement_pixels,
                                    "two_class_pixels": scorer.pixels.pair_size, "sampled_pixels": scorer.sampled_pixels,
                                    "prepare_s": round(prepare_s, 2)}

    def fast_seg(c):  # what the search does: rank on the sample, re-score the best 16 exactly
        ranked = scorer(c)
        best = np.argsort(-ranked)[:16]
        exact = scorer.exact(c[best])
        scores = ranked.copy()
        scores[best] = exact
        return scores

    rows = [compare("segmentation, sampled ranking + exact top 16", candidates, loop_seg, fast_seg,
                    lambda c: loop_segmentation(seg, c, "miou")),
            compare("segmentation, exact on every pixel", candidates[: compared // 10], loop_seg, scorer.exact,
                    lambda c: loop_segmentation(seg, c, "miou")),
            compare("classification, accuracy", cls_candidates, loop_cls,
                    ClassificationScorer([p.probs for p in cls], cls[0].targets, "accuracy"),
                    lambda c: loop_classification(cls, c))]
    # the batched side on one thread, as on a busy machine: its speed-up must not hang on BLAS threads
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows.append(compare("classification, accuracy, 1 thread", cls_candidates, loop_cls,
                        ClassificationScorer([p.probs for p in cls], cls[0].targets, "accuracy"),
                        lambda c: loop_classification(cls, c)))
    torch.set_num_threads(threads)
    # the sampled ranking estimates: how far it is from the exact score, on the loop's candidates
    rows[0]["max_abs_score_difference"] = float(np.abs(scorer(candidates[:loop_seg])
                                                       - loop_segmentation(seg, candidates[:loop_seg], "miou")).max())
    results["compare"] = rows

    search, search_s = timed(lambda: search_weights(scorer, args.models, 0.1, exact_scorer=scorer.exact,
                                                    max_candidates=max_candidates, top_k=16))
    aem = float(scorer.exact(np.ones((1, args.models), dtype=np.int64))[0])
    singles = scorer.exact(np.eye(args.models, dtype=np.int64))
    results["paper_search"] = {
        "grid_raw": 11**args.models, "grid_unique": count_unique(args.models, 10), "max_candidates": max_candidates,
        "strategy": search.strategy, "coarse_step": None if search.coarse_levels is None else 1 / search.coarse_levels,
        "hill_climb_rounds": search.rounds, "scored": search.scored, "seconds": round(search_s + prepare_s, 1),
        "wae_miou": search.score, "aem_miou": aem, "best_single_miou": float(singles.max()),
        "weights": search.weights().tolist(),
    }

    # the classification search as `python -m plid.ensemble task=cls` runs it: the whole grid (quick: 7 models)
    cls_models = args.models - 1 if args.quick else args.models
    cls_scorer = ClassificationScorer([p.probs for p in cls[:cls_models]], cls[0].targets, "accuracy")
    search, search_s = timed(lambda: search_weights(cls_scorer, cls_models, 0.1, max_candidates=None))
    results["paper_search_classification"] = {
        "models": cls_models, "cases": len(cls[0].targets), "grid_unique": count_unique(cls_models, 10),
        "strategy": search.strategy, "scored": search.scored, "seconds": round(search_s, 1),
        "wae_accuracy": search.score,
        "aem_accuracy": float(cls_scorer(np.ones((1, cls_models), dtype=np.int64))[0]),
        "best_single_accuracy": float(cls_scorer(np.eye(cls_models, dtype=np.int64)).max()),
        "weights": search.weights().tolist(),
    }

    print(f"{'task':48s} {'fast cand/s':>12s} {'loop cand/s':>12s} {'speedup':>8s} {'max |diff|':>10s}")
    for row in rows:
        print(f"{row['task']:48s} {row['fast_candidates_per_s']:12.1f} {row['loop_candidates_per_s']:12.2f} "
              f"{row['speedup']:8.1f} {row['max_abs_score_difference']:10.2e}")
    print(json.dumps(results["paper_search"]))
    print(json.dumps(results["paper_search_classification"]))
    out = result_path("ensemble_search", args.quick, args.save, args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
