"""Benchmark 4: peak memory (resident set) of a training run at the paper's sizes.

Runs ``python -m plid.train`` as a user would, for a few training steps and one validation batch (no test),
and reads the child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``). Segmentation: U-Net ResNet34,
batch 3, at 416 px: the paper's 400 px is not a multiple of 32, which U-Net needs (the framework refuses
400 and suggests 416). Classification: ResNet50, batch 5, 224 px disc crops (the paper's size).

    python benchmarks/peak_memory.py
    python benchmarks/peak_memory.py --quick
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import common


def peak_rss(args: list[str], threads: int) -> dict:
    """Peak RSS (MiB) of one ``python -m plid.train`` child; each measurement runs in a fresh helper process so
    RUSAGE_CHILDREN holds that run alone."""
    run_dir = tempfile.mkdtemp(prefix="plid-bench-mem-")
    code = (
        "import resource, subprocess, sys, json;"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "print(json.dumps({'rc': r.returncode, 'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'tail': r.stderr[-2000:]}))"
    )
    command = [sys.executable, "-m", "plid.train", *args, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True,
                         cwd=common.PROJECT_ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    import json

    record = json.loads(out.stdout.strip().splitlines()[-1])
    if record["rc"] != 0:
        raise SystemExit(f"training run failed:\n{record['tail']}")
    return {"args": args, "peak_rss_mib": record["maxrss_kib"] / 1024, "seconds": time.perf_counter() - start}


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.setup_torch(args.threads)
    env = common.environment()
    steps = 2 if args.quick else 4
    common_args = [f"+trainer.limit_train_batches={steps}", "trainer.max_epochs=1", "+trainer.limit_val_batches=1",
                   "test=false", "optimized_metric=null", "logger=csv", "callbacks=none", "data=spider2d_seg"]
    cases = {"segmentation_unet_resnet34_416px_batch3": [*common_args, "model=unet_resnet34",
                                                         "data.image_size=416", "data.batch_size=3"]}
    cases["classification_resnet50_224px_batch5"] = [
        *[a for a in common_args if a != "data=spider2d_seg"], "data=spider2d_cls", "model=cls_resnet50",
        "data.image_size=224", "data.batch_size=5"]
    results = {}
    for name, case in cases.items():
        results[name] = peak_rss(case, args.threads)
        print(f"{name}: peak RSS {results[name]['peak_rss_mib']:.0f} MiB ({results[name]['seconds']:.0f} s)")
    common.save("peak_memory", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
