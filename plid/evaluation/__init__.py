"""Evaluation: plid's reports scored against labels (box matching, per-image and per-disc figures, bootstrap
intervals, tables), the end-to-end evaluation of a model_dir and the cross-validation of training runs. It reads
reports and saved predictions; inference never imports it."""
