"""Lightning callbacks of the project (configured in conf/callbacks/)."""

from plid.callbacks.overlays import SegmentationOverlays

__all__ = ["SegmentationOverlays"]
