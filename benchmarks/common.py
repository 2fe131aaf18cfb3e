"""What every benchmark shares: composing the project's configs, interleaved timing, and the JSON record
(machine, load, threads, commit, command) saved beside each figure.

The machine these run on is shared, so timings are noisy: arms run interleaved (A B B A ...), after a warm-up,
with torch's thread count fixed, and results are medians and ratios of medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("YOLO_OFFLINE", "1")

# this checkout's plid, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from plid import CONF_DIR
from plid.utils.hydra import PROJECT_ROOT  # noqa: E402  (registers the config resolvers)
from plid.utils.io import write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SCRATCH = Path(tempfile.gettempdir()) / "plid-benchmarks"  # where a run without --save writes
SPIDER2D = PROJECT_ROOT.parent / "shared" / "data" / "spider2d"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="fewer repeats: under two minutes, same ratios printed")
    # one thread by default: on this shared 2-core machine, two threads wait on each other whenever another
    # process holds a core (a U-Net ResNet34 step took 10-19 s with 2 threads, 4.7 s with 1, load 8-10)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON file (default {SCRATCH}/<name>.json, or benchmarks/results/ with --save)")
    p.add_argument("--save", action="store_true", help="write the tracked benchmarks/results/<name>.json")
    return p


def result_path(name: str, quick: bool, save: bool, out: Path | None = None) -> Path:
    """Where a run's JSON goes: ``out``, else benchmarks/results/ only when asked (``--save``: a tracked file changes
    on purpose), else a scratch folder outside the checkout."""
    return out or (RESULTS if save else SCRATCH) / f"{name}{'_quick' if quick else ''}.json"


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def compose(*overrides: str, output_dir: str | None = None):
    """``plid/conf/train.yaml`` composed with ``overrides``, as ``python -m plid.train`` would (generated data and the
    decode cache in the checkout's data/, outputs in a temporary folder)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    output_dir = output_dir or tempfile.mkdtemp(prefix="plid-bench-")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", return_hydra_config=True,
                            overrides=[f"paths.output_dir={output_dir}", *overrides])
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
    return cfg


def interleave(arms: dict[str, Callable[[], list[float]]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each arm ``warmup`` times (discarded), then ``repeats`` rounds, alternating the order (A B, B A, ...)
    so slow drifts of the machine's load fall on both arms. Each call returns a list of samples (seconds)."""
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].extend(arms[name]())
    return samples


def summary(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples), "n": len(samples),
            "samples_s": [round(s, 5) for s in samples]}


def ratio(samples: dict[str, list[float]], numerator: str, denominator: str) -> float:
    return statistics.median(samples[numerator]) / statistics.median(samples[denominator])


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def environment() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "loadavg_start": list(os.getloadavg()), "commit": commit(),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, env: dict, results: dict, quick: bool, out: Path | None = None, tracked: bool = False) -> Path:
    env = {**env, "loadavg_end": list(os.getloadavg()), "quick": quick}
    path = result_path(name, quick, tracked, out)
    write_json(path, {"benchmark": name, "environment": env, "results": results})
    print(f"saved {path}")
    return path
