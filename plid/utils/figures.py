"""Figures: written atomically into a run's folder and sent to the loggers that take images."""

from __future__ import annotations

from pathlib import Path

from plid.utils.io import atomic_write


def save_figure(figure, path: str | Path, dpi: int = 120, close: bool = False) -> Path:
    """Save a matplotlib figure as PNG at ``path`` (temp name, then rename); ``close`` frees it afterwards,
    for a figure that is not sent to a logger as well."""
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(figure)
    return Path(path)


def log_figure(loggers, key: str, figure, path: str | Path, step: int = 0) -> None:
    """Send ``figure`` (saved at ``path``) to every logger that shows images: TensorBoard and W&B.

    The CSV logger has no place for images; the PNG in the run's folder is the record there.
    """
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
