"""plid: detection, classification and segmentation of sagittal lumbar MR images for PLID."""

__version__ = "0.1.0"
