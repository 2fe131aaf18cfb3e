"""How fast the commands answer: ``--help`` (answered from the configs, before torch is imported) against Hydra's
own help of the same command (``--hydra-help``, after every import), the import of ``plid.predict``'s module, and,
with ``--model-dir``, the first case of a fresh ``python -m plid.predict`` (start-up, model load, one image).

    python benchmarks/cli.py [--quick] [--model-dir <model_dir>] [--save]

Arms run interleaved in one process's lifetime (A B, B A, ...), each a fresh subprocess; medians and their ratio.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import environment, interleave, parser, ratio, save, summary  # noqa: E402


def timed(*command: str, cwd: Path | None = None) -> list[float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{command} failed: {result.stderr[-2000:]}")
    return [seconds]


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=Path, default=None, help="a model_dir: also time a first case end to end")
    args = p.parse_args()
    repeats = 3 if args.quick else 7
    arms = {
        "help_plid": lambda: timed("-m", "plid.predict", "--help"),
        "help_hydra": lambda: timed("-m", "plid.predict", "--hydra-help"),
        "import_predict": lambda: timed("-c", "import plid.predict"),
    }
    scratch = Path(tempfile.mkdtemp(prefix="plid-cli-bench-"))
    if args.model_dir is not None:
        import cv2

        from plid.datamodules.synthetic import generate_case

        image = scratch / "case.png"
        cv2.imwrite(str(image), generate_case(__import__("numpy").random.default_rng(0), 256).image)
        runs = iter(range(10**6))
        arms["first_case"] = lambda: timed("-m", "plid.predict", f"input={image}", f"model_dir={args.model_dir}",
                                           f"out={scratch / f'out{next(runs)}'}")
    samples = interleave(arms, repeats=repeats)
    results = {name: summary(s) for name, s in samples.items()}
    results["help_ratio_hydra_over_plid"] = ratio(samples, "help_hydra", "help_plid")
    for name in arms:
        print(f"{name:16s} median {results[name]['median_s']:.2f} s (n={results[name]['n']})")
    print(f"--help is {results['help_ratio_hydra_over_plid']:.1f}x faster than Hydra's own help of the same command")
    save("cli", environment(), results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
