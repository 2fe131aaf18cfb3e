"""Benchmark 3: inference images per second, segmentation and classification, in eval mode.

Variants, interleaved: ``no_grad`` (the baseline a user writes), ``inference_mode``, ``inference_mode`` with
channels-last weights and input, and ``inference_mode`` with bf16 autocast (with and without channels-last).
Beside them, the class map of a batch of segmentation scores: ``argmax(1)`` against ``max(1).indices``.
Lightning's ``Trainer.predict`` / ``test`` / ``validate`` already run under ``torch.inference_mode``
(``Trainer(inference_mode=True)``, the default), so that variant is what the framework's predict does.

    python benchmarks/inference.py
    python benchmarks/inference.py --quick
"""

from __future__ import annotations

import contextlib
import copy
import time

import common
import torch


def variants(net: torch.nn.Module, x: torch.Tensor) -> dict:
    last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    return {
        "no_grad": (net, x, torch.no_grad),
        "inference_mode": (net, x, torch.inference_mode),
        "inference_mode+channels_last": (last, x_last, torch.inference_mode),
        "inference_mode+bf16": (net, x, lambda: _both(torch.inference_mode(), bf16)),
        "inference_mode+channels_last+bf16": (last, x_last, lambda: _both(torch.inference_mode(), bf16)),
    }


@contextlib.contextmanager
def _both(a, b):
    with a, b:
        yield


def timed(net, x, context, passes: int):
    def run() -> list[float]:
        out = []
        for _ in range(passes):
            start = time.perf_counter()
            with context():
                net(x)
            out.append(time.perf_counter() - start)
        return out

    return run


def bench(name: str, net: torch.nn.Module, x: torch.Tensor, passes: int, repeats: int) -> dict:
    net.eval()
    arms = {k: timed(*v, passes) for k, v in variants(net, x).items()}
    samples = common.interleave(arms, repeats=repeats)
    result = {"input_shape": list(x.shape)}
    for k, s in samples.items():
        result[k] = {**common.summary(s), "images_per_s": x.shape[0] / common.summary(s)["median_s"],
                     "speedup_vs_no_grad": common.ratio(samples, "no_grad", k)}
    with torch.inference_mode():  # bf16 changes the numbers: how much, on this input
        ref = net(x).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    result["bf16_max_abs_logit_difference"] = float((ref - low).abs().max())
    result["bf16_argmax_agreement"] = float((ref.argmax(1) == low.argmax(1)).float().mean())
    print(name + ": " + ", ".join(f"{k} {v['images_per_s']:.1f} img/s (x{v['speedup_vs_no_grad']:.2f})"
                                  for k, v in result.items() if isinstance(v, dict)))
    return result


def class_map(shape: tuple[int, ...], passes: int, repeats: int) -> dict:
    """The class map of segmentation scores: ``argmax(1)`` against ``max(1).indices`` (plid's
    ``predicted_classes``, used by training metrics, overlays and predict); the same result, checked here."""
    scores = torch.randn(shape)
    assert torch.equal(scores.argmax(1), scores.max(1).indices)

    def arm(fn):
        def run() -> list[float]:
            out = []
            for _ in range(passes):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
            return out

        return run

    samples = common.interleave({"argmax": arm(lambda: scores.argmax(1)),
                                 "max_indices": arm(lambda: scores.max(1).indices)}, repeats=repeats)
    result = {"input_shape": list(shape), **{k: common.summary(v) for k, v in samples.items()},
              "speedup": common.ratio(samples, "argmax", "max_indices")}
    print(f"class map {tuple(shape)}: argmax {result['argmax']['median_s'] * 1e3:.2f} ms, max().indices "
          f"{result['max_indices']['median_s'] * 1e3:.2f} ms (x{result['speedup']:.1f})")
    return result


def classifier(size: int) -> torch.nn.Module:
    from plid.models.nets import build_classifier

    return build_classifier("resnet50", in_chans=1, num_classes=2)


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    common.setup_torch(args.threads)
    env = common.environment()
    from plid.models.nets import build_segmenter

    passes, repeats = (1, 2) if args.quick else (2, 4)
    seg_size = 128 if args.quick else 256
    cls_size = 64 if args.quick else 224
    results = {
        "segmentation_unet_resnet34": bench(
            f"U-Net ResNet34 {seg_size} px", build_segmenter("unet", "resnet34", in_channels=1, classes=4),
            torch.randn(4, 1, seg_size, seg_size), passes, repeats),
        "classification_resnet50": bench(
            f"ResNet50 classifier {cls_size} px", classifier(cls_size), torch.randn(8, 1, cls_size, cls_size),
            passes, repeats),
    }
    results["class_map"] = class_map((8, 4, seg_size, seg_size), passes * 5, repeats)
    common.save("inference", env, results, args.quick, args.out, args.save)


if __name__ == "__main__":
    main()
