"""Scans in, slices out: the SPIDER importer (``python -m plid.data.spider``) and the readers of new scans for
inference, which cut volumes into contract slices with the same code (:mod:`plid.data.sagittal`)."""
