"""Figures a reader of the paper expects, as PNG: training curves from the CSV logs, ROC curve and confusion
matrix of a classifier, and a grid of segmentations beside the ground truth (the paper's Figure 6)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures go to files, never to a screen
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from plid.labels import CLASS_COLOURS, CLASS_NAMES  # noqa: E402
from plid.metrics import auc, binary_confusion, roc_points  # noqa: E402
from plid.utils.figures import save_figure  # noqa: E402

# background transparent, the classes in plid's colours at 60 % opacity
MASK_COLOURS = ListedColormap([(0, 0, 0, 0), *((r / 255, g / 255, b / 255, 0.6) for r, g, b in CLASS_COLOURS[1:])])


def training_curves(logs: dict[str, str | Path], path: str | Path, metrics: Sequence[str] | None = None) -> Path | None:
    """Per-epoch curves of every ``train/*`` and ``val/*`` metric (or ``metrics``) of Lightning CSV logs
    (``csv/metrics.csv``), one line per run (e.g. per fold); None when no log has such a metric."""
    tables = {}
    for label, csv in logs.items():
        if Path(csv).is_file():
            table = pd.read_csv(csv)
            if "epoch" in table.columns:
                tables[label] = table
    if not tables:
        return None
    names = list(metrics) if metrics else sorted({c for t in tables.values() for c in t.columns
                                                  if c.startswith(("train/", "val/")) and not c.endswith("_best")})
    names = [n for n in names if any(n in t.columns for t in tables.values())]
    if not names:
        return None
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for label, table in tables.items():
            if name in table.columns:
                values = table[["epoch", name]].dropna().groupby("epoch")[name].mean()
                ax.plot(values.index, values.values, marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path, close=True)


def roc_curve(positive_probs: np.ndarray, targets: np.ndarray, path: str | Path, title: str = "ROC") -> Path:
    """ROC curve (:func:`plid.metrics.roc_points`) with the chance diagonal and the AUC in the legend."""
    fpr, tpr, _ = roc_points(positive_probs, targets)
    figure, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr.numpy(), tpr.numpy(), label=f"AUC = {auc(positive_probs, targets):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (recall)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return save_figure(figure, path, close=True)


def reliability_diagram(positive_probs: np.ndarray, targets: np.ndarray, path: str | Path, title: str = "reliability",
                        bins: int = 10) -> Path:
    """Observed share of positives against the mean predicted probability in ``bins`` equal-width bins, with the
    diagonal of perfect calibration and the number of cases per bin below."""
    probs, targets = np.asarray(positive_probs, dtype=float), np.asarray(targets, dtype=float)
    which = np.clip((probs * bins).astype(int), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    mean_prob = np.bincount(which, probs, minlength=bins)[filled] / counts[filled]
    observed = np.bincount(which, targets, minlength=bins)[filled] / counts[filled]
    figure, (ax, hist) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    ax.plot(mean_prob, observed, marker="o", label=f"{int(targets.sum())} positives of {len(targets)}")
    ax.set(ylabel="observed share of positives", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    hist.bar((np.arange(bins) + 0.5) / bins, counts, width=0.9 / bins, color="grey")
    hist.set(xlabel="predicted probability", ylabel="cases", yscale="log" if counts.max(initial=0) > 50 else "linear")
    figure.tight_layout()
    return save_figure(figure, path, close=True)


def confusion_matrix(positive_probs: np.ndarray, targets: np.ndarray, path: str | Path,
                     threshold, labels: Sequence[str] = ("no herniation", "herniation")) -> Path:
    """Counts of reference (rows) against calls (columns), positive above ``threshold``: the one chosen on
    validation, one for all cases or one per case (pooled folds: each fold's own), as the tables beside it call them
    (:func:`plid.metrics.binary_confusion`)."""
    matrix = binary_confusion(positive_probs, targets, threshold).numpy()
    figure, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="black" if count < matrix.max() / 2 else "white")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=labels, yticklabels=labels, xlabel="predicted",
           ylabel="reference", title=_threshold_title(threshold))
    return save_figure(figure, path, close=True)


def _threshold_title(threshold) -> str:
    values = np.unique(np.asarray(threshold, dtype=np.float64))
    if values.size == 1:
        return f"confusion matrix (threshold {values[0]:.3g})"
    return f"confusion matrix (thresholds {values.min():.3g}-{values.max():.3g}, each fold's own)"


def segmentation_grid(images: Sequence[np.ndarray], truths: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                      names: Sequence[str], path: str | Path) -> Path:
    """One row per case: the image, the ground truth over it, the prediction over it (the paper's Figure 6)."""
    rows = len(images)
    figure, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for row, (image, truth, predicted, name) in enumerate(zip(images, truths, predictions, names)):
        for col, (mask, title) in enumerate([(None, name), (truth, "ground truth"), (predicted, "prediction")]):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray")
            if mask is not None:
                ax.imshow(mask, cmap=MASK_COLOURS, vmin=0, vmax=len(CLASS_NAMES) - 1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    handles = [matplotlib.patches.Patch(color=MASK_COLOURS(k), label=n) for k, n in enumerate(CLASS_NAMES) if k]
    figure.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(figure, path, close=True)
