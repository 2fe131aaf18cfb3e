"""Benchmark 1: a training step under the Lightning Trainer against a plain PyTorch loop.

Both arms train the same network (same initial weights), loss, optimizer and batches (taken once from the
DataModule, augmented, and held as tensors, so the input pipeline is not part of this comparison: see
input_pipeline.py). The Lightning arm is the framework as configured (trainer/cpu, the progress bar, the CSV
logger, the module's training_step with its per-step self.log); validation is off, so checkpointing, early
stopping and the plateau scheduler, which act once per epoch on a validation metric, do not run. The figure is the time between the ends of consecutive
training steps, which holds everything the framework does per step.

    python benchmarks/train_step.py            # U-Net ResNet34 256 px batch 4, and the classifier
    python benchmarks/train_step.py --quick
"""

from __future__ import annotations

import copy
import time

import common
import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class StepClock(Callback):
    """Time at the end of every training step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())


def intervals(ends: list[float]) -> list[float]:
    """Step times from step-end stamps; the first step of a run (optimizer state, first-call costs) has none."""
    return [b - a for a, b in zip(ends, ends[1:])]


class Batches:
    """The held batches as one iterable (Lightning reads a bare list as a list of dataloaders)."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def build(overrides: list[str]):
    cfg = common.compose(*overrides)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    return cfg, datamodule, module


def lightning_arm(cfg, module, batches):
    from plid.utils.hydra import instantiate_callbacks, instantiate_loggers

    def run() -> list[float]:
        clock = StepClock()
        callbacks = [c for c in instantiate_callbacks(cfg.callbacks)
                     if type(c).__name__ not in ("ModelCheckpoint", "EarlyStopping")]
        trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=[*callbacks, clock], logger=instantiate_loggers(cfg.logger) or False,
            max_steps=len(batches), max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
            enable_checkpointing=False, enable_model_summary=False)
        trainer.fit(module, train_dataloaders=Batches(batches))
        return intervals(clock.ends)

    return run


def plain_arm(module, batches):
    """What a user would write by hand: the same net, loss and optimizer (the one the module configures)."""
    net, loss_fn = module.net, module.loss

    def run() -> list[float]:
        optimizer = module.configure_optimizers()["optimizer"]
        net.train()
        ends = []
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch["image"]), batch["target"])
            loss.backward()
            optimizer.step()
            ends.append(time.perf_counter())
        return intervals(ends)

    return run


def compare(name: str, overrides: list[str], steps: int, repeats: int, net: torch.nn.Module | None = None) -> dict:
    cfg, datamodule, lightning_module = build(overrides)
    if net is not None:  # the same module around another network
        lightning_module.net = net
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    plain_module = copy.deepcopy(lightning_module)  # same initial weights
    L.seed_everything(0, verbose=False)
    common.interleave({"lightning": lightning_arm(cfg, lightning_module, batches[:2]),
                       "plain": plain_arm(plain_module, batches[:2])}, repeats=1, warmup=0)
    samples = common.interleave({"lightning": lightning_arm(cfg, lightning_module, batches),
                                 "plain": plain_arm(plain_module, batches)}, repeats=repeats, warmup=0)
    result = {"overrides": overrides, "steps_per_run": steps, "repeats": repeats,
              "batch_shape": list(batches[0]["image"].shape),
              "lightning": common.summary(samples["lightning"]), "plain": common.summary(samples["plain"]),
              "ratio": common.ratio(samples, "lightning", "plain"), "target": 1.10}
    result["met"] = result["ratio"] <= result["target"]
    result["overhead_ms_per_step"] = (result["lightning"]["median_s"] - result["plain"]["median_s"]) * 1e3
    print(f"{name}: lightning {result['lightning']['median_s'] * 1e3:.1f} ms/step, plain "
          f"{result['plain']['median_s'] * 1e3:.1f} ms/step, ratio {result['ratio']:.3f} (target <= 1.10)")
    return result


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["segmentation", "classification", "overhead"], default=None)
    args = parser.parse_args()
    common.setup_torch(args.threads)
    env = common.environment()
    steps, repeats = (3, 4) if args.quick else (6, 6)
    # --quick: 128 px, so that it ends in two minutes on the shared machine; the full run is the 256 px
    cases = {
        "segmentation": ["data=spider2d_seg", "model=unet_resnet34", f"data.image_size={128 if args.quick else 256}",
                         "data.batch_size=4",
                         "model.scheduler=null"],
    }
    cases["classification"] = ["data=spider2d_cls", "model=cls_resnet50", "data.batch_size=4",
                               "model.class_weights=null", "model.scheduler=null"]
    results = {name: compare(name, o, steps if name == "segmentation" else steps * 3, repeats)
               for name, o in cases.items() if args.only in (None, name)}
    if args.only in (None, "overhead"):
        # the framework's fixed cost per step, made visible: the segmentation module around a 1x1 convolution,
        # whose step costs a few ms, so what is left is Lightning's loop, hooks, self.log and the progress bar
        results["overhead"] = compare("overhead (1x1 conv)", cases["segmentation"], steps * 5, repeats,
                                      net=torch.nn.Conv2d(1, 4, 1))
    common.save(f"train_step_{args.only}" if args.only else "train_step", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
