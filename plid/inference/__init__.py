"""Inference: a model_dir loaded, the per-image pipeline, levels, slice choice and aggregation, the loop over
cases, and what it writes (overlays, masks, report.json, report.html)."""
