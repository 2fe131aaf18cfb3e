"""Print the Markdown table of benchmarks/README.md from the JSON records in benchmarks/results/.

    python benchmarks/report.py            # full runs
    python benchmarks/report.py --quick    # the --quick records
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str, quick: bool) -> dict | None:
    path = RESULTS / f"{name}{'_quick' if quick else ''}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def context(record: dict) -> str:
    env = record["environment"]
    load_avg = f"{env['loadavg_start'][0]:.1f}-{env['loadavg_end'][0]:.1f}"
    return f"{env['commit']}, {env['torch_threads']} thread(s), load {load_avg}"


def rows(quick: bool) -> list[str]:
    out = []
    for path in sorted(RESULTS.glob("train_step*.json")):
        if path.stem.endswith("_quick") != quick:
            continue
        record = json.loads(path.read_text())
        for name, r in record["results"].items():
            target = ("no target: Lightning's fixed cost per step" if name == "overhead"
                      else f"<= 1.10, {'met' if r['met'] else 'missed'}")
            r.setdefault("overhead_ms_per_step", (r["lightning"]["median_s"] - r["plain"]["median_s"]) * 1e3)
            out.append(f"| 1 train step, {name} {tuple(r['batch_shape'])} | Lightning {r['lightning']['median_s'] * 1e3:.0f} "
                       f"ms, plain {r['plain']['median_s'] * 1e3:.0f} ms ({r['overhead_ms_per_step']:+.1f} ms) | "
                       f"**{r['ratio']:.3f}** ({target}) | {context(record)} |")
    if record := load("input_pipeline", quick):
        s = record["results"]["setup_seconds"]
        for name, r in record["results"].items():
            if name == "setup_seconds":
                continue
            ok = "met" if r["met"] else "missed"
            means = f"; of run means {r['ratio_of_run_means']:.3f}" if "ratio_of_run_means" in r else ""
            out.append(f"| 2 input pipeline, {name} (workers {r['num_workers']}) | DataModule "
                       f"{r['datamodule']['median_s'] * 1e3:.0f} ms/step, cached {r['cached_tensors']['median_s'] * 1e3:.0f} "
                       f"ms/step; loader alone {r['loader_alone_s_per_batch'] * 1e3:.1f} ms/batch | **{r['ratio']:.3f}** "
                       f"(<= 1.05, {ok}){means} | {context(record)} |")
        out.append(f"| 2 setup: decode, crop, resize | {s['cold']:.1f} s cold, {s['warm']:.1f} s from the disk cache | | "
                   f"{context(record)} |")
    if record := load("inference", quick):
        for name, r in record["results"].items():
            if not isinstance(r, dict):
                continue
            if name == "class_map":
                out.append(f"| 3 class map {tuple(r['input_shape'])} | argmax(1) {r['argmax']['median_s'] * 1e3:.1f} ms, "
                           f"max(1).indices {r['max_indices']['median_s'] * 1e3:.1f} ms | **x{r['speedup']:.1f}** | "
                           f"{context(record)} |")
                continue
            variants = ", ".join(f"{k} {v['images_per_s']:.1f} (x{v['speedup_vs_no_grad']:.2f})"
                                 for k, v in r.items() if isinstance(v, dict))
            out.append(f"| 3 inference img/s, {name} {tuple(r['input_shape'])} | {variants} | bf16 argmax agreement "
                       f"{r['bf16_argmax_agreement']:.4f} | {context(record)} |")
    if record := load("peak_memory", quick):
        for name, r in record["results"].items():
            out.append(f"| 4 peak RSS, {name} | {r['peak_rss_mib']:.0f} MiB | | {context(record)} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    print("| benchmark | figures | ratio | commit, threads, load |")
    print("|---|---|---|---|")
    print("\n".join(rows(args.quick)))


if __name__ == "__main__":
    main()
