"""A few segmentation overlays (image, prediction, ground truth) as media for the loggers that show images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

from plid.labels import CLASS_COLOURS, CLASS_NAMES
from plid.metrics import predicted_classes
from plid.utils.figures import log_figure, save_figure

RGB = np.asarray(CLASS_COLOURS, dtype=np.float32) / 255  # background is left transparent


class SegmentationOverlays(L.Callback):
    """After validation (every ``every_n_epochs``) and after testing, draws the first ``num_images`` cases of
    the split: the image, the prediction over it and the ground truth over it, one row per case.

    The figure goes to the loggers that take images (TensorBoard, W&B) under ``<stage>/overlays``; after
    testing it is also saved as ``overlays/test.png`` in the run's folder (and ``overlays/val_epochNNN.png``
    when drawn after validation). Nothing is drawn for a model that
    is not a segmenter, or, during validation, when no logger takes images, so the callback costs nothing
    in a CSV-only run.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 5, alpha: float = 0.45) -> None:
        self.num_images, self.every_n_epochs, self.alpha = num_images, every_n_epochs, alpha

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0 or last_epoch
        if trainer.sanity_checking or not due or not _image_loggers(trainer):
            return
        self._draw(trainer, pl_module, "val", save=False)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test", save=True)

    @torch.no_grad()
    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str, save: bool) -> None:
        dataset = getattr(getattr(trainer, "datamodule", None), "datasets", {}).get(stage)
        if not trainer.is_global_zero or dataset is None or len(dataset) == 0:
            return
        # always the same cases, so the figures of successive epochs compare
        cases = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        if cases[0]["target"].ndim != 2:  # not a mask: a classifier's label
            return
        images = torch.stack([c["image"] for c in cases]).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        predictions = predicted_classes(pl_module(images)).cpu().numpy()
        pl_module.train(was_training)
        figure = self.figure(images[:, 0].cpu().numpy(), predictions, np.stack([c["target"].numpy() for c in cases]),
                             [str(c["id"]) for c in cases], title=f"{stage}, epoch {trainer.current_epoch}")
        name = stage if save else f"{stage}_epoch{trainer.current_epoch:03d}"
        path = Path(trainer.default_root_dir) / "overlays" / f"{name}.png"
        save_figure(figure, path)
        log_figure(_image_loggers(trainer), f"{stage}/overlays", figure, path, trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)

    def figure(self, images: np.ndarray, predictions: np.ndarray, targets: np.ndarray, ids: list[str], title: str):
        """A (cases x 3) grid: image, prediction overlay, ground-truth overlay."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch

        figure, axes = plt.subplots(len(images), 3, figsize=(7.5, 2.6 * len(images)), squeeze=False)
        for row, (image, prediction, target, case_id) in enumerate(zip(images, predictions, targets, ids)):
            for col, (mask, name) in enumerate([(None, case_id), (prediction, "prediction"), (target, "ground truth")]):
                ax = axes[row, col]
                ax.imshow(image, cmap="gray")
                if mask is not None:
                    rgba = np.zeros((*mask.shape, 4), dtype=np.float32)
                    rgba[..., :3] = RGB[mask]
                    rgba[..., 3] = (mask > 0) * self.alpha
                    ax.imshow(rgba)
                ax.set_title(name, fontsize=8)
                ax.axis("off")
        figure.legend(handles=[Patch(color=RGB[k], label=CLASS_NAMES[k]) for k in range(1, len(CLASS_NAMES))],
                      loc="lower center", ncol=len(CLASS_NAMES) - 1, fontsize=8)
        figure.suptitle(title, fontsize=9)
        return figure


def _image_loggers(trainer: L.Trainer) -> list:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger | WandbLogger)]
