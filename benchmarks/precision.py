"""fp32 against bf16-mixed training on the CPU: seconds per epoch and the test figure reached, same split and seed.

Each arm is a whole `python -m plid.train` run (plid.training.train on the composed config): the U-Net ResNet34 on
the real SPIDER slices (test mean foreground Dice per case) and a ResNet50 bulging classifier on their disc crops
(test AUC), once with ``trainer.precision=32`` and once with ``trainer.precision=bf16-mixed``; the arms run one after
the other, in alternating order per model, so that a drift of the machine's load falls on both. bf16 pays only
on CPUs with bf16 instructions (AVX512-BF16, AMX); the JSON records whether this one has them.

    python benchmarks/precision.py            # 256 px U-Net 6 epochs, classifier 6 epochs
    python benchmarks/precision.py --quick    # 128 px, 2 epochs of 16 batches each
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import common
import torch

PRECISIONS = ("32", "bf16-mixed")
FIGURES = {"segmentation": ("dice_per_case", "dice"), "classification": ("auc", "balanced_accuracy")}


def cpu_flags() -> dict:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def run_arm(overrides: list[str], precision: str, task: str) -> dict:
    from plid.training import train

    with tempfile.TemporaryDirectory(prefix="plid-precision-") as out:
        cfg = common.compose(*overrides, f"trainer.precision={precision}", "logger=csv", "extras.print_config=false",
                             output_dir=out)
        train(cfg)
        summary = json.loads((Path(out) / "summary.json").read_text())
    names = FIGURES[task]
    return {"seconds_per_epoch": summary["seconds_per_epoch"], "epochs": summary["epochs"],
            "val": {n: summary["val"].get(f"val/{n}") for n in names}, "test": {n: summary["test"].get(n) for n in names}}


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    common.setup_torch(args.threads)
    env = {**common.environment(), **cpu_flags()}
    if not common.SPIDER2D.is_dir():
        raise SystemExit(f"{common.SPIDER2D} is absent: this benchmark trains on the real SPIDER slices")
    epochs = 2 if args.quick else 6
    limits = ["+trainer.limit_train_batches=16", "+trainer.limit_val_batches=8"] if args.quick else []
    common_overrides = [f"trainer.max_epochs={epochs}", f"trainer.min_epochs={epochs}", "callbacks.early_stopping=null",
                        "seed=0", *limits]
    cases = {
        "segmentation": ["data=spider2d_seg", "model=unet_resnet34", f"data.image_size={128 if args.quick else 256}"],
        "classification": ["data=spider2d_cls", "model=cls_resnet50", "data.target=disc_bulging"],
    }
    results = {}
    for k, (task, overrides) in enumerate(cases.items()):
        order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]
        arms = {p: run_arm([*overrides, *common_overrides], p, task) for p in order}
        fp32, bf16 = arms["32"], arms["bf16-mixed"]
        results[task] = {"overrides": [*overrides, *common_overrides], "arms": arms,
                         "speedup_bf16": fp32["seconds_per_epoch"] / bf16["seconds_per_epoch"]}
        figure = FIGURES[task][0]
        print(f"{task}: s/epoch fp32 {fp32['seconds_per_epoch']:.1f}, bf16-mixed {bf16['seconds_per_epoch']:.1f} "
              f"({results[task]['speedup_bf16']:.2f}x); test {figure} fp32 {fp32['test'][figure]:.3f}, "
              f"bf16-mixed {bf16['test'][figure]:.3f}")
    common.save("precision", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
