"""Lightning callbacks of the project (configured in plid/conf/callbacks/)."""

from plid.callbacks.overlays import SegmentationOverlays

__all__ = ["SegmentationOverlays"]
