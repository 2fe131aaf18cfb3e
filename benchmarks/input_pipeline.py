"""Benchmark 2: training fed by the DataModule against training on the same batches held as tensors.

One plain training loop (the configured network, loss and optimizer) runs ``steps`` steps per run, fed either
by a fresh iterator of ``datamodule.train_dataloader()`` (per item: augmentation with albumentations,
standardisation to a tensor; DataLoader workers as configured, whose start-up is part of each run) or by
batches taken from that loader once and held in memory. The figure is each run's wall time per step. Decoding,
cropping and resizing happen once in ``setup`` (and are cached on disk in ``data.cache_dir``); their cost is
reported apart, cold (no cache) and warm (cache hit).

    python benchmarks/input_pipeline.py                    # README defaults, then with 1 persistent worker
    python benchmarks/input_pipeline.py --quick
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import tempfile
import time

import common
import hydra


def datamodule_for(overrides: list[str]):
    cfg = common.compose(*overrides)
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule


def setup_seconds(overrides: list[str]) -> dict:
    """Seconds of ``setup`` (decode, crop, resize every image of every split) without and with the disk cache."""
    cache = tempfile.mkdtemp(prefix="plid-bench-cache-")
    try:
        times = {}
        for name in ("cold", "warm"):
            start = time.perf_counter()
            datamodule_for([*overrides, f"data.cache_dir={cache}"])
            times[name] = time.perf_counter() - start
        return times
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def loader_seconds_per_batch(datamodule, batches: int) -> float:
    """The loader alone: seconds per batch, iterator start-up included."""
    start = time.perf_counter()
    for _ in itertools.islice(datamodule.train_dataloader(), batches):
        pass
    return (time.perf_counter() - start) / batches


def train_arm(module, batches_source, steps: int):
    net, loss_fn = module.net, module.loss
    optimizer = module.configure_optimizers()["optimizer"]

    def run() -> list[float]:
        """Seconds per step, from the end of the previous step (the first from before the iterator is made,
        so it holds the loader's start-up); ``run.means`` collects each run's mean."""
        net.train()
        ends = [time.perf_counter()]
        for batch in itertools.islice(batches_source(), steps):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(batch["image"]), batch["target"]).backward()
            optimizer.step()
            ends.append(time.perf_counter())
        run.means.append((ends[-1] - ends[0]) / steps)
        return [b - a for a, b in zip(ends, ends[1:])]

    run.means = []

    return run


def compare(name: str, overrides: list[str], steps: int, repeats: int) -> dict:
    cfg, datamodule = datamodule_for(overrides)
    module = hydra.utils.instantiate(cfg.model, _convert_="all")
    cached = list(itertools.islice(datamodule.train_dataloader(), steps))
    arms = {"datamodule": train_arm(module, datamodule.train_dataloader, steps),
            "cached_tensors": train_arm(module, lambda: iter(cached), steps)}
    samples = common.interleave(arms, repeats=repeats)
    # per-run means, the loader's start-up spread over the run's steps; the first run of each arm was the warm-up
    run_means = {k: arm.means[1:] for k, arm in arms.items()}
    loader = [loader_seconds_per_batch(datamodule, steps) for _ in range(3)]
    h = datamodule.hparams
    result = {"overrides": overrides, "num_workers": h.num_workers, "pin_memory": h.pin_memory,
              "persistent_workers": h.num_workers > 0, "steps_per_run": steps, "repeats": repeats,
              "datamodule": common.summary(samples["datamodule"]),
              "cached_tensors": common.summary(samples["cached_tensors"]),
              "loader_alone_s_per_batch": statistics.median(loader),
              "ratio": common.ratio(samples, "datamodule", "cached_tensors"), "target": 1.05,
              "ratio_of_run_means": common.ratio(run_means, "datamodule", "cached_tensors")}
    result["met"] = result["ratio"] <= result["target"]
    print(f"{name}: datamodule {result['datamodule']['median_s'] * 1e3:.0f} ms/step, cached "
          f"{result['cached_tensors']['median_s'] * 1e3:.0f} ms/step, ratio {result['ratio']:.3f} (target <= 1.05, of run means "
          f"{result['ratio_of_run_means']:.3f}); "
          f"loader alone {result['loader_alone_s_per_batch'] * 1e3:.1f} ms/batch")
    return result


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.setup_torch(args.threads)
    env = common.environment()
    size = 128 if args.quick else 256  # --quick: 128 px, to end in two minutes on the shared machine
    base = ["data=spider2d_seg", "model=unet_resnet34", f"data.image_size={size}", "data.batch_size=4",
            "model.scheduler=null"]
    steps, repeats = (3, 4) if args.quick else (4, 5)
    results = {"setup_seconds": setup_seconds(base)}
    print(f"setup (decode, crop, resize all splits): cold {results['setup_seconds']['cold']:.1f} s, "
          f"disk cache hit {results['setup_seconds']['warm']:.1f} s")
    results["readme_defaults"] = compare("README defaults", base, steps, repeats)
    if not args.quick:
        results["one_persistent_worker"] = compare("1 persistent worker", [*base, "data.num_workers=1"], steps, repeats)
    common.save("input_pipeline", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
