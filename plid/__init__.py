"""plid: detection, classification and segmentation of sagittal lumbar MR images for PLID."""

from pathlib import Path

__version__ = "0.1.0"
# the Hydra configs ship inside the package (a wheel runs every entry point from any folder)
CONF_DIR = Path(__file__).resolve().parent / "conf"
